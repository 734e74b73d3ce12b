"""The speed benchmarks run end to end on tiny settings and end with their JSON line (so they cannot rot unseen).

Timing is not checked here; only that each script runs both its fast path and its baseline, compares their outputs
where it should, and reports the figures the README's table quotes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.realmodel

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bench_revise_compares_engine_and_naive_text():
    res = _run("bench_revise.py", "--prompts", "2", "--naive-prompts", "1", "--rounds", "1", "--answer-tokens", "6",
               "--critique-tokens", "6", "--revision-tokens", "6")
    assert res["same_text"]["n"] >= 2 and res["same_text"]["k"] == res["same_text"]["n"]  # fp32 greedy: same text
    assert res["engine_forward_tokens"] > 0 and res["matmul_gflops"] > 0 and res["tokens_per_s_ratio"] > 0


def test_bench_label_reports_both_modes_and_the_work_per_label():
    res = _run("bench_label.py", "--pairs", "2", "--cot-tokens", "4")
    for mode in ("logprob", "cot"):
        assert res[mode]["forward_tokens_per_label"] > 0 and res[mode]["layer_gflops"] > 0
    assert res["cot"]["forward_tokens_per_label"] > res["logprob"]["forward_tokens_per_label"]
    assert res["speed_ratio_logprob_over_cot"] > 0


def test_bench_eval_runs_the_stage_and_the_plain_baseline():
    res = _run("bench_eval.py", "--models", "2", "--limit", "2", "--max-new-tokens", "6")
    assert res["runs"]["eval"][0]["tokens"] > 0 and res["runs"]["plain"][0]["tokens"] > 0
    assert res["runs"]["eval"][0]["pairwise_s"] > 0 and res["temperature"] == 0.7


def test_bench_dtype_compares_bf16_and_int8_with_fp32():
    res = _run("bench_dtype.py", "--pairs", "2", "--prompts", "2", "--max-new-tokens", "4")
    for name in ("bfloat16", "int8"):
        r = res["results"][name]
        assert 0 <= r["same_letter"] <= 1 and 0 <= r["same_text"] <= 1 and r["label_speedup"] > 0
    assert set(res["matmul_gflops"]) == {"float32", "bfloat16", "int8"}
