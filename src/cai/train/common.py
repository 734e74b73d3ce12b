"""Pieces every training stage shares.

* :class:`TrainSettings` - the common, typed training settings (steps, learning rate, batch, LoRA, device).
* :func:`trainer_kwargs` - keyword arguments for any TRL ``*Config`` (a ``TrainingArguments`` subclass) that are safe on
  a CPU-only machine: ``use_cpu`` without CUDA, bf16 only where the GPU supports it, gradient checkpointing only on GPU,
  no experiment trackers.
* :func:`resolve_model_path` / :func:`load_causal_lm` / :func:`load_tokenizer` - a :class:`~cai.backends.spec.ModelSpec`
  (``embedded`` or a local Hugging Face folder) to weights on disk. Nothing is ever downloaded.
* :func:`lora_config` and :func:`save_model_folder` - LoRA adapters, merged into the base weights when saved, so every
  trained model is a plain Hugging Face folder that :class:`~cai.backends.transformers_backend.TransformersBackend`
  loads.
* :class:`MetricsLogger` - a ``TrainerCallback`` appending each log record to ``metrics.jsonl`` as one line per write.
* :func:`train_with_resume` - resume from the newest complete Trainer checkpoint after a kill.
* :func:`load_preferences` - preference pairs (prompt / chosen / rejected, with an optional soft label) from a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.spec import ModelSpec
from cai.data.io import atomic_write_text, write_json
from cai.errors import ConfigError, UserInputError

Message = dict[str, str]
Conversation = list[Message]

LABEL_FIELDS = ("p_chosen", "score_chosen", "score", "label")
"""Soft-label fields recognised in preference files, in order of preference: P(chosen is better) in [0, 1]."""


class TrainSettings(BaseModel):
    """Training settings shared by ``cai sft``, ``cai reward`` and ``cai dpo``."""

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


# --- device ---------------------------------------------------------------------------------------------------------
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


def trainer_kwargs(
    s: TrainSettings,
    output_dir: str | Path,
    *,
    default_lr: float,
    progress: bool = True,
    remove_unused_columns: bool = True,
) -> dict[str, Any]:
    """Keyword arguments common to SFTConfig, RewardConfig and DPOConfig, safe on CPU-only machines."""
    device = resolve_device(s.device)
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
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        remove_unused_columns=remove_unused_columns,
    )


def precision_name(device: str) -> str:
    return "bf16-mixed" if use_bf16(device) else "fp32"


# --- models ---------------------------------------------------------------------------------------------------------
def resolve_model_path(spec: ModelSpec | str, *, field: str = "model") -> tuple[Path, str]:
    """A training model's folder on disk and a label for manifests. Only local weights can be trained."""
    from cai.backends.embedded import EMBEDDED_MODEL_ID, EMBEDDED_NAME, embedded_model_dir

    if isinstance(spec, str):
        spec = ModelSpec.model_validate(spec)
    if spec.backend != "transformers":
        raise ConfigError(
            f"{field}: training needs local weights, but '{spec.label()}' uses the {spec.backend} backend.",
            fix=f"set {field}: embedded, or {field}: /path/to/hf-folder (a transformers checkpoint).",
        )
    if spec.model == EMBEDDED_NAME:
        return embedded_model_dir(), EMBEDDED_MODEL_ID
    path = Path(os.path.expanduser(spec.model))
    if not (path / "config.json").exists():
        raise UserInputError(
            f"{field}: '{spec.model}' is not a Hugging Face model folder (no config.json there).",
            fix=f"point {field} at a folder saved with save_pretrained (config.json, weights, tokenizer), or use 'embedded'. "
            "Models are never downloaded.",
        )
    return path, str(path)


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise UserInputError(
            f"The tokenizer in {path} has no chat template, so conversations cannot be rendered for training.",
            fix="use an instruction-tuned model folder whose tokenizer_config.json / chat_template.jinja defines one.",
        )
    return tok


def load_causal_lm(path: str | Path, tokenizer=None):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UserInputError(f"Could not load a causal LM from '{path}': {e}", fix="check the model folder.") from e
    if tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def lora_config(s: TrainSettings, task_type: str, modules_to_save: list[str] | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules=s.lora_target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
        bias="none",
    )


def param_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": int(total), "trainable": int(trainable)}


def save_model_folder(model, tokenizer, out_dir: str | Path, *, extra_json: dict[str, Any] | None = None) -> Path:
    """Save a (LoRA-merged) model and its tokenizer as a plain HF folder; the folder appears atomically (rename)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = ()  # type: ignore[assignment]
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.config.use_cache = True
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.pad_token_id = tokenizer.pad_token_id
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name, obj in (extra_json or {}).items():
            write_json(tmp / name, obj)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# --- metrics & resume -----------------------------------------------------------------------------------------------
_LOGGER_CLASS: list[type] = []


def _make_logger_class():
    if _LOGGER_CLASS:
        return _LOGGER_CLASS[0]
    from transformers import TrainerCallback

    class _MetricsLogger(TrainerCallback):
        """Append every Trainer log record to a JSONL file, one complete line per ``write`` (O_APPEND)."""

        def __init__(self, path: str | Path):
            self.path = Path(path)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            row: dict[str, Any] = {"step": int(state.global_step), "epoch": round(float(state.epoch or 0.0), 4)}
            for k, v in logs.items():
                if isinstance(v, bool) or v is None or isinstance(v, str):
                    row[k] = v
                elif isinstance(v, (int, float)):
                    row[k] = v if math.isfinite(v) else str(v)
            row["time"] = round(time.time(), 3)
            append_line(self.path, json.dumps(row))

    _LOGGER_CLASS.append(_MetricsLogger)
    return _MetricsLogger


def MetricsLogger(path: str | Path):  # noqa: N802 - behaves like a class; built lazily to keep imports cheap
    """A ``transformers.TrainerCallback`` writing each log record to ``path`` (JSON Lines)."""
    return _make_logger_class()(path)


def append_line(path: str | Path, line: str) -> None:
    """Append one line with a single ``write`` on an O_APPEND descriptor and fsync it: a line is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def trim_metrics(path: str | Path, max_step: int) -> None:
    """Drop records logged after ``max_step`` (they are logged again when training resumes from that step)."""
    path = Path(path)
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if int(r.get("step", 0)) <= max_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def latest_checkpoint(ckpt_dir: str | Path) -> tuple[str | None, int]:
    """Newest complete Trainer checkpoint (it has ``trainer_state.json``, written last) and its global step."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None, 0
    best: tuple[int, Path] | None = None
    for p in ckpt_dir.glob("checkpoint-*"):
        state = p / "trainer_state.json"
        if not p.is_dir() or not state.exists():
            continue
        try:
            step = int(json.loads(state.read_text(encoding="utf-8")).get("global_step", 0))
        except (json.JSONDecodeError, ValueError, OSError):
            continue
        if best is None or step > best[0]:
            best = (step, p)
    if best is None:
        return None, 0
    return str(best[1]), best[0]


def train_with_resume(trainer, ckpt_dir: str | Path, metrics_path: str | Path, state: str) -> tuple[Any, str | None]:
    """Run ``trainer.train()``, resuming from the newest checkpoint when the stage is being resumed.

    A fresh stage starts with no checkpoints and an empty metrics file; a resumed one keeps the metrics logged up to the
    checkpoint's step (later records are logged again).
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt: str | None = None
    step = 0
    if state == "resume":
        ckpt, step = latest_checkpoint(ckpt_dir)
    elif ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    trim_metrics(metrics_path, step)
    result = trainer.train(resume_from_checkpoint=ckpt)
    return result, ckpt


def final_loss(log_history: list[dict], key: str = "loss") -> float | None:
    for rec in reversed(log_history):
        if key in rec and isinstance(rec[key], (int, float)):
            return float(rec[key])
    return None


def training_summary(trainer, result, seconds: float, resumed_from: str | None, device: str) -> dict[str, Any]:
    st = trainer.state
    steps_here = st.global_step - (_step_of(resumed_from) if resumed_from else 0)
    return {
        "steps": int(st.global_step),
        "epochs": round(float(st.epoch or 0.0), 4),
        "final_loss": final_loss(st.log_history),
        "mean_train_loss": float(result.training_loss) if result is not None else None,
        "learning_rate": trainer.args.learning_rate,
        "effective_batch_size": trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps,
        "device": device,
        "precision": precision_name(device),
        "resumed_from": os.path.basename(resumed_from) if resumed_from else None,
        "seconds_this_session": round(seconds, 2),
        "steps_this_session": int(steps_here),
        "seconds_per_step": round(seconds / steps_here, 3) if steps_here > 0 else None,
    }


def _step_of(ckpt: str) -> int:
    try:
        return int(os.path.basename(ckpt).rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def finish_checkpoints(ckpt_dir: str | Path, keep: bool) -> None:
    if not keep and Path(ckpt_dir).exists():
        shutil.rmtree(ckpt_dir, ignore_errors=True)


# --- input files ----------------------------------------------------------------------------------------------------
def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


#: ``data: label`` / ``data: revise`` shorthands of the stages that train on preference pairs (reward, dpo).
PREFERENCE_ALIASES = {"label": "label/preference.jsonl", "revise": "revise/preference.jsonl"}


def resolve_policy(policy: ModelSpec | None, run_dir: Path) -> tuple[Path, str, str]:
    """(folder, label, how it was chosen): explicit policy, else RUN/sft/model when present, else embedded."""
    if policy is not None:
        path, label = resolve_model_path(policy, field="policy")
        return path, label, "config"
    from cai.runs import sft_model_of

    sft_model = sft_model_of(run_dir)
    if sft_model is not None:
        return sft_model, str(sft_model), "this run's sft/model"
    path, label = resolve_model_path("embedded", field="policy")
    return path, label, "embedded (no sft/model in this run)"


def resolve_run_input(value: str, run_dir: Path, aliases: dict[str, str], *, field: str, command: str) -> Path:
    """``value`` is an alias of a file inside this run (e.g. 'revise' -> RUN/revise/sft.jsonl) or a path."""
    if value in aliases:
        p = run_dir / aliases[value]
        if not p.exists():
            raise UserInputError(
                f"{field}: '{value}' means {p}, which does not exist.",
                fix=f"run `cai {value} --run {run_dir.name}` first (same --runs-dir), or pass {command} --data FILE.",
            )
        return p
    p = Path(os.path.expanduser(value))
    if not p.exists():
        raise UserInputError(
            f"{field}: file '{value}' not found.",
            fix=f"check the path, or use one of: {', '.join(repr(a) for a in aliases)} (this run's own outputs).",
        )
    return p


def _where(path: Path, row: dict) -> str:
    return f"{path} (id {row.get('id')})"


def as_messages(value: Any, *, path: Path, row: dict, field: str, default_role: str) -> Conversation:
    """A string (one message of ``default_role``) or a list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise UserInputError(f"{_where(path, row)}: field '{field}' is empty.", fix="fill it in or remove the row.")
        return [{"role": default_role, "content": value}]
    if isinstance(value, list) and value:
        out = []
        for m in value:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise UserInputError(
                    f"{_where(path, row)}: field '{field}' must be a string or a list of {{role, content}} messages; "
                    f"found {json.dumps(m)[:120]}.",
                    fix='write messages like {"role": "user", "content": "..."}.',
                )
            out.append({"role": m["role"], "content": m["content"]})
        return out
    raise UserInputError(
        f"{_where(path, row)}: field '{field}' must be a non-empty string or list of messages, got {type(value).__name__}.",
        fix='use a string, or a list like [{"role": "user", "content": "..."}].',
    )


def load_preferences(
    path: str | Path, *, label_field: str = "auto", column_map: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Preference pairs with conversational prompt/chosen/rejected and ``p_chosen`` = P(chosen is better).

    ``label_field``: ``auto`` (the first of p_chosen, score_chosen, score, label that the file has; none -> hard
    labels, p = 1), ``none`` (ignore soft labels), or a field name. Pairs whose chosen and rejected answers are identical carry no
    signal and are dropped (counted in the returned info).
    """
    from cai.data.readers import read_records

    path = Path(path)
    rows = read_records(path, required=("prompt", "chosen", "rejected"), column_map=column_map, id_prefix="pair")
    field: str | None
    if label_field == "none":
        field = None
    elif label_field == "auto":
        field = next((f for f in LABEL_FIELDS if any(f in r for r in rows)), None)
    else:
        field = label_field
        if not any(field in r for r in rows):
            raise UserInputError(
                f"{path}: label_field '{field}' is not a field of any row.",
                fix=f"use label_field: auto (looks for {', '.join(LABEL_FIELDS)}), none (hard labels), or the right name.",
            )
    out, identical = [], 0
    for r in rows:
        prompt = as_messages(r["prompt"], path=path, row=r, field="prompt", default_role="user")
        chosen = as_messages(r["chosen"], path=path, row=r, field="chosen", default_role="assistant")
        rejected = as_messages(r["rejected"], path=path, row=r, field="rejected", default_role="assistant")
        for name, conv in (("chosen", chosen), ("rejected", rejected)):
            if conv[-1]["role"] != "assistant":
                raise UserInputError(
                    f"{_where(path, r)}: the last message of '{name}' has role '{conv[-1]['role']}', not 'assistant'.",
                    fix="chosen/rejected hold the assistant's answer (a string or [{role: assistant, content: ...}]).",
                )
        if prompt[-1]["role"] == "assistant":
            raise UserInputError(
                f"{_where(path, r)}: the prompt ends with an assistant message.",
                fix="the prompt is the conversation up to the answer; put the answer in chosen/rejected.",
            )
        p = 1.0
        if field is not None:
            v = r.get(field)
            if v is None:
                raise UserInputError(
                    f"{_where(path, r)}: no '{field}' value although other rows have one.",
                    fix=f"give every row a '{field}' in [0, 1], or set label_field: none to train on hard labels.",
                )
            try:
                p = float(v)
            except (TypeError, ValueError):
                raise UserInputError(
                    f"{_where(path, r)}: '{field}' = {v!r} is not a probability.",
                    fix=f"'{field}' must be P(chosen is better) in [0, 1]; set label_field: none to ignore it.",
                ) from None
            if not (0.0 <= p <= 1.0) or not math.isfinite(p):
                raise UserInputError(
                    f"{_where(path, r)}: '{field}' = {v!r} is outside [0, 1].",
                    fix=f"'{field}' must be P(chosen is better); set label_field: none to ignore it.",
                )
        if chosen == rejected:
            identical += 1
            continue
        out.append({"id": r["id"], "prompt": prompt, "chosen": chosen, "rejected": rejected, "p_chosen": p})
    if not out:
        raise UserInputError(
            f"{path}: no usable preference pairs ({len(rows)} rows, {identical} with identical chosen and rejected).",
            fix="give pairs whose chosen and rejected answers differ.",
        )
    info = {
        "file": str(path),
        "rows": len(rows),
        "pairs": len(out),
        "identical_dropped": identical,
        "label_field": field,
        "mean_p_chosen": round(sum(x["p_chosen"] for x in out) / len(out), 4),
    }
    return out, info
