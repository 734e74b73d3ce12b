"""Malformed inputs through the public `cai` commands: every one exits 2 with a message naming the file or field.

Each case builds its bad input under ``tmp_path`` and runs one command in-process (typer's CliRunner). The
assertion is the same for all: exit code 2, no traceback, no uncaught exception, and the message names the file
(or the flag, setting or field) that is wrong, so a user knows where to look.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from cai.cli.main import app
from conftest import flat

GOOD_PRINCIPLE = (
    "  - id: p1\n    name: P one\n    critique_request: Say what is wrong.\n"
    "    revision_request: Rewrite it.\n    preference_question: Which is better?\n"
)
GOOD_CONST = "name: c\nversion: '1'\nprinciples:\n" + GOOD_PRINCIPLE


@dataclass
class Case:
    name: str
    make: Callable[[Path], list[str]]
    """Writes the input under the folder it gets and returns the command line (``{f}`` stands for that folder)."""
    expect: str
    """Text the message must contain (after ``{f}`` is replaced by the folder): the file, field or flag."""


def _w(name: str, content: str | bytes):
    def make(d: Path) -> Path:
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        return p

    return make


def _bomb() -> str:
    text = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    prev = "a"
    for c in "bcdefghi":
        text += f"{c}: &{c} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        prev = c
    return text


def _sparse(name: str, size: int):
    def make(d: Path) -> Path:
        p = d / name
        with open(p, "wb") as f:
            f.write(b"name: big\n")
            f.truncate(size)
        return p

    return make


# --- constitutions: `cai constitution validate FILE` ----------------------------------------------------------
CONSTITUTIONS: dict[str, str | bytes] = {
    "empty": "",
    "only-comment": "# nothing here\n",
    "a-list": "- a\n- b\n",
    "a-scalar": "just text\n",
    "bad-indent": "name: c\nversion: '1'\nprinciples:\n  - id: p1\n   name: x\n",
    "unclosed-bracket": "name: c\nversion: '1'\nprinciples: [\n",
    "unclosed-quote": "name: 'c\nversion: '1'\n",
    "tab-indent": "name: c\nprinciples:\n\t- id: p\n",
    "latin1": "name: caf\xe9\n".encode("latin-1"),
    "utf16": GOOD_CONST.encode("utf-16"),
    "binary": bytes(range(256)) * 4,
    "unknown-key": GOOD_CONST + "colour: blue\n",
    "missing-name": "version: '1'\nprinciples:\n" + GOOD_PRINCIPLE,
    "missing-version": "name: c\nprinciples:\n" + GOOD_PRINCIPLE,
    "missing-principles": "name: c\nversion: '1'\n",
    "principles-empty": "name: c\nversion: '1'\nprinciples: []\n",
    "principles-mapping": "name: c\nversion: '1'\nprinciples: {a: 1}\n",
    "principle-a-string": "name: c\nversion: '1'\nprinciples:\n  - just text\n",
    "principle-missing-critique": "name: c\nversion: '1'\nprinciples:\n  - id: p1\n    name: P\n"
    "    revision_request: R\n    preference_question: Q\n",
    "principle-typo": GOOD_CONST.replace("critique_request", "critque_request"),
    "duplicate-principle-id": GOOD_CONST + GOOD_PRINCIPLE,
    "duplicate-yaml-key": "name: c\nname: d\nversion: '1'\nprinciples:\n" + GOOD_PRINCIPLE,
    "duplicate-key-in-principle": GOOD_CONST + "    name: again\n",
    "weight-negative": GOOD_CONST + "    weight: -1\n",
    "weight-text": GOOD_CONST + "    weight: heavy\n",
    "tags-number": GOOD_CONST + "    tags: 5\n",
    "name-empty": GOOD_CONST.replace("name: c\n", "name: ''\n"),
    "name-a-list": GOOD_CONST.replace("name: c\n", "name: [a, b]\n"),
    "demo-unknown-principle": GOOD_CONST + "demonstrations:\n  - principle_id: nope\n    prompt: q\n"
    "    response: r\n    critique: c\n    revision: v\n",
    "demonstrations-not-list": GOOD_CONST + "demonstrations: 3\n",
    "alias-bomb": _bomb(),
    "recursive-alias": "name: &n [*n]\nversion: '1'\n",
    "many-aliases": "x: &x 1\nl: [" + ", ".join(["*x"] * 150) + "]\n",
    "python-tag": "name: !!python/object/apply:os.system ['true']\nversion: '1'\n",
    "deep-nesting": "name: " + "[" * 5000 + "]" * 5000 + "\n",
    "two-documents": GOOD_CONST + "---\n" + GOOD_CONST,
    "null-key": GOOD_CONST + "~: 1\n",
    "markup-in-name[/]": "name: c\n",
}

CASES: list[Case] = []
for key, body in CONSTITUTIONS.items():
    fname = f"const-{key}.yaml"
    CASES.append(Case(f"constitution:{key}", lambda d, fname=fname, body=body: ["constitution", "validate", str(_w(fname, body)(d))],
                      f"{{f}}/{fname}"))
CASES += [
    Case("constitution:missing-file", lambda d: ["constitution", "validate", str(d / "nope.yaml")], "{f}/nope.yaml"),
    Case("constitution:a-folder", lambda d: ["constitution", "validate", str(d)], "{f}"),
    Case("constitution:over-size-limit", lambda d: ["constitution", "validate", str(_sparse("huge.yaml", 17 << 20)(d))],
         "{f}/huge.yaml"),
]


# --- prompt files: `cai revise --prompts FILE` ------------------------------------------------------------------
def _revise(*extra: str) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        return ["revise", "--model", "fake", "--helpful-limit", "0", "--rounds", "1", "--limit", "3",
                "--run", "r", "--runs-dir", str(d / "runs"), *[x.format(f=d) for x in extra]]

    return make


def _prompts(fname: str, body: str | bytes, *extra: str) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        p = _w(fname, body)(d)
        return _revise("--prompts", str(p), *extra)(d)

    return make


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


PROMPTS: dict[str, tuple[str, str | bytes]] = {
    "empty": ("p.jsonl", ""),
    "blank-lines": ("p.jsonl", "\n\n  \n"),
    "bad-json-line": ("p.jsonl", '{"prompt": "a"}\n{"prompt": \n'),
    "line-a-list": ("p.jsonl", '{"prompt": "a"}\n[1, 2]\n'),
    "line-a-number": ("p.jsonl", "42\n"),
    "line-a-string": ("p.jsonl", '"hello"\n'),
    "prompt-a-number": ("p.jsonl", '{"prompt": 42}\n'),
    "prompt-a-list": ("p.jsonl", '{"prompt": ["a", "b"]}\n'),
    "prompt-an-object": ("p.jsonl", '{"prompt": {"text": "a"}}\n'),
    "prompt-a-bool": ("p.jsonl", '{"prompt": true}\n'),
    "prompt-null": ("p.jsonl", '{"prompt": null}\n'),
    "prompt-empty": ("p.jsonl", '{"prompt": ""}\n'),
    "prompt-blank": ("p.jsonl", '{"prompt": "   "}\n'),
    "no-prompt-column": ("p.jsonl", '{"question": "a"}\n'),
    "duplicate-ids": ("p.jsonl", '{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n'),
    "all-eval-split": ("p.jsonl", '{"prompt": "a", "split": "eval"}\n{"prompt": "b", "split": "eval"}\n'),
    "latin1-jsonl": ("p.jsonl", '{"prompt": "caf\xe9"}\n'.encode("latin-1")),
    "nul-bytes": ("p.jsonl", b'{"prompt": "a\x00"}\x00\n'),
    "csv-unbalanced-quote": ("p.csv", 'prompt,id\n"how do I,1\nsecond,2\nthird,3\n'),
    "csv-header-only": ("p.csv", "prompt,id\n"),
    "csv-extra-cells": ("p.csv", "prompt\na,b,c\n"),
    "csv-no-prompt": ("p.csv", "question\nwhat\n"),
    "csv-empty-prompt": ("p.csv", "prompt,id\n,1\n"),
    "tsv-unbalanced-quote": ("p.tsv", 'prompt\tid\n"open\t1\n'),
    "text-named-parquet": ("p.parquet", "prompt\nnot parquet at all\n"),
    "empty-parquet": ("p.parquet", b""),
    "plain-text-named-gz": ("p.jsonl.gz", '{"prompt": "a"}\n'),
    "latin1-inside-gzip": ("p.jsonl.gz", _gz('{"prompt": "caf\xe9"}\n'.encode("latin-1"))),
    "empty-gzip": ("p.jsonl.gz", _gz(b"")),
    "truncated-gzip": ("p.jsonl.gz", _gz(b'{"prompt": "a"}\n' * 50)[:20]),
    "bad-json-inside-gzip": ("p.jsonl.gz", _gz(b'{"prompt": \n')),
    "unknown-extension": ("p.txt", "a prompt\n"),
    "json-invalid": ("p.json", '[{"prompt": "a"},'),
    "json-list-of-numbers": ("p.json", "[1, 2, 3]"),
    "json-a-string": ("p.json", '"text"'),
    "markup-in-name-[/]": ("p[/].jsonl", '{"prompt": 5}\n'),
    "markup-in-id": ("p.jsonl", '{"id": "[bold]x[/]", "prompt": "a"}\n{"id": "[bold]x[/]", "prompt": "b"}\n'),
}
for key, (fname, body) in PROMPTS.items():
    CASES.append(Case(f"prompts:{key}", _prompts(fname, body), f"{{f}}/{fname}"))
CASES += [
    Case("prompts:missing-file", _revise("--prompts", "{f}/none.jsonl"), "{f}/none.jsonl"),
    Case("prompts:folder-not-dataset", _revise("--prompts", "{f}"), "{f}"),
    Case("prompts:column-without-equals", _prompts("c.jsonl", '{"q": "a"}\n', "--column", "prompt"), "--column"),
    Case("prompts:column-to-missing", _prompts("c2.jsonl", '{"q": "a"}\n', "--column", "prompt=question"),
         "{f}/c2.jsonl"),
]


# --- config files: `cai revise -c FILE` -------------------------------------------------------------------------
def _with_config(d: Path, cfg: Path) -> list[str]:
    """No flags that would override the file's settings."""
    return ["revise", "-c", str(cfg), "--run", "r", "--runs-dir", str(d / "runs")]


CONFIGS: dict[str, str | bytes] = {
    "syntax": "revise:\n  rounds: [1\n",
    "a-list": "- rounds: 1\n",
    "a-scalar": "hello\n",
    "duplicate-key": "revise:\n  rounds: 1\n  rounds: 2\n",
    "duplicate-section": "revise:\n  rounds: 1\nrevise:\n  seed: 2\n",
    "alias-bomb": _bomb(),
    "unknown-setting": "revise:\n  roundz: 1\n",
    "rounds-text": "revise:\n  rounds: many\n",
    "rounds-a-list": "revise:\n  rounds: [1, 2]\n",
    "shard-size-zero": "revise:\n  shard_size: 0\n",
    "policy-bad-delay": "revise:\n  policy: fake:delay=abc\n",
    "policy-unknown-fake-option": "revise:\n  policy: fake:speed=3\n",
    "critic-ftp-url": "revise:\n  critic: openai:m@ftp://example.com/v1\n",
    "critic-bad-port": "revise:\n  critic: openai:m@http://localhost:99999/v1\n",
    "critic-no-host": "revise:\n  critic: {backend: openai, model: m, base_url: 'http://'}\n",
    "critic-unknown-backend": "revise:\n  critic: {backend: magic, model: m}\n",
    "critic-extra-field": "revise:\n  critic: {backend: fake, colour: red}\n",
    "latin1": "revise:\n  prompts: caf\xe9\n".encode("latin-1"),
    "number-key": "1: 2\n",
    "python-tag": "revise: !!python/name:os.system\n",
    "column-map-a-list": "revise:\n  column_map: [a, b]\n",
    "password-in-bad-url": "revise:\n  critic: openai:m@ftp://user:hunter2@example.com/v1\n",
}
for key, body in CONFIGS.items():
    fname = f"cfg-{key}.yaml"
    CASES.append(Case(f"config:{key}", lambda d, fname=fname, body=body: _with_config(d, _w(fname, body)(d)),
                      f"{{f}}/{fname}"))
CASES += [
    Case("config:missing", lambda d: _with_config(d, d / "none.yaml"), "{f}/none.yaml"),
    Case("config:over-size-limit", lambda d: _with_config(d, _sparse("big.yaml", 2 << 20)(d)), "{f}/big.yaml"),
    Case("pipeline:unknown-setting", lambda d: ["pipeline", str(_w("pipe.yaml", "stagez: [revise]\n")(d))],
         "{f}/pipe.yaml"),
    Case("pipeline:alias-bomb", lambda d: ["pipeline", str(_w("pipe2.yaml", _bomb())(d))], "{f}/pipe2.yaml"),
    Case("pipeline:duplicate-key", lambda d: ["pipeline", str(_w("pipe3.yaml", "run: a\nrun: b\n")(d))],
         "{f}/pipe3.yaml"),
]


# --- flags ------------------------------------------------------------------------------------------------------
def _file_in_the_way(d: Path) -> list[str]:
    (d / "afile").write_text("x")
    return _revise()(d)[:-2] + ["--runs-dir", str(d / "afile" / "runs")]


def _runs_dir_is_a_file(d: Path) -> list[str]:
    (d / "runsfile").write_text("x")
    return _revise()(d)[:-2] + ["--runs-dir", str(d / "runsfile")]


def _readonly_runs_dir(d: Path) -> list[str]:
    ro = d / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return _revise()(d)[:-2] + ["--runs-dir", str(ro / "runs")]


CASES += [
    Case("flag:model-bad-delay", _revise("--model", "fake:delay=abc"), "delay"),
    Case("flag:model-negative-delay", _revise("--model", "fake:delay=-1"), "delay"),
    Case("flag:model-unknown-fake-option", _revise("--model", "fake:colour=red"), "colour"),
    Case("flag:model-ftp-url", _revise("--model", "openai:m@ftp://example.com/v1"), "base_url"),
    Case("flag:model-bad-port", _revise("--model", "openai:m@http://localhost:123456/v1"), "base_url"),
    Case("flag:critic-no-scheme", _revise("--critic", "openai:m@localhost:8000"), "base_url"),
    Case("flag:run-climbs-out", _revise("--run", "../../escaped"), "escaped"),
    Case("flag:runs-dir-under-a-file", _file_in_the_way, "{f}/afile/runs"),
    Case("flag:runs-dir-is-a-file", _runs_dir_is_a_file, "{f}/runsfile"),
    Case("flag:limit-not-a-number", _revise("--limit", "abc"), "--limit"),
    Case("flag:rounds-not-a-number", _revise("--rounds", "x"), "--rounds"),
    Case("flag:seed-not-a-number", _revise("--seed", "1.5"), "--seed"),
    Case("flag:shard-size-zero", _revise("--shard-size", "0"), "shard_size"),
    Case("flag:constitution-missing", _revise("--constitution", "{f}/none.yaml"), "{f}/none.yaml"),
    Case("flag:constitution-bomb", lambda d: _revise("--constitution", str(_w("b.yaml", _bomb())(d)))(d), "{f}/b.yaml"),
    Case("flag:prompts-unknown-shipped-name", _revise("--prompts", "redteem"), "redteem"),
    Case("report:not-a-run", lambda d: ["report", str(_w("x/readme.txt", "hi")(d).parent)], "{f}/x"),
    Case("report:missing", lambda d: ["report", str(d / "nope")], "{f}/nope"),
    Case("report:a-file", lambda d: ["report", str(_w("f.txt", "hi")(d))], "{f}/f.txt"),
    Case("report:markup-in-path-[/]", lambda d: ["report", str(d / "[/]run")], "[/]run"),
]
if os.geteuid() != 0:  # root may write anywhere
    CASES.append(Case("flag:runs-dir-not-writable", _readonly_runs_dir, "{f}/ro/runs"))


def test_there_are_at_least_100_cases():
    assert len(CASES) >= 100, len(CASES)
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input_is_a_located_error(case: Case, runner, tmp_path):
    argv = case.make(tmp_path)
    r = runner.invoke(app, argv)
    out = r.output
    assert r.exit_code == 2, f"exit {r.exit_code} for {argv}:\n{out}\n{r.exception!r}"
    assert "Traceback" not in out, out
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    want = case.expect.replace("{f}", str(tmp_path))
    assert want in flat(out) or want in out, f"message does not name {want!r}:\n{out}"
    assert "hunter2" not in out  # a password in a URL is never echoed


def test_bombs_and_huge_files_are_refused_quickly(runner, tmp_path):
    """The alias bombs and the over-size files are refused before anything is expanded or read whole."""
    import time

    chosen = [c for c in CASES if "bomb" in c.name or "size-limit" in c.name]
    assert len(chosen) >= 5
    t0 = time.process_time()  # CPU seconds: not inflated by a busy machine
    for case in chosen:
        d = tmp_path / case.name.replace(":", "-")
        d.mkdir()
        r = runner.invoke(app, case.make(d))
        assert r.exit_code == 2, r.output
    assert time.process_time() - t0 < 20
