"""Metric values checked against counts worked out by hand."""

from __future__ import annotations

import pytest

from omni.eval.asr_metrics import ZERO, error_counts, normalize
from omni.eval.vqa_metrics import exact_match, extract_choice, normalize_answer, vqa_soft_accuracy


def test_wer_counts_substitutions_deletions_insertions():
    # ref: the quick brown fox jumps over the lazy dog (9 words)
    # hyp: the quick brown box jumps the lazy dog today
    # the only alignment with 3 edits: fox->box (S), over (D), today (I)
    counts = error_counts("The quick brown fox jumps over the lazy dog.", "the quick brown box jumps the lazy dog today", "en")
    assert (counts.substitutions, counts.deletions, counts.insertions, counts.reference_length) == (1, 1, 1, 9)
    assert counts.rate == pytest.approx(3 / 9)


def test_english_normalisation_makes_surface_differences_free():
    assert error_counts("Mr. Smith paid twenty-one dollars!", "mister smith paid $21", "en").errors == 0
    assert error_counts("The colour is GREY", "the color is gray", "en-US").errors == 0
    assert normalize("Hello,   WORLD!!", "en") == "hello world"


def test_cer_for_chinese_counts_characters():
    # ref 今天天气很好 (6 chars); hyp 今天天汽很好啊: 气->汽 (S), 啊 (I)
    counts = error_counts("今天天气很好。", "今天 天汽很好啊", "zh")
    assert (counts.substitutions, counts.deletions, counts.insertions, counts.reference_length) == (1, 0, 1, 6)
    assert counts.rate == pytest.approx(2 / 6)


def test_corpus_rate_sums_before_dividing():
    total = ZERO + error_counts("a b c d", "a b c d", "en") + error_counts("e", "f g", "en")
    # 0 errors / 4 words and 2 errors / 1 word: corpus rate is 2/5, not the mean of 0 and 2
    assert total.rate == pytest.approx(2 / 5)


def test_empty_hypothesis_is_all_deletions():
    counts = error_counts("one two three", "", "fr")
    assert (counts.deletions, counts.reference_length) == (3, 3)


def test_vqa_normalisation():
    assert normalize_answer("Two dogs.") == "2 dogs"
    assert normalize_answer("The Red-Car") == "red car"
    assert normalize_answer("1,000") == "1,000"
    assert normalize_answer("dont know") == "don't know"


def test_vqa_soft_accuracy_values():
    answers = ["2", "2", "two", "3", "2", "2", "2", "3", "3", "2"]  # "2" given 8 times (incl. "two")
    assert vqa_soft_accuracy("2", answers) == 1.0
    assert vqa_soft_accuracy("three", answers) == 1.0  # 3 annotators
    assert vqa_soft_accuracy("4", answers) == 0.0
    assert vqa_soft_accuracy("yes", ["yes", "no", "no", "no"]) == pytest.approx(1 / 3)
    assert vqa_soft_accuracy("yes", ["yes", "yes", "no"]) == pytest.approx(2 / 3)


def test_exact_match_uses_any_reference():
    assert exact_match("A dog", ["cat", "dog"]) == 1.0
    assert exact_match("dogs", ["dog"]) == 0.0


CHOICES = ["a cat", "a dog", "a bird", "a fish"]


@pytest.mark.parametrize(
    "answer, letter",
    [
        ("B", "B"), ("(c)", "C"), ("D.", "D"), ("a)", "A"), ("B) a dog", "B"), ("(C) a bird", "C"),
        ("The answer is B.", "B"), ("Answer: D", "D"), ("I think the answer is (A)", "A"), ("Option C", "C"),
        ("a dog", "B"), ("It is a fish.", "D"), ("The answer is a cat", "A"), ("", None),
        ("I am not sure", None), ("cat or dog", None),
    ],
)
def test_letter_extraction(answer, letter):
    assert extract_choice(answer, CHOICES) == letter
