"""Known-answer tests for the evaluation statistics."""

from __future__ import annotations

import math

import pytest

from cai.evaluate import stats as st


def test_wilson_known_values():
    lo, hi = st.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4)
    assert hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = st.wilson(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1.96**2 / (10 + 1.96**2), abs=1e-9)  # closed form when k = 0
    lo, hi = st.wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 1.96**2 / (10 + 1.96**2), abs=1e-9)
    assert st.wilson(0, 0) == (0.0, 1.0)
    # a larger sample gives a narrower interval around the same rate
    a, b = st.wilson(50, 100), st.wilson(5, 10)
    assert a[1] - a[0] < b[1] - b[0]


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        st.wilson(3, 2)
    with pytest.raises(ValueError):
        st.wilson(-1, 2)


def test_bootstrap_ci():
    assert st.bootstrap_ci([]) is None
    assert st.bootstrap_ci([3.0]) == (3.0, 3.0)
    assert st.bootstrap_ci([2.0] * 20) == (2.0, 2.0)
    values = list(range(100))
    lo, hi = st.bootstrap_ci(values, n=1000, seed=1)
    assert lo < 49.5 < hi
    # standard error of the mean is about 2.9, so the 95% interval is about +-5.7
    assert 8 < hi - lo < 15
    assert st.bootstrap_ci(values, n=500, seed=7) == st.bootstrap_ci(values, n=500, seed=7)
    # any statistic: the median of texts' lengths
    texts = ["a b", "a b c d", "a"] * 5
    lo, hi = st.bootstrap_ci(texts, fn=lambda xs: sorted(len(t.split()) for t in xs)[len(xs) // 2], n=200)
    assert 1 <= lo <= hi <= 4


def test_elo_two_models_exact():
    # a scores 0.75 against b on average: Bradley-Terry odds 3:1, i.e. 400*log10(3) Elo points
    results = [("a", "b", 1.0), ("a", "b", 1.0), ("a", "b", 1.0), ("a", "b", 0.0)]
    r = st.elo(results, anchor="b", prior=0)
    assert r["b"] == 0.0
    assert r["a"] == pytest.approx(400 * math.log10(3), abs=1e-3)
    m = st.elo(results, prior=0)  # mean-anchored
    assert m["a"] == pytest.approx(200 * math.log10(3), abs=1e-3)
    assert m["a"] + m["b"] == pytest.approx(0.0, abs=1e-9)
    # soft scores give the same fit as the equivalent wins
    assert st.elo([("a", "b", 0.75)] * 4, anchor="b", prior=0)["a"] == pytest.approx(r["a"], abs=1e-3)
    # order of a pair does not matter
    assert st.elo([("b", "a", 0.25)] * 4, anchor="b", prior=0)["a"] == pytest.approx(r["a"], abs=1e-3)


def test_elo_chain_and_prior():
    results = [("a", "b", 0.75)] * 8 + [("b", "c", 0.75)] * 8
    r = st.elo(results, anchor="b", prior=0)
    assert r["a"] == pytest.approx(400 * math.log10(3), abs=1e-2)
    assert r["c"] == pytest.approx(-400 * math.log10(3), abs=1e-2)
    # one model wins everything: the prior (one virtual tie per pair) keeps the rating finite: odds (5 + 0.5) : 0.5
    sweep = st.elo([("a", "b", 1.0)] * 5, anchor="b", prior=1.0)
    assert sweep["a"] == pytest.approx(400 * math.log10(11), abs=1e-3)
    with pytest.raises(ValueError):
        st.elo([("a", "a", 1.0)])
    with pytest.raises(ValueError):
        st.elo([("a", "b", 1.5)])
    with pytest.raises(ValueError):
        st.elo([("a", "b", 0.5)], anchor="zzz")
    assert st.elo([]) == {}


def test_mean_of_nothing_is_nan():
    assert math.isnan(st.mean([]))
