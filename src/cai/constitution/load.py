"""Load and validate constitution files, reporting every problem with file, line and field."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from cai.constitution.schema import Constitution
from cai.errors import UserInputError


@dataclass
class Problem:
    """One validation problem, located in the file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


def default_constitution_path() -> Path:
    """Path of the shipped default constitution."""
    return Path(str(resources.files("cai") / "resources" / "constitutions" / "default.yaml"))


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path (tuple of str/int) of a composed YAML node to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _line_index(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _line_index(v, path + (i,), out)
    return out


def _fmt_loc(loc: tuple) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s or "(top level)"


def validate_constitution_file(path: str | Path) -> tuple[Constitution | None, list[Problem]]:
    """Parse and validate ``path``. Returns the constitution (or None) and every problem found."""
    path = Path(path)
    name = str(path)
    if not path.exists():
        return None, [Problem(name, None, "(file)", "file not found; pass the path of a constitution YAML file")]
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return None, [Problem(name, line, "(file)", f"not valid UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8")]
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        return None, [Problem(name, line, "(syntax)", f"YAML syntax error: {getattr(e, 'problem', e)}")]
    if not isinstance(data, dict):
        return None, [Problem(name, 1, "(top level)", "expected a mapping with keys name, version, principles")]
    lines = _line_index(node) if node is not None else {}
    cross = _cross_reference_problems(data, lines, name)
    if cross:
        return None, cross
    try:
        return Constitution.model_validate(data), []
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line = None
            for cut in range(len(loc), -1, -1):
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key; remove it or check its spelling against `cai constitution schema`"
            elif err["type"] == "missing":
                msg = "required field is missing; add it"
            problems.append(Problem(name, line, _fmt_loc(loc), msg))
        return None, problems


def _cross_reference_problems(data: dict, lines: dict, name: str) -> list[Problem]:
    """Duplicate principle ids and demonstrations naming unknown principles, located at their own lines."""
    problems = []
    principles = data.get("principles")
    ids: list[str] = []
    if isinstance(principles, list):
        for i, p in enumerate(principles):
            pid = p.get("id") if isinstance(p, dict) else None
            if not isinstance(pid, str):
                continue
            if pid in ids:
                problems.append(Problem(name, lines.get(("principles", i, "id")), f"principles[{i}].id",
                                        f"duplicate principle id '{pid}'; every principle needs a unique id"))
            ids.append(pid)
    demos = data.get("demonstrations")
    if isinstance(demos, list) and ids:
        for i, d in enumerate(demos):
            ref = d.get("principle_id") if isinstance(d, dict) else None
            if isinstance(ref, str) and ref not in ids:
                problems.append(Problem(name, lines.get(("demonstrations", i, "principle_id")), f"demonstrations[{i}].principle_id",
                                        f"demonstrations[{i}].principle_id '{ref}' names no principle; use one of: {', '.join(sorted(set(ids)))}"))
    return problems


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load a constitution, or the shipped default when ``path`` is None. Raises UserInputError listing problems."""
    path = default_constitution_path() if path in (None, "", "default") else Path(path)
    const, problems = validate_constitution_file(path)
    if problems:
        listing = "\n".join(f"  {p}" for p in problems)
        raise UserInputError(
            f"Constitution {path} has {len(problems)} problem(s):\n{listing}",
            fix="edit the file at the lines shown; `cai constitution schema` prints every allowed field.",
        )
    assert const is not None
    return const
