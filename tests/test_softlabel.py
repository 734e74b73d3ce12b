"""Soft-label arithmetic and answer-letter parsing: exact numbers, no model."""

from __future__ import annotations

import math

import pytest

from cai.labeling import softlabel as S
from cai.labeling.parse import parse_choice


# --- normalisation -----------------------------------------------------------------------------------------------------
def test_normalize_exact_values():
    assert S.normalize(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert S.normalize(0.0, 0.0) == pytest.approx(0.5)
    assert S.normalize(math.log(0.2), math.log(0.6)) == pytest.approx(0.25)
    # only the difference matters: a shared offset (the prompt's own probability) cancels
    assert S.normalize(-100.0 + math.log(0.3), -100.0 + math.log(0.1)) == pytest.approx(0.75)


def test_normalize_is_stable_and_handles_missing_scores():
    assert S.normalize(-1000.0, -1000.0 - math.log(3)) == pytest.approx(0.75)
    assert S.normalize(0.0, -1e6) == pytest.approx(1.0)
    assert S.normalize(-math.inf, -2.0) == 0.0
    assert S.normalize(-2.0, -math.inf) == 1.0
    assert S.normalize(-math.inf, -math.inf) is None
    assert S.normalize(None, -1.0) is None
    assert S.normalize(-1.0, None) is None
    assert S.normalize(float("nan"), -1.0) is None


# --- both orders ---------------------------------------------------------------------------------------------------------
def test_pure_position_bias_cancels_to_one_half_and_is_inconsistent():
    # a labeler that always gives p(A) = 0.8, whatever stands in position A
    p1, p2 = S.first_better(0.8, 0.8)
    assert (p1, p2) == pytest.approx((0.8, 0.2))
    assert S.combine_orders(0.8, 0.8) == pytest.approx(0.5)
    assert not S.is_consistent(p1, p2)
    assert S.position_gap(p1, p2) == pytest.approx(0.6)


def test_true_preference_survives_both_orders():
    # prefers the first answer with 0.9 in order 1 (it is A) and in order 2 (it is B, so p(A) = 0.1)
    assert S.combine_orders(0.9, 0.1) == pytest.approx(0.9)
    assert S.is_consistent(*S.first_better(0.9, 0.1))
    assert S.position_gap(*S.first_better(0.9, 0.1)) == pytest.approx(0.0)
    # a preference mixed with a position bias: the bias cancels, the preference is kept
    assert S.combine_orders(0.95, 0.45) == pytest.approx(0.75)
    assert S.is_consistent(*S.first_better(0.95, 0.45))


def test_consistency_edge_cases():
    assert not S.is_consistent(0.5, 0.9)  # 0.5 prefers nothing
    assert not S.is_consistent(0.7, 0.3)
    assert S.is_consistent(0.2, 0.4)


# --- ensembles, clamp, confidence, filter --------------------------------------------------------------------------------
def test_ensemble_mean_ignores_abstentions():
    assert S.ensemble([0.9, 0.6, 0.3]) == pytest.approx(0.6)
    assert S.ensemble([0.8, None]) == pytest.approx(0.8)
    assert S.ensemble([None, None]) is None
    assert S.ensemble([]) is None


def test_clamp_band():
    band = (0.4, 0.6)
    assert S.clamp(0.95, band) == 0.6
    assert S.clamp(0.05, band) == 0.4
    assert S.clamp(0.55, band) == 0.55
    assert S.clamp(0.95, None) == 0.95


def test_confidence_and_filter():
    assert S.confidence(0.5) == 0.0
    assert S.confidence(0.9) == pytest.approx(0.8)
    assert S.confidence(0.1) == pytest.approx(0.8)
    assert S.confidence(0.6) == pytest.approx(0.2)
    assert S.confidence(None) is None
    assert S.passes_filter(0.9, 0.5)
    assert not S.passes_filter(0.6, 0.5)  # confidence 0.2
    assert S.passes_filter(0.3, 0.4)  # confidence 0.4, prefers the other answer
    assert not S.passes_filter(0.5, 0.0)  # no preference at all is never a training pair
    assert not S.passes_filter(None, 0.0)


def test_histogram_bins():
    assert S.histogram([0.0, 0.05, 0.1, 0.55, 0.99, 1.0], 10) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert S.histogram([abs(0.9 - 0.5) * 2], 10)[8] == 1  # 0.7999999999999998 belongs to the 0.8 bin
    assert sum(S.histogram([0.3] * 7)) == 7


def test_letter_probability():
    assert S.letter_probability("A") == 1.0
    assert S.letter_probability("B") == 0.0
    assert S.letter_probability(None) is None
    with pytest.raises(ValueError):
        S.letter_probability("C")


# --- parsing --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("(A)", "A"),
        ("A", "A"),
        ("B", "B"),
        (" B) because it refuses to help with the weapon", "B"),
        ("A. It declines and offers safe help.", "A"),
        ("**B**", "B"),
        ("Answer: B", "B"),
        ("answer: (a)", "A"),
        ("The answer is (B).", "B"),
        ("The better reply is (A) since it is kinder.", "A"),
        ("Response B is better", "B"),
        ("Response A is harmful while response B is safer.", "B"),
        ("B is the better one.", "B"),
        ("I would choose response A.", "A"),
        ("I think (B).", "B"),
        ("My final answer: B, not A", "B"),
    ],
)
def test_parse_choice_reads_committed_answers(text, expected):
    assert parse_choice(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "A or B",
        "(A) or (B)",
        "The answer is either A or B.",
        "Neither A nor B",
        "Both are equally good.",
        "Response A is better. Response B is better.",
        "I cannot decide.",
        "a good question about chemistry",  # the article "a" is not option A
        "The answer is a difficult one.",
        "Sure! Here is a recipe.",
        "",
        "   ",
        None,
    ],
)
def test_parse_choice_abstains_on_ambiguous_or_missing(text):
    assert parse_choice(text) is None
