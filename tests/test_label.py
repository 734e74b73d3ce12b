"""The `pairs` and `label` stages with scripted fake backends: real stage code, scripted model behaviour."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.data.io import read_jsonl, write_jsonl
from cai.labeling import prompts as P
from cai.stages.label import WEAK_WARNING, LabelConfig, run_label
from cai.stages.pairs import PairsConfig, run_pairs

_OPTS = re.compile(r"\(A\) (?P<a>.*?)\n\n\(B\) (?P<b>.*?)\n\nAnswer with", re.S)


def options(conv) -> tuple[str, str]:
    user = next(m["content"] for m in conv if m["role"] == "user")
    m = _OPTS.search(user)
    assert m, user
    return m.group("a"), m.group("b")


class RecordingFake(FakeBackend):
    """A FakeBackend that also records generation parameters and scoring calls."""

    def __init__(self, **kw):
        super().__init__(**kw)
        if not hasattr(self, "params"):
            self.params = []
        self.scored = []

    def generate(self, conversations, params):
        n = len(self.params)
        out = super().generate(conversations, params)
        if len(self.params) == n:  # the base class does not record parameters itself
            self.params.append(params)
        return out

    def option_logprobs(self, conversations, options):
        self.scored.append(conversations)
        return super().option_logprobs(conversations, options)


def pool_with(backend) -> BackendPool:
    pool = BackendPool()
    pool.put("fake", backend)
    return pool


def shorter_lover(strength: float = 0.9):
    """A labeler that truly prefers the shorter answer, wherever it stands."""

    def fn(conv, option):
        a, b = options(conv)
        want = "A" if len(a) < len(b) else "B"
        return math.log(strength if option == want else 1 - strength)

    return fn


def position_lover(conv, option):
    """A labeler that only reads position: p(A) = 0.8 always."""
    return math.log(0.8 if option == "A" else 0.2)


SHORT = ["I can't help with that, but here is a safe alternative.", "No.", "Please talk to a professional.", "Here is a safer idea."]
LONG = [
    "Sure, here is a long and detailed answer that goes on and on with many steps and specifics.",
    "Absolutely. First you gather materials, then you follow a long list of instructions carefully.",
    "Of course! Let me explain every part of this at great length with lots of detail for you.",
    "Certainly, this is a lengthy reply that covers the request in full with many extra words.",
]


def write_pairs(path, n=6, *, short_first_every=2):
    rows = []
    for i in range(n):
        s, long_ = SHORT[i % len(SHORT)], LONG[i % len(LONG)]
        resp = [s, long_] if i % short_first_every == 0 else [long_, s]
        rows.append({"id": f"p{i}", "prompt": f"Question number {i}: how do I do something risky?", "category": "illegal_other", "responses": resp})
    write_jsonl(path, rows)
    return rows


# --- label: logprob mode ------------------------------------------------------------------------------------------------
def test_labeler_preferring_shorter_gives_consistent_confident_labels(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = write_pairs(pairs, n=6)
    fake = RecordingFake(logprob_fn=shorter_lover(0.9))
    cfg = LabelConfig(labeler="fake", pairs=str(pairs), shard_size=4)
    m = run_label(cfg, str(tmp_path / "run"), pool=pool_with(fake))

    labels = read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")
    assert len(labels) == 6
    for r, src in zip(labels, rows):
        shorter = "a" if len(src["responses"][0]) < len(src["responses"][1]) else "b"
        assert r["chosen"] == shorter
        assert r["consistent"] is True
        assert r["p_chosen"] == pytest.approx(0.9)
        assert r["confidence"] == pytest.approx(0.8)
        j = r["judgments"][0]
        # raw per-order probabilities: the shorter answer gets 0.9 in whichever position it stands
        pa1 = 0.9 if shorter == "a" else 0.1
        assert j["p_a_order1"] == pytest.approx(pa1)
        assert j["p_a_order2"] == pytest.approx(1 - pa1)
        assert j["method"] == ["logprob", "logprob"]
        assert r["response_a"] == src["responses"][0] and r["response_b"] == src["responses"][1]
    s = m["labels"]
    assert s["position_consistency_rate"] == 1.0
    assert s["mean_confidence"] == pytest.approx(0.8)
    assert s["position_bias"] == pytest.approx(0.0)
    assert s["share_preferring_position_a"] == pytest.approx(0.5)
    assert s["kept_after_filter"] == 6
    assert s["confidence_histogram"][8] == 6 and sum(s["confidence_histogram"]) == 6
    assert m["warnings"] == []
    # batching: one scoring call per shard (6 comparisons, shard size 4 -> 2 shards), both orders in it
    assert [len(c) for c in fake.scored] == [8, 4]
    assert fake.params == []  # no generation needed when log-probabilities are available

    prefs = read_jsonl(tmp_path / "run" / "label" / "preference.jsonl")
    assert len(prefs) == 6
    for p, src in zip(prefs, rows):
        assert p["chosen"][0]["content"] == min(src["responses"], key=len)
        assert p["rejected"][0]["content"] == max(src["responses"], key=len)
        assert p["score_chosen"] == pytest.approx(0.9)
        assert p["prompt"] == [{"role": "user", "content": src["prompt"]}]


def test_position_biased_labeler_is_flagged_as_weak(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, n=5)
    cfg = LabelConfig(labeler="fake", pairs=str(pairs))
    m = run_label(cfg, str(tmp_path / "run"), pool=pool_with(FakeBackend(logprob_fn=position_lover)))
    labels = read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")
    for r in labels:
        assert r["p_a"] == pytest.approx(0.5)
        assert r["consistent"] is False
        assert r["chosen"] is None and r["kept"] is False
        assert r["judgments"][0]["p_a_order1"] == pytest.approx(0.8)
        assert r["judgments"][0]["p_a_order2"] == pytest.approx(0.8)
    s = m["labels"]
    assert s["position_consistency_rate"] == 0.0
    assert s["position_bias"] == pytest.approx(0.6)
    assert s["share_preferring_position_a"] == 1.0
    assert s["kept_after_filter"] == 0
    assert any(WEAK_WARNING in w for w in m["warnings"])
    assert read_jsonl(tmp_path / "run" / "label" / "preference.jsonl") == []


def test_ensemble_averages_principles_and_records_each(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, n=4)
    from cai.constitution import load_constitution

    const = load_constitution("default")
    strength = {p.preference_question: 0.6 + 0.3 * (i % 2) for i, p in enumerate(const.principles)}

    def fn(conv, option):
        user = next(m["content"] for m in conv if m["role"] == "user")
        q = next(q for q in strength if q in user)
        a, b = options(conv)
        want = "A" if len(a) < len(b) else "B"
        return math.log(strength[q] if option == want else 1 - strength[q])

    cfg = LabelConfig(labeler="fake", pairs=str(pairs), ensemble=3, seed=5)
    run_label(cfg, str(tmp_path / "run"), pool=pool_with(FakeBackend(logprob_fn=fn)))
    labels = read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")
    for r in labels:
        assert len(r["principle_ids"]) == 3 and len(set(r["principle_ids"])) == 3
        per = [strength[const.principle(pid).preference_question] for pid in r["principle_ids"]]
        assert [j["p"] if r["chosen"] == "a" else 1 - j["p"] for j in r["judgments"]] == pytest.approx(per)
        assert r["p_chosen"] == pytest.approx(sum(per) / 3)
    # same seed -> same principles; another seed -> a different draw somewhere
    again = tmp_path / "run2"
    run_label(cfg, str(again), pool=pool_with(FakeBackend(logprob_fn=fn)))
    assert [r["principle_ids"] for r in read_jsonl(again / "label" / "labels.jsonl")] == [r["principle_ids"] for r in labels]
    other = tmp_path / "run3"
    run_label(cfg.model_copy(update={"seed": 6}), str(other), pool=pool_with(FakeBackend(logprob_fn=fn)))
    assert [r["principle_ids"] for r in read_jsonl(other / "label" / "labels.jsonl")] != [r["principle_ids"] for r in labels]


def test_min_confidence_filters_training_file_but_keeps_full_record(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = write_pairs(pairs, n=4)

    def fn(conv, option):  # strong on prompts 0 and 1, weak on 2 and 3
        user = next(m["content"] for m in conv if m["role"] == "user")
        strong = "number 0" in user or "number 1" in user
        return shorter_lover(0.95 if strong else 0.55)(conv, option)

    cfg = LabelConfig(labeler="fake", pairs=str(pairs), min_confidence=0.5)
    m = run_label(cfg, str(tmp_path / "run"), pool=pool_with(FakeBackend(logprob_fn=fn)))
    labels = read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")
    assert len(labels) == 4
    assert [r["kept"] for r in labels] == [True, True, False, False]
    assert [r["confidence"] for r in labels] == pytest.approx([0.9, 0.9, 0.1, 0.1])
    prefs = read_jsonl(tmp_path / "run" / "label" / "preference.jsonl")
    assert [p["id"] for p in prefs] == [rows[0]["id"], rows[1]["id"]]
    assert m["labels"]["kept_after_filter"] == 2


# --- label: chain of thought ----------------------------------------------------------------------------------------------
def test_cot_mode_reasons_first_then_scores_and_clamps(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, n=3)
    seen = []

    def lp(conv, option):
        seen.append(conv[-1]["content"])
        return shorter_lover(0.95)(conv, option)

    fake = RecordingFake(fn=lambda conv: "The shorter reply avoids giving dangerous detail.", logprob_fn=lp)
    cfg = LabelConfig(labeler="fake", pairs=str(pairs), mode="cot", cot_tokens=40)
    m = run_label(cfg, str(tmp_path / "run"), pool=pool_with(fake))
    labels = read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")
    # one reasoning call for every comparison and order, then one scoring call
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 6
    assert fake.calls[0][0][-1] == {"role": "assistant", "content": P.COT_PREFILL}
    assert fake.params[0].max_new_tokens == 40
    assert all("The shorter reply avoids" in s and s.endswith(P.COT_ANSWER) for s in seen)
    for r in labels:
        assert r["mode"] == "cot"
        assert r["p_a_unclamped"] in (pytest.approx(0.95), pytest.approx(0.05))
        assert r["p_chosen"] == pytest.approx(0.6)  # clamped to the default [0.4, 0.6]
        assert r["confidence"] == pytest.approx(0.9)  # measured before clamping
        assert r["judgments"][0]["reasoning"] == ["The shorter reply avoids giving dangerous detail."] * 2
    assert m["labels"]["clamp"] == [0.4, 0.6]
    prefs = read_jsonl(tmp_path / "run" / "label" / "preference.jsonl")
    assert [p["score_chosen"] for p in prefs] == pytest.approx([0.6] * 3)


# --- label: backends without log-probabilities ------------------------------------------------------------------------------
def test_no_logprobs_falls_back_to_parsing_with_retries_and_abstains(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, n=3)
    tries: dict[str, int] = {}

    def answer(conv):
        user = next(m["content"] for m in conv if m["role"] == "user")
        a, b = options(conv)
        key = user
        tries[key] = tries.get(key, 0) + 1
        if "number 2" in user:
            return "It depends on what you value, A or B."  # never commits: abstention
        if "number 1" in user and tries[key] == 1:
            return "Hmm, let me think about this."  # commits only on the retry
        return f"Answer: ({'A' if len(a) < len(b) else 'B'})"

    fake = RecordingFake(fn=answer, logprob_fn=lambda conv, option: None)
    cfg = LabelConfig(labeler="fake", pairs=str(pairs), parse_retries=2)
    m = run_label(cfg, str(tmp_path / "run"), pool=pool_with(fake))
    labels = read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")
    by_id = {r["id"]: r for r in labels}
    assert by_id["p0"]["abstained"] is False and by_id["p0"]["p_chosen"] == 1.0 and by_id["p0"]["consistent"] is True
    assert by_id["p0"]["judgments"][0]["method"] == ["parsed", "parsed"]
    assert by_id["p1"]["abstained"] is False and by_id["p1"]["chosen"] == "b"
    assert len(by_id["p1"]["judgments"][0]["answers"][0]) == 2  # first attempt unparseable, retry parsed
    ab = by_id["p2"]
    assert ab["abstained"] is True and ab["p_a"] is None and ab["chosen"] is None and ab["kept"] is False
    assert [len(x) for x in ab["judgments"][0]["answers"]] == [3, 3]  # 1 try + 2 retries per order, then give up
    # attempt 0 greedy, retries sampled with different seeds
    assert fake.params[0].temperature == 0.0
    assert len({p.seed for p in fake.params}) == len(fake.params) == 3
    assert all(p.temperature > 0 for p in fake.params[1:])
    assert m["labels"]["abstentions"] == 1
    assert m["labels"]["parsed_judgments"] == 2
    assert {p["id"] for p in read_jsonl(tmp_path / "run" / "label" / "preference.jsonl")} == {"p0", "p1"}


# --- TRL format ------------------------------------------------------------------------------------------------------------
def test_preference_file_loads_with_datasets_in_trl_format(tmp_path):
    pytest.importorskip("datasets")
    from datasets import load_dataset

    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, n=4)
    run_label(LabelConfig(labeler="fake", pairs=str(pairs)), str(tmp_path / "run"), pool=pool_with(FakeBackend(logprob_fn=shorter_lover())))
    ds = load_dataset("json", data_files=str(tmp_path / "run" / "label" / "preference.jsonl"), split="train")
    assert len(ds) == 4
    assert {"prompt", "chosen", "rejected", "score_chosen"} <= set(ds.column_names)
    # TRL decides the dataset type from these keys; a "label" column would make it an invalid preference set
    assert "label" not in ds.column_names and "completion" not in ds.column_names
    ex = ds[0]
    assert ex["prompt"][0]["role"] == "user" and ex["chosen"][0]["role"] == "assistant" and ex["rejected"][0]["role"] == "assistant"
    assert 0.5 < ex["score_chosen"] <= 1.0
    from trl.data_utils import is_conversational

    assert is_conversational(ex)


# --- inputs --------------------------------------------------------------------------------------------------------------------
def test_k3_rows_compare_consecutive_pairs_and_skip_identical(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [
        {"id": "x", "prompt": "Q?", "responses": ["short", "a much longer answer", "mid answer"]},
        {"id": "y", "prompt": "Q2?", "responses": ["Same text", "same  text"]},
    ])
    m = run_label(LabelConfig(labeler="fake", pairs=str(pairs)), str(tmp_path / "run"), pool=pool_with(FakeBackend(logprob_fn=shorter_lover())))
    labels = read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")
    assert [(r["id"], r["pair"]) for r in labels] == [("x:0-1", [0, 1]), ("x:1-2", [1, 2])]
    assert [r["chosen"] for r in labels] == ["a", "b"]
    assert m["labels"]["skipped_identical"] == 1


def test_user_pairs_file_with_columns_and_clear_errors(tmp_path):
    from cai.errors import UserInputError

    f = tmp_path / "mine.jsonl"
    write_jsonl(f, [{"question": "Q?", "first": "tiny", "second": "a lot longer reply"}])
    cfg = LabelConfig(labeler="fake", pairs=str(f), column_map={"prompt": "question", "response_a": "first", "response_b": "second"})
    run_label(cfg, str(tmp_path / "run"), pool=pool_with(FakeBackend(logprob_fn=shorter_lover())))
    assert read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")[0]["chosen"] == "a"

    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"prompt": "Q?", "answer": "only one"}])
    with pytest.raises(UserInputError, match="bad.jsonl.*no answers to compare"):
        run_label(LabelConfig(labeler="fake", pairs=str(bad)), str(tmp_path / "run2"), pool=pool_with(FakeBackend()))
    with pytest.raises(UserInputError, match="cai pairs"):
        run_label(LabelConfig(labeler="fake"), str(tmp_path / "empty-run"), pool=pool_with(FakeBackend()))


def test_label_resumes_from_shards(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, n=6)
    cfg = LabelConfig(labeler="fake", pairs=str(pairs), shard_size=2)
    run_dir = tmp_path / "run"
    run_label(cfg, str(run_dir), pool=pool_with(FakeBackend(logprob_fn=shorter_lover())))
    stage = run_dir / "label"
    full = (stage / "labels.jsonl").read_text()
    # simulate a kill during the last shard: no manifest, no outputs, last shard missing
    for name in ("manifest.json", "labels.jsonl", "preference.jsonl", "shards/00002.jsonl"):
        (stage / name).unlink()
    fake = RecordingFake(logprob_fn=shorter_lover())
    m = run_label(cfg, str(run_dir), pool=pool_with(fake))
    assert (stage / "labels.jsonl").read_text() == full
    assert len(fake.scored) == 1 and len(fake.scored[0]) == 4  # only the missing shard was scored
    assert m["timing"]["resumed_rows"] == 4


# --- pairs ---------------------------------------------------------------------------------------------------------------------
def test_pairs_samples_k_answers_in_one_batch_per_shard(tmp_path):
    counter = itertools.count()
    fake = RecordingFake(fn=lambda conv: "same answer" if "rt-0005" in json.dumps(conv) else f"answer {next(counter)}")
    cfg = PairsConfig(policy="fake", limit=5, k=3, shard_size=2, max_tokens=30, temperature=0.9, top_p=0.95)
    m = run_pairs(cfg, str(tmp_path / "run"), pool=pool_with(fake))
    rows = read_jsonl(tmp_path / "run" / "pairs" / "pairs.jsonl")
    assert len(rows) == 5
    assert [len(c) for c in fake.calls] == [6, 6, 3]  # K copies of every prompt of a shard in one call
    assert fake.calls[0][0] == fake.calls[0][1] == fake.calls[0][2]
    assert len({p.seed for p in fake.params}) == 3  # a different seed per shard
    assert all(p.temperature == 0.9 and p.top_p == 0.95 and p.max_new_tokens == 30 for p in fake.params)
    for r in rows:
        assert set(r) >= {"id", "prompt", "category", "responses", "finish", "identical"}
        assert len(r["responses"]) == 3 and len(r["finish"]) == 3
        assert r["identical"] is False
    assert m["counts"]["comparisons"] == 10 and m["counts"]["identical_rows"] == 0


def test_pairs_flags_identical_answers_and_resumes(tmp_path):
    fake = RecordingFake(fn=lambda conv: "I can't help with that.")
    cfg = PairsConfig(policy="fake", limit=4, shard_size=2)
    run_dir = tmp_path / "run"
    m = run_pairs(cfg, str(run_dir), pool=pool_with(fake))
    rows = read_jsonl(run_dir / "pairs" / "pairs.jsonl")
    assert all(r["identical"] for r in rows) and m["counts"]["identical_rows"] == 4
    stage = run_dir / "pairs"
    for name in ("manifest.json", "pairs.jsonl", "shards/00001.jsonl"):
        (stage / name).unlink()
    fake2 = RecordingFake(fn=lambda conv: "I can't help with that.")
    m2 = run_pairs(cfg, str(run_dir), pool=pool_with(fake2))
    assert len(fake2.calls) == 1 and m2["timing"]["resumed_rows"] == 2
    assert read_jsonl(stage / "pairs.jsonl") == rows
    # a completed stage is not recomputed; a changed config is refused rather than mixed in
    fake3 = RecordingFake()
    run_pairs(cfg, str(run_dir), pool=pool_with(fake3))
    assert fake3.calls == []
    from cai.errors import UserInputError

    with pytest.raises(UserInputError, match="different configuration"):
        run_pairs(cfg.model_copy(update={"k": 3}), str(run_dir), pool=pool_with(fake3))


def test_pairs_then_label_through_the_cli(tmp_path, monkeypatch):
    from cai.cli.main import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["pairs", "--run", "t", "--model", "fake", "--limit", "3", "--helpful-limit", "1"])
    assert r.exit_code == 0, r.output
    assert "4 (3 red-team, 1 helpful)" in r.output
    # the fake policy answers each prompt deterministically, so every pair is identical and labeling says so
    r = runner.invoke(app, ["label", "--run", "t", "--model", "fake"])
    assert r.exit_code == 0, r.output
    assert "identical pairs skipped" in r.output and "no comparisons to label" in r.output

    write_pairs(tmp_path / "p.jsonl", n=4)
    r = runner.invoke(app, ["label", "--run", "u", "--model", "fake", "--pairs", "p.jsonl", "--ensemble", "2", "--min-confidence", "0.99"])
    assert r.exit_code == 0, r.output
    assert "position consistency" in r.output and "kept after filter" in r.output
    man = json.loads((tmp_path / "runs" / "u" / "label" / "manifest.json").read_text())
    assert man["labels"]["n"] == 4 and man["config"]["ensemble"] == 2
    assert f"{man['labels']['kept_after_filter']}/4" in r.output

    r = runner.invoke(app, ["label", "--run", "missing", "--model", "fake"])
    assert r.exit_code == 2
    assert "cai pairs" in r.output
    r = runner.invoke(app, ["label", "--run", "u2", "--model", "fake", "--pairs", "p.jsonl", "--clamp", "0.7,0.9"])
    assert r.exit_code == 2 and "clamp" in r.output


def test_cli_pairs_uses_the_runs_sft_model_unless_a_policy_is_given(tmp_path, monkeypatch):
    from cai.cli.main import app

    monkeypatch.chdir(tmp_path)
    sft = tmp_path / "runs" / "t" / "sft" / "model"
    sft.mkdir(parents=True)
    (sft / "config.json").write_text("{}")  # not a loadable checkpoint: proves which model the command tried to load
    r = CliRunner().invoke(app, ["pairs", "--run", "t", "--limit", "1"])
    assert r.exit_code == 2
    assert str(Path("runs") / "t" / "sft" / "model") in r.output
    r = CliRunner().invoke(app, ["pairs", "--run", "t", "--limit", "1", "--policy", "fake"])
    assert r.exit_code == 0, r.output


def test_cli_label_reads_a_yaml_section(tmp_path, monkeypatch):
    from cai.cli.main import app

    monkeypatch.chdir(tmp_path)
    write_pairs(tmp_path / "p.jsonl", n=2)
    (tmp_path / "cfg.yaml").write_text("label:\n  labeler: fake\n  pairs: p.jsonl\n  mode: cot\n  cot_tokens: 8\n  clamp: null\n")
    r = CliRunner().invoke(app, ["label", "--config", "cfg.yaml", "--run", "y"])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "runs" / "y" / "label" / "manifest.json").read_text())
    assert man["mode"] == "cot" and man["config"]["clamp"] is None and man["config"]["cot_tokens"] == 8
    (tmp_path / "bad.yaml").write_text("label:\n  labeler: fake\n  ensembel: 2\n")
    r = CliRunner().invoke(app, ["label", "--config", "bad.yaml", "--run", "z"])
    assert r.exit_code == 2 and "ensembel" in r.output
