"""``cai eval``: evaluate models for harmfulness, over-refusal, helpfulness and reward hacking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import StageProgress, handle_errors, out
from cai.config import load_stage_config
from cai.errors import UserInputError


def _parse_models(items: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for it in items:
        if "=" not in it:
            raise UserInputError(
                f"--model '{it}' is not of the form NAME=SPEC.",
                fix="write e.g. --model base=embedded --model sl=runs/demo/sft/model --model big=openai:NAME@URL.",
            )
        name, spec = it.split("=", 1)
        if name.strip() in models:
            raise UserInputError(f"--model names '{name.strip()}' twice.", fix="give each model a distinct name.")
        models[name.strip()] = spec.strip()
    return models


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @handle_errors
    def eval_(
        config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (an `eval:` section or flat keys)"),
        run: str = typer.Option("default", "--run", help="Run name: output goes to RUNS_DIR/RUN/eval"),
        runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder holding runs"),
        model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Model to evaluate as NAME=SPEC, repeatable (replaces the config's models)"),
        limit: Optional[int] = typer.Option(None, help="Use only the first N prompts of each prompt set"),
        judge: Optional[str] = typer.Option(None, help="Refusal judge: 'classifier' (local) or a model (embedded, openai:NAME@URL)"),
        baseline: Optional[str] = typer.Option(None, help="Model name the others are compared with (default: the first)"),
        max_new_tokens: Optional[int] = typer.Option(None, help="Max new tokens per answer (default 128)"),
        helpfulness_judge: Optional[str] = typer.Option(None, help="Model for pairwise comparisons (default embedded)"),
        reward_model: Optional[str] = typer.Option(None, help="Reward model folder to evaluate"),
        preference_pairs: Optional[str] = typer.Option(None, help="Held-out preference pairs for reward-model accuracy"),
        overwrite: bool = typer.Option(False, help="Discard an existing eval stage in this run and start again"),
        measure_judge: bool = typer.Option(False, "--measure-judge", help="Print the local refusal classifier's precision/recall on the shipped labeled set and exit"),
        as_json: bool = typer.Option(False, "--json", help="With --measure-judge: print the full measurement as JSON"),
    ) -> None:
        """Evaluate models: harmful compliance, over-refusal, pairwise win rate and Elo, reward accuracy, length, repetition."""
        if measure_judge:
            _print_measurement(as_json)
            return
        from cai.stages.evaluate import EvalConfig, run_evaluate

        overrides = dict(
            models=_parse_models(model) if model else None,
            limit=limit,
            judge=judge,
            baseline=baseline,
            max_new_tokens=max_new_tokens,
            helpfulness_judge=helpfulness_judge,
            reward_model=reward_model,
            preference_pairs=preference_pairs,
        )
        cfg = load_stage_config(EvalConfig, config, overrides, section="eval")
        run_dir = Path(runs_dir) / run
        with StageProgress("eval") as bar:
            manifest = run_evaluate(cfg, str(run_dir), overwrite=overwrite, on_progress=bar.update, on_ready=bar.ready)
        stage_dir = run_dir / "eval"
        out.print(f"[bold green]eval done[/]: {stage_dir}")
        out.print(f"  {manifest['counts']['prompts']} prompts x {manifest['counts']['models']} model(s); "
                  f"{manifest['timing']['seconds_this_session']} s this session")
        out.print((stage_dir / "summary.md").read_text(encoding="utf-8"), markup=False, highlight=False)


def _print_measurement(as_json: bool) -> None:
    from cai.evaluate.refusal import measure_refusal_classifier

    m = measure_refusal_classifier()
    if as_json:
        out.print_json(json.dumps(m))
        return
    out.print(f"refusal classifier {m['classifier']} on {m['file']} (positive class: refused)")
    for split, s in m["splits"].items():
        out.print(f"  {split:8s} n={s['n']:3d}  precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
                  f"F1 {s['f1']:.3f}  accuracy {s['accuracy']:.3f}  (tp {s['tp']}, fp {s['fp']}, fn {s['fn']}, tn {s['tn']})")
    out.print("  per-kind accuracy (dev | heldout):")
    kinds = sorted({k for s in m["splits"].values() for k in s["per_kind"]})
    for k in kinds:
        cells = []
        for split in ("dev", "heldout"):
            pk = m["splits"][split]["per_kind"].get(k)
            cells.append(f"{pk['correct']}/{pk['n']} = {pk['accuracy']:.2f}" if pk else "-")
        out.print(f"    {k:26s} {cells[0]:>14s} | {cells[1]}")
