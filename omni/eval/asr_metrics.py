"""Speech-recognition error rates as the field reports them.

Normalisation (applied to reference and hypothesis alike):
- English: Whisper's EnglishTextNormalizer (lower case; punctuation and symbols removed; spelled-out
  numbers to digits, "twenty-one" -> "21"; British -> American spelling; contractions expanded;
  fillers such as "uh", "um" dropped), the normaliser the Whisper, Qwen-Audio and Qwen2.5-Omni
  papers report WER with.
- Other languages: Whisper's BasicTextNormalizer (lower case, punctuation and symbols removed).
Words are compared for space-delimited languages (WER); characters, spaces removed, for Chinese,
Japanese, Korean and other unsegmented scripts (CER). Corpus rates sum errors over all utterances
before dividing, as jiwer and the papers do, rather than averaging per-utterance rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jiwer

CHARACTER_LANGUAGES = frozenset({"zh", "ja", "ko", "yue", "th", "lo", "my", "km", "bo"})


@lru_cache(maxsize=1)
def _english():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@lru_cache(maxsize=1)
def _basic():
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


def language_code(lang: str | None) -> str:
    """'en', 'zh', ... from 'en', 'en-US', 'English', 'zh_CN', None (None means English)."""
    if not lang:
        return "en"
    names = {"english": "en", "chinese": "zh", "mandarin": "zh", "japanese": "ja", "korean": "ko",
             "cantonese": "yue", "french": "fr", "german": "de", "spanish": "es", "thai": "th"}
    lowered = lang.strip().lower()
    return names.get(lowered, lowered.replace("_", "-").split("-")[0])


def uses_characters(lang: str | None) -> bool:
    return language_code(lang) in CHARACTER_LANGUAGES


def normalize(text: str, lang: str | None) -> str:
    code = language_code(lang)
    normalized = _english()(text) if code == "en" else _basic()(text)
    if code in CHARACTER_LANGUAGES:
        return "".join(normalized.split())
    return " ".join(normalized.split())


@dataclass(frozen=True)
class ErrorCounts:
    substitutions: int
    deletions: int
    insertions: int
    reference_length: int  # words or characters of the normalised reference

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_length + other.reference_length,
        )

    @property
    def rate(self) -> float:
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length


ZERO = ErrorCounts(0, 0, 0, 0)


def error_counts(reference: str, hypothesis: str, lang: str | None = "en") -> ErrorCounts:
    """Edit-distance counts between the normalised texts, over words or characters by language."""
    ref = normalize(reference, lang)
    hyp = normalize(hypothesis, lang)
    if uses_characters(lang):
        ref_units, hyp_units = " ".join(ref), " ".join(hyp)
    else:
        ref_units, hyp_units = ref, hyp
    if not ref_units.strip():
        return ErrorCounts(0, 0, len(hyp_units.split()), 0)
    if not hyp_units.strip():
        return ErrorCounts(0, len(ref_units.split()), 0, len(ref_units.split()))
    out = jiwer.process_words(ref_units, hyp_units)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits + out.substitutions + out.deletions)
