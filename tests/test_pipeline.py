"""cai pipeline: wiring of stages with fake models, and resume after a real kill inside a stage and between stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

CAI = str(Path(sys.executable).parent / "cai")


def _config(tmp: Path, run: str, delay: float = 0.0) -> Path:
    fake = f"fake:delay={delay}" if delay else "fake"
    cfg = {
        "run": run,
        "runs_dir": str(tmp / "runs"),
        "stages": ["revise", "pairs", "label", "eval"],
        "base_model": fake,
        "revise": {"limit": 12, "helpful_limit": 4, "rounds": 2, "shard_size": 4},
        "pairs": {"limit": 12, "k": 2, "shard_size": 4, "policy": fake},
        "label": {"shard_size": 4},
        "eval": {"models": {"base": fake}, "limit": 6, "helpfulness_judge": fake, "pairwise": []},
    }
    p = tmp / f"{run}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_pipeline_runs_every_stage_and_wires_outputs(tmp_path):
    cfg = _config(tmp_path, "ref")
    r = subprocess.run([CAI, "pipeline", str(cfg)], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    run = tmp_path / "runs" / "ref"
    for stage in ("revise", "pairs", "label", "eval"):
        assert (run / stage / "manifest.json").exists(), stage
    pairs = _rows(run / "pairs" / "pairs.jsonl")
    labels = _rows(run / "label" / "labels.jsonl")
    assert len(pairs) == 12 and all(len(p["responses"]) == 2 for p in pairs)
    assert {x["id"] for x in labels} <= {p["id"] for p in pairs}
    assert "pipeline done" in r.stdout
    assert json.loads((run / "pipeline.json").read_text())["stages"] == ["revise", "pairs", "label", "eval"]


def test_pipeline_resumes_after_kill_inside_a_stage_and_between_stages(tmp_path):
    ref = _config(tmp_path, "ref")
    assert subprocess.run([CAI, "pipeline", str(ref)], capture_output=True, env=_env(), timeout=300).returncode == 0

    cfg = _config(tmp_path, "killed", delay=0.03)
    run = tmp_path / "runs" / "killed"
    # Between stages: finish revise alone, then the full pipeline must pick up at pairs.
    r = subprocess.run([CAI, "pipeline", str(cfg), "--stages", "revise"], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert (run / "revise" / "manifest.json").exists() and not (run / "pairs").exists()
    revise_manifest = (run / "revise" / "manifest.json").read_text()
    # Inside a stage: kill while pairs shards are being written.
    proc = subprocess.Popen([CAI, "pipeline", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 120
    shards = run / "pairs" / "shards"
    while time.time() < deadline:
        if shards.exists() and len(list(shards.glob("*.jsonl"))) >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "pairs" / "manifest.json").exists(), "kill landed after pairs finished; slow the fake down"
    done_before = len(list(shards.glob("*.jsonl")))
    assert 1 <= done_before < 3
    r = subprocess.run([CAI, "pipeline", str(cfg)], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert (run / "revise" / "manifest.json").read_text() == revise_manifest  # finished stage not redone
    for stage, name in (("revise", "data.jsonl"), ("pairs", "pairs.jsonl"), ("label", "labels.jsonl")):
        got = _rows(run / stage / name)
        want = _rows(tmp_path / "runs" / "ref" / stage / name)
        assert [x["id"] for x in got] == [x["id"] for x in want], stage
        assert got == want, stage
