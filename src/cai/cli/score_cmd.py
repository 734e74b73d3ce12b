"""``cai score``: score (prompt, answer) rows with a trained reward model (the training stages' commands are
generated from their configs, see :mod:`cai.cli.stage_cmd`)."""

from __future__ import annotations

from typing import Optional

import typer

from cai.cli.common import handle_errors, out


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def score(
        model: str = typer.Option(..., "--model", help="Reward model folder (runs/RUN/reward/model or runs/RUN/reward)"),
        input: str = typer.Option(..., "--input", help="File with prompt + answer (or response/completion), or messages"),
        output: str = typer.Option(
            ..., "--output", help="JSONL written with every input field (and an id if missing) plus `reward`"
        ),
        batch_size: int = typer.Option(8, help="Sequences per forward pass"),
        device: str = typer.Option("auto", help="auto, cpu or cuda"),
        column: Optional[list[str]] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN, repeatable"),
    ) -> None:
        """Score (prompt, answer) rows with a trained reward model."""
        from cai.data.readers import parse_column_map
        from cai.stages.reward import score_file

        s = score_file(model, input, output, batch_size=batch_size, device=device,
                       column_map=parse_column_map(column) if column else None)
        out.print(f"[bold green]score done[/]: {s['rows']} rows -> {s['output']}")
        out.print(f"  reward mean {s['mean']}, min {s['min']}, max {s['max']}; model {s['model']}; {s['seconds']} s")
