"""PPO for ``cai rl --algorithm ppo``: the toolkit's own compact loop (TRL 1.16 ships no PPO trainer).

The recipe of the CAI / InstructGPT papers, on one network:

* value head: a scalar ``Linear`` on the policy's last hidden state (shared trunk), started near zero (seeded);
* rollouts: one sampled answer per prompt copy (``num_generations`` copies of ``batch_size x grad_accum`` prompts per
  step, chosen as consecutive slices of seeded per-epoch permutations, so a resumed run sees the same prompts);
* rewards per token: ``-beta * (logp_t - ref_t)``, plus the reward-model score at the last answer token; the reference
  is the policy with its LoRA adapter disabled (or a frozen copy for a full fine-tune);
* GAE advantages (``gamma``, ``lam``), whitened over the batch; then ``ppo_epochs`` passes of clipped policy loss +
  ``vf_coef`` x clipped value loss over ``ppo_minibatches`` minibatches, gradients clipped at norm 1.

Each logging step appends a record to ``metrics.jsonl`` (reward, kl, losses, clip fractions, entropy, the reward
function's answer metrics) and reports to the stage's progress line. A checkpoint (trainable weights, value head,
optimizer and scheduler, ``trainer_state.json`` written last) is saved every ``save_steps`` and at the last step, so a
kill at any point resumes from the newest one. Trackers named in ``report_to`` receive every record through
transformers' own integration callbacks, as they would from a TRL trainer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from cai.seeding import rng, seed_torch, step_seed, torch_generator
from cai.train.logs import append_line
from cai.train.models import load_causal_lm, lora_config
from cai.train.settings import resolve_report_to, use_bf16

ROLLOUTS, MINIBATCHES = 0, 1
"""Streams of :func:`cai.seeding.step_seed`: the rollout sampling and the minibatch order of each step."""

if TYPE_CHECKING:
    from cai.stages.rl import RLStageConfig
    from cai.train.rl_metrics import RewardModelReward
    from cai.train.runner import TrainingRun


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

    def __init__(self, cfg: "RLStageConfig", policy_path: Path, tok, device: str):
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
        g = torch_generator(cfg.seed)
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


def _save_checkpoint(ckpt_dir: Path, step: int, pol: _PPOPolicy, opt, sched, keep: int) -> None:
    """Write ``checkpoint-<step>`` atomically (``trainer_state.json`` last, then a rename); keep the newest ``keep``."""
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
        rng(seed, "ppo-epoch", epoch).shuffle(order)
        out.append(order[k])
        pos += 1
    return out, (step + 1) * per_step / n_rows


class _Trackers:
    """transformers' integration callbacks (wandb, tensorboard, trackio...) fed by this loop's log records."""

    def __init__(self, names: list[str], run: "TrainingRun", cfg: "RLStageConfig", model):
        from transformers import TrainerControl, TrainerState, TrainingArguments
        from transformers.integrations import get_reporting_integration_callbacks

        self.args = TrainingArguments(output_dir=str(run.ckpt_dir), report_to=names, run_name=run.run_name,
                                      logging_steps=cfg.logging_steps, use_cpu=run.device == "cpu", disable_tqdm=True)
        self.state, self.control = TrainerState(), TrainerControl()
        self.callbacks = [cls() for cls in get_reporting_integration_callbacks(names)]
        for cb in self.callbacks:
            cb.on_train_begin(self.args, self.state, self.control, model=model)

    def log(self, step: int, row: dict[str, Any]) -> None:
        self.state.global_step = step
        logs = {k: v for k, v in row.items() if k not in ("step", "time") and isinstance(v, (int, float))}
        for cb in self.callbacks:
            cb.on_log(self.args, self.state, self.control, logs=logs)

    def close(self) -> None:
        for cb in self.callbacks:
            cb.on_train_end(self.args, self.state, self.control)


def ppo_train(cfg: "RLStageConfig", policy_path: Path, tok, rows: list[dict], reward_fn: "RewardModelReward",
              run: "TrainingRun", default_lr: float):
    """The PPO loop (see the module docstring). Returns ``(policy model, training summary, parameter counts)``."""
    import torch
    from transformers import get_scheduler

    device = run.device
    seed_torch(cfg.seed)
    pol = _PPOPolicy(cfg, policy_path, tok, device)
    per_step = cfg.batch_size * cfg.grad_accum
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(rows) / per_step))
    lr = cfg.learning_rate if cfg.learning_rate is not None else default_lr
    opt = torch.optim.AdamW(pol.trainable(), lr=lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
                          num_training_steps=total)
    start = 0
    if run.resume_from:
        blob = torch.load(Path(run.resume_from) / "ppo_state.pt", map_location="cpu", weights_only=False)
        pol.load_trainable_state(blob["trainable"])
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        start = run.resume_step
    params = {"total": sum(p.numel() for p in pol.model.parameters()) + sum(p.numel() for p in pol.value_head.parameters()),
              "trainable": sum(p.numel() for p in pol.trainable())}
    bf16 = use_bf16(device)
    names = resolve_report_to(cfg.report_to)
    trackers = _Trackers(names, run, cfg, pol.model) if names else None

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    pending: dict[str, list[float]] = {}
    losses: list[float] = []
    t0 = time.perf_counter()
    t_step = time.perf_counter()
    run.reporter.start(total, start)

    def log_metric(name: str, value: float) -> None:
        pending.setdefault(name, []).append(float(value))

    for step in range(start, total):
        idx, epoch = _batch_indices(len(rows), step, per_step, cfg.seed)
        prompts = [rows[i]["prompt"] for i in idx for _ in range(cfg.num_generations)]
        # --- rollout and scoring -------------------------------------------------------------------------------
        with autocast():
            ids, attn, P, comp, cmask = pol.rollout(prompts, seed=step_seed(cfg.seed, step, ROLLOUTS))
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
        g = torch_generator(step_seed(cfg.seed, step, MINIBATCHES))
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
            append_line(run.metrics_path, json.dumps(row))
            pending.clear()
            run.reporter.logged(done, row)
            if trackers is not None:
                trackers.log(done, row)
        else:
            run.reporter.step(done)
        t_step = time.perf_counter()
        if done % cfg.save_steps == 0 or done == total:  # the last step too: a kill before the manifest loses nothing
            _save_checkpoint(run.ckpt_dir, done, pol, opt, sched, cfg.save_total_limit)
            for cb in run.extra_callbacks:
                if hasattr(cb, "on_save"):
                    cb.on_save(None, SimpleNamespace(global_step=done), None)
    if trackers is not None:
        trackers.close()
    training = run.summary(
        steps=total,
        epochs=total * per_step / len(rows),
        final_loss=losses[-1] if losses else None,
        mean_train_loss=sum(losses) / len(losses) if losses else None,
        learning_rate=lr,
        effective_batch_size=per_step * cfg.num_generations,
        seconds=time.perf_counter() - t0,
    )
    return pol.model, training, params
