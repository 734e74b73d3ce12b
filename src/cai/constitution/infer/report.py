"""The Markdown report of ``cai constitution infer``."""

from __future__ import annotations


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list[float] | None) -> str:
    return "n/a" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def render_markdown(r: dict) -> str:
    s = r["splits"]
    lines = [
        "# Inferred constitution",
        "",
        f"Input: `{r['input']}`, {r['pairs']} pairs ({s['train']} train, {s['validation']} validation, {s['test']} test). "
        f"Proposer: `{r['proposer']}`; labeler: `{r['labeler']}`.",
        f"{r['proposals']} proposals ({r['unusable_proposals']} unusable), {len(r['candidates'])} candidate principles after "
        f"clustering, {sum(c['kept'] for c in r['candidates'])} kept on the training split.",
        "",
    ]
    h = r.get("heldout")
    if h:
        c = h["constitution"]
        lines += [
            f"## Held-out agreement ({h['n']} test pairs, 95% intervals)",
            "",
            "| labeler | agreement with the labels | 95% interval |",
            "|---|---|---|",
            (f"| with the inferred constitution | {_pct(c['agreement'])} | {_ci(c['ci95'])} |" if c else
             "| with the inferred constitution | no constitution: no candidate passed | - |"),
            f"| with no constitution | {_pct(h['no_constitution']['agreement'])} | {_ci(h['no_constitution']['ci95'])} |",
            f"| chance | 50.0% | {_ci(h['chance']['ci95'])} (a coin on {h['n']} pairs) |",
            "",
        ]
        if c:
            lines += [f"Difference, constitution minus no constitution: {100 * h['difference']['value']:+.1f} points "
                      f"{_ci(h['difference']['ci95'])}. Validation agreement of the selected set: {_pct(h['validation_agreement'])}."]
        lines += ["Agreement intervals are Wilson intervals (a tie or an abstention counts as half an agreement); the "
                  "difference's is a paired percentile bootstrap over pairs.", ""]
    if r.get("selection_fallback"):
        lines += ["No kept candidate raised validation agreement above 50%: the constitution holds the candidate with "
                  "the best training accuracy only.", ""]
    if r.get("principles"):
        lines += ["## Principles", "", "| id | principle | train accuracy | train relevance | test accuracy | test relevance | supporting | opposing |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in r["principles"]:
            tr, te = p["train"], p["test"]
            sup = ", ".join(tr["supporting_pairs"][:6]) + (" ..." if len(tr["supporting_pairs"]) > 6 else "")
            opp = ", ".join(tr["opposing_pairs"][:6]) + (" ..." if len(tr["opposing_pairs"]) > 6 else "")
            lines.append(f"| {p['id']} | {p['principle']} | {_pct(tr['accuracy'])} ({tr['for']}:{tr['against']}) | "
                         f"{_pct(tr['relevance'])} | {_pct(te['accuracy'])} ({te['for']}:{te['against']}) | {_pct(te['relevance'])} | "
                         f"{sup or '-'} | {opp or '-'} |")
        lines.append("")
    lines += ["## Every candidate (training split)", "", "| candidate | proposed | for | against | relevance | kept |", "|---|---|---|---|---|---|"]
    for c in r["candidates"]:
        t = c["train"]
        lines.append(f"| {c['principle']} | {c['proposed']} | {t['for']} | {t['against']} | {_pct(t['relevance'])} | {'yes' if c['kept'] else 'no'} |")
    lines += ["", f"Model calls: {r['cache']['misses']} new, {r['cache']['hits']} from the cache. Time: {r['seconds']} s.", ""]
    return "\n".join(lines)
