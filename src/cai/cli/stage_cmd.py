"""One command per registered stage, generated from the stage record and its config class.

``cai <stage> [-c FILE] [--run R] [--runs-dir D] [--overwrite] [--set KEY=VALUE ...] [--<field> VALUE ...]``:
settings come from the YAML file (its ``<stage>:`` section, or flat keys), then the flags, then ``--set``. The
command is built when it is used (or its help is shown), so ``cai --help`` imports no stage module.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from typer.core import TyperCommand

from cai import registry
from cai.cli import options
from cai.cli.common import handle_errors, out
from cai.config import build_config, read_yaml, set_path

_SET_HELP = ("Any setting as KEY=VALUE, nested ones with dots (e.g. critic.base_url=http://host:8000/v1); the value "
             "is read as YAML; repeatable; applied after the file and the flags")


def _common_parameters(stage: str, flags: list[options.Flag], roles: list[str]) -> list[inspect.Parameter]:
    def p(name: str, ann: Any, default: Any = None) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)

    params = [
        p("x_config", Annotated[Optional[str], typer.Option(
            "--config", "-c", help=f"YAML config: a `{stage}:` section, or flat keys", metavar="FILE")]),
        p("x_run", Annotated[str, typer.Option("--run", help=f"Run name: output goes to RUNS_DIR/RUN/{stage}")],
          "default"),
        p("x_runs_dir", Annotated[str, typer.Option("--runs-dir", help="Folder holding runs")], "runs"),
        p("x_overwrite", Annotated[bool, typer.Option(
            "--overwrite", help=f"Discard this run's {stage} stage and start it again")], False),
        p("x_set", Annotated[Optional[list[str]], typer.Option("--set", help=_SET_HELP, metavar="KEY=VALUE")]),
    ]
    taken = {d.split("/")[0] for f in flags for d in f.decls}
    if roles and "--model" not in taken:
        which = ", ".join(f"--{r}" for r in roles)
        params.append(p("x_model", Annotated[Optional[str], typer.Option(
            "--model", metavar="MODEL",
            help=f"Model for every role ({', '.join(roles)}) not given by its own flag ({which}): embedded, a "
                 "folder, openai:NAME@URL, fake")]))
    return params


def settings(rec: registry.Stage, cls: type, flags: list[options.Flag], roles: list[str],
             kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(raw settings, where they came from): the YAML file, then the flags, then ``--set``."""
    data: dict[str, Any] = {}
    source = "command-line flags"
    if kw.get("x_config"):
        data = read_yaml(kw["x_config"])
        if isinstance(data.get(rec.name), dict):
            data = data[rec.name]
        source = str(kw["x_config"])
    given = options.values(flags, kw)
    if kw.get("x_model"):
        for role in roles:
            given.setdefault(role, kw["x_model"])
    data.update(given)
    for assignment in kw.get("x_set") or ():
        set_path(cls, data, assignment)
    return data, source


def run_stage(rec: registry.Stage, kw: dict[str, Any], extra: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Parse, wire, run and summarize one stage (the body of every generated stage command)."""
    from cai.progress import ProgressLine, quiet_library_warnings
    from cai.runs import run_dir_for

    if extra is not None and extra(kw):
        return
    cls = rec.config_class()
    flags = options.flags_for(cls, rec.aliases)
    roles = options.roles(cls)
    data, source = settings(rec, cls, flags, roles, kw)
    run_dir = run_dir_for(kw["x_runs_dir"], kw["x_run"])
    wired = registry.wire(rec.name, data, run_dir, leave_null=True)
    cfg = build_config(cls, wired, source=source)
    for name in wired.keys() - data.keys():
        inp = rec.input(name)
        where = f"this run's {inp.stage}/{inp.path}" if inp else "from this run"
        out.print(f"  {name}: {Path(wired[name]['model'])} ({where})", highlight=False)
    stage_dir = run_dir / rec.name
    done_before = not kw["x_overwrite"] and (stage_dir / "manifest.json").exists()
    quiet_library_warnings()
    with ProgressLine(rec.name) as line:
        manifest = registry.call(rec.name, cfg, run_dir, overwrite=kw["x_overwrite"], line=line)
    summary = rec.summary_function()
    if summary is not None:
        from cai.cli.summaries import typed

        summary(stage_dir, typed(rec.name, manifest), done_before)
    else:
        out.print(f"[bold green]{rec.name} done[/]: {stage_dir}; manifest: {stage_dir / 'manifest.json'}")


class StageCommand(TyperCommand):
    """A stage's command whose options are generated from its config class on first use."""

    def __init__(self, rec: registry.Stage, extra_params: list[inspect.Parameter] | None = None,
                 extra: Callable[[dict[str, Any]], bool] | None = None):
        self.rec = rec
        self._extra_params = extra_params or []
        self._extra = extra
        self._built: TyperCommand | None = None
        super().__init__(rec.name, help=rec.help, callback=None, params=None)

    def _build(self) -> TyperCommand:
        if self._built is None:
            cls = self.rec.config_class()
            flags = options.flags_for(cls, self.rec.aliases)
            params = (_common_parameters(self.rec.name, flags, options.roles(cls)) + self._extra_params
                      + options.parameters(flags))
            rec, extra = self.rec, self._extra

            def command(**kw: Any) -> None:
                run_stage(rec, kw, extra)

            command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
            command.__doc__ = rec.help
            single = typer.Typer(add_completion=False)
            single.command(rec.name, help=rec.help)(handle_errors(command))
            self._built = typer.main.get_command(single)  # type: ignore[assignment]
        return self._built

    @property  # type: ignore[override]
    def params(self) -> list:
        return self._build().params if hasattr(self, "_built") else []

    @params.setter
    def params(self, value: list) -> None:
        pass  # built lazily from the config class

    @property  # type: ignore[override]
    def callback(self) -> Callable[..., Any] | None:
        return self._build().callback if hasattr(self, "_built") else None

    @callback.setter
    def callback(self, value: Any) -> None:
        pass


def register(app_commands: dict[str, Any], extras: dict[str, tuple[list[inspect.Parameter], Callable]] | None = None
             ) -> None:
    """Add a command for every registered stage to a click group's ``commands``."""
    for rec in registry.STAGES:
        params, hook = (extras or {}).get(rec.name, ([], None))
        app_commands[rec.name] = StageCommand(rec, params, hook)
