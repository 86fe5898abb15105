"""Build a random-weight Qwen2.5-Omni checkpoint in the real Hugging Face layout.

The weights are made by the transformers reference classes and written with `save_pretrained`, so
the files (config.json, safetensors + index, generation config) are exactly what the reference
writes and reads. Around them go the files a real checkpoint ships: `spk_dict.pt` (two voices),
the tokenizer (the real Qwen BPE ranks from the `dashscope` package plus the Qwen2.5-Omni special
tokens at their real ids), the chat template and the processor configs.

Needs the `dev` extra (transformers, dashscope): this is test and benchmark tooling.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omni.errors import OmniError
from omni.tools.presets import PRESETS, Preset
from omni.tokenizer import byte_to_unicode, qwen_bpe_backend

# Qwen2.5-Omni's added tokens, in id order from 151643 (special: shown by skip_special_tokens=False only).
ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|AUDIO|>", True),
    ("<|audio_bos|>", True),
    ("<|audio_eos|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_bos|>", True),
    ("<|vision_eos|>", True),
    ("<|vision_pad|>", True),
    ("<|IMAGE|>", True),
    ("<|VIDEO|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
FIRST_ADDED_ID = 151643

# The processor reads these names from the tokenizer.
PROCESSOR_TOKENS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

# The template Qwen/Qwen2.5-Omni-7B and -3B publish, verbatim, as transformers' own processor test
# (tests/models/qwen2_5_omni/test_processor_qwen2_5_omni.py) loads it for Qwen/Qwen2.5-Omni-7B;
# tests/data/qwen2_5_omni_chat_template.json holds the cited copy the tests compare it to.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Voice names of the real spk_dict.pt; their text-bos ids are this project's choice (any id of the
# Thinker vocabulary above the tokenizer's range works with random weights).
VOICES = {"Chelsie": 151870, "Ethan": 151871}

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def make_checkpoint(directory: str | os.PathLike, preset: str | Preset = "tiny", seed: int = 0,
                    force: bool = False, device: str | None = None, weights_dtype: str | None = None,
                    max_shard_size: str | int | None = None) -> Path:
    """Write a random-weight checkpoint of `preset` to `directory`. An earlier make_checkpoint output
    there is replaced; any other non-empty directory only with `force` (see `_claim_target`).

    `device` (e.g. "cuda"), a `weights_dtype` other than fp32 (the preset's own, or this argument) or
    `max_shard_size` build the weights submodel by submodel on that device (default "cpu") and write
    shards as they fill (omni.tools.stream_weights): the way to make the 7B shape where only the GPU
    has the memory. Otherwise the whole reference model is built on the CPU and saved with
    save_pretrained, as the tiny and small test checkpoints always were."""
    try:
        import torch
        from transformers import GenerationConfig, Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration
    except ImportError as exc:
        raise OmniError("make-checkpoint needs the dev extra: pip install -e '.[dev]'") from exc
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    target = Path(directory)
    _claim_target(target, force)
    (target / OWN_MARKER).write_text(json.dumps(
        {"written_by": "omni make-checkpoint", "preset": spec.name, "seed": seed, "random_weights": True},
        indent=2) + "\n", encoding="utf-8")

    config = Qwen2_5OmniConfig(
        thinker_config=spec.thinker,
        talker_config=spec.talker,
        token2wav_config={"dit_config": spec.dit, "bigvgan_config": spec.bigvgan},
    )
    weights_dtype = weights_dtype or spec.weights_dtype
    if device is not None or weights_dtype != "fp32" or max_shard_size is not None:
        from omni.tools.stream_weights import write_random_weights

        config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
        config.dtype = "float32" if weights_dtype == "fp32" else {"bf16": "bfloat16", "fp16": "float16"}[weights_dtype]
        config.save_pretrained(target)
        write_random_weights(config, target, device or "cpu", weights_dtype,
                             max_shard_size or spec.max_shard_size or "2GB", seed, _fix_vocoder_init)
    else:
        torch.manual_seed(seed)
        model = Qwen2_5OmniForConditionalGeneration(config).eval()
        _fix_vocoder_init(model.token2wav)
        kwargs = {"max_shard_size": spec.max_shard_size} if spec.max_shard_size else {}
        model.save_pretrained(target, **kwargs)
        del model
    _write_quirk_fixes(target)
    GenerationConfig(eos_token_id=[151645, 151643], pad_token_id=151643).save_pretrained(target)

    generator = torch.Generator().manual_seed(seed + 1)
    speakers = {
        name: {
            "cond": torch.randn(1, config.token2wav_config.dit_config.enc_emb_dim, generator=generator),
            "ref_mel": torch.randn(1, spec.ref_mel_frames, config.token2wav_config.dit_config.mel_dim, generator=generator),
            "bos_token": bos_token,
        }
        for name, bos_token in VOICES.items()
    }
    torch.save(speakers, target / "spk_dict.pt")
    write_tokenizer(target)
    _write_processor(target)
    return target


def _fix_vocoder_init(token2wav) -> None:
    """The reference init (normal, std 0.02) leaves a random vocoder near-silent (~1e-8): give its
    convolutions PyTorch's default fan-in scaling so test audio has a real level to compare."""
    import torch

    for module in token2wav.code2wav_bigvgan_model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            module.reset_parameters()


# Written first into every directory make_checkpoint fills, so that a later run recognises its own
# output (even a build cut short) and may replace it. A marker file rather than "looks like a
# checkpoint": a real downloaded checkpoint has config.json and safetensors too, and must never be
# replaced without --force.
OWN_MARKER = "omni-make-checkpoint.json"


def _claim_target(target: Path, force: bool) -> None:
    """Leave `target` an empty directory. What is there goes only when make_checkpoint wrote it (the
    marker) or `force` is set; a directory holding the home or current directory never goes."""
    if target.is_symlink() and not target.exists():
        raise OmniError(f"{target} is a broken symbolic link; remove it or choose another directory")
    if target.exists() and not target.is_dir():
        if not force:
            raise OmniError(f"{target} exists and is not a directory; choose another path, or pass --force to "
                            "replace it")
        target.unlink()
    if not target.exists():
        target.mkdir(parents=True)
        return
    entries = sorted(target.iterdir())
    if not entries:
        return
    if not force and not (target / OWN_MARKER).is_file():
        shown = ", ".join(entry.name for entry in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise OmniError(
            f"{target} is not empty ({shown}) and was not written by make-checkpoint; "
            "choose a new or empty directory, or pass --force to delete what it holds"
        )
    resolved = target.resolve()
    for kept, what in ((Path.home().resolve(), "your home directory"), (Path.cwd().resolve(), "the current directory")):
        if resolved == kept or resolved in kept.parents:
            raise OmniError(f"refusing to empty {target}: it holds {what}; choose another directory")
    # The entries, not the directory itself: a symbolic link to a directory stays a link.
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _write_quirk_fixes(target: Path) -> None:
    """The reference thinker config class lacks `vision_start_token_id`, which its rope index reads;
    real config.json files carry it in the thinker section, so ours do too."""
    path = target / "config.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["thinker_config"]["vision_start_token_id"] = 151652
    raw["thinker_config"]["vision_end_token_id"] = 151653
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_processor(target: Path) -> None:
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    vision = dict(
        min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2,
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        video_processor=Qwen2VLVideoProcessor(**vision),
        feature_extractor=WhisperFeatureExtractor(
            feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=300,
            padding_value=0.0, dither=0.0, return_attention_mask=True,
        ),
        tokenizer=tokenizer,
    )
    # Real checkpoints carry the image + audio front-end settings as one flat file; the video
    # processor and transformers 5 read processor_config.json (saved below).
    legacy = {
        "processor_class": "Qwen2_5OmniProcessor",
        "image_processor_type": "Qwen2VLImageProcessor",
        **vision,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "sampling_rate": 16000, "feature_size": 128, "n_fft": 400, "hop_length": 160,
        "chunk_length": 300, "n_samples": 4800000, "nb_max_frames": 30000,
        "dither": 0.0, "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
    }
    (target / "preprocessor_config.json").write_text(json.dumps(legacy, indent=2), encoding="utf-8")
    # The hub repos ship the template as the processor's legacy chat_template.json, not chat_template.jinja.
    (target / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2), encoding="utf-8")
    # Saved aside so that the tokenizer files stay the ones write_tokenizer made.
    with tempfile.TemporaryDirectory() as scratch:
        processor.save_pretrained(scratch)
        for path in Path(scratch).iterdir():
            if not (target / path.name).exists():
                shutil.copy(path, target / path.name)


def qwen_bpe_ranks() -> dict[bytes, int]:
    """The Qwen BPE ranks shipped in the PyPI package `dashscope`."""
    try:
        import dashscope
    except ImportError as exc:
        raise OmniError("building a test tokenizer needs the dev extra (the dashscope package)") from exc
    path = Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the merge list of a byte-level BPE from its ranks: a token of rank r is the merge of
    the two parts that byte-pair encoding with the merges below r leaves it in."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1])
                if pair_rank is not None and pair_rank < rank and (best is None or pair_rank < best[0]):
                    best = (pair_rank, i)
            if best is None:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise OmniError(f"BPE rank table is inconsistent at token {token!r} (rank {rank})")
        merges.append((parts[0], parts[1]))
    return merges


def write_tokenizer(target: Path, added_tokens: list[tuple[str, bool]] | None = None,
                    config_fields: dict[str, Any] | None = None) -> None:
    """tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json,
    added_tokens.json: Qwen's BPE with `added_tokens` (content, special) at ids from 151643 on, and
    tokenizer_config.json's family-specific `config_fields`. The defaults are Qwen2.5-Omni's files
    (omni.tools.qwen3_checkpoint passes Qwen3-Omni's)."""
    from tokenizers import AddedToken

    added_tokens = ADDED_TOKENS if added_tokens is None else added_tokens
    if config_fields is None:
        config_fields = {"model_max_length": 32768, "processor_class": "Qwen2_5OmniProcessor", **PROCESSOR_TOKENS}
    ranks = qwen_bpe_ranks()
    to_unicode = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(left), text(right)) for left, right in bpe_merges(ranks)]
    if len(vocab) != FIRST_ADDED_ID:
        raise OmniError(f"expected {FIRST_ADDED_ID} BPE tokens, the rank file has {len(vocab)}")

    backend = qwen_bpe_backend(vocab, merges)
    for content, special in added_tokens:
        token = AddedToken(content, special=special, normalized=False)
        backend.add_special_tokens([token]) if special else backend.add_tokens([token])
    for offset, (content, _) in enumerate(added_tokens):
        if backend.token_to_id(content) != FIRST_ADDED_ID + offset:
            raise OmniError(f"{content} landed at id {backend.token_to_id(content)}, not {FIRST_ADDED_ID + offset}")
    backend.save(str(target / "tokenizer.json"))

    (target / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (target / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{left} {right}" for left, right in merges) + "\n", encoding="utf-8"
    )
    added_decoder = {
        str(FIRST_ADDED_ID + offset): {
            "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special,
        }
        for offset, (content, special) in enumerate(added_tokens)
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_decoder,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
        **config_fields,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    special_map = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": [content for content, special in added_tokens[1:] if special],
    }
    (target / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")
    added = {content: FIRST_ADDED_ID + offset for offset, (content, _) in enumerate(added_tokens)}
    (target / "added_tokens.json").write_text(json.dumps(added, indent=2), encoding="utf-8")


def cached_checkpoint(preset: str, cache_dir: str | os.PathLike | None = None, family: str = "qwen2_5") -> Path:
    """The checkpoint of `preset`, built once and reused while the code that builds it is unchanged
    (tests and benchmarks share it). Default cache: $OMNI_TEST_CACHE or .omni-cache/ in the repo.
    `family` "qwen3" gives the Qwen3-Omni checkpoint (omni.tools.qwen3_checkpoint)."""
    import hashlib

    if family == "qwen3":
        from omni.tools.qwen3_checkpoint import cached_qwen3_checkpoint

        return cached_qwen3_checkpoint(preset, cache_dir)
    if family != "qwen2_5":
        raise OmniError(f"unknown checkpoint family {family!r}; choose qwen2_5 or qwen3")

    import transformers

    package = Path(__file__).resolve().parent.parent  # omni/
    cache = Path(cache_dir or os.environ.get("OMNI_TEST_CACHE") or package.parent / ".omni-cache")
    digest = hashlib.sha256(transformers.__version__.encode())
    for module in ("tools/make_checkpoint.py", "tools/presets.py", "tokenizer.py"):
        digest.update((package / module).read_bytes())
    # force: the scratch name is build_once's own, and one left by a crashed build of an older omni
    # carries no marker
    return build_once(cache / f"{preset}-{digest.hexdigest()[:12]}",
                      lambda scratch: make_checkpoint(scratch, preset=preset, force=True))


def build_once(target: Path, build: Callable[[Path], Any]) -> Path:
    """`target`, built by `build(scratch)` into a scratch directory of this process unless a
    complete one exists, then renamed into place (a marker file says it is complete): concurrent
    builders never see each other's half-written files."""
    if not (target / "complete").exists():
        scratch = target.with_name(f"{target.name}.tmp{os.getpid()}")
        build(scratch)
        (scratch / "complete").touch()
        try:
            scratch.rename(target)
        except OSError:  # another process finished the same build first
            shutil.rmtree(scratch, ignore_errors=True)
            if not (target / "complete").exists():
                raise
    return target
