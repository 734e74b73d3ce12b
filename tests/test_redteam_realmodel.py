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
