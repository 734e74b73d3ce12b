"""Data-parallel training on CPU: `torchrun --nproc_per_node 2` runs `cai sft` on two processes (gloo), each taking
half of every epoch's rows; rank 0 writes the stage, the other rank's scratch copy of the run is removed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_executors import ray_session  # noqa: F401  (module fixtures of those suites, used by the server test)
from test_server_suite import vllm_url  # noqa: F401

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



@pytest.mark.server
def test_ray_executor_samples_like_the_local_one_on_a_real_vllm_server(vllm_url, ray_session, tmp_path):
    """pairs on vLLM for CPU (scripts/serve_vllm_cpu.sh, opt in with -m server): the K seeded samples of each prompt
    sent by Ray Data workers equal those the HTTP backend gets from the same server."""
    from cai import registry
    from cai.config import build_config

    out = {}
    for kind in ("local", "ray"):
        cls = registry.get("pairs").config_class()
        cfg = build_config(cls, {"limit": 4, "k": 2, "max_tokens": 32, "seed": 5, "shard_size": 4,
                                 "policy": {"backend": "openai", "model": "smollm2", "base_url": vllm_url,
                                            "max_concurrency": 4, "timeout_s": 900},
                                 "executor": {"kind": kind, "engine": "http", "batch_size": 4}})
        out[kind] = registry.call("pairs", cfg, tmp_path / kind)
    local = [json.loads(x) for x in (tmp_path / "local" / "pairs" / "pairs.jsonl").read_text().splitlines()]
    ray_rows = [json.loads(x) for x in (tmp_path / "ray" / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert len(local) == 4 and all(r["n_distinct"] == 2 for r in local)
    assert [r["responses"] for r in ray_rows] == [r["responses"] for r in local]
    assert out["ray"]["counts"] == out["local"]["counts"]
    assert out["ray"]["model"]["backend"] == "ray" and out["ray"]["model"]["throughput"]["generated_tokens"] > 0
