"""A small, real OpenAI-compatible HTTP server for tests (``http.server`` in a background thread on 127.0.0.1).

``POST /v1/chat/completions`` echoes the last user message as ``"echo: <message>"`` with word-count ``usage``;
``GET /v1/models`` lists :attr:`StubServer.models`. Behaviour can be scripted:

* :meth:`StubServer.script` queues one action per coming chat request: ``("status", code, body, headers)`` answers
  with that status, ``("sleep", seconds)`` sleeps before answering normally, ``("message", message, finish_reason)``
  answers HTTP 200 with that ``message`` object (``None`` leaves it out) and finish reason.
* :attr:`StubServer.reject_fields` names request fields the server refuses, as OpenAI does, with HTTP 400 (or
  :attr:`StubServer.reject_status`) naming the field.
* :attr:`StubServer.answer_model` when set is the ``model`` the responses name (instead of the requested one).
* With ``temperature > 0`` the echo ends with ``[seed N]`` (the request's seed), so samples with different seeds
  differ, as on a real server.
* :attr:`StubServer.delay_fn` ``(payload) -> seconds`` delays every answer (to exercise concurrency).
* :attr:`StubServer.top_logprobs` ``[(token, logprob), ...]`` is returned when the request asks for logprobs;
  ``None`` returns no ``logprobs`` field at all.
* :attr:`StubServer.api_key` when set, requests without ``Authorization: Bearer <key>`` get HTTP 401.

Every chat request's JSON payload and headers are recorded; ``peak_in_flight`` is the most requests handled at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class StubServer:
    def __init__(self) -> None:
        self.models: list[str] = ["stub-model", "other-model"]
        self.api_key: str | None = None
        self.delay_fn: Callable[[dict], float] | None = None
        self.top_logprobs: list[tuple[str, float]] | None = None
        self.reject_fields: set[str] = set()
        #: What ``POST /tokenize`` (vLLM's route, beside /v1) answers: text -> token ids; None: no such route (404).
        self.token_ids: dict[str, list[int]] | None = {"<|im_end|>": [2]}
        #: Whether the server runs the toolkit's answer-penalty logits processor (it then refuses invalid values).
        self.penalty_plugin = False
        self.reject_status = 400
        self.answer_model: str | None = None
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.chat_hits = 0
        self.models_hits = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._actions: deque[tuple] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *actions: tuple) -> None:
        with self._lock:
            self._actions.extend(actions)

    def start(self) -> "StubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ---------------------------------------------------------------- request handling (server threads)

    def _next_action(self) -> tuple | None:
        with self._lock:
            return self._actions.popleft() if self._actions else None

    def handle_chat(self, payload: dict, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        with self._lock:
            self.chat_hits += 1
            self.requests.append(payload)
            self.headers.append(headers)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            action = self._next_action()
            if action is not None and action[0] == "status":
                _, code, body, extra_headers = action
                return code, extra_headers, body
            if action is not None and action[0] == "sleep":
                time.sleep(action[1])
            xargs = payload.get("vllm_xargs") or {}
            if self.penalty_plugin and float(xargs.get("answer_repetition_penalty", 1.0)) < 1.0:
                msg = "vllm_xargs.answer_repetition_penalty must be a number >= 1 (1 turns it off), got 0.5"
                return 400, {}, {"error": {"message": msg, "type": "BadRequestError"}}
            for f in sorted(self.reject_fields):
                if f in payload:
                    msg = f"Unrecognized request argument supplied: {f}"
                    return self.reject_status, {}, {"error": {"message": msg, "type": "invalid_request_error"}}
            if self.delay_fn is not None:
                time.sleep(self.delay_fn(payload))
            if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
                return 401, {}, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
            if payload.get("model") not in self.models:
                msg = f"The model `{payload.get('model')}` does not exist."
                return 404, {}, {"error": {"message": msg, "type": "NotFoundError", "code": 404}}
            body = self._completion(payload)
            if action is not None and action[0] == "message":
                _, message, finish = action
                choice = body["choices"][0]
                choice.pop("message")
                if message is not None:
                    choice["message"] = message
                choice["finish_reason"] = finish
            return 200, {}, body
        finally:
            with self._lock:
                self.in_flight -= 1

    def _completion(self, payload: dict) -> dict:
        messages = payload["messages"]
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        words = f"echo: {last_user}".split()
        if (payload.get("temperature") or 0) > 0:
            words += ["[seed", f"{payload.get('seed')}]"]
        finish = "stop"
        max_tokens = payload.get("max_tokens")
        if max_tokens is not None and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": " ".join(words)},
            "finish_reason": finish,
        }
        if payload.get("logprobs") and self.top_logprobs is not None:
            top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in self.top_logprobs]
            first = top[0] if top else {"token": "", "logprob": 0.0}
            content = [{"token": first["token"], "logprob": first["logprob"], "top_logprobs": top}]
            choice["logprobs"] = {"content": content}
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "model": self.answer_model or payload.get("model"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": sum(len(m["content"].split()) for m in messages),
                "completion_tokens": len(words),
                "total_tokens": 0,
            },
        }


def _make_handler(server: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") == "/v1/models":
                with server._lock:
                    server.models_hits += 1
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path == "/tokenize" and server.token_ids is not None:
                text = json.loads(raw).get("prompt", "")
                toks = server.token_ids.get(text, [7, 8])
                self._send(200, {"count": len(toks), "tokens": toks, "max_model_len": 4096})
                return
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            code, extra, body = server.handle_chat(json.loads(raw), headers)
            self._send(code, body, extra)

    return Handler
