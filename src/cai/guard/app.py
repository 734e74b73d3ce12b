"""The guard server's HTTP side: an OpenAI-compatible API in front of guarded models (FastAPI).

Endpoints: ``POST /v1/chat/completions`` (plain and SSE streaming), ``GET /v1/models``, ``POST /v1/guard/check``,
``GET /healthz``, ``GET /metrics``. Every reply of a guarded endpoint carries a ``guardrails`` object; a blocked
answer ends with ``finish_reason: "content_filter"``. Streaming holds the answer until it is checked, or sends a
streaming upstream's text window by window, each after a check (:mod:`cai.guard.streaming`); no unchecked text ever
leaves the server, and ``guardrails.stream_mode`` says which mode ran, in the first and the last chunk.

Each request to a guarded endpoint writes exactly one audit record, whatever its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from cai.backends.spec import ModelSpec
from cai.errors import UserInputError
from cai.guard.audit import AuditLog
from cai.guard.auth import KeyStore, bearer_key
from cai.guard.metrics import GuardMetrics
from cai.guard.server import GuardService, Policy, UpstreamError
from cai.guard.streaming import ClosingStreamingResponse, WindowStream, hold_chunks, upstream_deltas
from cai.guard.types import CheckResult, GuardResult
from cai.guard.wire import ApiError, ChatRequest, CheckRequest, estimate_tokens, parse_body, plain_messages

log = logging.getLogger("cai.guard.server")

POLICY_HEADER = "x-guard-policy"
#: Request fields the server acts on; any other field given is listed in ``guardrails.not_applied``.
HANDLED_FIELDS = {"model", "messages", "stream", "n", "guardrails", "user", "max_tokens", "max_completion_tokens",
                  "temperature", "top_p", "seed", "stop", "stream_options"}
_STRENGTH = {"block": 3, "revise": 2, "flag": 1}


# --- the app -------------------------------------------------------------------------------------------------------
class _Ctx:
    """What one request's audit record collects as it goes."""

    def __init__(self, endpoint: str):
        self.t0 = time.perf_counter()
        self.record: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request_id": ("chatcmpl-" if endpoint == "chat" else "guardchk-") + uuid.uuid4().hex[:24],
            "endpoint": endpoint,
            "key_id": None,
            "status": 500,
        }
        self.latency: dict[str, float] = {}
        self.not_applied: dict[str, str] = {}
        #: Set when a window stream writes the record itself when it ends.
        self.deferred = False

    @property
    def id(self) -> str:
        return self.record["request_id"]


def create_app(service: GuardService, *, keys: KeyStore | None, audit: AuditLog, metrics: GuardMetrics | None = None) -> FastAPI:
    """The FastAPI app. ``keys=None`` accepts every request (``--no-auth``)."""
    cfg = service.config
    metrics = metrics or GuardMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        audit.close()
        service.close()

    app = FastAPI(title="cai guard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.audit, app.state.metrics = service, audit, metrics
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", POLICY_HEADER])

    def authenticate(request: Request, ctx: _Ctx) -> str | None:
        """The caller's default policy; raises 401 for a missing or unknown key. The key itself is never kept."""
        if keys is None:
            ctx.record["key_id"] = "anonymous"
            return None
        rec = keys.lookup(bearer_key(request.headers.get("authorization")))
        if rec is None:
            raise ApiError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'", "authentication_error",
                           "invalid_api_key")
        ctx.record["key_id"] = rec.id
        return rec.policy

    async def read_body(request: Request) -> bytes:
        limit = cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes",
                           code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def pick_policy(request: Request, body: Any, key_default: str | None, ctx: _Ctx) -> Policy:
        named = body.guardrails.policy if body.guardrails else None
        named = named or getattr(body, "policy", None) or request.headers.get(POLICY_HEADER)
        if not named and body.model in service.policies:
            named = body.model
        policy = service.resolve(named, key_default)
        if policy is None:
            raise ApiError(400, f"unknown policy '{named}'; loaded: {', '.join(service.policies)}", code="unknown_policy")
        ctx.record.update(policy_id=policy.id, policy_hash=policy.hash, upstream=policy.upstream)
        return policy

    def check_tokens(messages: list[dict], max_tokens: int | None) -> None:
        est = sum(estimate_tokens(m["content"]) for m in messages)
        if est > cfg.max_prompt_tokens:
            raise ApiError(413, f"conversation of about {est} tokens is over the limit of {cfg.max_prompt_tokens}",
                           code="context_length_exceeded")
        if max_tokens is not None and max_tokens > cfg.max_completion_tokens:
            raise ApiError(413, f"max_tokens {max_tokens} is over the limit of {cfg.max_completion_tokens}",
                           code="max_tokens_exceeded")

    def finish(ctx: _Ctx, status: int, response: Any) -> Any:
        ctx.record["status"] = status
        return response

    def write_audit(ctx: _Ctx) -> None:
        total = time.perf_counter() - ctx.t0
        ctx.latency["total"] = round(total * 1000, 3)
        ctx.record["latency_ms"] = ctx.latency
        metrics.requests.inc(ctx.record["endpoint"], str(ctx.record["status"]))
        metrics.latency.observe(total, "total")
        try:
            audit.write(ctx.record)
        except Exception:  # the reply is already decided; a failing audit disk must be loud in the server log
            log.exception("audit log write failed for request %s", ctx.id)
        log.info("request %s key=%s policy=%s status=%s action=%s total_ms=%.1f", ctx.id, ctx.record.get("key_id"),
                 ctx.record.get("policy_id"), ctx.record["status"], ctx.record.get("action"), ctx.latency["total"])

    async def guarded(endpoint: str, request: Request, handler) -> Any:
        ctx = _Ctx(endpoint)
        metrics.in_flight.inc()
        try:
            return await handler(request, ctx)
        except ApiError as e:
            ctx.record.update(status=e.status, error=e.message)
            return e.response(ctx.id)
        except UserInputError as e:
            ctx.record.update(status=400, error=e.message)
            return ApiError(400, e.render()).response(ctx.id)
        except UpstreamError as e:
            metrics.upstream_errors.inc(e.kind)
            ctx.record.update(status=e.status, error=e.message, error_detail=e.detail)
            log.warning("request %s: %s: %s", ctx.id, e.message, e.detail)
            return ApiError(e.status, e.message, "upstream_error", "upstream_timeout" if e.status == 504 else "upstream_failed").response(ctx.id)
        except asyncio.CancelledError:  # the server is shutting down or the caller went away: recorded, then re-raised
            ctx.record.update(status=499, error="cancelled before a reply was sent (shutdown or the caller went away)")
            raise
        except Exception as e:  # noqa: BLE001 - the caller gets a short 500, the log the traceback
            log.exception("request %s failed", ctx.id)
            ctx.record.update(status=500, error=f"internal error ({type(e).__name__})")
            return ApiError(500, "internal error in the guard server", "server_error").response(ctx.id)
        finally:
            metrics.in_flight.dec()
            if not ctx.deferred:
                write_audit(ctx)

    # --- the check and the answer ----------------------------------------------------------------------------------
    def fail_result(policy: Policy, messages: list[dict], answer: str, error: str) -> GuardResult:
        """The result when the guard itself raised: fail closed (block) or open (the unchecked answer) per policy."""
        check = CheckResult(verdicts=[], error=error)
        closed = policy.fail_mode != "fail_open"
        refusal = getattr(getattr(policy.guard, "config", None), "refusal_message", "I can't help with that request.")
        return GuardResult(outcome="blocked" if closed else "pass", answer=refusal if closed else answer, original=answer,
                           check=check, policy_id=policy.id, policy_hash=policy.hash,
                           trace=[{"step": "check", "error": error, "fail_mode": policy.fail_mode}])

    def note_check(ctx: _Ctx, policy: Policy, check: CheckResult) -> None:
        for v in check.verdicts:
            metrics.verdicts.inc(policy.id, v.principle_id, str(bool(v.violated)).lower())
        if check.error:
            metrics.checker_errors.inc(policy.id, policy.fail_mode)
        for phase, ms in (check.latency_ms or {}).items():
            ctx.latency.setdefault(phase, round(ms, 3))
        ctx.record.update(
            verdicts=[_verdict_record(v, audit.include_content) for v in check.verdicts],
            flagged=[v.principle_id for v in check.flagged],
            decided_by=check.decided_by,
            checker_error=check.error,
            fail_mode=policy.fail_mode if check.error else None,
        )

    def guardrails(ctx: _Ctx, policy: Policy, result: GuardResult, stream_mode: str | None) -> dict:
        return {
            "request_id": ctx.id,
            "policy_id": policy.id,
            "policy_hash": policy.hash,
            "action": result.outcome,
            "flagged": [v.principle_id for v in result.check.flagged],
            "verdicts": [asdict(v) for v in result.check.verdicts],
            "decided_by": result.check.decided_by,
            "checker_error": result.check.error,
            "fail_mode": policy.fail_mode if result.check.error else None,
            "model_calls": result.model_calls,
            "latency_ms": dict(ctx.latency),
            "stream_mode": stream_mode,
            "upstream": policy.upstream,
            "not_applied": ctx.not_applied,
        }

    async def chat(request: Request, ctx: _Ctx) -> Any:
        key_default = authenticate(request, ctx)
        body = parse_body(ChatRequest, await read_body(request))
        policy = pick_policy(request, body, key_default, ctx)
        if body.n != 1:
            raise ApiError(400, "n must be 1 (the guard checks one answer per request)")
        messages = plain_messages(body.messages)
        max_tokens = body.max_completion_tokens or body.max_tokens
        check_tokens(messages, max_tokens)
        ctx.record.update(stream=body.stream, **audit.content(messages=messages))
        generate_kwargs = {"max_new_tokens": max_tokens} if max_tokens and _accepts(policy.guard.generate, "max_new_tokens") else {}
        given = set(body.model_fields_set) | set(body.model_extra or {})
        not_applied = sorted(given - HANDLED_FIELDS)
        if max_tokens and not generate_kwargs:
            not_applied.append("max_tokens")
        for name, value in body.sampling().items():  # temperature, top_p, seed, stop: this answer's sampling
            if _accepts(policy.guard.generate, name):
                generate_kwargs[name] = value
            else:
                not_applied.append(name)
        ctx.not_applied = {f: "the policy's generation settings apply" for f in not_applied}
        mode = (body.guardrails and body.guardrails.stream_mode) or cfg.stream_mode
        if body.stream and mode == "window":
            spec = getattr(getattr(policy.guard, "config", None), "policy", None)
            if isinstance(spec, ModelSpec) and spec.backend == "openai":
                if body.stream_options and body.stream_options.include_usage:
                    ctx.not_applied["stream_options"] = "window mode does not count the upstream's tokens"
                return await window_reply(ctx, policy, messages, spec, body.model or policy.id, generate_kwargs)
            ctx.record["stream_note"] = "window mode needs a streaming upstream (openai:); the answer was held"

        make = getattr(policy.guard, "generate_completion", None) or policy.guard.generate
        comp, gen_s = await service.run(lambda: make(messages, **generate_kwargs), phase="generate")
        answer = comp if isinstance(comp, str) else getattr(comp, "text", None)
        usage = None if isinstance(comp, str) else _usage(comp)
        ctx.latency["generate"] = round(gen_s * 1000, 3)
        metrics.latency.observe(gen_s, "generate")
        if not isinstance(answer, str) or not answer.strip():
            raise UpstreamError(502, "upstream model failed", "empty answer")
        try:
            result, guard_s = await service.run(lambda: policy.guard.apply(messages, answer=answer), phase="check")
        except Exception as e:  # noqa: BLE001 - the checker (or reviser) is down: fail open or closed per policy
            detail = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"[:300]
            log.warning("request %s: guard failed (%s), %s", ctx.id, detail, policy.fail_mode)
            result, guard_s = fail_result(policy, messages, answer, detail), 0.0
        for phase, ms in (result.latency_ms or {}).items():
            if phase not in ("generate", "total"):
                ctx.latency[phase] = round(ms, 3)
                metrics.latency.observe(ms / 1000, phase)
        ctx.latency["guard"] = round(guard_s * 1000, 3)
        metrics.latency.observe(guard_s, "guard")
        note_check(ctx, policy, result.check)
        metrics.actions.inc(policy.id, result.outcome)
        finish_reason = "content_filter" if result.outcome == "blocked" else "stop"
        ctx.record.update(action=result.outcome, model_calls=result.model_calls, finish_reason=finish_reason,
                          **{("final_" + k): v for k, v in audit.content(answer=result.answer).items()})
        ctx.record["original"] = audit.content(answer=result.original)["answer"]
        model = body.model or policy.id
        created = int(time.time())
        headers = {"x-request-id": ctx.id, "x-guard-policy-hash": policy.hash}
        if body.stream:
            ctx.record["stream_mode"] = "hold"
            ctx.latency["total"] = round((time.perf_counter() - ctx.t0) * 1000, 3)
            g = guardrails(ctx, policy, result, "hold")
            want_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = hold_chunks(ctx.id, created, model, result.answer, finish_reason, g, cfg.stream_chunk_chars,
                                 usage if want_usage else None)
            return finish(ctx, 200, StreamingResponse(chunks, media_type="text/event-stream",
                                                      headers={**headers, "cache-control": "no-cache"}))
        ctx.latency["total"] = round((time.perf_counter() - ctx.t0) * 1000, 3)
        reply = {
            "id": ctx.id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                         "finish_reason": finish_reason, "logprobs": None}],
            "guardrails": guardrails(ctx, policy, result, None),
        }
        if usage is not None:  # the policy model's answer; the checker's calls are counted in guardrails.model_calls
            reply["usage"] = usage
        return finish(ctx, 200, JSONResponse(reply, headers=headers))

    def decide(policy: Policy, result: CheckResult) -> str:
        """What the answer so far gets in window mode: pass, flagged, or blocked (revise blocks: text already sent
        cannot be rewritten)."""
        failed = result.error is not None or any(v.score is None for v in result.verdicts)
        if failed and policy.fail_mode != "fail_open":
            return "blocked"
        flagged = [v for v in result.verdicts if v.violated and v.score is not None]
        if any(v.action in ("block", "revise") for v in flagged):
            return "blocked"
        return "flagged" if flagged else "pass"

    async def window_reply(ctx: _Ctx, policy: Policy, messages: list[dict], spec: ModelSpec, model: str,
                           request: dict) -> Any:
        gcfg = policy.guard.config
        limit = min(request.get("max_new_tokens") or gcfg.max_new_tokens, gcfg.max_new_tokens)
        deltas = upstream_deltas(spec, messages, max_tokens=limit, temperature=request.get("temperature", gcfg.temperature),
                                 seed=request.get("seed", gcfg.seed), top_p=request.get("top_p"), stop=request.get("stop"))

        async def check_text(text: str) -> CheckResult:
            try:
                result, s = await service.check(policy, messages, text)
            except Exception as e:  # noqa: BLE001 - a failed check: decide() applies the policy's fail mode
                result, s = CheckResult(verdicts=[], error=f"{type(e).__name__}: {getattr(e, 'message', None) or e}"[:300]), 0.0
            metrics.latency.observe(s, "check")
            return result

        def on_done(summary: dict) -> None:
            check = summary["check"] or CheckResult(verdicts=[])
            result = GuardResult(outcome=summary["outcome"], answer=summary["sent"], original=summary["sent"],
                                 check=check, policy_id=policy.id, policy_hash=policy.hash,
                                 model_calls=summary["model_calls"])
            ctx.latency["check"] = round(summary["check_ms"], 3)
            if summary["first_content_ms"] is not None:
                ctx.latency["first_content"] = summary["first_content_ms"]
                metrics.latency.observe(summary["first_content_ms"] / 1000, "first_content")
            ctx.latency["total"] = round((time.perf_counter() - ctx.t0) * 1000, 3)
            note_check(ctx, policy, check)
            metrics.actions.inc(policy.id, summary["outcome"])
            ctx.record.update(status=200, action=summary["outcome"], model_calls=summary["model_calls"],
                              finish_reason=summary["finish_reason"], stream_mode="window",
                              windows_checked=summary["windows"], final_answer=audit.content(answer=summary["sent"])["answer"])
            if summary["error"]:
                ctx.record.update(error=summary["error"], upstream_error_status=summary.get("status"))
            g = guardrails(ctx, policy, result, "window")
            g["windows_checked"] = summary["windows"]
            summary["guardrails"] = g
            write_audit(ctx)

        head = {"request_id": ctx.id, "policy_id": policy.id, "policy_hash": policy.hash, "stream_mode": "window"}
        stream = WindowStream(deltas=deltas, check=check_text, decide=lambda r: decide(policy, r),
                              window_chars=cfg.window_chars, chunk_chars=cfg.stream_chunk_chars,
                              envelope=(ctx.id, int(time.time()), model), head=head, on_done=on_done)
        await stream.prime()
        ctx.deferred = True
        headers = {"x-request-id": ctx.id, "x-guard-policy-hash": policy.hash, "cache-control": "no-cache"}
        return finish(ctx, 200, ClosingStreamingResponse(stream, media_type="text/event-stream", headers=headers))

    async def check(request: Request, ctx: _Ctx) -> Any:
        key_default = authenticate(request, ctx)
        body = parse_body(CheckRequest, await read_body(request))
        policy = pick_policy(request, body, key_default, ctx)
        messages = plain_messages(body.messages)
        check_tokens(messages + ([{"content": body.answer}] if body.answer else []), None)
        ctx.record.update(**audit.content(messages=messages, answer=body.answer))
        try:
            result, s = await service.check(policy, messages, body.answer)
        except Exception as e:  # noqa: BLE001 - the checker is down: the decision follows the policy's fail mode
            result, s = CheckResult(verdicts=[], error=f"{type(e).__name__}: {getattr(e, 'message', None) or e}"[:300]), 0.0
        ctx.latency["check"] = round(s * 1000, 3)
        metrics.latency.observe(s, "check")
        note_check(ctx, policy, result)
        if result.error:
            decision = "block" if policy.fail_mode != "fail_open" else "pass"
        else:
            flagged = [v.action for v in result.flagged]
            decision = max(flagged, key=lambda a: _STRENGTH.get(a, 0)) if flagged else "pass"
        metrics.actions.inc(policy.id, "check:" + decision)
        ctx.record.update(action=decision, model_calls=result.model_calls)
        ctx.latency["total"] = round((time.perf_counter() - ctx.t0) * 1000, 3)
        reply = {
            "id": ctx.id,
            "object": "guard.check",
            "created": int(time.time()),
            "policy_id": policy.id,
            "policy_hash": policy.hash,
            "decision": decision,
            "flagged": [v.principle_id for v in result.flagged],
            "verdicts": [asdict(v) for v in result.verdicts],
            "decided_by": result.decided_by,
            "model_calls": result.model_calls,
            "checker_error": result.error,
            "fail_mode": policy.fail_mode if result.error else None,
            "latency_ms": dict(ctx.latency),
        }
        return finish(ctx, 200, JSONResponse(reply, headers={"x-request-id": ctx.id}))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await guarded("chat", request, chat)

    @app.post("/v1/guard/check")
    async def guard_check(request: Request):
        return await guarded("check", request, check)

    @app.get("/v1/models")
    async def models(request: Request):
        if keys is not None and keys.lookup(bearer_key(request.headers.get("authorization"))) is None:
            return ApiError(401, "missing or invalid API key", "authentication_error", "invalid_api_key").response("-")
        data = [{"id": p.id, "object": "model", "created": 0, "owned_by": "cai-guard", "upstream": p.upstream,
                 "policy_hash": p.hash} for p in service.policies.values()]
        return {"object": "list", "data": data}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "policies": {p.id: p.hash for p in service.policies.values()},
                "default_policy": service.default_policy}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _verdict_record(v, include_reason: bool) -> dict:
    d = {"principle": v.principle_id, "violated": v.violated, "score": v.score, "threshold": v.threshold,
         "action": v.action, "method": v.method}
    if include_reason and v.reason:
        d["reason"] = v.reason
    return d


def _usage(comp: Any) -> dict | None:
    """OpenAI's ``usage`` object from a completion's token counts (None when the backend gave none)."""
    p, c = getattr(comp, "prompt_tokens", None), getattr(comp, "completion_tokens", None)
    if not isinstance(p, int) or not isinstance(c, int):
        return None
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
