"""Runs that cannot mix or silently lose rows, damaged files that are named, inputs that cannot exhaust memory,
and credentials that never reach disk.

Concurrency and kill tests run real `cai` processes (SIGKILL, two writers at once); the rest run in-process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.cli.main import app
from cai.data.io import read_jsonl, write_json
from cai.data.readers import load_prompts
from cai.errors import UserInputError
from cai.redact import redact_obj, redact_text, redact_url
from cai.runs import StageDir, check_run_dir, content_fingerprint, run_dir_for
from conftest import flat

CAI = str(Path(sys.executable).parent / "cai")
N = 16  # prompts; shard size 2 -> 8 shards


def write_prompts(path: Path, *, edited: tuple[int, ...] = ()) -> list[dict]:
    rows = [{"id": r["id"], "prompt": r["prompt"]} for r in load_prompts("redteam", limit=N)]
    for i in edited:
        rows[i]["prompt"] = "EDITED: " + rows[i]["prompt"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def args(prompts: Path, runs: Path, *extra: str, model: str = "fake:delay=0.05") -> list[str]:
    return ["revise", "--model", model, "--prompts", str(prompts), "--helpful-limit", "0", "--rounds", "1",
            "--shard-size", "2", "--run", "r", "--runs-dir", str(runs), *extra]


def env() -> dict[str, str]:
    e = dict(os.environ, COLUMNS="200", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    e.pop("CAI_DEBUG", None)
    return e


def invoke(runner, argv: list[str], code: int = 0):
    r = runner.invoke(app, argv)
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    return r


def index_lines(stage: Path) -> list[dict]:
    """The shard index log: a line naming the settings it belongs to, then one line per shard written."""
    try:
        text = (stage / "shards" / "index.ndjson").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def shard_count(stage: Path) -> int:
    return len({x["shard"] for x in index_lines(stage) if "shard" in x})


def kill_after(proc: subprocess.Popen, stage: Path, n: int, *, ready=lambda: True, timeout_s: float = 90) -> None:
    """SIGKILL ``proc`` once ``n`` shards of this run are indexed and the stage is not finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before it could be killed")
        if ready() and shard_count(stage) >= n and not (stage / "manifest.json").exists():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run wrote too few shards in time")


# --- 1. one writer per stage folder ---------------------------------------------------------------------------
HOLD = """
import sys
from cai.runs import StageDir
s = StageDir(sys.argv[1], "revise")
s.begin({"held": True})
print("held", flush=True)
sys.stdin.read()
"""


def test_second_writer_and_overwrite_are_refused_while_a_run_holds_the_folder(runner, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "runs" / "r")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ((), ("--overwrite",)):
            r = invoke(runner, args(prompts, tmp_path / "runs", *extra, model="fake"), code=2)
            msg = flat(r.output)
            assert "in use by another cai process" in msg and f"pid {holder.pid}" in msg and "started 20" in msg
            assert f"kill {holder.pid}" in msg
        cfg = json.loads((tmp_path / "runs" / "r" / "revise" / "config.json").read_text())
        assert cfg["config"] == {"held": True}  # --overwrite did not touch the holder's folder
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the holder is gone: the folder can be taken (its settings differ, so only with --overwrite)
    invoke(runner, args(prompts, tmp_path / "runs", model="fake"), code=2)
    invoke(runner, args(prompts, tmp_path / "runs", "--overwrite", model="fake"))


def test_stale_lock_of_a_dead_process_is_taken_over(runner, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage = tmp_path / "runs" / "r" / "revise"
    stage.mkdir(parents=True)
    (stage / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                             "started_at": "2026-01-01T00:00:00Z", "command": "cai revise"}))
    r = invoke(runner, args(prompts, tmp_path / "runs", model="fake"))
    assert "took over the lock" in flat(r.output) and f"pid {dead.pid}" in flat(r.output)
    assert (stage / "manifest.json").exists()
    assert (stage / ".lock").read_text() == ""  # released on finish: names no holder


def test_two_cli_writers_on_one_folder_one_is_refused_and_rows_never_mix(runner, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts)
    runs = tmp_path / "runs"
    procs = {seed: subprocess.Popen([CAI, *args(prompts, runs, "--seed", str(seed))], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env()) for seed in (0, 1)}
    results = {seed: (p.wait(timeout=180), *p.communicate()) for seed, p in procs.items()}
    codes = sorted(rc for rc, _, _ in results.values())
    assert codes == [0, 2], {s: (rc, err[-600:]) for s, (rc, _, err) in results.items()}
    winner = next(s for s, (rc, _, _) in results.items() if rc == 0)
    loser_err = flat(results[1 - winner][2])
    assert "in use by another cai process" in loser_err and f"pid {procs[winner].pid}" in loser_err
    stage = runs / "r" / "revise"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["config"]["seed"] == winner
    invoke(runner, args(prompts, tmp_path / "ref", "--seed", str(winner)))
    assert read_jsonl(stage / "data.jsonl") == read_jsonl(tmp_path / "ref" / "r" / "revise" / "data.jsonl")


# --- 2. kills, edited inputs, damaged shards and outputs --------------------------------------------------------
def test_kill_during_overwrite_then_rerun_gives_only_the_new_runs_rows(runner, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts)
    runs = tmp_path / "runs"
    stage = runs / "r" / "revise"
    invoke(runner, args(prompts, runs, "--seed", "0"))
    old_key = index_lines(stage)[0]["key"]

    def new_run_started() -> bool:
        lines = index_lines(stage)
        return bool(lines) and lines[0].get("key") != old_key

    victim = subprocess.Popen([CAI, *args(prompts, runs, "--seed", "1", "--overwrite")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env())
    kill_after(victim, stage, 2, ready=new_run_started)
    assert not (stage / "manifest.json").exists()  # never a finished-looking folder after a kill mid-overwrite
    # the old run's settings no longer match what the folder holds: refused, nothing mixed
    invoke(runner, args(prompts, runs, "--seed", "0"), code=2)
    r = invoke(runner, args(prompts, runs, "--seed", "1"))
    assert "resumed" in flat(r.output)
    invoke(runner, args(prompts, tmp_path / "ref", "--seed", "1"))
    ref = tmp_path / "ref" / "r" / "revise"
    for name in ("data.jsonl", "sft.jsonl", "preference.jsonl"):
        assert (stage / name).read_bytes() == (ref / name).read_bytes(), name


def test_edited_prompt_file_between_kill_and_rerun_is_detected_and_recomputed(runner, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts)
    runs = tmp_path / "runs"
    stage = runs / "r" / "revise"
    victim = subprocess.Popen([CAI, *args(prompts, runs)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=env())
    kill_after(victim, stage, 2)
    edited = write_prompts(prompts, edited=(0, 1, 2, 3))
    r = invoke(runner, args(prompts, runs))
    msg = flat(r.output)
    assert f"the content of {prompts} changed since this stage was started" in msg and "computing it again" in msg
    rows = read_jsonl(stage / "data.jsonl")
    assert [x["prompt"] for x in rows] == [x["prompt"] for x in edited]
    ref_prompts = tmp_path / "ref.jsonl"
    ref_prompts.write_bytes(prompts.read_bytes())
    invoke(runner, args(ref_prompts, tmp_path / "ref"))
    assert rows == read_jsonl(tmp_path / "ref" / "r" / "revise" / "data.jsonl")


def _finished(runner, tmp_path: Path, runs: str = "runs", seed: str = "0") -> tuple[Path, Path]:
    prompts = tmp_path / "p.jsonl"
    if not prompts.exists():
        write_prompts(prompts)
    invoke(runner, args(prompts, tmp_path / runs, "--seed", seed, model="fake"))
    return prompts, tmp_path / runs / "r" / "revise"


def test_emptied_shortened_cut_and_foreign_shards_are_recomputed(runner, tmp_path):
    prompts, stage = _finished(runner, tmp_path)
    _, other = _finished(runner, tmp_path, runs="other", seed="7")
    want = (stage / "data.jsonl").read_bytes()
    shards = stage / "shards"
    assert (other / "shards" / "00003.jsonl").read_bytes() != (shards / "00003.jsonl").read_bytes()
    (shards / "00000.jsonl").write_text("")  # emptied
    lines = (shards / "00001.jsonl").read_text().splitlines(keepends=True)
    (shards / "00001.jsonl").write_text(lines[0])  # shortened by one row
    data = (shards / "00002.jsonl").read_bytes()
    (shards / "00002.jsonl").write_bytes(data[: len(data) // 2])  # cut mid-line
    (shards / "00003.jsonl").write_bytes((other / "shards" / "00003.jsonl").read_bytes())  # another seed's
    (stage / "manifest.json").unlink()  # as after a kill before the manifest
    r = invoke(runner, args(prompts, tmp_path / "runs", "--seed", "0", model="fake"))
    msg = flat(r.output)
    for i in range(4):
        assert f"{shards / f'{i:05d}.jsonl'} does not match the shard index" in msg
    assert "1 rows recorded" not in msg and "2 rows recorded, 1 found" in msg and "the last line cut short" in msg
    assert (stage / "data.jsonl").read_bytes() == want
    manifest = json.loads((stage / "manifest.json").read_text())
    assert len(manifest["recovered"]) == 4 and manifest["timing"]["resumed_rows"] == N - 8


def test_shard_missing_from_the_index_or_a_damaged_index_is_recomputed(runner, tmp_path):
    prompts, stage = _finished(runner, tmp_path)
    want = (stage / "data.jsonl").read_bytes()
    (stage / "manifest.json").unlink()
    index = stage / "shards" / "index.ndjson"
    lines = index.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 8 and json.loads(lines[3])["shard"] == 2
    index.write_text("".join(lines[:3] + lines[4:-1]) + lines[-1][:20])  # shard 2 unrecorded, last line torn
    r = invoke(runner, args(prompts, tmp_path / "runs", "--seed", "0", model="fake"))
    msg = flat(r.output)
    assert f"{index}: 1 unreadable line(s) skipped" in msg
    assert "00002.jsonl is not in the shard index" in msg and "00007.jsonl is not in the shard index" in msg
    assert json.loads((stage / "manifest.json").read_text())["timing"]["resumed_rows"] == N - 4
    assert (stage / "data.jsonl").read_bytes() == want
    (stage / "manifest.json").unlink()
    index.write_text("{not json")
    r = invoke(runner, args(prompts, tmp_path / "runs", "--seed", "0", model="fake"))
    assert "index.ndjson is damaged; every shard will be computed again" in flat(r.output)
    assert (stage / "data.jsonl").read_bytes() == want


def test_truncated_outputs_of_a_finished_run_are_detected_and_rebuilt(runner, tmp_path):
    prompts, stage = _finished(runner, tmp_path)
    want = {n: (stage / n).read_bytes() for n in ("data.jsonl", "preference.jsonl", "sft.jsonl")}
    manifest = json.loads((stage / "manifest.json").read_text())
    assert set(manifest["checksums"]) >= {"data.jsonl", "sft.jsonl", "preference.jsonl", "helpful.jsonl"}
    (stage / "data.jsonl").write_bytes(want["data.jsonl"][:1000])
    r = invoke(runner, args(prompts, tmp_path / "runs", "--seed", "0", model="fake"))
    assert "output data.jsonl no longer matches the checksum recorded" in flat(r.output)
    assert {n: (stage / n).read_bytes() for n in want} == want
    assert json.loads((stage / "manifest.json").read_text())["timing"]["resumed_rows"] == N
    # deleted outright: also detected
    (stage / "preference.jsonl").unlink()
    r = invoke(runner, args(prompts, tmp_path / "runs", "--seed", "0", model="fake"))
    assert "output preference.jsonl no longer matches" in flat(r.output)
    assert (stage / "preference.jsonl").read_bytes() == want["preference.jsonl"]
    # untouched: a rerun is a no-op that leaves the manifest as it was
    before = (stage / "manifest.json").read_bytes()
    r = invoke(runner, args(prompts, tmp_path / "runs", "--seed", "0", model="fake"))
    assert "warning" not in r.output and (stage / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("name, damage", [
    ("config.json", lambda b: b[: len(b) // 2]),
    ("config.json", lambda b: b"\xff\xfe garbage"),
    ("config.json", lambda b: b"[1, 2]"),
    ("manifest.json", lambda b: b[: len(b) // 3]),
    ("manifest.json", lambda b: b'"just a string"'),
])
def test_damaged_config_or_manifest_is_a_located_error(runner, tmp_path, name, damage):
    prompts, stage = _finished(runner, tmp_path)
    p = stage / name
    p.write_bytes(damage(p.read_bytes()))
    r = invoke(runner, args(prompts, tmp_path / "runs", "--seed", "0", model="fake"), code=2)
    msg = flat(r.output)
    assert str(p) in msg and "damaged" in msg and "--overwrite" in msg
    invoke(runner, args(prompts, tmp_path / "runs", "--seed", "0", "--overwrite", model="fake"))


def test_content_fingerprint_follows_content_not_paths(tmp_path):
    rows = [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}]
    assert content_fingerprint(rows) == content_fingerprint([dict(r) for r in rows])
    assert content_fingerprint(rows) != content_fingerprint([rows[0], {"id": "b", "prompt": "two!"}])
    assert content_fingerprint(rows) != content_fingerprint(rows[::-1])
    stage = StageDir(tmp_path / "run", "x")
    assert stage.begin({"a": 1}, inputs=rows) == "new"
    stage.write_shard(0, rows)
    stage.release()
    again = StageDir(tmp_path / "run", "x")
    assert again.begin({"a": 1}, inputs=rows) == "resume" and again.shard_done(0)
    again.release()
    changed = StageDir(tmp_path / "run", "x")
    assert changed.begin({"a": 1}, inputs=rows[:1]) == "new"
    assert "the input records changed" in changed.notes[0] and not changed.shard_done(0)
    changed.release()


def test_a_toolkit_file_cut_mid_line_is_a_located_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": 2')
    with pytest.raises(UserInputError) as e:
        read_jsonl(p)
    assert f"{p}:2:" in e.value.message and "cut short" in e.value.message


# --- 6./7. inputs that were accepted or crashed -------------------------------------------------------------------
def test_run_name_cannot_leave_the_runs_dir(runner, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts)
    (tmp_path / "inner").mkdir()
    r = invoke(runner, args(prompts, tmp_path / "inner" / "runs", model="fake")[:-4]
               + ["--run", "../../escaped", "--runs-dir", str(tmp_path / "inner" / "runs")], code=2)
    assert "must be a folder name inside --runs-dir" in flat(r.output)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "inner" / "escaped").exists()
    assert run_dir_for("runs", "demo") == Path("runs/demo")
    for bad in ("../x", "/abs", "", "a/../../b"):
        with pytest.raises(UserInputError):
            run_dir_for("runs", bad)
    assert check_run_dir("../runs/demo") == Path("../runs/demo")  # a runs folder above is fine
    # an absolute --run would ignore --runs-dir: refused by every stage command
    r = invoke(runner, args(prompts, tmp_path / "inner" / "runs", model="fake")[:-4]
               + ["--run", str(tmp_path / "abs"), "--runs-dir", str(tmp_path / "inner" / "runs")], code=2)
    assert "not an absolute path" in flat(r.output)
    assert not (tmp_path / "abs").exists()


def test_report_on_a_folder_that_is_not_a_run_writes_nothing(runner, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    r = invoke(runner, ["report", str(tmp_path / "notes")], code=2)
    assert "is not a run folder" in flat(r.output)
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]


def test_error_printer_shows_markup_in_user_text_literally(runner, tmp_path):
    bad = tmp_path / "[bold]x[/]" / "p.jsonl"
    r = invoke(runner, args(bad, tmp_path / "runs", model="fake"), code=2)
    assert f"{bad}: file not found" in flat(r.output)


# --- 8. YAML: alias bombs, size, duplicate keys, versions, linear time -------------------------------------------
def _constitution(n: int, version: str = "'1'") -> str:
    out = [f"name: big\nversion: {version}\nprinciples:\n"]
    for i in range(n):
        out.append(f"  - id: p{i}\n    name: Principle {i}\n    critique_request: Say how answer {i} could cause harm.\n"
                   f"    revision_request: Rewrite answer {i} so it causes no harm.\n"
                   f"    preference_question: Which answer is less harmful ({i})?\n")
    return "".join(out)


def test_alias_bomb_is_refused_at_once_in_constitutions_and_configs(runner, tmp_path):
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for c in "bcdefghi":
        bomb += f"{c}: &{c} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        prev = c
    assert len(bomb) < 1100
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb)
    t0 = time.process_time()  # CPU seconds: not inflated by a busy machine
    r = invoke(runner, ["constitution", "validate", str(p)], code=2)
    assert "alias bomb" in flat(r.output) and f"{p}:1" in flat(r.output)
    r = invoke(runner, ["revise", "-c", str(p), "--runs-dir", str(tmp_path / "runs")], code=2)
    assert "alias bomb" in flat(r.output)
    assert time.process_time() - t0 < 5
    ok = tmp_path / "merge.yaml"  # a few ordinary anchors and merge keys are still fine
    ok.write_text("base: &b {rounds: 1}\nrevise:\n  <<: *b\n  seed: 3\n")
    from cai.config import read_yaml

    assert read_yaml(ok)["revise"] == {"rounds": 1, "seed": 3}


def test_duplicate_key_version_and_size_limits(runner, tmp_path):
    from cai.constitution import load_constitution
    from cai.yamlsafe import CONSTITUTION_MAX_BYTES

    p = tmp_path / "c.yaml"
    p.write_text(_constitution(2, version="1.10"))
    assert load_constitution(p).version == "1.10"
    p.write_text(_constitution(2, version="2"))
    assert load_constitution(p).version == "2"
    p.write_text(_constitution(2) + "name: again\n")
    r = invoke(runner, ["constitution", "validate", str(p)], code=2)
    lines = p.read_text().count("\n")
    assert f"{p}:{lines}: (file): duplicate key 'name' (first given at line 1)" in flat(r.output)
    with open(p, "wb") as f:
        f.truncate(CONSTITUTION_MAX_BYTES + 1)
    r = invoke(runner, ["constitution", "validate", str(p)], code=2)
    assert "more than the" in flat(r.output)


def test_constitution_validation_is_linear_in_file_size(tmp_path):
    from cai.constitution import validate_constitution_file

    times = {}
    for n in (2250, 22500):  # about 0.5 MB and 5 MB
        p = tmp_path / f"c{n}.yaml"
        p.write_text(_constitution(n))
        t0 = time.process_time()  # CPU seconds of this process: the same on a busy machine as on an idle one
        const, problems = validate_constitution_file(p)
        times[n] = time.process_time() - t0
        assert problems == [] and len(const.principles) == n
    assert (tmp_path / "c22500.yaml").stat().st_size > 5_000_000
    # The quadratic validator took 44-51 s on the 5 MB file; the linear one takes about 3 CPU seconds. A ratio of
    # the two sizes' times is too noisy for a test (the small file takes well under a tenth of a second).
    assert times[22500] < 20, times


# --- 9. credentials in base_url --------------------------------------------------------------------------------
def test_redaction_of_urls():
    assert redact_url("http://user:pass@host:8000/v1") == "http://***@host:8000/v1"
    assert redact_url("https://host/v1?api-key=abc&api-version=2024") == "https://host/v1?api-key=***&api-version=2024"
    assert redact_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert redact_text("see openai:m@http://u:p@h/v1 now") == "see openai:m@http://***@h/v1 now"
    assert redact_obj({"a": ["http://tok@h/?token=x"], "n": 1}) == {"a": ["http://***@h/?token=***"], "n": 1}


def test_credentials_never_reach_the_run_folder_or_report(runner, tmp_path):
    from openai_stub_server import StubServer

    server = StubServer().start()
    try:
        url = server.base_url.replace("http://", "http://alice:hunter2@")
        cfg = tmp_path / "pipe.yaml"
        cfg.write_text(
            f"run: r\nruns_dir: {tmp_path / 'runs'}\nstages: [revise]\n"
            "revise:\n  limit: 2\n  helpful_limit: 0\n  rounds: 1\n  policy: fake\n  reviser: fake\n"
            f"  critic: openai:stub-model@{url}\n"
        )
        invoke(runner, ["pipeline", str(cfg)])
        assert server.chat_hits >= 2
    finally:
        server.stop()
    run = tmp_path / "runs" / "r"
    invoke(runner, ["report", str(run)])
    written = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"config.json", "manifest.json", "pipeline.json", "report.html"} <= names
    for p in written:
        text = p.read_text(encoding="utf-8", errors="replace")
        assert "hunter2" not in text and "alice" not in text, p
    manifest = json.loads((run / "revise" / "manifest.json").read_text())
    assert "***@127.0.0.1" in json.dumps(manifest)


def test_write_json_masks_credentials(tmp_path):
    write_json(tmp_path / "x.json", {"base_url": "http://u:secret@h/v1?api_key=k2", "label": "openai:m@http://u:secret@h"})
    text = (tmp_path / "x.json").read_text()
    assert "secret" not in text and "k2" not in text and "***" in text


def test_markup_like_run_names_and_paths_never_crash_the_printer(runner, tmp_path):
    prompts = tmp_path / "p[/].jsonl"  # a folder "p[" holding "].jsonl"
    prompts.parent.mkdir()
    write_prompts(prompts)
    r = invoke(runner, args(prompts, tmp_path / "runs[/]", model="fake")[:-4]
               + ["--run", "x[/]y", "--runs-dir", str(tmp_path / "runs[/]")])
    assert "x[/]y" in r.output
    assert (tmp_path / "runs[/]" / "x[/]y" / "revise" / "manifest.json").exists()


def test_overwrite_of_a_stage_reused_from_another_run_leaves_that_run_alone(tmp_path):
    src = StageDir(tmp_path / "a", "x")
    src.begin({"v": 1})
    src.write_output("out.jsonl", [{"n": 1}])
    src.finish({})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").symlink_to(tmp_path / "a" / "x", target_is_directory=True)
    dst = StageDir(tmp_path / "b", "x")
    assert dst.begin({"v": 2}, overwrite=True) == "new"
    dst.finish({})
    assert not (tmp_path / "b" / "x").is_symlink()
    assert (tmp_path / "a" / "x" / "manifest.json").exists() and (tmp_path / "a" / "x" / "out.jsonl").exists()
    assert json.loads((tmp_path / "a" / "x" / "config.json").read_text())["config"] == {"v": 1}


def test_a_kill_in_the_middle_of_clearing_never_leaves_a_finished_looking_folder(tmp_path, monkeypatch):
    import cai.runs

    stage = StageDir(tmp_path / "run", "x")
    stage.begin({"seed": 0})
    stage.write_shard(0, [{"n": 0}])
    stage.write_output("out.jsonl", [{"n": 0}])
    stage.finish({})

    def die(*a, **k):
        raise KeyboardInterrupt  # stands for a SIGKILL while the old folder is being removed

    monkeypatch.setattr(cai.runs.shutil, "rmtree", die)
    with pytest.raises(KeyboardInterrupt):
        StageDir(tmp_path / "run", "x").begin({"seed": 1}, overwrite=True)
    monkeypatch.undo()
    left = tmp_path / "run" / "x"
    assert not (left / "manifest.json").exists() and not (left / "config.json").exists()
    assert (left / "shards" / "00000.jsonl").exists()  # the old shard survived the interrupted removal ...
    again = StageDir(tmp_path / "run", "x")
    assert again.begin({"seed": 1}) == "new"
    assert not again.shard_done(0)  # ... but it is not taken: no index of this run records it
    again.release()
