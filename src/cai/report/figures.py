"""Figures as the report shows them: a rate or mean with n, its 95% interval and the judge that produced it."""

from __future__ import annotations

import math
from typing import Any

from cai.manifests import LabelManifest, format_figure
from cai.report.svg import esc


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def wilson_fig(rate: float | None, n: int | None, judge: str | None = None) -> dict | None:
    """A rate as a figure with n and a Wilson 95% interval (k is recovered as round(rate * n))."""
    if not is_num(rate) or not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    from cai.evaluate.stats import wilson

    k = int(round(rate * n))
    lo, hi = wilson(min(max(k, 0), n), n)
    return {"value": rate, "n": n, "k": k, "ci95": [round(lo, 4), round(hi, 4)], "judge": judge}


def fmt_fig(f: dict | None, *, pct: bool = True, digits: int = 1, with_n: bool = True) -> str:
    """``12.5% [5.1, 27.0] n=40`` (plain text; :func:`cai.manifests.format_figure`)."""
    return format_figure(f, pct=pct, digits=digits, with_n=with_n)


def fig_html(f: dict | None, *, pct: bool = True, digits: int = 1, default_judge: str | None = None) -> str:
    if not isinstance(f, dict) or not is_num(f.get("value")):
        return '<span class="na">–</span>'
    v, ci = f["value"], f.get("ci95")
    main = f"{100 * v:.{digits}f}%" if pct else f"{v:.{digits}f}"
    out = f'<span class="v">{esc(main)}</span>'
    if ci and all(is_num(c) for c in ci):
        lo, hi = (100 * ci[0], 100 * ci[1]) if pct else (ci[0], ci[1])
        out += f' <span class="ci">[{lo:.{digits}f}, {hi:.{digits}f}]</span>'
    if f.get("n") is not None:
        out += f' <span class="n">n={esc(f["n"])}</span>'
    j = f.get("judge")
    if j and j != default_judge:
        out += f'<br><span class="judge">{esc(j)}</span>'
    return out


def flip(f: dict | None) -> dict | None:
    """1 - a rate, interval flipped accordingly."""
    if not isinstance(f, dict) or not is_num(f.get("value")):
        return None
    ci = f.get("ci95")
    return {**f, "value": 1 - f["value"], "ci95": [1 - ci[1], 1 - ci[0]] if ci and all(is_num(c) for c in ci) else None}


def model_label(d: Any) -> str:
    if isinstance(d, str):
        return d
    if not isinstance(d, dict):
        return "?"
    if d.get("label"):
        return str(d["label"])
    backend, model = d.get("backend"), d.get("model")
    if backend == "openai":
        return f"openai:{model}@{d.get('base_url', '')}"
    if backend == "fake":
        return "fake"
    return str(model or d.get("path") or "?")


LABEL_RATES = {
    # figure key in the label statistics -> (rate key of the first manifest format, what n it was taken over)
    "position_consistency": ("position_consistency_rate", "labeled"),
    "kept": (None, "n"),
    "preferring_position_a": ("share_preferring_position_a", "orders"),
    "choosing_first_answer": ("share_choosing_first_answer", "labeled"),
}


def label_figures(data: dict) -> dict[str, dict | None]:
    """The label stage's rates as figures. Manifests since the typed format store k and n; for older ones (a rounded
    rate only) k is recovered as round(rate * n) and the figure says so."""
    m = data["stages"]["label"].get("model")
    lab = m.labels if isinstance(m, LabelManifest) else None
    out: dict[str, dict | None] = {}
    for key, (legacy, n_of) in LABEL_RATES.items():
        fig = getattr(lab, key, None) if lab is not None else None
        if fig is not None:
            out[key] = fig.as_dict()
            continue
        raw = data["stages"]["label"]["manifest"].get("labels") or {}
        counts = {k: raw.get(k) if isinstance(raw.get(k), int) else None for k in ("labeled", "n")}
        n = {**counts, "orders": 2 * counts["labeled"] if counts["labeled"] else None}[n_of]
        value = raw.get(legacy) if legacy else ((raw.get("kept_after_filter") or 0) / n if n else None)
        f = wilson_fig(value, n)
        out[key] = {**f, "method": "wilson, k recovered from a rounded rate"} if f else None
    return out
