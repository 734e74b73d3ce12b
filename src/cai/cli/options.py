"""Command-line flags generated from a stage's pydantic config: one flag per field, its help the field description.

Every field ``some_name`` is ``--some-name``; booleans are ``--x/--no-x``; model fields take a model spec
(``embedded``, a folder, ``openai:NAME@URL``, ``fake``); mappings of text (``column_map``) are repeated
``KEY=VALUE`` flags; fields holding lists or nested settings take a YAML value (``--pairwise '[helpful]'``).
``--set a.b=VALUE`` reaches any setting, nested ones too. Flags override the YAML file given with ``-c``.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import typer
import yaml
from pydantic import BaseModel
from rich.markup import escape
from pydantic.fields import FieldInfo

from cai.backends.spec import ModelSpec
from cai.config import parse_value
from cai.errors import ConfigError

# Short names users rely on, for fields of any stage that has them.
ALIASES: dict[str, tuple[str, ...]] = {"learning_rate": ("--lr",), "column_map": ("--column",)}


@dataclass
class Flag:
    """How one config field appears on the command line."""

    field: str
    decls: tuple[str, ...]
    kind: Literal["scalar", "bool", "model", "pairs", "yaml"]
    annotation: Any
    help: str
    show_default: str | bool
    metavar: str | None = None

    @property
    def param(self) -> str:
        return "f_" + self.field


def _strip_optional(t: Any) -> tuple[Any, bool]:
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return t, False


def _is_model(t: Any) -> bool:
    options = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
    return any(isinstance(o, type) and issubclass(o, ModelSpec) for o in options) and all(
        o in (str,) or (isinstance(o, type) and issubclass(o, ModelSpec)) for o in options
    )


def _plain(value: Any) -> Any:
    """A default as a user would write it in YAML (model specs in their one-line form)."""
    if isinstance(value, ModelSpec):
        return value.label()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _default_text(fi: FieldInfo, kind: str) -> str | bool:
    value = fi.get_default(call_default_factory=True)
    if value is None or value == {} or value == []:
        return False
    if isinstance(value, ModelSpec):
        return value.label()
    if kind == "bool":
        return "on" if value else "off"
    if isinstance(value, (list, tuple, dict)):
        return yaml.safe_dump(_plain(value), default_flow_style=True, width=1000).strip()
    return str(value)


def flags_for(cls: type[BaseModel], extra_aliases: dict[str, tuple[str, ...]] | None = None) -> list[Flag]:
    """One :class:`Flag` per field of ``cls``."""
    flags = []
    for name, fi in cls.model_fields.items():
        t, _ = _strip_optional(fi.annotation)
        dashed = "--" + name.replace("_", "-")
        aliases = ALIASES.get(name, ()) + (extra_aliases or {}).get(name, ())
        metavar = None
        if t is bool:
            kind, ann, decls = "bool", Optional[bool], (f"{dashed}/--no-{name.replace('_', '-')}",)
        elif t in (int, float, str):
            kind, ann, decls = "scalar", Optional[t], (dashed, *aliases)
        elif typing.get_origin(t) is Literal and all(isinstance(a, str) for a in typing.get_args(t)):
            # checked by the config, so a wrong choice gets the same located error as one in a YAML file
            kind, ann, decls, metavar = "scalar", Optional[str], (dashed, *aliases), "|".join(typing.get_args(t))
        elif _is_model(t):
            kind, ann, decls, metavar = "model", Optional[str], (dashed, *aliases), "MODEL"
        elif typing.get_origin(t) is dict and typing.get_args(t)[0] is str:
            value_t = typing.get_args(t)[1]
            kind, ann = "pairs", Optional[list[str]]
            metavar = "FIELD=COLUMN" if name == "column_map" else ("NAME=SPEC" if _is_model(value_t) else "KEY=VALUE")
            decls = (*aliases, dashed) if aliases else (dashed,)
        else:
            pair = typing.get_origin(t) is tuple and typing.get_args(t) == (float, float)
            kind, ann, decls, metavar = "yaml", Optional[str], (dashed, *aliases), "LO,HI" if pair else "YAML"
        text = (fi.description or name.replace("_", " ")).rstrip(".")
        if kind == "pairs":
            text += "; repeatable"
        flags.append(Flag(name, decls, kind, ann, text, _default_text(fi, kind), metavar))
    return flags


def roles(cls: type[BaseModel]) -> list[str]:
    """The model fields of a config (policy, critic, reviser, labeler, ...), which ``--model`` sets together."""
    return [f.field for f in flags_for(cls) if f.kind == "model"]


def parameters(flags: list[Flag], panel: str = "Settings") -> list[inspect.Parameter]:
    """The flags as typed keyword parameters that typer turns into options."""
    out = []
    for f in flags:
        shown = f.show_default is not False and "(default" not in f.help  # some descriptions name it already
        text = f"{f.help} [default: {f.show_default}]" if shown else f.help
        opt = typer.Option(*f.decls, help=escape(text), show_default=False, metavar=f.metavar, rich_help_panel=panel)
        out.append(inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=Annotated[f.annotation, opt]))
    return out


def pairs_value(items: list[str], flag: str, metavar: str) -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` flags -> a mapping; a key given twice is an error."""
    out: dict[str, Any] = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} '{it}' is not of the form {metavar}.", fix=f"write it like {flag} {metavar}.")
        if key.strip() in out:
            raise ConfigError(f"{flag} names '{key.strip()}' twice.", fix="give each key once.")
        out[key.strip()] = value.strip()
    return out


def values(flags: list[Flag], given: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line (``given`` maps parameter names to what typer parsed)."""
    data: dict[str, Any] = {}
    for f in flags:
        v = given.get(f.param)
        if v is None or (f.kind == "pairs" and not v):
            continue
        if f.kind == "pairs":
            if f.field == "column_map":
                from cai.data.readers import parse_column_map

                v = parse_column_map(v)
            else:
                v = pairs_value(v, f.decls[0], f.metavar or "KEY=VALUE")
        elif f.kind == "yaml":
            v = parse_value(v)
        data[f.field] = v
    return data
