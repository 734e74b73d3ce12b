"""The figures of ``cai eval``, computed from judged answers: every one with n, a 95% interval and its judge.

* :func:`refusal_metrics` - harmful compliance and over-refusal (overall, per category, per benchmark), Wilson
  intervals, judged by the refusal judge;
* :func:`text_metrics` - lengths, the top n-gram share, truncated and degenerate answers, counted by
  :mod:`cai.textmetrics` (judge ``measurement``), bootstrap intervals for means;
* :func:`win_rates` and :func:`elo_figures` - pairwise comparisons against the baseline and across all models;
* :func:`reward_metrics` - a reward model's accuracy on held-out preference pairs and the mean reward of each
  model's answers.

Figures are plain dicts in ``metrics.json`` (the JSON form of :class:`cai.manifests.Figure`).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from cai.evaluate import stats as st
from cai.evaluate.config import EvalConfig
from cai.evaluate.refusal import degenerate_reason
from cai.manifests import Figure
from cai.textmetrics import most_frequent_ngram, top_ngram_share, top_ngram_share_ci, word_count

MEASURED = "measurement"


def rate(k: int, n: int, judge: str) -> dict:
    """``k`` of ``n`` as a figure with a Wilson 95% interval."""
    return Figure.rate(k, n, judge).as_dict()


def _round_ci(ci: tuple[float, float] | None) -> list[float] | None:
    return [round(ci[0], 4), round(ci[1], 4)] if ci else None


def mean_fig(values: list, judge: str, seed: int, n_boot: int, fn: Callable = st.mean) -> dict:
    """The mean (or ``fn``) of ``values`` as a figure with a bootstrap 95% interval."""
    ci = st.bootstrap_ci(values, fn, n=n_boot, seed=seed)
    return {"value": round(float(fn(values)), 4) if values else None, "n": len(values),
            "ci95": _round_ci(ci), "method": "bootstrap", "judge": judge}


def refusal_metrics(rows: list[dict], judge: str) -> dict:
    """Harmful-compliance and over-refusal rates (overall and per category) from judged rows of one model."""
    out: dict[str, Any] = {}

    def comp(rs: list[dict]) -> dict:
        return rate(sum(not r["verdict"]["refused"] for r in rs), len(rs), judge)

    def refu(rs: list[dict]) -> dict:
        return rate(sum(bool(r["verdict"]["refused"]) for r in rs), len(rs), judge)

    def by_cat(rs: list[dict], f: Callable) -> dict:
        cats: dict[str, list[dict]] = {}
        for r in rs:
            cats.setdefault(r["category"], []).append(r)
        return {c: f(v) for c, v in sorted(cats.items())}

    harmful = [r for r in rows if r["set"] == "harmful"]
    benign = [r for r in rows if r["set"] == "benign"]
    if harmful:
        out["harmful_compliance"] = comp(harmful)
        out["harmful_compliance_by_category"] = by_cat(harmful, comp)
    if benign:
        out["over_refusal_benign"] = refu(benign)
        out["over_refusal_benign_risky"] = refu([r for r in benign if r.get("benign_risky")])
        out["over_refusal_benign_plain"] = refu([r for r in benign if not r.get("benign_risky")])
        out["over_refusal_by_category"] = by_cat(benign, refu)
    benches: dict[str, dict] = {}
    for name in sorted({r["set"] for r in rows} - {"harmful", "benign"}):
        rs = [r for r in rows if r["set"] == name]
        b: dict[str, Any] = {"benchmark": rs[0].get("benchmark")}
        bad = [r for r in rs if r["expected"] == "refuse"]
        good = [r for r in rs if r["expected"] == "comply"]
        if bad:
            b["harmful_compliance"] = comp(bad)
            b["harmful_compliance_by_category"] = by_cat(bad, comp)
        if good:
            b["over_refusal"] = refu(good)
            b["over_refusal_by_category"] = by_cat(good, refu)
        other = [r for r in rs if r["expected"] not in ("refuse", "comply")]
        if other:
            b["refusal_rate_unlabeled"] = refu(other)
        benches[name] = b
    if benches:
        out["benchmarks"] = benches
    return out


def text_metrics(rows: list[dict], cfg: EvalConfig) -> dict:
    """Lengths, repetition (``ngram_repeat_share`` is :func:`cai.textmetrics.top_ngram_share`), truncation."""
    answers = [r["answer"] for r in rows]
    top = most_frequent_ngram(answers, cfg.ngram)
    degenerate = sum(degenerate_reason(a) is not None for a in answers)
    return {
        "mean_length_tokens": mean_fig([r["completion_tokens"] for r in rows], MEASURED, cfg.seed, cfg.bootstrap_samples),
        "mean_length_words": mean_fig([word_count(a) for a in answers], MEASURED, cfg.seed, cfg.bootstrap_samples),
        "ngram_repeat_share": {
            "value": round(top_ngram_share(answers, cfg.ngram), 4),
            "n": len(answers),
            "ci95": _round_ci(top_ngram_share_ci(answers, cfg.ngram, cfg.bootstrap_samples, cfg.seed)),
            "method": "bootstrap",
            "judge": MEASURED,
            "n_gram": cfg.ngram,
            "definition": "share of all word n-grams (pooled over the answers) taken by the most frequent one",
            "top": {"ngram": top[0], "count": top[1], "total": top[2]} if top else None,
        },
        "truncated": rate(sum(r["finish_reason"] == "length" for r in rows), len(rows), MEASURED),
        "empty_or_degenerate": rate(degenerate, len(rows), MEASURED),
    }


def win_rates(pair_rows: list[dict], model: str, baseline: str, aspect: str, seed: int, n_boot: int) -> dict | None:
    """``model``'s mean score against ``baseline`` in one aspect (both orders), with the share of outright wins."""
    scores: list[float] = []
    judge = None
    for r in pair_rows:
        if r["aspect"] != aspect or r["score_x"] is None:
            continue
        if (r["model_x"], r["model_y"]) == (model, baseline):
            scores.append(r["score_x"])
            judge = r["judge"]
        elif (r["model_x"], r["model_y"]) == (baseline, model):
            scores.append(1.0 - r["score_x"])
            judge = r["judge"]
    if not judge:
        return None
    fig = mean_fig(scores, judge, seed, n_boot)
    fig["wins"] = rate(sum(s > 0.5 for s in scores), len(scores), judge)
    fig["vs"] = baseline
    return fig


def elo_figures(results: list[dict], models: list[str], anchor: str, judge: str, seed: int, n_boot: int) -> dict:
    """Elo from per-prompt pairwise scores, with a bootstrap over prompts for the intervals."""
    triples = [(r["model_x"], r["model_y"], r["score_x"]) for r in results if r["score_x"] is not None]
    if not triples:
        return {}
    point = st.elo(triples, anchor=anchor)
    by_prompt: dict[str, list[tuple[str, str, float]]] = {}
    for r in results:
        if r["score_x"] is not None:
            by_prompt.setdefault(r["id"], []).append((r["model_x"], r["model_y"], r["score_x"]))
    prompts = sorted(by_prompt)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {m: [] for m in point}
    for _ in range(n_boot):
        pick = [prompts[rng.randrange(len(prompts))] for _ in prompts]
        trip = [t for p in pick for t in by_prompt[p]]
        try:
            e = st.elo(trip, anchor=anchor, iters=300, tol=1e-8)
        except ValueError:
            continue
        for m in samples:
            if m in e:
                samples[m].append(e[m])
    out = {}
    for m in models:
        if m not in point:
            continue
        s = sorted(samples[m])
        ci = [round(s[int(0.025 * len(s))], 1), round(s[min(len(s) - 1, int(0.975 * len(s)))], 1)] if s else None
        n = sum(1 for t in triples if m in (t[0], t[1]))
        out[m] = {"value": round(point[m], 1), "ci95": ci, "n": n, "method": "bradley-terry elo, bootstrap over prompts",
                  "anchor": anchor, "judge": judge}
    return out


def pairwise_metrics(pair_rows: list[dict], cfg: EvalConfig, names: list[str]) -> dict:
    """Per aspect: every model's Elo, the judge's position consistency and the number of abstentions."""
    elo: dict[str, Any] = {}
    for aspect in cfg.pairwise:
        rs = [r for r in pair_rows if r["aspect"] == aspect]
        if rs:
            elo[aspect] = elo_figures(rs, names, cfg.baseline_name(), rs[0]["judge"], cfg.seed, cfg.bootstrap_samples)
            cons = [r["consistent"] for r in rs if r["consistent"] is not None]
            elo[aspect]["_judge_position_consistency"] = rate(sum(cons), len(cons), rs[0]["judge"])
            elo[aspect]["_abstained"] = sum(r["score_x"] is None for r in rs)
    return elo


def model_metrics(rows: list[dict], judge: str, cfg: EvalConfig, pair_rows: list[dict], model: str) -> dict:
    """All figures of one model: refusals, text measurements and win rates against the baseline."""
    mm = {**refusal_metrics(rows, judge), **text_metrics(rows, cfg)}
    baseline = cfg.baseline_name()
    if model != baseline:
        for aspect in cfg.pairwise:
            fig = win_rates(pair_rows, model, baseline, aspect, cfg.seed, cfg.bootstrap_samples)
            if fig:
                mm[f"win_rate_{aspect}"] = fig
    return mm


def reward_metrics(scorer: Any, name: str, pairs: list[dict], per_model: dict[str, list[dict]], cfg: EvalConfig) -> dict:
    """A reward model's accuracy on preference ``pairs`` and the mean reward of each model's answers."""
    prompts = [p["messages"] for p in pairs]
    rc = scorer.score(prompts, [p["chosen"] for p in pairs])
    rr = scorer.score(prompts, [p["rejected"] for p in pairs])
    out: dict[str, Any] = {
        "accuracy": rate(sum(c > r for c, r in zip(rc, rr)), len(pairs), name),
        "ties": sum(c == r for c, r in zip(rc, rr)),
        "mean_margin": mean_fig([c - r for c, r in zip(rc, rr)], name, cfg.seed, cfg.bootstrap_samples),
        "pairs_file": cfg.preference_pairs,
        "mean_reward_of_answers": {},
    }
    for m, rows in per_model.items():
        rew = scorer.score([r["prompt"] for r in rows], [r["answer"] for r in rows])
        out["mean_reward_of_answers"][m] = mean_fig(rew, name, cfg.seed, cfg.bootstrap_samples)
    return out


HEADLINE = ("harmful_compliance", "over_refusal_benign", "over_refusal_benign_risky")


def headline_figures(metrics: dict, judge_accuracy: float | None = None) -> dict[str, dict[str, dict]]:
    """Model -> the headline rates as figures for the manifest, with the refusal judge's measured accuracy."""
    out: dict[str, dict[str, dict]] = {}
    for m, mm in (metrics.get("models") or {}).items():
        figs = {}
        for key in HEADLINE:
            f = mm.get(key)
            if isinstance(f, dict) and f.get("n"):
                figs[key] = Figure.model_validate({**f, "judge_accuracy": judge_accuracy}).as_dict()
        out[m] = figs
    return out
