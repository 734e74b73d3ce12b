"""The ``cai`` command: one module per command group."""

from __future__ import annotations

import os

import typer

from cai import __version__
from cai.cli import common

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

app = typer.Typer(
    name="cai",
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
    # One module per command group, in pipeline order.
    from cai.cli import (
        constitution_cmd,
        eval_cmd,
        pipeline_cmd,
        report_cmd,
        revise_cmd,
        rl_cmd,
        rlaif_cmd,
        train_cmd,
    )

    app.add_typer(constitution_cmd.app, name="constitution")
    revise_cmd.register(app)
    train_cmd.register(app)
    rlaif_cmd.register(app)
    rl_cmd.register(app)
    eval_cmd.register(app)
    report_cmd.register(app)
    pipeline_cmd.register(app)


_register()
