"""Stop strings: the matcher's hold-back, and `stop=` on OmniSession.stream (text, streaming, the
conversation it leaves behind, and what the Talker speaks)."""

from __future__ import annotations

import pytest

from omni.errors import InputError
from omni.events import ReplyDone, TextDelta
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from omni.talker.generate import TalkerOptions
from omni.stop import StopText, stop_strings
from omni.thinker.generate import stream_thinker, text_prompt
from tests.conftest import PAD_ID, STOP_IDS
from tests.omni.test_session import _spy_prompts

PROMPT = "Tell me about rivers."


# -- the matcher ------------------------------------------------------------------------------------


def test_a_possible_start_of_a_stop_string_is_held_until_decided():
    text = StopText(("END",))
    assert text.push("abc E") == "abc "  # "E" may begin "END"
    assert text.push("N") == ""  # "EN" still may
    assert text.push("x") == "ENx"  # it did not: released
    assert text.push("yyEN") == "yy"
    assert text.push("D and more") == "" and text.stopped
    assert text.text == "abc ENxyy" and text.push("after") == ""


def test_the_earliest_stop_string_wins_and_flush_releases_the_rest():
    text = StopText(("world", "lo w"))
    assert text.push("hel") == "he"  # "l" may begin "lo w"
    assert text.push("lo wor") == "l" and text.stopped  # "lo w" completes before "world" could
    assert text.text == "hel"
    held = StopText(("xyz",))
    assert held.push("abx") == "ab" and held.flush() == "x" and not held.stopped


@pytest.mark.parametrize("stop, message", [
    ("", "empty"), (["a", ""], "empty"), (["a", "b", "c", "d", "e"], "at most 4"), ([1], "list of strings"),
    ("x" * 1001, "1000"),
])
def test_bad_stop_values_are_named(stop, message):
    with pytest.raises(InputError, match=message):
        stop_strings(stop)


def test_stop_values_are_normalised():
    assert stop_strings(None) == () and stop_strings("a") == ("a",) and stop_strings(["a", "b", "a"]) == ("a", "b")


# -- the session -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tiny_text_model):
    """The greedy reply without stop strings; its first ten tokens each decode to one text piece
    (the tests cut there), later ones may hold part of a character."""
    session = OmniSession(tiny_text_model, max_new_tokens=24, sampling=SamplingParams())
    events = list(session.stream(PROMPT))
    pieces = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(pieces) > 20 and all(pieces[:10])
    return pieces


def _run(model, stop, max_new_tokens=24):
    session = OmniSession(model, max_new_tokens=max_new_tokens, sampling=SamplingParams())
    events = list(session.stream(PROMPT, stop=stop))
    return session, [e.text for e in events if isinstance(e, TextDelta)], events[-1]


@pytest.mark.parametrize("cut", ["at_a_token_start", "inside_a_token"])
def test_the_reply_ends_before_the_stop_string(tiny_text_model, reference, cut):
    start = sum(len(p) for p in reference[:6]) + (0 if cut == "at_a_token_start" else 1)
    full = "".join(reference)
    stop = full[start:start + 6]
    session, deltas, done = _run(tiny_text_model, ["never-there", stop])
    assert done.finish_reason == "stop" and done.text == full[:start] == "".join(deltas)
    ends = [sum(len(p) for p in reference[:n + 1]) for n in range(len(reference))]
    assert done.usage.text_tokens == 1 + next(n for n, end in enumerate(ends) if end >= start + 6)  # all generated
    assert session.messages[-1] == {"role": "assistant", "content": full[:start]}


def test_streamed_text_never_shows_a_piece_of_a_stop_string(tiny_text_model, reference):
    full = "".join(reference)
    end_of_sixth = sum(len(p) for p in reference[:6])
    # begins like the end of the sixth token's text (so that is held back) but never completes
    stop = full[end_of_sixth - 2:end_of_sixth] + "\x00"
    _, deltas, done = _run(tiny_text_model, stop)
    assert done.finish_reason == "length" and "".join(deltas) == full
    shown = ""
    for delta in deltas[:-1]:
        shown += delta
        assert not any(stop.startswith(shown[-n:]) for n in range(1, len(stop)))  # no possible start shown
    assert deltas[5] == reference[5][:-2] and deltas[6] == reference[5][-2:] + reference[6]  # held one step


def test_the_conversation_continues_from_the_text_before_the_stop(tiny_text_model, reference):
    full = "".join(reference)
    start = sum(len(p) for p in reference[:4]) + 1  # inside a token: its first character stays
    session, _, done = _run(tiny_text_model, full[start:start + 5])
    state = session.state
    tokenizer = tiny_text_model.tokenizer
    prompt_tokens = done.usage.prompt_tokens
    remembered = state.fed_token_ids[prompt_tokens:] + state.pending_token_ids[:-1]
    assert tokenizer.decode(remembered) == done.text == full[:start]
    assert state.cache.length == len(state.fed_token_ids)
    # the next turn continues the cache: equal to greedy decoding over the remembered tokens
    history = list(state.fed_token_ids)
    prompts = _spy_prompts(session)
    session.reply("And lakes?")
    assert prompts[0][: len(remembered) - len(history) + prompt_tokens] == remembered[len(history) - prompt_tokens:]
    steps = stream_thinker(tiny_text_model.model.thinker, text_prompt([history + prompts[0]], pad_id=PAD_ID),
                           SamplingParams(), 24, STOP_IDS, PAD_ID)
    expected = [t for t in (int(s.token_ids[0]) for s in steps) if t not in STOP_IDS]
    assert state.fed_token_ids[len(history) + len(prompts[0]):] + state.pending_token_ids[:-1] == expected


def test_without_a_match_the_reply_is_unchanged(tiny_text_model, reference):
    _, deltas, done = _run(tiny_text_model, ["\x00\x01", "zzzz-not-there"])
    assert "".join(deltas) == "".join(reference) and done.finish_reason == "length"


# -- speech --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spoken_model(tiny_checkpoint):
    from omni.loading import load_model

    loaded = load_model(tiny_checkpoint, dtype="fp32")
    if not loaded.audio_output:
        pytest.fail("the tiny checkpoint has no speech output")
    return loaded


def test_speech_stops_before_the_stop_string(spoken_model, reference):
    """The Talker reads exactly the tokens before the stop string: its codes equal those of a reply
    cut by the length limit right there (whose last, unfed token the Talker never reads either)."""
    tokens_before = 5
    # the stop string spans three tokens: the two it begins with are fed to the Thinker (and would
    # reach the Talker) before the third completes it
    stop = "".join(reference[tokens_before:tokens_before + 2]) + reference[tokens_before + 2][:2]

    # a short utterance: the random Talker would otherwise talk up to its 50 codes per text token
    short = SpeechOptions(talker=TalkerOptions(codes_per_text_token=3.0, extra_codes=8))

    def speak(max_new_tokens=8, **options):
        session = OmniSession(spoken_model, max_new_tokens=max_new_tokens, sampling=SamplingParams())
        return [e for e in session.stream(PROMPT, return_audio=True, seed=11, speech=short, **options)
                if isinstance(e, ReplyDone)][0]

    stopped = speak(stop=stop)
    limited = speak(max_new_tokens=tokens_before + 1)
    assert stopped.finish_reason == "stop" and limited.finish_reason == "length"
    assert stopped.text == "".join(reference[:tokens_before])
    assert stopped.codec_codes and stopped.codec_codes == limited.codec_codes
    unstopped = speak()
    assert unstopped.codec_codes != stopped.codec_codes  # the stop really changed what was spoken
