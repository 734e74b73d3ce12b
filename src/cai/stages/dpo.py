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

from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from cai.backends.spec import ModelSpec
from cai.errors import UserInputError
from cai.train.data import PreferenceDataSettings, file_digest
from cai.train.logs import final_loss
from cai.train.models import load_causal_lm, load_tokenizer, resolve_policy
from cai.train.runner import Trained, TrainingRun, identity_config, run_training
from cai.train.settings import TrainSettings

DPO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class DPOStageConfig(PreferenceDataSettings, TrainSettings):
    """Settings of ``cai dpo``; YAML keys (a ``dpo:`` section or flat keys) and CLI flags use these names."""

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
            callbacks: list | None = None, on_progress: Callable[[Any], None] | None = None,
            on_ready: Callable[[Any], None] | None = None) -> dict:
    """Run (or resume) ``cai dpo`` into ``run_dir/dpo``. Returns the manifest."""
    run_dir = Path(run_dir)
    data_path, pairs, data_info = cfg.load_pairs(run_dir, "cai dpo")
    policy_path, policy_label, policy_source = resolve_policy(cfg.policy, run_dir)

    def train(run: TrainingRun) -> Trained:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        tok = load_tokenizer(policy_path)
        kept, label_info = _prepare_pairs(pairs, cfg.min_p_chosen)
        kept, length_info = _length_filter(kept, tok, cfg.max_length)
        if not kept:
            raise UserInputError(
                f"{data_path}: no pairs left to train on ({label_info['low_confidence_dropped']} below min_p_chosen="
                f"{cfg.min_p_chosen}, {length_info['dropped_prompt_too_long']} with a prompt longer than max_length="
                f"{cfg.max_length}).",
                fix="lower min_p_chosen or raise max_length.",
            )
        ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in kept])
        args = DPOConfig(
            **run.trainer_kwargs(cfg, default_lr=_default_lr(cfg)),
            max_length=cfg.max_length,
            beta=cfg.beta,
            loss_type=[cfg.loss_type],
            precompute_ref_log_probs=False,
        )
        trainer = DPOTrainer(
            model=load_causal_lm(policy_path, tok),
            ref_model=None if cfg.lora else load_causal_lm(policy_path, tok),
            args=args,
            **run.trainer_inputs(cfg, tok, ds),
        )
        fitted = run.fit(trainer)
        last = {k: final_loss(trainer.state.log_history, k) for k in DPO_METRICS}
        return Trained(
            model=trainer.accelerator.unwrap_model(trainer.model),
            tokenizer=tok,
            manifest={
                "policy": {"path": str(policy_path), "label": policy_label, "source": policy_source},
                "reference": "the policy with its LoRA adapter disabled" if cfg.lora else "a frozen copy of the policy",
                "data": {**data_info, **label_info, **length_info, "train_pairs": len(kept)},
                "dpo": {"beta": cfg.beta, "loss_type": cfg.loss_type, "final": last},
            },
            **fitted,
        )

    identity = {"dpo": identity_config(cfg), "policy": str(policy_path), "data_digest": file_digest(data_path)}
    return run_training(run_dir, "dpo", cfg, identity=identity, train=train, overwrite=overwrite, progress=progress,
                        callbacks=callbacks, on_progress=on_progress, on_ready=on_ready)
