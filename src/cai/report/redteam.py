"""The report's red-teaming section: attack success per harm category and method (raw and judge-corrected, with 95%
intervals), diversity, unique successes, attacker refusals and statuses, and a sample of successful attacks.

It reads ``RUN/redteam/manifest.json`` and ``cases.jsonl`` itself (the stage runs on its own, outside the pipeline's
stage list), through the typed :class:`cai.manifests.RedteamManifest`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai.errors import UserInputError
from cai.manifests import RedteamManifest, format_figure, load_manifest
from cai.report import svg
from cai.report.figures import fig_html
from cai.report.html_eval import not_run, table
from cai.report.svg import esc

SAMPLE = 8


def read_redteam(data: dict) -> tuple[RedteamManifest | None, list[dict], str]:
    """(typed manifest, a few successful cases, status): status is "complete", "unfinished", "not run" or the
    problem with the manifest."""
    stage = Path(data["run_dir"]) / "redteam"
    if not (stage / "manifest.json").exists():
        return None, [], "unfinished" if stage.is_dir() else "not run"
    try:
        m = load_manifest("redteam", stage)
    except UserInputError as e:
        return None, [], e.message
    wins: list[dict] = []
    try:
        with open(stage / "cases.jsonl", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line) if line.strip() else {}
                if r.get("status") == "ok" and r.get("success"):
                    wins.append(r)
                    if len(wins) >= SAMPLE:
                        break
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    return m, wins, "complete"  # type: ignore[return-value]


def _f(x: Any) -> dict | None:
    return x.as_dict() if hasattr(x, "as_dict") else x


def _corr(f: Any) -> dict | None:
    return (getattr(f, "model_extra", None) or {}).get("corrected") if f is not None else None


def section_redteam(data: dict) -> str:
    m, wins, status = read_redteam(data)
    if m is None or m.results is None:
        return not_run(f"no finished redteam/ stage ({status}).", "cai redteam --run RUN")
    r = m.results
    c = r.counts
    q = (r.judge or {}).get("quality")
    parts = [f'<p class="small">attacker <code>{esc(m.models.get("attacker", {}).get("model"))}</code>, target '
             f'<code>{esc(m.models.get("target", {}).get("model"))}</code>, judge <code>{esc(r.judge.get("name"))}</code>'
             + (f" (held-out refusal precision {100 * q['refusal_precision']:.1f}%, recall {100 * q['refusal_recall']:.1f}%:"
                " the corrected rate and its interval account for its errors)" if q else " (not measured: no corrected rate)")
             + (f"; purpose: {esc(m.purpose)}" if m.purpose else "") + ".</p>",
             f'<p class="small">cases {esc(c.get("cases"))}: ok {esc(c.get("ok"))}, attacker refused '
             f'{esc(c.get("attacker_refused"))}, error {esc(c.get("error"))}, unscored {esc(c.get("unscored"))} '
             "(only ok cases are judged; an error is never counted safe or a success); near-duplicates of known prompts "
             f'{esc(c.get("near_duplicates"))}; attacker refusal rate {fig_html(_f(r.attacker_refusal))}.</p>']
    rows = [[esc(name), fig_html(_f(f)), fig_html(_corr(f))]
            for name, f in [("all", r.success), *r.by_category.items(), *((f"method {k}", v) for k, v in r.by_method.items())]]
    parts.append(table(["category / method", "attack success (target complied)", "corrected for the judge"], rows, "redteam"))
    cats = list(r.by_category)
    if cats:
        figs = [_f(r.by_category[k]) or {} for k in cats]
        parts.append(svg.grouped_bars(cats, [{"name": "attack success", "values": [f.get("value") for f in figs],
                                              "errs": [tuple(f["ci95"]) if f.get("ci95") else None for f in figs],
                                              "ns": [f.get("n") for f in figs]}],
                                      title="Attack success per harm category (95% Wilson intervals)", ylabel="success",
                                      percent=True, ylim=(0.0, 1.0), css_class="redteam-bars"))
    d, u = r.diversity or {}, r.unique_successes or {}
    div = [[esc(k), esc(v.get("n")), esc(v.get("self_bleu")), esc(v.get("embedding_distance"))]
           for k, v in d.items() if isinstance(v, dict)]
    parts.append(table(["attacks", "n", "self-BLEU (1 = all alike)", "mean pairwise embedding distance"], div, "redteam-div"))
    parts.append(f'<p class="small">unique successes: {esc(u.get("clusters"))} cluster(s) of {esc(u.get("successes"))} '
                 f'successful attacks (largest {esc(u.get("largest_cluster"))}; cosine ≥ {esc(u.get("threshold"))}).</p>')
    if wins:
        parts.append(f"<h4>Successful attacks (first {len(wins)})</h4>" + table(
            ["category", "method", "attack", "answer"],
            [[esc(w.get("category")), esc(w.get("method")), f'<div class="txt">{esc(w.get("prompt"))}</div>',
              f'<div class="txt">{esc(w.get("response"))}</div>'] for w in wins], "samples"))
    return "\n".join(parts)


def summary_lines(data: dict) -> list[str]:
    """The Markdown summary's red-teaming section."""
    m, _, status = read_redteam(data)
    lines = ["## Red-teaming", ""]
    if m is None or m.results is None:
        return lines + [status, ""]
    r = m.results
    lines += [f"Judge `{r.judge.get('name')}`; 95% intervals; n = judged cases (status ok).", "",
              "| category / method | attack success | corrected for the judge |", "|---|---|---|"]
    for name, f in [("all", r.success), *r.by_category.items(), *((f"method {k}", v) for k, v in r.by_method.items())]:
        corr = _corr(f)
        lines.append(f"| {name} | {format_figure(_f(f))} | {format_figure(corr, with_n=False) if corr else '–'} |")
    d, u = r.diversity or {}, r.unique_successes or {}
    a = d.get("attacks") or {}
    lines += ["", f"- diversity of attacks (n={a.get('n')}): self-BLEU {a.get('self_bleu')}, mean embedding distance "
              f"{a.get('embedding_distance')}",
              f"- unique successes: {u.get('clusters')} cluster(s) of {u.get('successes')}",
              f"- attacker refusal rate {format_figure(_f(r.attacker_refusal))}; statuses {dict(r.counts)}", ""]
    return lines
