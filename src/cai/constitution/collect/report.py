"""The Markdown report of ``cai constitution collect``."""

from __future__ import annotations


def _groups(r: dict) -> str:
    return ", ".join(f"{g['agrees']}/{g['agrees'] + g['disagrees'] + g['passes']}" for g in r["groups"])


def render_markdown(r: dict) -> str:
    g = r["groups"]
    st = g["stability"]
    lines = ["# Collective constitution draft", "", f"Source: {r['source']}.", "", "## Filters", ""]
    lines += [f"- {x}" for x in r["filters"]]
    lines += ["", "## Opinion groups", "",
              f"{g['k']} group(s) of sizes {', '.join(map(str, g['sizes']))}, chosen by silhouette: "
              + (", ".join(f"k={k}: {v:.3f}" for k, v in g["silhouette_by_k"].items()) or "n/a") + ".",
              f"PCA variance share of the components: {', '.join(f'{v:.2f}' for v in g['variance_share'])}."]
    if st.get("seeds"):
        lines.append(f"Stability over {st['seeds']} other seeds: same k {st['same_k']}/{st['seeds']}, adjusted Rand index "
                     f"mean {st['adjusted_rand_mean']:.3f}, min {st['adjusted_rand_min']:.3f}.")
    if st.get("export_groups"):
        e = st["export_groups"]
        lines.append(f"Match with the export's own groups (group-id, {e['participants']} participants): adjusted Rand index "
                     f"{e['adjusted_rand']:.3f}.")
    lines += ["", f"## Consensus ({r['rule']} rule, threshold {r['threshold']}): {r['kept']} statement(s) kept", "",
              "Per-group columns are agrees/votes (votes include passes).", "",
              "| rank | id | statement | group-aware consensus | geometric mean | agrees/votes per group | kept |", "|---|---|---|---|---|---|---|"]
    for i, x in enumerate(r["consensus"], 1):
        lines.append(f"| {i} | {x['id']} | {x['text']} | {x['gac']:.3f} | {x['gac_mean']:.3f} | {_groups(x)} | {'yes' if x['kept'] else 'no'} |")
    lines += ["", "## Most divisive", "", "| id | statement | spread of agreement | agrees/votes per group |", "|---|---|---|---|"]
    for x in r["divisive"]:
        lines.append(f"| {x['id']} | {x['text']} | {x['divisiveness']:.3f} | {_groups(x)} |")
    lines += ["", "## Threshold curve (statements kept)", "", "| threshold | gac rule | per-group threshold rule |", "|---|---|---|"]
    for c in r["threshold_curve"]:
        lines.append(f"| {c['threshold']:.2f} | {c['gac']} | {c['threshold_rule']} |")
    if r.get("principles"):
        lines += ["", "## Draft principles", "", "| id | principle | source statements | wording |", "|---|---|---|---|"]
        for p in r["principles"]:
            lines.append(f"| {p['id']} | {p['principle']} | {', '.join(p['source_statements'])} | {p['wording']} |")
    lines += ["", f"Time: {r['seconds']} s.", ""]
    return "\n".join(lines)
