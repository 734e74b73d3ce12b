"""Model folders for training: which weights a stage trains, how they load, and how a trained model is saved.

* :func:`resolve_model_path` / :func:`resolve_policy` - a :class:`~cai.backends.spec.ModelSpec` (``embedded`` or a
  local Hugging Face folder) to weights on disk; the policy defaults to this run's ``sft/model``. Nothing is downloaded.
* :func:`load_tokenizer` / :func:`load_causal_lm` - float32 weights with the pad token set.
* :func:`lora_config` and :func:`save_model_folder` - LoRA adapters, merged into the base weights when saved, so every
  trained model is a plain Hugging Face folder that ``transformers`` and every backend load.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from cai.backends.spec import ModelSpec
from cai.data.io import write_json
from cai.errors import ConfigError, UserInputError
from cai.train.settings import TrainSettings


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


def resolve_policy(policy: ModelSpec | None, run_dir: Path) -> tuple[Path, str, str]:
    """(folder, label, how it was chosen): explicit policy, else the run's default (:func:`cai.registry.policy_default`:
    RUN/sft/model when present), else the embedded model."""
    if policy is not None:
        path, label = resolve_model_path(policy, field="policy")
        return path, label, "config"
    from cai.registry import policy_default

    sft_model, source = policy_default(run_dir)
    if sft_model is not None:
        return sft_model, str(sft_model), source
    path, label = resolve_model_path("embedded", field="policy")
    return path, label, f"embedded: {source}"


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


def lora_summary(s: TrainSettings) -> dict[str, Any] | None:
    """The manifest's ``lora`` block (None for a full fine-tune)."""
    if not s.lora:
        return None
    return {"r": s.lora_r, "alpha": s.lora_alpha, "dropout": s.lora_dropout, "target_modules": s.lora_target_modules,
            "merged": True}


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
