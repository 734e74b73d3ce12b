"""The guard server through the real `openai` client against uvicorn on 127.0.0.1 (fake models, one server per
module): auth, 413, 502/504, streaming, check-only, policies per request and per key, fail modes, metrics, the audit
log (exactly once per request, content redacted, rotation), and the key never reaching a log."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.constitution import load_constitution
from cai.guard.audit import AuditLog, read_records
from cai.guard.auth import KeyStore, append_key, new_record, read_key_file
from cai.guard.metrics import GuardMetrics
from cai.guard.server import BackgroundServer, GuardServerConfig, build_app
from tests.openai_stub_server import StubServer

ALICE = "cai-alice-secret-key-0123456789"
BOB = "cai-bob-secret-key-9876543210xyz"
ENV_KEY = "cai-env-secret-key-abcdefghijkl"

# markers the fake checker looks for in the reply under review, one per principle
BLOCK, REVISE, FLAG = "ZZVIOLENCEZZ", "ZZMALWAREZZ", "ZZPRIVACYZZ"
PRINCIPLES = {"no-violence-uplift": BLOCK, "no-malicious-code": REVISE, "respect-privacy": FLAG}
REVISED = "Here is a safe way to think about it instead."

POLICY = """id: {id}
constitution: default
policy: {policy}
checker: {checker}
reviser: fake:reviser
principles: [no-violence-uplift, no-malicious-code, respect-privacy]
rules:
  no-violence-uplift: {{action: block, threshold: 0.5}}
  no-malicious-code: {{action: revise, threshold: 0.5}}
  respect-privacy: {{action: flag, threshold: 0.5}}
on_checker_error: {fail}
"""


def checker_logprob(names: dict[str, str]):
    """Fake checker: (B) 'breaks the rule' is likely when the reply under review holds that principle's marker."""

    def fn(conv, option):
        text = conv[1]["content"]
        reply = text.split("reply under review (ASSISTANT):", 1)[-1] if "reply under review" in text else text
        rule = next((pid for pid, name in names.items() if f"The rule ({name})" in text), None)
        violated = rule is not None and PRINCIPLES[rule] in reply
        return -0.02 if (option == "B") == violated else -4.0

    return fn


def upstream_reply(conv):
    last = conv[-1]["content"]
    return f"Answer: {last}"


LEAD = "Sure, here is a careful and friendly answer that starts out clean and stays calm for a while."


UPSTREAM_DONE: list[float] = []  # time.monotonic() when the streaming upstream sent its last word, per request


def streaming_upstream(delay_s: float = 0.08):
    """An OpenAI-compatible upstream that streams its reply word by word: LEAD, then the last user message."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        words = f"{LEAD} {body['messages'][-1]['content']}".split(" ")

        async def events():
            for i, w in enumerate(words):
                piece = w if i == len(words) - 1 else w + " "
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
                await asyncio.sleep(delay_s)
            UPSTREAM_DONE.append(time.monotonic())
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class BrokenChecker(FakeBackend):
    def option_logprobs(self, conversations, options):
        raise ConnectionError("checker is down")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    stub = StubServer()
    stub.start()
    names = {p.id: p.name for p in load_constitution("default").principles}
    upstream = FakeBackend("fake:upstream", fn=upstream_reply)
    pool = BackendPool()
    pool.put("fake:upstream", upstream)
    pool.put("fake:checker", FakeBackend("fake:checker", logprob_fn=checker_logprob(names)))
    pool.put("fake:reviser", FakeBackend("fake:reviser", fn=lambda conv: REVISED))
    pool.put("fake:broken", BrokenChecker("fake:broken"))
    pdir = tmp / "policies"
    pdir.mkdir()
    streamer = BackgroundServer(streaming_upstream()).__enter__()
    closed = _free_port()
    specs = {
        "main": ("fake:upstream", "fake:checker", "fail_closed"),
        "strict": ("fake:upstream", "fake:broken", "fail_closed"),
        "lenient": ("fake:upstream", "fake:broken", "fail_open"),
        "down": (f"openai:stub-model@http://127.0.0.1:{closed}/v1", "fake:checker", "fail_closed"),
        "slow": ("{backend: openai, model: stub-slow, base_url: '%s', timeout_s: 0.3, max_retries: 0}" % stub.base_url,
                 "fake:checker", "fail_closed"),
        "bad": ("{backend: openai, model: stub-model, base_url: '%s', max_retries: 0}" % stub.base_url,
                "fake:checker", "fail_closed"),
        "win": (f"openai:streamer@{streamer.url}/v1", "fake:checker", "fail_closed"),
    }
    for pid, (policy, checker, fail) in specs.items():
        (pdir / f"{pid}.yaml").write_text(POLICY.format(id=pid, policy=policy, checker=checker, fail=fail))
    keys = tmp / "keys.jsonl"
    append_key(keys, new_record("alice", ALICE))
    append_key(keys, new_record("bob", BOB, policy="lenient"))
    import os

    os.environ["CAI_TEST_GUARD_KEY"] = ENV_KEY
    audit = tmp / "audit.jsonl"
    cfg = GuardServerConfig(policies=[str(pdir / "main.yaml"), str(pdir)], default_policy="main", keys_file=str(keys),
                            key_env="CAI_TEST_GUARD_KEY", audit_path=str(audit), max_body_bytes=4096,
                            max_prompt_tokens=300, max_completion_tokens=512, workers=4, stream_chunk_chars=8,
                            audit_fsync="always", window_chars=24)
    with pytest.raises(Exception, match="Two policies have the id 'main'"):
        build_app(cfg, pool=pool)
    cfg = cfg.model_copy(update={"policies": [str(pdir)]})
    app, service = build_app(cfg, pool=pool)
    with BackgroundServer(app) as srv:
        yield {"url": srv.url, "audit": audit, "app": app, "stub": stub, "upstream": upstream, "service": service,
               "keys": keys}
    stub.stop()
    streamer.__exit__(None, None, None)


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def client(env, key=ALICE, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=env["url"] + "/v1", api_key=key, max_retries=0, timeout=30, **kw)


def ask(text: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def audit_by_id(env) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in read_records(env["audit"]):
        out.setdefault(r["request_id"], []).append(r)
    return out


# --- units -------------------------------------------------------------------------------------------------------
def test_key_file_stores_only_salted_hashes(tmp_path):
    f = tmp_path / "k.jsonl"
    append_key(f, new_record("a", "cai-0123456789abcdef"))
    append_key(f, new_record("b", "cai-0123456789abcdef"))
    text = f.read_text()
    assert "0123456789abcdef" not in text
    a, b = read_key_file(f)
    assert a.salt != b.salt and a.sha256 != b.sha256  # same key, different salts
    store = KeyStore([a, b])
    assert store.lookup("cai-0123456789abcdef").id == "b"  # the last match; every record is checked
    assert store.lookup("cai-wrong") is None and store.lookup(None) is None
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    f.write_text('{"id": "x", "salt": "00", "sha256": "plain-key"}\n')
    with pytest.raises(Exception, match=r"k.jsonl:1: field sha256 must be 64 hex digits"):
        read_key_file(f)


def test_audit_log_rotates_and_keeps_every_record_once(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl", max_bytes=2000, backups=50, fsync="never")
    threads = [threading.Thread(target=lambda k=k: [log.write({"request_id": f"{k}-{i}", "pad": "x" * 50})
                                                   for i in range(40)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    files = log.files()
    assert len(files) > 5 and all(p.stat().st_size <= 2000 for p in files)
    ids = [r["request_id"] for r in read_records(log)]
    assert len(ids) == 160 and len(set(ids)) == 160


def test_audit_log_records_a_request_that_ends_after_close(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    log.write({"request_id": "a"})
    log.close()
    log.write({"request_id": "late"})  # a request cancelled by shutdown finishes after the log was closed
    assert [r["request_id"] for r in read_records(log)] == ["a", "late"]


def test_metrics_text_format():
    m = GuardMetrics()
    m.requests.inc("chat", "200")
    m.latency.observe(0.02, "check")
    m.latency.observe(7.0, "check")
    text = m.render()
    assert 'cai_guard_requests_total{endpoint="chat",status="200"} 1' in text
    assert 'cai_guard_phase_latency_seconds_bucket{phase="check",le="0.025"} 1' in text
    assert 'cai_guard_phase_latency_seconds_bucket{phase="check",le="+Inf"} 2' in text
    assert 'cai_guard_phase_latency_seconds_count{phase="check"} 2' in text
    assert "# TYPE cai_guard_phase_latency_seconds histogram" in text


def test_server_config_needs_a_policy_and_a_key_source():
    with pytest.raises(ValueError, match="no policy given"):
        GuardServerConfig()
    with pytest.raises(ValueError, match="no API key source"):
        GuardServerConfig(policies=["p.yaml"], key_env=None)


# --- through the openai client ------------------------------------------------------------------------------------
def test_chat_passes_a_clean_answer_with_guardrails(env):
    raw = client(env).chat.completions.with_raw_response.create(model="main", messages=ask("How do I boil an egg?"),
                                                                temperature=0.3)
    resp = raw.parse()
    assert resp.choices[0].message.content == "Answer: How do I boil an egg?"
    assert resp.choices[0].finish_reason == "stop"
    g = resp.guardrails
    assert g["action"] == "pass" and g["policy_id"] == "main" and len(g["policy_hash"]) == 16
    assert {v["principle_id"] for v in g["verdicts"]} == set(PRINCIPLES) and g["flagged"] == []
    assert {"generate", "check", "guard", "total"} <= set(g["latency_ms"]) and g["stream_mode"] is None
    assert g["not_applied"] == {}  # temperature reached the policy model
    assert env["upstream"].params[-1].temperature == 0.3
    assert resp.usage.completion_tokens > 0 and resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert raw.headers["x-request-id"] == resp.id
    rec = audit_by_id(env)[resp.id]
    assert len(rec) == 1 and rec[0]["status"] == 200 and rec[0]["key_id"] == "alice"
    assert rec[0]["policy_hash"] == g["policy_hash"] and rec[0]["upstream"] == "fake"
    # content is redacted by default: lengths and digests only
    assert "boil" not in json.dumps(rec[0]) and rec[0]["messages"][1]["chars"] == len("How do I boil an egg?")


def test_sampling_fields_reach_the_policy_model_and_unknown_ones_are_named(env):
    resp = client(env).chat.completions.create(
        model="main", messages=ask("List three fruits please"), temperature=0.9, top_p=0.5, seed=7, stop=["three"],
        max_tokens=40, frequency_penalty=0.5)
    p = env["upstream"].params[-1]
    assert (p.temperature, p.top_p, p.seed, p.stop, p.max_new_tokens) == (0.9, 0.5, 7, ["three"], 40)
    assert resp.choices[0].message.content.rstrip() == "Answer: List"  # cut before the stop string
    assert resp.guardrails["not_applied"] == {"frequency_penalty": "the policy's generation settings apply"}


def test_a_held_stream_ends_with_usage_when_asked(env):
    chunks = list(client(env).chat.completions.create(model="main", messages=ask("How do I boil an egg?"), stream=True,
                                                      stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == "Answer: How do I boil an egg?"
    plain = list(client(env).chat.completions.create(model="main", messages=ask("How do I boil an egg?"), stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"


def test_block_revise_and_flag_actions(env):
    c = client(env)
    blocked = c.chat.completions.create(model="main", messages=ask(f"tell me {BLOCK}"))
    assert blocked.choices[0].finish_reason == "content_filter"
    assert blocked.guardrails["action"] == "blocked" and blocked.guardrails["flagged"] == ["no-violence-uplift"]
    assert BLOCK not in blocked.choices[0].message.content
    revised = c.chat.completions.create(model="main", messages=ask(f"write {REVISE}"))
    assert revised.choices[0].message.content == REVISED and revised.guardrails["action"] == "revised"
    assert revised.choices[0].finish_reason == "stop"
    flagged = c.chat.completions.create(model="main", messages=ask(f"about {FLAG}"))
    assert flagged.guardrails["action"] == "flagged" and FLAG in flagged.choices[0].message.content
    recs = audit_by_id(env)
    assert [recs[r.id][0]["action"] for r in (blocked, revised, flagged)] == ["blocked", "revised", "flagged"]
    assert recs[blocked.id][0]["finish_reason"] == "content_filter"


def test_the_whole_conversation_reaches_the_upstream(env):
    msgs = [{"role": "user", "content": "first turn"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "turn"}]}]
    resp = client(env).chat.completions.create(model="main", messages=msgs)
    assert resp.choices[0].message.content == "Answer: second\nturn"
    assert env["upstream"].calls[-1][0][0] == {"role": "user", "content": "first turn"}


def test_streaming_holds_the_text_until_checked(env):
    c = client(env)
    stream = c.chat.completions.create(model="main", messages=ask("How do I boil an egg?"), stream=True)
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text == "Answer: How do I boil an egg?"
    assert len([ch for ch in chunks if ch.choices[0].delta.content]) > 2  # sent in pieces, not one blob
    assert chunks[0].guardrails["stream_mode"] == "hold" and chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].guardrails["action"] == "pass"
    assert chunks[-1].guardrails["stream_mode"] == "hold"
    assert len(audit_by_id(env)[chunks[0].id]) == 1
    blocked = list(c.chat.completions.create(model="main", messages=ask(f"tell me {BLOCK}"), stream=True))
    assert BLOCK not in "".join(ch.choices[0].delta.content or "" for ch in blocked)
    assert blocked[-1].choices[0].finish_reason == "content_filter" and blocked[-1].guardrails["action"] == "blocked"
    # the raw wire format ends with [DONE]
    with httpx.stream("POST", env["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {ALICE}"},
                      json={"model": "main", "messages": ask("hi"), "stream": True}) as r:
        body = r.read().decode()
    assert r.headers["content-type"].startswith("text/event-stream")
    assert body.rstrip().endswith("data: [DONE]") and body.count("data: ") >= 4


def test_window_streaming_checks_each_window_before_sending_it(env):
    c = client(env)
    window = {"guardrails": {"stream_mode": "window"}}
    first, chunks = None, []
    UPSTREAM_DONE.clear()
    for ch in c.chat.completions.create(model="win", messages=ask("tell me about eggs"), stream=True, extra_body=window):
        if ch.choices[0].delta.content and first is None:
            first = time.monotonic()
        chunks.append(ch)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == f"{LEAD} tell me about eggs"
    g = chunks[-1].guardrails
    assert chunks[0].guardrails["stream_mode"] == "window" and g["stream_mode"] == "window"
    assert g["action"] == "pass" and chunks[-1].choices[0].finish_reason == "stop" and g["windows_checked"] >= 4
    assert first < UPSTREAM_DONE[0], (first, UPSTREAM_DONE)  # the first words left before the upstream had finished
    (rec,) = audit_by_id(env)[chunks[0].id]
    assert rec["windows_checked"] == g["windows_checked"] and rec["stream_mode"] == "window" and rec["status"] == 200
    # a late violation: the clean windows before it were sent, the flagged one never is
    blocked = list(c.chat.completions.create(model="win", messages=ask(f"now {BLOCK} please"), stream=True,
                                             extra_body=window))
    text = "".join(ch.choices[0].delta.content or "" for ch in blocked)
    assert BLOCK not in text and text and LEAD.startswith(text)
    assert blocked[-1].choices[0].finish_reason == "content_filter" and blocked[-1].guardrails["action"] == "blocked"
    assert audit_by_id(env)[blocked[0].id][0]["action"] == "blocked"
    # a model that cannot stream is held instead, and says so; an upstream that is down still gets a 502 status
    held = list(c.chat.completions.create(model="main", messages=ask("hi"), stream=True, extra_body=window))
    assert held[-1].guardrails["stream_mode"] == "hold"
    with pytest.raises(openai.APIStatusError) as e:
        list(c.chat.completions.create(model="down", messages=ask("hi"), stream=True, extra_body=window))
    assert e.value.status_code == 502


def test_window_stream_dropped_by_the_caller_is_still_audited_once(env):
    body = {"model": "win", "stream": True, "messages": ask("a long question " * 5),
            "guardrails": {"stream_mode": "window"}}
    with httpx.stream("POST", env["url"] + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {ALICE}"}) as r:
        rid = r.headers["x-request-id"]
        next(r.iter_lines())  # read the first event, then hang up
    deadline = time.monotonic() + 10
    while rid not in audit_by_id(env) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    (rec,) = audit_by_id(env)[rid]
    assert rec["stream_mode"] == "window" and "disconnected" in rec["error"]


def test_auth_401_and_the_key_never_logged(env, caplog):
    caplog.set_level(logging.DEBUG)
    for key in ("cai-not-a-real-key-000000", ""):
        with pytest.raises(openai.AuthenticationError) as e:
            client(env, key=key or "x").chat.completions.create(model="main", messages=ask("hi"))
        assert e.value.status_code == 401
        rid = e.value.response.headers["x-request-id"]
        rec = audit_by_id(env)[rid]
        assert len(rec) == 1 and rec[0]["status"] == 401 and rec[0]["key_id"] is None
    r = httpx.post(env["url"] + "/v1/chat/completions", json={"messages": ask("hi")})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(env["url"] + "/v1/models").status_code == 401
    # bob's key has a default policy; the env key works too
    resp = client(env, key=BOB).chat.completions.create(model="x", messages=ask("hi"))
    assert resp.guardrails["policy_id"] == "lenient"
    resp = client(env, key=ENV_KEY).chat.completions.create(model="x", messages=ask("hi"))
    assert resp.guardrails["policy_id"] == "main" and audit_by_id(env)[resp.id][0]["key_id"] == "env"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "request " in logged  # the per-request log line was captured
    everything = logged + env["audit"].read_text()
    for secret in (ALICE, BOB, ENV_KEY):
        assert secret not in everything


def test_policy_per_request_header_and_model(env):
    c = client(env)
    r1 = c.chat.completions.create(model="whatever", messages=ask("hi"), extra_body={"guardrails": {"policy": "lenient"}})
    r2 = c.chat.completions.create(model="whatever", messages=ask("hi"), extra_headers={"X-Guard-Policy": "strict"})
    r3 = c.chat.completions.create(model="lenient", messages=ask("hi"))
    r4 = c.chat.completions.create(model="whatever", messages=ask("hi"))
    assert [r.guardrails["policy_id"] for r in (r1, r2, r3, r4)] == ["lenient", "strict", "lenient", "main"]
    with pytest.raises(openai.BadRequestError, match="unknown policy 'nope'"):
        c.chat.completions.create(model="x", messages=ask("hi"), extra_body={"guardrails": {"policy": "nope"}})
    models = {m.id for m in c.models.list()}
    assert models == {"main", "strict", "lenient", "down", "slow", "bad", "win"}


def test_checker_down_fails_closed_or_open_per_policy(env):
    c = client(env)
    closed = c.chat.completions.create(model="strict", messages=ask("How do I boil an egg?"))
    assert closed.choices[0].finish_reason == "content_filter" and closed.guardrails["action"] == "blocked"
    assert "checker is down" in closed.guardrails["checker_error"] and closed.guardrails["fail_mode"] == "fail_closed"
    opened = c.chat.completions.create(model="lenient", messages=ask("How do I boil an egg?"))
    assert opened.guardrails["action"] == "pass" and opened.choices[0].message.content == "Answer: How do I boil an egg?"
    assert opened.guardrails["fail_mode"] == "fail_open"
    assert audit_by_id(env)[opened.id][0]["checker_error"]


def test_upstream_errors_map_to_502_and_504(env):
    c = client(env)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="down", messages=ask("hi"))
    assert e.value.status_code == 502 and e.value.body["message"] == "upstream model failed"
    assert "127.0.0.1" not in json.dumps(e.value.body)  # short: no internal address
    rid = e.value.response.headers["x-request-id"]
    rec = audit_by_id(env)[rid][0]
    assert rec["status"] == 502 and "Cannot reach" in rec["error_detail"]
    env["stub"].script(("status", 500, "boom", {}))
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="bad", messages=ask("hi"))
    assert e.value.status_code == 502
    env["stub"].script(("sleep", 1.0))
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="slow", messages=ask("hi"))
    assert e.value.status_code == 504 and e.value.body["message"] == "upstream model timed out"


def test_size_and_token_limits_413(env):
    c = client(env)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="main", messages=ask("word " * 2000))
    assert e.value.status_code == 413 and "over the limit of 4096 bytes" in e.value.body["message"]
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="main", messages=ask("x" * 1500))
    assert e.value.status_code == 413 and "tokens is over the limit of 300" in e.value.body["message"]
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="main", messages=ask("hi"), max_tokens=100000)
    assert e.value.status_code == 413 and "max_tokens 100000" in e.value.body["message"]
    rid = e.value.response.headers["x-request-id"]
    assert audit_by_id(env)[rid][0]["status"] == 413
    r = httpx.post(env["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {ALICE}"},
                   content=b'{"messages": "not a list"}')
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(env["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {ALICE}"},
                   content=b"[" * 2000 + b"]" * 2000)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]


def test_check_only_endpoint(env):
    url, h = env["url"] + "/v1/guard/check", {"Authorization": f"Bearer {ALICE}"}
    n_calls = len(env["upstream"].calls)
    r = httpx.post(url, headers=h, json={"messages": ask("write code"), "answer": f"sure: {REVISE}"})
    body = r.json()
    assert r.status_code == 200 and body["decision"] == "revise" and body["flagged"] == ["no-malicious-code"]
    assert body["object"] == "guard.check" and len(body["verdicts"]) == 3
    r = httpx.post(url, headers=h, json={"messages": ask("hello"), "answer": "hi there", "policy": "main"})
    assert r.json()["decision"] == "pass"
    r = httpx.post(url, headers={**h, "X-Guard-Policy": "strict"}, json={"messages": ask("hello")})
    assert r.json()["decision"] == "block" and r.json()["checker_error"]
    assert len(env["upstream"].calls) == n_calls  # check-only never generates
    assert audit_by_id(env)[body["id"]][0]["endpoint"] == "check"
    assert httpx.post(url, json={"messages": ask("hello")}).status_code == 401


def test_concurrent_checks_are_batched(env):
    """Check requests that wait while a check runs go to the checker together, in one check_many call."""
    guard = env["service"].policies["main"].guard
    real = guard.check_many

    def slow_check_many(items):
        time.sleep(0.3)  # long enough for the other requests to queue behind the first
        return real(items)

    guard.check_many = slow_check_many
    try:
        env["service"].check_batches.clear()
        url, h = env["url"] + "/v1/guard/check", {"Authorization": f"Bearer {ALICE}"}
        out: dict[int, dict] = {}

        def one(i):
            answer = f"answer {i} {REVISE if i % 2 else ''}"
            out[i] = httpx.post(url, headers=h, json={"messages": ask(f"q{i}"), "answer": answer}, timeout=30).json()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del guard.check_many
    batches = env["service"].check_batches
    assert sum(batches) == 8 and len(batches) < 8 and max(batches) > 1, batches
    # each request still gets its own verdicts
    assert [out[i]["decision"] for i in range(8)] == ["pass", "revise"] * 4


def test_healthz_and_metrics(env):
    h = httpx.get(env["url"] + "/healthz").json()
    assert h["status"] == "ok" and h["default_policy"] == "main" and set(h["policies"]) >= {"main", "strict"}
    client(env).chat.completions.create(model="main", messages=ask(f"tell me {BLOCK}"))
    text = httpx.get(env["url"] + "/metrics").text
    assert 'cai_guard_actions_total{action="blocked",policy="main"}' in text or \
        'cai_guard_actions_total{policy="main",action="blocked"}' in text
    assert 'cai_guard_verdicts_total{policy="main",principle="no-violence-uplift",violated="true"}' in text
    assert 'cai_guard_requests_total{endpoint="chat",status="200"}' in text
    assert 'cai_guard_phase_latency_seconds_bucket{phase="generate",le="+Inf"}' in text
    assert 'cai_guard_phase_latency_seconds_count{phase="check"}' in text


def test_cors_is_off_by_default(env):
    r = httpx.options(env["url"] + "/v1/chat/completions",
                      headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_every_request_in_the_audit_log_exactly_once(env):
    """Concurrent mixed requests (ok, blocked, 401, 413, 502): one record each, none missing, none twice."""
    ids: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        kind = i % 5
        c = client(env, key=ALICE if kind != 2 else "cai-wrong-key-0000000000")
        try:
            if kind == 3:
                r = c.chat.completions.create(model="main", messages=ask("y" * 1500))
            elif kind == 4:
                r = c.chat.completions.create(model="down", messages=ask("hi"))
            else:
                r = c.chat.completions.create(model="main", messages=ask(f"q{i} {BLOCK if kind == 1 else ''}"))
            rid = r.id
        except openai.APIStatusError as e:
            rid = e.response.headers["x-request-id"]
        with lock:
            ids.append(rid)

    before = set(audit_by_id(env))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = audit_by_id(env)
    new = set(recs) - before
    assert len(ids) == 25 and set(ids) == new
    assert all(len(recs[i]) == 1 for i in ids)
    assert sorted({recs[i][0]["status"] for i in ids}) == [200, 401, 413, 502]


@pytest.mark.realmodel
def test_embedded_model_behind_the_server(tmp_path):
    """One request through the server to the embedded SmolLM2 as both answering model and checker."""
    (tmp_path / "p.yaml").write_text("id: smoke\npolicy: embedded\nchecker: embedded\n"
                                     "principles: [no-violence-uplift, answer-benign-requests]\nmax_new_tokens: 16\n")
    append_key(tmp_path / "k.jsonl", new_record("smoke", ALICE))
    cfg = GuardServerConfig(policies=[str(tmp_path / "p.yaml")], keys_file=str(tmp_path / "k.jsonl"), key_env=None,
                            audit_path=str(tmp_path / "audit.jsonl"))
    app, _ = build_app(cfg)
    with BackgroundServer(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key=ALICE, max_retries=0, timeout=300)
        r = c.chat.completions.create(model="smoke", messages=[{"role": "user", "content": "Name a primary colour."}])
    g = r.guardrails
    assert r.choices[0].message.content.strip()
    assert g["action"] in ("pass", "revised", "blocked", "flagged") and g["upstream"] == "embedded"
    assert [v["principle_id"] for v in g["verdicts"]] == ["no-violence-uplift", "answer-benign-requests"]
    assert all(v["method"] == "logprob" and 0.0 <= v["score"] <= 1.0 for v in g["verdicts"])
    assert g["latency_ms"]["generate"] > 0 and g["latency_ms"]["check"] > 0
    (rec,) = read_records(tmp_path / "audit.jsonl")
    assert rec["request_id"] == r.id and rec["status"] == 200 and rec["upstream"] == "embedded"


# --- the command line ---------------------------------------------------------------------------------------------
def test_cli_keys_add_and_list(runner, tmp_path):
    from cai.cli.main import app

    f = tmp_path / "keys.jsonl"
    r = runner.invoke(app, ["guard", "keys", "add", "--file", str(f), "--id", "carol", "--policy", "main"])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("cai-") and key not in f.read_text()
    assert KeyStore(read_key_file(f)).lookup(key).policy == "main"
    r = runner.invoke(app, ["guard", "keys", "add", "--file", str(f), "--id", "carol"])
    assert r.exit_code == 2 and "already in" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["guard", "keys", "list", "--file", str(f)])
    assert r.exit_code == 0 and "carol\tmain" in r.stdout


def test_cli_check_one_conversation(runner, tmp_path):
    from cai.cli.main import app

    (tmp_path / "p.yaml").write_text("id: cli\npolicy: fake\nchecker: fake\nprinciples: [no-violence-uplift]\n")
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"messages": ask("hello"), "answer": "hi"}))
    r = runner.invoke(app, ["guard", "check", str(conv), "--policy", str(tmp_path / "p.yaml")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["policy_id"] == "cli" and [v["principle_id"] for v in res["verdicts"]] == ["no-violence-uplift"]
    r = runner.invoke(app, ["guard", "check", str(conv), "--policy", str(tmp_path / "p.yaml"), "--apply"])
    assert r.exit_code == 0 and json.loads(r.stdout)["outcome"] in ("pass", "revised", "blocked", "flagged")
    conv.write_text('[{"role": "user", "content": "hi"},\n oops]')
    r = runner.invoke(app, ["guard", "check", str(conv), "--policy", str(tmp_path / "p.yaml")])
    assert r.exit_code == 2 and "conv.json:2: not valid JSON" in r.output and "Traceback" not in r.output


def test_cli_serve_starts_with_one_command(cai_exe, subprocess_env, tmp_path):
    """`cai guard serve --policy FILE` with the key in CAI_GUARD_API_KEY: serves, audits, stops cleanly on Ctrl-C."""
    import signal
    import subprocess

    (tmp_path / "p.yaml").write_text("id: cli\npolicy: fake\nchecker: fake\nprinciples: [no-violence-uplift]\n")
    port = _free_port()
    env = {**subprocess_env, "CAI_GUARD_API_KEY": ALICE}
    proc = subprocess.Popen([str(cai_exe), "guard", "serve", "--policy", "p.yaml", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=ALICE, max_retries=0)
        r = c.chat.completions.create(model="cli", messages=ask("hello"))
        assert r.guardrails["policy_id"] == "cli"
        httpx.get(f"http://127.0.0.1:{port}/healthz?api_key={ALICE}")  # a key put in a URL by mistake
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    (rec,) = read_records(tmp_path / "guard-audit.jsonl")
    assert rec["request_id"] == r.id and rec["key_id"] == "env"
    assert "POST /v1/chat/completions" in output and ALICE not in output


def test_cli_serve_refuses_bad_settings(runner, tmp_path, monkeypatch):
    from cai.cli.main import app

    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["guard", "serve", "--policy", "missing.yaml"])
    assert r.exit_code == 2 and "missing.yaml does not exist" in r.output and "Traceback" not in r.output
    (tmp_path / "p.yaml").write_text("id: cli\npolicy: fake\nchecker: fake\nthreshold: 2\n")
    r = runner.invoke(app, ["guard", "serve", "--policy", "p.yaml", "--no-auth"])
    assert r.exit_code == 2 and "p.yaml:4: threshold: unknown setting" in r.output
    (tmp_path / "p.yaml").write_text("id: cli\npolicy: fake\nchecker: fake\n")
    r = runner.invoke(app, ["guard", "serve", "--policy", "p.yaml", "--key-env", "CAI_TEST_NO_SUCH_VAR"])
    assert r.exit_code == 2 and "No API key is configured" in r.output
