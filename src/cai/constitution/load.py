"""Load and validate constitution files, reporting every problem with file, line and field."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from cai.constitution.schema import Constitution
from cai.errors import UserInputError
from cai.yamlsafe import CONSTITUTION_MAX_BYTES, YamlError, compose, construct, read_text_limited


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


def _line_index(root: yaml.Node) -> dict[tuple, int]:
    """Map every key path (tuple of str/int) of a composed YAML node to its 1-based line (iterative: any depth)."""
    out: dict[tuple, int] = {}
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)
                out[path + (key,)] = k.start_mark.line + 1
                stack.append((v, path + (key,)))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out[path + (i,)] = v.start_mark.line + 1
                stack.append((v, path + (i,)))
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
    try:
        text = read_text_limited(path, max_bytes=CONSTITUTION_MAX_BYTES, what="constitution")
        node = compose(text, path=name)
        data = construct(node, path=name)
    except YamlError as e:
        field = "(syntax)" if "syntax" in e.problem else "(file)"
        return None, [Problem(name, e.line, field, e.problem)]
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
    ids: dict[str, int] = {}
    if isinstance(principles, list):
        for i, p in enumerate(principles):
            pid = p.get("id") if isinstance(p, dict) else None
            if not isinstance(pid, str):
                continue
            if pid in ids:
                problems.append(Problem(name, lines.get(("principles", i, "id")), f"principles[{i}].id",
                                        f"duplicate principle id '{pid}'; every principle needs a unique id"))
            ids.setdefault(pid, i)
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
