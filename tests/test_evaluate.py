"""The `cai eval` stage with scripted fake models and judges whose right answers are known."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.cli.main import app
from cai.data.io import read_jsonl
from cai.data.readers import load_prompts
from cai.errors import ConfigError, MissingExtraError
from cai.evaluate import stats as st
from cai.evaluate.judges import LLMRefusalJudge
from cai.runs import StageDir
from cai.stages.evaluate import EvalConfig, run_evaluate

FIX = Path(__file__).parent / "fixtures" / "benchmarks"
HARMFUL = {r["prompt"]: r for r in load_prompts("redteam", split="eval")}
BENIGN = load_prompts("helpful", split="eval")
REFUSAL = "I can't help with that."
ANSWER = "Sure. Start with the basics, practise a little every day, and check your progress each week."


def _user(conv):
    return next(m["content"] for m in reversed(conv) if m["role"] == "user")


def refuse_harmful(conv):
    return REFUSAL if _user(conv) in HARMFUL else ANSWER


def _pool(**models) -> BackendPool:
    pool = BackendPool()
    for name, fn in models.items():
        pool.put(f"fake:{name}", FakeBackend(name, fn=fn))
    return pool


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval" / "metrics.json").read_text())


def test_ideal_model_has_zero_harm_and_zero_over_refusal(tmp_path):
    pool = _pool(ideal=refuse_harmful)
    cfg = EvalConfig(models={"ideal": "fake:ideal"})
    manifest = run_evaluate(cfg, str(tmp_path), pool=pool)
    m = _metrics(tmp_path)["models"]["ideal"]
    hc, orb, orr = m["harmful_compliance"], m["over_refusal_benign"], m["over_refusal_benign_risky"]
    assert (hc["value"], hc["k"], hc["n"]) == (0.0, 0, 48)
    assert (orb["value"], orb["k"], orb["n"]) == (0.0, 0, 53)
    assert (orr["k"], orr["n"]) == (0, 20)
    assert m["over_refusal_benign_plain"]["n"] == 33
    lo, hi = st.wilson(0, 48)
    assert hc["ci95"] == [round(lo, 4), round(hi, 4)] and hc["ci95"][0] == 0.0 and 0.07 < hc["ci95"][1] < 0.08
    assert hc["method"] == "wilson" and hc["judge"] == "classifier:refusal-lexicon-v1"
    assert orb["ci95"][1] == round(st.wilson(0, 53)[1], 4)
    # per-category counts: 12 categories of 4 prompts each
    cats = m["harmful_compliance_by_category"]
    assert len(cats) == 12 and all(c["n"] == 4 and c["k"] == 0 for c in cats.values())
    # lengths and repetition carry n and a bootstrap interval
    assert m["mean_length_words"]["n"] == 101 and m["mean_length_words"]["method"] == "bootstrap"
    words = (48 * len(REFUSAL.split()) + 53 * len(ANSWER.split())) / 101
    assert m["mean_length_words"]["value"] == pytest.approx(words, abs=1e-3)
    assert m["ngram_repeat_share"]["judge"] == "measurement" and m["ngram_repeat_share"]["ci95"] is not None
    # outputs: one answer row per prompt with its verdict; manifest written last
    stage = tmp_path / "eval"
    rows = read_jsonl(stage / "answers.jsonl")
    assert len(rows) == 101 and all(r["model"] == "ideal" and r["verdict"]["judge"] for r in rows)
    assert sum(r["verdict"]["refused"] for r in rows) == 48
    assert "| ideal | 0.0%" in (stage / "summary.md").read_text()
    assert (stage / "manifest.json").stat().st_mtime >= (stage / "metrics.json").stat().st_mtime
    assert manifest["counts"] == {"prompts": 101, "models": 1, "answers": 101, "comparisons": 0}


def test_refuse_everything_gives_over_refusal_one(tmp_path):
    pool = _pool(wall=lambda conv: "Sorry, but I won't help with this request.")
    run_evaluate(EvalConfig(models={"wall": "fake:wall"}), str(tmp_path), pool=pool)
    m = _metrics(tmp_path)["models"]["wall"]
    assert m["over_refusal_benign"]["value"] == 1.0 and m["over_refusal_benign"]["k"] == 53
    assert m["over_refusal_benign_risky"]["value"] == 1.0 and m["over_refusal_benign_risky"]["n"] == 20
    assert m["harmful_compliance"]["value"] == 0.0
    lo, hi = st.wilson(53, 53)
    assert m["over_refusal_benign"]["ci95"] == [round(lo, 4), 1.0]


def test_per_category_counts(tmp_path):
    def leaky(conv):  # complies only with cyber prompts, refuses other harmful ones
        row = HARMFUL.get(_user(conv))
        if row is None:
            return ANSWER
        return ANSWER if row["category"] == "cyber" else REFUSAL

    run_evaluate(EvalConfig(models={"leaky": "fake:leaky"}), str(tmp_path), pool=_pool(leaky=leaky))
    m = _metrics(tmp_path)["models"]["leaky"]
    assert (m["harmful_compliance"]["k"], m["harmful_compliance"]["n"]) == (4, 48)
    cats = m["harmful_compliance_by_category"]
    assert cats["cyber"]["value"] == 1.0 and cats["cyber"]["k"] == 4
    assert all(c["k"] == 0 for name, c in cats.items() if name != "cyber")


def _scripted_judge(conv, option):
    """Prefers the reply containing GOOD; reads which option holds it from the labeler's prompt."""
    text = conv[1]["content"]
    a = text.split("(A) ", 1)[1].split("(B) ", 1)[0]
    good_is_a = "GOOD" in a
    return -0.05 if (option == "A") == good_is_a else -4.0


def test_win_rate_and_elo_with_scripted_judge(tmp_path):
    pool = _pool(good=lambda c: "GOOD answer: " + ANSWER, bad=lambda c: "meh")
    pool.put("fake:judge", FakeBackend("judge", logprob_fn=_scripted_judge))
    cfg = EvalConfig(models={"bad": "fake:bad", "good": "fake:good"}, baseline="bad", helpfulness_judge="fake:judge",
                     limit=10, pairwise=["helpful"])
    run_evaluate(cfg, str(tmp_path), pool=pool)
    met = _metrics(tmp_path)
    win = met["models"]["good"]["win_rate_helpful"]
    p = 1 / (1 + pow(2.718281828459045, -3.95))  # normalised P(A) for a log-prob gap of 3.95
    assert win["n"] == 10 and win["value"] == pytest.approx(p, abs=1e-3)
    assert win["wins"]["k"] == 10 and win["vs"] == "bad" and win["judge"] == "pairwise:fake"
    assert "win_rate_helpful" not in met["models"]["bad"]
    elo = met["elo"]["helpful"]
    assert elo["bad"]["value"] == 0.0 and elo["good"]["value"] > 300
    assert elo["_judge_position_consistency"]["k"] == 10
    pairs = read_jsonl(tmp_path / "eval" / "pairwise.jsonl")
    assert len(pairs) == 10 and all(r["consistent"] for r in pairs)


def test_position_bias_cancels(tmp_path):
    pool = _pool(x=lambda c: "one reply", y=lambda c: "another reply")
    pool.put("fake:biased", FakeBackend("biased", logprob_fn=lambda conv, o: -0.1 if o == "A" else -3.0))
    cfg = EvalConfig(models={"x": "fake:x", "y": "fake:y"}, helpfulness_judge="fake:biased", limit=5, harmful=None)
    run_evaluate(cfg, str(tmp_path), pool=pool)
    met = _metrics(tmp_path)
    assert met["models"]["y"]["win_rate_helpful"]["value"] == pytest.approx(0.5)
    assert met["elo"]["helpful"]["y"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert met["elo"]["helpful"]["_judge_position_consistency"]["k"] == 0
    assert "harmless" not in met["elo"]  # no harmful prompts, so no harmlessness comparisons


def test_elo_three_models(tmp_path):
    pool = _pool(a=lambda c: "GOOD GOOD", b=lambda c: "GOOD", c=lambda c: "plain")

    def judge(conv, option):  # more GOODs win; equal counts tie
        text = conv[1]["content"]
        a = text.split("(A) ", 1)[1].split("(B) ", 1)[0].count("GOOD")
        b = text.split("(B) ", 1)[1].count("GOOD")
        if a == b:
            return -0.7
        return -0.05 if (option == "A") == (a > b) else -4.0

    pool.put("fake:j", FakeBackend("j", logprob_fn=judge))
    cfg = EvalConfig(models={"c": "fake:c", "b": "fake:b", "a": "fake:a"}, helpfulness_judge="fake:j", limit=6, harmful=None)
    run_evaluate(cfg, str(tmp_path), pool=pool)
    elo = _metrics(tmp_path)["elo"]["helpful"]
    assert elo["c"]["value"] == 0.0 and elo["a"]["value"] > elo["b"]["value"] > 0
    assert elo["a"]["n"] == 12  # 6 prompts against each of two other models
    assert len(read_jsonl(tmp_path / "eval" / "pairwise.jsonl")) == 18


def test_benchmarks_in_eval(tmp_path):
    pool = _pool(ideal=lambda c: REFUSAL if any(w in _user(c) for w in ("neighbour without", "background check")) else ANSWER)
    cfg = EvalConfig(models={"ideal": "fake:ideal"}, harmful=None, benign=None,
                     benchmarks=[{"path": str(FIX / "xstest.csv")}, {"path": str(FIX / "advbench.csv"), "name": "adv"}])
    run_evaluate(cfg, str(tmp_path), pool=pool)
    b = _metrics(tmp_path)["models"]["ideal"]["benchmarks"]
    assert b["xstest"]["harmful_compliance"]["k"] == 0 and b["xstest"]["harmful_compliance"]["n"] == 2
    assert b["xstest"]["over_refusal"]["k"] == 0 and b["xstest"]["over_refusal"]["n"] == 3
    assert b["adv"]["harmful_compliance"]["k"] == 3 and b["adv"]["benchmark"] == "advbench"
    assert set(b["xstest"]["over_refusal_by_category"]) == {"homonyms", "nons_group_real_discr"}


def test_preference_file_as_benchmark_is_refused(tmp_path):
    cfg = EvalConfig(models={"a": "fake"}, benchmarks=[{"path": str(FIX / "hh_rlhf.jsonl")}])
    with pytest.raises(ConfigError, match="preference_pairs"):
        run_evaluate(cfg, str(tmp_path), pool=BackendPool())


def test_resume_per_model(tmp_path):
    a, b = FakeBackend("a", fn=refuse_harmful), FakeBackend("b", fn=lambda c: ANSWER)
    pool = BackendPool()
    pool.put("fake:a", a)
    pool.put("fake:b", b)
    cfg = EvalConfig(models={"a": "fake:a", "b": "fake:b"}, limit=3, pairwise=[])
    run_evaluate(cfg, str(tmp_path), pool=pool)
    assert len(a.calls) == 1 and len(b.calls) == 1  # one batched generate call per model over all prompts
    assert len(a.calls[0]) == 6
    first = _metrics(tmp_path)
    stage = tmp_path / "eval"
    # simulate a kill after model a finished: no manifest, model b's shard (one shard per model) missing
    (stage / "manifest.json").unlink()
    StageDir(str(tmp_path), "eval").shard_path(1).unlink()
    run_evaluate(cfg, str(tmp_path), pool=pool)
    assert len(a.calls) == 1 and len(b.calls) == 2
    assert _metrics(tmp_path) == first
    # a complete stage returns its manifest without any work
    run_evaluate(cfg, str(tmp_path), pool=pool)
    assert len(a.calls) == 1 and len(b.calls) == 2


def test_llm_judge_logprob_parse_and_fallback():
    def lp(conv, option):
        reply = conv[1]["content"].split("The assistant's reply:\n", 1)[1]
        refused = "cannot" in reply
        return -0.1 if (option == "A") == refused else -2.5

    j = LLMRefusalJudge(FakeBackend("j", logprob_fn=lp), "judge-model")
    v = j.judge(["q1", "q2"], ["I cannot do that.", "Here you go: 42."])
    assert [x.refused for x in v] == [True, False] and v[0].judge == "llm:judge-model"
    system = j.conversation("q", "a", prefill=True)[0]["content"]
    assert "principles" in system and "Be helpful" in system
    # no log-probabilities: the judge's written letter is parsed; an unparsable answer falls back to the classifier
    j2 = LLMRefusalJudge(FakeBackend("j2", logprob_fn=lambda c, o: None, responses=["(A)", "I am not sure."]), "srv")
    v2 = j2.judge(["q1", "q2"], ["Sure: 42.", "I won't help with that."])
    assert v2[0].refused is True and v2[0].reason.startswith("parsed")
    assert v2[1].refused is True and v2[1].judge == "llm:srv+classifier:refusal-lexicon-v1"
    assert j2.stats == {"logprob": 0, "parsed": 1, "classifier_fallback": 1}


def test_llm_judge_in_stage_uses_constitution(tmp_path):
    pool = _pool(ideal=refuse_harmful)
    seen = []

    def lp(conv, option):
        seen.append(conv[0]["content"])
        return -0.1 if option == "B" else -3.0  # always "complied"

    pool.put("fake:judge", FakeBackend("judge", logprob_fn=lp))
    cfg = EvalConfig(models={"ideal": "fake:ideal"}, judge="fake:judge", limit=4)
    run_evaluate(cfg, str(tmp_path), pool=pool)
    met = _metrics(tmp_path)
    assert met["judge"] == "llm:fake" and met["models"]["ideal"]["harmful_compliance"]["judge"] == "llm:fake"
    assert met["models"]["ideal"]["harmful_compliance"]["k"] == 4  # the judge says nothing was refused
    assert "Overall harmlessness" in seen[0]  # a principle of the shipped constitution


class _LengthScorer:
    def __init__(self, path):
        self.path = path

    def score(self, prompts, answers):
        return [float(len(a)) for a in answers]


def test_reward_model_accuracy(tmp_path, monkeypatch):
    import cai.stages.evaluate as ev

    monkeypatch.setattr(ev, "_reward_scorer", lambda path: _LengthScorer(path))
    cfg = EvalConfig(models={"ideal": "fake:ideal"}, limit=2, reward_model="rm-folder", preference_pairs=str(FIX / "hh_rlhf.jsonl"))
    run_evaluate(cfg, str(tmp_path), pool=_pool(ideal=refuse_harmful))
    rm = _metrics(tmp_path)["reward_model"]
    assert (rm["accuracy"]["k"], rm["accuracy"]["n"], rm["accuracy"]["value"]) == (3, 3, 1.0)
    assert rm["accuracy"]["judge"] == "reward:rm-folder"
    assert rm["mean_reward_of_answers"]["ideal"]["n"] == 4
    assert rm["mean_reward_of_answers"]["ideal"]["value"] == pytest.approx((2 * len(REFUSAL) + 2 * len(ANSWER)) / 4)


def test_reward_model_missing_module(monkeypatch):
    import cai.stages.evaluate as ev

    monkeypatch.setitem(sys.modules, "cai.stages.reward", None)
    with pytest.raises(MissingExtraError, match="RewardScorer"):
        ev._reward_scorer("x")


def test_config_errors():
    with pytest.raises(ConfigError):
        from cai.config import build_config

        build_config(EvalConfig, {"models": {"a": "fake"}, "baseline": "b"})
    from cai.config import build_config

    for bad in ({"models": {"bad name": "fake"}}, {"models": {}}, {"reward_model": "x"}, {"modle": {}},
                {"harmful": None, "benign": None}):
        with pytest.raises(ConfigError):
            build_config(EvalConfig, bad)
    cfg = build_config(EvalConfig, {"models": {"base": "embedded", "big": "openai:m@http://h/v1"}, "judge": "embedded"})
    assert cfg.models["big"].backend == "openai" and cfg.judge.model == "embedded"
    assert build_config(EvalConfig, {}).judge == "classifier"


def test_cli_eval_and_measure_judge(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--measure-judge"])
    assert res.exit_code == 0, res.output
    assert "heldout" in res.output and "precision" in res.output
    res = runner.invoke(app, ["eval", "--model", "a=fake", "--limit", "2", "--runs-dir", str(tmp_path), "--run", "r1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r1" / "eval" / "manifest.json").exists()
    m = json.loads((tmp_path / "r1" / "eval" / "metrics.json").read_text())
    assert m["models"]["a"]["harmful_compliance"]["n"] == 2
    res = runner.invoke(app, ["eval", "--model", "nonsense", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 2 and "NAME=SPEC" in res.output


@pytest.mark.realmodel
def test_real_model_smoke(tmp_path):
    cfg = EvalConfig(models={"base": "embedded"}, limit=4, max_new_tokens=32)
    manifest = run_evaluate(cfg, str(tmp_path))
    m = _metrics(tmp_path)["models"]["base"]
    assert m["harmful_compliance"]["n"] == 4 and m["over_refusal_benign"]["n"] == 4
    rows = read_jsonl(tmp_path / "eval" / "answers.jsonl")
    assert len(rows) == 8 and sum(bool(r["answer"].strip()) for r in rows) >= 6
    assert all(r["completion_tokens"] <= 32 for r in rows)
    assert 0 < m["mean_length_tokens"]["value"] <= 32
    assert manifest["tokens"]["generated_this_session"] > 0
    assert manifest["timing"]["generate_seconds"]["base"] > 0
