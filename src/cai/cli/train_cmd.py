"""``cai sft``, ``cai reward``, ``cai dpo`` (training stages) and ``cai score`` (reward-model scoring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from cai.cli.common import handle_errors, out
from cai.config import load_stage_config

# Options every training command shares (names match the config fields).
_CONFIG = typer.Option(None, "--config", "-c", help="YAML config (a section named after the command, or flat keys)")
_RUNS_DIR = typer.Option("runs", "--runs-dir", help="Folder holding runs")
_OVERWRITE = typer.Option(False, "--overwrite", help="Discard this stage's folder in the run and train again")
_HELP_DATA_PREF = "'label' (this run's label/preference.jsonl), 'revise' (revise/preference.jsonl) or a file"


def _common(
    max_steps, epochs, lr, batch_size, grad_accum, max_length, seed, lora, save_steps, logging_steps, device, column
) -> dict[str, Any]:
    from cai.data.readers import parse_column_map

    return dict(
        max_steps=max_steps,
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed,
        lora=lora,
        save_steps=save_steps,
        logging_steps=logging_steps,
        device=device,
        column_map=parse_column_map(column) if column else None,
    )


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def sft(
        config: Optional[str] = _CONFIG,
        run: str = typer.Option("default", "--run", help="Run name: output goes to RUNS_DIR/RUN/sft"),
        runs_dir: str = _RUNS_DIR,
        data: Optional[str] = typer.Option(None, help="'revise' (this run's revise/sft.jsonl) or a file with `messages`"),
        helpful: Optional[str] = typer.Option(None, help="'revise' (this run's revise/helpful.jsonl), a file, or 'none'"),
        helpful_ratio: Optional[float] = typer.Option(None, help="Helpful rows per revision row (default 1.0)"),
        model: Optional[str] = typer.Option(None, help="Base model: embedded or a local HF folder"),
        max_steps: Optional[int] = typer.Option(None, help="Stop after N optimizer steps (overrides --epochs)"),
        epochs: Optional[float] = typer.Option(None, help="Passes over the data (default 1)"),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 2e-4 LoRA, 2e-5 full)"),
        batch_size: Optional[int] = typer.Option(None, help="Examples per step (default 4)"),
        grad_accum: Optional[int] = typer.Option(None, help="Gradient accumulation steps (default 1)"),
        max_length: Optional[int] = typer.Option(None, help="Max tokens per example (default 512)"),
        seed: Optional[int] = typer.Option(None, help="Random seed"),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="LoRA adapter (default) or full fine-tune"),
        save_steps: Optional[int] = typer.Option(None, help="Checkpoint every N steps (resume unit, default 50)"),
        logging_steps: Optional[int] = typer.Option(None, help="Log metrics every N steps (default 5)"),
        device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
        column: Optional[list[str]] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN, repeatable"),
        overwrite: bool = _OVERWRITE,
    ) -> None:
        """Supervised fine-tuning on SL-CAI revisions mixed with helpful answers (loss on the answers only)."""
        from cai.stages.sft import SFTStageConfig, run_sft

        overrides = _common(max_steps, epochs, lr, batch_size, grad_accum, max_length, seed, lora, save_steps,
                            logging_steps, device, column)
        overrides.update(data=data, helpful_ratio=helpful_ratio, model=model)
        cfg = load_stage_config(SFTStageConfig, config, overrides, section="sft")
        if helpful is not None:
            cfg = cfg.model_copy(update={"helpful": None if helpful.lower() in ("none", "null", "") else helpful})
        stage_dir = Path(runs_dir) / run / "sft"
        done_before = _complete(stage_dir, overwrite)
        m = run_sft(cfg, str(Path(runs_dir) / run), overwrite=overwrite)
        d = m["data"]
        _print_training("sft", stage_dir, m, done_before)
        out.print(
            f"  data: {d['train_rows']} rows = {d['train_rows_by_source']['revision']} revisions + "
            f"{d['train_rows_by_source']['helpful']} helpful (ratio {d['helpful_ratio_actual']}, asked "
            f"{d['helpful_ratio_config']}); dropped (prompt too long): {d['dropped_prompt_too_long']}"
        )

    @app.command()
    @handle_errors
    def reward(
        config: Optional[str] = _CONFIG,
        run: str = typer.Option("default", "--run", help="Run name: output goes to RUNS_DIR/RUN/reward"),
        runs_dir: str = _RUNS_DIR,
        data: Optional[str] = typer.Option(None, help=_HELP_DATA_PREF),
        label_field: Optional[str] = typer.Option(None, help="Soft label field: auto, none, or a field name"),
        eval_fraction: Optional[float] = typer.Option(None, help="Share of pairs held out for evaluation (default 0.1)"),
        model: Optional[str] = typer.Option(None, help="Base model: embedded or a local HF folder"),
        max_steps: Optional[int] = typer.Option(None, help="Stop after N optimizer steps (overrides --epochs)"),
        epochs: Optional[float] = typer.Option(None, help="Passes over the data (default 1)"),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 2e-5 full, 1e-4 LoRA)"),
        batch_size: Optional[int] = typer.Option(None, help="Pairs per step (default 4)"),
        grad_accum: Optional[int] = typer.Option(None, help="Gradient accumulation steps (default 1)"),
        max_length: Optional[int] = typer.Option(None, help="Max tokens per prompt+answer (default 512)"),
        seed: Optional[int] = typer.Option(None, help="Random seed"),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="LoRA adapter or full fine-tune (default)"),
        save_steps: Optional[int] = typer.Option(None, help="Checkpoint every N steps (resume unit, default 50)"),
        logging_steps: Optional[int] = typer.Option(None, help="Log metrics every N steps (default 5)"),
        device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
        column: Optional[list[str]] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN, repeatable"),
        overwrite: bool = _OVERWRITE,
    ) -> None:
        """Train a Bradley-Terry reward model on (soft) AI preference labels; report held-out accuracy and ECE."""
        from cai.stages.reward import RewardStageConfig, run_reward

        overrides = _common(max_steps, epochs, lr, batch_size, grad_accum, max_length, seed, lora, save_steps,
                            logging_steps, device, column)
        overrides.update(data=data, label_field=label_field, eval_fraction=eval_fraction, model=model)
        cfg = load_stage_config(RewardStageConfig, config, overrides, section="reward")
        stage_dir = Path(runs_dir) / run / "reward"
        done_before = _complete(stage_dir, overwrite)
        m = run_reward(cfg, str(Path(runs_dir) / run), overwrite=overwrite)
        _print_training("reward", stage_dir, m, done_before)
        e = m["eval"]
        if e.get("n"):
            out.print(
                f"  held-out (n={e['n']}): accuracy {e['accuracy']:.3f} (untrained head {e['before_accuracy']}), "
                f"mean margin {e['mean_margin']:.3f}, ECE {e['ece']:.3f} ({m['loss']['labels']}); details: "
                f"{stage_dir / 'eval.json'}"
            )
        else:
            out.print("  held-out: none (eval_fraction 0 or fewer than 2 pairs)")

    @app.command()
    @handle_errors
    def dpo(
        config: Optional[str] = _CONFIG,
        run: str = typer.Option("default", "--run", help="Run name: output goes to RUNS_DIR/RUN/dpo"),
        runs_dir: str = _RUNS_DIR,
        data: Optional[str] = typer.Option(None, help=_HELP_DATA_PREF),
        policy: Optional[str] = typer.Option(None, help="Policy folder (default: this run's sft/model, else embedded)"),
        beta: Optional[float] = typer.Option(None, help="DPO beta (default 0.1)"),
        min_p_chosen: Optional[float] = typer.Option(None, help="Drop pairs whose label confidence is below this"),
        label_field: Optional[str] = typer.Option(None, help="Soft label field: auto, none, or a field name"),
        max_steps: Optional[int] = typer.Option(None, help="Stop after N optimizer steps (overrides --epochs)"),
        epochs: Optional[float] = typer.Option(None, help="Passes over the data (default 1)"),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 5e-5 LoRA, 1e-6 full)"),
        batch_size: Optional[int] = typer.Option(None, help="Pairs per step (default 4)"),
        grad_accum: Optional[int] = typer.Option(None, help="Gradient accumulation steps (default 1)"),
        max_length: Optional[int] = typer.Option(None, help="Max tokens per prompt+answer (default 512)"),
        seed: Optional[int] = typer.Option(None, help="Random seed"),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="LoRA adapter (default) or full fine-tune"),
        save_steps: Optional[int] = typer.Option(None, help="Checkpoint every N steps (resume unit, default 50)"),
        logging_steps: Optional[int] = typer.Option(None, help="Log metrics every N steps (default 5)"),
        device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
        column: Optional[list[str]] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN, repeatable"),
        overwrite: bool = _OVERWRITE,
    ) -> None:
        """Offline DPO on AI-labeled preference pairs (LoRA; the adapter-free policy is the reference)."""
        from cai.stages.dpo import DPOStageConfig, run_dpo

        overrides = _common(max_steps, epochs, lr, batch_size, grad_accum, max_length, seed, lora, save_steps,
                            logging_steps, device, column)
        overrides.update(data=data, policy=policy, beta=beta, min_p_chosen=min_p_chosen, label_field=label_field)
        cfg = load_stage_config(DPOStageConfig, config, overrides, section="dpo")
        stage_dir = Path(runs_dir) / run / "dpo"
        done_before = _complete(stage_dir, overwrite)
        m = run_dpo(cfg, str(Path(runs_dir) / run), overwrite=overwrite)
        _print_training("dpo", stage_dir, m, done_before)
        f = m["dpo"]["final"]
        out.print(
            f"  policy: {m['policy']['label']} ({m['policy']['source']}); pairs {m['data']['train_pairs']}; "
            f"beta {m['dpo']['beta']}; last rewards/margins {_fmt(f.get('rewards/margins'))}, "
            f"rewards/accuracies {_fmt(f.get('rewards/accuracies'))}"
        )

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


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def _complete(stage_dir: Path, overwrite: bool) -> bool:
    return not overwrite and (stage_dir / "manifest.json").exists()


def _print_training(name: str, stage_dir: Path, m: dict, done_before: bool = False) -> None:
    t = m["training"]
    note = " (already complete; nothing to do - pass --overwrite to train again)" if done_before else ""
    out.print(f"[bold green]{name} done[/]{note}: model at {stage_dir / 'model'}")
    out.print(f"  metrics: {stage_dir / 'metrics.jsonl'}; manifest: {stage_dir / 'manifest.json'}")
    resumed = f" (resumed from {t['resumed_from']})" if t.get("resumed_from") else ""
    out.print(
        f"  steps {t['steps']} (epochs {t['epochs']}), final loss {_fmt(t['final_loss'])}, "
        f"{t['seconds_this_session']} s this session ({_fmt(t['seconds_per_step'])} s/step) on {t['device']} "
        f"{t['precision']}{resumed}"
    )
