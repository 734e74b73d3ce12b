"""``cai report RUN_DIR``: one self-contained HTML page and a Markdown summary of everything a run produced.

The report reads whatever stage folders exist (the stages of :mod:`cai.registry`); a stage that is absent is shown as
"not run", one without ``manifest.json`` as "unfinished", and each manifest is read through its typed model
(:func:`cai.manifests.load_manifest`; an invalid one is listed among the warnings). Sections:

* header: run, constitution (name, version, hash), the models of every stage, dates, warnings;
* evaluation: every model's numbers with n, 95% interval and the judge that produced them; the
  harmlessness-vs-helpfulness scatter (the Pareto picture of the Constitutional AI paper) from the refusal rates and,
  with pairwise comparisons, from the Elo ratings; harmful compliance per category and model;
* judges: what each judge decides and its measured precision / recall / F1 (the local refusal classifier is
  re-measured on the shipped labeled set);
* training curves of ``sft``, ``reward``, ``dpo`` and ``rl`` from their ``metrics.jsonl``;
* the reward model's held-out accuracy and calibration (ECE);
* AI-label statistics (position consistency, confidence histogram, kept after filtering) with their warnings;
* time, tokens and money per stage and role (calls, prompt / completion / cached-prefix tokens, seconds, tokens/s,
  cost where a role has a price);
* a browsable table of the critique-revision traces, each revision shown as a word-level diff of what it changed.

Modules: :mod:`~cai.report.read` (the run's files and manifests, warnings), :mod:`~cai.report.figures` (figures as
text and HTML), :mod:`~cai.report.judges` (the judge table), :mod:`~cai.report.html_eval` and
:mod:`~cai.report.html_stages` (the HTML sections), :mod:`~cai.report.page` (CSS, JavaScript, the page),
:mod:`~cai.report.markdown` (``summary.md``), :mod:`~cai.report.diff` (word diffs), :mod:`~cai.report.svg` (charts).

Everything model-written is untrusted text and is HTML-escaped. The page has no external resources: inline CSS,
inline SVG charts (:mod:`cai.report.svg`) and a few lines of inline JavaScript for filtering the trace table.
Both files are written atomically to ``RUN_DIR/report/`` (or ``out_dir``).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from cai.data.io import atomic_write_text
from cai.report.diff import word_diff
from cai.report.markdown import render_summary
from cai.report.page import render_html
from cai.report.read import DEFAULT_MAX_TRACES, STAGES, load_run

__all__ = ["build_report", "load_run", "render_html", "render_summary", "word_diff"]


def _readable(*paths: Path) -> None:
    """Give the report files the usual permissions (the atomic temporary file is created owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    for p in paths:
        try:
            os.chmod(p, 0o666 & ~mask)
        except OSError:
            pass


# --- entry point ------------------------------------------------------------------------------------------------------
def build_report(run_dir: str | Path, out_dir: str | Path | None = None, *, max_traces: int = DEFAULT_MAX_TRACES) -> dict:
    """Write ``report.html`` and ``summary.md`` for ``run_dir`` (atomically). Returns their paths and stage statuses."""
    data = load_run(run_dir, max_traces=max_traces)
    out = Path(out_dir) if out_dir else Path(run_dir) / "report"
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html_path, md_path = out / "report.html", out / "summary.md"
    atomic_write_text(html_path, render_html(data, generated))
    atomic_write_text(md_path, render_summary(data, generated))
    _readable(html_path, md_path)
    return {"html": str(html_path), "summary": str(md_path),
            "stages": {s: data["stages"][s]["status"] for s in STAGES}, "warnings": len(data["warnings"])}

