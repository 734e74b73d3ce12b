"""``cai report``: one self-contained HTML page (inline SVG charts, no network) plus a Markdown summary of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import handle_errors, out


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def report(
        run_dir: str = typer.Argument(..., help="Run folder, e.g. runs/demo (holding revise/, label/, eval/ ...)"),
        out_dir: Optional[str] = typer.Option(None, "--out", help="Output folder (default: RUN_DIR/report)"),
        max_traces: int = typer.Option(300, "--max-traces", min=0, help="Critique-revision traces to include (0 = all)"),
    ) -> None:
        """Build RUN_DIR/report/report.html (opens offline) and summary.md from whatever stages the run has."""
        from cai.report.build import build_report

        res = build_report(Path(run_dir), out_dir, max_traces=max_traces)
        ran = [s for s, st in res["stages"].items() if st != "not run"]
        out.print(f"[bold green]report written[/]: {res['html']}", highlight=False, soft_wrap=True)
        out.print(f"  summary: {res['summary']}", highlight=False, soft_wrap=True)
        out.print(f"  stages found: {', '.join(ran) if ran else 'none'}"
                  + (f"; {res['warnings']} warning(s), listed at the top of the report" if res["warnings"] else ""),
                  highlight=False, soft_wrap=True)
