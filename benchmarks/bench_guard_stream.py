"""Time to the first word of a guarded streaming reply: `hold` against `window`, with a real streaming upstream.

Run from the repository root (needs the optional llama.cpp extra, `pip install -e .[llamacpp]`)::

    .venv/bin/python benchmarks/bench_guard_stream.py                  # 4 prompts, 128 new tokens, windows of 200 chars

The upstream is the embedded SmolLM2 GGUF served by llama.cpp through a minimal OpenAI-compatible streaming endpoint
started in this process; the checker is the same GGUF through the `llamacpp:` backend. The guard server is the one
`cai guard serve` runs. For every prompt, the same request is streamed once held and once windowed (the upstream is
greedy, so both see the same text); printed: seconds to the first content chunk and to the end, windows checked and
outcomes, then one JSON line with the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "Describe how bread is made, step by step.",
    "Give me advice for my first marathon.",
    "Explain how a bicycle gear system works.",
    "What should I pack for a week of hiking?",
]


def streaming_llama_app(gguf: str, n_threads: int = 2):
    """A minimal OpenAI-compatible ``/v1/chat/completions`` (plain and streaming) around one ``llama_cpp.Llama``."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=n_threads, verbose=False)
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        kwargs = {"messages": body["messages"], "temperature": 0.0, "max_tokens": int(body.get("max_tokens") or 128)}
        if not body.get("stream"):
            with lock:
                return llm.create_chat_completion(**kwargs)

        def events():
            with lock:
                for chunk in llm.create_chat_completion(stream=True, **kwargs):
                    yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def one(url: str, key: str, prompt: str, mode: str) -> dict:
    import openai

    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=1200)
    t0, first, last = time.perf_counter(), None, None
    text = ""
    for ch in c.chat.completions.create(model="stream", messages=[{"role": "user", "content": prompt}], stream=True,
                                        extra_body={"guardrails": {"stream_mode": mode}}):
        if ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
            if first is None:
                first = time.perf_counter() - t0
        last = ch
    total = time.perf_counter() - t0
    g = last.guardrails
    return {"mode": g["stream_mode"], "first_s": round(first, 2) if first else None, "total_s": round(total, 2),
            "windows": g.get("windows_checked"), "action": g["action"], "chars": len(text)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--window-chars", type=int, default=200)
    args = ap.parse_args()
    from cai.backends.embedded import gguf_path
    from cai.guard.auth import append_key, generate_key, new_record
    from cai.guard.server import BackgroundServer, GuardServerConfig, build_app

    gguf = str(gguf_path())
    rows = []
    with tempfile.TemporaryDirectory() as tmp, BackgroundServer(streaming_llama_app(gguf)) as upstream:
        d = Path(tmp)
        (d / "p.yaml").write_text(
            f"id: stream\npolicy: openai:smollm@{upstream.url}/v1\nchecker: llamacpp:{gguf}\n"
            f"principles: [no-violence-uplift, no-malicious-code, answer-benign-requests]\n"
            f"max_new_tokens: {args.max_new_tokens}\n")
        key = generate_key()
        append_key(d / "k.jsonl", new_record("bench", key))
        cfg = GuardServerConfig(policies=[str(d / "p.yaml")], keys_file=str(d / "k.jsonl"), key_env=None,
                                audit_path=str(d / "audit.jsonl"), window_chars=args.window_chars)
        app, _ = build_app(cfg)
        with BackgroundServer(app) as srv:
            one(srv.url, key, "Say hello.", "hold")  # warm-up: loads both models
            for prompt in PROMPTS[: args.prompts]:
                for mode in ("hold", "window"):
                    r = one(srv.url, key, prompt, mode)
                    rows.append(r)
                    print(f"{mode:6s} first content {r['first_s']} s, end {r['total_s']} s, windows {r['windows']}, "
                          f"{r['action']}, {r['chars']} chars: {prompt}", flush=True)

    def med(mode: str, k: str) -> float | None:
        xs = [r[k] for r in rows if r["mode"] == mode and r[k] is not None]
        return round(statistics.median(xs), 2) if xs else None

    print(json.dumps({"prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "window_chars": args.window_chars,
                      "hold_first_s_p50": med("hold", "first_s"), "window_first_s_p50": med("window", "first_s"),
                      "hold_total_s_p50": med("hold", "total_s"), "window_total_s_p50": med("window", "total_s"),
                      "rows": rows}))


if __name__ == "__main__":
    main()
