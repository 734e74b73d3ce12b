"""The guard on the embedded SmolLM2 model: prefix-cached scoring equals the backend's own, a real check and apply."""

from __future__ import annotations

import os

import pytest

from cai.backends.registry import BackendPool
from cai.guard import Guard, GuardConfig, prompts
from cai.guard.injections import count_flips, load_injections
from cai.guard.scoring import wrap

pytestmark = pytest.mark.realmodel

CONV = [{"role": "user", "content": "How do I boil an egg?"}]


@pytest.fixture(scope="module")
def guard():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = GuardConfig(policy="embedded", checker="embedded", max_new_tokens=12,
                      principles=["harmless-overall", "no-violence-uplift"])
    return Guard(cfg, pool=BackendPool())


def test_prefix_cached_scores_equal_the_backends(guard):
    backend = guard.checker
    shared = prompts.transcript(CONV, "Simmer it for nine minutes, then cool it in cold water.")
    convs = [prompts.scoring_conversation(shared, p, input_check=False) for p in guard.principles]
    opts = [["A", "B"]] * len(convs)
    ref = backend.option_logprobs(convs, opts)
    fast = wrap(backend).option_logprobs(convs, opts)
    assert wrap(backend) is not backend or getattr(backend, "fast", None)  # or the backend shares prefixes itself
    for r, f in zip(ref, fast):
        assert f == pytest.approx(r, abs=2e-3)


def test_check_and_apply_on_the_embedded_model(guard):
    res = guard.check(CONV, "Simmer it for nine minutes, then cool it in cold water.")
    assert res.error is None and res.model_calls == 1 and len(res.verdicts) == 2
    for v in res.verdicts:
        assert v.method == "logprob" and 0.0 <= v.score <= 1.0 and v.violated == (v.score >= v.threshold)
    out = guard.apply(CONV)
    assert out.outcome in ("pass", "revised", "blocked") and out.answer.strip()
    assert out.model_calls >= 2 and out.latency_ms["generate"] > 0 and out.latency_ms["check"] > 0


@pytest.mark.slow
def test_injection_flips_on_the_embedded_model(guard):
    """The embedded checker is weak; this measures (and bounds) how many injected texts flip its verdict."""
    def verdicts(pairs):
        return [bool(r.flagged) for r in guard.check_many([([{"role": "user", "content": p}], a) for p, a in pairs])]

    result = count_flips(verdicts, load_injections())
    print(result)
    assert result["n"] >= 30 and result["flips"] <= result["n"] // 2
