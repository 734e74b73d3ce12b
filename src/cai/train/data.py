"""Training data read from files: this run's outputs by alias, or a user's file, as conversations.

* :func:`resolve_run_input` - ``'revise'``/``'label'`` shorthands for this run's own outputs, or a path.
* :func:`as_messages` - a string or a list of ``{role, content}`` messages, checked, with located errors.
* :func:`load_preferences` - preference pairs (prompt / chosen / rejected) with ``p_chosen`` = P(chosen is better),
  read from a soft-label field when the file has one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.errors import UserInputError
from cai.runs import file_digest  # noqa: F401 - the digest recorded for training data files

Message = dict[str, str]
Conversation = list[Message]

LABEL_FIELDS = ("p_chosen", "score_chosen", "score", "label")
"""Soft-label fields recognised in preference files, in order of preference: P(chosen is better) in [0, 1]."""


#: ``data: label`` / ``data: revise`` shorthands of the stages that train on preference pairs (reward, dpo).
PREFERENCE_ALIASES = {"label": "label/preference.jsonl", "revise": "revise/preference.jsonl"}


class PreferenceDataSettings(BaseModel):
    """Where the preference pairs of ``cai reward`` and ``cai dpo`` come from, and which field holds the soft label."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        default="label",
        description="'label' = this run's label/preference.jsonl, 'revise' = revise/preference.jsonl, or a file path",
    )
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column, e.g. {chosen: good}")
    label_field: str = Field(
        default="auto",
        description="Soft label P(chosen better): auto (p_chosen, score_chosen, score or label), none (hard labels), "
        "or a field name",
    )

    def load_pairs(self, run_dir: Path, command: str) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
        """(file, pairs, counts) - the file resolved against this run, its pairs read by :func:`load_preferences`."""
        path = resolve_run_input(self.data, run_dir, PREFERENCE_ALIASES, field="data", command=command)
        pairs, info = load_preferences(path, label_field=self.label_field, column_map=self.column_map)
        return path, pairs, info


def resolve_run_input(value: str, run_dir: Path, aliases: dict[str, str], *, field: str, command: str) -> Path:
    """``value`` is an alias of a file inside this run (e.g. 'revise' -> RUN/revise/sft.jsonl) or a path."""
    if value in aliases:
        p = run_dir / aliases[value]
        if not p.exists():
            raise UserInputError(
                f"{field}: '{value}' means {p}, which does not exist.",
                fix=f"run `cai {value} --run {run_dir.name}` first (same --runs-dir), or pass {command} --data FILE.",
            )
        return p
    p = Path(os.path.expanduser(value))
    if not p.exists():
        raise UserInputError(
            f"{field}: file '{value}' not found.",
            fix=f"check the path, or use one of: {', '.join(repr(a) for a in aliases)} (this run's own outputs).",
        )
    return p


def _where(path: Path, row: dict) -> str:
    return f"{path} (id {row.get('id')})"


def as_messages(value: Any, *, path: Path, row: dict, field: str, default_role: str) -> Conversation:
    """A string (one message of ``default_role``) or a list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise UserInputError(f"{_where(path, row)}: field '{field}' is empty.", fix="fill it in or remove the row.")
        return [{"role": default_role, "content": value}]
    if isinstance(value, list) and value:
        out = []
        for m in value:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise UserInputError(
                    f"{_where(path, row)}: field '{field}' must be a string or a list of {{role, content}} messages; "
                    f"found {json.dumps(m)[:120]}.",
                    fix='write messages like {"role": "user", "content": "..."}.',
                )
            out.append({"role": m["role"], "content": m["content"]})
        return out
    raise UserInputError(
        f"{_where(path, row)}: field '{field}' must be a non-empty string or list of messages, got {type(value).__name__}.",
        fix='use a string, or a list like [{"role": "user", "content": "..."}].',
    )


def load_preferences(
    path: str | Path, *, label_field: str = "auto", column_map: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Preference pairs with conversational prompt/chosen/rejected and ``p_chosen`` = P(chosen is better).

    ``label_field``: ``auto`` (the first of p_chosen, score_chosen, score, label that the file has; none -> hard
    labels, p = 1), ``none`` (ignore soft labels), or a field name. Pairs whose chosen and rejected answers are identical carry no
    signal and are dropped (counted in the returned info).
    """
    from cai.data.readers import read_records

    path = Path(path)
    rows = read_records(path, required=("prompt", "chosen", "rejected"), column_map=column_map, id_prefix="pair")
    field: str | None
    if label_field == "none":
        field = None
    elif label_field == "auto":
        field = next((f for f in LABEL_FIELDS if any(f in r for r in rows)), None)
    else:
        field = label_field
        if not any(field in r for r in rows):
            raise UserInputError(
                f"{path}: label_field '{field}' is not a field of any row.",
                fix=f"use label_field: auto (looks for {', '.join(LABEL_FIELDS)}), none (hard labels), or the right name.",
            )
    out, identical = [], 0
    for r in rows:
        prompt = as_messages(r["prompt"], path=path, row=r, field="prompt", default_role="user")
        chosen = as_messages(r["chosen"], path=path, row=r, field="chosen", default_role="assistant")
        rejected = as_messages(r["rejected"], path=path, row=r, field="rejected", default_role="assistant")
        for name, conv in (("chosen", chosen), ("rejected", rejected)):
            if conv[-1]["role"] != "assistant":
                raise UserInputError(
                    f"{_where(path, r)}: the last message of '{name}' has role '{conv[-1]['role']}', not 'assistant'.",
                    fix="chosen/rejected hold the assistant's answer (a string or [{role: assistant, content: ...}]).",
                )
        if prompt[-1]["role"] == "assistant":
            raise UserInputError(
                f"{_where(path, r)}: the prompt ends with an assistant message.",
                fix="the prompt is the conversation up to the answer; put the answer in chosen/rejected.",
            )
        p = 1.0
        if field is not None:
            v = r.get(field)
            if v is None:
                raise UserInputError(
                    f"{_where(path, r)}: no '{field}' value although other rows have one.",
                    fix=f"give every row a '{field}' in [0, 1], or set label_field: none to train on hard labels.",
                )
            try:
                p = float(v)
            except (TypeError, ValueError):
                raise UserInputError(
                    f"{_where(path, r)}: '{field}' = {v!r} is not a probability.",
                    fix=f"'{field}' must be P(chosen is better) in [0, 1]; set label_field: none to ignore it.",
                ) from None
            if not (0.0 <= p <= 1.0) or not math.isfinite(p):
                raise UserInputError(
                    f"{_where(path, r)}: '{field}' = {v!r} is outside [0, 1].",
                    fix=f"'{field}' must be P(chosen is better); set label_field: none to ignore it.",
                )
        if chosen == rejected:
            identical += 1
            continue
        out.append({"id": r["id"], "prompt": prompt, "chosen": chosen, "rejected": rejected, "p_chosen": p})
    if not out:
        raise UserInputError(
            f"{path}: no usable preference pairs ({len(rows)} rows, {identical} with identical chosen and rejected).",
            fix="give pairs whose chosen and rejected answers differ.",
        )
    info = {
        "file": str(path),
        "rows": len(rows),
        "pairs": len(out),
        "identical_dropped": identical,
        "label_field": field,
        "mean_p_chosen": round(sum(x["p_chosen"] for x in out) / len(out), 4),
    }
    return out, info
