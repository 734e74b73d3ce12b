"""Typed training settings shared by every training stage, and the TRL keyword arguments they turn into.

* :class:`TrainSettings` - steps, learning rate, batch, checkpoints, LoRA, device and experiment tracking.
* :func:`trainer_kwargs` - keyword arguments for any TRL ``*Config`` (a ``TrainingArguments`` subclass) that are safe on a
  CPU-only machine: ``use_cpu`` without CUDA, bf16 only where the GPU supports it, gradient checkpointing only on GPU,
  no tqdm bars (progress goes to the stage's progress line and ``metrics.jsonl``), and ``report_to`` / ``run_name``
  passed through so wandb, tensorboard or trackio record the run when they are installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai.errors import ConfigError


class TrainSettings(BaseModel):
    """Training settings shared by ``cai sft``, ``cai reward``, ``cai dpo`` and ``cai rl``."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(default=1.0, gt=0, description="Passes over the training data (ignored when max_steps is set)")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)")
    learning_rate: float | None = Field(
        default=None, gt=0, description="Peak learning rate; default depends on the stage and on whether LoRA is used"
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="Learning-rate schedule after warmup"
    )
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="Share of the steps spent warming the learning rate up")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(default=4, ge=1, description="Examples (pairs for reward/dpo) per device per step")
    grad_accum: int = Field(default=1, ge=1, description="Gradient accumulation steps (effective batch = batch_size x this)")
    max_length: int = Field(default=512, ge=16, description="Max tokens of one training sequence (prompt + answer)")
    seed: int = Field(default=0, description="Seeds data sampling, shuffling, new weights and dropout")
    logging_steps: int = Field(default=5, ge=1, description="Write a metrics.jsonl record every N steps")
    save_steps: int = Field(default=50, ge=1, description="Write a resumable Trainer checkpoint every N steps")
    save_total_limit: int = Field(default=2, ge=1, description="Keep at most this many checkpoints")
    keep_checkpoints: bool = Field(default=False, description="Keep the Trainer checkpoints after the stage finishes")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto (CUDA when available), cpu or cuda")
    gradient_checkpointing: bool = Field(
        default=False, description="Trade compute for memory on GPU (always off on CPU, where it only slows training)"
    )
    lora: bool = Field(default=True, description="Train a LoRA adapter (merged into the weights on save) instead of all weights")
    lora_r: int = Field(default=16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA branch")
    lora_target_modules: list[str] | str = Field(
        default="all-linear", description="Modules that get adapters: 'all-linear' or a list such as [q_proj, v_proj]"
    )
    report_to: str = Field(
        default="none",
        description="Experiment trackers that receive the training metrics: none, all, or a comma-separated list such "
        "as wandb,tensorboard (trackio, mlflow...; installed separately)",
    )
    run_name: str | None = Field(
        default=None, description="Name of the run in the experiment tracker (default: RUN/STAGE, e.g. demo/sft)"
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _join_report_to(cls, v: Any) -> Any:
        if v is None:
            return "none"
        if isinstance(v, (list, tuple)):  # YAML list form: [wandb, tensorboard]
            return ",".join(str(x).strip() for x in v) or "none"
        return v


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but no CUDA GPU is visible.", fix="set device: auto or cpu.")
    return device


def use_bf16(device: str) -> bool:
    import torch

    return device == "cuda" and torch.cuda.is_bf16_supported()


def precision_name(device: str) -> str:
    return "bf16-mixed" if use_bf16(device) else "fp32"


def resolve_report_to(report_to: str) -> list[str]:
    """The trackers named in ``report_to``, checked: known to transformers and installed. ``[]`` when there are none."""
    wanted = [r for r in (p.strip() for p in report_to.split(",")) if r and r != "none"]
    if not wanted:
        return []
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    if wanted == ["all"]:
        return list(get_available_reporting_integrations())
    unknown = [r for r in wanted if r not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise ConfigError(
            f"report_to: unknown experiment tracker {', '.join(repr(u) for u in unknown)}.",
            fix=f"use none, all, or some of: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}.",
        )
    available = set(get_available_reporting_integrations())
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ConfigError(
            f"report_to: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in this environment.",
            fix=f"pip install {' '.join(missing)} (into this venv), or set report_to: none.",
        )
    return wanted


def trainer_kwargs(
    s: TrainSettings,
    output_dir: str | Path,
    *,
    default_lr: float,
    run_name: str,
    remove_unused_columns: bool = True,
) -> dict[str, Any]:
    """Keyword arguments common to SFTConfig, RewardConfig, DPOConfig, GRPOConfig and RLOOConfig."""
    device = resolve_device(s.device)
    trackers = resolve_report_to(s.report_to)
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps if s.max_steps is not None else -1,
        learning_rate=s.learning_rate if s.learning_rate is not None else default_lr,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_ratio,
        weight_decay=s.weight_decay,
        logging_steps=s.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=s.save_total_limit,
        save_only_model=False,
        eval_strategy="no",
        seed=s.seed,
        data_seed=s.seed,
        use_cpu=device == "cpu",
        bf16=use_bf16(device),
        fp16=False,
        activation_checkpointing=bool(s.gradient_checkpointing and device == "cuda"),
        report_to=trackers or "none",
        run_name=s.run_name or run_name,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=remove_unused_columns,
    )
