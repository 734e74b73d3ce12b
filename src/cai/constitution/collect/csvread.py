"""Line-aware CSV reading shared by the ``infer`` and ``collect`` readers: every error names file, line and column."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from cai.errors import UserInputError


@dataclass
class Row:
    line: int
    cells: dict[str, str]


@dataclass
class Table:
    path: Path
    header: list[str]
    rows: list[Row]

    def need(self, *columns: str, fix: str) -> None:
        missing = [c for c in columns if c not in self.header]
        if missing:
            raise UserInputError(
                f"{self.path}:1: no column {', '.join(repr(c) for c in missing)}; the header has: {', '.join(self.header)}.",
                fix=fix,
            )

    def bad(self, row: Row, column: str, problem: str, fix: str) -> UserInputError:
        return UserInputError(f"{self.path}:{row.line}: column '{column}': {problem}", fix=fix)


def read_table(path: str | Path, *, what: str = "CSV file") -> Table:
    """A CSV file (UTF-8, comma separated, header on line 1) as rows with the line each starts on."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found.", fix=f"give the path of the {what}.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserInputError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}).",
                             fix="re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`.") from None
    if not text.strip():
        raise UserInputError(f"{path}: the file is empty.", fix=f"give a {what} with a header line and rows.")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[Row] = []
    start = 1
    try:
        header = [h.strip() for h in next(reader)]
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            raise UserInputError(f"{path}:1: column '{dup}' appears twice in the header.", fix="give every column a unique name.")
        start = reader.line_num + 1
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                start = reader.line_num + 1
                continue
            if len(cells) != len(header):
                raise UserInputError(
                    f"{path}:{start}: {len(cells)} cells, but the header has {len(header)} ({', '.join(header)}).",
                    fix="quote cells that contain commas (\"like, this\"), or fix the row so it has one cell per column.",
                )
            rows.append(Row(start, {h: c for h, c in zip(header, cells)}))
            start = reader.line_num + 1
    except csv.Error as e:
        raise UserInputError(f"{path}:{start}: CSV error ({e}).",
                             fix='close quotes, and double quotes inside quoted cells ("like ""this""").') from None
    if not rows:
        raise UserInputError(f"{path}: a header but no rows.", fix="add at least one row.")
    return Table(path, header, rows)
