"""Every stage of the toolkit, declared once.

A :class:`Stage` record names the stage's config class and run function (as ``module:attribute``, imported only when
needed, so ``cai --help`` does not load training libraries), the inputs it reads from earlier stages of the same run
with their defaults, its outputs and the curves it logs. The pipeline, the command line and the report learn about
stages only from :data:`STAGES`. A new stage is one module (config class + run function) and one record here.

Inputs: ``Input(field, stage, path, fallback)`` says "when the user leaves ``field`` unset, use ``RUN/stage/path``;
when that does not exist (and the stage is not about to run), use ``fallback``". :func:`wire` applies them; the
policy rule ("this run's sft/model, else the base model") is :func:`policy_default`.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Literal

Fallback = Literal["base", "none"]


@dataclass(frozen=True)
class Input:
    """A config field that defaults to an output of an earlier stage of the same run."""

    field: str
    stage: str
    path: str
    fallback: Fallback = "none"
    as_model: bool = False  # the value is a model spec (a transformers folder), not a plain path
    description: str = ""


@dataclass(frozen=True)
class Stage:
    """One stage: what it is called, how it is configured and run, what it reads and writes."""

    name: str
    help: str
    config: str  # "module:ConfigClass"
    run: str  # "module:run_function"
    kind: Literal["sharded", "training"]
    inputs: tuple[Input, ...] = ()
    roles: tuple[str, ...] = ()  # model fields that default to the pipeline's base model
    outputs: tuple[str, ...] = ()
    curves: tuple[str, ...] = ()  # metric names this stage logs per step in metrics.jsonl
    pipeline: bool = True
    default_on: bool = True  # runs in a pipeline whose YAML names no `stages:` (else only when named)
    summary: str | None = None  # "module:function(stage_dir, manifest, done_before)" printing the CLI summary
    summary_in_pipeline: bool = False  # `cai pipeline` prints the summary too, right after the stage
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # extra flag names for a field

    def config_class(self) -> type:
        cls = _load(self.config)
        if self.kind == "sharded":  # every sharded stage takes `executor:` (local or ray), see cai.executors
            from cai.executors.config import with_executor

            return with_executor(cls)
        return cls

    def run_function(self) -> Callable[..., dict]:
        return _load(self.run)

    def summary_function(self) -> Callable[..., None] | None:
        return _load(self.summary) if self.summary else None

    def input(self, field_name: str) -> Input | None:
        return next((i for i in self.inputs if i.field == field_name), None)


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


_SFT_MODEL = Input("policy", "sft", "model", "base", as_model=True,
                   description="this run's sft/model, else the base model")
_REWARD_MODEL = Input("reward_model", "reward", "model", description="this run's reward/model")
_LABEL_PREFS = Input("data", "label", "preference.jsonl", description="this run's label/preference.jsonl")

STAGES: tuple[Stage, ...] = (
    Stage(
        name="redteam", kind="sharded", default_on=False,
        help="Red-team the target: an attacker model writes attacks per harm category, judges score the answers; "
             "successes go to attacks.jsonl, which revise adds to its prompts (and `cai eval --harmful` can score).",
        config="cai.redteam.config:RedteamConfig", run="cai.redteam.stage:run_redteam",
        roles=("attacker", "target"), outputs=("cases.jsonl", "attacks.jsonl"),
        summary="cai.cli.summaries:redteam",
    ),
    Stage(
        name="revise", kind="sharded",
        help="Generate an SL-CAI dataset: answer, then critique and revise against sampled principles.",
        config="cai.stages.revise:ReviseConfig", run="cai.stages.revise:run_revise",
        roles=("policy", "critic", "reviser"),
        outputs=("data.jsonl", "sft.jsonl", "preference.jsonl", "helpful.jsonl"),
        summary="cai.cli.summaries:revise", summary_in_pipeline=True,
    ),
    Stage(
        name="sft", kind="training",
        help="Supervised fine-tuning on SL-CAI revisions mixed with helpful answers (loss on the answers only).",
        config="cai.stages.sft:SFTStageConfig", run="cai.stages.sft:run_sft",
        inputs=(Input("data", "revise", "sft.jsonl", description="this run's revise/sft.jsonl"),
                Input("helpful", "revise", "helpful.jsonl", description="this run's revise/helpful.jsonl")),
        roles=("model",), outputs=("model", "metrics.jsonl"), curves=("loss", "mean_token_accuracy", "entropy"),
        summary="cai.cli.summaries:sft",
    ),
    Stage(
        name="pairs", kind="sharded",
        help="Sample K answers per prompt from the policy, for the AI labeler to compare.",
        config="cai.stages.pairs:PairsConfig", run="cai.stages.pairs:run_pairs",
        inputs=(_SFT_MODEL,), outputs=("pairs.jsonl",),
        summary="cai.cli.summaries:pairs",
    ),
    Stage(
        name="label", kind="sharded",
        help="Label which answer of each pair is better, by asking the labeler multiple-choice questions from the "
             "constitution.",
        config="cai.stages.label:LabelConfig", run="cai.stages.label:run_label",
        inputs=(Input("pairs", "pairs", "pairs.jsonl", description="this run's pairs/pairs.jsonl"),),
        roles=("labeler",), outputs=("labels.jsonl", "preference.jsonl"),
        summary="cai.cli.summaries:label",
    ),
    Stage(
        name="reward", kind="training",
        help="Train a Bradley-Terry reward model on (soft) AI preference labels; report held-out accuracy and ECE.",
        config="cai.stages.reward:RewardStageConfig", run="cai.stages.reward:run_reward",
        inputs=(_LABEL_PREFS,), roles=("model",), outputs=("model", "metrics.jsonl", "eval.json"),
        curves=("loss", "accuracy", "margin", "mean_reward"), summary="cai.cli.summaries:reward",
    ),
    Stage(
        name="rl", kind="training",
        help="RL-CAI: optimize the policy against the reward model, or directly against the labeler's ratings "
             "(--reward constitution), with a KL leash (GRPO, RLOO or PPO).",
        config="cai.stages.rl:RLStageConfig", run="cai.stages.rl:run_rl",
        inputs=(_SFT_MODEL, _REWARD_MODEL), roles=("labeler",), outputs=("model", "metrics.jsonl", "samples.jsonl"),
        curves=("reward", "kl", "completions/mean_length", "answer_words", "refusal_rate", "repeat_3gram_share",
                "distinct_3gram_ratio", "loss"),
        summary="cai.cli.summaries:rl",
    ),
    Stage(
        name="dpo", kind="training",
        help="Offline DPO on AI-labeled preference pairs (LoRA; the adapter-free policy is the reference).",
        config="cai.stages.dpo:DPOStageConfig", run="cai.stages.dpo:run_dpo",
        inputs=(_SFT_MODEL, _LABEL_PREFS), outputs=("model", "metrics.jsonl"),
        curves=("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen"), summary="cai.cli.summaries:dpo",
    ),
    Stage(
        name="orpo", kind="training", pipeline=False,
        help="ORPO: SFT and preference optimization in one stage, on the SL-CAI pairs plus the AI-labeled pairs "
             "(TRL experimental ORPOTrainer; starts from the base model).",
        config="cai.stages.orpo:ORPOStageConfig", run="cai.stages.orpo:run_orpo",
        inputs=(Input("pairs", "label", "preference.jsonl", description="this run's label/preference.jsonl"),
                Input("sl_pairs", "revise", "preference.jsonl", description="this run's revise/preference.jsonl")),
        roles=("policy",), outputs=("model", "metrics.jsonl"),
        curves=("loss", "nll_loss", "log_odds_ratio", "rewards/accuracies"), summary="cai.cli.summaries:orpo",
    ),
    Stage(
        name="eval", kind="sharded",
        help="Evaluate models: harmful compliance, over-refusal, pairwise win rate and Elo, reward accuracy, length, "
             "repetition.",
        config="cai.stages.evaluate:EvalConfig", run="cai.stages.evaluate:run_evaluate",
        outputs=("metrics.json", "summary.md", "answers.jsonl"),
        summary="cai.cli.summaries:evaluate", aliases={"models": ("--model", "-m")},
    ),
    Stage(
        name="bestofn", kind="sharded", pipeline=False,
        help="Best-of-N: sample N answers per prompt, keep the one the reward model scores highest (no training).",
        config="cai.stages.bestofn:BestOfNConfig", run="cai.stages.bestofn:run_bestofn",
        inputs=(_SFT_MODEL, _REWARD_MODEL), outputs=("answers.jsonl",),
        summary="cai.cli.summaries:bestofn", aliases={"prompt_split": ("--split",)},
    ),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
PIPELINE_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.pipeline)
#: The stages a pipeline runs when its YAML names none (``redteam`` runs only when named).
DEFAULT_PIPELINE: tuple[str, ...] = tuple(s.name for s in STAGES if s.pipeline and s.default_on)
TRAINING_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.kind == "training")
# The models `cai eval` compares by default in a pipeline: name in the report -> the stage whose model it is.
EVAL_MODELS: dict[str, str] = {"sl-cai": "sft", "rl-cai": "rl", "rl-cai-dpo": "dpo"}


def get(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(BY_NAME)}") from None


def output(run_dir: str | Path, stage: str, path: str) -> Path:
    return Path(run_dir) / stage / path


def _exists(p: Path) -> bool:
    return (p / "config.json").exists() if p.suffix == "" else p.exists()


def policy_default(run_dir: str | Path, *, planned: Collection[str] = ()) -> tuple[Path | None, str]:
    """The policy a later stage starts from when none is given: this run's SL-CAI model (``sft/model``) if it exists
    or the sft stage is about to run in this pipeline; else ``(None, ...)``, meaning the base model."""
    p = output(run_dir, "sft", "model")
    if "sft" in planned or _exists(p):
        return p, "this run's sft/model"
    return None, "the base model (no sft/model in this run)"


def wire(name: str, section: dict[str, Any], run_dir: str | Path, *, base: dict[str, Any] | None = None,
         planned: Collection[str] = (), leave_null: bool = False) -> dict[str, Any]:
    """Fill the fields the user left unset with what earlier stages of this run produce (or will produce, for
    stages in ``planned``); ``base`` is the pipeline's starting model, given to every role left unset.

    With ``leave_null`` a model input whose config default is null is left for the stage to resolve when it runs
    (it then records where the model came from, e.g. "this run's sft/model")."""
    rec = get(name)
    s = dict(section)
    for role in rec.roles:
        if base is not None:
            s[role] = _on_base(s[role], base) if role in s else base
    fields = rec.config_class().model_fields if leave_null else {}
    for inp in rec.inputs:
        if not inp.as_model:
            continue  # file inputs: each stage resolves its own default ('revise', 'label', null) itself
        given = s.get(inp.field)
        if given is not None and not _partial(given):
            continue
        if given is None and leave_null and fields[inp.field].get_default(call_default_factory=True) is None:
            continue
        p = output(run_dir, inp.stage, inp.path)
        if inp.stage in planned or _exists(p):
            target: dict[str, Any] | None = {**_runtime(base), "backend": "transformers", "model": str(p)}
        elif inp.fallback == "base":
            target = base
        else:
            target = None
        if target is not None:  # settings given without a model (e.g. only batch_size) refine the default model
            s[inp.field] = {**target, **given} if given else target
    if name == "eval" and "models" not in s and base is not None:
        models: dict[str, Any] = {"base": base}
        for label, stage in EVAL_MODELS.items():
            p = output(run_dir, stage, "model")
            if stage in planned or p.exists():
                models[label] = {**_runtime(base), "backend": "transformers", "model": str(p)}
        s["models"] = models
    return s


#: How a local model runs (not which model it is): models this run trains inherit these from the base model, so
#: ``base_model: {dtype: bfloat16}`` applies to the SL-CAI and RL-CAI models too.
RUNTIME_FIELDS = ("device", "dtype", "batch_size", "prefix_cache")


def _runtime(base: dict[str, Any] | None) -> dict[str, Any]:
    if not base or base.get("backend", "transformers") != "transformers":
        return {}
    return {k: base[k] for k in RUNTIME_FIELDS if k in base}


def _partial(value: Any) -> bool:
    """Model settings that name no model (``{batch_size: 8}``): they refine the model the field defaults to."""
    return isinstance(value, dict) and not {"backend", "model"} & value.keys()


def _on_base(value: Any, base: dict[str, Any]) -> Any:
    return {**base, **value} if _partial(value) else value


def call(name: str, cfg: Any, run_dir: str | Path, *, overwrite: bool = False, pool: Any = None,
         line: Any = None) -> dict:
    """Run a stage's function with what it accepts: the backend pool, progress callbacks for ``line``."""
    fn = get(name).run_function()
    accepts = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    if "overwrite" in accepts:
        kwargs["overwrite"] = overwrite
    if getattr(cfg, "executor", None) is not None:  # the roles' backends come from the stage's executor
        from cai.executors.local import executor_pool

        pool = executor_pool(cfg, pool, takes_pool="pool" in accepts)
    if pool is not None and "pool" in accepts:
        kwargs["pool"] = pool
    if line is not None:
        if "on_progress" in accepts:
            kwargs["on_progress"] = line.update
        if "on_ready" in accepts:
            kwargs["on_ready"] = line.ready
    return fn(cfg, str(run_dir), **kwargs)
