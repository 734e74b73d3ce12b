"""Self-contained HTML report and Markdown summary of a run (``cai report RUN_DIR``)."""

from cai.report.build import build_report, load_run, render_html, render_summary, word_diff

__all__ = ["build_report", "load_run", "render_html", "render_summary", "word_diff"]
