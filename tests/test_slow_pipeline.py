"""The whole demo pipeline on the embedded model (about 15-20 minutes on 2 cores): `pytest -m slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CAI = str(Path(sys.executable).parent / "cai")


@pytest.mark.slow
@pytest.mark.realmodel
def test_demo_pipeline_end_to_end(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    r = subprocess.run(
        [CAI, "pipeline", str(ROOT / "configs" / "demo-pipeline.yaml"), "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "demo-pipeline"
    for stage in ("revise", "sft", "pairs", "label", "reward", "rl", "eval"):
        assert (run / stage / "manifest.json").exists(), stage
    for model in ("sft", "rl"):
        assert (run / model / "model" / "config.json").exists()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "sl-cai", "rl-cai"}
    label = json.loads((run / "label" / "manifest.json").read_text())
    consistency = label["labels"].get("position_consistency") or label["labels"].get("position_consistency_rate")
    consistency = consistency["value"] if isinstance(consistency, dict) else consistency  # a figure, or a number
    assert 0.0 <= consistency <= 1.0
    assert "Evaluation summary" in r.stdout
    # Through a pipe every stage still shows its progress as plain lines, and no raw trainer dicts or bars.
    lines = r.stderr.splitlines()
    for stage in ("revise", "sft", "pairs", "label", "reward", "rl", "eval"):
        assert any(x.startswith(f"{stage}  ") and "elapsed" in x for x in lines), stage
    assert "{'loss'" not in r.stderr and "it/s]" not in r.stderr
    rep = subprocess.run([CAI, "report", str(run)], capture_output=True, text=True, env=env, timeout=300)
    assert rep.returncode == 0 and (run / "report" / "report.html").exists()
