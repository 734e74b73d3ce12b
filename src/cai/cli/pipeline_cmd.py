"""``cai pipeline CONFIG``: the whole Constitutional AI pipeline from one YAML file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import console, handle_errors, out
from cai.cli.summaries import rate, typed


def register(app: typer.Typer) -> None:
    from cai.registry import PIPELINE_STAGES

    @app.command(help=f"Run {' -> '.join(PIPELINE_STAGES)} from one YAML file (a section per stage, with the "
                      "settings of `cai <stage>`); a rerun resumes where it stopped.")
    @handle_errors
    def pipeline(
        config: str = typer.Argument(..., help="Pipeline YAML (see configs/demo-pipeline.yaml)"),
        run: Optional[str] = typer.Option(None, "--run", help="Override the run name in the config"),
        runs_dir: Optional[str] = typer.Option(None, "--runs-dir", help="Override the runs folder"),
        stages: Optional[str] = typer.Option(None, "--stages", help="Comma-separated subset of stages to run"),
        set_: Optional[list[str]] = typer.Option(
            None, "--set", metavar="KEY=VALUE",
            help="Any setting as KEY=VALUE, a stage's with its section (e.g. revise.rounds=2, "
                 "label.labeler=openai:NAME@URL, base_model=fake); the value is read as YAML; repeatable"),
    ) -> None:
        from cai import registry
        from cai.pipeline import PipelineConfig, load_pipeline_config, run_pipeline
        from cai.progress import ProgressLine, quiet_library_warnings

        cfg = load_pipeline_config(config, set_)
        if run:
            cfg.run = run
        if runs_dir:
            cfg.runs_dir = runs_dir
        if stages:
            cfg = PipelineConfig.model_validate({**cfg.model_dump(), "stages": [s.strip() for s in stages.split(",")]})

        def on_stage(name: str, what: str) -> None:
            console.print(f"[bold cyan]== {name}[/]: {what}")

        run_dir = Path(cfg.runs_dir) / cfg.run

        def on_done(name: str, manifest: dict) -> None:
            rec = registry.get(name)
            summary = rec.summary_function()
            if rec.summary_in_pipeline and summary is not None:
                summary(run_dir / name, typed(name, manifest))

        quiet_library_warnings()
        manifests = run_pipeline(cfg, on_stage=on_stage, on_done=on_done, progress_factory=ProgressLine)
        print_pipeline_summary(Path(cfg.runs_dir) / cfg.run, manifests)


def print_pipeline_summary(run_dir: Path, manifests: dict) -> None:
    out.print(f"\n[bold green]pipeline done[/]: {run_dir}")
    timing = {}
    pj = run_dir / "pipeline.json"
    if pj.exists():
        timing = json.loads(pj.read_text()).get("seconds", {})
    for stage in manifests:
        where = run_dir / stage
        model = where / "model"
        extra = f"  model: {model}" if model.exists() else ""
        secs = f" ({timing[stage]} s)" if stage in timing else ""
        out.print(f"  {stage:7s} {where}{secs}{extra}")
    if "label" in manifests:
        lab = typed("label", manifests["label"])
        s = lab.labels
        if s is not None:
            out.print(
                f"  labeler {(lab.model or {}).get('model', '?')}: position consistency "
                f"{rate(s, 'position_consistency')}, mean confidence {s.mean_confidence}, "
                f"kept after confidence filter {s.kept_after_filter}/{s.n} "
                f"(min_confidence {s.min_confidence}), abstentions {s.abstentions}"
            )
        for w in lab.warnings:
            out.print(f"  [yellow]warning[/]: {w}")
    summary = run_dir / "eval" / "summary.md"
    if summary.exists():
        out.print("\n" + summary.read_text(encoding="utf-8"), markup=False, highlight=False)
