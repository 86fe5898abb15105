"""Visual question answering metrics: normalised exact match, VQAv2 soft accuracy, and
multiple-choice accuracy with option-letter extraction."""

from __future__ import annotations

import re
from collections.abc import Sequence

# VQAv2's answer normalisation: number words to digits, articles dropped, a few spelling repairs of
# contractions, punctuation removed except inside numbers.
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't",
    "shouldnt": "shouldn't", "wasnt": "wasn't", "werent": "weren't", "wont": "won't", "wouldnt": "wouldn't",
    "youre": "you're", "theyre": "they're", "thats": "that's", "whats": "what's", "im": "i'm", "ive": "i've",
}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"(?<!\d)\.(?!\d)")


def normalize_answer(text: str) -> str:
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    keep_commas = _COMMA_IN_NUMBER.search(text) is not None
    for mark in _PUNCTUATION:
        if mark == "," and keep_commas:
            continue
        # a mark touching a space is dropped; one inside a word separates it
        text = text.replace(mark, "" if (f"{mark} " in text or f" {mark}" in text) else " ")
    text = _PERIOD_NOT_DECIMAL.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference answer."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(answer) for answer in answers))


def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy: min(number of annotators who gave the prediction / 3, 1)."""
    predicted = normalize_answer(prediction)
    agreeing = sum(predicted == normalize_answer(answer) for answer in answers)
    return min(agreeing / 3.0, 1.0)


def choice_letters(count: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(count)]


_LETTER_PATTERNS = [
    re.compile(r"^\(?([A-Za-z])\)?[.):]?$"),  # "B", "(b)", "B.", "B)"
    re.compile(r"^\(?([A-Z])[.):]\s"),  # "B. a cat", "(B) a cat", "B) a cat"
    # "The answer is (B)", "Answer: C", "Option D": the letter must be a capital standing alone
    re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is)|:)?\s*(?:(?i:option)\s*)?\(?([A-Z])\)?(?![A-Za-z])"),
]


def extract_choice(text: str, choices: Sequence[str]) -> str | None:
    """The option letter a free-form answer picks, or None.

    Accepts "B", "(b)", "B.", "B) a cat", "The answer is B", "Answer: C", "Option D", or the text of
    exactly one choice ("a cat").
    """
    letters = choice_letters(len(choices))
    stripped = text.strip()
    if not stripped:
        return None
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(stripped)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    normalized = normalize_answer(stripped)
    by_text = [letter for letter, choice in zip(letters, choices) if normalize_answer(choice) == normalized]
    if len(by_text) == 1:
        return by_text[0]
    mentioned = [letter for letter, choice in zip(letters, choices) if normalize_answer(choice) and
                 re.search(rf"(?<!\w){re.escape(normalize_answer(choice))}(?!\w)", normalized)]
    if len(mentioned) == 1:
        return mentioned[0]
    standalone = set(re.findall(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", stripped)) & set(letters)
    return standalone.pop() if len(standalone) == 1 else None
