"""Read prompt sets from JSONL, JSON, CSV, Parquet or a saved Hugging Face ``datasets`` folder, with a column map.

Every problem (missing file, empty file, bad encoding, bad JSON line, missing column) raises a
:class:`~cai.errors.UserInputError` that names the file, the line or column and the fix.
"""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

from cai.errors import UserInputError

SHIPPED = {"redteam": "redteam.jsonl", "helpful": "helpful.jsonl"}


def parse_column_map(items: list[str] | dict[str, str] | None) -> dict[str, str]:
    """``["prompt=question", "category=type"]`` or a dict -> {our field: their column}."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for it in items:
        if "=" not in it:
            raise UserInputError(
                f"Column mapping '{it}' is not of the form FIELD=COLUMN.",
                fix="write it like --column prompt=question (our field on the left, your file's column on the right).",
            )
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserInputError(f"{path}: cannot read it ({e.strerror or e}).", fix="check the path and its permissions.") from None
    return _decode(path, data)


def _decode(path: Path, data: bytes, *, inside: str = "") -> str:
    if not data.strip():
        raise UserInputError(f"{path} is empty{' once decompressed' if inside else ''}.", fix="give a file with at least one record.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        where = f" in {inside}" if inside else ""
        raise UserInputError(
            f"{path}:{line}: not valid UTF-8{where} (byte 0x{data[e.start]:02x} at offset {e.start}).",
            fix="re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`.",
        ) from None


def _read_raw(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows and their 1-based line numbers (0 when unknown)."""
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    if path.is_dir():
        try:
            from datasets import load_from_disk

            ds = load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds
            raise UserInputError(
                f"{path} is a folder but not a saved Hugging Face dataset ({e}).",
                fix="save it with `Dataset.save_to_disk(path)`, or pass a .jsonl/.csv/.parquet file.",
            ) from None
        from datasets import DatasetDict

        if isinstance(ds, DatasetDict):
            raise UserInputError(
                f"{path} holds a DatasetDict with splits {list(ds.keys())}.",
                fix="pass the folder of one split (e.g. PATH/train).",
            )
        rows = ds.to_list()
        return rows, [0] * len(rows)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(str(path)).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise UserInputError(
                f"{path}: not a readable Parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__}).",
                fix="re-export it as Parquet, or give the file the extension of its real format (.jsonl, .csv, ...).",
            ) from None
        if not rows:
            raise UserInputError(f"{path} has no rows.", fix="give a file with at least one record.")
        return rows, [i + 1 for i in range(len(rows))]
    if suffix in (".jsonl.gz", ".json.gz"):
        import gzip

        try:
            data = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise UserInputError(f"{path}: not a valid gzip file ({e}).",
                                 fix="compress it with `gzip FILE`, or drop the .gz from its name if it is plain text.") from None
        text = _decode(path, data, inside="the decompressed data")
        suffix = suffix[:-3]
    else:
        text = _read_text(path)
    if suffix == ".csv" or suffix == ".tsv":
        return _read_csv(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).", fix="fix the JSON syntax there.") from None
        if isinstance(obj, dict):
            obj = next((v for v in obj.values() if isinstance(v, list)), [obj])
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise UserInputError(f"{path}: expected a JSON list of objects.", fix="write [{...}, {...}] or use JSONL.")
        return obj, [0] * len(obj)
    if suffix == ".jsonl":
        rows, lines = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserInputError(
                    f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno}).",
                    fix="each line must be one JSON object; fix or delete that line.",
                ) from None
            if not isinstance(r, dict):
                raise UserInputError(f"{path}:{n}: expected a JSON object, got {type(r).__name__}.", fix="wrap it as {\"prompt\": ...}.")
            rows.append(r)
            lines.append(n)
        if not rows:
            raise UserInputError(f"{path} has no records (only blank lines).", fix="give at least one JSON line.")
        return rows, lines
    raise UserInputError(
        f"{path}: unsupported file type '{suffix or '(none)'}'.",
        fix="use .jsonl, .json, .csv, .tsv, .parquet, .jsonl.gz or a saved Hugging Face dataset folder.",
    )


def _read_csv(path: Path, text: str, delimiter: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows with the line each starts on. An unbalanced quote (which would swallow the rest of the file into one
    field) and rows with more cells than the header are refused with their line."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows, lines = [], []
    start = 2
    try:
        for row in reader:
            if None in row:
                raise UserInputError(
                    f"{path}:{start}: {len(row[None]) + len(reader.fieldnames or [])} cells, but the header has "
                    f"{len(reader.fieldnames or [])}.",
                    fix="quote cells that contain the delimiter, or fix the row.",
                )
            rows.append(row)
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise UserInputError(
            f"{path}:{start}: CSV error ({e}); a quote opened on line {start} is never closed, so the rest of the file "
            "would be read as one cell." if "end of data" in str(e) or "EOF" in str(e) else f"{path}:{reader.line_num}: CSV error ({e}).",
            fix='close the quote, or double quotes inside quoted cells ("like ""this"""); unquoted cells may not contain quotes after text.',
        ) from None
    if not rows:
        raise UserInputError(f"{path} has a header but no rows.", fix="add at least one row.")
    return rows, lines


def read_records(
    path: str | Path,
    *,
    required: tuple[str, ...] = ("prompt",),
    column_map: dict[str, str] | None = None,
    id_prefix: str = "row",
    text_fields: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Read a user file into records with our field names. ``column_map`` maps our field -> their column.

    Every record gets an ``id`` (its own, or ``{id_prefix}-{n}``). Required fields must be present and non-empty;
    ``text_fields`` must be strings (not numbers, lists, objects or booleans).
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: file not found.", fix="check the path (relative paths are from the current folder).")
    rows, lines = _read_raw(path)
    cmap = column_map or {}
    columns = list(rows[0].keys())
    for field in required:
        col = cmap.get(field, field)
        if col not in rows[0]:
            raise UserInputError(
                f"{path}: no column '{col}' (needed for field '{field}'). Columns found: {', '.join(map(str, columns))}.",
                fix=f"rename the column, or map it: --column {field}=YOUR_COLUMN (config: column_map: {{{field}: YOUR_COLUMN}}).",
            )
    out = []
    reverse = {v: k for k, v in cmap.items()}
    for i, (row, line) in enumerate(zip(rows, lines)):
        rec = {reverse.get(k, k): v for k, v in row.items()}
        for field in required:
            val = rec.get(field)
            if val is None or (isinstance(val, str) and not val.strip()):
                where = f"{path}:{line}" if line else f"{path} (row {i + 1})"
                raise UserInputError(f"{where}: field '{field}' is empty.", fix="fill it in or remove the row.")
        for field in text_fields:
            val = rec.get(field)
            if val is not None and not isinstance(val, str):
                where = f"{path}:{line}" if line else f"{path} (row {i + 1})"
                kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
                    type(val), type(val).__name__)
                raise UserInputError(f"{where}: field '{field}' must be text, but it is {kind} ({str(val)[:60]}).",
                                     fix=f"write the {field} as a quoted string, e.g. \"{field}\": \"...\".")
        rec.setdefault("id", f"{id_prefix}-{i + 1:05d}")
        rec["id"] = str(rec["id"])
        out.append(rec)
    ids = [r["id"] for r in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise UserInputError(f"{path}: duplicate id '{dup}'.", fix="ids must be unique; remove the id column to number rows automatically.")
    return out


def shipped_path(kind: str) -> Path:
    if kind not in SHIPPED:
        raise UserInputError(f"Unknown shipped prompt set '{kind}'.", fix=f"use one of: {', '.join(SHIPPED)}.")
    return Path(str(resources.files("cai") / "resources" / "prompts" / SHIPPED[kind]))


def load_prompts(
    source: str, *, split: str = "train", column_map: dict[str, str] | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Prompts from a shipped set (``redteam``, ``helpful``) or a user file. ``split`` filters rows that have one
    (``train``, ``eval``, ``all``); the eval split of the shipped sets is never used for training."""
    if source in SHIPPED:
        rows = read_records(shipped_path(source), text_fields=("prompt",))
    else:
        rows = read_records(source, column_map=column_map, text_fields=("prompt",))
    if split != "all":
        kept = [r for r in rows if r.get("split", split) == split]
        if not kept:
            found = sorted({str(r.get("split")) for r in rows})
            raise UserInputError(
                f"{source}: none of its {len(rows)} rows is in split '{split}' (splits found: {', '.join(found)}), "
                "so this would run on no prompts.",
                fix=f"mark the rows to use with split: {split}, drop the split column, or choose the split "
                "(prompt_split: all uses every row).",
            )
        rows = kept
    if limit is not None:
        rows = rows[:limit]
    return rows
