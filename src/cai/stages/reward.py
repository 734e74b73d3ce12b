"""RLAIF preference model: a Bradley-Terry reward model trained on AI preference labels, with soft labels.

Model: ``AutoModelForSequenceClassification(num_labels=1)`` on the base LM (full fine-tune by default, LoRA optional).
The reward of an answer is the scalar read at the last token of ``chat_template(prompt + [answer])``; sequences longer
than ``max_length`` keep their last tokens (the end of the answer, where the reward is read). Training and
:class:`RewardScorer` share that encoding exactly.

Soft labels. The labeler gives ``p`` = P(chosen is better) (field ``p_chosen``; ``score_chosen`` as ``cai label``
writes it; ``score`` or ``label``). With the reward difference ``d = r(chosen) - r(rejected)`` and the Bradley-Terry
model P(chosen > rejected) = sigmoid(d), the loss is the cross-entropy between the label and the model's probability::

    L = -[ p * log sigmoid(d) + (1 - p) * log sigmoid(-d) ]

It equals TRL's hard loss ``-log sigmoid(d)`` when p = 1, is symmetric (swapping the answers and using 1 - p gives the
same loss), and its gradient ``dL/dd = sigmoid(d) - p`` is zero exactly where the model's probability equals the label,
so confident labels are pushed apart and 0.5-labels are pulled together: the rewards stay calibrated. (TRL's ``margin``
column instead shifts the hard loss, ``-log sigmoid(d - m)``, which pushes every pair apart without bound, so it is not
used.) Files without a label train with p = 1, the plain Bradley-Terry loss. This is implemented by subclassing
``RewardTrainer.compute_loss``; the label travels to it through a collator, with ``remove_unused_columns=False``.

Held-out evaluation (a seeded ``eval_fraction`` of the pairs, before and after training): accuracy (share of pairs
with r_chosen > r_rejected), mean margin, held-out soft-BT loss, and calibration: pairs are bucketed by
q = sigmoid(d) into equal-width bins over [0, 1]; each bin compares mean q with the mean label p, and the expected
calibration error is ECE = sum_b (n_b / n) * |mean q_b - mean p_b|.

Output ``runs/<run>/reward/``: ``model/`` (sequence-classification folder + tokenizer + ``cai_reward.json``),
``metrics.jsonl``, ``eval.json``, ``manifest.json`` last.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import Field

from cai.backends.spec import ModelSpec
from cai.data.io import write_json
from cai.errors import UserInputError
from cai.seeding import rng, seed_torch
from cai.train.data import Conversation, PreferenceDataSettings, as_messages, file_digest
from cai.train.models import load_tokenizer, resolve_model_path
from cai.train.runner import Trained, TrainingRun, identity_config, run_training
from cai.train.settings import TrainSettings, resolve_device

META_FILE = "cai_reward.json"
LOSS_NAME = "soft Bradley-Terry: -[p*log(sigmoid(d)) + (1-p)*log(sigmoid(-d))], d = r_chosen - r_rejected"


class RewardStageConfig(PreferenceDataSettings, TrainSettings):
    """Settings of ``cai reward``; YAML keys (a ``reward:`` section or flat keys) and CLI flags use these names."""

    eval_fraction: float = Field(default=0.1, ge=0, lt=1, description="Share of pairs held out for evaluation (seeded)")
    calibration_bins: int = Field(default=5, ge=2, le=20, description="Equal-width bins of sigmoid(margin) for the ECE")
    eval_before: bool = Field(default=True, description="Also evaluate the untrained reward head, as a baseline")
    center_rewards_coefficient: float | None = Field(
        default=None, ge=0, description="Penalty on (r_chosen + r_rejected)^2 keeping rewards centred (e.g. 0.01)"
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="Base model for the reward model: 'embedded' or a folder")
    lora: bool = Field(default=False, description="Train LoRA adapters (+ the score head) instead of all weights")


def _default_lr(cfg: RewardStageConfig) -> float:
    return 1e-4 if cfg.lora else 2e-5


# --- the loss -------------------------------------------------------------------------------------------------------
def soft_bt_loss(r_chosen, r_rejected, p_chosen, reduction: str = "mean"):
    """Soft Bradley-Terry loss: binary cross-entropy of sigmoid(r_chosen - r_rejected) against P(chosen better)."""
    import torch.nn.functional as F

    d = (r_chosen - r_rejected).float()
    return F.binary_cross_entropy_with_logits(d, p_chosen.to(d.dtype), reduction=reduction)


# --- encoding & scoring (shared by training, evaluation and RewardScorer) -------------------------------------------
def encode_pair_side(tok, prompt: Conversation, answer: Conversation, max_length: int) -> list[int]:
    """Token ids of chat_template(prompt + answer), keeping the last ``max_length`` tokens."""
    out = tok.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)
    ids = list(out["input_ids"])
    return ids[-max_length:] if len(ids) > max_length else ids


def score_ids(model, pad_id: int, seqs: Sequence[Sequence[int]], batch_size: int) -> list[float]:
    """Rewards of token sequences, batched (similar lengths together), right-padded, without gradients."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out: list[float] = [0.0] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                width = max(len(seqs[i]) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for j, i in enumerate(idx):
                    s = seqs[i]
                    ids[j, : len(s)] = torch.tensor(list(s), dtype=torch.long)
                    mask[j, : len(s)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
                for j, v in zip(idx, logits[:, 0].float().cpu().tolist()):
                    out[j] = float(v)
    finally:
        if was_training:
            model.train()
    return out


def resolve_reward_dir(path: str | Path) -> Path:
    """The model folder itself, or the ``model/`` folder inside a reward stage folder."""
    path = Path(os.path.expanduser(str(path)))
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not has_weights and (path / "model" / "config.json").exists():
        return path / "model"
    return path


def reward_model_of(value: str | None, run_dir: Path) -> Path:
    """The reward model a stage scores with: ``value`` (a model folder or a reward stage folder), else this run's
    ``reward/model``; a clear error naming the fix when there is none."""
    if value is None:
        p = Path(run_dir) / "reward" / "model"
        if not (p / "config.json").exists():
            raise UserInputError(
                f"reward_model: this run has no trained reward model ({p} does not exist).",
                fix=f"run `cai reward --run {Path(run_dir).name}` first (same --runs-dir), or pass --reward-model FOLDER.",
            )
        return p
    p = resolve_reward_dir(value)
    if not (p / "config.json").exists():
        raise UserInputError(
            f"reward_model: '{value}' is not a reward model folder (no config.json).",
            fix="pass the folder written by `cai reward` (runs/RUN/reward/model).",
        )
    return p


class RewardScorer:
    """A trained reward model folder (``runs/<run>/reward/model`` or the stage folder itself) ready to score answers.

    >>> scorer = RewardScorer("runs/demo/reward/model")
    >>> scorer.score(["How do I boil an egg?"], ["Simmer it for nine minutes, then cool it in cold water."])
    """

    def __init__(self, path: str | Path, *, device: str = "auto", dtype: str = "auto", max_length: int | None = None,
                 batch_size: int = 8):
        import torch
        from transformers import AutoModelForSequenceClassification

        path = resolve_reward_dir(path)
        if not (path / "config.json").exists():
            raise UserInputError(
                f"'{path}' is not a reward model folder (no config.json).",
                fix="pass the folder written by `cai reward` (runs/RUN/reward/model).",
            )
        self.path = path
        self.device = resolve_device(device)
        torch_dtype = (torch.bfloat16 if self.device == "cuda" else torch.float32) if dtype == "auto" else getattr(torch, dtype)
        meta_path = path / META_FILE
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        self.max_length = int(max_length or self.meta.get("max_length") or 512)
        self.batch_size = batch_size
        self.tok = load_tokenizer(path)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise UserInputError(f"Could not load a reward model from '{path}': {e}", fix="check the folder.") from e
        if getattr(model.config, "num_labels", None) != 1:
            raise UserInputError(
                f"'{path}' has num_labels={model.config.num_labels}; a reward model outputs one scalar.",
                fix="pass a folder trained by `cai reward`.",
            )
        model.config.pad_token_id = self.tok.pad_token_id
        self.model = model.to(self.device).eval()

    @staticmethod
    def _prompt(p: str | Conversation) -> Conversation:
        return [{"role": "user", "content": p}] if isinstance(p, str) else list(p)

    @staticmethod
    def _answer(a: str | Conversation) -> Conversation:
        return [{"role": "assistant", "content": a}] if isinstance(a, str) else list(a)

    def encode(self, prompt: str | Conversation, answer: str | Conversation) -> list[int]:
        return encode_pair_side(self.tok, self._prompt(prompt), self._answer(answer), self.max_length)

    def score(self, prompts: Sequence[str | Conversation], answers: Sequence[str | Conversation],
              batch_size: int | None = None) -> list[float]:
        """Reward of each (prompt, answer); prompts are strings (one user turn) or message lists."""
        if len(prompts) != len(answers):
            raise ValueError(f"score(): {len(prompts)} prompts but {len(answers)} answers")
        seqs = [self.encode(p, a) for p, a in zip(prompts, answers)]
        return score_ids(self.model, self.tok.pad_token_id, seqs, batch_size or self.batch_size)


# --- evaluation -----------------------------------------------------------------------------------------------------
def preference_metrics(r_chosen: Sequence[float], r_rejected: Sequence[float], p_chosen: Sequence[float],
                       bins: int = 5) -> dict[str, Any]:
    """Accuracy, margins, soft-BT loss and calibration (ECE over ``bins`` equal-width bins of sigmoid(margin))."""
    n = len(r_chosen)
    if n == 0:
        return {"n": 0}
    d = [c - r for c, r in zip(r_chosen, r_rejected)]
    q = [1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x)) for x in d]

    def log_sig(x: float) -> float:
        return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))

    loss = -sum(p * log_sig(x) + (1 - p) * log_sig(-x) for x, p in zip(d, p_chosen)) / n
    table = []
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(n) if (lo <= q[i] < hi) or (b == bins - 1 and q[i] == 1.0)]
        if not members:
            table.append({"lo": lo, "hi": hi, "n": 0})
            continue
        mq = sum(q[i] for i in members) / len(members)
        mp = sum(p_chosen[i] for i in members) / len(members)
        acc = sum(d[i] > 0 for i in members) / len(members)
        ece += len(members) / n * abs(mq - mp)
        table.append({"lo": lo, "hi": hi, "n": len(members), "mean_pred": round(mq, 4), "mean_label": round(mp, 4),
                      "accuracy": round(acc, 4)})
    return {
        "n": n,
        "accuracy": round(sum(x > 0 for x in d) / n, 4),
        "mean_margin": round(sum(d) / n, 4),
        "mean_reward_chosen": round(sum(r_chosen) / n, 4),
        "mean_reward_rejected": round(sum(r_rejected) / n, 4),
        "mean_pred_p_chosen": round(sum(q) / n, 4),
        "mean_label_p_chosen": round(sum(p_chosen) / n, 4),
        "soft_bt_loss": round(loss, 4),
        "ece": round(ece, 4),
        "bins": table,
    }


def _eval_pairs(model, tok, pairs: list[dict], batch_size: int, bins: int) -> dict[str, Any]:
    seqs = [x for r in pairs for x in (r["chosen_ids"], r["rejected_ids"])]
    scores = score_ids(model, tok.pad_token_id, seqs, batch_size)
    return preference_metrics(scores[0::2], scores[1::2], [r["p_chosen"] for r in pairs], bins=bins)


def split_pairs(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded held-out split: at least one eval pair when fraction > 0 and there are 2+ pairs."""
    if fraction <= 0 or len(pairs) < 2:
        return pairs, []
    n_eval = min(len(pairs) - 1, max(1, int(round(fraction * len(pairs)))))
    idx = list(range(len(pairs)))
    rng("reward-split", seed).shuffle(idx)
    held = set(idx[:n_eval])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def _trainer_class():
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class SoftLabelCollator(DataCollatorForPreference):
        """TRL's preference collator plus a ``p_chosen`` tensor (the soft label)."""

        def torch_call(self, examples):
            out = super().torch_call(examples)
            out["p_chosen"] = torch.tensor([float(e["p_chosen"]) for e in examples], dtype=torch.float32)
            return out

    class SoftBTRewardTrainer(RewardTrainer):
        """RewardTrainer whose loss is the soft Bradley-Terry loss on ``p_chosen`` (TRL's metrics are kept)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            p = inputs.pop("p_chosen", None)
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            if p is not None:
                rc, rr = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
                loss = soft_bt_loss(rc, rr, p.to(rc.device))
                coef = self.args.center_rewards_coefficient
                if coef is not None:
                    loss = loss + coef * torch.mean((rc.float() + rr.float()) ** 2)
            return (loss, outputs) if return_outputs else loss

    return SoftLabelCollator, SoftBTRewardTrainer


def load_reward_base(path: str | Path, tok, seed: int):
    """The base LM with a fresh one-output score head (seeded), float32, pad id set."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    seed_torch(seed)
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    return model


def run_reward(cfg: RewardStageConfig, run_dir: str | Path, *, overwrite: bool = False, progress: bool = True,
               callbacks: list | None = None, on_progress: Callable[[Any], None] | None = None,
               on_ready: Callable[[Any], None] | None = None) -> dict:
    """Run (or resume) ``cai reward`` into ``run_dir/reward``. Returns the manifest."""
    run_dir = Path(run_dir)
    data_path, pairs, data_info = cfg.load_pairs(run_dir, "cai reward")
    base_path, base_label = resolve_model_path(cfg.model, field="model")

    def train(run: TrainingRun) -> Trained:
        from datasets import Dataset
        from trl import RewardConfig

        tok = load_tokenizer(base_path)
        truncated = 0
        for r in pairs:
            full_c = len(tok.apply_chat_template(r["prompt"] + r["chosen"], tokenize=True, return_dict=True)["input_ids"])
            full_r = len(tok.apply_chat_template(r["prompt"] + r["rejected"], tokenize=True, return_dict=True)["input_ids"])
            truncated += max(full_c, full_r) > cfg.max_length
            r["chosen_ids"] = encode_pair_side(tok, r["prompt"], r["chosen"], cfg.max_length)
            r["rejected_ids"] = encode_pair_side(tok, r["prompt"], r["rejected"], cfg.max_length)
        train_pairs, eval_pairs = split_pairs(pairs, cfg.eval_fraction, cfg.seed)
        model = load_reward_base(base_path, tok, cfg.seed)
        eval_bs = max(2, cfg.batch_size * 2)
        before = (_eval_pairs(model, tok, eval_pairs, eval_bs, cfg.calibration_bins)
                  if (eval_pairs and cfg.eval_before) else None)
        ds = Dataset.from_list([{"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"],
                                 "p_chosen": r["p_chosen"]} for r in train_pairs])
        args = RewardConfig(
            **run.trainer_kwargs(cfg, default_lr=_default_lr(cfg), remove_unused_columns=False),
            max_length=cfg.max_length,
            center_rewards_coefficient=cfg.center_rewards_coefficient,
            disable_dropout=True,
        )
        collator_cls, trainer_cls = _trainer_class()
        trainer = trainer_cls(
            model=model,
            args=args,
            data_collator=collator_cls(pad_token_id=tok.pad_token_id),
            **run.trainer_inputs(cfg, tok, ds, task_type="SEQ_CLS", modules_to_save=["score"]),
        )
        fitted = run.fit(trainer)
        trained = trainer.accelerator.unwrap_model(trainer.model)
        after = _eval_pairs(trained, tok, eval_pairs, eval_bs, cfg.calibration_bins) if eval_pairs else None
        label_desc = (f"soft labels from field '{data_info['label_field']}'" if data_info["label_field"]
                      else "hard labels (p = 1: no soft-label field)")
        write_json(run.stage.path / "eval.json", {
            "n_eval": len(eval_pairs),
            "n_train": len(train_pairs),
            "eval_fraction": cfg.eval_fraction,
            "calibration_target": f"mean label P(chosen better) per bin of sigmoid(r_chosen - r_rejected); {label_desc}",
            "before_training": before,
            "after_training": after,
            "eval_ids": [r["id"] for r in eval_pairs],
        })
        meta = {"max_length": cfg.max_length, "truncation": "keep_end", "encoding": "chat_template(prompt + [answer])",
                "loss": LOSS_NAME, "base_model": base_label}
        return Trained(
            model=trained,
            tokenizer=tok,
            model_files={META_FILE: meta},
            manifest={
                "base_model": {"path": str(base_path), "label": base_label},
                "data": {**data_info, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                         "truncated_pairs": truncated},
                "loss": {"name": LOSS_NAME, "labels": label_desc,
                         "why": "cross-entropy of the Bradley-Terry probability against the labeler's probability: "
                                "equals the hard loss at p=1 and is minimised where sigmoid(d) = p, so rewards stay "
                                "calibrated"},
                "eval": {k: (after or {}).get(k) for k in ("n", "accuracy", "mean_margin", "ece", "soft_bt_loss")}
                | {"before_accuracy": (before or {}).get("accuracy"), "before_ece": (before or {}).get("ece")},
            },
            **fitted,
        )

    identity = {"reward": identity_config(cfg), "base_model": str(base_path), "data_digest": file_digest(data_path)}
    return run_training(run_dir, "reward", cfg, identity=identity, train=train, outputs={"eval": "eval.json"},
                        overwrite=overwrite, progress=progress, callbacks=callbacks, on_progress=on_progress,
                        on_ready=on_ready)


# --- cai score ------------------------------------------------------------------------------------------------------
def score_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, *, batch_size: int = 8,
               column_map: dict[str, str] | None = None, device: str = "auto") -> dict[str, Any]:
    """Score every row of a file (``prompt`` + ``answer``/``response``/``completion``, or ``messages``) and write
    the rows with a ``reward`` field to ``output_path`` (atomically). Returns a summary."""
    from cai.data.io import write_jsonl
    from cai.data.readers import read_records

    input_path = Path(input_path)
    rows = read_records(input_path, required=(), column_map=column_map, id_prefix="row")
    prompts: list[Conversation] = []
    answers: list[Conversation] = []
    for r in rows:
        if r.get("messages") is not None:
            msgs = as_messages(r["messages"], path=input_path, row=r, field="messages", default_role="user")
            if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
                raise UserInputError(
                    f"{input_path} (id {r['id']}): `messages` must end with the assistant answer to score.",
                    fix="end the conversation with {\"role\": \"assistant\", ...}.",
                )
            prompts.append(msgs[:-1])
            answers.append(msgs[-1:])
            continue
        field = next((f for f in ("answer", "response", "completion") if r.get(f) is not None), None)
        if r.get("prompt") is None or field is None:
            raise UserInputError(
                f"{input_path} (id {r['id']}): a row needs `prompt` plus `answer` (or `response`/`completion`), or "
                f"`messages`. Fields found: {', '.join(sorted(r))}.",
                fix="rename or map the columns: --column prompt=YOUR_PROMPT --column answer=YOUR_ANSWER.",
            )
        prompts.append(as_messages(r["prompt"], path=input_path, row=r, field="prompt", default_role="user"))
        answers.append(as_messages(r[field], path=input_path, row=r, field=field, default_role="assistant"))
    t0 = time.perf_counter()
    scorer = RewardScorer(model_dir, device=device, batch_size=batch_size)
    rewards = scorer.score(prompts, answers)
    seconds = time.perf_counter() - t0
    out_rows = [dict(r, reward=round(v, 6)) for r, v in zip(rows, rewards)]
    write_jsonl(output_path, out_rows)
    return {
        "rows": len(rows),
        "output": str(output_path),
        "model": str(scorer.path),
        "mean": round(sum(rewards) / len(rewards), 4),
        "min": round(min(rewards), 4),
        "max": round(max(rewards), 4),
        "seconds": round(seconds, 2),
    }
