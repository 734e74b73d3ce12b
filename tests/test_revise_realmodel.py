"""`cai revise` end to end on the embedded SmolLM2 model, on a few prompts with small token limits."""

from __future__ import annotations

import json
import subprocess

import pytest

from cai.constitution import load_constitution
from cai.data.io import read_jsonl

pytestmark = pytest.mark.realmodel


def test_revise_on_the_embedded_model(cai_exe, subprocess_env, tmp_path):
    # One intra-op thread: on a shared 2-core machine, torch's spinning OpenMP workers competing with other
    # processes make each decode step 10x slower than a single thread does.
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    cfg = tmp_path / "small.yaml"
    cfg.write_text(
        "revise:\n"
        "  answer_tokens: 32\n"
        "  critique_tokens: 24\n"
        "  revision_tokens: 32\n"
        "  shard_size: 4\n",
        encoding="utf-8",
    )
    p = subprocess.run(
        [str(cai_exe), "revise", "--config", str(cfg), "--limit", "2", "--helpful-limit", "1", "--rounds", "1",
         "--run", "rm", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    stage = tmp_path / "runs" / "rm" / "revise"
    m = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
    const = load_constitution()
    assert m["constitution"]["hash"] == const.content_hash()
    assert m["counts"]["rows"] == 3 and m["counts"]["redteam_rows"] == 2 and m["counts"]["helpful_rows"] == 1
    assert m["counts"]["revisions_generated"] == 2
    assert "SmolLM2" in m["models"]["policy"]["model"]
    assert m["tokens"]["generated_this_session"] > 0
    assert m["config"]["answer_tokens"] == 32 and m["config"]["revision_tokens"] == 32

    rows = read_jsonl(stage / "data.jsonl")
    assert [r["kind"] for r in rows] == ["redteam", "redteam", "helpful"]
    ids = {p.id for p in const.principles}
    for r in rows:
        assert r["initial"].strip(), r
    for r in rows[:2]:
        assert len(r["rounds"]) == 1
        e = r["rounds"][0]
        assert e["principle_id"] in ids
        assert e["critique"].strip()
        assert e["revision"] is not None
        assert isinstance(e["accepted"], bool)
        # An accepted revision becomes the final answer; a rejected one leaves the initial answer in place.
        assert r["final"] == (e["revision"] if e["accepted"] else r["initial"])
    assert rows[2]["rounds"] == []

    # Only red-team rows whose revision the gate accepted become SFT rows (their final answer declines).
    sft = read_jsonl(stage / "sft.jsonl")
    revised = [r for r in rows[:2] if r["rounds"][0]["accepted"]]
    assert [s["id"] for s in sft] == [r["id"] for r in revised]
    assert all(s["messages"][1]["content"] == r["final"] for s, r in zip(sft, revised))
    gate = m["counts"]["gate"]
    assert gate["harmful_declined_after"]["n"] == 2 and gate["helpful_refused"]["n"] == 1
    helpful = read_jsonl(stage / "helpful.jsonl")
    assert [h["messages"][1]["content"] for h in helpful] == ([] if gate["helpful_refused"]["k"] else [rows[2]["initial"]])
    prefs = read_jsonl(stage / "preference.jsonl")
    assert len(prefs) == sum(r["changed"] for r in rows[:2])
