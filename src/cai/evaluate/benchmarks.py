"""Readers for published safety and helpfulness benchmarks, in the file formats their authors distribute.

Every reader returns records with our fields: ``id``, ``prompt``, ``category``, ``benchmark`` and ``expected``
(``"refuse"`` for a harmful request, ``"comply"`` for a benign one, ``None`` when the benchmark says nothing), plus
the benchmark's own extras (``turns`` for MT-Bench, ``target`` for AdvBench, ``chosen``/``rejected`` for HH-RLHF).

=============  =====================================================  ==================================
kind           columns / shape                                        expected behaviour
=============  =====================================================  ==================================
xstest         CSV ``prompt``, ``type``, ``label`` (safe/unsafe)      safe -> comply, unsafe -> refuse
harmbench      CSV ``Behavior``, ``SemanticCategory``,                refuse
               ``FunctionalCategory`` [, ``BehaviorID``,
               ``ContextString``]
advbench       CSV ``goal``, ``target``                               refuse
strongreject   CSV ``category``, ``forbidden_prompt``                 refuse
mt-bench       JSONL ``question_id``, ``category``, ``turns``         comply (first turn is the prompt)
alpaca-eval    JSON list of ``instruction`` [, ``dataset``]           comply
hh-rlhf        JSONL(.gz) ``chosen``/``rejected`` transcripts         preference pairs (prompt, chosen,
               ("\\n\\nHuman: ...\\n\\nAssistant: ...")                   rejected)
preference     JSONL ``prompt``, ``chosen``, ``rejected`` (strings    preference pairs
               or message lists, as ``cai revise`` writes them)
prompts        any file with a ``prompt`` column                      from a ``harmful`` column, if any
=============  =====================================================  ==================================

``read_benchmark("auto", path)`` detects the kind from the columns. Errors name the file and the missing column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from cai.data.readers import read_records
from cai.errors import UserInputError

Record = dict[str, Any]

# kind -> columns that identify it (all must be present), checked in this order by auto-detection.
SIGNATURES: list[tuple[str, tuple[str, ...]]] = [
    ("hh-rlhf", ("chosen", "rejected")),
    ("mt-bench", ("question_id", "turns")),
    ("harmbench", ("Behavior",)),
    ("strongreject", ("forbidden_prompt",)),
    ("advbench", ("goal", "target")),
    ("xstest", ("prompt", "label")),
    ("alpaca-eval", ("instruction",)),
    ("prompts", ("prompt",)),
]
REQUIRED: dict[str, tuple[str, ...]] = {
    "xstest": ("prompt", "type", "label"),
    "harmbench": ("Behavior", "SemanticCategory", "FunctionalCategory"),
    "advbench": ("goal", "target"),
    "strongreject": ("category", "forbidden_prompt"),
    "mt-bench": ("question_id", "category", "turns"),
    "alpaca-eval": ("instruction",),
    "hh-rlhf": ("chosen", "rejected"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompts": ("prompt",),
}
ALIASES = {"mtbench": "mt-bench", "alpacaeval": "alpaca-eval", "alpaca_eval": "alpaca-eval", "hh": "hh-rlhf",
           "strong-reject": "strongreject", "strongreject_dataset": "strongreject", "mt_bench": "mt-bench",
           "hh_rlhf": "hh-rlhf"}
KINDS = tuple(REQUIRED)


def _need(path: Path, rows: list[Record], kind: str) -> None:
    cols = list(rows[0].keys())
    for col in REQUIRED[kind]:
        if col not in rows[0]:
            raise UserInputError(
                f"{path}: no column '{col}', which the {kind} reader needs (it needs: {', '.join(REQUIRED[kind])}). "
                f"Columns found: {', '.join(map(str, cols))}.",
                fix=f"pass the file in the published {kind} format, or choose another kind "
                f"({', '.join(KINDS)}), or 'auto' to detect it from the columns.",
            )


def _text(v: Any) -> str:
    return "" if v is None else str(v).strip()


def _check_prompt(path: Path, i: int, prompt: str, col: str) -> None:
    if not prompt:
        raise UserInputError(f"{path} (record {i + 1}): column '{col}' is empty.", fix="fill it in or remove the row.")


def _xstest(path: Path, rows: list[Record]) -> list[Record]:
    out = []
    for i, r in enumerate(rows):
        label = _text(r["label"]).lower()
        if label not in ("safe", "unsafe"):
            raise UserInputError(
                f"{path} (record {i + 1}): label '{r['label']}' is neither 'safe' nor 'unsafe'.",
                fix="XSTest labels are 'safe' (benign prompt) or 'unsafe' (harmful contrast prompt).",
            )
        prompt = _text(r["prompt"])
        _check_prompt(path, i, prompt, "prompt")
        out.append(
            {
                "id": f"xstest-{r['id']}",
                "prompt": prompt,
                "category": _text(r["type"]) or "uncategorized",
                "expected": "comply" if label == "safe" else "refuse",
                "harmful": label == "unsafe",
                "label": label,
                **({"focus": _text(r["focus"])} if r.get("focus") else {}),
            }
        )
    return out


def _harmbench(path: Path, rows: list[Record]) -> list[Record]:
    out = []
    for i, r in enumerate(rows):
        behavior = _text(r["Behavior"])
        _check_prompt(path, i, behavior, "Behavior")
        context = _text(r.get("ContextString"))
        # HarmBench's own prompt for contextual behaviors: the context, a separator, then the behavior.
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
        bid = _text(r.get("BehaviorID")) or r["id"]
        out.append(
            {
                "id": f"harmbench-{bid}",
                "prompt": prompt,
                "category": _text(r["SemanticCategory"]) or "uncategorized",
                "functional_category": _text(r["FunctionalCategory"]),
                "expected": "refuse",
                "harmful": True,
            }
        )
    return out


def _advbench(path: Path, rows: list[Record]) -> list[Record]:
    out = []
    for i, r in enumerate(rows):
        goal = _text(r["goal"])
        _check_prompt(path, i, goal, "goal")
        out.append(
            {
                "id": f"advbench-{i + 1:05d}",
                "prompt": goal,
                "category": "harmful_behavior",
                "target": _text(r["target"]),
                "expected": "refuse",
                "harmful": True,
            }
        )
    return out


def _strongreject(path: Path, rows: list[Record]) -> list[Record]:
    out = []
    for i, r in enumerate(rows):
        prompt = _text(r["forbidden_prompt"])
        _check_prompt(path, i, prompt, "forbidden_prompt")
        rec = {
            "id": f"strongreject-{i + 1:05d}",
            "prompt": prompt,
            "category": _text(r["category"]) or "uncategorized",
            "expected": "refuse",
            "harmful": True,
        }
        if r.get("source"):
            rec["source"] = _text(r["source"])
        out.append(rec)
    return out


def _mt_bench(path: Path, rows: list[Record]) -> list[Record]:
    out = []
    for i, r in enumerate(rows):
        turns = r["turns"]
        if isinstance(turns, str) or not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise UserInputError(
                f"{path} (record {i + 1}): 'turns' must be a non-empty list of strings.",
                fix='write it as "turns": ["first question", "follow-up"].',
            )
        _check_prompt(path, i, turns[0].strip(), "turns")
        out.append(
            {
                "id": f"mtbench-{r['question_id']}",
                "prompt": turns[0].strip(),
                "category": _text(r["category"]) or "uncategorized",
                "turns": list(turns),
                "expected": "comply",
                "harmful": False,
            }
        )
    return out


def _alpaca_eval(path: Path, rows: list[Record]) -> list[Record]:
    out = []
    for i, r in enumerate(rows):
        instr = _text(r["instruction"])
        _check_prompt(path, i, instr, "instruction")
        out.append(
            {
                "id": f"alpaca-{i + 1:05d}",
                "prompt": instr,
                "category": _text(r.get("dataset")) or "uncategorized",
                "expected": "comply",
                "harmful": False,
            }
        )
    return out


_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> chat messages (user/assistant)."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _TURN.split(text)
    msgs = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return msgs


def _hh_split(path: Path, i: int, transcript: Any, col: str) -> tuple[str, str]:
    text = transcript if isinstance(transcript, str) else _text(transcript)
    k = text.rfind("\n\nAssistant:")
    if k < 0:
        raise UserInputError(
            f"{path} (record {i + 1}): the '{col}' transcript has no '\\n\\nAssistant:' turn.",
            fix='HH-RLHF transcripts look like "\\n\\nHuman: ...\\n\\nAssistant: ...".',
        )
    return text[:k], text[k + len("\n\nAssistant:") :].strip()


def _hh_rlhf(path: Path, rows: list[Record]) -> list[Record]:
    if rows and not isinstance(rows[0]["chosen"], str):
        return _preference(path, rows)
    out = []
    for i, r in enumerate(rows):
        p_c, chosen = _hh_split(path, i, r["chosen"], "chosen")
        p_r, rejected = _hh_split(path, i, r["rejected"], "rejected")
        if p_c.strip() != p_r.strip():
            raise UserInputError(
                f"{path} (record {i + 1}): 'chosen' and 'rejected' continue different conversations.",
                fix="both transcripts must share everything up to the last Assistant turn.",
            )
        messages = parse_hh_transcript(p_c)
        user_turns = [m["content"] for m in messages if m["role"] == "user"]
        if not user_turns:
            raise UserInputError(f"{path} (record {i + 1}): no Human turn before the last Assistant turn.", fix="check the transcript.")
        out.append(
            {
                "id": f"hh-{i + 1:05d}",
                "prompt": p_c.strip(),
                "messages": messages,
                "last_user": user_turns[-1],
                "chosen": chosen,
                "rejected": rejected,
                "category": "preference",
                "expected": None,
            }
        )
    return out


def _as_text(v: Any) -> str:
    if isinstance(v, list):
        return "\n\n".join(_text(m.get("content")) if isinstance(m, dict) else _text(m) for m in v)
    if isinstance(v, dict):
        return _text(v.get("content"))
    return _text(v)


def _preference(path: Path, rows: list[Record]) -> list[Record]:
    out = []
    for i, r in enumerate(rows):
        prompt_v = r.get("prompt")
        if prompt_v is None:
            raise UserInputError(f"{path} (record {i + 1}): no 'prompt'.", fix="preference rows need prompt, chosen, rejected.")
        messages = prompt_v if isinstance(prompt_v, list) else [{"role": "user", "content": _text(prompt_v)}]
        user_turns = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last_user = user_turns[-1] if user_turns else _as_text(prompt_v)
        out.append(
            {
                "id": str(r.get("id") or f"pref-{i + 1:05d}"),
                "prompt": _as_text(prompt_v),
                "messages": messages,
                "last_user": last_user,
                "chosen": _as_text(r["chosen"]),
                "rejected": _as_text(r["rejected"]),
                "category": _text(r.get("category")) or "preference",
                "expected": None,
            }
        )
    return out


def _prompts(path: Path, rows: list[Record]) -> list[Record]:
    out = []
    for i, r in enumerate(rows):
        prompt = _text(r["prompt"])
        _check_prompt(path, i, prompt, "prompt")
        harmful = r.get("harmful")
        if isinstance(harmful, str):
            harmful = harmful.strip().lower() in ("1", "true", "yes", "harmful", "unsafe")
        expected = None if harmful is None else ("refuse" if harmful else "comply")
        out.append(
            {
                "id": str(r["id"]),
                "prompt": prompt,
                "category": _text(r.get("category")) or "uncategorized",
                "expected": expected,
                "harmful": harmful,
            }
        )
    return out


READERS: dict[str, Callable[[Path, list[Record]], list[Record]]] = {
    "xstest": _xstest,
    "harmbench": _harmbench,
    "advbench": _advbench,
    "strongreject": _strongreject,
    "mt-bench": _mt_bench,
    "alpaca-eval": _alpaca_eval,
    "hh-rlhf": _hh_rlhf,
    "preference": _preference,
    "prompts": _prompts,
}


def detect_kind(path: str | Path, columns: list[str]) -> str:
    cols = set(columns)
    for kind, sig in SIGNATURES:
        if set(sig) <= cols:
            return kind
    raise UserInputError(
        f"{path}: cannot tell which benchmark this is from its columns ({', '.join(map(str, columns))}).",
        fix="name the kind explicitly (" + ", ".join(KINDS) + "); auto-detection looks for: "
        + "; ".join(f"{k}: {', '.join(s)}" for k, s in SIGNATURES),
    )


def read_benchmark(kind: str, path: str | Path, *, limit: int | None = None) -> list[Record]:
    """Read a benchmark file into our records. ``kind`` is one of :data:`KINDS` or ``"auto"``."""
    path = Path(path)
    kind = ALIASES.get(kind.lower(), kind.lower())
    if kind != "auto" and kind not in READERS:
        raise UserInputError(f"Unknown benchmark kind '{kind}' for {path}.", fix=f"use one of: auto, {', '.join(KINDS)}.")
    rows = read_records(path, required=(), id_prefix="row")
    raw = _raw_columns(rows)
    columns = [c for c in rows[0].keys() if c in raw]
    if kind == "auto":
        kind = detect_kind(path, columns)
        if kind == "hh-rlhf" and "prompt" in rows[0]:
            kind = "preference"
    _need(path, rows, kind)
    recs = READERS[kind](path, rows)
    for r in recs:
        r["benchmark"] = kind
    if limit is not None:
        recs = recs[:limit]
    return recs


def _raw_columns(rows: list[Record]) -> set[str]:
    # read_records adds an "id" to every record; treat it as a real column only when it is not the generated one.
    first = rows[0]
    if str(first.get("id", "")).startswith("row-"):
        return set(first) - {"id"}
    return set(first)
