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
  (:func:`cai.train.ppo.ppo_train`): a scalar value head on the policy's last hidden state (shared trunk, like the original
  ``AutoModelForCausalLMWithValueHead``), per-token rewards ``-beta * (logp_t - ref_t)`` with the reward-model score
  added at the last answer token, GAE advantages (``gamma``, ``lam``), whitened; then ``ppo_epochs`` passes of
  clipped policy loss + ``vf_coef`` x clipped value loss over minibatches. Logged ``kl``: sum of ``logp - ref`` per
  completion, as for RLOO.

Every algorithm uses the same reward function (:class:`cai.train.rl_metrics.RewardModelReward`), which also measures
the answers it scores. Its scorer is the reward model (``reward: model``, default: :class:`cai.stages.reward.RewardScorer`)
or, for direct RLAIF (``reward: constitution``, Lee et al. 2023), the labeler itself: each answer is rated 1-9 against
``ensemble`` sampled principles and the reward is the expected rating in [0, 1] (:mod:`cai.labeling.rating`); no
reward model is trained or read, and the labeler's calls and seconds are logged per step (``labeler/*``) and totalled in
the manifest's ``reward`` section (:mod:`cai.train.direct_reward`). Each logging step appends to
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

from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator

from cai.backends.spec import ModelSpec
from cai.config import none_as_null
from cai.data.readers import load_prompts
from cai.errors import UserInputError
from cai.train.logs import first_last, read_metrics
from cai.train.models import load_causal_lm, load_tokenizer, resolve_policy
from cai.train.ppo import (  # noqa: F401 - the PPO pieces stay importable from here
    _batch_indices,
    completion_mask,
    gae_advantages,
    masked_whiten,
    ppo_losses,
    ppo_train,
)
from cai.stages.reward import reward_model_of
from cai.train.direct_reward import DIRECT_FIELDS, DirectRewardSettings, constitution_scorer, reward_block
from cai.train.rl_metrics import METRIC_KEYS, RewardModelReward, refusal_classifier
from cai.train.vllm_rollouts import VllmRollouts, trl_vllm_kwargs
from cai.train.runner import Trained, TrainingRun, identity_config, run_training
from cai.train.settings import TrainSettings

SUMMARY_KEYS = ("reward", "kl", "completions/mean_length", *METRIC_KEYS)
LABELER_KEYS = ("labeler/calls", "labeler/requests", "labeler/seconds", "labeler/abstained", "labeler/rating_mass")
KL_DEFINITION = {
    "grpo": "per-token mean of exp(ref-logp) - (ref-logp) - 1 (k3 estimator), over completion tokens",
    "rloo": "per-completion sum over tokens of (logp - ref)",
    "ppo": "per-completion sum over tokens of (logp - ref)",
}


class RLStageConfig(DirectRewardSettings, TrainSettings):
    """Settings of ``cai rl``; YAML keys (an ``rl:`` section or flat keys) and CLI flags use these names."""

    algorithm: Literal["grpo", "rloo", "ppo"] = Field(
        default="grpo", description="grpo (group-normalized rewards), rloo (leave-one-out baseline) or ppo (value head + GAE)"
    )
    policy: ModelSpec | None = Field(
        default=None, description="Policy to train: null = this run's sft/model if present, else 'embedded'; or a folder"
    )
    reward_model: str | None = Field(
        default=None,
        description="Reward model folder: null = this run's reward/model (written by `cai reward`); unused with reward: constitution",
    )
    prompts: str = Field(default="redteam", description="Red-team prompts: 'redteam' (shipped) or a file path")
    prompt_split: str = Field(default="train", description="Split of the prompt file: train, eval or all")
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column, e.g. {prompt: question}")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N red-team prompts")
    helpful: str | None = Field(
        default="helpful", description="Helpful prompts mixed in ('helpful' = shipped train split, or a file); null to skip"
    )
    _helpful_none = field_validator("helpful", mode="before")(none_as_null)  # `--helpful none` means null
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
    vllm: VllmRollouts | None = Field(
        default=None,
        description="grpo/rloo on a GPU: rollouts on vLLM, {mode: colocate} or {mode: server, server_base_url: URL} "
        "(TRL's use_vllm; null = the policy generates)",
    )
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


def run_rl(cfg: RLStageConfig, run_dir: str | Path, *, overwrite: bool = False, progress: bool = True,
           callbacks: list | None = None, on_progress: Callable[[Any], None] | None = None,
           on_ready: Callable[[Any], None] | None = None, pool: Any = None) -> dict:
    """Run (or resume) ``cai rl`` into ``run_dir/rl``. Returns the manifest. ``pool``: the backend pool the labeler
    comes from (``reward: constitution``; a new one when not given)."""
    run_dir = Path(run_dir)
    if cfg.vllm is not None and cfg.algorithm == "ppo":
        raise UserInputError("rl.vllm needs algorithm grpo or rloo: the toolkit's PPO generates with the policy itself",
                             fix="set algorithm: grpo (or rloo), or remove the vllm section")
    policy_path, policy_label, policy_source = resolve_policy(cfg.policy, run_dir)
    direct = cfg.reward == "constitution"
    reward_path = None if direct else reward_model_of(cfg.reward_model, run_dir)
    if direct:
        from cai.constitution import load_constitution

        load_constitution(cfg.constitution)  # a bad constitution is an error before the stage folder is touched

    def train(run: TrainingRun) -> Trained:
        from cai.backends.registry import BackendPool
        from cai.stages.reward import RewardScorer

        tok = load_tokenizer(policy_path)
        rows, data_info = load_rl_prompts(cfg, tok)
        if direct:
            scorer = constitution_scorer(cfg, pool or BackendPool(), cfg.seed)
        else:
            scorer = RewardScorer(reward_path, device=cfg.device, batch_size=cfg.reward_batch_size)
        reward_fn = RewardModelReward(scorer, samples_path=run.stage.path / "samples.jsonl",
                                      batch_size=cfg.reward_batch_size)
        if cfg.algorithm == "ppo":
            model, training, params = ppo_train(cfg, policy_path, tok, rows, reward_fn, run, _default_lr(cfg))
        else:
            model, training, params = _trl_train(cfg, policy_path, tok, rows, reward_fn, run)
        _, refusal_name = refusal_classifier()

        def finalize(body: dict) -> dict:
            keys = (*SUMMARY_KEYS, *LABELER_KEYS) if direct else SUMMARY_KEYS
            body["rl"]["metrics"] = {k: first_last(read_metrics(run.metrics_path), k) for k in keys}
            return body

        return Trained(
            model=model, tokenizer=tok, training=training, params=params, finalize=finalize,
            manifest={
                "algorithm": cfg.algorithm,
                "policy": {"path": str(policy_path), "label": policy_label, "source": policy_source},
                "reward_model": str(reward_path) if reward_path else None,
                "reward": reward_block(cfg, reward_model=str(reward_path) if reward_path else None,
                                       rater=scorer if direct else None,
                                       steps=int(training.get("steps_this_session") or 0)),
                "reference": "the policy with its LoRA adapter disabled" if cfg.lora else "a frozen copy of the starting policy",
                "data": {**data_info, "train_prompts": len(rows)},
                "rl": {
                    "beta": cfg.beta,
                    "num_generations": cfg.num_generations,
                    "max_completion_length": cfg.max_completion_length,
                    "completions_per_step": cfg.batch_size * cfg.grad_accum * cfg.num_generations,
                    "kl_definition": KL_DEFINITION[cfg.algorithm] if cfg.beta > 0 else "not measured (beta = 0: no reference)",
                    "refusal_classifier": refusal_name,
                    "metrics": {},
                },
            },
        )

    identity = {"rl": _identity(cfg), "policy": str(policy_path),
                "reward_model": str(reward_path) if reward_path else "constitution"}
    return run_training(run_dir, "rl", cfg, identity=identity, train=train, outputs={"samples": "samples.jsonl"},
                        trim=("samples.jsonl",), overwrite=overwrite, progress=progress, callbacks=callbacks,
                        on_progress=on_progress, on_ready=on_ready)


def _identity(cfg: RLStageConfig) -> dict[str, Any]:
    """The config in the stage's fingerprint; with ``reward: model`` the direct-RLAIF fields stay out of it, so a run
    started before they existed resumes. Where rollouts run (``vllm``) does not change what is trained."""
    ident = identity_config(cfg)
    ident.pop("vllm", None)
    if cfg.reward == "model":
        for k in DIRECT_FIELDS:
            ident.pop(k, None)
    return ident


# --- GRPO / RLOO through TRL ----------------------------------------------------------------------------------------
def _trl_train(cfg: RLStageConfig, policy_path: Path, tok, rows: list[dict], reward_fn: RewardModelReward,
               run: TrainingRun):
    from datasets import Dataset

    if cfg.algorithm == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer

    kw = run.trainer_kwargs(cfg, default_lr=_default_lr(cfg), remove_unused_columns=False)
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
        **trl_vllm_kwargs(cfg.vllm),
    )
    trainer = Trainer(
        model=load_causal_lm(policy_path, tok),
        reward_funcs=reward_fn,
        args=args,
        **run.trainer_inputs(cfg, tok, Dataset.from_list(rows)),
    )
    fitted = run.fit(trainer)
    return trainer.accelerator.unwrap_model(trainer.model), fitted["training"], fitted["params"]
