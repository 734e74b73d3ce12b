"""The report's Markdown summary (``summary.md``): the numbers of the HTML page as plain tables and lists."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from cai.report.figures import flip, fmt_fig, is_num, label_figures, wilson_fig
from cai.report.html_eval import EVAL_COLS
from cai.report.read import CURVES, STAGES, TRAIN_STAGES, accounting_rows, curve_series, run_constitution
from cai.report.redteam import summary_lines
from cai.report import routes


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def render_summary(data: dict, generated: str | None = None) -> str:
    generated = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    st = data["stages"]
    c = run_constitution(data)
    lines = [f"# CAI report: {_md(data['run'])}", "",
             f"Run `{data['run_dir']}`; constitution "
             + (f"{_md(c.get('name'))} v{_md(c.get('version'))} (`{c.get('hash')}`)" if c else "not recorded")
             + f"; generated {generated}. Full report: `report.html`.", ""]
    lines += ["| stage | status | finished |", "|---|---|---|"]
    for s in STAGES:
        lines.append(f"| {s} | {st[s]['status']} | {_md(st[s]['manifest'].get('finished_at', ''))} |")
    lines.append("")
    if data["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{_md(w['where'])}**: {_md(w['text'])}" for w in data["warnings"]] + [""]
    metrics = data.get("eval")
    lines += ["## Evaluation", ""]
    if isinstance(metrics, dict) and metrics.get("models"):
        models = metrics["models"]
        cols = [col for col in EVAL_COLS if any(isinstance(mm.get(col[0]), dict) for mm in models.values())]
        lines.append(f"Refusal judge `{metrics.get('judge')}`; baseline `{metrics.get('baseline')}`; 95% intervals; n = prompts.")
        lines.append("")
        lines.append("| model | harmlessness (1 − harmful compliance) | " + " | ".join(_md(t) for _, t, _, _ in cols) + " |")
        lines.append("|" + "---|" * (len(cols) + 2))
        for name, mm in models.items():
            cells = [_md(name), fmt_fig(flip(mm.get("harmful_compliance")))]
            cells += [fmt_fig(mm.get(k), pct=p, digits=d) for k, _, p, d in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        elo = metrics.get("elo") or {}
        if elo:
            lines += ["| model | " + " | ".join(f"Elo {a}" for a in elo) + " |", "|" + "---|" * (len(elo) + 1)]
            for name in models:
                lines.append(f"| {_md(name)} | " + " | ".join(fmt_fig(elo[a].get(name), pct=False, digits=0) for a in elo) + " |")
            lines.append("")
    else:
        lines += ["not run", ""]
    lines += routes.summary_lines(data)
    lines += ["## Judges", ""]
    if data.get("judges"):
        lines += ["| judge | decides | measured (held-out split) |", "|---|---|---|"]
        for j in data["judges"]:
            meas = "–"
            if j.get("measured", {}).get("heldout"):
                h = j["measured"]["heldout"]
                meas = (f"precision {fmt_fig(h['precision'])}, recall {fmt_fig(h['recall'])}, F1 {h['f1']:.3f}, n={h['n']}"
                        if is_num(h.get("f1")) else "–")
            elif j.get("accuracy"):
                meas = f"accuracy {fmt_fig(j['accuracy'])}"
            elif j.get("consistency"):
                meas = "; ".join(f"position consistency ({a}) {fmt_fig(v)}" for a, v in j["consistency"].items() if v) or "–"
            elif j.get("note"):
                meas = j["note"]
            lines.append(f"| `{_md(j['name'])}` | {_md(j['decides'])} | {_md(meas)} |")
        lines.append("")
    else:
        lines += ["not run", ""]
    lines += ["## AI preference labels", ""]
    lm = st["label"]["manifest"]
    if lm:
        lab = lm.get("labels") or {}
        n, n_lab = lab.get("n"), lab.get("labeled")
        lines += [f"- comparisons {n}, labeled {n_lab}, abstentions {lab.get('abstentions')}",
                  f"- position consistency {fmt_fig(label_figures(data)['position_consistency'])}",
                  f"- kept after filter {lab.get('kept_after_filter')} of {n} (min confidence {lab.get('min_confidence')})",
                  f"- mean confidence {lab.get('mean_confidence')}, position bias {lab.get('position_bias')}", ""]
    else:
        lines += [st["label"]["status"], ""]
    lines += ["## Reward model", ""]
    ev = data.get("reward_eval")
    if isinstance(ev, dict) and isinstance(ev.get("after_training"), dict):
        a = ev["after_training"]
        lines += [f"- held-out accuracy {fmt_fig(wilson_fig(a.get('accuracy'), a.get('n')))}, ECE {a.get('ece')}, "
                  f"mean margin {a.get('mean_margin')}", ""]
    else:
        lines += [st["reward"]["status"] if st["reward"]["status"] != "complete" else "no held-out evaluation", ""]
    lines += ["## Training (first → last logged value)", ""]
    any_train = False
    for s in TRAIN_STAGES:
        rows = st[s].get("metrics") or []
        if not rows:
            continue
        vals = []
        for key, label, pct in CURVES[s]:
            xs, ys = curve_series(rows, key)
            if ys:
                f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.4g}")
                vals.append(f"{key} {f(ys[0])} → {f(ys[-1])} ({len(ys)} points)")
        if vals:
            any_train = True
            lines.append(f"- **{s}**: " + "; ".join(vals))
    lines += ([""] if any_train else ["not run", ""])
    lines += ["## SL-CAI revisions", ""]
    rc = st["revise"]["manifest"].get("counts") or {}
    if rc:
        lines += [f"- rows {rc.get('rows')} ({rc.get('redteam_rows')} red-team, {rc.get('helpful_rows')} helpful); revisions accepted "
                  f"{rc.get('revisions_accepted')}/{rc.get('revisions_generated')}; final differs from initial "
                  f"{rc.get('changed_from_initial')}/{rc.get('redteam_rows')}", ""]
    else:
        lines += [st["revise"]["status"], ""]
    lines += summary_lines(data)
    lines += _accounting_lines(data)
    return "\n".join(lines)


def _accounting_lines(data: dict) -> list[str]:
    rows = accounting_rows(data)
    lines = ["## Time, tokens and money", ""]
    if not rows:
        return lines + ["no finished stage recorded its time or tokens", ""]
    money = any(a.cost is not None for r in rows for a in r["roles"].values())
    lines += ["| stage | seconds | role | calls | prompt tokens | completion tokens | cached-prefix tokens | tokens/s |"
              + (" cost |" if money else ""), "|" + "---|" * (8 + money)]
    for r in rows:
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "–"
        for role, a in (r["roles"] or {"–": None}).items():
            if a is None:
                lines.append(f"| {r['stage']} | {secs} | – | – | – | – | – | – |" + (" – |" if money else ""))
                continue
            tps = f"{a.tokens_per_s:.1f}" if a.tokens_per_s is not None else "–"
            cells = [r["stage"], secs, _md(role), str(a.calls), str(a.prompt_tokens), str(a.completion_tokens),
                     str(a.cached_prefix_tokens), tps]
            if money:
                cells.append(f"{a.cost:.4f} {a.currency or ''}".strip() if a.cost is not None else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]

