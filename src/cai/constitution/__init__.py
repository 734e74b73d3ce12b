"""Constitutions: the schema, loading with line-aware errors, sampling and hashing."""

from cai.constitution.schema import (
    HARM_CATEGORIES,
    Constitution,
    Demonstration,
    Principle,
)
from cai.constitution.load import default_constitution_path, load_constitution, validate_constitution_file

__all__ = [
    "HARM_CATEGORIES",
    "Constitution",
    "Demonstration",
    "Principle",
    "default_constitution_path",
    "load_constitution",
    "validate_constitution_file",
]
