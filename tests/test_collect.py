"""Collective CAI (`cai constitution collect`): readers, filters, opinion groups, consensus, the draft constitution."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cai.backends.base import Completion
from cai.backends.fake import FakeBackend
from cai.constitution import load_constitution
from cai.constitution.collect import CollectConfig, apply_filters, make_votes, read_votes, run_collect
from cai.constitution.collect.consensus import StatementStats, statement_stats
from cai.constitution.collect.groups import adjusted_rand, find_groups, kmeans, silhouette
from cai.errors import UserInputError


def test_recovers_planted_groups_and_consensus(tmp_path):
    sv = make_votes(150, seed=3)
    cfg = CollectConfig(input="synthetic", out=str(tmp_path / "o"), seed=3, synthetic_participants=150)
    r = run_collect(cfg)
    assert r["groups"]["k"] == 2
    labels = {}
    for line in (tmp_path / "o" / "groups.csv").read_text().splitlines()[1:]:
        p, g = line.split(",")
        labels[p] = int(g)
    planted = [sv.groups[sv.participants.index(p)] for p in labels]
    assert adjusted_rand(np.array(planted), np.array(list(labels.values()))) > 0.9
    assert r["groups"]["stability"]["adjusted_rand_min"] > 0.9
    kept = {x["id"] for x in r["consensus"] if x["kept"]}
    assert kept == set(sv.consensus_ids) and r["kept"] == len(sv.consensus_ids)
    assert {x["id"] for x in r["divisive"][: len(sv.divisive_ids)]} == set(sv.divisive_ids)
    const = load_constitution(tmp_path / "o" / "constitution.yaml")
    assert len(const.principles) == len(sv.consensus_ids)
    assert {p["source_statements"][0] for p in r["principles"]} == set(sv.consensus_ids)
    assert all(len(p["groups"]) == 2 for p in r["principles"])
    text = (tmp_path / "o" / "constitution.yaml").read_text()
    assert "# source statement" in text and "# per-group agreement: group 0:" in text
    curve = r["threshold_curve"]
    assert [c["threshold"] for c in curve][:2] == [0.5, 0.55]
    assert all(a["gac"] >= b["gac"] for a, b in zip(curve, curve[1:]))  # a stricter threshold keeps fewer


def test_polis_export_both_vote_files_agree(tmp_path, fixtures):
    wide = read_votes(fixtures / "polis")
    assert "participants-votes.csv" in wide.source
    long_dir = tmp_path / "long"
    long_dir.mkdir()
    for name in ("comments.csv", "votes.csv"):
        shutil.copy(fixtures / "polis" / name, long_dir / name)
    long = read_votes(long_dir)
    assert "votes.csv" in long.source
    assert [s.id for s in wide.statements] == [s.id for s in long.statements] == [str(i) for i in range(10)]
    order = [long.participants.index(p) for p in wide.participants]
    np.testing.assert_array_equal(np.nan_to_num(wide.votes, nan=9), np.nan_to_num(long.votes[order], nan=9))
    assert long.votes[long.participants.index("0"), 0] == 1.0  # the later of two votes counts
    assert wide.statements[9].moderated == -1


def test_filters_are_applied_and_logged(fixtures):
    data = read_votes(fixtures / "polis")
    kept, log = apply_filters(data, CollectConfig(input="x"))
    assert "9" not in [s.id for s in kept.statements]  # moderated out
    assert "15" not in kept.participants and "6" not in kept.participants  # 3 votes; 7 with one on a dropped statement
    assert any("moderated-out" in x and x.startswith("dropped 1") for x in log)
    assert any("fewer than 7 votes" in x and x.startswith("dropped 2") for x in log)
    kept2, _ = apply_filters(data, CollectConfig(input="x", include_unmoderated=False))
    assert {"5", "8"}.isdisjoint(s.id for s in kept2.statements)


def test_polis_fixture_end_to_end(tmp_path, fixtures):
    r = run_collect(CollectConfig(input=str(fixtures / "polis"), out=str(tmp_path / "o"), stability_seeds=2))
    assert r["groups"]["k"] == 2 and sorted(r["groups"]["sizes"]) == [7, 7]
    assert r["groups"]["stability"]["export_groups"] == {"participants": 14, "adjusted_rand": 1.0}  # the export's group-id
    kept = {x["id"] for x in r["consensus"] if x["kept"]}
    assert {"0", "3", "6"} <= kept and not {"1", "2", "4", "7"} & kept
    load_constitution(tmp_path / "o" / "constitution.yaml")
    assert (tmp_path / "o" / "statements_ranked.csv").read_text().startswith("rank,id,gac")


def test_group_aware_consensus_and_threshold_rule():
    s = StatementStats(0, agrees=[8, 3], disagrees=[1, 1], passes=[1, 0])
    assert s.votes == [10, 4]
    assert s.gac == pytest.approx((9 / 12) * (4 / 6))
    assert s.gac_mean == pytest.approx(s.gac ** 0.5)
    assert s.kept("threshold", 0.75, 3) and not s.kept("threshold", 0.8, 3)  # 8/10 and 3/4
    assert not s.kept("threshold", 0.5, 5)  # group 1 cast only 4 votes
    assert s.kept("gac", 0.7, 1) and not s.kept("gac", 0.75, 1)
    votes = np.array([[1, -1], [1, np.nan], [0, 1], [-1, 1]])
    st = statement_stats(votes, np.array([0, 0, 1, 1]), 2)
    assert (st[0].agrees, st[0].disagrees, st[0].passes) == ([2, 0], [0, 1], [0, 1])
    assert (st[1].agrees, st[1].disagrees) == ([0, 2], [1, 0])


def test_kmeans_silhouette_and_k_choice():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [6, 0], [0, 6]])
    x = np.concatenate([c + rng.normal(0, 0.5, (20, 2)) for c in centres])
    truth = np.repeat([0, 1, 2], 20)
    labels, _ = kmeans(x, 3, seed=1)
    assert adjusted_rand(truth, labels) == pytest.approx(1.0)
    assert silhouette(x, labels) > 0.7 > silhouette(x, kmeans(x, 2, seed=1)[0])
    assert adjusted_rand(truth, rng.permutation(truth)) < 0.2
    # votes that follow the three blobs: k = 3 is found, and stays across seeds
    signs = np.sign(np.concatenate([np.tile(v, (20, 1)) for v in ([1, 1, -1, -1, 1, -1], [-1, 1, 1, -1, -1, 1], [1, -1, 1, 1, -1, -1])]))
    g = find_groups(signs + 0.0, max_k=5, min_group=3, seed=0, stability_seeds=3)
    assert g.k == 3 and sorted(g.sizes) == [20, 20, 20] and g.stability["same_k"] == 3


def test_model_rewrite_and_verbatim_fallback(tmp_path, fixtures):
    replies = iter([" is honest about what it does not know.", Completion("", finish_reason="error", error="x")])
    fake = FakeBackend(fn=lambda conv: next(replies, " respects privacy."))
    cfg = CollectConfig(input=str(fixtures / "polis"), out=str(tmp_path / "o"), rewrite="model", rewriter="fake",
                        stability_seeds=0, max_principles=3)
    r = run_collect(cfg, rewriter=fake)
    ways = [p["wording"] for p in r["principles"]]
    assert ways == ["model", "verbatim", "model"]
    assert r["principles"][0]["principle"] == "Choose the response that is honest about what it does not know."
    assert "agrees best with this statement" in r["principles"][1]["principle"]
    assert "Choose the response that" in fake.calls[0][0][-1]["content"]  # the rewrite is prefilled
    run_collect(cfg, rewriter=fake)  # a rerun is answered from the cache
    assert len(fake.calls) == 1


@pytest.mark.parametrize("name, content, where", [
    ("votes.csv", "participant,statement,vote\nu1,s1,1\nu1,s2,yes\n", r"votes\.csv:3: column 'vote': vote 'yes' is not a number"),
    ("votes.csv", "participant,statement,vote\nu1,s1,2\n", r"votes\.csv:2: column 'vote': vote '2' is not 1, -1 or 0"),
    ("votes.csv", "participant,statement,vote\nu1,s9,1\n", r"votes\.csv:2: column 'statement': statement 's9' is not in"),
    ("votes.csv", "person,statement,vote\nu1,s1,1\n", r"votes\.csv:1: no column 'participant'"),
    ("statements.csv", "id,text\ns1,Be kind.\ns1,Be brief.\n", r"statements\.csv:3: column 'id': id 's1' is also on line 2"),
])
def test_bad_files_name_file_line_and_column(tmp_path, name, content, where):
    (tmp_path / "statements.csv").write_text("id,text\ns1,Be kind.\ns2,Be brief.\n")
    (tmp_path / "votes.csv").write_text("participant,statement,vote\nu1,s1,1\n")
    (tmp_path / name).write_text(content)
    with pytest.raises(UserInputError, match=where) as e:
        read_votes(tmp_path)
    assert e.value.fix


def test_polis_wide_file_with_an_unknown_comment_column(tmp_path, fixtures):
    shutil.copy(fixtures / "polis" / "comments.csv", tmp_path / "comments.csv")
    (tmp_path / "participants-votes.csv").write_text("participant,group-id,n-comments,n-votes,n-agree,n-disagree,0,77\n1,0,0,1,1,0,1,\n")
    with pytest.raises(UserInputError, match=r"participants-votes\.csv:1: column '77' is not a comment id"):
        read_votes(tmp_path)


def test_cli_collect_on_the_fixture_and_on_a_bad_folder(runner, tmp_path, fixtures):
    from cai.cli.main import app

    res = runner.invoke(app, ["constitution", "collect", str(fixtures / "polis"), "--out", str(tmp_path / "o"), "--rule", "threshold"])
    assert res.exit_code == 0, res.output
    assert "opinion groups" in res.output and "constitution:" in res.output
    res = runner.invoke(app, ["constitution", "collect", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "not a folder" in res.output and "Traceback" not in res.output


@pytest.mark.slow
@pytest.mark.realmodel
def test_embedded_model_rewrites_statements(tmp_path, fixtures):
    cfg = CollectConfig(input=str(fixtures / "polis"), out=str(tmp_path / "o"), rewrite="model", stability_seeds=0,
                        max_principles=3)
    r = run_collect(cfg)
    const = load_constitution(tmp_path / "o" / "constitution.yaml")
    assert len(const.principles) == 3
    for p in r["principles"]:
        assert p["principle"].startswith("Choose the response that ") and p["wording"] in ("model", "verbatim")
