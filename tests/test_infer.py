"""Inverse CAI (`cai constitution infer`): readers, clustering, voting, selection, and recovery of planted rules."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest

from cai.backends.fake import FakeBackend
from cai.constitution import load_constitution
from cai.constitution.infer import InferConfig, make_pairs, read_pairs, run_infer
from cai.constitution.infer.cache import CachedModel, CallCache
from cai.constitution.infer.propose import Proposal, cluster
from cai.constitution.infer.templates import clean_clause, make_principle
from cai.constitution.infer.vote import greedy_select
from cai.errors import UserInputError

# --- a scripted labeler that follows known rules, and a proposer that names them ---------------------------------

_OPT = re.compile(r"\(([AB])\) <<<\n(.*?)\n>>>", re.S)


def _parts(conv):
    user = next(m["content"] for m in conv if m["role"] == "user")
    q = user.split("Here are two possible replies.\n\n", 1)[1].split("\n\nOptions", 1)[0]
    opts = dict(_OPT.findall(user))
    return q.lower(), opts["A"], opts["B"]


def _has_list(t):
    return any(re.match(r"\s*(-|\*|\d+\.)\s", ln) for ln in t.splitlines())


def _declines(t):
    return any(w in t.lower() for w in ("can't", "won't", "cannot"))


def rule_preference(q: str, a: str, b: str) -> str | None:
    """Which option a question prefers under the planted rules; None when the question does not apply."""
    la, lb = len(a.split()), len(b.split())
    if any(w in q for w in ("shorter", "concise", "brief")):
        if max(la, lb) >= 1.3 * min(la, lb):
            return "A" if la < lb else "B"
        return None
    if "longer" in q:
        if max(la, lb) >= 1.3 * min(la, lb):
            return "A" if la > lb else "B"
        return None
    if "list" in q or "bullet" in q:
        if _has_list(a) != _has_list(b):
            return "B" if _has_list(a) else "A"
        return None
    if "declin" in q or "refus" in q:
        if _declines(a) != _declines(b):
            return "A" if _declines(a) else "B"
        return None
    return None  # "is better", "is more polite", ...: no opinion


def scripted_logprob(conv, option):
    q, a, b = _parts(conv)
    pick = rule_preference(q, a, b)
    if pick is None:
        return math.log(0.5)
    return math.log(0.9 if option == pick else 0.1)


def scripted_proposal(conv):
    user = conv[1]["content"]
    k = int(re.search(r"People preferred Answer (\d)", user).group(1))
    answers = re.findall(r"Answer \d:\n<<<\n(.*?)\n>>>", user, re.S)
    good, bad = answers[k - 1], answers[2 - k]
    h = int(hashlib.sha256(user.encode()).hexdigest()[:6], 16)
    if h % 6 == 0:
        return " is more polite."
    if h % 6 == 1:
        return " is longer and more detailed."
    if _declines(good) != _declines(bad):
        return [" declines the harmful request.", " refuses to help with something harmful."][h % 2]
    if _has_list(good) != _has_list(bad):
        return [" does not use a list.", " avoids bullet points."][h % 2]
    return [" is shorter.", " is more concise."][h % 2]


def bag_of_words(texts):
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z]+", t.lower()):
            out[i, int(hashlib.md5(w.encode()).hexdigest()[:4], 16) % 64] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _run(tmp_path, **kw):
    cfg = InferConfig(input="synthetic", out=str(tmp_path / "out"), proposer="fake", labeler="fake", synthetic_pairs=60,
                      propose_pairs=30, **kw)
    backend = FakeBackend(fn=scripted_proposal, logprob_fn=scripted_logprob)
    return run_infer(cfg, proposer=backend, labeler=backend, embed_fn=bag_of_words), backend, cfg


def test_recovers_planted_rules_and_beats_no_constitution(tmp_path):
    report, _, cfg = _run(tmp_path)
    h = report["heldout"]
    assert h["n"] == 15
    assert h["constitution"]["agreement"] > h["no_constitution"]["agreement"]
    assert h["constitution"]["agreement"] >= 0.9
    assert h["no_constitution"]["agreement"] == 0.5  # the scripted labeler has no opinion without a principle
    assert h["difference"]["ci95"][0] > 0  # the gain is outside the noise
    const = load_constitution(tmp_path / "out" / "constitution.yaml")
    text = " ".join(p.preference_question.lower() for p in const.principles)
    assert re.search(r"shorter|concise", text) and re.search(r"list|bullet", text) and re.search(r"declin|refus", text)
    cands = {c["clause"]: c for c in report["candidates"]}
    assert cands["is longer and more detailed"]["kept"] is False  # votes against the labels
    assert cands["is longer and more detailed"]["train"]["against"] > cands["is longer and more detailed"]["train"]["for"]
    assert cands["is more polite"]["kept"] is False  # never takes a side: relevance 0
    assert cands["is more polite"]["train"]["relevance"] == 0.0
    for p in report["principles"]:
        assert p["train"]["supporting_pairs"] and p["train"]["accuracy"] > 0.5
    md = (tmp_path / "out" / "report.md").read_text()
    assert "with no constitution" in md and "95% interval" in md
    yaml_text = (tmp_path / "out" / "constitution.yaml").read_text()
    assert "# supporting pairs: syn-" in yaml_text


def test_rerun_is_served_from_the_cache(tmp_path):
    first, _, cfg = _run(tmp_path)
    assert first["cache"]["misses"] > 0
    again, backend, _ = _run(tmp_path)
    assert again["cache"]["misses"] == 0 and not backend.calls
    assert again["heldout"] == first["heldout"]

    class NoModels:
        def get(self, spec):
            raise AssertionError(f"a complete cache must load no model ({spec})")

    third = run_infer(cfg, pool=NoModels(), embed_fn=bag_of_words)  # specs "fake": the models are never built
    assert third["heldout"] == first["heldout"]


def test_interrupted_cache_line_is_dropped(tmp_path):
    cache = CallCache(tmp_path / "c.jsonl")
    cache.put_many([("k1", {"text": "a"}), ("k2", {"text": "b"})])
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "k3", "val')
    again = CallCache(tmp_path / "c.jsonl")
    assert "k1" in again and "k2" in again and "k3" not in again
    again.put_many([("k3", {"text": "c"})])
    assert "k3" in CallCache(tmp_path / "c.jsonl")


def test_cached_generation_does_not_depend_on_batch(tmp_path):
    from cai.backends.base import GenParams

    b = FakeBackend(fn=lambda c: "x " + c[-1]["content"])
    m = CachedModel(b, "fake", CallCache(tmp_path / "c.jsonl"), batch=2)
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    out = m.generate(convs, GenParams(max_new_tokens=5), seeds=[1, 2, 3, 4, 5])
    assert out == [f"x q{i}" for i in range(5)]
    assert [len(c) for c in b.calls] == [2, 2, 1]
    m.generate(convs[:3], GenParams(max_new_tokens=5), seeds=[1, 2, 3])
    assert len(b.calls) == 3  # all three from the cache


def test_clean_clause_and_principle_templates():
    assert clean_clause(" is shorter. It is also nicer") == "is shorter"
    assert clean_clause("Choose the response that avoids lists!") == "avoids lists"
    assert clean_clause("...") == ""
    assert clean_clause("is the one that is the one that is the one that is the one that") == ""  # a loop
    assert clean_clause("is the one that is shorter.") == "is shorter"
    p = make_principle("short", "is shorter")
    assert p.preference_question == "Which of these responses is shorter?"
    assert "Choose the response that is shorter." in p.critique_request and "Rewrite" in p.revision_request


def test_cluster_merges_wordings_and_ranks_by_size():
    props = [Proposal("is shorter", "p1"), Proposal("Is shorter", "p2"), Proposal("is shorter and clearer", "p3"),
             Proposal("avoids lists", "p4")]
    cl = cluster(props, bag_of_words, threshold=0.7, max_clusters=5)
    assert cl[0].clause == "is shorter" and cl[0].size == 3 and set(cl[0].pair_ids) == {"p1", "p2", "p3"}
    assert cl[1].clause == "avoids lists"
    assert len(cluster(props, bag_of_words, threshold=0.7, max_clusters=1)) == 1


def test_greedy_selection_stops_when_nothing_helps():
    rows = {"a": [0.9, 0.9, 0.5, 0.5], "b": [0.5, 0.5, 0.9, 0.9], "c": [0.1, 0.1, 0.1, 0.1]}
    chosen, steps = greedy_select(rows, {"a": (0,), "b": (1,), "c": (2,)}, 5)
    assert chosen == ["a", "b"] and steps[-1]["agreement"] == 1.0


# --- readers -----------------------------------------------------------------------------------------------------

def test_reads_icai_trl_and_hh(tmp_path):
    icai = tmp_path / "icai.csv"
    icai.write_text('text_a,text_b,preferred_text,input\n"Short.","Long, long answer.",text_a,Hi\nA,B,text_b,\nC,D,text_a,x\nE,F,text_b,y\n')
    pairs = read_pairs(icai)
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ("Hi", "Short.", "Long, long answer.")
    assert (pairs[1].chosen, pairs[1].rejected, pairs[1].line) == ("B", "A", 3)
    trl = tmp_path / "trl.jsonl"
    trl.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": [{"role": "user", "content": f"q{i}"},
                                       {"role": "assistant", "content": "good"}], "rejected": "bad"}) + "\n" for i in range(4)))
    assert [(p.prompt, p.chosen, p.rejected) for p in read_pairs(trl)][0] == ("q0", "good", "bad")
    hh = tmp_path / "hh.jsonl"
    hh.write_text("".join(json.dumps({"chosen": f"\n\nHuman: hi {i}\n\nAssistant: fine", "rejected": f"\n\nHuman: hi {i}\n\nAssistant: go away"}) + "\n"
                          for i in range(4)))
    p = read_pairs(hh)[0]
    assert (p.prompt, p.chosen, p.rejected) == ("hi 0", "fine", "go away")


@pytest.mark.parametrize("content, where", [
    ("text_a,text_b,preferred_text\nA,B,text_a\nA,B,a\nC,D,text_b\nE,F,text_a\n", r"bad\.csv:3: column 'preferred_text'"),
    ("text_a,text_b,preferred_text\nA,B,text_a\nA,B\n", r"bad\.csv:3: 2 cells, but the header has 3"),
    ("foo,bar\n1,2\n", r"bad\.csv:1: cannot tell the format"),
])
def test_bad_csv_names_file_line_and_column(tmp_path, content, where):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(UserInputError, match=where) as e:
        read_pairs(f)
    assert e.value.fix


def test_hh_pairs_that_continue_different_conversations_are_refused(tmp_path):
    f = tmp_path / "hh.jsonl"
    f.write_text(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}) + "\n")
    with pytest.raises(UserInputError, match=r"hh\.jsonl:1: columns 'chosen' and 'rejected' continue different"):
        read_pairs(f)


def test_synthetic_set_follows_its_rules():
    pairs = make_pairs(30, seed=1)
    assert len(pairs) == 30 and len({p.id for p in pairs}) == 30
    for p in pairs:
        rule = p.id.split("-", 2)[2]
        q = {"shorter": "is shorter", "no-list": "does not use a list", "declines-harm": "declines"}[rule]
        assert rule_preference(q, p.chosen, p.rejected) == "A", p
        for other in {"is shorter", "does not use a list", "declines"} - {q}:
            assert rule_preference(other, p.chosen, p.rejected) is None, (p.id, other)


def test_cli_exit_2_and_located_message_for_a_bad_file(runner, tmp_path):
    from cai.cli.main import app

    f = tmp_path / "prefs.csv"
    f.write_text("text_a,text_b,preferred_text\nA,B,text_a\nA,B,both\nC,D,text_b\nE,F,text_a\n")
    res = runner.invoke(app, ["constitution", "infer", str(f), "--out", str(tmp_path / "o"), "--proposer", "fake", "--labeler", "fake"])
    assert res.exit_code == 2
    assert "prefs.csv:3: column 'preferred_text'" in res.output and "Traceback" not in res.output


def test_cli_infer_prints_the_heldout_comparison(runner, tmp_path, monkeypatch):
    import cai.embed
    from cai.backends.registry import BackendPool
    from cai.cli.main import app

    backend = FakeBackend(fn=scripted_proposal, logprob_fn=scripted_logprob)
    pool = BackendPool()
    pool.put("fake", backend)
    monkeypatch.setattr("cai.constitution.infer.run.BackendPool", lambda: pool)
    monkeypatch.setattr(cai.embed, "embed", bag_of_words)
    res = runner.invoke(app, ["constitution", "infer", "synthetic", "--out", str(tmp_path / "o"), "--model", "fake",
                              "--synthetic-pairs", "36", "--set", "propose_pairs=18"])
    assert res.exit_code == 0, res.output
    assert "with the constitution" in res.output and "with no constitution" in res.output and "chance" in res.output
    assert (tmp_path / "o" / "input.jsonl").read_text().count("\n") == 36
    assert json.loads((tmp_path / "o" / "settings.json").read_text())["propose_pairs"] == 18
    load_constitution(tmp_path / "o" / "constitution.yaml")


@pytest.mark.slow
@pytest.mark.realmodel
def test_embedded_model_end_to_end_on_a_small_synthetic_set(tmp_path):
    """The embedded model as proposer and labeler on 12 synthetic pairs: either a valid constitution with a held-out
    comparison, or a clear error when no candidate survives (the model is weak); both leave a report."""
    from cai.errors import ModelError

    cfg = InferConfig(input="synthetic", out=str(tmp_path / "o"), synthetic_pairs=12, max_candidates=2, propose_pairs=6)
    try:
        r = run_infer(cfg)
    except ModelError as e:
        assert "no candidate principle passed" in e.message and (tmp_path / "o" / "report.md").is_file()
        return
    assert r["heldout"]["n"] == 3 and r["heldout"]["constitution"]["ci95"] is not None
    load_constitution(tmp_path / "o" / "constitution.yaml")
    again = run_infer(cfg)  # resumes from the cache: no new model call
    assert again["cache"]["misses"] == 0


def test_no_surviving_candidate_is_a_clear_error_with_a_report(tmp_path):
    from cai.errors import ModelError

    def contrary(conv, option):  # a labeler that always takes the rejected side of every planted rule
        q, a, b = _parts(conv)
        pick = rule_preference(q, a, b)
        return math.log(0.5) if pick is None else math.log(0.1 if option == pick else 0.9)

    cfg = InferConfig(input="synthetic", out=str(tmp_path / "out"), proposer="fake", labeler="fake", synthetic_pairs=24)
    def planted_only(conv):  # no decoys: every candidate is a planted rule, which this labeler contradicts
        text = scripted_proposal(conv)
        return " is shorter." if "polite" in text or "longer" in text else text

    backend = FakeBackend(fn=planted_only, logprob_fn=contrary)
    with pytest.raises(ModelError, match=r"no candidate principle passed .* no constitution agrees with 50\.0% of 6") as e:
        run_infer(cfg, proposer=backend, labeler=backend, embed_fn=bag_of_words)
    assert "--labeler" in e.value.fix
    md = (tmp_path / "out" / "report.md").read_text()
    assert "no constitution: no candidate passed" in md and "| with no constitution | 50.0% |" in md
    assert not (tmp_path / "out" / "constitution.yaml").exists()
