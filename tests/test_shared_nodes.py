"""The branch points that letter scoring prefills once (:func:`cai.backends.fast_generate.shared_nodes`)."""

from __future__ import annotations

from cai.backends.fast_generate import MIN_GROUP, shared_nodes


def _seq(*parts: tuple[int, int]) -> list[int]:
    """A token sequence made of runs (value, length)."""
    return [v for v, n in parts for _ in range(n)]


def test_nested_branches_come_in_waves():
    head, a, b, c = (1, 50), (2, 40), (3, 40), (4, 40)
    tail = (9, 5)
    seqs = sorted([_seq(head, a, b, tail), _seq(head, a, c, tail), _seq(head, b, a, tail), _seq(head, b, c, tail)])
    waves = shared_nodes(seqs, base=0)
    assert [sorted(len(n) for n in w) for w in waves] == [[49], [89, 89]]
    assert waves[1][0][:49] == waves[0][0]  # the deeper branch points continue the shallow one


def test_short_branches_are_not_worth_a_separate_prefill():
    seqs = sorted([_seq((1, 50), (2, MIN_GROUP // 2), (3, 10)), _seq((1, 50), (2, MIN_GROUP // 2), (4, 10)),
                   _seq((1, 50), (5, 10))])
    assert [len(w) for w in shared_nodes(seqs, base=0)] == [1]  # only the 50-token head
    assert shared_nodes(seqs, base=40) == []  # nothing long enough past the call's common prefix


def test_no_shared_prefix_means_no_waves():
    assert shared_nodes([[1, 2, 3], [4, 5, 6]], base=0) == []
