"""Offline RLAIF with Direct Preference Optimization on AI-labeled pairs (TRL ``DPOTrainer``).

Pairs: the run's ``label/preference.jsonl`` by default, the SL-CAI ``revise/preference.jsonl`` (revision preferred over
the initial answer), or any prompt/chosen/rejected file. A soft label (``p_chosen``/``score_chosen``/``score``/
``label``) can drop low-confidence pairs (``min_p_chosen``); pairs whose label prefers the rejected answer are flipped.

Policy: ``policy`` (default: this run's ``sft/model`` when it exists, else the embedded model). With LoRA (default)
the reference model is the same network with the adapter disabled, so no second copy is held in memory; full
fine-tuning keeps a frozen copy as the reference. The trained policy is saved merged, as a plain HF folder.

Output ``runs/<run>/dpo/``: ``model/``, ``metrics.jsonl`` (loss, rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies per logging step), ``manifest.json`` last.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from cai.backends.spec import ModelSpec
from cai.errors import UserInputError
from cai.runs import StageDir
from cai.train.common import (
    PREFERENCE_ALIASES,
    MetricsLogger,
    TrainSettings,
    file_digest,
    finish_checkpoints,
    final_loss,
    load_causal_lm,
    load_preferences,
    load_tokenizer,
    lora_config,
    param_counts,
    resolve_device,
    resolve_policy,
    resolve_run_input,
    save_model_folder,
    train_with_resume,
    trainer_kwargs,
    training_summary,
)

DPO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class DPOStageConfig(TrainSettings):
    """Settings of ``cai dpo``; YAML keys (a ``dpo:`` section or flat keys) and CLI flags use these names."""

    data: str = Field(
        default="label",
        description="'label' = this run's label/preference.jsonl, 'revise' = revise/preference.jsonl, or a file path",
    )
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column, e.g. {chosen: good}")
    label_field: str = Field(
        default="auto", description="Soft label P(chosen better): auto (p_chosen, score_chosen, score or label), none, or a field name"
    )
    min_p_chosen: float = Field(
        default=0.5, ge=0.5, le=1.0,
        description="Keep pairs whose label confidence max(p, 1-p) is at least this (0.5 keeps every pair)",
    )
    policy: ModelSpec | None = Field(
        default=None, description="Policy to train: null = this run's sft/model if present, else 'embedded'; or a folder"
    )
    beta: float = Field(default=0.1, gt=0, description="DPO beta: strength of the pull toward the reference model")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        default="sigmoid", description="DPO loss: sigmoid (the original DPO), ipo, hinge or robust"
    )
    lora: bool = Field(default=True, description="Train a LoRA adapter (the reference is the adapter-free model)")


def _default_lr(cfg: DPOStageConfig) -> float:
    return 5e-5 if cfg.lora else 1e-6


def _prepare_pairs(pairs: list[dict], min_p: float) -> tuple[list[dict], dict[str, int]]:
    kept, flipped, dropped = [], 0, 0
    for r in pairs:
        p = r["p_chosen"]
        if max(p, 1 - p) < min_p:
            dropped += 1
            continue
        if p < 0.5:
            r = dict(r, chosen=r["rejected"], rejected=r["chosen"], p_chosen=1 - p)
            flipped += 1
        kept.append(r)
    return kept, {"low_confidence_dropped": dropped, "flipped_to_match_label": flipped}


def _length_filter(pairs: list[dict], tok, max_length: int) -> tuple[list[dict], dict[str, int]]:
    """Drop pairs whose prompt alone fills max_length (TRL would drop them too); count pairs that get truncated."""
    kept, dropped, truncated = [], 0, 0
    for r in pairs:
        p = len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        if p >= max_length - 8:
            dropped += 1
            continue
        longest = max(
            len(tok.apply_chat_template(r["prompt"] + r[k], tokenize=True, return_dict=True)["input_ids"])
            for k in ("chosen", "rejected")
        )
        truncated += longest > max_length
        kept.append(r)
    return kept, {"dropped_prompt_too_long": dropped, "truncated_pairs": truncated}


def run_dpo(cfg: DPOStageConfig, run_dir: str | Path, *, overwrite: bool = False, progress: bool = True,
            callbacks: list | None = None) -> dict:
    """Run (or resume) ``cai dpo`` into ``run_dir/dpo``. Returns the manifest."""
    run_dir = Path(run_dir)
    data_path = resolve_run_input(cfg.data, run_dir, PREFERENCE_ALIASES, field="data", command="cai dpo")
    pairs, data_info = load_preferences(data_path, label_field=cfg.label_field, column_map=cfg.column_map)
    policy_path, policy_label, policy_source = resolve_policy(cfg.policy, run_dir)
    stage = StageDir(run_dir, "dpo")
    state = stage.begin(
        {"dpo": cfg.model_dump(mode="json"), "policy": str(policy_path), "data_digest": file_digest(data_path)},
        overwrite=overwrite,
    )
    if state == "complete":
        return stage.manifest()

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    device = resolve_device(cfg.device)
    tok = load_tokenizer(policy_path)
    pairs, label_info = _prepare_pairs(pairs, cfg.min_p_chosen)
    pairs, length_info = _length_filter(pairs, tok, cfg.max_length)
    if not pairs:
        raise UserInputError(
            f"{data_path}: no pairs left to train on ({label_info['low_confidence_dropped']} below min_p_chosen="
            f"{cfg.min_p_chosen}, {length_info['dropped_prompt_too_long']} with a prompt longer than max_length="
            f"{cfg.max_length}).",
            fix="lower min_p_chosen or raise max_length.",
        )
    model = load_causal_lm(policy_path, tok)
    ref_model = None if cfg.lora else load_causal_lm(policy_path, tok)
    ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in pairs])
    ckpt_dir = stage.path / "checkpoints"
    metrics_path = stage.path / "metrics.jsonl"
    args = DPOConfig(
        **trainer_kwargs(cfg, ckpt_dir, default_lr=_default_lr(cfg), progress=progress),
        max_length=cfg.max_length,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        precompute_ref_log_probs=False,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=lora_config(cfg, "CAUSAL_LM") if cfg.lora else None,
        callbacks=[MetricsLogger(metrics_path), *(callbacks or [])],
    )
    params = param_counts(trainer.model)
    t0 = time.perf_counter()
    result, resumed = train_with_resume(trainer, ckpt_dir, metrics_path, state)
    seconds = time.perf_counter() - t0
    training = training_summary(trainer, result, seconds, resumed, device)
    last = {k: final_loss(trainer.state.log_history, k) for k in DPO_METRICS}
    save_model_folder(trainer.accelerator.unwrap_model(trainer.model), tok, stage.path / "model")
    manifest = {
        "policy": {"path": str(policy_path), "label": policy_label, "source": policy_source},
        "reference": "the policy with its LoRA adapter disabled" if cfg.lora else "a frozen copy of the policy",
        "data": {**data_info, **label_info, **length_info, "train_pairs": len(pairs)},
        "dpo": {"beta": cfg.beta, "loss_type": cfg.loss_type, "final": last},
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                 "target_modules": cfg.lora_target_modules, "merged": True} if cfg.lora else None,
        "params": params,
        "training": training,
        "outputs": {"model": "model", "metrics": "metrics.jsonl"},
        "config": cfg.model_dump(mode="json"),
    }
    stage.finish(manifest)
    finish_checkpoints(ckpt_dir, cfg.keep_checkpoints)  # after the manifest: a kill before it can still resume
    return stage.manifest()
