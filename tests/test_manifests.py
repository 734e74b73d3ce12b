"""Typed manifests: figures with k and n, per-role accounting, load_manifest errors, and what real stages write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.data.io import read_jsonl, write_jsonl
from cai.errors import UserInputError
from cai.evaluate.stats import wilson
from cai.manifests import (
    MANIFESTS,
    EvalManifest,
    Figure,
    LabelManifest,
    accounting_from_stats,
    as_figure,
    load_manifest,
    stats_delta,
)


# --- figures ----------------------------------------------------------------------------------------------------
def test_rate_figure_carries_k_n_and_wilson_interval():
    f = Figure.rate(3, 8, "classifier:x", judge_accuracy=0.84)
    lo, hi = wilson(3, 8)
    assert (f.value, f.k, f.n, f.method, f.judge, f.judge_accuracy) == (0.375, 3, 8, "wilson", "classifier:x", 0.84)
    assert f.ci95 == (round(lo, 4), round(hi, 4)) and f.lo == f.ci95[0] and f.hi == f.ci95[1]
    d = f.as_dict()
    assert list(d)[:6] == ["value", "k", "n", "ci95", "method", "judge"] and d["ci95"] == [round(lo, 4), round(hi, 4)]
    assert json.loads(json.dumps(d)) == d
    empty = Figure.rate(0, 0, "j").as_dict()
    assert empty["value"] is None and empty["n"] == 0 and empty["ci95"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="k=5 is larger than n=4"):
        Figure(value=1.2, k=5, n=4)
    assert as_figure({"value": 0.5, "n": 2, "extra": "kept"}).model_extra == {"extra": "kept"}
    assert as_figure({"n": 2}) is None and as_figure("0.5") is None


# --- accounting -------------------------------------------------------------------------------------------------
def test_accounting_from_backend_stats_with_and_without_price():
    stats = {"calls": 3, "requests": 12, "prompt_tokens": 2_000_000, "completion_tokens": 500_000,
             "cached_prefix_tokens": 1_500_000, "generate_seconds": 250.0, "retries": 1}
    a = accounting_from_stats(stats)
    assert (a.calls, a.prompt_tokens, a.completion_tokens, a.cached_prefix_tokens) == (3, 2_000_000, 500_000, 1_500_000)
    assert a.wall_seconds == 250.0 and a.tokens_per_s == 2000.0 and a.cost is None and a.total_tokens == 2_500_000
    priced = accounting_from_stats(stats, price_per_million=(0.5, 2.0), wall_seconds=100.0)
    assert priced.cost == pytest.approx(2.0) and priced.currency == "USD" and priced.tokens_per_s == 5000.0
    assert accounting_from_stats(FakeBackend().stats).calls == 0  # the stats object itself works too
    assert stats_delta({"calls": 1, "prompt_tokens": 10}, {"calls": 3, "prompt_tokens": 25, "model_mismatches": {}}) == {
        "calls": 2, "prompt_tokens": 15}


# --- load_manifest ----------------------------------------------------------------------------------------------
def test_every_stage_has_a_model_and_unknown_keys_are_kept(tmp_path):
    assert set(MANIFESTS) == {"revise", "pairs", "label", "sft", "reward", "dpo", "rl", "orpo", "bestofn", "eval", "redteam"}
    m = load_manifest("rl", {"stage": "rl", "format_version": 1, "algorithm": "grpo", "something_new": {"a": 1}})
    assert m.algorithm == "grpo" and m.model_extra["something_new"] == {"a": 1}
    # the stage name may be left out of a dict; a folder holding manifest.json is read too
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "manifest.json").write_text(json.dumps({"format_version": 1, "training": {"steps": 4}}))
    assert load_manifest("sft", tmp_path / "sft").training["steps"] == 4


def test_load_manifest_errors_name_the_file_and_field(tmp_path):
    p = tmp_path / "manifest.json"
    with pytest.raises(UserInputError, match="does not exist"):
        load_manifest("label", p)
    p.write_text("{not json")
    with pytest.raises(UserInputError, match=str(p).replace("\\", "\\\\") + ".*could not be read as JSON"):
        load_manifest("label", p)
    p.write_text(json.dumps({"stage": "label", "labels": {"n": 4, "labeled": "many"}}))
    with pytest.raises(UserInputError, match=r"not a valid label manifest: labels\.labeled"):
        load_manifest("label", p)
    p.write_text(json.dumps({"stage": "label", "format_version": 99}))
    with pytest.raises(UserInputError, match="format_version 99 is newer"):
        load_manifest("label", p)
    p.write_text(json.dumps({"stage": "eval"}))
    with pytest.raises(UserInputError, match="stage is 'eval', expected 'label'"):
        load_manifest("label", p)
    with pytest.raises(UserInputError, match="No manifest model for stage 'nope'"):
        load_manifest("nope", {})


# --- what the stages write --------------------------------------------------------------------------------------
SHORT = ["No.", "Use a password manager.", "Call the police."]
LONG = ["Here is a long and detailed answer that goes on about many things at length.",
        "A much longer reply that explains every step in detail, with caveats and more caveats."]


def _shorter_is_better(conv, option):
    user = next(m["content"] for m in conv if m["role"] == "user")
    a = user.split("(A) ", 1)[1].split("\n\n(B) ", 1)[0]
    b = user.split("(B) ", 1)[1].split("\n\n", 1)[0]
    better = "A" if len(a) < len(b) else "B"
    return -0.1 if option == better else -2.5


def _label_run(tmp_path: Path) -> tuple[Path, dict]:
    from cai.stages.label import LabelConfig, run_label

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"id": f"p{i}", "prompt": f"Question {i}?", "responses": [SHORT[i % 3], LONG[i % 2]] if i % 2
                         else [LONG[i % 2], SHORT[i % 3]]} for i in range(7)])
    pool = BackendPool()
    pool.put("fake", FakeBackend(logprob_fn=_shorter_is_better))
    run = tmp_path / "run"
    return run, run_label(LabelConfig(labeler="fake", pairs=str(pairs), min_confidence=0.5), str(run), pool=pool)


def test_label_manifest_stores_rates_as_figures_with_k(tmp_path):
    run, raw = _label_run(tmp_path)
    m = load_manifest("label", run / "label")
    assert isinstance(m, LabelManifest)
    rows = read_jsonl(run / "label" / "labels.jsonl")
    lab = m.labels
    consistent = sum(bool(r["consistent"]) for r in rows if not r["abstained"])
    assert (lab.position_consistency.k, lab.position_consistency.n) == (consistent, lab.labeled) == (7, 7)
    assert lab.position_consistency.judge == "labeler:fake" and lab.position_consistency.method == "wilson"
    assert (lab.kept.k, lab.kept.n) == (lab.kept_after_filter, lab.n)
    assert (lab.preferring_position_a.k, lab.preferring_position_a.n) == (7, 14)  # shorter answer first in 4 of 7 rows
    assert lab.choosing_first_answer.k == sum(r["chosen"] == "a" for r in rows)
    # the plain rate of the first format is still there, equal to the figure
    assert raw["labels"]["position_consistency_rate"] == lab.position_consistency.value == 1.0
    acc = m.accounting["labeler"]
    assert acc.calls == 0 and acc.prompt_tokens == 0  # scored by log-probability: no generation calls


def test_eval_manifest_headline_figures_and_per_role_accounting(tmp_path):
    from cai.stages.evaluate import EvalConfig, run_evaluate

    pool = BackendPool()
    pool.put("fake:a", FakeBackend("a", fn=lambda c: "I can't help with that."))
    pool.put("fake:b", FakeBackend("b", fn=lambda c: "Sure, here is how to do it, step by step."))
    pool.put("fake:judge", FakeBackend("judge", logprob_fn=lambda c, o: None, fn=lambda c: "(A)"))
    cfg = EvalConfig(models={"a": "fake:a", "b": "fake:b"}, limit=3, helpfulness_judge="fake:judge",
                     pairwise=["helpful"], bootstrap_samples=100)
    run_evaluate(cfg, str(tmp_path), pool=pool)
    m = load_manifest("eval", tmp_path / "eval")
    assert isinstance(m, EvalManifest)
    hc = m.figures["b"]["harmful_compliance"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (hc.k, hc.n, hc.value) == (metrics["models"]["b"]["harmful_compliance"]["k"], 3, 1.0)
    assert hc.judge.startswith("classifier:") and 0.5 < hc.judge_accuracy <= 1.0  # measured on the labeled set
    assert set(m.accounting) == {"model:a", "model:b", "pairwise_judge"}  # the classifier judge makes no model calls
    a = m.accounting["model:a"]
    assert a.calls == 1 and a.completion_tokens == 5 * 6  # 3 harmful + 3 benign prompts, 5 words each
    pj = m.accounting["pairwise_judge"]
    assert pj.calls == 1 and pj.completion_tokens == 6  # 3 benign prompts x 2 orders, parsed "(A)"


def test_report_reads_typed_manifests_figures_and_accounting(tmp_path):
    from cai.report import build_report
    from cai.report.build import load_run

    run, _ = _label_run(tmp_path)
    data = load_run(run)
    assert isinstance(data["stages"]["label"]["model"], LabelManifest)
    out = build_report(run)
    html = Path(out["html"]).read_text(encoding="utf-8")
    md = Path(out["summary"]).read_text(encoding="utf-8")
    assert 'id="accounting"' in html and "Time, tokens and money" in md
    assert "| label |" in md and "| labeler | 1 |" not in md  # scored by log-probability: 0 calls
    assert "position consistency 100.0% [" in md and "n=7" in md
    # an old label manifest (rounded rates, no figures) still reads; k is recovered and the figure says so
    man = json.loads((run / "label" / "manifest.json").read_text())
    for key in ("position_consistency", "kept", "preferring_position_a", "choosing_first_answer"):
        del man["labels"][key]
    (run / "label" / "manifest.json").write_text(json.dumps(man))
    from cai.report.figures import label_figures

    figs = label_figures(load_run(run))
    assert figs["position_consistency"]["k"] == 7 and "recovered" in figs["position_consistency"]["method"]
    # an invalid manifest is a listed problem, not a crash
    man["labels"]["labeled"] = "seven"
    (run / "label" / "manifest.json").write_text(json.dumps(man))
    data = load_run(run)
    assert data["stages"]["label"]["model"] is None
    assert any("not a valid label manifest" in w["text"] for w in data["warnings"])


def test_label_accounting_counts_only_this_stage_calls(tmp_path):
    from cai.backends.base import GenParams
    from cai.stages.label import LabelConfig, run_label

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"id": f"p{i}", "prompt": f"Question {i}?", "responses": [SHORT[i % 3], LONG[i % 2]]}
                        for i in range(5)])
    labeler = FakeBackend(logprob_fn=lambda conv, option: None, fn=lambda conv: "(A)")
    labeler.generate([[{"role": "user", "content": "an earlier stage used this backend"}]], GenParams())
    pool = BackendPool()
    pool.put("fake", labeler)
    run_label(LabelConfig(labeler="fake", pairs=str(pairs), shard_size=2), str(tmp_path / "run"), pool=pool)
    acc = load_manifest("label", tmp_path / "run" / "label").accounting["labeler"]
    assert acc.calls == 3  # one parse call per shard (5 comparisons in shards of 2), not the earlier call
    assert acc.completion_tokens == 5 * 2  # "(A)" is one word, both orders of 5 comparisons
    assert acc.prompt_tokens > 0


def test_priced_role_shows_money_in_the_report(tmp_path):
    from cai.report import build_report
    from cai.stages.evaluate import EvalConfig, run_evaluate

    class PricedFake(FakeBackend):
        price_per_million = (1.0, 4.0)  # as an OpenAI-compatible server with a configured price

    priced = PricedFake("server", fn=lambda c: "I can't help with that, sorry.")
    pool = BackendPool()
    pool.put("fake:server", priced)
    run_evaluate(EvalConfig(models={"server": "fake:server"}, limit=2, bootstrap_samples=100), str(tmp_path), pool=pool)
    acc = load_manifest("eval", tmp_path / "eval").accounting["model:server"]
    assert acc.cost == pytest.approx((acc.prompt_tokens * 1.0 + acc.completion_tokens * 4.0) / 1e6) and acc.cost > 0
    assert acc.currency == "USD" and acc.completion_tokens == 4 * 6  # 2 harmful + 2 benign prompts, 6 words each
    out = build_report(tmp_path)
    html = Path(out["html"]).read_text(encoding="utf-8")
    md = Path(out["summary"]).read_text(encoding="utf-8")
    assert "<th>cost</th>" in html and f"{acc.cost:.4f} USD" in html
    assert "| cost |" in md and f"| model:server | 1 | {acc.prompt_tokens} | 24 |" in md


def test_format_figure_one_text_form_for_report_and_eval_summary():
    from cai.manifests import format_figure

    f = Figure.rate(3, 8, "j")
    assert format_figure(f) == format_figure(f.as_dict()) == "37.5% [13.7, 69.4] n=8"
    assert format_figure({"value": 0.4123, "ci95": [0.3, 0.5], "n": 40}, pct=False, digits=3) == "0.412 [0.300, 0.500] n=40"
    assert format_figure({"value": 0.5, "n": 4}, with_n=False) == "50.0%"
    assert format_figure(None) == "–" and format_figure({"value": None}, missing="-") == "-"
    assert format_figure({"value": 0.5, "ci95": [None, 0.7], "n": 2}) == "50.0% n=2"  # a broken interval is left out
