"""``cai revise``: SL-CAI critique-revision on red-team prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import StageProgress, handle_errors, out
from cai.config import load_stage_config


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def revise(
        config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (a `revise:` section or flat keys)"),
        run: str = typer.Option("default", "--run", help="Run name: output goes to RUNS_DIR/RUN/revise"),
        runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder holding runs"),
        prompts: Optional[str] = typer.Option(None, help="'redteam' (shipped) or a .jsonl/.csv/.parquet/HF-dataset path"),
        column: Optional[list[str]] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN, repeatable"),
        limit: Optional[int] = typer.Option(None, help="Use only the first N red-team prompts"),
        helpful_limit: Optional[int] = typer.Option(None, help="Helpful prompts to answer for SFT mixing (0 = none)"),
        rounds: Optional[int] = typer.Option(None, help="Critique-revision rounds (default 4)"),
        seed: Optional[int] = typer.Option(None, help="Random seed"),
        constitution: Optional[str] = typer.Option(None, help="Constitution YAML (default: shipped)"),
        model: Optional[str] = typer.Option(None, help="Model for every role: embedded, a folder, openai:NAME@URL, fake"),
        policy: Optional[str] = typer.Option(None, help="Policy model (overrides --model)"),
        critic: Optional[str] = typer.Option(None, help="Critic model (overrides --model)"),
        reviser: Optional[str] = typer.Option(None, help="Reviser model (overrides --model)"),
        skip_if_no_problem: Optional[bool] = typer.Option(None, help="Skip revision when the critique finds no problem"),
        shard_size: Optional[int] = typer.Option(None, help="Prompts per shard (batching and resume unit)"),
        overwrite: bool = typer.Option(False, help="Discard an existing revise stage in this run and start again"),
    ) -> None:
        """Generate an SL-CAI dataset: answer, then critique and revise against sampled principles."""
        from cai.data.readers import parse_column_map
        from cai.stages.revise import ReviseConfig, run_revise

        overrides = dict(
            prompts=prompts,
            column_map=parse_column_map(column) if column else None,
            limit=limit,
            helpful_limit=helpful_limit,
            rounds=rounds,
            seed=seed,
            constitution=constitution,
            skip_if_no_problem=skip_if_no_problem,
            shard_size=shard_size,
            policy=policy or model,
            critic=critic or model,
            reviser=reviser or model,
        )
        cfg = load_stage_config(ReviseConfig, config, overrides, section="revise")
        run_dir = Path(runs_dir) / run
        with StageProgress("revise") as bar:
            manifest = run_revise(cfg, str(run_dir), overwrite=overwrite, on_progress=bar.update, on_ready=bar.ready)
        print_summary(run_dir / "revise", manifest)


def print_summary(stage_dir: Path, m: dict) -> None:
    c = m["counts"]
    t = m["timing"]
    out.print(f"[bold green]revise done[/]: {stage_dir}")
    out.print(f"  dataset : {stage_dir / 'data.jsonl'} (full traces), sft.jsonl, preference.jsonl, helpful.jsonl")
    out.print(f"  manifest: {stage_dir / 'manifest.json'}")
    out.print(
        f"  rows: {c['rows']} ({c['redteam_rows']} red-team, {c['helpful_rows']} helpful); "
        f"revisions accepted {c['revisions_accepted']}/{c['revisions_generated']}; "
        f"final differs from initial answer: {c['changed_from_initial']}/{c['redteam_rows']}"
    )
    if c["flags"]:
        out.print("  flagged revisions: " + ", ".join(f"{k} {v}" for k, v in c["flags"].items()))
    tps = t.get("generated_tokens_per_s")
    out.print(
        f"  generated {m['tokens']['generated_this_session']} tokens in {t['seconds_this_session']} s"
        + (f" = {tps} tokens/s" if tps else "")
        + (f" (resumed: {t['resumed_rows']} rows were already done)" if t.get("resumed_rows") else "")
    )
    out.print(f"  constitution {m['constitution']['name']} v{m['constitution']['version']} hash {m['constitution']['hash']}; "
              f"models: " + ", ".join(f"{r}={d['model']}" for r, d in m["models"].items()))
