"""OpenAIBackend against a real HTTP server on 127.0.0.1 (tests/openai_stub_server.py); the client is not mocked."""

from __future__ import annotations

import math
import socket
import time

import pytest

from cai.backends.base import GenParams
from cai.backends.openai_backend import OpenAIBackend
from cai.errors import ModelError
from openai_stub_server import StubServer


@pytest.fixture
def server():
    srv = StubServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def make_backend(server):
    made: list[OpenAIBackend] = []

    def make(**kw) -> OpenAIBackend:
        kw.setdefault("base_url", server.base_url)
        kw.setdefault("backoff_s", 0.01)
        kw.setdefault("timeout_s", 5.0)
        kw.setdefault("api_key_env", "CAI_TEST_NO_SUCH_KEY_VAR")
        b = OpenAIBackend(kw.pop("model", "stub-model"), **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def _index(payload: dict) -> int:
    return int(payload["messages"][-1]["content"].split()[-1])


def test_generate_preserves_input_order_under_concurrency(server, make_backend):
    n = 10
    # Later requests answer first, so completion order is the reverse of input order.
    server.delay_fn = lambda p: 0.02 * (n - _index(p))
    b = make_backend(max_concurrency=n)
    out = b.generate([conv(f"question {i}") for i in range(n)], GenParams(max_new_tokens=50))
    assert [c.text for c in out] == [f"echo: question {i}" for i in range(n)]
    assert server.peak_in_flight > 1
    assert all(c.finish_reason == "stop" for c in out)


def test_max_concurrency_is_respected(server, make_backend):
    server.delay_fn = lambda p: 0.08
    b = make_backend(max_concurrency=3)
    out = b.generate([conv(f"q {i}") for i in range(12)], GenParams())
    assert len(out) == 12
    assert 1 < server.peak_in_flight <= 3


def test_request_payload_and_completion_fields(server, make_backend):
    b = make_backend()
    params = GenParams(max_new_tokens=3, temperature=0.7, top_p=0.9, seed=11, stop=["\n\n"])
    (c,) = b.generate([conv("one two three four")], params)
    p = server.requests[-1]
    assert p["model"] == "stub-model"
    assert p["messages"] == conv("one two three four")
    assert (p["max_tokens"], p["temperature"], p["top_p"], p["seed"], p["stop"]) == (3, 0.7, 0.9, params.seed_for(0), ["\n\n"])
    assert "repetition_penalty" not in p and "continue_final_message" not in p
    assert c.text == "echo: one two"
    assert c.finish_reason == "length"
    assert (c.prompt_tokens, c.completion_tokens) == (6, 3)

    b.generate([conv("x")], GenParams())
    p = server.requests[-1]
    assert "seed" not in p and "stop" not in p
    assert "authorization" not in server.headers[-1]


def test_trailing_assistant_prefill_is_sent_as_is(server, make_backend):
    b = make_backend()
    c = conv("pick one") + [{"role": "assistant", "content": "The answer is ("}]
    b.generate([c], GenParams())
    p = server.requests[-1]
    assert p["messages"][-1] == {"role": "assistant", "content": "The answer is ("}
    assert len(p["messages"]) == 3
    # vLLM's extension fields that make the server continue the final assistant turn
    assert (p["continue_final_message"], p["add_generation_prompt"]) == (True, False)


def test_stats_are_updated(server, make_backend):
    server.delay_fn = lambda p: 0.01
    b = make_backend(max_concurrency=4)
    b.generate([conv("a b"), conv("c d e"), conv("f")], GenParams())
    s = b.stats
    assert s.calls == 1
    assert s.requests == 3
    # prompt: "be brief" (2) + user words; completion: "echo:" + user words
    assert s.prompt_tokens == (2 + 2) + (2 + 3) + (2 + 1)
    assert s.completion_tokens == 3 + 4 + 2
    assert s.generate_seconds > 0
    b.generate([conv("g")], GenParams())
    assert (b.stats.calls, b.stats.requests) == (2, 4)


def test_retry_after_429_is_respected_and_capped(server, make_backend):
    server.script(("status", 429, {"error": {"message": "rate limited"}}, {"Retry-After": "30"}))
    b = make_backend(backoff_s=0.0)
    b.retry_after_cap_s = 0.3
    t0 = time.perf_counter()
    (c,) = b.generate([conv("hello")], GenParams())
    elapsed = time.perf_counter() - t0
    assert c.text == "echo: hello"
    assert server.chat_hits == 2
    assert b.retries == 1
    assert 0.3 <= elapsed < 3.0


def test_retries_recover_from_5xx(server, make_backend):
    server.script(("status", 500, "boom", {}), ("status", 503, "busy", {}))
    b = make_backend()
    (c,) = b.generate([conv("hello")], GenParams())
    assert c.text == "echo: hello"
    assert server.chat_hits == 3
    assert b.retries == 2
    assert b.stats.requests == 1


def test_retries_recover_from_timeout(server, make_backend):
    server.script(("sleep", 1.0))
    b = make_backend(timeout_s=0.25)
    t0 = time.perf_counter()
    (c,) = b.generate([conv("slow")], GenParams())
    assert c.text == "echo: slow"
    assert server.chat_hits == 2
    assert b.retries == 1
    assert time.perf_counter() - t0 < 1.0


def test_gives_up_after_max_retries_with_url_status_and_body(server, make_backend):
    server.script(*[("status", 503, {"error": {"message": "overloaded right now"}}, {})] * 10)
    b = make_backend(max_retries=2)
    with pytest.raises(ModelError) as ei:
        b.generate([conv("hello")], GenParams())
    msg = str(ei.value)
    assert f"{server.base_url}/chat/completions" in msg
    assert "HTTP 503" in msg
    assert "overloaded right now" in msg
    assert "Fix:" in msg
    assert server.chat_hits == 3


def test_unknown_model_lists_available_models(server, make_backend):
    b = make_backend(model="no-such-model")
    with pytest.raises(ModelError) as ei:
        b.generate([conv("hello")], GenParams())
    err = ei.value
    assert "no-such-model" in err.message
    assert "stub-model, other-model" in err.message
    assert err.fix is not None and "model:" in err.fix and "stub-model" in err.fix
    assert server.chat_hits == 1  # not retried
    assert server.models_hits == 1


def test_400_about_context_length_is_not_called_an_unknown_model(server, make_backend):
    body = {"error": {"message": "This model's maximum context length is 2048 tokens."}}
    server.script(("status", 400, body, {}))
    b = make_backend()
    with pytest.raises(ModelError) as ei:
        b.generate([conv("hello")], GenParams())
    msg = str(ei.value)
    assert "HTTP 400" in msg and "maximum context length" in msg
    assert "does not serve" not in msg
    assert server.chat_hits == 1


def test_unauthorized_names_the_api_key_env_var(server, make_backend, monkeypatch):
    server.api_key = "right-key"
    monkeypatch.setenv("CAI_TEST_KEY", "wrong-key")
    b = make_backend(api_key_env="CAI_TEST_KEY")
    with pytest.raises(ModelError) as ei:
        b.generate([conv("hello")], GenParams())
    msg = str(ei.value)
    assert "CAI_TEST_KEY" in msg and "401" in msg
    assert "wrong-key" not in msg
    assert server.chat_hits == 1  # not retried

    monkeypatch.setenv("CAI_TEST_KEY", "right-key")
    ok = make_backend(api_key_env="CAI_TEST_KEY")
    (c,) = ok.generate([conv("hello")], GenParams())
    assert c.text == "echo: hello"
    assert server.headers[-1]["authorization"] == "Bearer right-key"
    d = ok.describe()
    assert d == {"backend": "openai", "model": "stub-model", "base_url": server.base_url}
    assert "right-key" not in repr(d)


def test_unreachable_server_fails_fast_with_clear_message():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    b = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", backoff_s=0.5, max_retries=4)
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as ei:
        b.generate([conv("hello"), conv("again")], GenParams())
    assert time.perf_counter() - t0 < 2.0
    err = ei.value
    assert f"Cannot reach the OpenAI-compatible server at http://127.0.0.1:{port}/v1" in err.message
    assert err.fix is not None and "start the server" in err.fix and "base_url" in err.fix
    b.close()


def test_option_logprobs_maps_tokens(server, make_backend):
    server.top_logprobs = [("A", -0.5), (" B", -1.2), ("(A", -2.0), ("C", -3.0), (" ", -4.0)]
    b = make_backend()
    out = b.option_logprobs([conv("pick"), conv("pick again")], [["A", "B", "D"], ["B", "(C"]])
    expected_a = math.log(math.exp(-0.5) + math.exp(-2.0))
    assert out[0][0] == pytest.approx(expected_a)
    assert out[0][1] == pytest.approx(-1.2)
    assert out[0][2] is None
    assert out[1] == [pytest.approx(-1.2), pytest.approx(-3.0)]
    p = server.requests[-1]
    assert (p["max_tokens"], p["temperature"], p["logprobs"], p["top_logprobs"]) == (1, 0, True, 20)
    assert b.stats.requests == 2


def test_option_logprobs_none_when_server_returns_no_logprobs(server, make_backend):
    server.top_logprobs = None
    b = make_backend()
    out = b.option_logprobs([conv("pick")], [["A", "B"]])
    assert out == [[None, None]]
    assert server.chat_hits == 1


def test_option_logprobs_none_when_server_rejects_logprobs(server, make_backend):
    server.script(("status", 400, {"error": {"message": "logprobs are not supported"}}, {}))
    b = make_backend()
    assert b.option_logprobs([conv("pick")], [["A"]]) == [[None]]


def test_option_logprobs_needs_one_option_list_per_conversation(server, make_backend):
    b = make_backend()
    with pytest.raises(ModelError):
        b.option_logprobs([conv("a"), conv("b")], [["A"]])


# --- every GenParams field reaches the server or is reported -------------------------------------------------------
def test_each_request_gets_its_own_reproducible_seed(server, make_backend):
    b = make_backend(max_concurrency=4)
    params = GenParams(max_new_tokens=50, temperature=1.0, seed=3)
    k_samples = [conv("same prompt")] * 4
    first = [c.text for c in b.generate(k_samples, params)]
    seeds = sorted(p["seed"] for p in server.requests)
    assert len(set(seeds)) == 4 and seeds == sorted(params.seed_for(i) for i in range(4))
    assert len(set(first)) == 4  # the K samples of one prompt differ
    assert [c.text for c in b.generate(k_samples, params)] == first  # and a rerun repeats them
    other = [c.text for c in b.generate(k_samples, GenParams(max_new_tokens=50, temperature=1.0, seed=4))]
    assert not set(other) & set(first)
    explicit = b.generate([conv("x"), conv("y")], GenParams(temperature=1.0, seeds=[5, 9]))
    assert [c.text.split()[-1] for c in explicit] == ["5]", "9]"]


def _chat(server) -> list[dict]:
    """The chat requests, without the one-token probe for the penalty plugin."""
    return [p for p in server.requests if "vllm_xargs" not in p or p["vllm_xargs"].get("answer_repetition_penalty", 1) >= 1]


def test_repetition_penalty_goes_through_the_plugin_when_the_server_has_it(server, make_backend):
    server.penalty_plugin = True
    b = make_backend()
    b.generate([conv("a"), conv("b")], GenParams(repetition_penalty=1.3))
    probe = server.requests[0]
    assert probe["vllm_xargs"] == {"answer_repetition_penalty": 0.5} and probe["max_tokens"] == 1
    sent = server.requests[1:]
    assert [p["vllm_xargs"] for p in sent] == [{"answer_repetition_penalty": 1.3}] * 2
    assert all("repetition_penalty" not in p and "logit_bias" not in p for p in sent)
    assert b.describe()["repetition_penalty_route"].startswith("plugin") and b.stats.not_applied == {}


def test_without_the_plugin_the_field_is_sent_with_an_end_of_turn_offset(server, make_backend):
    # vLLM's field also penalizes the prompt's tokens, the end-of-turn token included: a logit bias gives back what
    # dividing a logit of end_of_turn_logit by the penalty takes away; the rest of the prompt is reported.
    b = make_backend()
    b.generate([conv("a"), conv("b")], GenParams(repetition_penalty=1.25))
    sent = _chat(server)
    assert [(p["repetition_penalty"], p["logit_bias"]) for p in sent] == [(1.25, {"2": 4.0})] * 2  # 20*(1-1/1.25)
    d = b.describe()
    assert d["repetition_penalty_route"].startswith("field") and d["end_of_turn_offset"]["id"] == 2
    assert "also penalizes prompt tokens" in d["not_applied"]["repetition_penalty_scope"]
    server.requests.clear()
    b.generate([conv("c")], GenParams())  # no penalty: nothing sent
    assert not {"logit_bias", "repetition_penalty", "vllm_xargs"} & set(server.requests[0])


def test_end_of_turn_offset_off_or_unresolvable_is_reported(server, make_backend):
    off = make_backend(end_of_turn="", penalty_route="field")
    off.generate([conv("a")], GenParams(repetition_penalty=1.3))
    assert "logit_bias" not in server.requests[-1] and "repetition_penalty_end_of_turn_offset" not in off.stats.not_applied
    server.token_ids = None  # a server without /tokenize
    b = make_backend(penalty_route="field")
    out = b.generate([conv("a"), conv("b")], GenParams(repetition_penalty=1.3))
    assert [c.text for c in out] == ["echo: a", "echo: b"]
    assert "logit_bias" not in server.requests[-1] and server.requests[-1]["repetition_penalty"] == 1.3
    assert "not offset" in b.describe()["not_applied"]["repetition_penalty_end_of_turn_offset"]


def test_rejected_logit_bias_falls_back_and_keeps_the_penalty(server, make_backend):
    server.reject_fields = {"logit_bias"}
    b = make_backend(max_concurrency=1, penalty_route="field")
    out = b.generate([conv("a"), conv("b")], GenParams(repetition_penalty=1.3))
    assert [c.text for c in out] == ["echo: a", "echo: b"]
    assert all(p["repetition_penalty"] == 1.3 for p in server.requests)
    assert all("logit_bias" not in p for p in server.requests[1:])
    assert "rejected `logit_bias`" in b.stats.not_applied["repetition_penalty_end_of_turn_offset"]


@pytest.mark.parametrize("status", [400, 422])
def test_rejected_repetition_penalty_falls_back_once_and_is_recorded(server, make_backend, status):
    server.reject_fields = {"repetition_penalty"}
    server.reject_status = status
    b = make_backend(max_concurrency=1, penalty_route="field")
    out = b.generate([conv("a"), conv("b"), conv("c")], GenParams(repetition_penalty=1.3))
    assert [c.text for c in out] == ["echo: a", "echo: b", "echo: c"]
    assert server.chat_hits == 4  # one rejected request, then three without the field
    assert all("repetition_penalty" not in p for p in server.requests[1:])
    why = b.stats.not_applied["repetition_penalty"]
    assert "rejected `repetition_penalty`" in why and f"HTTP {status}" in why and "Unrecognized request argument" in why
    assert b.describe()["not_applied"] == b.stats.not_applied
    assert b.stats.retries == 1


def test_rejected_prefill_fields_are_recorded_as_prefill_not_applied(server, make_backend):
    server.reject_fields = {"continue_final_message"}
    b = make_backend()
    (c,) = b.generate([conv("pick") + [{"role": "assistant", "content": "The answer is ("}]], GenParams())
    assert c.text == "echo: pick"
    assert "continue_final_message" not in server.requests[-1] and "add_generation_prompt" not in server.requests[-1]
    assert "assistant_prefill" in b.describe()["not_applied"]
    server.top_logprobs = [("A", -0.1)]
    assert b.option_logprobs([conv("pick") + [{"role": "assistant", "content": "("}]], [["A"]]) == [[pytest.approx(-0.1)]]
    assert "continue_final_message" not in server.requests[-1]
    assert server.chat_hits == 3  # the field is not tried again


# --- empty completions are failed rows, never answers ---------------------------------------------------------------
@pytest.mark.parametrize(
    "message, finish, why",
    [
        ({"role": "assistant", "content": None}, "stop", "no content"),
        ({"role": "assistant", "content": ""}, "stop", "empty string"),
        ({"role": "assistant", "content": "  \n"}, "stop", "blank"),
        ({"role": "assistant"}, "stop", "no content"),
        (None, "stop", "no content"),
        ({"role": "assistant", "content": "partial"}, "content_filter", "content_filter"),
    ],
)
def test_empty_completion_is_retried_then_a_failed_row(server, make_backend, message, finish, why):
    server.script(*[("message", message, finish)] * 3)
    b = make_backend(empty_retries=2, max_concurrency=1)
    out = b.generate([conv("bad"), conv("good")], GenParams(temperature=0.5, seed=1))
    bad, good = out
    assert bad.failed and bad.finish_reason == "error" and bad.text == ""
    assert why in bad.error and "3 attempt(s)" in bad.error
    assert good.text.startswith("echo: good") and not good.failed and good.error is None
    s = b.stats
    assert (s.empty_completions, s.failed_requests, s.retries) == (3, 1, 2)
    seeds = [p.get("seed") for p in server.requests if p["messages"][-1]["content"] == "bad"]
    assert len(set(seeds)) == 3  # each retry samples with a seed of its own


def test_empty_completion_recovers_on_retry(server, make_backend):
    server.script(("message", {"role": "assistant", "content": None}, "stop"))
    b = make_backend()
    (c,) = b.generate([conv("flaky")], GenParams())
    assert c.text == "echo: flaky" and not c.failed
    assert (b.stats.empty_completions, b.stats.failed_requests, b.stats.retries) == (1, 0, 1)


def test_response_naming_another_model_is_recorded(server, make_backend):
    server.answer_model = "stub-model-2026-01-01"
    b = make_backend()
    b.generate([conv("a"), conv("b")], GenParams())
    server.top_logprobs = [("A", -0.1)]
    b.option_logprobs([conv("c")], [["A"]])
    assert b.stats.model_mismatches == {"stub-model-2026-01-01": 3}
    assert b.stats.as_dict()["model_mismatches"] == {"stub-model-2026-01-01": 3}
