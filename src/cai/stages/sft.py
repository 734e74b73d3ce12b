"""SL-CAI supervised fine-tuning: train the policy on its own critiqued-and-revised answers.

Data: the run's red-team revisions (``revise/sft.jsonl``) mixed with the policy's answers to helpful prompts
(``revise/helpful.jsonl``) at ``helpful_ratio`` helpful rows per revision row (sampled with the seed), so that the model
learns harmlessness without forgetting helpfulness. Any JSONL/CSV/Parquet file with ``messages`` (or prompt +
completion) can be given instead.

Loss on the answer only: each conversation becomes a TRL prompt-completion pair (``prompt`` = every message before the
final assistant turn, ``completion`` = that turn, ending with the template's end-of-turn token), and TRL masks the
prompt tokens out of the loss. TRL's ``assistant_only_loss`` would need ``{% generation %}`` markers in the chat template,
which the embedded SmolLM2 template lacks; the prompt-completion format gives the same masking for single-answer rows.

Output ``runs/<run>/sft/``: ``model/`` (LoRA merged into the weights: a plain HF folder with tokenizer),
``metrics.jsonl`` (one record per logging step), ``checkpoints/`` while training (a killed run resumes from the newest),
``manifest.json`` last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import Field, field_validator

from cai.backends.spec import ModelSpec
from cai.config import none_as_null
from cai.errors import UserInputError
from cai.seeding import rng
from cai.train.data import as_messages, file_digest, resolve_run_input
from cai.train.models import load_causal_lm, load_tokenizer, resolve_model_path
from cai.train.runner import Trained, TrainingRun, identity_config, run_training
from cai.train.settings import TrainSettings

RUN_ALIASES = {"revise": "revise/sft.jsonl"}
HELPFUL_ALIASES = {"revise": "revise/helpful.jsonl"}
ANSWER_FIELDS = ("completion", "response", "answer")


class SFTStageConfig(TrainSettings):
    """Settings of ``cai sft``; YAML keys (an ``sft:`` section or flat keys) and CLI flags use these names."""

    data: str = Field(
        default="revise",
        description="'revise' = this run's revise/sft.jsonl, or a file with `messages` (or prompt + completion)",
    )
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column, e.g. {messages: chat}")
    helpful: str | None = Field(
        default="revise",
        description="Helpful rows mixed in: 'revise' = this run's revise/helpful.jsonl (skipped if absent), a file, or null",
    )
    _helpful_none = field_validator("helpful", mode="before")(none_as_null)  # `--helpful none` means null
    helpful_ratio: float = Field(default=1.0, ge=0, description="Helpful rows per revision row (sampled with the seed)")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Base model to fine-tune: 'embedded' or a local HF folder")
    lora: bool = Field(default=True, description="Train a LoRA adapter (merged on save) instead of all weights")


def _default_lr(cfg: SFTStageConfig) -> float:
    return 2e-4 if cfg.lora else 2e-5


def _to_pair(row: dict, path: Path) -> dict[str, Any]:
    """A row with ``messages`` (or prompt + completion/response/answer) -> {id, prompt: [...], completion: [...]}."""
    if "messages" in row and row["messages"] is not None:
        msgs = as_messages(row["messages"], path=path, row=row, field="messages", default_role="user")
        if msgs[-1]["role"] != "assistant":
            raise UserInputError(
                f"{path} (id {row.get('id')}): the last message has role '{msgs[-1]['role']}'; SFT needs an assistant "
                "answer to learn.",
                fix="end each conversation with {\"role\": \"assistant\", \"content\": ...}.",
            )
        if len(msgs) < 2:
            raise UserInputError(
                f"{path} (id {row.get('id')}): the conversation holds only an assistant message.",
                fix="include the user message that the answer responds to.",
            )
        return {"id": row["id"], "prompt": msgs[:-1], "completion": msgs[-1:]}
    answer_field = next((f for f in ANSWER_FIELDS if row.get(f) is not None), None)
    if "prompt" in row and answer_field:
        prompt = as_messages(row["prompt"], path=path, row=row, field="prompt", default_role="user")
        comp = as_messages(row[answer_field], path=path, row=row, field=answer_field, default_role="assistant")
        if comp[-1]["role"] != "assistant":
            raise UserInputError(f"{path} (id {row.get('id')}): '{answer_field}' is not an assistant message.",
                                 fix="the completion is the assistant's answer.")
        return {"id": row["id"], "prompt": prompt, "completion": comp}
    raise UserInputError(
        f"{path} (id {row.get('id')}): a row needs `messages`, or `prompt` plus one of {', '.join(ANSWER_FIELDS)}. "
        f"Fields found: {', '.join(sorted(row))}.",
        fix="rename the columns, or map them: --column messages=YOUR_COLUMN (config: column_map).",
    )


def _read_pairs(path: Path, column_map: dict[str, str], prefix: str) -> list[dict]:
    from cai.data.readers import read_records

    rows = read_records(path, required=(), column_map=column_map, id_prefix=prefix)
    return [_to_pair(r, path) for r in rows]


def build_sft_data(cfg: SFTStageConfig, run_dir: Path) -> tuple[list[dict], dict[str, Any]]:
    """The training rows (revisions + sampled helpful rows, shuffled with the seed) and counts for the manifest."""
    main_path = resolve_run_input(cfg.data, run_dir, RUN_ALIASES, field="data", command="cai sft")
    main = _read_pairs(main_path, cfg.column_map, "sft")
    info: dict[str, Any] = {"data_file": str(main_path), "data_digest": file_digest(main_path), "revision_rows": len(main)}
    helpful: list[dict] = []
    help_path: Path | None = None
    if cfg.helpful is not None and cfg.helpful_ratio > 0:
        if cfg.helpful in HELPFUL_ALIASES:
            cand = run_dir / HELPFUL_ALIASES[cfg.helpful]
            help_path = cand if cand.exists() else None
            if help_path is None:
                info["helpful_note"] = f"{cand} not found; trained on the main data only"
        else:
            help_path = resolve_run_input(cfg.helpful, run_dir, HELPFUL_ALIASES, field="helpful", command="cai sft")
        if help_path is not None:
            helpful = _read_pairs(help_path, {}, "helpful")
    mix = rng("sft-mix", cfg.seed)
    wanted = int(round(cfg.helpful_ratio * len(main))) if helpful else 0
    used = helpful if wanted >= len(helpful) else mix.sample(helpful, wanted)
    rows = [dict(r, source="revision") for r in main] + [dict(r, source="helpful") for r in used]
    mix.shuffle(rows)
    info.update(
        helpful_file=str(help_path) if help_path else None,
        helpful_digest=file_digest(help_path) if help_path else None,
        helpful_available=len(helpful),
        helpful_wanted=wanted,
        helpful_used=len(used),
        helpful_ratio_config=cfg.helpful_ratio,
        helpful_ratio_actual=round(len(used) / len(main), 4) if main else None,
    )
    return rows, info


def _length_filter(rows: list[dict], tok, max_length: int) -> tuple[list[dict], dict[str, int]]:
    """Drop rows whose prompt alone leaves fewer than 8 answer tokens; count rows whose answer will be cut."""
    kept, dropped, truncated = [], 0, 0
    for r in rows:
        p = len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        full = len(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)["input_ids"])
        if p > max_length - 8:
            dropped += 1
            continue
        truncated += full > max_length
        kept.append(r)
    return kept, {"dropped_prompt_too_long": dropped, "answer_truncated": truncated}


def run_sft(
    cfg: SFTStageConfig,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
    on_progress: Callable[[Any], None] | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> dict:
    """Run (or resume) ``cai sft`` into ``run_dir/sft``. Returns the manifest."""
    run_dir = Path(run_dir)
    rows, data_info = build_sft_data(cfg, run_dir)
    base_path, base_label = resolve_model_path(cfg.model, field="model")

    def train(run: TrainingRun) -> Trained:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        tok = load_tokenizer(base_path)
        kept, length_info = _length_filter(rows, tok, cfg.max_length)
        if not kept:
            raise UserInputError(
                f"No SFT rows fit in max_length={cfg.max_length} tokens (every prompt is too long).",
                fix="raise max_length.",
            )
        ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in kept])
        args = SFTConfig(
            **run.trainer_kwargs(cfg, default_lr=_default_lr(cfg)),
            max_length=cfg.max_length,
            packing=False,
            completion_only_loss=True,
            assistant_only_loss=False,
        )
        trainer = SFTTrainer(
            model=load_causal_lm(base_path, tok),
            args=args,
            **run.trainer_inputs(cfg, tok, ds),
        )
        fitted = run.fit(trainer)
        by_source = {s: sum(r["source"] == s for r in kept) for s in ("revision", "helpful")}
        return Trained(
            model=trainer.accelerator.unwrap_model(trainer.model),
            tokenizer=tok,
            manifest={
                "base_model": {"path": str(base_path), "label": base_label},
                "data": {**data_info, **length_info, "train_rows": len(kept), "train_rows_by_source": by_source},
                "loss_on": "completion tokens only (prompt-completion format)",
            },
            **fitted,
        )

    identity = {"sft": identity_config(cfg), "base_model": str(base_path),
                "data": {k: data_info[k] for k in ("data_digest", "helpful_digest")}}
    return run_training(run_dir, "sft", cfg, identity=identity, train=train, overwrite=overwrite, progress=progress,
                        callbacks=callbacks, on_progress=on_progress, on_ready=on_ready)
