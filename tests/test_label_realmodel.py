"""`pairs` then `label` on the embedded SmolLM2 model: tiny data, real sampling and real letter scoring."""

from __future__ import annotations

import math

import pytest

from cai.backends.registry import BackendPool
from cai.data.io import read_jsonl
from cai.stages.label import LabelConfig, run_label
from cai.stages.pairs import PairsConfig, run_pairs

pytestmark = pytest.mark.realmodel


def test_pairs_and_label_with_embedded_model(tmp_path):
    pool = BackendPool()  # one loaded model shared by both stages
    run_dir = str(tmp_path / "run")
    pm = run_pairs(PairsConfig(limit=2, k=2, max_tokens=24, seed=3), run_dir, pool=pool)
    rows = read_jsonl(tmp_path / "run" / "pairs" / "pairs.jsonl")
    assert len(rows) == 2 and pm["counts"]["answers"] == 4
    for r in rows:
        assert len(r["responses"]) == 2 and all(isinstance(t, str) for t in r["responses"])
        assert all(f in ("stop", "length") for f in r["finish"])
    # sampling at temperature 1 gives different answers for at least one prompt
    assert any(not r["identical"] for r in rows)

    lm = run_label(LabelConfig(seed=1), run_dir, pool=pool)
    labels = read_jsonl(tmp_path / "run" / "label" / "labels.jsonl")
    expected = sum(not r["identical"] for r in rows)
    assert len(labels) == expected == lm["labels"]["n"]
    for lab in labels:
        assert lab["abstained"] is False
        j = lab["judgments"][0]
        assert j["method"] == ["logprob", "logprob"]
        # both orders were scored and give proper probabilities strictly inside (0, 1)
        for p in (j["p_a_order1"], j["p_a_order2"], lab["p_a"]):
            assert 0.0 < p < 1.0 and not math.isnan(p)
        assert lab["p_a"] == pytest.approx((j["p_a_order1"] + 1 - j["p_a_order2"]) / 2)
        assert lab["consistent"] == ((j["p_a_order1"] - 0.5) * (0.5 - j["p_a_order2"]) > 0)
    s = lm["labels"]
    assert 0.0 <= s["position_consistency_rate"] <= 1.0
    assert sum(s["confidence_histogram"]) == len(labels)
    assert lm["model"]["backend"] == "transformers"
