"""The Qwen byte-level BPE tokenizer of a checkpoint, and an incremental detokenizer for streaming.

The tokenizer is the checkpoint's own `tokenizer.json` run by the `tokenizers` library; a checkpoint
that only has `vocab.json` + `merges.txt` gets the same pipeline built from those (Qwen2's split
regex, byte-level mapping, NFC). Special tokens (`<|im_start|>`, `<|AUDIO|>`, ...) written in a
prompt are recognised as single tokens. The checkpoint's chat template travels with the tokenizer,
as in transformers (`Tokenizer.chat_template`; None when the checkpoint ships none).
"""

from __future__ import annotations

import codecs
import json
import logging
from pathlib import Path

from omni.chat import ChatTemplate
from omni.checkpoint import read_chat_template
from omni.errors import CheckpointError

log = logging.getLogger(__name__)

# Qwen2's pre-tokenisation split (the same pattern the original Qwen tiktoken tokenizer uses).
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


class Tokenizer:
    def __init__(self, backend, special_tokens: dict[str, int], chat_template: ChatTemplate | None = None) -> None:
        self._backend = backend
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens)
        self.special_ids = frozenset(special_tokens.values())
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._unicode_to_byte = {char: byte for byte, char in byte_to_unicode().items()}

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> Tokenizer:
        from tokenizers import Tokenizer as Backend

        directory = Path(directory)
        config = _read_json(directory / "tokenizer_config.json") or {}
        tokenizer_json = directory / "tokenizer.json"
        if tokenizer_json.is_file():
            backend = Backend.from_file(str(tokenizer_json))
        elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            backend = _backend_from_vocab_and_merges(directory, config)
        else:
            raise CheckpointError(
                f"{directory} has no tokenizer: expected tokenizer.json (or vocab.json + merges.txt)"
            )
        special = {token.content: token_id for token_id, token in backend.get_added_tokens_decoder().items() if token.special}
        for required in (IM_START, IM_END, END_OF_TEXT):
            if required not in special:
                raise CheckpointError(f"the tokenizer in {directory} lacks the special token {required}")
        return cls(backend, special, _chat_template(directory, config))

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int:
        token_id = self._backend.token_to_id(token)
        if token_id is None:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return token_id

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (byte-level BPE tokens may hold part of a character)."""
        token = self._backend.id_to_token(token_id)
        if token is None:
            return b""  # ids past the vocabulary (the model's padded embedding rows) carry no text
        if token_id in self.special_ids:
            return token.encode("utf-8")
        return bytes(self._unicode_to_byte[char] for char in token if char in self._unicode_to_byte)

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas.

    A character split over several tokens is held back until complete, so a delta never ends in
    half a UTF-8 sequence; bytes that can never form valid UTF-8 (a model can emit any token order)
    are dropped rather than shown as U+FFFD.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")

    def push(self, token_id: int) -> str:
        if self._skip_special and token_id in self._tokenizer.special_ids:
            return ""
        return self._decoder.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)

    def reset(self) -> None:
        self._decoder.reset()


def _chat_template(directory: Path, config: dict) -> ChatTemplate | None:
    found = read_chat_template(directory)
    if found is None:
        log.warning("%s ships no chat template; prompts use omni's built-in Qwen2.5-Omni format", directory)
        return None
    source, path = found
    template = ChatTemplate(source, origin=f"the chat template in {path}",
                            variables=template_token_variables(config, directory))
    template.compiled()  # a broken template fails at load, not at the first request
    return template


def template_token_variables(config: dict, directory: Path) -> dict[str, str]:
    """The named special tokens a chat template may use ({{ eos_token }}, {{ image_token }}, ...):
    what transformers' `tokenizer.special_tokens_map` holds and passes to every template. They are
    tokenizer_config.json's `*_token` entries (text or {"content": text}) and the names in its
    `model_specific_special_tokens` / `extra_special_tokens`; special_tokens_map.json counts only for a
    config without `added_tokens_decoder`."""
    sources = [config]
    legacy = _read_json(directory / "special_tokens_map.json")
    if legacy and "added_tokens_decoder" not in config:
        sources.append(legacy)  # transformers lets it override the config's entries
    variables: dict[str, str] = {}
    for source in sources:
        entries = dict(source)
        for group in ("model_specific_special_tokens", "extra_special_tokens"):
            if isinstance(source.get(group), dict):
                entries.update(source[group])
        for name, value in entries.items():
            text = value.get("content") if isinstance(value, dict) else value
            if name.endswith("_token") and isinstance(text, str):
                variables[name] = text
    return variables


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def qwen_bpe_backend(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """A `tokenizers` pipeline as Qwen2 tokenizers are built: NFC, the split regex, byte-level BPE."""
    from tokenizers import Regex, Tokenizer as Backend, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    backend = Backend(BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _backend_from_vocab_and_merges(directory: Path, config: dict):
    from tokenizers import AddedToken

    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for line in (directory / "merges.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            left, right = line.split(" ")
            merges.append((left, right))
    backend = qwen_bpe_backend(vocab, merges)
    added = config.get("added_tokens_decoder") or {}
    for token_id, entry in sorted(added.items(), key=lambda item: int(item[0])):
        token = AddedToken(entry["content"], special=bool(entry.get("special", True)), normalized=False)
        if backend.token_to_id(entry["content"]) is None:
            backend.add_special_tokens([token]) if token.special else backend.add_tokens([token])
        if backend.token_to_id(entry["content"]) != int(token_id):
            raise CheckpointError(
                f"tokenizer_config.json in {directory} places {entry['content']!r} at id {token_id}, "
                f"but vocab.json has {len(vocab)} entries so it landed at {backend.token_to_id(entry['content'])}"
            )
    return backend
