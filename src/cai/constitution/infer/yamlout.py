"""Write a constitution as YAML with a comment block above each principle (its evidence), then check it loads."""

from __future__ import annotations

from pathlib import Path

import yaml

from cai.constitution.load import validate_constitution_file
from cai.constitution.schema import Constitution
from cai.data.io import atomic_write_text
from cai.errors import CaiError


def _comment(lines: list[str], indent: str = "") -> str:
    return "".join(f"{indent}# {ln}".rstrip() + "\n" for text in lines for ln in str(text).splitlines() or [""])


def constitution_yaml(const: Constitution, notes: dict[str, list[str]], header: list[str]) -> str:
    """YAML text of ``const``; ``notes[principle_id]`` become comment lines above that principle."""
    data = const.model_dump(mode="json", exclude_defaults=False)
    principles = data.pop("principles")
    demos = data.pop("demonstrations")
    text = _comment(header) + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
    text += "principles:\n"
    for p in principles:
        if not p.get("demonstrations"):
            p.pop("demonstrations", None)
        body = yaml.safe_dump([p], sort_keys=False, allow_unicode=True, width=120)
        text += _comment(notes.get(p["id"], []), "  ") + "".join("  " + ln + "\n" for ln in body.splitlines())
    text += yaml.safe_dump({"demonstrations": demos}, sort_keys=False, allow_unicode=True, width=120)
    return text


def write_constitution(path: str | Path, const: Constitution, notes: dict[str, list[str]], header: list[str]) -> None:
    """Write and re-validate; a written file that does not validate is a bug, reported as such."""
    atomic_write_text(path, constitution_yaml(const, notes, header))
    loaded, problems = validate_constitution_file(path)
    if problems or loaded is None:
        raise CaiError(f"{path}: the written constitution does not validate: " + "; ".join(map(str, problems)),
                       fix="report this as a bug, with the file.")
