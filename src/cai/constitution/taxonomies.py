"""Harm taxonomies that a constitution's coverage is measured against.

A taxonomy is a versioned YAML file: a name, a version, a note on its source, and categories, each with an id, a
name, a description and ``maps_to``, the toolkit tags (:data:`cai.constitution.schema.KNOWN_TAGS`) whose principles
cover it (empty when none does). Four ship with the toolkit (:data:`SHIPPED`); any file of the same shape works.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cai.constitution.load import _fmt_loc, _line_index
from cai.constitution.schema import KNOWN_TAGS
from cai.errors import UserInputError
from cai.yamlsafe import load_yaml

SHIPPED: dict[str, str] = {
    "cai-12": "cai-12.yaml",
    "mlcommons-ailuminate": "mlcommons-ailuminate-1.0.yaml",
    "llama-guard-3": "llama-guard-3.yaml",
    "harmbench": "harmbench.yaml",
}
ALIASES = {"ailuminate": "mlcommons-ailuminate", "mlcommons": "mlcommons-ailuminate", "llamaguard": "llama-guard-3",
           "cai": "cai-12", "default": "cai-12"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TaxonomyCategory(_Strict):
    """One category of a taxonomy."""

    id: str = Field(description="Identifier of the category within its taxonomy (e.g. 'S1', 'hate').", min_length=1)
    name: str = Field(description="Short human-readable name.", min_length=1)
    description: str = Field(default="", description="What the category covers, in one sentence.")
    group: str | None = Field(default=None, description="Optional group the category belongs to.")
    maps_to: list[str] = Field(default_factory=list, description="Toolkit tags whose principles cover this category "
                               "(empty: none does).")

    @field_validator("maps_to")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in KNOWN_TAGS]
        if bad:
            raise ValueError(f"unknown tag(s) {', '.join(bad)}; use tags from: {', '.join(sorted(KNOWN_TAGS))}")
        return v


class Taxonomy(_Strict):
    """A versioned harm taxonomy."""

    name: str = Field(description="Name of the taxonomy.", min_length=1)
    version: str = Field(description="Version of the taxonomy this file follows.", min_length=1)
    title: str = Field(default="", description="Human-readable title.")
    source: str = Field(description="Where the category names come from, and how the mapping was made.", min_length=1)
    categories: list[TaxonomyCategory] = Field(description="The categories. At least one.", min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _unique(self) -> "Taxonomy":
        seen: set[str] = set()
        for c in self.categories:
            if c.id in seen:
                raise ValueError(f"duplicate category id '{c.id}'; every category needs a unique id")
            seen.add(c.id)
        return self


def shipped_taxonomy_path(name: str) -> Path:
    return Path(str(resources.files("cai") / "resources" / "taxonomies" / SHIPPED[name]))


def load_taxonomy(name_or_path: str) -> tuple[Taxonomy, str]:
    """A shipped taxonomy by name (see :data:`SHIPPED`) or a taxonomy YAML file. Returns it and where it came from."""
    key = ALIASES.get(name_or_path.lower(), name_or_path.lower())
    if key in SHIPPED:
        path = shipped_taxonomy_path(key)
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise UserInputError(f"taxonomy '{name_or_path}' is neither a shipped taxonomy nor a file.",
                                 fix=f"use one of: {', '.join(SHIPPED)}, or the path of a taxonomy YAML file.")
    data, node = load_yaml(path, what="taxonomy")
    if not isinstance(data, dict):
        raise UserInputError(f"{path}:1: a taxonomy must be a mapping with name, version, source and categories.",
                             fix=f"see {shipped_taxonomy_path('cai-12')} for the layout.")
    try:
        return Taxonomy.model_validate(data), str(path)
    except ValidationError as e:
        lines = _line_index(node) if node is not None else {}
        msgs = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line = next((lines[loc[:k]] for k in range(len(loc), -1, -1) if loc[:k] in lines), None)
            where = f"{path}:{line}" if line else str(path)
            msg = "unknown key; remove it or check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
            msgs.append(f"  {where}: {_fmt_loc(loc)}: {msg}")
        raise UserInputError(f"Taxonomy {path} has {len(msgs)} problem(s):\n" + "\n".join(msgs),
                             fix=f"edit the file at the lines shown; {shipped_taxonomy_path('cai-12')} shows the "
                             "layout.") from None
