"""The ``cai`` command: a command per registered stage (generated from its config), plus constitution, score,
report and pipeline."""

from __future__ import annotations

import os

import typer
from typer.core import TyperGroup

from cai import __version__
from cai.cli import common

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


class CaiGroup(TyperGroup):
    """The top-level group: the stage commands come from :mod:`cai.registry` and are listed in pipeline order."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        from cai import registry
        from cai.cli import eval_cmd, stage_cmd
        from cai.train import accelerate_launch as acc

        extras = {name: (acc.PARAMS, acc.intercept_for(name)) for name in registry.TRAINING_STAGES}  # --accelerate-config
        stage_cmd.register(self.commands, {**extras, "eval": (eval_cmd.PARAMS, eval_cmd.intercept)})

    def list_commands(self, ctx) -> list[str]:
        from cai import registry

        stages = [s.name for s in registry.STAGES if s.name in self.commands]
        return stages + sorted(n for n in self.commands if n not in stages)


app = typer.Typer(
    name="cai",
    cls=CaiGroup,
    help="Constitutional AI end to end: red-team prompts, SL-CAI critique-revision, RLAIF, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cai {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Constitutional AI toolkit."""
    common.DEBUG["on"] = debug or bool(os.environ.get("CAI_DEBUG"))


def _register() -> None:
    from cai.cli import constitution_cmd, guard_cmd, pipeline_cmd, report_cmd, score_cmd

    app.add_typer(constitution_cmd.app, name="constitution")
    app.add_typer(guard_cmd.app, name="guard")
    score_cmd.register(app)
    report_cmd.register(app)
    pipeline_cmd.register(app)


_register()
