"""Read public votes on statements: a Polis export, or a plain ``statements.csv`` + ``votes.csv``.

Polis exports (the published column layout):

* ``comments.csv``: ``timestamp, datetime, comment-id, author-id, agrees, disagrees, moderated, comment-body``
  (``moderated`` is 1 accepted, 0 not yet moderated, -1 moderated out);
* ``votes.csv``: ``timestamp, datetime, comment-id, voter-id, vote`` (a later vote of the same voter on the same
  comment replaces the earlier one);
* ``participants-votes.csv``: ``participant, group-id, n-comments, n-votes, n-agree, n-disagree``, then one column
  per comment id holding 1, -1, 0 or nothing. When the folder has it, it is read instead of ``votes.csv``.

Plain files: ``statements.csv`` with ``id, text`` (optional ``moderated``) and ``votes.csv`` with ``participant,
statement, vote``. Votes are 1 (agree), -1 (disagree) or 0 (pass, seen but no opinion).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cai.constitution.collect.csvread import Table, read_table
from cai.errors import UserInputError

VOTE_FIX = "votes are 1 (agree), -1 (disagree) or 0 (pass); leave the cell empty for 'not seen'."


@dataclass
class Statement:
    id: str
    text: str
    moderated: int = 0  # 1 accepted, 0 not moderated, -1 moderated out


@dataclass
class VoteData:
    """Statements, participants and the vote matrix (participants x statements; NaN where not seen)."""

    source: str
    statements: list[Statement]
    participants: list[str]
    votes: np.ndarray
    #: The export's own opinion group of each participant (Polis' group-id column), where it has one.
    export_groups: dict[str, str] = field(default_factory=dict)

    @property
    def n_votes(self) -> int:
        return int(np.sum(~np.isnan(self.votes)))


def _vote(table: Table, row, column: str) -> float:
    raw = row.cells[column].strip()
    try:
        v = float(raw)
    except ValueError:
        raise table.bad(row, column, f"vote {raw!r} is not a number.", VOTE_FIX) from None
    if v not in (1.0, -1.0, 0.0):
        raise table.bad(row, column, f"vote {raw!r} is not 1, -1 or 0.", VOTE_FIX)
    return v


def _moderated(table: Table, row, column: str) -> int:
    raw = row.cells[column].strip() or "0"
    if raw not in ("1", "0", "-1"):
        raise table.bad(row, column, f"{raw!r} is not 1, 0 or -1.", "write 1 (accepted), 0 (not moderated) or -1 (moderated out).")
    return int(raw)


def _statements(table: Table, id_col: str, text_col: str, mod_col: str | None) -> list[Statement]:
    out: list[Statement] = []
    seen: dict[str, int] = {}
    for row in table.rows:
        sid = row.cells[id_col].strip()
        if not sid:
            raise table.bad(row, id_col, "empty statement id.", "give every statement an id.")
        if sid in seen:
            raise table.bad(row, id_col, f"id {sid!r} is also on line {seen[sid]}.", "give every statement a unique id.")
        seen[sid] = row.line
        text = row.cells[text_col].strip()
        if not text:
            raise table.bad(row, text_col, "empty statement text.", "fill in the text or remove the row.")
        mod = _moderated(table, row, mod_col) if mod_col and mod_col in table.header else 0
        out.append(Statement(sid, text, mod))
    return out


def _matrix(statements: list[Statement], triples: list[tuple[str, str, float]]) -> tuple[list[str], np.ndarray]:
    index = {s.id: j for j, s in enumerate(statements)}
    people: dict[str, int] = {}
    for p, _, _ in triples:
        people.setdefault(p, len(people))
    m = np.full((len(people), len(statements)), np.nan)
    for p, s, v in triples:
        m[people[p], index[s]] = v
    return list(people), m


def _votes_long(table: Table, who: str, what: str, statements: list[Statement], time_col: str | None) -> list[tuple[str, str, float]]:
    ids = {s.id for s in statements}
    latest: dict[tuple[str, str], tuple[float, int, float]] = {}
    for row in table.rows:
        p, s = row.cells[who].strip(), row.cells[what].strip()
        if not p:
            raise table.bad(row, who, "empty participant id.", "give every vote its participant.")
        if s not in ids:
            raise table.bad(row, what, f"statement {s!r} is not in the statements file.",
                            "vote only on statements listed in the statements (comments) file, or add the statement there.")
        v = _vote(table, row, "vote")
        t = 0.0
        if time_col:
            try:
                t = float(row.cells[time_col] or 0)
            except ValueError:
                raise table.bad(row, time_col, f"{row.cells[time_col]!r} is not a number.", "write the time as a number (Unix time).") from None
        key = (p, s)
        if key not in latest or (t, row.line) >= latest[key][:2]:
            latest[key] = (t, row.line, v)
    return [(p, s, v) for (p, s), (_, _, v) in latest.items()]


def _participants_wide(table: Table, statements: list[Statement]) -> tuple[list[str], np.ndarray, dict[str, str]]:
    table.need("participant", fix="Polis' participants-votes.csv starts with the column 'participant'.")
    ids = {s.id for s in statements}
    meta = {"participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree"}
    cols = [c for c in table.header if c not in meta]
    unknown = [c for c in cols if c not in ids]
    if unknown:
        raise UserInputError(f"{table.path}:1: column {unknown[0]!r} is not a comment id of comments.csv.",
                             fix="the columns after n-disagree must be comment ids that comments.csv lists.")
    triples, groups = [], {}
    for row in table.rows:
        p = row.cells["participant"].strip()
        if row.cells.get("group-id", "").strip():
            groups[p] = row.cells["group-id"].strip()
        for c in cols:
            if row.cells[c].strip() != "":
                triples.append((p, c, _vote(table, row, c)))
    people, m = _matrix(statements, triples)
    return people, m, groups


def read_votes(folder: str | Path) -> VoteData:
    """The statements and votes in ``folder`` (a Polis export, or statements.csv + votes.csv)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: not a folder.",
                             fix="give the folder of a Polis export (comments.csv with votes.csv or participants-votes.csv) "
                                 "or of statements.csv + votes.csv.")
    if (folder / "comments.csv").is_file():
        ct = read_table(folder / "comments.csv", what="Polis comments.csv")
        ct.need("comment-id", "comment-body", fix="Polis' comments.csv has the columns timestamp, datetime, comment-id, "
                "author-id, agrees, disagrees, moderated, comment-body.")
        statements = _statements(ct, "comment-id", "comment-body", "moderated")
        if (folder / "participants-votes.csv").is_file():
            pt = read_table(folder / "participants-votes.csv", what="Polis participants-votes.csv")
            people, m, groups = _participants_wide(pt, statements)
            return VoteData(f"Polis export {folder} (participants-votes.csv)", statements, people, m, groups)
        if (folder / "votes.csv").is_file():
            vt = read_table(folder / "votes.csv", what="Polis votes.csv")
            vt.need("comment-id", "voter-id", "vote", fix="Polis' votes.csv has the columns timestamp, datetime, comment-id, voter-id, vote.")
            triples = _votes_long(vt, "voter-id", "comment-id", statements, "timestamp" if "timestamp" in vt.header else None)
            people, m = _matrix(statements, triples)
            return VoteData(f"Polis export {folder} (votes.csv)", statements, people, m)
        raise UserInputError(f"{folder}: comments.csv but neither votes.csv nor participants-votes.csv.",
                             fix="add the export's votes.csv or participants-votes.csv to the folder.")
    if (folder / "statements.csv").is_file():
        st = read_table(folder / "statements.csv", what="statements.csv")
        st.need("id", "text", fix="statements.csv has the columns id, text and optionally moderated (1, 0 or -1).")
        statements = _statements(st, "id", "text", "moderated")
        vt = read_table(folder / "votes.csv", what="votes.csv")
        vt.need("participant", "statement", "vote", fix="votes.csv has the columns participant, statement, vote (1, -1 or 0).")
        people, m = _matrix(statements, _votes_long(vt, "participant", "statement", statements, None))
        return VoteData(f"statements and votes in {folder}", statements, people, m)
    raise UserInputError(f"{folder}: no comments.csv (Polis export) and no statements.csv.",
                         fix="put a Polis export (comments.csv + votes.csv or participants-votes.csv) or statements.csv + "
                             "votes.csv in the folder.")
