"""Small SVG charts in pure Python for the self-contained HTML report: a labelled scatter with error bars (and an
optional Pareto frontier), grouped bars with error bars, line charts and a histogram.

Every function returns one ``<svg>`` element as a string: no scripts, no external fonts or files, so the report opens
with no network. All text that reaches the SVG (titles, axis labels, point and series names, tooltips) is escaped.
Each data mark carries a class (``point``, ``bar``, ``line``, ``hist-bar``) and ``data-*`` attributes naming what it
shows, so the rendered document can be checked mechanically.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable, Sequence

PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C6D31", "#444444")
"""Okabe-Ito colours (readable with the common colour-vision deficiencies), then two neutrals."""

FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif"


def esc(value: Any) -> str:
    """Text escaped for use in SVG/HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 times a power of ten; whole-number
    steps only when ``integer``)."""
    if not (_finite(lo) and _finite(hi)):
        return [0.0, 1.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in ((1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)) if m * mag >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-6 and len(ticks) < 50:
        ticks.append(round(v, 12))
        v += step
    if ticks and ticks[-1] < hi - step * 1e-6:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def fmt_tick(v: float, percent: bool = False, step: float | None = None) -> str:
    """A tick label: as a percentage, or with as many decimals as the tick step needs."""
    if percent:
        v, step = 100 * v, (100 * step if step else None)
    if step and step > 0:
        e = math.floor(math.log10(step))
        mant = step / 10**e
        digits = max(0, -e + (1 if abs(mant - 2.5) < 1e-6 else 0))
        s = f"{v:.{min(digits, 6)}f}"
    elif v == 0:
        s = "0"
    else:
        s = f"{v:.3g}"
    if s.startswith("-") and float(s) == 0:
        s = s[1:]
    if not percent and step and abs(v) >= 100000:
        s = f"{v:.3g}"
    return s + ("%" if percent else "")


def _extent(values: Iterable[float], pad: float = 0.05) -> tuple[float, float]:
    vals = [v for v in values if _finite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    if lo == hi:
        d = abs(lo) * 0.1 or 0.5
        return lo - d, hi + d
    span = hi - lo
    return lo - pad * span, hi + pad * span


def _shorten(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


class _Frame:
    """Plot area, scales, axes, grid, title and legend of one chart."""

    def __init__(self, width: int, height: int, xlim: tuple[float, float], ylim: tuple[float, float], *,
                 left: int = 62, right: int = 18, top: int = 40, bottom: int = 52):
        self.w, self.h = width, height
        self.l, self.r, self.t, self.b = left, right, top, bottom
        self.x0, self.x1 = xlim
        self.y0, self.y1 = ylim
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y1 = self.y0 + 1

    @property
    def pw(self) -> float:
        return self.w - self.l - self.r

    @property
    def ph(self) -> float:
        return self.h - self.t - self.b

    def sx(self, x: float) -> float:
        return self.l + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, y: float) -> float:
        return self.t + self.ph - (y - self.y0) / (self.y1 - self.y0) * self.ph

    def clip_y(self, y: float) -> float:
        return min(max(y, self.y0), self.y1)

    def clip_x(self, x: float) -> float:
        return min(max(x, self.x0), self.x1)

    def open(self, kind: str, title: str, css_class: str = "") -> list[str]:
        cls = f"plot plot-{kind}" + (f" {css_class}" if css_class else "")
        return [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="{esc(cls)}" viewBox="0 0 {self.w} {self.h}" '
            f'width="{self.w}" height="{self.h}" role="img" aria-label="{esc(title)}" style="{FONT};max-width:100%;height:auto">',
            f"<title>{esc(title)}</title>",
            f'<rect x="0" y="0" width="{self.w}" height="{self.h}" fill="#ffffff"/>',
            f'<text x="{self.l}" y="22" font-size="14" font-weight="600" fill="#222">{esc(_shorten(title, 90))}</text>',
        ]

    def axes(self, xlabel: str, ylabel: str, *, xticks: Sequence[float] | None = None, yticks: Sequence[float] | None = None,
             xpercent: bool = False, ypercent: bool = False, xgrid: bool = True) -> list[str]:
        out = ['<g class="axes" font-size="11" fill="#555">']
        if yticks:
            step = (yticks[1] - yticks[0]) if len(yticks) > 1 else None
            for v in yticks:
                if v < self.y0 - 1e-12 or v > self.y1 + 1e-12:
                    continue
                y = self.sy(v)
                out.append(f'<line x1="{self.l}" y1="{y:.1f}" x2="{self.l + self.pw:.1f}" y2="{y:.1f}" stroke="#e6e6e6"/>')
                out.append(f'<text x="{self.l - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(fmt_tick(v, ypercent, step))}</text>')
        if xticks:
            step = (xticks[1] - xticks[0]) if len(xticks) > 1 else None
            for v in xticks:
                if v < self.x0 - 1e-12 or v > self.x1 + 1e-12:
                    continue
                x = self.sx(v)
                if xgrid:
                    out.append(f'<line x1="{x:.1f}" y1="{self.t}" x2="{x:.1f}" y2="{self.t + self.ph:.1f}" stroke="#f0f0f0"/>')
                out.append(f'<text x="{x:.1f}" y="{self.t + self.ph + 16:.1f}" text-anchor="middle">{esc(fmt_tick(v, xpercent, step))}</text>')
        out.append(f'<rect x="{self.l}" y="{self.t}" width="{self.pw:.1f}" height="{self.ph:.1f}" fill="none" stroke="#999"/>')
        out.append(f'<text x="{self.l + self.pw / 2:.1f}" y="{self.h - 10}" text-anchor="middle" font-size="12" fill="#333">{esc(xlabel)}</text>')
        cy = self.t + self.ph / 2
        out.append(f'<text x="14" y="{cy:.1f}" transform="rotate(-90 14 {cy:.1f})" text-anchor="middle" font-size="12" fill="#333">{esc(ylabel)}</text>')
        out.append("</g>")
        return out

    def legend(self, names: Sequence[str], colors: Sequence[str], *, kind: str = "rect") -> list[str]:
        """One row of legend entries under the title, wrapping onto a second row when needed."""
        if not names:
            return []
        out = ['<g class="legend" font-size="11" fill="#333">']
        x, y = float(self.l), 34.0
        for name, c in zip(names, colors):
            label = _shorten(name, 28)
            wdt = 18 + 6.4 * len(label) + 14
            if x + wdt > self.w - self.r and x > self.l:
                x, y = float(self.l), y + 14
            if kind == "line":
                out.append(f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 12:.1f}" y2="{y - 4:.1f}" stroke="{c}" stroke-width="2.5"/>')
            else:
                out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="11" height="10" fill="{c}"/>')
            out.append(f'<text x="{x + 16:.1f}" y="{y:.1f}">{esc(label)}</text>')
            x += wdt
        out.append("</g>")
        return out


def _legend_rows(names: Sequence[str], width: int, left: int, right: int) -> int:
    rows, x = 1, float(left)
    for n in names:
        wdt = 18 + 6.4 * len(_shorten(n, 28)) + 14
        if x + wdt > width - right and x > left:
            rows, x = rows + 1, float(left)
        x += wdt
    return rows


def empty_chart(title: str, message: str, *, width: int = 560, height: int = 120, kind: str = "empty") -> str:
    f = _Frame(width, height, (0, 1), (0, 1))
    parts = f.open(kind, title)
    parts.append(f'<text x="{width / 2}" y="{height / 2 + 10}" text-anchor="middle" font-size="12" fill="#777">{esc(message)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# --- scatter ------------------------------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher is better on both), by x."""
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: (points[i][0], -points[i][1]))


def scatter(
    points: Sequence[dict],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    percent: bool = False,
    frontier: bool = False,
    width: int = 560,
    height: int = 420,
    css_class: str = "",
    note: str | None = None,
) -> str:
    """Labelled points with optional error bars.

    ``points``: dicts with ``label``, ``x``, ``y`` and optionally ``xerr`` / ``yerr`` = (lo, hi) in data units and
    ``tip`` (tooltip text). Points with a missing coordinate are left out and listed under the chart. ``frontier``
    draws the Pareto frontier (higher is better on both axes) as a dashed line.
    """
    good = [p for p in points if _finite(p.get("x")) and _finite(p.get("y"))]
    missing = [str(p.get("label")) for p in points if p not in good]
    if not good:
        return empty_chart(title, "no model has both numbers", kind="scatter")
    xs = [p["x"] for p in good] + [v for p in good for v in (p.get("xerr") or ()) if _finite(v)]
    ys = [p["y"] for p in good] + [v for p in good for v in (p.get("yerr") or ()) if _finite(v)]
    xl = xlim or _extent(xs, 0.12)
    yl = ylim or _extent(ys, 0.12)
    xt, yt = nice_ticks(*xl), nice_ticks(*yl)
    if not xlim:
        xl = (min(xl[0], xt[0]), max(xl[1], xt[-1]))
    if not ylim:
        yl = (min(yl[0], yt[0]), max(yl[1], yt[-1]))
    f = _Frame(width, height, xl, yl, bottom=52 + (16 if note or missing else 0))
    parts = f.open("scatter", title, css_class)
    parts += f.axes(xlabel, ylabel, xticks=xt, yticks=yt, xpercent=percent, ypercent=percent)
    if frontier and len(good) > 1:
        front = pareto_front([(p["x"], p["y"]) for p in good])
        if len(front) > 1:
            pts = " ".join(f"{f.sx(good[i]['x']):.1f},{f.sy(good[i]['y']):.1f}" for i in front)
            parts.append(f'<polyline class="frontier" points="{pts}" fill="none" stroke="#888" stroke-width="1.5" stroke-dasharray="5 4"/>')
    parts.append('<g class="points">')
    for i, p in enumerate(good):
        c = p.get("color") or color(i)
        x, y = f.sx(p["x"]), f.sy(p["y"])
        g = [f'<g class="point" data-label="{esc(p["label"])}" data-x="{p["x"]:.6g}" data-y="{p["y"]:.6g}">']
        tip = p.get("tip") or f'{p["label"]}: x={p["x"]:.4g}, y={p["y"]:.4g}'
        g.append(f"<title>{esc(tip)}</title>")
        xe, ye = p.get("xerr"), p.get("yerr")
        if xe and all(_finite(v) for v in xe):
            a, b = f.sx(f.clip_x(xe[0])), f.sx(f.clip_x(xe[1]))
            g.append(f'<line class="errbar" x1="{a:.1f}" y1="{y:.1f}" x2="{b:.1f}" y2="{y:.1f}" stroke="{c}" stroke-width="1.5"/>')
            g += [f'<line x1="{v:.1f}" y1="{y - 4:.1f}" x2="{v:.1f}" y2="{y + 4:.1f}" stroke="{c}" stroke-width="1.5"/>' for v in (a, b)]
        if ye and all(_finite(v) for v in ye):
            a, b = f.sy(f.clip_y(ye[0])), f.sy(f.clip_y(ye[1]))
            g.append(f'<line class="errbar" x1="{x:.1f}" y1="{a:.1f}" x2="{x:.1f}" y2="{b:.1f}" stroke="{c}" stroke-width="1.5"/>')
            g += [f'<line x1="{x - 4:.1f}" y1="{v:.1f}" x2="{x + 4:.1f}" y2="{v:.1f}" stroke="{c}" stroke-width="1.5"/>' for v in (a, b)]
        g.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{c}" stroke="#fff" stroke-width="1.5"/>')
        anchor, dx = ("end", -9) if x > f.l + f.pw * 0.75 else ("start", 9)
        g.append(f'<text x="{x + dx:.1f}" y="{y - 8:.1f}" text-anchor="{anchor}" font-size="12" font-weight="600" fill="{c}" '
                 f'paint-order="stroke" stroke="#fff" stroke-width="3">{esc(_shorten(p["label"], 24))}</text>')
        g.append("</g>")
        parts += g
    parts.append("</g>")
    foot = []
    if note:
        foot.append(note)
    if missing:
        foot.append("not shown (a number is missing): " + ", ".join(missing))
    if foot:
        parts.append(f'<text x="{f.l}" y="{height - 28}" font-size="10.5" fill="#666">{esc(_shorten("; ".join(foot), 110))}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# --- grouped bars -------------------------------------------------------------------------------------------------
def grouped_bars(
    categories: Sequence[str],
    series: Sequence[dict],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    percent: bool = False,
    width: int | None = None,
    height: int = 360,
    css_class: str = "",
) -> str:
    """Bars for each category, one per series, with optional error bars.

    ``series``: dicts with ``name``, ``values`` (one per category, ``None`` for missing), optional ``errs`` (one
    (lo, hi) or ``None`` per category) and ``ns`` (sample sizes, shown in tooltips).
    """
    cats = list(categories)
    if not cats or not series:
        return empty_chart(title, "nothing to show", kind="bars")
    names = [str(s["name"]) for s in series]
    width = width or max(560, min(1180, 90 + len(cats) * (18 * len(series) + 22)))
    vals = [v for s in series for v in s["values"] if _finite(v)]
    errs = [e for s in series for e in (s.get("errs") or []) if e]
    hi_data = max(vals + [b for _, b in errs if _finite(b)], default=1.0)
    lo_data = min(vals + [0.0])
    yl = ylim or (lo_data, hi_data * 1.08 if hi_data > 0 else 1.0)
    yt = nice_ticks(*yl)
    if not ylim:
        yl = (yl[0], max(yl[1], yt[-1]))
    long_labels = max(len(c) for c in cats) > max(6, int(900 / max(len(cats), 1) / 7))
    bottom = 52 + (min(70, int(5.2 * max(len(c) for c in cats))) if long_labels else 0)
    top = 40 + 14 * (_legend_rows(names, width, 62, 18) - 1)
    f = _Frame(width, height + (bottom - 52), (0, len(cats)), yl, bottom=bottom, top=top)
    parts = f.open("bars", title, css_class)
    parts += f.axes("", ylabel, yticks=yt, ypercent=percent)
    parts += f.legend(names, [color(i) for i in range(len(series))])
    group_w = f.pw / len(cats)
    inner = group_w * 0.8
    bw = inner / len(series)
    base = f.sy(max(yl[0], 0.0))
    parts.append('<g class="bars">')
    for ci, cat in enumerate(cats):
        gx = f.l + ci * group_w + (group_w - inner) / 2
        for si, s in enumerate(series):
            v = s["values"][ci] if ci < len(s["values"]) else None
            x = gx + si * bw
            if not _finite(v):
                parts.append(f'<text x="{x + bw / 2:.1f}" y="{base - 3:.1f}" text-anchor="middle" font-size="8" fill="#999">–</text>')
                continue
            y = f.sy(f.clip_y(v))
            top_y, h = (y, base - y) if y <= base else (base, y - base)
            e = (s.get("errs") or [None] * len(cats))[ci] if ci < len(s.get("errs") or []) else None
            n = (s.get("ns") or [None] * len(cats))[ci] if ci < len(s.get("ns") or []) else None
            shown = f"{100 * v:.1f}%" if percent else f"{v:.4g}"
            tip = f"{s['name']} / {cat}: {shown}"
            if e:
                tip += f" [{100 * e[0]:.1f}, {100 * e[1]:.1f}]" if percent else f" [{e[0]:.4g}, {e[1]:.4g}]"
            if n is not None:
                tip += f" n={n}"
            parts.append(f'<rect class="bar" data-series="{esc(s["name"])}" data-category="{esc(cat)}" data-value="{v:.6g}" '
                         f'x="{x + 0.5:.1f}" y="{top_y:.1f}" width="{max(bw - 1, 1):.1f}" height="{max(h, 0.5):.1f}" '
                         f'fill="{color(si)}"><title>{esc(tip)}</title></rect>')
            if e and all(_finite(t) for t in e):
                cx = x + bw / 2
                a, b = f.sy(f.clip_y(e[0])), f.sy(f.clip_y(e[1]))
                parts.append(f'<line class="errbar" x1="{cx:.1f}" y1="{a:.1f}" x2="{cx:.1f}" y2="{b:.1f}" stroke="#333" stroke-width="1"/>')
                w2 = min(3.0, bw / 3)
                parts += [f'<line x1="{cx - w2:.1f}" y1="{t:.1f}" x2="{cx + w2:.1f}" y2="{t:.1f}" stroke="#333" stroke-width="1"/>' for t in (a, b)]
        lx = f.l + (ci + 0.5) * group_w
        ly = f.t + f.ph + 14
        label = esc(_shorten(cat, 26))
        if long_labels:
            parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" transform="rotate(-35 {lx:.1f} {ly:.1f})" text-anchor="end" font-size="10.5" fill="#444">{label}</text>')
        else:
            parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle" font-size="10.5" fill="#444">{label}</text>')
    parts.append("</g></svg>")
    return "\n".join(parts)


# --- lines --------------------------------------------------------------------------------------------------------
def line_chart(
    series: Sequence[dict],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    xlim: tuple[float, float] | None = None,
    percent: bool = False,
    width: int = 380,
    height: int = 250,
    css_class: str = "",
    reference: Sequence[tuple[float, float]] | None = None,
) -> str:
    """One polyline per series (``name``, ``x``, ``y``; non-finite values are skipped). ``reference``: a dashed grey
    guide line through the given points (for example the diagonal of a calibration plot)."""
    clean = []
    for s in series:
        pts = [(x, y) for x, y in zip(s["x"], s["y"]) if _finite(x) and _finite(y)]
        if pts:
            clean.append((str(s["name"]), pts))
    if not clean:
        return empty_chart(title, "no logged values", width=width, kind="lines")
    xs = [x for _, pts in clean for x, _ in pts]
    ys = [y for _, pts in clean for _, y in pts] + [y for _, y in (reference or [])]
    xl = xlim or ((min(xs), max(xs)) if min(xs) != max(xs) else (min(xs) - 1, max(xs) + 1))
    yl = ylim or _extent(ys, 0.06)
    yt = nice_ticks(*yl, n=4)
    xt = nice_ticks(*xl, n=4, integer=all(float(x).is_integer() for x in xs) and not xlim)
    if not ylim:
        yl = (yt[0], yt[-1])
    names = [n for n, _ in clean]
    show_legend = len(clean) > 1
    top = 40 + (14 * _legend_rows(names, width, 52, 12) if show_legend else 0) - (0 if show_legend else 6)
    f = _Frame(width, height, xl, yl, left=52, right=12, top=top, bottom=44)
    parts = f.open("lines", title, css_class)
    parts += f.axes(xlabel, ylabel, xticks=xt, yticks=yt, ypercent=percent)
    if show_legend:
        parts += f.legend(names, [color(i) for i in range(len(clean))], kind="line")
    if reference and len(reference) > 1:
        pts = " ".join(f"{f.sx(f.clip_x(x)):.1f},{f.sy(f.clip_y(y)):.1f}" for x, y in reference)
        parts.append(f'<polyline class="reference" points="{pts}" fill="none" stroke="#aaa" stroke-dasharray="4 3"/>')
    for i, (name, pts) in enumerate(clean):
        c = color(i)
        path = " ".join(f"{f.sx(f.clip_x(x)):.1f},{f.sy(f.clip_y(y)):.1f}" for x, y in pts)
        parts.append(f'<polyline class="line" data-series="{esc(name)}" data-points="{len(pts)}" points="{path}" fill="none" '
                     f'stroke="{c}" stroke-width="2" stroke-linejoin="round"><title>{esc(name)}</title></polyline>')
        if len(pts) <= 40:
            for x, y in pts:
                parts.append(f'<circle cx="{f.sx(x):.1f}" cy="{f.sy(f.clip_y(y)):.1f}" r="2.5" fill="{c}">'
                             f"<title>{esc(name)}: {x:.4g} → {y:.4g}</title></circle>")
    parts.append("</svg>")
    return "\n".join(parts)


# --- histogram ----------------------------------------------------------------------------------------------------
def bin_counts(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Counts of ``values`` in the bins between consecutive ``edges``; the top edge falls in the last bin."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        if not _finite(v) or v < edges[0] or v > edges[-1]:
            continue
        k = len(edges) - 2
        for i in range(len(edges) - 1):
            if v < edges[i + 1]:
                k = i
                break
        counts[k] += 1
    return counts


def histogram(
    counts: Sequence[int],
    edges: Sequence[float],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "count",
    width: int = 420,
    height: int = 250,
    css_class: str = "",
    bar_color: str = PALETTE[0],
) -> str:
    """Bars of precomputed ``counts`` between ``edges`` (len(edges) == len(counts) + 1)."""
    if len(edges) != len(counts) + 1 or not counts:
        return empty_chart(title, "no values", width=width, kind="histogram")
    top_count = max(counts) if max(counts) > 0 else 1
    yt = nice_ticks(0, top_count, n=4)
    yt = [t for t in yt if float(t).is_integer()] or [0, top_count]
    f = _Frame(width, height, (edges[0], edges[-1]), (0, max(yt[-1], top_count)), left=48, right=12, top=34, bottom=44)
    parts = f.open("histogram", title, css_class)
    parts += f.axes(xlabel, ylabel, xticks=list(edges)[:: max(1, len(edges) // 6)] + ([edges[-1]] if (len(edges) - 1) % max(1, len(edges) // 6) else []),
                    yticks=yt, xgrid=False)
    for i, c in enumerate(counts):
        x0, x1 = f.sx(edges[i]), f.sx(edges[i + 1])
        y = f.sy(c)
        parts.append(f'<rect class="hist-bar" data-lo="{edges[i]:.6g}" data-hi="{edges[i + 1]:.6g}" data-count="{c}" '
                     f'x="{x0 + 1:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 2, 1):.1f}" height="{f.sy(0) - y:.1f}" fill="{bar_color}">'
                     f"<title>[{edges[i]:.3g}, {edges[i + 1]:.3g}): {c}</title></rect>")
    parts.append("</svg>")
    return "\n".join(parts)
