"""``cai rl`` (policy optimization against the reward model, KL-leashed) and ``cai bestofn`` (best-of-N baseline)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import typer

from cai.cli.common import StageProgress, handle_errors, out
from cai.config import load_stage_config

_CONFIG = typer.Option(None, "--config", "-c", help="YAML config (a section named after the command, or flat keys)")
_RUNS_DIR = typer.Option("runs", "--runs-dir", help="Folder holding runs")


def _fmt(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def rl(
        config: Optional[str] = _CONFIG,
        run: str = typer.Option("default", "--run", help="Run name: output goes to RUNS_DIR/RUN/rl"),
        runs_dir: str = _RUNS_DIR,
        algorithm: Optional[str] = typer.Option(None, help="grpo (default), rloo or ppo"),
        policy: Optional[str] = typer.Option(None, help="Policy folder (default: this run's sft/model, else embedded)"),
        reward_model: Optional[str] = typer.Option(None, help="Reward model folder (default: this run's reward/model)"),
        prompts: Optional[str] = typer.Option(None, help="'redteam' (shipped) or a prompt file"),
        limit: Optional[int] = typer.Option(None, help="Use only the first N red-team prompts"),
        helpful: Optional[str] = typer.Option(None, help="'helpful' (shipped, default), a prompt file, or 'none'"),
        helpful_limit: Optional[int] = typer.Option(None, help="Use only the first N helpful prompts (0 = none)"),
        beta: Optional[float] = typer.Option(None, help="KL coefficient (default 0.05; 0 = no leash)"),
        num_generations: Optional[int] = typer.Option(None, help="Answers per prompt per step (default 4)"),
        max_completion_length: Optional[int] = typer.Option(None, help="Max new tokens per answer (default 128)"),
        temperature: Optional[float] = typer.Option(None, help="Rollout sampling temperature (default 1.0)"),
        max_steps: Optional[int] = typer.Option(None, help="Stop after N optimizer steps (overrides --epochs)"),
        epochs: Optional[float] = typer.Option(None, help="Passes over the prompts (default 1)"),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 2e-5 LoRA, 1e-6 full)"),
        batch_size: Optional[int] = typer.Option(None, help="Prompts per step (default 2)"),
        seed: Optional[int] = typer.Option(None, help="Random seed"),
        lora: Optional[bool] = typer.Option(None, "--lora/--no-lora", help="LoRA adapter (default) or full fine-tune"),
        save_steps: Optional[int] = typer.Option(None, help="Checkpoint every N steps (resume unit, default 10)"),
        logging_steps: Optional[int] = typer.Option(None, help="Log metrics every N steps (default 1)"),
        device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
        column: Optional[list[str]] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN, repeatable"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Discard this run's rl stage and train again"),
    ) -> None:
        """RL-CAI: optimize the policy against the reward model with a KL leash (GRPO, RLOO or PPO)."""
        from cai.data.readers import parse_column_map
        from cai.stages.rl import RLStageConfig, run_rl

        overrides = dict(
            algorithm=algorithm, policy=policy, reward_model=reward_model, prompts=prompts, limit=limit,
            helpful_limit=helpful_limit, beta=beta, num_generations=num_generations,
            max_completion_length=max_completion_length, temperature=temperature, max_steps=max_steps, epochs=epochs,
            learning_rate=lr, batch_size=batch_size, seed=seed, lora=lora, save_steps=save_steps,
            logging_steps=logging_steps, device=device, column_map=parse_column_map(column) if column else None,
        )
        cfg = load_stage_config(RLStageConfig, config, overrides, section="rl")
        if helpful is not None:
            cfg = cfg.model_copy(update={"helpful": None if helpful.lower() in ("none", "null", "") else helpful})
        stage_dir = Path(runs_dir) / run / "rl"
        done_before = not overwrite and (stage_dir / "manifest.json").exists()
        m = run_rl(cfg, str(Path(runs_dir) / run), overwrite=overwrite)
        print_rl_summary(stage_dir, m, done_before)

    @app.command()
    @handle_errors
    def bestofn(
        config: Optional[str] = _CONFIG,
        run: str = typer.Option("default", "--run", help="Run name: output goes to RUNS_DIR/RUN/bestofn"),
        runs_dir: str = _RUNS_DIR,
        n: Optional[int] = typer.Option(None, "--n", help="Answers sampled per prompt (default 4)"),
        policy: Optional[str] = typer.Option(None, help="Sampling model: embedded, a folder, openai:NAME@URL (default: sft/model)"),
        reward_model: Optional[str] = typer.Option(None, help="Reward model folder (default: this run's reward/model)"),
        prompts: Optional[str] = typer.Option(None, help="'redteam', 'helpful' (shipped) or a prompt file"),
        split: Optional[str] = typer.Option(None, "--split", help="Prompt split: eval (default), train or all"),
        limit: Optional[int] = typer.Option(None, help="Use only the first N prompts"),
        max_new_tokens: Optional[int] = typer.Option(None, help="Max new tokens per answer (default 160)"),
        temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default 0.8)"),
        seed: Optional[int] = typer.Option(None, help="Random seed"),
        shard_size: Optional[int] = typer.Option(None, help="Prompts per shard (batching and resume unit)"),
        device: Optional[str] = typer.Option(None, help="Reward model device: auto, cpu or cuda"),
        column: Optional[list[str]] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN, repeatable"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Discard this run's bestofn stage and start again"),
    ) -> None:
        """Best-of-N: sample N answers per prompt, keep the one the reward model scores highest (no training)."""
        from cai.data.readers import parse_column_map
        from cai.stages.bestofn import BestOfNConfig, run_bestofn

        overrides = dict(
            n=n, policy=policy, reward_model=reward_model, prompts=prompts, prompt_split=split, limit=limit,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, shard_size=shard_size, device=device,
            column_map=parse_column_map(column) if column else None,
        )
        cfg = load_stage_config(BestOfNConfig, config, overrides, section="bestofn")
        stage_dir = Path(runs_dir) / run / "bestofn"
        with StageProgress("bestofn") as bar:
            state = SimpleNamespace(total=0, done=0, tokens=0)

            def on_progress(done: int, total: int, tokens: int) -> None:
                state.total, state.done, state.tokens = total, done, tokens
                bar.update(state)

            m = run_bestofn(cfg, str(Path(runs_dir) / run), overwrite=overwrite, on_progress=on_progress)
        print_bestofn_summary(stage_dir, m)


def print_rl_summary(stage_dir: Path, m: dict, done_before: bool = False) -> None:
    t = m["training"]
    r = m["rl"]
    last = {k: v.get("last") for k, v in r["metrics"].items()}
    first = {k: v.get("first") for k, v in r["metrics"].items()}
    note = " (already complete; nothing to do - pass --overwrite to train again)" if done_before else ""
    out.print(f"[bold green]rl ({m['algorithm']}) done[/]{note}: model at {stage_dir / 'model'}")
    out.print(f"  metrics: {stage_dir / 'metrics.jsonl'}; samples: {stage_dir / 'samples.jsonl'}; "
              f"manifest: {stage_dir / 'manifest.json'}")
    resumed = f" (resumed from {t['resumed_from']})" if t.get("resumed_from") else ""
    out.print(
        f"  steps {t['steps']}, {t['seconds_this_session']} s this session ({_fmt(t['seconds_per_step'], 2)} s/step) "
        f"on {t['device']} {t['precision']}{resumed}; policy {m['policy']['label']} ({m['policy']['source']}); "
        f"reward model {m['reward_model']}"
    )
    out.print(
        f"  last step: reward {_fmt(last.get('reward'))} (first {_fmt(first.get('reward'))}), "
        f"KL {_fmt(last.get('kl'))} (beta {r['beta']}), length {_fmt(last.get('completions/mean_length'), 1)} tokens / "
        f"{_fmt(last.get('answer_words'), 1)} words, refusal rate {_fmt(last.get('refusal_rate'), 3)} "
        f"(first {_fmt(first.get('refusal_rate'), 3)}), repeat-3gram share {_fmt(last.get('repeat_3gram_share'), 3)} "
        f"(first {_fmt(first.get('repeat_3gram_share'), 3)})"
    )
    out.print(f"  KL is the {r['kl_definition']}")


def print_bestofn_summary(stage_dir: Path, m: dict) -> None:
    s = m["summary"]
    c, a = s["chosen"], s["all_candidates"]
    out.print(f"[bold green]bestofn done[/]: {stage_dir / 'answers.jsonl'} (every candidate with its reward, and the chosen one)")
    out.print(f"  manifest: {stage_dir / 'manifest.json'}; policy {m['policy']['model']} ({m['policy']['source']}); "
              f"reward model {m['reward_model']}")
    out.print(
        f"  {s['prompts']} prompts x n={m['n']}: mean best reward {_fmt(s['mean_best_reward'])} vs random candidate "
        f"{_fmt(s['mean_random_candidate_reward'])} (gain {_fmt(s['best_minus_random'])}; worst {_fmt(s['mean_worst_reward'])})"
    )
    out.print(
        f"  chosen vs all candidates: refusal rate {_fmt(c['refusal_rate'], 3)} vs {_fmt(a['refusal_rate'], 3)}, "
        f"words {_fmt(c['answer_words'], 1)} vs {_fmt(a['answer_words'], 1)}, "
        f"repeat-3gram share {_fmt(c['repeat_3gram_share'], 3)} vs {_fmt(a['repeat_3gram_share'], 3)}"
    )
    t = m["timing"]
    out.print(f"  {t['answers_this_session']} answers sampled in {t['seconds_this_session']} s"
              + (f" (resumed: {t['resumed_prompts']} prompts were already done)" if t.get("resumed_prompts") else ""))
