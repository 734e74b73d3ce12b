"""Data-parallel training on CPU: `torchrun --nproc_per_node 2` runs `cai sft` on two processes (gloo), each taking
half of every epoch's rows; rank 0 writes the stage, the other rank's scratch copy of the run is removed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.realmodel]


def test_torchrun_two_processes_share_an_sft_epoch(tmp_path, subprocess_env):
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(8)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    torchrun = Path(sys.executable).with_name("torchrun")
    # (no --run: torchrun's own parser would take it for an abbreviation of --run-path; the run is "default")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "cai.train.accelerate_launch",
           "sft", "--runs-dir", str(tmp_path / "runs"), "--data", str(data), "--helpful", "none",
           "--model", "embedded", "--device", "cpu", "--batch-size", "1", "--epochs", "1", "--max-length", "64",
           "--logging-steps", "1", "--save-steps", "100"]
    env = dict(subprocess_env, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "sft done on 2 process(es)" in r.stdout
    stage = tmp_path / "runs" / "default" / "sft"
    manifest = json.loads((stage / "manifest.json").read_text())
    # 8 rows, 1 per process per step, 2 processes: 4 optimizer steps for the epoch (one process would take 8)
    assert manifest["training"]["steps"] == 4, manifest["training"]
    metrics = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert any("loss" in m for m in metrics)
    assert (stage / "model" / "config.json").exists()
    assert not (tmp_path / "runs" / "default" / ".ranks").exists()
