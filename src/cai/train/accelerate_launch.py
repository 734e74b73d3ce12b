"""Training on several processes, GPUs or machines with ``accelerate launch``.

``cai sft|reward|dpo|rl ... --accelerate-config zero2|zero3|fsdp2|FILE`` resolves the name to the accelerate config
TRL ships (``trl/accelerate_configs/<name>.yaml``: zero1, zero2, zero3, fsdp1, fsdp2, multi_gpu, single_gpu) or takes
your own YAML file, and starts::

    accelerate launch --config_file CONFIG [--NAME VALUE ...] -m cai.train.accelerate_launch STAGE ARGS...

where ``ARGS`` are the stage command's own flags (everything but the launch flags). ``--accelerate-arg
num_processes=8`` (repeatable) passes a launch flag, e.g. for two machines run on each::

    cai sft -c run.yaml --accelerate-config zero2 --accelerate-arg num_machines=2 \\
        --accelerate-arg machine_rank=0 --accelerate-arg main_process_ip=10.0.0.1 --accelerate-arg main_process_port=29500

Every process runs the same trainer (``accelerate`` / ``torchrun`` set ``RANK`` and ``WORLD_SIZE``; TRL shards the
batches). Only rank 0 owns the stage folder (its lock, metrics, model and manifest); each other rank trains in a
scratch copy of the run (``RUN/.ranks/<stage>-rank<N>``, the earlier stages linked in, removed at the end), so the
stage's resume and locking guarantees are those of one process. The launcher refuses to start several processes on
a half-finished stage: resume it in one process, or pass ``--overwrite``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from cai.errors import ConfigError, UserInputError

SHIPPED = ("zero1", "zero2", "zero3", "fsdp1", "fsdp2", "multi_gpu", "single_gpu")
LAUNCH_PARAMS = ("x_accelerate_config", "x_accelerate_arg")


def trl_configs_dir() -> Path:
    """The folder of accelerate configs the installed TRL ships."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("TRL is not installed, so its accelerate configs cannot be found.",
                          fix="pip install -e . (the toolkit's training stack), or pass your own accelerate YAML file.")
    return Path(next(iter(spec.submodule_search_locations))) / "accelerate_configs"


def resolve_config(value: str) -> Path:
    """``zero2`` / ``zero3`` / ``fsdp2`` / ... -> TRL's shipped file; anything else must be an existing YAML file."""
    if value in SHIPPED:
        path = trl_configs_dir() / f"{value}.yaml"
        if not path.exists():
            raise ConfigError(f"--accelerate-config {value}: the installed TRL has no {path.name} in {path.parent}.",
                              fix=f"pass an accelerate YAML file instead, or one of: {', '.join(_available())}.")
        return path
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"--accelerate-config '{value}' is neither a config TRL ships nor a file.",
                          fix=f"use one of {', '.join(SHIPPED)}, or the path of an accelerate YAML file "
                              "(`accelerate config` writes one).")
    return path


def _available() -> list[str]:
    try:
        return sorted(p.stem for p in trl_configs_dir().glob("*.yaml"))
    except ConfigError:
        return []


def launch_args(items: list[str] | None) -> list[str]:
    """``num_processes=8`` -> ``--num_processes 8`` for ``accelerate launch``."""
    out: list[str] = []
    for it in items or ():
        key, sep, value = it.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--accelerate-arg '{it}' is not of the form NAME=VALUE.",
                              fix="write e.g. --accelerate-arg num_processes=8 (see `accelerate launch --help`).")
        out += [f"--{key}", value.strip()]
    return out


def launch_command(stage: str, stage_args: list[str], config: Path, extra: list[str] | None = None) -> list[str]:
    """The ``accelerate launch`` command line that runs ``stage`` on every process."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *(extra or []),
            "-m", "cai.train.accelerate_launch", stage, *stage_args]


# --------------------------------------------------------------------------------------------- the CLI flag
PARAMS = [
    inspect.Parameter("x_accelerate_config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--accelerate-config", metavar="zero2|zero3|fsdp2|FILE", rich_help_panel="Launch",
                                    help="Train on several processes with `accelerate launch`: a config TRL ships "
                                         f"({', '.join(SHIPPED)}) or an accelerate YAML file")]),
    inspect.Parameter("x_accelerate_arg", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[list[str]], typer.Option("--accelerate-arg", metavar="NAME=VALUE", rich_help_panel="Launch",
                                          help="With --accelerate-config: a flag for `accelerate launch`, e.g. "
                                               "num_processes=8 or machine_rank=1; repeatable")]),
]


def intercept_for(stage: str) -> Callable[[dict[str, Any]], bool]:
    """The training command's hook: with ``--accelerate-config``, launch the stage on every process (True: done)."""

    def intercept(kw: dict[str, Any]) -> bool:
        if not kw.get("x_accelerate_config"):
            if kw.get("x_accelerate_arg"):
                raise ConfigError("--accelerate-arg is given without --accelerate-config.",
                                  fix="add --accelerate-config zero2|zero3|fsdp2|FILE, or drop --accelerate-arg.")
            return False
        from cai.runs import run_dir_for

        config = resolve_config(kw["x_accelerate_config"])
        extra = launch_args(kw.get("x_accelerate_arg"))
        stage_dir = run_dir_for(kw["x_runs_dir"], kw["x_run"]) / stage
        if (stage_dir / "manifest.json").exists() and not kw.get("x_overwrite"):
            return False  # finished: show it as the one-process command does, launching nothing
        if (stage_dir / "config.json").exists() and not kw.get("x_overwrite"):
            raise UserInputError(f"{stage_dir} holds an unfinished {stage} stage; several processes cannot resume it.",
                                 fix="resume it without --accelerate-config (one process), or pass --overwrite.")
        args = stage_arguments(stage_params(stage), kw)
        cmd = launch_command(stage, args, config, extra)
        code = subprocess.call(cmd)
        if code != 0:
            raise typer.Exit(code)
        return True

    return intercept


def stage_params(stage: str) -> list[Any]:
    """The click parameters of ``cai STAGE``."""
    import typer.main

    from cai.cli.main import app

    return list(typer.main.get_command(app).commands[stage].params)


def stage_arguments(params: list[Any], kw: dict[str, Any]) -> list[str]:
    """The stage command's flags as given (launch flags left out), rebuilt from the parsed values."""
    out: list[str] = []
    for p in params:
        if p.name in LAUNCH_PARAMS or p.name not in kw:
            continue
        value = kw[p.name]
        if value is None or value == p.default or (isinstance(value, (list, tuple)) and not value):
            continue
        if getattr(p, "is_flag", False) and p.secondary_opts:
            out.append(p.opts[0] if value else p.secondary_opts[0])
        elif getattr(p, "is_flag", False):
            if value:
                out.append(p.opts[0])
        elif getattr(p, "multiple", False):
            for v in value:
                out += [p.opts[0], str(v)]
        else:
            out += [p.opts[0], str(value)]
    return out


# --------------------------------------------------------------------------------------------- every process
def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def scratch_run(run_dir: Path, stage: str, r: int) -> Path:
    """Rank ``r``'s copy of the run: the other stages' folders linked in, ``stage`` its own (fresh)."""
    scratch = run_dir / ".ranks" / f"{stage}-rank{r}"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for entry in run_dir.iterdir() if run_dir.exists() else ():
        if entry.name not in (stage, ".ranks") and not entry.name.startswith("."):
            os.symlink(entry.resolve(), scratch / entry.name, target_is_directory=entry.is_dir())
    return scratch


def main(argv: list[str] | None = None) -> int:
    """``python -m cai.train.accelerate_launch STAGE ARGS...`` on every process (under accelerate or torchrun)."""
    import typer.main

    from cai import registry
    from cai.cli import options, stage_cmd
    from cai.cli.common import handle_errors
    from cai.cli.main import app
    from cai.config import build_config
    from cai.runs import run_dir_for

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in registry.TRAINING_STAGES:
        print(f"usage: python -m cai.train.accelerate_launch {{{','.join(registry.TRAINING_STAGES)}}} ARGS...",
              file=sys.stderr)
        return 2
    stage, args = argv[0], argv[1:]
    r = rank()

    @handle_errors
    def run() -> None:
        cmd = typer.main.get_command(app).commands[stage]
        kw = cmd.make_context(stage, args).params
        rec = registry.get(stage)
        cls = rec.config_class()
        flags = options.flags_for(cls, rec.aliases)
        data, source = stage_cmd.settings(rec, cls, flags, options.roles(cls), kw)
        run_dir = run_dir_for(kw["x_runs_dir"], kw["x_run"])
        cfg = build_config(cls, registry.wire(stage, data, run_dir, leave_null=True), source=source)
        if r == 0:
            registry.call(stage, cfg, run_dir, overwrite=kw["x_overwrite"])
            print(f"{stage} done on {os.environ.get('WORLD_SIZE', '1')} process(es): {run_dir / stage}")
            return
        scratch = scratch_run(run_dir, stage, r)
        try:
            registry.call(stage, cfg, scratch, overwrite=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                scratch.parent.rmdir()  # the last rank to finish removes RUN/.ranks
            except OSError:
                pass

    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
