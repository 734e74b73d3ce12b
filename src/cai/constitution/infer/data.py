"""Read pairwise preferences for inverse CAI: ICAI's CSV, TRL's prompt/chosen/rejected JSONL, HH-RLHF transcripts.

Every format becomes a list of :class:`Pair` (id, request, chosen answer, rejected answer). Errors name the file,
the line and the column, and say how to fix the file.

* ICAI CSV: columns ``text_a``, ``text_b``, ``preferred_text`` (the value ``text_a`` or ``text_b``), optional
  ``input`` (the request) and ``id``.
* TRL JSONL (or a CSV with the same columns): ``prompt``, ``chosen``, ``rejected`` (text, or lists of chat messages
  whose last assistant turn is the answer), optional ``id``.
* HH-RLHF JSONL: ``chosen`` and ``rejected`` transcripts (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) that share
  everything up to the last Assistant turn.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cai.constitution.collect.csvread import read_table
from cai.errors import UserInputError

Format = Literal["auto", "icai", "trl", "hh"]
FORMATS = ("auto", "icai", "trl", "hh")


@dataclass
class Pair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    line: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserInputError(f"{path}: not valid UTF-8.", fix="re-save the file as UTF-8.") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}).",
                                 fix="write one JSON object per line.") from None
        if not isinstance(rec, dict):
            raise UserInputError(f"{path}:{n}: a JSON {type(rec).__name__}, not an object.",
                                 fix='write one object per line, e.g. {"prompt": "...", "chosen": "...", "rejected": "..."}.')
        out.append((n, rec))
    if not out:
        raise UserInputError(f"{path}: no records.", fix="give at least one preference pair.")
    return out


def _answer(path: Path, line: int, col: str, value: Any) -> str:
    """Text of an answer: a string, or the last assistant message of a chat message list."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for m in reversed(value):
            if m.get("role") == "assistant" and isinstance(m.get("content"), str) and m["content"].strip():
                return m["content"].strip()
    raise UserInputError(f"{path}:{line}: column '{col}' is empty or not text.",
                         fix=f"give '{col}' as text, or as a list of chat messages ending with an assistant turn.")


def _prompt(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        users = [m.get("content", "") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]).strip() if users else ""
    return ""


def _hh_split(path: Path, line: int, col: str, text: Any) -> tuple[str, str]:
    if not isinstance(text, str):
        raise UserInputError(f"{path}:{line}: column '{col}' is not a transcript string.",
                             fix='HH-RLHF transcripts are strings like "\\n\\nHuman: ...\\n\\nAssistant: ...".')
    k = text.rfind("\n\nAssistant:")
    if k < 0:
        raise UserInputError(f"{path}:{line}: column '{col}' has no '\\n\\nAssistant:' turn.",
                             fix='HH-RLHF transcripts look like "\\n\\nHuman: ...\\n\\nAssistant: ...".')
    return text[:k], text[k + len("\n\nAssistant:"):].strip()


def _hh_pair(path: Path, line: int, rec: dict[str, Any], pid: str) -> Pair:
    pc, chosen = _hh_split(path, line, "chosen", rec.get("chosen"))
    pr, rejected = _hh_split(path, line, "rejected", rec.get("rejected"))
    if pc.strip() != pr.strip():
        raise UserInputError(f"{path}:{line}: columns 'chosen' and 'rejected' continue different conversations.",
                             fix="both transcripts must share everything up to the last Assistant turn.")
    humans = [seg.split("\n\nAssistant:")[0].strip() for seg in ("\n\n" + pc.lstrip("\n")).split("\n\nHuman:")[1:]]
    if not humans:
        raise UserInputError(f"{path}:{line}: column 'chosen' has no Human turn before its last Assistant turn.",
                             fix="check the transcript.")
    if not chosen or not rejected:
        raise UserInputError(f"{path}:{line}: an empty last Assistant turn in 'chosen' or 'rejected'.", fix="remove the row.")
    return Pair(pid, humans[-1], chosen, rejected, line)


def _detect(path: Path, columns: list[str]) -> str:
    cols = set(columns)
    if {"text_a", "text_b", "preferred_text"} <= cols:
        return "icai"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "trl"
    if {"chosen", "rejected"} <= cols:
        return "hh"
    raise UserInputError(
        f"{path}:1: cannot tell the format from the columns {', '.join(columns) or '(none)'}.",
        fix="use ICAI's text_a,text_b,preferred_text[,input]; TRL's prompt,chosen,rejected; or HH-RLHF's chosen,rejected.",
    )


def read_pairs(path: str | Path, fmt: str = "auto") -> list[Pair]:
    """The preference pairs of ``path`` (CSV or JSONL) in format ``fmt`` (``auto`` detects it from the columns)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise UserInputError(f"unknown preference format '{fmt}'.", fix=f"use one of: {', '.join(FORMATS)}.")
    if not path.is_file():
        raise UserInputError(f"{path}: file not found.", fix="give a CSV or JSONL file of preference pairs.")
    records: list[tuple[int, dict[str, Any]]]
    if path.suffix.lower() in (".csv", ".tsv"):
        table = read_table(path, what="preference CSV")
        records = [(r.line, dict(r.cells)) for r in table.rows]
        columns = table.header
    else:
        records = _jsonl(path)
        columns = list(records[0][1].keys())
    kind = _detect(path, columns) if fmt == "auto" else fmt
    pairs: list[Pair] = []
    for i, (line, rec) in enumerate(records):
        pid = str(rec.get("id") or f"pair-{i + 1:05d}")
        if kind == "icai":
            for col in ("text_a", "text_b", "preferred_text"):
                if col not in rec:
                    raise UserInputError(f"{path}:{line}: no column '{col}'.",
                                         fix="ICAI files have the columns text_a, text_b, preferred_text and optionally input.")
            pref = str(rec["preferred_text"]).strip()
            if pref not in ("text_a", "text_b"):
                raise UserInputError(f"{path}:{line}: column 'preferred_text' is {pref[:40]!r}.",
                                     fix="write text_a or text_b: the name of the column holding the preferred answer.")
            a = _answer(path, line, "text_a", rec["text_a"])
            b = _answer(path, line, "text_b", rec["text_b"])
            chosen, rejected = (a, b) if pref == "text_a" else (b, a)
            pairs.append(Pair(pid, _prompt(rec.get("input", "")), chosen, rejected, line))
        elif kind == "trl":
            for col in ("prompt", "chosen", "rejected"):
                if col not in rec:
                    raise UserInputError(f"{path}:{line}: no column '{col}'.", fix="TRL files have prompt, chosen and rejected.")
            pairs.append(Pair(pid, _prompt(rec["prompt"]), _answer(path, line, "chosen", rec["chosen"]),
                              _answer(path, line, "rejected", rec["rejected"]), line))
        else:
            pairs.append(_hh_pair(path, line, rec, pid))
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        bad = [p.line for p in pairs if p.id == dup]
        raise UserInputError(f"{path}:{bad[1]}: column 'id': '{dup}' is also the id on line {bad[0]}.",
                             fix="give every pair a unique id, or drop the id column to number pairs automatically.")
    if len(pairs) < 4:
        raise UserInputError(f"{path}: only {len(pairs)} pair(s).", fix="give at least 4 pairs (training and held-out splits need some each).")
    return pairs


def write_pairs_jsonl(path: str | Path, pairs: list[Pair]) -> None:
    """Pairs as TRL-style JSONL (id, prompt, chosen, rejected)."""
    Path(path).write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected},
                                             ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
