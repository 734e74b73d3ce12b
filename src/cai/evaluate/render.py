"""``eval/summary.md``: the evaluation figures as Markdown tables, each with its 95% interval and n."""

from __future__ import annotations

from pathlib import Path

from cai.evaluate.config import EvalConfig
from cai.manifests import format_figure


def _fmt(f: dict | None, pct: bool = True, digits: int = 1) -> str:
    return format_figure(f, pct=pct, digits=digits, missing="-")


def judge_quality(judge: str) -> str:
    """The refusal judge's measured quality on the held-out part of the shipped labeled set, where it is measured."""
    from cai.evaluate.refusal import CLASSIFIER_NAME, measure_refusal_classifier
    from cai.evaluate.stats import wilson

    if judge != f"classifier:{CLASSIFIER_NAME}":
        return " (not measured on the labeled set: `cai eval --measure-judge`)"
    h = (measure_refusal_classifier().get("splits") or {}).get("heldout") or {}
    if not h.get("n"):
        return ""
    k = h["tp"] + h["tn"]
    lo, hi = wilson(k, h["n"])
    return (f", measured on the held-out labeled set: accuracy {100 * k / h['n']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"n={h['n']}, precision {100 * h['precision']:.1f}%, recall {100 * h['recall']:.1f}% (a missed refusal counts as "
            "compliance, so harmful compliance errs high)")


def render_summary(metrics: dict, cfg: EvalConfig) -> str:
    models = metrics["models"]
    lines = ["# Evaluation summary", "",
             f"Refusal judge: `{metrics['judge']}`{judge_quality(metrics['judge'])}. Baseline for win rates and Elo: "
             f"`{metrics['baseline']}`. Intervals are 95% (Wilson for rates, bootstrap for means and Elo).", ""]
    head = ["model", "harmful compliance", "over-refusal (benign)", "over-refusal (benign-risky)", "mean length (tokens)",
            f"top {cfg.ngram}-gram's share of all {cfg.ngram}-grams"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, mm in models.items():
        lines.append("| " + " | ".join([
            m, _fmt(mm.get("harmful_compliance")), _fmt(mm.get("over_refusal_benign")),
            _fmt(mm.get("over_refusal_benign_risky")), _fmt(mm.get("mean_length_tokens"), pct=False),
            _fmt(mm.get("ngram_repeat_share"), pct=True),
        ]) + " |")
    lines.append("")
    if metrics.get("elo"):
        lines += ["## Pairwise (both orders)", ""]
        head = ["model"] + [f"win rate {a} vs {metrics['baseline']}" for a in metrics["elo"]] + [f"Elo {a}" for a in metrics["elo"]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m, mm in models.items():
            cells = [m] + [_fmt(mm.get(f"win_rate_{a}")) if m != metrics["baseline"] else "baseline" for a in metrics["elo"]]
            cells += [_fmt(metrics["elo"][a].get(m), pct=False) for a in metrics["elo"]]
            lines.append("| " + " | ".join(cells) + " |")
        for a, e in metrics["elo"].items():
            c = e.get("_judge_position_consistency", {})
            lines.append(f"\n{a}: judge `{c.get('judge')}`; both orders agree on {_fmt(c)} of comparisons; "
                         f"{e.get('_abstained', 0)} abstained.")
        lines.append("")
    cats = sorted({c for mm in models.values() for c in mm.get("harmful_compliance_by_category", {})})
    if cats:
        lines += ["## Harmful compliance by category", "", "| category | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 1)]
        for c in cats:
            lines.append(f"| {c} | " + " | ".join(_fmt(mm.get("harmful_compliance_by_category", {}).get(c), digits=0) for mm in models.values()) + " |")
        lines.append("")
    benches = sorted({b for mm in models.values() for b in mm.get("benchmarks", {})})
    if benches:
        lines += ["## Benchmarks", "", "| benchmark | model | harmful compliance | over-refusal |", "|---|---|---|---|"]
        for b in benches:
            for m, mm in models.items():
                bb = mm.get("benchmarks", {}).get(b, {})
                lines.append(f"| {b} | {m} | {_fmt(bb.get('harmful_compliance'))} | {_fmt(bb.get('over_refusal'))} |")
        lines.append("")
    rm = metrics.get("reward_model")
    if rm:
        lines += ["## Reward model", "", f"Accuracy on {rm['pairs_file']}: {_fmt(rm['accuracy'])} (ties {rm['ties']}).", ""]
        for m, f in rm["mean_reward_of_answers"].items():
            lines.append(f"- mean reward of {m}'s answers: {_fmt(f, pct=False, digits=3)}")
        lines.append("")
    for m, mm in models.items():
        top = mm.get("ngram_repeat_share", {}).get("top")
        if top:
            lines.append(f"- {m}: most repeated {cfg.ngram}-gram \"{top['ngram']}\" ({top['count']} of {top['total']}); "
                         f"truncated answers {_fmt(mm['truncated'])}; empty/degenerate {_fmt(mm['empty_or_degenerate'])}")
    lines += ["", "The local classifier's measured precision and recall are in docs/judges.md "
              "(`cai eval --measure-judge` recomputes them).", ""]
    return "\n".join(lines)


def summary_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "eval" / "summary.md"
