"""`cai redteam` with the embedded SmolLM2-135M as attacker and target, and the packaged MiniLM embeddings."""

from __future__ import annotations

import pytest

from cai.data.io import read_jsonl
from cai.manifests import load_manifest
from cai.redteam.config import RedteamConfig
from cai.redteam.stage import run_redteam


@pytest.mark.realmodel
def test_embedded_attacker_against_embedded_target(tmp_path):
    cfg = RedteamConfig(categories=["fraud", "cyber"], per_category=1, attack_max_tokens=16, response_max_tokens=16,
                        on_topic_threshold=0, shard_size=2)  # every attack reaches the target
    m = load_manifest("redteam", run_redteam(cfg, tmp_path))
    rows = read_jsonl(tmp_path / "redteam" / "cases.jsonl")
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"ok", "error", "attacker_refused", "unscored"}
    res = m.results
    assert sum(res.counts[s] for s in ("ok", "error", "attacker_refused", "unscored")) == res.counts["cases"] == 2
    for r in rows:
        assert isinstance(r["seed"], int)
        if r["status"] == "ok":
            assert r["prompt"] and r["response"] and r["judges"] and r["success"] in (True, False)
    assert m.accounting["attacker"].completion_tokens > 0
    a = res.diversity["attacks"]
    if a["n"] >= 2:  # real MiniLM vectors: a distance in [0, 2], self-BLEU in [0, 1]
        assert 0 <= a["embedding_distance"] <= 2 and 0 <= a["self_bleu"] <= 1


@pytest.mark.slow
@pytest.mark.realmodel
def test_supervised_round_fine_tunes_the_attacker_on_successes(tmp_path):
    from cai.backends.fake import FakeBackend
    from cai.backends.registry import BackendPool

    pool = BackendPool()
    pool.put("fake", FakeBackend("target", fn=lambda conv: "Sure. Step 1: do this. Step 2: do that. Step 3: done."))
    cfg = RedteamConfig(target="fake", categories=["fraud"], per_category=4, methods=["zero_shot", "supervised"],
                        attack_max_tokens=24, supervised_steps=2, shard_size=2)
    m = load_manifest("redteam", run_redteam(cfg, tmp_path, pool=pool))
    rows = read_jsonl(tmp_path / "redteam" / "cases.jsonl")
    sup = [r for r in rows if r["method"] == "supervised"]
    assert len(sup) == 2 and all(r["attacker"].endswith("redteam/attacker/sft/model") for r in sup)
    assert (tmp_path / "redteam" / "attacker" / "sft" / "manifest.json").exists()
    assert m.models["supervised_attacker"]["trained_on"] >= 1


@pytest.mark.slow
def test_sigkilled_redteam_resumes_to_the_same_cases(cai_exe, subprocess_env, tmp_path):
    import os
    import signal
    import subprocess
    import time

    args = ["redteam", "--model", "fake:delay=0.2", "--per-category", "2", "--shard-size", "2",
            "--on-topic-threshold", "0", "--run", "k"]
    cmd = lambda runs: [str(cai_exe), *args, "--runs-dir", str(runs)]  # noqa: E731
    stage = tmp_path / "killed" / "k" / "redteam"
    victim = subprocess.Popen(cmd(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=subprocess_env)
    deadline = time.monotonic() + 120
    while len(list((stage / "shards").glob("0*.jsonl"))) < 2:
        assert victim.poll() is None and time.monotonic() < deadline, "no two shards written before the run ended"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (stage / "manifest.json").exists()
    for runs in (tmp_path / "killed", tmp_path / "ref"):
        done = subprocess.run(cmd(runs), capture_output=True, text=True, env=subprocess_env, timeout=600)
        assert done.returncode == 0, done.stderr
    assert read_jsonl(stage / "cases.jsonl") == read_jsonl(tmp_path / "ref" / "k" / "redteam" / "cases.jsonl")
    m = load_manifest("redteam", stage)
    assert m.timing["resumed_rows"] >= 4
