"""Known-answer tests for cai.textmetrics: one definition of each text measurement, three kinds of repetition."""

from __future__ import annotations

import pytest

from cai.evaluate import stats as st
from cai.textmetrics import (
    answers_with_top_ngram,
    distinct_ngram_ratio,
    length_stats,
    loop_share,
    most_frequent_ngram,
    most_widespread_ngram,
    top_ngram_share,
    top_ngram_share_ci,
    word_count,
    words,
)

VARIED = [
    "Boil the eggs for nine minutes, then cool them in cold water.",
    "A sonnet has fourteen lines and usually ends with a rhyming couplet.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "To reverse a list in Python, call reversed() or slice it with [::-1].",
]
BOILERPLATE = "I'm sorry, but I can't help with that request."


# --- words --------------------------------------------------------------------------------------------------------
def test_words_ignore_punctuation_and_markup():
    assert words("**Step 1.** Don't panic!") == ["step", "1", "don't", "panic"]
    assert word_count("  one  two ") == 2 and word_count("") == 0 and word_count(None) == 0
    assert words("the CAT sat, quietly") == ["the", "cat", "sat", "quietly"]


# --- top_ngram_share: pooled over answers (cai eval's ngram_repeat_share) -----------------------------------------
def test_top_ngram_share():
    # "a b c a b c": 3-grams abc, bca, cab, abc -> the most common takes 2 of 4
    assert top_ngram_share(["a b c a b c"], n=3) == 0.5
    assert top_ngram_share(["one two"], n=3) == 0.0
    assert top_ngram_share([], n=3) == 0.0
    varied = ["the cat sat on the mat", "dogs bark at night", "rain fell all day long"]
    assert top_ngram_share(varied, n=3) == pytest.approx(1 / 9)  # 4 + 2 + 3 distinct 3-grams
    boiler = ["I am sorry but I cannot help"] * 10
    assert top_ngram_share(boiler, n=3) == pytest.approx(1 / 5)  # 7 words: 5 distinct 3-grams, each 10 times
    assert most_frequent_ngram(["x y z x y z"], n=3) == ("x y z", 2, 4)
    assert most_frequent_ngram([], n=3) is None


def test_top_ngram_share_ci_matches_generic_bootstrap():
    texts = ["the cat sat on the mat", "I am sorry but I cannot help", "I am sorry but no", "rain fell all day long"] * 3
    fast = top_ngram_share_ci(texts, n=3, n_boot=400, seed=3)
    slow = st.bootstrap_ci(texts, fn=lambda xs: top_ngram_share(xs, 3), n=400, seed=3)
    point = top_ngram_share(texts, 3)
    assert fast[0] <= point <= fast[1] and slow[0] <= point <= slow[1]
    # different random streams, same distribution: the intervals agree closely
    assert abs(fast[0] - slow[0]) < 0.03 and abs(fast[1] - slow[1]) < 0.03
    assert top_ngram_share_ci([], 3) is None
    assert top_ngram_share_ci(["a b c a b c"], 3) == (0.5, 0.5)
    assert top_ngram_share_ci(["same words here"] * 5, 3) == (1.0, 1.0)


def test_markup_is_not_a_repeated_phrase():
    # markdown bullets repeated across answers are not a repeated phrase
    texts = [f"* **{w}** item number {i}" for i, w in enumerate(["alpha", "beta", "gamma", "delta"])]
    assert most_frequent_ngram(texts, 3)[0] != "* * *"
    assert most_frequent_ngram(["I'm sorry, but no. I'm sorry, but no."], 3) == ("i'm sorry but", 2, 6)  # 8 words


# --- answers_with_top_ngram: share of answers (cai rl's repeat_3gram_share) ---------------------------------------
def test_answers_with_top_ngram_identical_texts_is_one():
    assert answers_with_top_ngram([BOILERPLATE] * 5) == 1.0


def test_answers_with_top_ngram_varied_texts_is_one_over_n():
    assert answers_with_top_ngram(VARIED) == pytest.approx(1 / len(VARIED))


def test_answers_with_top_ngram_counts_answers_not_occurrences():
    # the boilerplate appears in 3 of 4 answers, one of them twice: share 3/4
    texts = [BOILERPLATE + " " + VARIED[0], BOILERPLATE + " " + BOILERPLATE, BOILERPLATE + " Try a library.", VARIED[1]]
    assert answers_with_top_ngram(texts) == pytest.approx(0.75)
    gram, count = most_widespread_ngram(texts)
    assert count == 3 and gram is not None and " ".join(gram) in BOILERPLATE.lower().replace(",", "").replace(".", "")
    # the same texts pooled: the boilerplate's 3-grams are a small share of all 3-grams
    assert top_ngram_share(texts) < 0.2


def test_answers_with_top_ngram_edge_cases():
    assert answers_with_top_ngram([]) == 0.0
    assert answers_with_top_ngram(["ok", "", "no way"]) == 0.0  # no answer has a 3-gram
    assert answers_with_top_ngram(["The cat sat down.", "the CAT sat, quietly"]) == 1.0  # case and punctuation ignored


# --- loop_share: within one text (a revision looping on itself) ---------------------------------------------------
def test_loop_share_flags_a_loop_not_a_phrase_said_twice():
    loop = "I am sorry but I am sorry but I am sorry but I am sorry but no."
    # 17 words, 15 3-grams; "i am sorry", "am sorry but", "sorry but i", "but i am" ... the top one occurs 4 times
    assert loop_share(loop) == pytest.approx(4 / 15)
    assert loop_share("I am sorry but I am sorry, that is all I can say about it today.") == 0.0  # top 3-gram twice
    assert loop_share("too short to loop") == 0.0  # fewer than 4 3-grams
    assert loop_share(" ".join(["go", "on"] * 10)) == pytest.approx(9 / 18)
    assert loop_share(" ".join(VARIED)) == 0.0


# --- diversity and length -----------------------------------------------------------------------------------------
def test_distinct_ngram_ratio():
    assert distinct_ngram_ratio(VARIED) == 1.0
    assert distinct_ngram_ratio([BOILERPLATE] * 4) == pytest.approx(0.25)
    # an answer looping on itself: "go on go on go on ..." has only 2 distinct 3-grams
    loop = " ".join(["go", "on"] * 10)
    assert distinct_ngram_ratio([loop]) == pytest.approx(2 / 18)
    assert distinct_ngram_ratio(["", "hi"]) == 1.0


def test_length_stats():
    s = length_stats(["one two three", "", "four five"])
    assert s["answer_words"] == pytest.approx(5 / 3)
    assert s["answer_chars"] == pytest.approx((13 + 0 + 9) / 3)
    assert s["empty_rate"] == pytest.approx(1 / 3)
    assert length_stats([]) == {"answer_words": 0.0, "answer_chars": 0.0, "empty_rate": 0.0}
