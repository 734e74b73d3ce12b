"""``cai pipeline CONFIG``: every stage in order from one YAML config, each into its own folder of the run.

The stages and their order come from :mod:`cai.registry`: revise (SL-CAI data) -> sft (SL-CAI model) -> pairs ->
label (AI preferences) -> reward -> rl (RL-CAI model) -> dpo -> eval. ``stages:`` picks which run; ``reuse:`` takes
a finished stage folder from an earlier run instead of running it. Each stage resumes itself (finished shards and trainer checkpoints are kept), and a finished stage (its
manifest exists) is skipped, so rerunning a killed pipeline continues at the stage and row where it stopped.

Wiring (the inputs of each stage's record, see :func:`cai.registry.wire`): a stage left at its defaults reads the
previous stage's output in the same run (sft reads revise, pairs and rl sample from sft/model, label reads pairs,
reward and dpo read label, rl uses reward/model), and eval compares the base model, the SL-CAI model and the RL-CAI
model(s) on the held-out shipped prompts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from cai import registry
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.config import build_config, read_yaml, set_path
from cai.data.io import read_json, write_json
from cai.errors import UserInputError

STAGES = registry.PIPELINE_STAGES
StageName = Literal[STAGES]  # type: ignore[valid-type]


class _PipelineBase(BaseModel):
    """Top level of a pipeline YAML. Each stage's section takes that stage's settings (see `cai <stage> --help`)."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(default="pipeline", description="Run name: everything goes to RUNS_DIR/RUN/<stage>/")
    runs_dir: str = Field(default="runs", description="Folder holding runs")
    stages: list[StageName] = Field(
        default_factory=lambda: list(registry.DEFAULT_PIPELINE),
        description="Stages to run, in pipeline order (default: all but redteam; name redteam to write attacks "
        "that revise then adds to its red-team prompts)",
    )
    reuse: dict[StageName, str] = Field(
        default_factory=dict, description="Stage -> an earlier run folder whose finished stage is reused (linked)"
    )
    base_model: ModelSpec = Field(default_factory=ModelSpec, description="The starting policy (default: embedded)")


# One section per pipeline stage of the registry, holding that stage's settings (validated before anything runs).
PipelineConfig = create_model(  # type: ignore[call-overload]
    "PipelineConfig",
    __base__=_PipelineBase,
    __doc__=_PipelineBase.__doc__,
    **{name: (dict[str, Any], Field(default_factory=dict, description=f"Settings of `cai {name}`")) for name in STAGES},
)


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


def load_pipeline_config(path: str, sets: list[str] | None = None) -> Any:
    """The pipeline YAML, with ``section.key=value`` assignments (``--set``) applied on top."""
    data = read_yaml(path)
    for assignment in sets or ():
        section, dot, rest = assignment.partition(".")
        if dot and section in STAGES and "=" in rest and isinstance(data.get(section, {}), dict):
            # a stage's setting: nested ones are typed by that stage's config (e.g. revise.critic.base_url=...)
            set_path(registry.get(section).config_class(), data.setdefault(section, {}), rest)
        else:
            set_path(PipelineConfig, data, assignment)
    return build_config(PipelineConfig, data, source=str(path))


def run_pipeline(
    cfg: Any,
    *,
    pool: BackendPool | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    on_done: Callable[[str, dict], None] | None = None,
    progress_factory: Callable[[str], Any] | None = None,
) -> dict:
    """Run every selected stage in order. Returns {stage: manifest}."""
    run_dir = Path(cfg.runs_dir) / cfg.run
    active = [s for s in STAGES if s in cfg.stages]
    base = cfg.base_model.model_dump(mode="json")
    # Validate every section up front, so a typo in the eval section fails before an hour of training.
    configs = {}
    for name in active:
        if name in cfg.reuse:
            continue
        section = registry.wire(name, getattr(cfg, name), run_dir, base=base, planned=active)
        configs[name] = build_config(registry.get(name).config_class(), section, source=f"pipeline section '{name}'")
    pool = pool or BackendPool()
    manifests: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for name in active:
        t0 = time.perf_counter()
        if name in cfg.reuse:
            _reuse(name, cfg.reuse[name], run_dir)
            if on_stage:
                on_stage(name, f"reused from {cfg.reuse[name]}")
            manifests[name] = read_json(run_dir / name / "manifest.json", what="reused stage manifest")
            continue
        if on_stage:
            on_stage(name, "start")
        if progress_factory is not None:
            with progress_factory(name) as line:
                manifests[name] = registry.call(name, configs[name], run_dir, pool=pool, line=line)
        else:
            manifests[name] = registry.call(name, configs[name], run_dir, pool=pool)
        timings[name] = round(time.perf_counter() - t0, 1)
        if on_stage:
            on_stage(name, f"done in {timings[name]} s")
        if on_done:
            on_done(name, manifests[name])
    write_json(run_dir / "pipeline.json", {"stages": active, "seconds": timings, "config": cfg.model_dump(mode="json")})
    return manifests
