"""Load a stage's typed config from YAML plus CLI overrides, with errors that name the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cai.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a dict; size, aliases, repeated keys and syntax are checked (see :mod:`cai.yamlsafe`)."""
    from cai.yamlsafe import CONFIG_MAX_BYTES, YamlError, load_yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} not found.", fix="check the path.")
    try:
        data, _ = load_yaml(path, max_bytes=CONFIG_MAX_BYTES, what="config file")
    except YamlError as e:
        raise ConfigError(e.message, fix=e.fix) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(data).__name__}.", fix="write key: value lines.")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: setting names must be text, found {bad[0]!r}.", fix="write key: value lines with named keys.")
    return data


def build_config(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                owner: type[BaseModel] | None = cls
                for part in err["loc"][:-1]:  # the settings the misspelled key sits in (e.g. critic.base_url)
                    owner = _submodel(owner, str(part))
                known = ", ".join((owner or cls).model_fields)
                msg = f"unknown setting; known settings: {known}"
            lines.append(f"  {loc}: {msg}")
        raise ConfigError(
            f"{source}: invalid settings for {cls.__name__}:\n" + "\n".join(lines),
            fix="correct the field(s) above; `cai <command> --help` lists every setting with its meaning.",
        ) from None


# --- values given as text (command-line flags, `--set`), parsed the same way a YAML file would be ---------------------
NULL_WORDS = ("none", "null", "off", "")


def none_as_null(v: Any) -> Any:
    """Field validator (mode="before"): the words none/null/off (any case) or an empty string mean null."""
    return None if isinstance(v, str) and v.strip().lower() in NULL_WORDS else v


def parse_band(v: Any) -> Any:
    """Field validator (mode="before") for a (lo, hi) pair: 'LO,HI' text, a list, or none/null/off."""
    v = none_as_null(v)
    if not isinstance(v, str):
        return v
    parts = [x for x in v.replace(" ", "").split(",") if x]
    try:
        lo, hi = (float(x) for x in parts)
    except ValueError:
        raise ValueError(f"'{v}' is not of the form LO,HI; write e.g. 0.4,0.6, or none") from None
    return (lo, hi)


def parse_value(text: str) -> Any:
    """A command-line value read as YAML (numbers, true/false, null, lists, mappings); text when it is not YAML."""
    from cai.yamlsafe import YamlError, compose, construct

    try:
        return construct(compose(text, path="command line"), path="command line")
    except YamlError:
        return text  # not YAML (or refused by the safety checks): the plain text is the value


def set_path(cls: type[BaseModel] | None, data: dict[str, Any], assignment: str, *, flag: str = "--set") -> None:
    """Apply ``a.b.c=value`` to ``data`` (raw settings of ``cls``), creating nested mappings as needed.

    A model field given in shorthand (``critic: openai:NAME@URL``) is expanded into its mapping first, so
    ``critic.base_url=...`` changes one key of it."""
    key, sep, raw = assignment.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        raise ConfigError(f"{flag} '{assignment}' is not of the form KEY=VALUE.",
                          fix=f"write e.g. {flag} rounds=2 or {flag} critic.base_url=http://localhost:8000/v1.")
    node: dict[str, Any] = data
    model: type[BaseModel] | None = cls
    for part in parts[:-1]:
        sub_model = _submodel(model, part)
        value = node.get(part)
        if value is None or isinstance(value, str):
            value = _expand(sub_model, value)
        elif isinstance(value, BaseModel):
            value = value.model_dump(exclude_unset=True)
        if not isinstance(value, dict):
            raise ConfigError(f"{flag} '{assignment}': '{part}' holds {value!r}, which has no settings inside.",
                              fix=f"set '{part}' itself, e.g. {flag} {part}=VALUE.")
        node[part] = value
        node, model = value, sub_model
    node[parts[-1]] = parse_value(raw)


def _submodel(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    import typing

    if model is None or name not in model.model_fields:
        return None
    for t in (model.model_fields[name].annotation, *typing.get_args(model.model_fields[name].annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _expand(model: type[BaseModel] | None, value: str | None) -> Any:
    if value is None:
        return {}
    if model is None:
        return value
    try:
        return model.model_validate(value).model_dump(exclude_unset=True)
    except ValidationError:
        return value
