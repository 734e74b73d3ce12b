"""``cai pairs`` and ``cai label``: the RL-CAI preference data (sampled answer pairs, then AI labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import StageProgress, handle_errors, out
from cai.config import load_stage_config
from cai.errors import ConfigError


def _parse_clamp(text: str | None):
    if text is None:
        return None
    if text.strip().lower() in ("none", "off", "null"):
        return "none"
    parts = [x for x in text.replace(" ", "").split(",") if x]
    try:
        lo, hi = (float(x) for x in parts)
    except ValueError:
        raise ConfigError(f"--clamp '{text}' is not of the form LO,HI.", fix="write e.g. --clamp 0.4,0.6, or --clamp none.") from None
    return [lo, hi]


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def pairs(
        config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (a `pairs:` section or flat keys)"),
        run: str = typer.Option("default", "--run", help="Run name: output goes to RUNS_DIR/RUN/pairs"),
        runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder holding runs"),
        prompts: Optional[str] = typer.Option(None, help="'redteam' (shipped) or a .jsonl/.csv/.parquet/HF-dataset path"),
        column: Optional[list[str]] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN, repeatable"),
        limit: Optional[int] = typer.Option(None, help="Use only the first N prompts"),
        helpful_limit: Optional[int] = typer.Option(None, help="Also sample answers to the first N shipped helpful prompts"),
        k: Optional[int] = typer.Option(None, "--k", help="Answers sampled per prompt (default 2)"),
        temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default 1.0)"),
        top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold (default 1.0)"),
        max_tokens: Optional[int] = typer.Option(None, help="Max new tokens per answer (default 160)"),
        seed: Optional[int] = typer.Option(None, help="Random seed"),
        policy: Optional[str] = typer.Option(
            None, "--policy", "--model", help="Policy model: embedded, a folder, openai:NAME@URL, fake (default: the run's sft/model if present, else embedded)"
        ),
        shard_size: Optional[int] = typer.Option(None, help="Prompts per shard (batching and resume unit)"),
        overwrite: bool = typer.Option(False, help="Discard an existing pairs stage in this run and start again"),
    ) -> None:
        """Sample K answers per prompt from the policy, for the AI labeler to compare."""
        from cai.backends.spec import ModelSpec
        from cai.data.readers import parse_column_map
        from cai.stages.pairs import PairsConfig, run_pairs

        overrides = dict(
            prompts=prompts,
            column_map=parse_column_map(column) if column else None,
            limit=limit,
            helpful="helpful" if helpful_limit else None,
            helpful_limit=helpful_limit,
            k=k,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            policy=policy,
            shard_size=shard_size,
        )
        cfg = load_stage_config(PairsConfig, config, overrides, section="pairs")
        run_dir = Path(runs_dir) / run
        from cai.runs import sft_model_of

        sft_model = sft_model_of(run_dir)
        if "policy" not in cfg.model_fields_set and sft_model is not None:
            cfg = cfg.model_copy(update={"policy": ModelSpec(model=str(sft_model))})
            out.print(f"  policy: {sft_model} (the SL-CAI model of this run)")
        with StageProgress("pairs") as bar:
            manifest = run_pairs(cfg, str(run_dir), overwrite=overwrite, on_progress=bar.update, on_ready=bar.ready)
        print_pairs_summary(run_dir / "pairs", manifest)

    @app.command()
    @handle_errors
    def label(
        config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (a `label:` section or flat keys)"),
        run: str = typer.Option("default", "--run", help="Run name: output goes to RUNS_DIR/RUN/label"),
        runs_dir: str = typer.Option("runs", "--runs-dir", help="Folder holding runs"),
        pairs: Optional[str] = typer.Option(None, help="Pairs file (default: RUNS_DIR/RUN/pairs/pairs.jsonl)"),
        column: Optional[list[str]] = typer.Option(None, "--column", help="Column mapping FIELD=COLUMN for a pairs file, repeatable"),
        limit: Optional[int] = typer.Option(None, help="Use only the first N rows of the pairs file"),
        labeler: Optional[str] = typer.Option(None, "--labeler", "--model", help="Labeler model: embedded, a folder, openai:NAME@URL, fake"),
        mode: Optional[str] = typer.Option(None, help="logprob (default) or cot (reason step by step first)"),
        ensemble: Optional[int] = typer.Option(None, help="Principles per comparison, averaged (default 1)"),
        clamp: Optional[str] = typer.Option(None, help="cot mode: clamp band LO,HI (default 0.4,0.6) or 'none'"),
        min_confidence: Optional[float] = typer.Option(None, help="Keep only labels with |p-0.5|*2 >= this in preference.jsonl"),
        cot_tokens: Optional[int] = typer.Option(None, help="cot mode: max tokens of the reasoning (default 96)"),
        seed: Optional[int] = typer.Option(None, help="Random seed"),
        constitution: Optional[str] = typer.Option(None, help="Constitution YAML (default: shipped)"),
        shard_size: Optional[int] = typer.Option(None, help="Comparisons per shard (batching and resume unit)"),
        overwrite: bool = typer.Option(False, help="Discard an existing label stage in this run and start again"),
    ) -> None:
        """Label which answer of each pair is better, by asking the labeler multiple-choice questions from the constitution."""
        from cai.data.readers import parse_column_map
        from cai.stages.label import LabelConfig, run_label

        band = _parse_clamp(clamp)
        overrides = dict(
            pairs=pairs,
            column_map=parse_column_map(column) if column else None,
            limit=limit,
            labeler=labeler,
            mode=mode,
            ensemble=ensemble,
            clamp=None if band == "none" else band,
            min_confidence=min_confidence,
            cot_tokens=cot_tokens,
            seed=seed,
            constitution=constitution,
            shard_size=shard_size,
        )
        cfg = load_stage_config(LabelConfig, config, overrides, section="label")
        if band == "none":
            cfg = cfg.model_copy(update={"clamp": None})
        run_dir = Path(runs_dir) / run
        with StageProgress("label") as bar:
            manifest = run_label(cfg, str(run_dir), overwrite=overwrite, on_progress=bar.update, on_ready=bar.ready)
        print_label_summary(run_dir / "label", manifest)


def print_pairs_summary(stage_dir: Path, m: dict) -> None:
    c, t = m["counts"], m["timing"]
    out.print(f"[bold green]pairs done[/]: {stage_dir}")
    out.print(f"  pairs   : {stage_dir / 'pairs.jsonl'}")
    out.print(f"  manifest: {stage_dir / 'manifest.json'}")
    out.print(
        f"  prompts: {c['prompts']} ({c['redteam_prompts']} red-team, {c['helpful_prompts']} helpful); "
        f"{c['k']} answers each = {c['answers']} answers, {c['comparisons']} comparisons to label"
    )
    if c["identical_rows"]:
        out.print(f"  [yellow]{c['identical_rows']} prompt(s) got identical answers[/] (nothing to compare; the labeler skips them)")
    if c["truncated_answers"] or c["empty_answers"]:
        out.print(f"  truncated answers: {c['truncated_answers']}, empty answers: {c['empty_answers']}")
    tps = t.get("generated_tokens_per_s")
    out.print(
        f"  generated {m['tokens']['generated_this_session']} tokens in {t['seconds_this_session']} s"
        + (f" = {tps} tokens/s" if tps else "")
        + (f" (resumed: {t['resumed_rows']} prompts were already done)" if t.get("resumed_rows") else "")
        + f"; policy: {m['model']['model']}"
    )


def print_label_summary(stage_dir: Path, m: dict) -> None:
    s, t = m["labels"], m["timing"]
    out.print(f"[bold green]label done[/]: {stage_dir}")
    out.print(f"  labels    : {stage_dir / 'labels.jsonl'} (every comparison, both orders, per principle)")
    out.print(f"  preference: {stage_dir / 'preference.jsonl'} (TRL format, soft label in score_chosen)")
    out.print(f"  manifest  : {stage_dir / 'manifest.json'}")

    def fmt(x, spec=".2f"):
        return "n/a" if x is None else format(x, spec)

    out.print(
        f"  {s['labeled']}/{s['n']} comparisons labeled ({m['mode']} mode), {s['abstentions']} abstentions"
        + (f", {s['skipped_identical']} identical pairs skipped" if s["skipped_identical"] else "")
    )
    out.print(
        f"  position consistency {fmt(s['position_consistency_rate'])}, mean confidence {fmt(s['mean_confidence'], '.3f')}, "
        f"position bias {fmt(s['position_bias'], '.3f')}, share of per-order answers preferring (A) "
        f"{fmt(s['share_preferring_position_a'])}"
    )
    out.print(f"  kept after filter (min_confidence {s['min_confidence']}): {s['kept_after_filter']}/{s['n']}")
    out.print(f"  confidence histogram (10 bins over 0..1): {s['confidence_histogram']}")
    if t.get("labels_per_s"):
        out.print(f"  {t['rows_this_session']} labels in {t['seconds_this_session']} s = {t['labels_per_s']} labels/s; labeler: {m['model']['model']}")
    if m["warnings"]:
        for w in m["warnings"]:
            out.print(f"  [bold yellow]warning:[/] {w}")
    else:
        out.print("  labels look usable: both orders mostly agree and the labeler is not at chance.")
