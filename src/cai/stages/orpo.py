"""ORPO: supervised fine-tuning and preference optimization in one stage (TRL ``experimental.orpo.ORPOTrainer``).

ORPO (Hong et al., 2024) adds to the negative log-likelihood of the chosen answer an odds-ratio term that pushes the
odds of the chosen answer above those of the rejected one, ``L = NLL(chosen) - beta * log sigmoid(log odds(chosen) -
log odds(rejected))``. It needs no reference model and no separate SFT stage, so it starts from the base model.
In TRL 1.16 it lives in ``trl.experimental.orpo`` (it moved there from the main package).

Training data, one stage:

* the SL-CAI data as pairs: ``revise/preference.jsonl`` (the kept revision chosen over the policy's first answer),
  so the NLL term does what ``cai sft`` does on the revisions (``sl_pairs``);
* the AI-labeled pairs: ``label/preference.jsonl`` (``pairs``; labels are made in both orders by ``cai label``);
  a pair whose soft label prefers the rejected answer is flipped, one below ``min_p_chosen`` is dropped.

Either source may be switched off (``none``) or given as any prompt/chosen/rejected file. Policy: ``policy``
(default: the base model, since ORPO replaces the SFT stage); LoRA by default; the saved model is merged.

Output ``runs/<run>/orpo/``: ``model/``, ``metrics.jsonl`` (loss, nll_loss, log_odds_ratio, rewards/* per logging
step), ``manifest.json`` last. A rerun resumes from the newest checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import Field, field_validator

from cai.backends.spec import ModelSpec
from cai.config import none_as_null
from cai.errors import UserInputError
from cai.train.data import PREFERENCE_ALIASES, file_digest, load_preferences, resolve_run_input
from cai.train.logs import final_loss
from cai.train.models import load_causal_lm, load_tokenizer
from cai.train.runner import Trained, TrainingRun, identity_config, run_training
from cai.train.settings import TrainSettings

ORPO_METRICS = ("loss", "nll_loss", "log_odds_ratio", "rewards/accuracies", "rewards/margins")


class ORPOStageConfig(TrainSettings):
    """Settings of ``cai orpo``; YAML keys (an ``orpo:`` section or flat keys) and CLI flags use these names."""

    pairs: str | None = Field(
        default="label",
        description="AI-labeled pairs: 'label' = this run's label/preference.jsonl, a prompt/chosen/rejected file, or none",
    )
    sl_pairs: str | None = Field(
        default="revise",
        description="SL-CAI pairs (revision chosen over the first answer): 'revise' = this run's "
        "revise/preference.jsonl, a file, or none",
    )
    _none = field_validator("pairs", "sl_pairs", mode="before")(none_as_null)
    label_field: str = Field(
        default="auto", description="Soft label P(chosen better) of the labeled pairs: auto, none or a field name"
    )
    min_p_chosen: float = Field(
        default=0.5, ge=0.5, le=1.0,
        description="Keep labeled pairs whose label confidence max(p, 1-p) is at least this (0.5 keeps every pair)",
    )
    policy: ModelSpec = Field(
        default_factory=ModelSpec, description="Model to train (default: the base model; ORPO replaces the SFT stage)"
    )
    beta: float = Field(default=0.1, gt=0, description="ORPO lambda: weight of the odds-ratio term next to the NLL")
    max_length: int = Field(default=256, ge=16, description="Max tokens of one training sequence (prompt + answer)")


def _default_lr(cfg: ORPOStageConfig) -> float:
    return 5e-5 if cfg.lora else 8e-6


def load_orpo_pairs(cfg: ORPOStageConfig, run_dir: Path) -> tuple[list[dict], dict[str, Any], dict[str, str]]:
    """The pairs of both sources (labeled pairs flipped or dropped by their label); their counts and file digests."""
    from cai.stages.dpo import _prepare_pairs

    if cfg.pairs is None and cfg.sl_pairs is None:
        raise UserInputError("orpo: pairs and sl_pairs are both none, so there is nothing to train on.",
                             fix="set pairs: label and/or sl_pairs: revise (or a file).")
    rows: list[dict] = []
    info: dict[str, Any] = {}
    digests: dict[str, str] = {}
    for name, value, label_field in (("sl_pairs", cfg.sl_pairs, "none"), ("pairs", cfg.pairs, cfg.label_field)):
        if value is None:
            continue
        path = resolve_run_input(value, run_dir, PREFERENCE_ALIASES, field=name, command="cai orpo")
        got, got_info = load_preferences(path, label_field=label_field)
        if name == "pairs":
            got, kept_info = _prepare_pairs(got, cfg.min_p_chosen)
            got_info.update(kept_info)
        got_info["used"] = len(got)
        rows.extend(dict(r, source=name) for r in got)
        info[name] = got_info
        digests[name] = file_digest(path)
    return rows, info, digests


def run_orpo(cfg: ORPOStageConfig, run_dir: str | Path, *, overwrite: bool = False, progress: bool = True,
             callbacks: list | None = None, on_progress: Callable[[Any], None] | None = None,
             on_ready: Callable[[Any], None] | None = None) -> dict:
    """Run (or resume) ``cai orpo`` into ``run_dir/orpo``. Returns the manifest."""
    from cai.train.models import resolve_policy

    run_dir = Path(run_dir)
    rows, data_info, digests = load_orpo_pairs(cfg, run_dir)
    policy_path, policy_label, policy_source = resolve_policy(cfg.policy, run_dir)

    def train(run: TrainingRun) -> Trained:
        from datasets import Dataset
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        from cai.stages.dpo import _length_filter

        tok = load_tokenizer(policy_path)
        kept, length_info = _length_filter(rows, tok, cfg.max_length)
        if not kept:
            raise UserInputError(f"orpo: no pairs left ({length_info['dropped_prompt_too_long']} prompts longer than "
                                 f"max_length={cfg.max_length}).", fix="raise max_length.")
        ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in kept])
        args = ORPOConfig(**run.trainer_kwargs(cfg, default_lr=_default_lr(cfg)), max_length=cfg.max_length,
                          beta=cfg.beta)
        trainer = ORPOTrainer(model=load_causal_lm(policy_path, tok), args=args, **run.trainer_inputs(cfg, tok, ds))
        fitted = run.fit(trainer)
        return Trained(
            model=trainer.accelerator.unwrap_model(trainer.model),
            tokenizer=tok,
            manifest={
                "policy": {"path": str(policy_path), "label": policy_label, "source": policy_source},
                "data": {**data_info, **length_info, "train_pairs": len(kept),
                         "by_source": {s: sum(r["source"] == s for r in kept) for s in ("sl_pairs", "pairs")}},
                "orpo": {"beta": cfg.beta, "trainer": "trl.experimental.orpo.ORPOTrainer",
                         "final": {k: final_loss(trainer.state.log_history, k) for k in ORPO_METRICS}},
            },
            **fitted,
        )

    identity = {"orpo": identity_config(cfg), "policy": str(policy_path), "data_digests": digests}
    return run_training(run_dir, "orpo", cfg, identity=identity, train=train, overwrite=overwrite, progress=progress,
                        callbacks=callbacks, on_progress=on_progress, on_ready=on_ready)
