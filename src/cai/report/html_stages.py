"""HTML sections of the report: training curves, the reward model, the AI labels and the critique-revision traces."""

from __future__ import annotations

from cai.report import svg
from cai.report.diff import diff_counts, word_diff
from cai.report.figures import fig_html, is_num, label_figures, model_label, wilson_fig
from cai.report.html_eval import not_run, table
from cai.report.read import CURVES, STAGE_TITLES, TRAIN_STAGES, accounting_rows, curve_series
from cai.report.svg import esc


def section_training(data: dict) -> str:
    st = data["stages"]
    parts = []
    for s in TRAIN_STAGES:
        title = STAGE_TITLES[s]
        if st[s]["status"] == "not run":
            parts.append(f"<h3>{esc(title)}</h3>" + not_run(f"no {s}/ folder.", f"cai {s} --run RUN"))
            continue
        rows = st[s].get("metrics") or []
        m = st[s]["manifest"]
        charts = []
        for key, label, pct in CURVES[s]:
            xs, ys = curve_series(rows, key)
            if xs:
                lim = (0.0, 1.0) if pct and min(ys) >= 0 and max(ys) <= 1 else None
                charts.append(svg.line_chart([{"name": key, "x": xs, "y": ys}], title=label, xlabel="step", ylabel=key,
                                             percent=pct, ylim=lim, width=360, css_class=f"curve curve-{s}"))
        head = f"<h3>{esc(title)}" + (' <span class="st st-unfinished">unfinished</span>' if st[s]["status"] == "unfinished" else "") + "</h3>"
        info = []
        tr = m.get("training") or {}
        if tr:
            info.append(f"steps {esc(tr.get('steps'))}, device {esc(tr.get('device'))} ({esc(tr.get('precision'))}), "
                        f"{esc(tr.get('seconds_this_session'))} s")
        if s == "rl":
            rl = m.get("rl") or {}
            if rl:
                info.append(f"algorithm {esc(m.get('algorithm'))}, β={esc(rl.get('beta'))}, KL: {esc(rl.get('kl_definition'))}; "
                            f"refusal rate judged by <code>{esc(rl.get('refusal_classifier'))}</code>")
        if s == "dpo" and m.get("dpo"):
            info.append(f"β={esc(m['dpo'].get('beta'))}, loss {esc(m['dpo'].get('loss_type'))}")
        data_info = m.get("data") or {}
        if data_info:
            n_train = data_info.get("train_rows", data_info.get("train_pairs", data_info.get("train_prompts")))
            if n_train is not None:
                info.append(f"training examples n={esc(n_train)}")
        parts.append(head + (f'<p class="small">{" · ".join(info)}</p>' if info else ""))
        if charts:
            parts.append('<div class="charts curves">' + "".join(charts) + "</div>")
        else:
            parts.append('<p class="na">no metrics logged yet (metrics.jsonl is empty or absent).</p>')
    samples = data.get("rl_samples")
    if samples and samples["rows"]:
        top = sorted(samples["rows"], key=lambda x: -(x.get("reward") if is_num(x.get("reward")) else -1e9))[:6]
        rows = [[esc(f"{x.get('reward'):.3f}" if is_num(x.get("reward")) else "–"), "yes" if x.get("refused") else "no",
                 f'<div class="txt">{esc(x.get("prompt", ""))}</div>', f'<div class="txt">{esc(x.get("completion", ""))}</div>']
                for x in top]
        parts.append(f"<h4>Highest-reward RL samples at the last logged step ({esc(samples['step'])})</h4>"
                     + table(["reward", "refused", "prompt", "completion"], rows, "samples"))
    return "\n".join(parts)


def section_reward(data: dict) -> str:
    st = data["stages"]["reward"]
    ev = data.get("reward_eval")
    metrics = data.get("eval") if isinstance(data.get("eval"), dict) else {}
    rm_eval = (metrics or {}).get("reward_model")
    if st["status"] == "not run" and not rm_eval:
        return not_run("no reward/ folder.", "cai reward --run RUN")
    parts = []
    if isinstance(ev, dict):
        rows = []
        for when in ("before_training", "after_training"):
            e = ev.get(when)
            if not isinstance(e, dict) or not e.get("n"):
                continue
            rows.append([esc(when.replace("_", " ")), fig_html(wilson_fig(e.get("accuracy"), e.get("n"))),
                         esc(f"{e['ece']:.3f}") if is_num(e.get("ece")) else "–",
                         esc(f"{e['mean_margin']:.3f}") if is_num(e.get("mean_margin")) else "–",
                         esc(f"{e['soft_bt_loss']:.3f}") if is_num(e.get("soft_bt_loss")) else "–",
                         esc(f"{e.get('mean_pred_p_chosen', '–')} / {e.get('mean_label_p_chosen', '–')}")])
        parts.append(f'<p>Held-out pairs: n={esc(ev.get("n_eval"))} (trained on {esc(ev.get("n_train"))}). '
                     f'Calibration target: {esc(ev.get("calibration_target", ""))}.</p>')
        if rows:
            parts.append(table(["", "accuracy (r_chosen > r_rejected)", "ECE", "mean margin", "soft-BT loss",
                                 "mean predicted / label P(chosen)"], rows, "nums reward-eval"))
        after = ev.get("after_training") or ev.get("before_training")
        bins = [b for b in ((after or {}).get("bins") or []) if b.get("n")]
        if bins:
            parts.append('<div class="charts">' + svg.line_chart(
                [{"name": "mean label P(chosen)", "x": [b["mean_pred"] for b in bins], "y": [b["mean_label"] for b in bins]}],
                title=f"Calibration after training (ECE {after.get('ece', '–')}, n={after.get('n')})",
                xlabel="predicted P(chosen) = sigmoid(margin)", ylabel="mean label", ylim=(0, 1), xlim=(0, 1), width=420, height=300,
                reference=[(0, 0), (1, 1)], css_class="calibration") + "</div>")
    elif st["status"] != "not run":
        parts.append('<p class="na">reward/eval.json not found (stage unfinished or no held-out split).</p>')
    if isinstance(rm_eval, dict):
        acc = rm_eval.get("accuracy")
        rj = (acc or {}).get("judge") if isinstance(acc, dict) else None
        parts.append(f'<p>On <code>{esc(rm_eval.get("pairs_file"))}</code> (cai eval, judge <code class="judge">{esc(rj)}</code>): '
                     f'accuracy {fig_html(acc, default_judge=rj)}; ties {esc(rm_eval.get("ties"))}; '
                     f'mean margin {fig_html(rm_eval.get("mean_margin"), pct=False, digits=3, default_judge=rj)}.</p>')
        mr = rm_eval.get("mean_reward_of_answers") or {}
        if mr:
            parts.append(table(["model", "mean reward of its eval answers"],
                                [[esc(m), fig_html(f, pct=False, digits=3, default_judge=rj)] for m, f in mr.items()], "nums"))
    return "\n".join(parts)


def section_label(data: dict) -> str:
    st = data["stages"]["label"]
    if st["status"] == "not run":
        return not_run("no label/ folder.", "cai label --run RUN")
    m = st["manifest"]
    if not m:
        return '<p class="na">label stage unfinished: no manifest.json with statistics yet.</p>'
    lab = m.get("labels") or {}
    warnings = m.get("warnings") or lab.get("warnings") or []
    parts = []
    if warnings:
        parts.append('<div class="warnbox"><h4>⚠ Label warnings</h4><ul>' + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")
    n, n_lab = lab.get("n"), lab.get("labeled")
    figs = label_figures(data)
    rows = [
        ["labeler", f"<code>{esc(model_label(m.get('model')))}</code>, mode {esc(m.get('mode'))}"
         + (f", clamp {esc(lab.get('clamp'))}" if lab.get("clamp") else "")],
        ["comparisons", f"{esc(n)} ({esc(lab.get('skipped_identical', 0))} identical pairs skipped)"],
        ["labeled / abstentions", f"{esc(n_lab)} / {esc(lab.get('abstentions'))}"],
        ["position consistency (both orders agree)", fig_html(figs["position_consistency"])],
        ["kept after filter (min confidence " + esc(lab.get("min_confidence")) + ")", fig_html(figs["kept"])],
        ["mean confidence |p−0.5|·2", esc(lab.get("mean_confidence")) + (f' <span class="n">n={esc(n_lab)}</span>' if n_lab else "")],
        ["position bias |p₁−p₂|", esc(lab.get("position_bias"))],
        ["share preferring position A", fig_html(figs["preferring_position_a"])],
        ["share choosing the first answer", fig_html(figs["choosing_first_answer"])],
    ]
    parts.append('<div class="cols"><div>' + table(["statistic", "value"], rows, "kv") + "</div><div>")
    counts, edges = lab.get("confidence_histogram"), lab.get("confidence_histogram_edges")
    if isinstance(counts, list) and isinstance(edges, list) and len(edges) == len(counts) + 1:
        parts.append(svg.histogram(counts, edges, title=f"Label confidence (n={sum(counts)})",
                                   xlabel="confidence |p − 0.5| · 2" + (" (before clamping)" if lab.get("confidence_basis") else ""),
                                   css_class="confidence-hist"))
    parts.append("</div></div>")
    return "\n".join(parts)


def _trace_detail(r: dict) -> str:
    parts = [f'<div class="pair"><div><h5>Prompt</h5><div class="txt">{esc(r.get("prompt", ""))}</div></div>'
             f'<div><h5>Initial answer{(" (" + esc(r.get("initial_finish")) + ")") if r.get("initial_finish") else ""}</h5>'
             f'<div class="txt">{esc(r.get("initial", ""))}</div></div></div>']
    current = r.get("initial", "") or ""
    for e in r.get("rounds") or []:
        if not isinstance(e, dict):
            continue
        acc = e.get("accepted")
        badge = '<span class="tag ok">accepted</span>' if acc else '<span class="tag bad">rejected</span>'
        if e.get("skipped"):
            badge = '<span class="tag">skipped</span>'
        flags = "".join(f'<span class="flag">{esc(f)}</span>' for f in e.get("flags") or [])
        parts.append(f'<div class="round"><h5>Round {esc(e.get("round"))} · principle <code>{esc(e.get("principle_id"))}</code> '
                     f"{badge} {flags}</h5>"
                     f'<div class="crit"><b>Critique:</b> <span class="txt">{esc(e.get("critique", ""))}</span></div>')
        rev = e.get("revision")
        if isinstance(rev, str):
            d, i = diff_counts(current, rev)
            parts.append(f'<div class="rev"><b>Revision</b> <span class="small">(−{d} / +{i} words vs the text it revised)</span>'
                         f'<div class="txt diff">{word_diff(current, rev)}</div></div>')
            if acc:
                current = rev
        parts.append("</div>")
    final = r.get("final", "") or ""
    if r.get("rounds"):
        parts.append(f'<div class="round final"><h5>Final vs initial</h5><div class="txt diff">{word_diff(r.get("initial", "") or "", final)}</div></div>')
    else:
        parts.append(f'<div class="round final"><h5>Answer</h5><div class="txt">{esc(final)}</div></div>')
    return "".join(parts)


def section_traces(data: dict) -> str:
    st = data["stages"]["revise"]
    if st["status"] == "not run":
        return not_run("no revise/ folder.", "cai revise --run RUN")
    rv = data.get("revise") or {}
    rows = rv.get("rows")
    m = st["manifest"]
    parts = []
    c = m.get("counts") or {}
    if c:
        gen, acc = c.get("revisions_generated"), c.get("revisions_accepted")
        red = c.get("redteam_rows")
        items = [f"rows {esc(c.get('rows'))} ({esc(red)} red-team, {esc(c.get('helpful_rows'))} helpful)",
                 f"revisions accepted {fig_html(wilson_fig(acc / gen if gen else None, gen))}",
                 f"final differs from initial {fig_html(wilson_fig(c.get('changed_from_initial', 0) / red if red else None, red))}",
                 f"initial answers truncated {esc(c.get('initial_truncated'))}"]
        if c.get("flags"):
            items.append("flags: " + ", ".join(f'<span class="flag">{esc(k)}</span> {esc(v)}' for k, v in c["flags"].items()))
        parts.append("<ul class=\"stats\">" + "".join(f"<li>{x}</li>" for x in items) + "</ul>")
    if not rows:
        parts.append('<p class="na">no traces in revise/data.jsonl yet.</p>')
        return "\n".join(parts)
    total = rv.get("total") or len(rows)
    shown = f"showing {len(rows)} of {total}" if total > len(rows) else f"{len(rows)} traces"
    parts.append(f'<div class="filterbar"><input id="trace-filter" type="search" placeholder="filter traces: id, category, '
                 f'principle, any text…" aria-label="filter traces"> <label><input id="trace-changed" type="checkbox"> only '
                 f'changed</label> <span id="trace-count" class="small">{esc(shown)}</span></div>')
    body = []
    for k, r in enumerate(rows):
        rounds = [e for e in (r.get("rounds") or []) if isinstance(e, dict)]
        n_acc = sum(bool(e.get("accepted")) for e in rounds)
        flags = sorted({f for e in rounds for f in (e.get("flags") or [])})
        principles = " ".join(str(e.get("principle_id")) for e in rounds)
        search = " ".join(str(x) for x in (r.get("id"), r.get("kind"), r.get("category"), principles, " ".join(flags),
                                              r.get("prompt"), r.get("initial"), r.get("final"))).lower()
        changed = bool(r.get("changed"))
        final = str(r.get("final", "") or "")
        summary = f"rounds ({len(rounds)}) and word diffs" if rounds else "full text"
        flag_html = "".join(f'<span class="flag">{esc(f)}</span>' for f in flags)
        body.append(
            f'<tr class="trace" data-k="{k}" data-changed="{int(changed)}" data-search="{esc(search)}">'
            f'<td><code>{esc(r.get("id"))}</code></td><td>{esc(r.get("kind", ""))}</td><td>{esc(r.get("category") or "")}</td>'
            f'<td class="clip">{esc(str(r.get("prompt", ""))[:220])}</td><td class="clip">{esc(final[:220])}</td>'
            f'<td class="c">{n_acc}/{len(rounds)}</td><td class="c">{"yes" if changed else "no"}</td><td>{flag_html}</td></tr>'
            f'<tr class="detail" data-k="{k}"><td colspan="8"><details><summary>{summary}</summary>'
            f"{_trace_detail(r)}</details></td></tr>")
    parts.append('<table id="traces" class="traces"><thead><tr><th>id</th><th>kind</th><th>category</th><th>prompt</th>'
                 '<th>final answer</th><th>accepted</th><th>changed</th><th>flags</th></tr></thead><tbody>'
                 + "".join(body) + "</tbody></table>")
    return "\n".join(parts)


def _count(v: float | int | None, digits: int = 0) -> str:
    return f"{v:,.{digits}f}" if is_num(v) else "–"


def section_accounting(data: dict) -> str:
    """Per stage and role: calls, tokens, cached-prefix tokens, seconds, tokens/s, and money where a price is set."""
    rows_in = accounting_rows(data)
    if not rows_in:
        return not_run("no finished stage recorded its time or tokens.")
    money = any(a.cost is not None for r in rows_in for a in r["roles"].values())
    head = ["stage", "role", "calls", "prompt tokens", "completion tokens", "cached-prefix tokens", "model seconds",
            "tokens/s"] + (["cost"] if money else [])
    rows = []
    for r in rows_in:
        stage_cell = f"<code>{esc(r['stage'])}</code>" + (f'<br><span class="small">{esc(_count(r["seconds"], 1))} s in all</span>'
                                                          if r["seconds"] is not None else "")
        if not r["roles"]:
            rows.append([stage_cell, '<span class="na">no model calls recorded</span>'] + ["–"] * (len(head) - 2))
            continue
        for role, a in r["roles"].items():
            cells = [stage_cell, esc(role), _count(a.calls), _count(a.prompt_tokens), _count(a.completion_tokens),
                     _count(a.cached_prefix_tokens), _count(a.wall_seconds, 1), _count(a.tokens_per_s, 1)]
            if money:
                cells.append(esc(f"{a.cost:.4f} {a.currency or ''}".strip()) if a.cost is not None else "–")
            rows.append(cells)
            stage_cell = ""
    note = ('<p class="small">Time is this session\'s (a resumed stage counts only what it did after resuming); '
            "model seconds are the time spent inside the role's backend calls. Training stages record time, not tokens.</p>")
    return table(head, rows, "nums accounting") + note

