"""Warm a freshly loaded model before serving: the first pass through PyTorch's CPU kernels (oneDNN
primitive creation, weight prepacking) costs seconds that would otherwise land on the first user's
time to first audio."""

from __future__ import annotations

import time

from omni.loading import LoadedModel
from omni.sampling import SamplingParams


def warm_up(loaded: LoadedModel) -> float:
    """One tiny reply through every stage (with speech when the model has it); returns the seconds it took."""
    from omni.session import OmniSession
    from omni.speech import SpeechOptions
    from omni.talker.generate import TalkerOptions

    start = time.perf_counter()
    session = OmniSession(loaded, sampling=SamplingParams(do_sample=False))
    if loaded.audio_output:
        # 24 codes: exactly one first chunk (DiT window and vocoder) and the codec's final flush
        speech = SpeechOptions(seed=0, talker=TalkerOptions(max_codes=24, codes_per_text_token=None))
        session.reply("Hi", return_audio=True, max_new_tokens=2, speech=speech)
    else:
        session.reply("Hi", return_audio=False, max_new_tokens=2)
    return time.perf_counter() - start
