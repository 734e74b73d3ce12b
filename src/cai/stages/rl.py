"""RL-CAI: optimize the policy against the reward model (the AI preference model) with a KL leash to the start.

Algorithms (``algorithm:``):

* ``grpo`` (default) - TRL ``GRPOTrainer``: each prompt is answered ``num_generations`` times, the rewards are
  normalized within the group (the group mean is the baseline, no value model), and a clipped policy-gradient loss
  plus ``beta`` x the per-token KL estimate ``exp(ref - logp) - (ref - logp) - 1`` to the reference is minimized.
  Logged ``kl``: that estimate, averaged per completion token.
* ``rloo`` - TRL ``RLOOTrainer``: REINFORCE with a leave-one-out baseline (each completion's baseline is the mean
  reward of the other ``num_generations - 1`` answers to the same prompt); the KL enters the reward,
  ``r - beta * sum_t (logp_t - ref_t)``. Logged ``kl``: that sum per completion (so it is on a per-answer scale,
  not per token as for GRPO).
* ``ppo`` - PPO with a learned value function, as in the CAI / InstructGPT recipe. TRL 1.16 no longer ships a PPO
  trainer (``trl.experimental.ppo`` was removed in 1.13), and pinning trl 1.12 would conflict with the transformers
  and trl versions every other stage is pinned to, so the toolkit implements a compact PPO itself
  (:func:`ppo_train`): a scalar value head on the policy's last hidden state (shared trunk, like the original
  ``AutoModelForCausalLMWithValueHead``), per-token rewards ``-beta * (logp_t - ref_t)`` with the reward-model score
  added at the last answer token, GAE advantages (``gamma``, ``lam``), whitened; then ``ppo_epochs`` passes of
  clipped policy loss + ``vf_coef`` x clipped value loss over minibatches. Logged ``kl``: sum of ``logp - ref`` per
  completion, as for RLOO.

Every algorithm uses the same reward function (:class:`cai.train.rl_metrics.RewardModelReward` over
:class:`cai.stages.reward.RewardScorer`), which also measures the answers it scores. Each logging step appends to
``metrics.jsonl``: ``reward`` (mean reward-model score), ``kl``, ``completions/mean_length`` (tokens),
``answer_words``, ``answer_chars``, ``refusal_rate`` (the shared refusal classifier), ``repeat_3gram_share`` (share of
the step's answers containing its most common word 3-gram: boilerplate Goodharting), ``distinct_3gram_ratio``; every
scored completion goes to ``samples.jsonl``.

Policy: ``policy`` (default: this run's ``sft/model`` when it exists, else the embedded model); LoRA by default, and
then the reference is the same network with the adapter disabled. Reward model: ``reward_model`` (default this run's
``reward/model``). Prompts: the shipped red-team train split plus (by default) helpful prompts, so that refusing
everything is not rewarded for free.

Output ``runs/<run>/rl/``: ``model/`` (merged policy), ``metrics.jsonl``, ``samples.jsonl``, ``manifest.json`` last.
A rerun continues from the newest checkpoint in ``checkpoints/``; a finished stage is skipped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from cai.backends.spec import ModelSpec
from cai.data.readers import load_prompts
from cai.errors import UserInputError
from cai.runs import StageDir
from cai.train.common import (
    MetricsLogger,
    TrainSettings,
    append_line,
    finish_checkpoints,
    latest_checkpoint,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    param_counts,
    read_metrics,
    resolve_device,
    resolve_policy,
    save_model_folder,
    train_with_resume,
    trainer_kwargs,
    training_summary,
    trim_metrics,
)
from cai.train.rl_metrics import METRIC_KEYS, RewardModelReward, refusal_classifier

SUMMARY_KEYS = ("reward", "kl", "completions/mean_length", *METRIC_KEYS)
KL_DEFINITION = {
    "grpo": "per-token mean of exp(ref-logp) - (ref-logp) - 1 (k3 estimator), over completion tokens",
    "rloo": "per-completion sum over tokens of (logp - ref)",
    "ppo": "per-completion sum over tokens of (logp - ref)",
}


class RLStageConfig(TrainSettings):
    """Settings of ``cai rl``; YAML keys (an ``rl:`` section or flat keys) and CLI flags use these names."""

    algorithm: Literal["grpo", "rloo", "ppo"] = Field(
        default="grpo", description="grpo (group-normalized rewards), rloo (leave-one-out baseline) or ppo (value head + GAE)"
    )
    policy: ModelSpec | None = Field(
        default=None, description="Policy to train: null = this run's sft/model if present, else 'embedded'; or a folder"
    )
    reward_model: str | None = Field(
        default=None, description="Reward model folder: null = this run's reward/model (written by `cai reward`)"
    )
    prompts: str = Field(default="redteam", description="Red-team prompts: 'redteam' (shipped) or a file path")
    prompt_split: str = Field(default="train", description="Split of the prompt file: train, eval or all")
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column, e.g. {prompt: question}")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N red-team prompts")
    helpful: str | None = Field(
        default="helpful", description="Helpful prompts mixed in ('helpful' = shipped train split, or a file); null to skip"
    )
    helpful_limit: int | None = Field(default=None, ge=0, description="Use only the first N helpful prompts")
    beta: float = Field(default=0.05, ge=0, description="KL coefficient: strength of the leash to the reference policy (0 = none)")
    num_generations: int = Field(default=4, ge=2, description="Answers sampled per prompt per step (the group for grpo/rloo)")
    max_completion_length: int = Field(default=128, ge=1, description="Max new tokens per sampled answer")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the rollouts")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling of the rollouts")
    reward_batch_size: int = Field(default=8, ge=1, description="Sequences per reward-model forward pass")
    # TrainSettings fields whose meaning or default differs for RL
    batch_size: int = Field(default=2, ge=1, description="Prompts per optimizer step (each answered num_generations times)")
    max_length: int = Field(default=256, ge=8, description="Max prompt tokens; longer prompts are left out")
    logging_steps: int = Field(default=1, ge=1, description="Write a metrics.jsonl record every N steps")
    save_steps: int = Field(default=10, ge=1, description="Write a resumable checkpoint every N steps")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Share of the steps spent warming the learning rate up")
    # PPO only
    ppo_epochs: int = Field(default=2, ge=1, description="ppo: optimization passes over each batch of rollouts")
    ppo_minibatches: int = Field(default=2, ge=1, description="ppo: minibatches per pass (rollouts are split evenly)")
    cliprange: float = Field(default=0.2, gt=0, description="ppo: clip range of the policy ratio")
    cliprange_value: float = Field(default=0.2, gt=0, description="ppo: clip range of the value update")
    vf_coef: float = Field(default=0.1, ge=0, description="ppo: weight of the value loss")
    gamma: float = Field(default=1.0, ge=0, le=1, description="ppo: discount per token")
    lam: float = Field(default=0.95, ge=0, le=1, description="ppo: GAE lambda")


def _default_lr(cfg: RLStageConfig) -> float:
    return 2e-5 if cfg.lora else 1e-6


def resolve_reward_model(cfg: RLStageConfig, run_dir: Path) -> Path:
    from cai.stages.reward import resolve_reward_dir

    if cfg.reward_model is None:
        p = run_dir / "reward" / "model"
        if not (p / "config.json").exists():
            raise UserInputError(
                f"reward_model: this run has no trained reward model ({p} does not exist).",
                fix=f"run `cai reward --run {run_dir.name}` first (same --runs-dir), or pass --reward-model FOLDER.",
            )
        return p
    p = resolve_reward_dir(cfg.reward_model)
    if not (p / "config.json").exists():
        raise UserInputError(
            f"reward_model: '{cfg.reward_model}' is not a reward model folder (no config.json).",
            fix="pass the folder written by `cai reward` (runs/RUN/reward/model).",
        )
    return p


def load_rl_prompts(cfg: RLStageConfig, tok) -> tuple[list[dict], dict[str, int]]:
    """Red-team (+ helpful) prompts as rows {id, kind, prompt: [user message]}; prompts over max_length are left out."""
    red = load_prompts(cfg.prompts, split=cfg.prompt_split, column_map=cfg.column_map, limit=cfg.limit)
    helpful = []
    if cfg.helpful and cfg.helpful_limit != 0:
        helpful = load_prompts(cfg.helpful, split="train", limit=cfg.helpful_limit)
    rows, too_long = [], 0
    for kind, src in (("redteam", red), ("helpful", helpful)):
        for r in src:
            msgs = [{"role": "user", "content": str(r["prompt"])}]
            n = len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
            if n > cfg.max_length:
                too_long += 1
                continue
            rows.append({"id": str(r.get("id", len(rows))), "kind": kind, "prompt": msgs})
    info = {"redteam_prompts": sum(r["kind"] == "redteam" for r in rows),
            "helpful_prompts": sum(r["kind"] == "helpful" for r in rows), "dropped_prompt_too_long": too_long}
    if not rows:
        raise UserInputError(
            f"No RL prompts left ({too_long} longer than max_length={cfg.max_length} tokens).",
            fix="raise max_length, or check prompts / limit / helpful.",
        )
    return rows, info


def _first_last(history: list[dict], key: str) -> tuple[float | None, float | None]:
    vals = [float(r[key]) for r in history if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return (vals[0], vals[-1]) if vals else (None, None)


def _metric_summary(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    out = {}
    for k in SUMMARY_KEYS:
        first, last = _first_last(rows, k)
        out[k] = {"first": first, "last": last}
    return out


def run_rl(cfg: RLStageConfig, run_dir: str | Path, *, overwrite: bool = False, progress: bool = True,
           callbacks: list | None = None) -> dict:
    """Run (or resume) ``cai rl`` into ``run_dir/rl``. Returns the manifest."""
    run_dir = Path(run_dir)
    policy_path, policy_label, policy_source = resolve_policy(cfg.policy, run_dir)
    reward_path = resolve_reward_model(cfg, run_dir)
    stage = StageDir(run_dir, "rl")
    state = stage.begin(
        {"rl": cfg.model_dump(mode="json"), "policy": str(policy_path), "reward_model": str(reward_path)},
        overwrite=overwrite,
    )
    if state == "complete":
        return stage.manifest()

    from cai.stages.reward import RewardScorer

    device = resolve_device(cfg.device)
    tok = load_tokenizer(policy_path)
    rows, data_info = load_rl_prompts(cfg, tok)
    ckpt_dir = stage.path / "checkpoints"
    metrics_path = stage.path / "metrics.jsonl"
    samples_path = stage.path / "samples.jsonl"
    _, resume_step = latest_checkpoint(ckpt_dir) if state == "resume" else (None, 0)
    trim_metrics(samples_path, resume_step)
    scorer = RewardScorer(reward_path, device=cfg.device, batch_size=cfg.reward_batch_size)
    reward_fn = RewardModelReward(scorer, samples_path=samples_path, batch_size=cfg.reward_batch_size)
    t0 = time.perf_counter()
    if cfg.algorithm == "ppo":
        model, training, params = ppo_train(cfg, policy_path, tok, rows, reward_fn, stage.path, state, device,
                                            progress=progress, callbacks=callbacks)
    else:
        model, training, params = _trl_train(cfg, policy_path, tok, rows, reward_fn, ckpt_dir, metrics_path, state,
                                             device, progress=progress, callbacks=callbacks, t0=t0)
    save_model_folder(model, tok, stage.path / "model")
    finish_checkpoints(ckpt_dir, cfg.keep_checkpoints)
    logged = read_metrics(metrics_path)
    _, refusal_name = refusal_classifier()
    manifest = {
        "algorithm": cfg.algorithm,
        "policy": {"path": str(policy_path), "label": policy_label, "source": policy_source},
        "reward_model": str(reward_path),
        "reference": "the policy with its LoRA adapter disabled" if cfg.lora else "a frozen copy of the starting policy",
        "data": {**data_info, "train_prompts": len(rows)},
        "rl": {
            "beta": cfg.beta,
            "num_generations": cfg.num_generations,
            "max_completion_length": cfg.max_completion_length,
            "completions_per_step": cfg.batch_size * cfg.grad_accum * cfg.num_generations,
            "kl_definition": KL_DEFINITION[cfg.algorithm] if cfg.beta > 0 else "not measured (beta = 0: no reference)",
            "refusal_classifier": refusal_name,
            "metrics": _metric_summary(logged),
        },
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                 "target_modules": cfg.lora_target_modules, "merged": True} if cfg.lora else None,
        "params": params,
        "training": training,
        "outputs": {"model": "model", "metrics": "metrics.jsonl", "samples": "samples.jsonl"},
        "config": cfg.model_dump(mode="json"),
    }
    stage.finish(manifest)
    return manifest


# --- GRPO / RLOO through TRL ----------------------------------------------------------------------------------------
def _trl_train(cfg: RLStageConfig, policy_path: Path, tok, rows: list[dict], reward_fn: RewardModelReward,
               ckpt_dir: Path, metrics_path: Path, state: str, device: str, *, progress: bool,
               callbacks: list | None, t0: float):
    from datasets import Dataset

    if cfg.algorithm == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer

    kw = trainer_kwargs(cfg, ckpt_dir, default_lr=_default_lr(cfg), progress=progress, remove_unused_columns=False)
    kw["per_device_train_batch_size"] = cfg.batch_size * cfg.num_generations
    kw["per_device_eval_batch_size"] = cfg.batch_size * cfg.num_generations
    args = Config(
        **kw,
        beta=cfg.beta,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        shuffle_dataset=True,
    )
    model = load_causal_lm(policy_path, tok)
    ds = Dataset.from_list(rows)
    trainer = Trainer(
        model=model,
        reward_funcs=reward_fn,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=lora_config(cfg, "CAUSAL_LM") if cfg.lora else None,
        callbacks=[MetricsLogger(metrics_path), *(callbacks or [])],
    )
    params = param_counts(trainer.model)
    result, resumed = train_with_resume(trainer, ckpt_dir, metrics_path, state)
    seconds = time.perf_counter() - t0
    training = training_summary(trainer, result, seconds, resumed, device)
    return trainer.accelerator.unwrap_model(trainer.model), training, params


# --- PPO (own loop) -------------------------------------------------------------------------------------------------
def masked_mean(x, mask, dim=None):
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x, mask, eps: float = 1e-8):
    """(x - mean) / std over the unmasked entries; masked entries become 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * (var + eps).rsqrt() * mask


def completion_mask(completion_ids, eos_ids: set[int]):
    """1 for every generated token up to and including the first end-of-sequence token, 0 after it."""
    import torch

    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= completion_ids == e
    # number of eos tokens strictly before position t
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (before == 0).long()


def gae_advantages(rewards, values, mask, gamma: float, lam: float):
    """Generalized advantage estimation over per-token rewards; ``mask`` is a contiguous prefix of 1s per row.

    Returns ``(advantages, returns)`` with ``returns = advantages + values``; both 0 where ``mask`` is 0.
    """
    import torch

    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        cont = mask[:, t + 1].to(rewards.dtype) if t + 1 < T else torch.zeros_like(last)
        next_v = values[:, t + 1] * cont if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * cont * last
        adv[:, t] = last
    m = mask.to(rewards.dtype)
    return adv * m, (adv + values) * m


def ppo_losses(new_logp, old_logp, advantages, new_values, old_values, returns, mask, cliprange: float,
               cliprange_value: float):
    """Clipped PPO policy loss and clipped value loss (masked token means) and their diagnostics."""
    import torch

    m = mask.to(new_logp.dtype)
    ratio = torch.exp(new_logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg1, pg2), m)
    v_clipped = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    vf_loss = 0.5 * masked_mean(torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2), m)
    with torch.no_grad():
        stats = {
            "clipfrac": float(masked_mean((pg2 > pg1).float(), m)),
            "approx_kl": float(0.5 * masked_mean((new_logp - old_logp) ** 2, m)),
            "vf_clipfrac": float(masked_mean(((new_values - returns) ** 2 < (v_clipped - returns) ** 2).float(), m)),
        }
    return pg_loss, vf_loss, stats


class _PPOPolicy:
    """The policy (optionally LoRA-wrapped), its value head and its reference, with the forward passes PPO needs."""

    def __init__(self, cfg: RLStageConfig, policy_path: Path, tok, device: str):
        import torch

        self.cfg, self.tok, self.device = cfg, tok, device
        model = load_causal_lm(policy_path, tok)
        self.ref = None
        if cfg.lora:
            from peft import get_peft_model

            model = get_peft_model(model, lora_config(cfg, "CAUSAL_LM"))
        elif cfg.beta > 0:
            self.ref = load_causal_lm(policy_path, tok).to(device).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        self.model = model.to(device).eval()  # dropout off: rollout and update log-probs agree
        g = torch.Generator().manual_seed(cfg.seed)
        self.value_head = torch.nn.Linear(model.config.hidden_size, 1)
        with torch.no_grad():
            self.value_head.weight.copy_(torch.randn(self.value_head.weight.shape, generator=g) * 1e-3)
            self.value_head.bias.zero_()
        self.value_head.to(device)
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(tok.eos_token_id)

    def trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())

    def trainable_state(self) -> dict:
        return {
            "policy": {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad},
            "value_head": {k: v.detach().cpu().clone() for k, v in self.value_head.state_dict().items()},
        }

    def load_trainable_state(self, state: dict) -> None:
        import torch

        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in state["policy"].items():
                params[n].copy_(v.to(params[n].device))
        self.value_head.load_state_dict(state["value_head"])

    def rollout(self, prompts: list[list[dict]], seed: int):
        """Sample one answer per prompt. Returns (ids, attention, prompt width, completion ids, completion mask)."""
        import torch

        enc = [self.tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for p in prompts]
        P = max(len(e) for e in enc)
        pad = self.tok.pad_token_id
        ids = torch.full((len(enc), P), pad, dtype=torch.long)
        attn = torch.zeros((len(enc), P), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, P - len(e):] = torch.tensor(list(e))
            attn[i, P - len(e):] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=attn, do_sample=True, temperature=self.cfg.temperature,
                top_p=self.cfg.top_p, top_k=0, max_new_tokens=self.cfg.max_completion_length,
                pad_token_id=pad, eos_token_id=sorted(self.eos_ids),
            )
        comp = out[:, P:]
        if comp.shape[1] == 0:  # nothing generated at all: keep one (eos) token so every row has an action
            comp = torch.full((len(enc), 1), self.tok.eos_token_id, dtype=torch.long, device=self.device)
        cmask = completion_mask(comp, self.eos_ids)
        comp = torch.where(cmask.bool(), comp, torch.full_like(comp, pad))
        full = torch.cat([ids, comp], dim=1)
        full_attn = torch.cat([attn, cmask], dim=1)
        return full, full_attn, P, comp, cmask

    def _forward(self, model, ids, attn, P, with_values: bool):
        import torch

        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                    output_hidden_states=with_values)
        logits = out.logits[:, P - 1 : -1].float() / self.cfg.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, ids[:, P:].unsqueeze(-1)).squeeze(-1)
        values = entropy = None
        if with_values:
            h = out.hidden_states[-1][:, P - 1 : -1]
            values = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, values, entropy

    def logp_values(self, ids, attn, P):
        """Policy log-probs of the completion tokens, the value of the state before each, and the entropy."""
        return self._forward(self.model, ids, attn, P, True)

    def ref_logp(self, ids, attn, P):
        import torch

        with torch.no_grad():
            if self.ref is not None:
                return self._forward(self.ref, ids, attn, P, False)[0]
            with self.model.disable_adapter():
                return self._forward(self.model, ids, attn, P, False)[0]


def _save_ppo_checkpoint(ckpt_dir: Path, step: int, pol: _PPOPolicy, opt, sched, keep: int) -> None:
    import shutil

    import torch

    target = ckpt_dir / f"checkpoint-{step}"
    tmp = ckpt_dir / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save({"trainable": pol.trainable_state(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
               tmp / "ppo_state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")  # written last
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    olds = sorted((int(p.name.rsplit("-", 1)[1]), p) for p in ckpt_dir.glob("checkpoint-*") if p.is_dir())
    for _, p in olds[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def _batch_indices(n_rows: int, step: int, per_step: int, seed: int) -> tuple[list[int], float]:
    """Prompt indices of 0-based ``step``: consecutive slices of seeded per-epoch permutations (resume-stable)."""
    out = []
    pos = step * per_step
    while len(out) < per_step:
        epoch, k = divmod(pos, n_rows)
        order = list(range(n_rows))
        random.Random(f"{seed}:ppo-epoch:{epoch}").shuffle(order)
        out.append(order[k])
        pos += 1
    return out, (step + 1) * per_step / n_rows


def ppo_train(cfg: RLStageConfig, policy_path: Path, tok, rows: list[dict], reward_fn: RewardModelReward,
              stage_path: Path, state: str, device: str, *, progress: bool = True, callbacks: list | None = None):
    """Own PPO loop (see the module docstring). Returns (policy model, training summary, parameter counts)."""
    import shutil
    from types import SimpleNamespace

    import torch
    from transformers import get_scheduler

    from cai.train.common import precision_name, use_bf16

    ckpt_dir = stage_path / "checkpoints"
    metrics_path = stage_path / "metrics.jsonl"
    torch.manual_seed(cfg.seed)
    pol = _PPOPolicy(cfg, policy_path, tok, device)
    per_step = cfg.batch_size * cfg.grad_accum
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(rows) / per_step))
    lr = cfg.learning_rate if cfg.learning_rate is not None else _default_lr(cfg)
    opt = torch.optim.AdamW(pol.trainable(), lr=lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
                          num_training_steps=total)
    start, resumed_from = 0, None
    if state == "resume":
        resumed_from, start = latest_checkpoint(ckpt_dir)
        if resumed_from:
            blob = torch.load(Path(resumed_from) / "ppo_state.pt", map_location="cpu", weights_only=False)
            pol.load_trainable_state(blob["trainable"])
            opt.load_state_dict(blob["optimizer"])
            sched.load_state_dict(blob["scheduler"])
    elif ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    trim_metrics(metrics_path, start)
    params = {"total": sum(p.numel() for p in pol.model.parameters()) + sum(p.numel() for p in pol.value_head.parameters()),
              "trainable": sum(p.numel() for p in pol.trainable())}
    bf16 = use_bf16(device)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    pending: dict[str, list[float]] = {}
    losses: list[float] = []
    t0 = time.perf_counter()
    t_step = time.perf_counter()

    def log_metric(name: str, value: float) -> None:
        pending.setdefault(name, []).append(float(value))

    for step in range(start, total):
        idx, epoch = _batch_indices(len(rows), step, per_step, cfg.seed)
        prompts = [rows[i]["prompt"] for i in idx for _ in range(cfg.num_generations)]
        # --- rollout and scoring -------------------------------------------------------------------------------
        with autocast():
            ids, attn, P, comp, cmask = pol.rollout(prompts, seed=cfg.seed * 1_000_003 + step)
            with torch.no_grad():
                old_logp, old_values, entropy = pol.logp_values(ids, attn, P)
                ref_logp = pol.ref_logp(ids, attn, P) if cfg.beta > 0 else old_logp
        texts = [t.strip() for t in tok.batch_decode(comp, skip_special_tokens=True)]
        scores = reward_fn(prompts=prompts, completions=[[{"role": "assistant", "content": t}] for t in texts],
                           log_metric=log_metric, trainer_state=SimpleNamespace(global_step=step))
        scores_t = torch.tensor(scores, dtype=torch.float32, device=ids.device)
        m = cmask.float()
        eos_t = torch.tensor(sorted(pol.eos_ids), device=comp.device)
        kl_tok = (old_logp - ref_logp) * m
        rewards = -cfg.beta * kl_tok
        last = (cmask.sum(1) - 1).clamp(min=0)
        rewards[torch.arange(len(last)), last] += scores_t
        adv, returns = gae_advantages(rewards, old_values * m, cmask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, m)
        # --- optimization -------------------------------------------------------------------------------------
        stats: dict[str, list[float]] = {}
        grad_norms = []
        R = ids.shape[0]
        mb = max(1, math.ceil(R / cfg.ppo_minibatches))
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(R, generator=g).to(ids.device)
            for s in range(0, R, mb):
                j = perm[s : s + mb]
                with autocast():
                    new_logp, new_values, _ = pol.logp_values(ids[j], attn[j], P)
                pg_loss, vf_loss, st = ppo_losses(new_logp, old_logp[j], adv[j], new_values, old_values[j],
                                                  returns[j], cmask[j], cfg.cliprange, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(pol.trainable(), 1.0)))
                opt.step()
                for k, v in {"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), "loss": loss.item(), **st}.items():
                    stats.setdefault(k, []).append(v)
        current_lr = sched.get_last_lr()[0]
        sched.step()
        done = step + 1
        losses.append(sum(stats["loss"]) / len(stats["loss"]))
        seq_kl = kl_tok.sum(1)
        for k, v in {
            "reward": float(scores_t.mean()),
            "reward_std": float(scores_t.std()) if len(scores) > 1 else 0.0,
            "kl": float(seq_kl.mean()) if cfg.beta > 0 else None,
            "non_score_reward": float((-cfg.beta * seq_kl).mean()),
            "completions/mean_length": float(cmask.sum(1).float().mean()),
            "completions/clipped_ratio": float(1.0 - (torch.isin(comp, eos_t) & cmask.bool()).any(1).float().mean()),
            "entropy": float(masked_mean(entropy, m)),
            "value_mean": float(masked_mean(old_values, m)),
            "grad_norm": sum(grad_norms) / len(grad_norms),
            **{k2: sum(v2) / len(v2) for k2, v2 in stats.items()},
        }.items():
            if v is not None:
                pending.setdefault(k, []).append(v)
        if done % cfg.logging_steps == 0 or done == 1 or done == total:
            row = {"step": done, "epoch": round(epoch, 4), "learning_rate": current_lr}
            row.update({k: sum(v) / len(v) for k, v in sorted(pending.items())})
            row.update(step_time=round(time.perf_counter() - t_step, 3), time=round(time.time(), 3))
            append_line(metrics_path, json.dumps(row))
            pending.clear()
            if progress:
                print(f"ppo step {done}/{total}: reward {row.get('reward', float('nan')):.4f} "
                      f"kl {row.get('kl', float('nan')):.4f} loss {row['loss']:.4f}", flush=True)
        t_step = time.perf_counter()
        if done % cfg.save_steps == 0 and done < total:
            _save_ppo_checkpoint(ckpt_dir, done, pol, opt, sched, cfg.save_total_limit)
            for cb in callbacks or []:
                if hasattr(cb, "on_save"):
                    cb.on_save(None, SimpleNamespace(global_step=done), None)
    seconds = time.perf_counter() - t0
    steps_here = total - start
    training = {
        "steps": total,
        "epochs": round(total * per_step / len(rows), 4),
        "final_loss": losses[-1] if losses else None,
        "mean_train_loss": sum(losses) / len(losses) if losses else None,
        "learning_rate": lr,
        "effective_batch_size": per_step * cfg.num_generations,
        "device": device,
        "precision": precision_name(device),
        "resumed_from": os.path.basename(resumed_from) if resumed_from else None,
        "seconds_this_session": round(seconds, 2),
        "steps_this_session": steps_here,
        "seconds_per_step": round(seconds / steps_here, 3) if steps_here > 0 else None,
    }
    return pol.model, training, params
