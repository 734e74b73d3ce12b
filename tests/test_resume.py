"""Resume after a real SIGKILL of `cai revise`: the finished run equals an uninterrupted one, row for row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cai.data.io import read_jsonl
from cai.data.readers import load_prompts
from conftest import flat

ARGS = ["revise", "--model", "fake:delay=0.05", "--limit", "40", "--helpful-limit", "8", "--rounds", "2",
        "--shard-size", "4", "--run", "r"]
N_SHARDS = 12  # 48 prompts / 4


def _cmd(cai_exe, runs_dir, *extra):
    return [str(cai_exe), *ARGS, "--runs-dir", str(runs_dir), *extra]


def _finished_shards(stage: Path) -> list[Path]:
    return sorted((stage / "shards").glob("[0-9]*.jsonl"))


def _kill_after_two_shards(proc: subprocess.Popen, stage: Path, timeout_s: float = 90) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before it could be killed")
        if len(_finished_shards(stage)) >= 2 and not (stage / "manifest.json").exists():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return len(_finished_shards(stage))
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    pytest.fail("no two shards were written in time")


def test_killed_run_resumes_to_the_same_rows(cai_exe, subprocess_env, tmp_path):
    killed_dir, ref_dir = tmp_path / "killed", tmp_path / "reference"
    stage = killed_dir / "r" / "revise"
    log = open(tmp_path / "killed.log", "w")
    victim = subprocess.Popen(_cmd(cai_exe, killed_dir), stdout=log, stderr=subprocess.STDOUT, env=subprocess_env)
    # The uninterrupted reference run goes at the same time (the fake backend mostly sleeps).
    reference = subprocess.Popen(_cmd(cai_exe, ref_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=subprocess_env)
    try:
        n_done = _kill_after_two_shards(victim, stage)
    finally:
        log.close()
    assert victim.returncode == -signal.SIGKILL
    assert not (stage / "manifest.json").exists()
    assert not (stage / "data.jsonl").exists()
    assert 2 <= n_done < N_SHARDS
    for shard in _finished_shards(stage):  # every shard on disk is whole, never half-written
        rows = read_jsonl(shard)
        assert len(rows) == 4 and all(r["rounds"] or r["kind"] == "helpful" for r in rows)

    resumed = subprocess.run(_cmd(cai_exe, killed_dir), capture_output=True, text=True, env=subprocess_env, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    out, err = reference.communicate(timeout=180)
    assert reference.returncode == 0, err

    ref_stage = ref_dir / "r" / "revise"
    got, want = read_jsonl(stage / "data.jsonl"), read_jsonl(ref_stage / "data.jsonl")
    assert got == want
    ids = [r["id"] for r in got]
    expected_ids = [r["id"] for r in load_prompts("redteam", limit=40)] + [r["id"] for r in load_prompts("helpful", limit=8)]
    assert ids == expected_ids
    assert len(set(ids)) == len(ids) == 48
    assert all(len(r["rounds"]) == 2 for r in got if r["kind"] == "redteam")
    for view in ("sft.jsonl", "preference.jsonl", "helpful.jsonl"):
        assert (stage / view).read_text(encoding="utf-8") == (ref_stage / view).read_text(encoding="utf-8"), view

    m = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
    m_ref = json.loads((ref_stage / "manifest.json").read_text(encoding="utf-8"))
    assert m["timing"]["resumed_rows"] >= 4 * n_done
    assert m["timing"]["rows_this_session"] == 48 - m["timing"]["resumed_rows"]
    assert m_ref["timing"]["resumed_rows"] == 0
    assert m["counts"] == m_ref["counts"]
    assert m["constitution"] == m_ref["constitution"]
    assert "resumed" in flat(resumed.stdout)

    # Changing a setting of a half-done or done stage is refused, with the way out.
    mismatch = subprocess.run(_cmd(cai_exe, killed_dir, "--rounds", "3"), capture_output=True, text=True,
                              env=subprocess_env, timeout=60)
    assert mismatch.returncode == 2
    msg = flat(mismatch.stderr)
    assert "different configuration" in msg and "--overwrite" in msg
    assert "Traceback" not in mismatch.stderr
    assert read_jsonl(stage / "data.jsonl") == want  # nothing was touched


def _small(cai_exe, runs_dir, *extra):
    return [str(cai_exe), "revise", "--model", "fake", "--limit", "4", "--helpful-limit", "0", "--run", "s",
            "--runs-dir", str(runs_dir), *extra]


def test_rerun_of_a_finished_run_is_a_no_op(cai_exe, subprocess_env, tmp_path):
    first = subprocess.run(_small(cai_exe, tmp_path, "--rounds", "1"), capture_output=True, text=True, env=subprocess_env)
    assert first.returncode == 0, first.stderr
    manifest = tmp_path / "s" / "revise" / "manifest.json"
    before = manifest.read_bytes()
    again = subprocess.run(_small(cai_exe, tmp_path, "--rounds", "1"), capture_output=True, text=True, env=subprocess_env)
    assert again.returncode == 0, again.stderr
    assert manifest.read_bytes() == before


def test_overwrite_flag_starts_the_stage_again(cai_exe, subprocess_env, tmp_path):
    first = subprocess.run(_small(cai_exe, tmp_path, "--rounds", "1"), capture_output=True, text=True, env=subprocess_env)
    assert first.returncode == 0, first.stderr
    p = subprocess.run(_small(cai_exe, tmp_path, "--rounds", "2", "--overwrite"), capture_output=True, text=True,
                       env=subprocess_env)
    assert p.returncode == 0, p.stderr
    rows = read_jsonl(tmp_path / "s" / "revise" / "data.jsonl")
    assert all(len(r["rounds"]) == 2 for r in rows)


# --- the shared shard loop (cai.stages.sharded) under a real kill: pairs ---------------------------------------------
PAIRS_ARGS = ["pairs", "--policy", "fake:delay=0.05", "--limit", "24", "--k", "2", "--shard-size", "4", "--run", "p"]


def test_killed_pairs_stage_resumes_to_the_same_rows(cai_exe, subprocess_env, tmp_path):
    killed_dir, ref_dir = tmp_path / "killed", tmp_path / "reference"
    stage = killed_dir / "p" / "pairs"
    cmd = lambda runs: [str(cai_exe), *PAIRS_ARGS, "--runs-dir", str(runs)]  # noqa: E731
    log = open(tmp_path / "killed.log", "w")
    victim = subprocess.Popen(cmd(killed_dir), stdout=log, stderr=subprocess.STDOUT, env=subprocess_env)
    reference = subprocess.Popen(cmd(ref_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=subprocess_env)
    try:
        n_done = _kill_after_two_shards(victim, stage)
    finally:
        log.close()
    assert victim.returncode == -signal.SIGKILL and not (stage / "pairs.jsonl").exists()
    assert 2 <= n_done < 6
    assert all(len(read_jsonl(s)) == 4 for s in _finished_shards(stage))  # whole shards only

    resumed = subprocess.run(cmd(killed_dir), capture_output=True, text=True, env=subprocess_env, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    out, err = reference.communicate(timeout=180)
    assert reference.returncode == 0, err
    got, want = read_jsonl(stage / "pairs.jsonl"), read_jsonl(ref_dir / "p" / "pairs" / "pairs.jsonl")
    assert got == want and [r["id"] for r in got] == [r["id"] for r in load_prompts("redteam", limit=24)]
    m = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
    assert m["timing"]["resumed_rows"] >= 4 * n_done and m["counts"]["answers"] == 48
    assert "Traceback" not in resumed.stderr
