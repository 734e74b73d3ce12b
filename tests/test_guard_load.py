"""A bounded load test of the guard server: 8 concurrent `openai` clients for a fixed time on 127.0.0.1, no errors,
every request in the audit log exactly once. Fake models in the default suite; the embedded model under `slow`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("bench_guard_load", Path(__file__).parents[1] / "benchmarks" / "bench_guard_load.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _run(tmp_path, model: str, seconds: float, max_new_tokens: int = 32, timeout_s: float = 120.0) -> dict:
    srv, key, audit = bench.start_server(model, tmp_path, max_new_tokens=max_new_tokens, timeout_s=timeout_s)
    with srv:
        report = bench.run_load(srv.url, key, clients=8, seconds=seconds, timeout_s=timeout_s + 30)
    report.update(bench.audit_exactly_once(audit, report.pop("results")))
    print("guard load:", json.dumps(report))
    return report


def test_load_fake_upstream(tmp_path):
    r = _run(tmp_path, "fake", seconds=8.0)
    assert r["errors"] == 0, r
    assert r["requests"] >= 16, r  # a fake upstream answers in milliseconds: every client gets through several
    assert r["audit_exactly_once"] and r["audit_records"] == r["requests"], r
    assert set(r["actions"]) <= {"pass", "revised", "blocked", "flagged"}


@pytest.mark.slow
@pytest.mark.realmodel
def test_load_embedded_model(tmp_path):
    # one local model serves the 8 clients one request at a time: each waits for up to 7 others
    r = _run(tmp_path, "embedded", seconds=30.0, max_new_tokens=16, timeout_s=1800.0)
    assert r["errors"] == 0, r
    assert r["requests"] >= 8, r
    assert r["audit_exactly_once"] and r["audit_records"] == r["requests"], r
