"""Load a stage's typed config from YAML plus CLI overrides, with errors that name the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
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
                known = ", ".join(cls.model_fields)
                msg = f"unknown setting; known settings: {known}"
            lines.append(f"  {loc}: {msg}")
        raise ConfigError(
            f"{source}: invalid settings for {cls.__name__}:\n" + "\n".join(lines),
            fix="correct the field(s) above; `cai <command> --help` lists every setting with its meaning.",
        ) from None


def load_stage_config(cls: type[T], config_path: str | None, overrides: dict[str, Any], *, section: str | None = None) -> T:
    """YAML file (optionally one section of it) then non-None CLI overrides."""
    data: dict[str, Any] = {}
    source = "command-line flags"
    if config_path:
        data = read_yaml(config_path)
        if section and section in data and isinstance(data[section], dict):
            data = data[section]
        source = str(config_path)
    for k, v in overrides.items():
        if v is not None:
            data[k] = v
    return build_config(cls, data, source=source)
