"""``cai pipeline CONFIG``: every stage in order from one YAML config, each into its own folder of the run.

Order: revise (SL-CAI data) -> sft (SL-CAI model) -> pairs -> label (AI preferences) -> reward -> rl (RL-CAI model)
-> dpo -> eval. ``stages:`` picks which run; ``reuse:`` takes a finished stage folder from an earlier run instead of
running it. Each stage resumes itself (finished shards and trainer checkpoints are kept), and a finished stage (its
manifest exists) is skipped, so rerunning a killed pipeline continues at the stage and row where it stopped.

Wiring: a stage left at its defaults reads the previous stage's output in the same run (sft reads revise, pairs and
rl sample from sft/model, label reads pairs, reward and dpo read label, rl uses reward/model), and eval compares the
base model, the SL-CAI model and the RL-CAI model(s) on the held-out shipped prompts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.config import build_config, read_yaml
from cai.data.io import write_json
from cai.errors import ConfigError, UserInputError

STAGES = ("revise", "sft", "pairs", "label", "reward", "rl", "dpo", "eval")
StageName = Literal["revise", "sft", "pairs", "label", "reward", "rl", "dpo", "eval"]


class PipelineConfig(BaseModel):
    """Top level of a pipeline YAML. Each stage's section takes that stage's settings (see `cai <stage> --help`)."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(default="pipeline", description="Run name: everything goes to RUNS_DIR/RUN/<stage>/")
    runs_dir: str = Field(default="runs", description="Folder holding runs")
    stages: list[StageName] = Field(default_factory=lambda: list(STAGES), description="Stages to run, in pipeline order")
    reuse: dict[StageName, str] = Field(
        default_factory=dict, description="Stage -> an earlier run folder whose finished stage is reused (linked)"
    )
    base_model: ModelSpec = Field(default_factory=ModelSpec, description="The starting policy (default: embedded)")
    revise: dict[str, Any] = Field(default_factory=dict, description="Settings of `cai revise`")
    sft: dict[str, Any] = Field(default_factory=dict, description="Settings of `cai sft`")
    pairs: dict[str, Any] = Field(default_factory=dict, description="Settings of `cai pairs`")
    label: dict[str, Any] = Field(default_factory=dict, description="Settings of `cai label`")
    reward: dict[str, Any] = Field(default_factory=dict, description="Settings of `cai reward`")
    rl: dict[str, Any] = Field(default_factory=dict, description="Settings of `cai rl`")
    dpo: dict[str, Any] = Field(default_factory=dict, description="Settings of `cai dpo`")
    eval: dict[str, Any] = Field(default_factory=dict, description="Settings of `cai eval` (models default to base/SL/RL)")


def _stage_table() -> dict[str, tuple[type, Callable]]:
    """Stage name -> (config class, run function); imported lazily (training stages import TRL)."""
    from cai.stages.dpo import DPOStageConfig, run_dpo
    from cai.stages.evaluate import EvalConfig, run_evaluate
    from cai.stages.label import LabelConfig, run_label
    from cai.stages.pairs import PairsConfig, run_pairs
    from cai.stages.revise import ReviseConfig, run_revise
    from cai.stages.reward import RewardStageConfig, run_reward
    from cai.stages.sft import SFTStageConfig, run_sft

    table: dict[str, tuple[type, Callable]] = {
        "revise": (ReviseConfig, run_revise),
        "sft": (SFTStageConfig, run_sft),
        "pairs": (PairsConfig, run_pairs),
        "label": (LabelConfig, run_label),
        "reward": (RewardStageConfig, run_reward),
        "dpo": (DPOStageConfig, run_dpo),
        "eval": (EvalConfig, run_evaluate),
    }
    from cai.stages.rl import RLStageConfig, run_rl

    table["rl"] = (RLStageConfig, run_rl)
    return table


def _model_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "model"


def _wire(name: str, section: dict[str, Any], cfg: PipelineConfig, run_dir: Path, active: list[str]) -> dict[str, Any]:
    """Fill defaults that connect a stage to the stages before it, unless the user set them."""
    s = dict(section)
    base = cfg.base_model.model_dump(mode="json")
    sl_model = _model_dir(run_dir, "sft")
    policy_after_sft = {"backend": "transformers", "model": str(sl_model)} if ("sft" in active or sl_model.exists()) else base
    if name == "revise":
        for role in ("policy", "critic", "reviser"):
            s.setdefault(role, base)
    elif name == "sft":
        s.setdefault("model", base)
    elif name == "pairs":
        s.setdefault("policy", policy_after_sft)
    elif name == "label":
        s.setdefault("labeler", base)
    elif name == "reward":
        s.setdefault("model", base)
    elif name in ("rl", "dpo"):
        s.setdefault("policy", policy_after_sft)
    elif name == "eval":
        if "models" not in s:
            models: dict[str, Any] = {"base": base}
            if "sft" in active or sl_model.exists():
                models["sl-cai"] = {"backend": "transformers", "model": str(sl_model)}
            for stage, label in (("rl", "rl-cai"), ("dpo", "rl-cai-dpo")):
                if stage in active or _model_dir(run_dir, stage).exists():
                    models[label] = {"backend": "transformers", "model": str(_model_dir(run_dir, stage))}
            s["models"] = models
    return s


def _reuse(stage: str, src_run: str, run_dir: Path) -> None:
    src = Path(src_run) / stage
    if not (src / "manifest.json").exists():
        raise UserInputError(
            f"reuse.{stage}: {src} is not a finished '{stage}' stage (no manifest.json).",
            fix=f"point reuse.{stage} at a run folder whose {stage}/ stage completed, or remove it from reuse.",
        )
    dst = run_dir / stage
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src.resolve():
            return
        raise UserInputError(
            f"reuse.{stage}: {dst} already exists in this run.", fix=f"delete {dst} or use another run name."
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst, target_is_directory=True)


def load_pipeline_config(path: str) -> PipelineConfig:
    return build_config(PipelineConfig, read_yaml(path), source=str(path))


def run_pipeline(
    cfg: PipelineConfig,
    *,
    pool: BackendPool | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    on_done: Callable[[str, dict], None] | None = None,
    progress_factory: Callable[[str], Any] | None = None,
) -> dict:
    """Run every selected stage in order. Returns {stage: manifest}."""
    run_dir = Path(cfg.runs_dir) / cfg.run
    active = [s for s in STAGES if s in cfg.stages]
    table = _stage_table()
    # Validate every section up front, so a typo in the eval section fails before an hour of training.
    configs = {}
    for name in active:
        if name in cfg.reuse:
            continue
        if name not in table:
            raise ConfigError(f"stages: '{name}' is not available in this installation.", fix="remove it from stages.")
        cls, _ = table[name]
        section = _wire(name, getattr(cfg, name), cfg, run_dir, active)
        configs[name] = build_config(cls, section, source=f"pipeline section '{name}'")
    pool = pool or BackendPool()
    manifests: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for name in active:
        t0 = time.perf_counter()
        if name in cfg.reuse:
            _reuse(name, cfg.reuse[name], run_dir)
            if on_stage:
                on_stage(name, f"reused from {cfg.reuse[name]}")
            import json

            manifests[name] = json.loads((run_dir / name / "manifest.json").read_text())
            continue
        if on_stage:
            on_stage(name, "start")
        _, fn = table[name]
        kwargs: dict[str, Any] = {}
        if name in ("revise", "pairs", "label", "eval"):
            kwargs["pool"] = pool
            if progress_factory is not None:
                bar = progress_factory(name)
                with bar:
                    manifests[name] = fn(configs[name], str(run_dir), on_progress=bar.update, on_ready=bar.ready, **kwargs)
            else:
                manifests[name] = fn(configs[name], str(run_dir), **kwargs)
        else:
            manifests[name] = fn(configs[name], str(run_dir))
        timings[name] = round(time.perf_counter() - t0, 1)
        if on_stage:
            on_stage(name, f"done in {timings[name]} s")
        if on_done:
            on_done(name, manifests[name])
    write_json(run_dir / "pipeline.json", {"stages": active, "seconds": timings, "config": cfg.model_dump(mode="json")})
    return manifests
