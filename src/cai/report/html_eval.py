"""HTML sections of the report: the header (stages, models, warnings), the evaluation and the judges."""

from __future__ import annotations

from cai.report import svg
from cai.report.figures import fig_html, flip, fmt_fig, is_num
from cai.report.read import STAGES, models_of, run_constitution
from cai.report.svg import esc


def not_run(what: str, hint: str = "") -> str:
    return f'<p class="notrun">not run — {esc(what)}' + (f" <code>{esc(hint)}</code>" if hint else "") + "</p>"


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (escaped by the caller)."""
    h = "".join(f"<th>{c}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="tw"><table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table></div>'



def section_header(data: dict, generated: str) -> str:
    st = data["stages"]
    c = run_constitution(data)
    const = (f"{esc(c.get('name', '?'))} v{esc(c.get('version', '?'))} <code>{esc(c.get('hash'))}</code>"
             if c else '<span class="na">not recorded (no revise/label/eval manifest)</span>')
    rows = []
    for s in STAGES:
        status = st[s]["status"]
        m = st[s]["manifest"]
        rows.append([f"<code>{esc(s)}</code>", f'<span class="st st-{status.replace(" ", "")}">{esc(status)}</span>',
                     esc(m.get("finished_at", "")) if m else ""])
    grouped: dict[tuple[str, str], list[str]] = {}
    for stage, role, model in models_of(data):
        grouped.setdefault((stage, model), []).append(role)
    mt = table(["stage", "role", "model"], [[esc(a), esc(", ".join(roles)), f"<code>{esc(m_)}</code>"]
                                             for (a, m_), roles in grouped.items()]) if grouped \
        else '<p class="na">no model recorded</p>'
    warn = ""
    if data["warnings"]:
        items = "".join(f"<li><b>{esc(x['where'])}</b>: {esc(x['text'])}</li>" for x in data["warnings"])
        warn = f'<div class="warnbox" id="warnings"><h3>⚠ Warnings ({len(data["warnings"])})</h3><ul>{items}</ul></div>'
    return f"""
<header>
<h1>Constitutional AI report — <span class="run">{esc(data['run'])}</span></h1>
<p class="meta">Run folder <code>{esc(data['run_dir'])}</code> · constitution {const} · generated {esc(generated)}</p>
</header>
{warn}
<div class="cols">
<div><h3>Stages</h3>{table(["stage", "status", "finished (UTC)"], rows, "compact")}</div>
<div><h3>Models</h3>{mt}</div>
</div>"""


EVAL_COLS = [
    ("harmful_compliance", "harmful compliance ↓", True, 1),
    ("over_refusal_benign", "over-refusal, benign ↓", True, 1),
    ("over_refusal_benign_risky", "over-refusal, benign-risky ↓", True, 1),
    ("win_rate_helpful", "helpful win rate vs baseline", True, 1),
    ("win_rate_harmless", "harmless win rate vs baseline", True, 1),
    ("mean_length_tokens", "mean length (tokens)", False, 1),
    ("ngram_repeat_share", "top n-gram's share of all n-grams", True, 1),
    ("truncated", "truncated", True, 1),
]


def eval_points(metrics: dict) -> tuple[list[dict], list[dict]]:
    """Scatter points: (harmlessness, helpfulness) from rates, and (harmless Elo, helpful Elo) when compared."""
    models = metrics.get("models") or {}
    rate_pts, elo_pts = [], []
    elo = metrics.get("elo") or {}
    for name, mm in models.items():
        hc, orf = mm.get("harmful_compliance"), mm.get("over_refusal_benign")
        x, y = flip(hc), flip(orf)
        rate_pts.append({
            "label": name,
            "x": x["value"] if x else None, "y": y["value"] if y else None,
            "xerr": x.get("ci95") if x else None, "yerr": y.get("ci95") if y else None,
            "tip": f"{name}: harmful compliance {fmt_fig(hc)}; over-refusal on benign prompts {fmt_fig(orf)}",
        })
        eh, eb = (elo.get("harmless") or {}).get(name), (elo.get("helpful") or {}).get(name)
        if isinstance(eh, dict) and isinstance(eb, dict):
            elo_pts.append({"label": name, "x": eh.get("value"), "y": eb.get("value"), "xerr": eh.get("ci95"),
                            "yerr": eb.get("ci95"),
                            "tip": f"{name}: harmlessness Elo {fmt_fig(eh, pct=False)}; helpfulness Elo {fmt_fig(eb, pct=False)}"})
    return rate_pts, elo_pts


def category_series(models: dict, key: str) -> tuple[list[str], list[dict]]:
    """The categories of a per-category figure (e.g. ``harmful_compliance_by_category``) and one bar series per model."""
    cats = sorted({c for mm in models.values() for c in (mm.get(key) or {})})
    series = []
    for name, mm in models.items():
        by = mm.get(key) or {}
        series.append({"name": name, "values": [(by.get(c) or {}).get("value") for c in cats],
                       "errs": [(by.get(c) or {}).get("ci95") for c in cats], "ns": [(by.get(c) or {}).get("n") for c in cats]})
    return cats, series


def section_eval(data: dict) -> str:
    st = data["stages"]["eval"]
    metrics = data.get("eval")
    if st["status"] == "not run" or not isinstance(metrics, dict):
        hint = "cai eval --run RUN --model base=embedded --model sl=runs/RUN/sft/model"
        return not_run("no eval/metrics.json in this run.", hint) if st["status"] == "not run" else \
            not_run("eval stage started but metrics.json is not written yet.")
    models = metrics.get("models") or {}
    judge = metrics.get("judge")
    baseline = metrics.get("baseline")
    parts = [f'<p>Refusal judge: <code class="judge">{esc(judge)}</code> (see <a href="#judges">Judges</a>). '
             f'Baseline for win rates and Elo: <code>{esc(baseline)}</code>. Intervals are 95% (Wilson for rates, bootstrap '
             f'for means and Elo); n is the number of prompts (or comparisons).</p>']
    cols = [c for c in EVAL_COLS if any(isinstance(mm.get(c[0]), dict) for mm in models.values())]
    head = ["model"]
    for key, title, _, _ in cols:
        j = next((mm[key].get("judge") for mm in models.values() if isinstance(mm.get(key), dict)), None)
        head.append(f'{esc(title)}<br><span class="judge">{esc(j or "")}</span>')
    rows = []
    for name, mm in models.items():
        row = [f"<b>{esc(name)}</b>" + (' <span class="tag">baseline</span>' if name == baseline else "")]
        for key, _, pct, digits in cols:
            j = next((m2[key].get("judge") for m2 in models.values() if isinstance(m2.get(key), dict)), None)
            row.append(fig_html(mm.get(key), pct=pct, digits=digits, default_judge=j))
        rows.append(row)
    parts.append(table(head, rows, "nums") if rows else '<p class="na">no models in metrics.json</p>')

    rate_pts, elo_pts = eval_points(metrics)
    charts = ['<div class="charts">']
    charts.append(svg.scatter(
        rate_pts, title="Harmlessness vs helpfulness (every evaluated model)",
        xlabel="harmlessness = 1 − harmful-compliance rate →", ylabel="helpfulness = 1 − over-refusal rate (benign) →",
        xlim=(0, 1), ylim=(0, 1), percent=True, frontier=True, width=560, height=440, css_class="pareto",
        note=f"error bars: 95% Wilson intervals; dashed: Pareto frontier; judge {judge}"))
    if elo_pts:
        charts.append(svg.scatter(
            elo_pts, title="Harmlessness Elo vs helpfulness Elo (pairwise judge)",
            xlabel="harmlessness Elo →", ylabel="helpfulness Elo →", frontier=True, width=560, height=440,
            css_class="pareto-elo",
            note=f"Elo anchored at {baseline} = 0; bars: bootstrap 95% over prompts"))
    charts.append("</div>")
    parts.append("".join(charts))

    cats, series = category_series(models, "harmful_compliance_by_category")
    if cats:
        parts.append('<h3>Harmful compliance by category</h3>')
        parts.append(svg.grouped_bars(cats, series, title="Harmful compliance per taxonomy category (lower is better)",
                                      ylabel="harmful-compliance rate", ylim=(0, 1), percent=True, css_class="category-bars"))
        rows = [[esc(c)] + [fig_html((mm.get("harmful_compliance_by_category") or {}).get(c), digits=0, default_judge=judge)
                            for mm in models.values()] for c in cats]
        parts.append(f'<details><summary>table</summary>{table(["category"] + [esc(m) for m in models], rows, "nums")}</details>')
    ocats, series = category_series(models, "over_refusal_by_category")
    if ocats:
        parts.append(svg.grouped_bars(ocats, series, title="Over-refusal per category of benign prompts (lower is better)",
                                      ylabel="refusal rate on benign prompts", ylim=(0, 1), percent=True,
                                      css_class="overrefusal-bars"))
    elo = metrics.get("elo") or {}
    if elo:
        head = ["model"] + [f"Elo {esc(a)}" for a in elo]
        rows = [[esc(m)] + [fig_html(elo[a].get(m), pct=False, digits=0) for a in elo] for m in models]
        parts.append("<h3>Pairwise Elo (both orders)</h3>" + table(head, rows, "nums"))
        for a, e in elo.items():
            c = e.get("_judge_position_consistency")
            parts.append(f'<p class="small">{esc(a)}: judge <code>{esc((c or {}).get("judge"))}</code>; both orders agree on '
                         f'{esc(fmt_fig(c))} of comparisons; {esc(e.get("_abstained", 0))} abstained.</p>')
    benches = sorted({b for mm in models.values() for b in (mm.get("benchmarks") or {})})
    if benches:
        rows = []
        for b in benches:
            for name, mm in models.items():
                bb = (mm.get("benchmarks") or {}).get(b) or {}
                rows.append([esc(b), esc(name), fig_html(bb.get("harmful_compliance")), fig_html(bb.get("over_refusal")),
                             fig_html(bb.get("refusal_rate_unlabeled"))])
        parts.append("<h3>Benchmarks</h3>" + table(["benchmark", "model", "harmful compliance", "over-refusal",
                                                      "refusal rate (unlabeled)"], rows, "nums"))
    counts = metrics.get("counts") or {}
    if counts:
        parts.append(f'<p class="small">Prompts: {esc(counts.get("prompts"))} ('
                     + ", ".join(f"{esc(k)} {esc(v)}" for k, v in (counts.get("by_set") or {}).items()) + ").</p>")
    return "\n".join(parts)


def _split_row(name: str, s: dict) -> list[str]:
    def cell(f: dict) -> str:
        return fig_html({"value": f["value"], "ci95": f["ci95"], "n": f["n"]}, digits=1) if f and f.get("value") is not None else "–"

    return [esc(name), esc(s.get("n")), cell(s["precision"]), cell(s["recall"]),
            esc(f"{s['f1']:.3f}") if is_num(s.get("f1")) else "–", cell(s["accuracy"])]


def section_judges(data: dict) -> str:
    judges = data.get("judges") or []
    if not judges:
        return not_run("no judged numbers in this run (eval, rl and label not run).")
    parts = ['<p>Every number names the judge that produced it. Where a judge can be checked against gold labels, '
             'its measured precision/recall/F1 (refused = positive class) is shown with n and 95% Wilson intervals.</p>']
    for j in judges:
        parts.append(f'<div class="judgecard"><h4><code>{esc(j["name"])}</code></h4>'
                     f'<p>decides: {esc(j["decides"])} · {esc(j["what"])}'
                     + (f' · figures in this run: {esc(j["figures"])}' if j.get("figures") else "")
                     + (f' · used for: {esc(j["uses"])}' if j.get("uses") else "") + "</p>")
        if j.get("measured"):
            rows = []
            for split in ("heldout", "dev"):
                if split in j["measured"]:
                    label = "held-out (unseen while writing the rules)" if split == "heldout" else "dev (rules written on it)"
                    rows.append(_split_row(label, j["measured"][split]))
            parts.append('<div class="accuracy">' + table(["labeled split", "n", "precision", "recall", "F1", "accuracy"], rows, "nums")
                         + f'<p class="small">Measured now on <code>{esc(j.get("measured_file"))}</code> by '
                           "<code>measure_refusal_classifier()</code>; read the held-out row.</p></div>")
        if j.get("measurement_error"):
            parts.append(f'<p class="warn">could not measure: {esc(j["measurement_error"])}</p>')
        for aspect, c in (j.get("consistency") or {}).items():
            if c:
                parts.append(f'<p>position consistency ({esc(aspect)}): {fig_html(c, default_judge=c.get("judge"))}</p>')
        if j.get("accuracy"):
            parts.append(f'<p>accuracy on held-out preference pairs: {fig_html(j["accuracy"], default_judge=j["name"])}</p>')
        if j.get("note"):
            parts.append(f'<p class="small">{esc(j["note"])}</p>')
        parts.append("</div>")
    return "\n".join(parts)

