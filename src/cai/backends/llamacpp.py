"""GGUF models run natively by llama.cpp, in process: ``llamacpp:/path/model.gguf`` (and the ``teacher`` spec).

Needs the optional extra ``llamacpp`` (``llama-cpp-python``, built from source). The quantized weights are used as
they are (memory-mapped), which on a CPU is several times faster than dequantizing into transformers.

Why in process and not ``python -m llama_cpp.server`` behind the openai backend: that server answers one request at
a time anyway (a lock around one model), it returns chat log-probabilities only when started with
``--logits_all``, which keeps logits for every position (context length x vocabulary floats: 2.5 GB for a
151k-token vocabulary at 4,096 tokens), and its chat endpoint cannot continue a prefilled assistant message, which
option scoring (A/B labels) depends on. In process, prompts are rendered here with the GGUF's own chat template,
a prefilled assistant message is continued, and option scores are exact log-probabilities read from the logits.

Prefix cache: llama.cpp keeps the KV cache of the last evaluated tokens, and each request reuses the longest prefix
it shares with them. Requests of a batch are ordered so that prompts sharing a prefix (system prompt, few-shot
demonstrations) run one after another, so that prefix is evaluated once per batch.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from cai.backends.base import Backend, Completion, Conversation, GenParams
from cai.errors import MissingExtraError, ModelError

LLAMACPP_FIX = (
    "pip install '.[llamacpp]' (llama-cpp-python, builds from source in about 10 minutes; "
    "scripts/setup_teacher.sh --llamacpp does it), or run the GGUF through transformers: gguf:/path/model.gguf"
)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LlamaCppBackend(Backend):
    """A GGUF model in llama.cpp, through ``llama_cpp.Llama``: one sequence at a time with a reused prefix cache."""

    name = "llamacpp"

    def __init__(
        self,
        gguf_path: str | Path,
        *,
        model_id: str | None = None,
        gguf_info: dict | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        llama: Any = None,
    ):
        super().__init__(model_id or str(gguf_path))
        self.gguf_path = Path(gguf_path)
        self.gguf_info = dict(gguf_info or {})
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self._lock = threading.Lock()
        if llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as e:
                raise MissingExtraError(
                    f"The llamacpp backend needs the optional package llama-cpp-python ({e}).", fix=LLAMACPP_FIX
                ) from e
            try:
                llama = Llama(
                    model_path=str(self.gguf_path),
                    n_ctx=n_ctx,
                    n_batch=n_batch,
                    n_threads=self.n_threads,
                    n_threads_batch=self.n_threads,
                    logits_all=False,
                    seed=seed,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as e:
                raise ModelError(
                    f"llama.cpp could not load '{self.gguf_path}': {e}",
                    fix="check that the file is a complete GGUF model of an architecture this llama.cpp supports.",
                ) from e
        self.llm = llama
        self.n_ctx = int(self.llm.n_ctx())
        self._template = self._load_template()

    # --- prompt rendering ---------------------------------------------------------------------------------------
    def _load_template(self):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        meta = getattr(self.llm, "metadata", {}) or {}
        source = meta.get("tokenizer.chat_template")
        if not source:
            raise ModelError(
                f"The GGUF file '{self.gguf_path}' has no chat template (tokenizer.chat_template).",
                fix="use an instruction-tuned GGUF whose header carries its chat template.",
            )

        def raise_exception(message: str):
            raise ModelError(f"The chat template of '{self.gguf_path}' rejected the conversation: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
        return env.from_string(source)

    def _special(self, token_id: int) -> str:
        if token_id is None or token_id < 0:
            return ""
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="ignore")

    def render(self, conv: Conversation) -> str:
        """The conversation as prompt text; a final assistant message is continued, not closed."""
        prefill = bool(conv) and conv[-1]["role"] == "assistant"
        messages = [{"role": m["role"], "content": m["content"]} for m in conv]
        text = self._template.render(
            messages=messages,
            add_generation_prompt=not prefill,
            bos_token=self._special(self.llm.token_bos()),
            eos_token=self._special(self.llm.token_eos()),
        )
        if prefill:
            content = conv[-1]["content"]
            cut = text.rfind(content) if content else -1
            if cut < 0:
                raise ModelError(
                    "The chat template dropped the prefilled assistant message, so it cannot be continued.",
                    fix="use a GGUF whose chat template renders assistant messages verbatim.",
                )
            text = text[: cut + len(content)]
        return text

    def tokenize(self, text: str) -> list[int]:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        bos = self.llm.token_bos()
        wants_bos = bool(getattr(getattr(self.llm, "_model", None), "add_bos_token", lambda: False)())
        if wants_bos and bos is not None and bos >= 0 and (not ids or ids[0] != bos):
            ids = [bos] + list(ids)
        return list(ids)

    def encode(self, conv: Conversation) -> list[int]:
        return self.tokenize(self.render(conv))

    # --- generation ---------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_id, **self.gguf_info, "n_ctx": self.n_ctx, "threads": self.n_threads}

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        t0 = time.perf_counter()
        seqs = [self.encode(c) for c in conversations]
        # Neighbouring prompts in token order share the longest prefixes, so each shared prefix is evaluated once.
        order = sorted(range(len(seqs)), key=lambda i: seqs[i])
        out: list[Completion | None] = [None] * len(seqs)
        with self._lock:
            try:
                for i in order:
                    out[i] = self._complete(seqs[i], params, i)
            finally:
                self.stats.calls += 1
                self.stats.generate_seconds += time.perf_counter() - t0
        return [c for c in out if c is not None]

    def _complete(self, ids: list[int], params: GenParams, index: int) -> Completion:
        room = self.n_ctx - len(ids)
        if room < 1:
            raise ModelError(
                f"A prompt of {len(ids)} tokens does not fit the llamacpp context of {self.n_ctx} tokens.",
                fix="shorten the prompt (fewer few-shot demonstrations) or raise the context length.",
            )
        cached = _common_prefix(list(self.llm._input_ids), ids)
        kwargs: dict[str, Any] = dict(
            max_tokens=min(params.max_new_tokens, room),
            temperature=max(params.temperature, 0.0),
            top_p=params.top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=params.repetition_penalty,
            stop=list(params.stop) or [],
        )
        if not params.greedy:
            kwargs["seed"] = (params.seed if params.seed is not None else 0) + index
        try:
            res = self.llm.create_completion(prompt=ids, **kwargs)
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"llama.cpp failed on a prompt of {len(ids)} tokens: {e}") from e
        choice = res["choices"][0]
        usage = res.get("usage") or {}
        p, c = int(usage.get("prompt_tokens", len(ids))), int(usage.get("completion_tokens", 0))
        self.stats.requests += 1
        self.stats.prompt_tokens += p
        self.stats.completion_tokens += c
        self.stats.cached_prefix_tokens += min(cached, max(len(ids) - 1, 0))
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(text=choice.get("text") or "", prompt_tokens=p, completion_tokens=c, finish_reason=finish)

    # --- scoring ------------------------------------------------------------------------------------------------
    def _eval_to(self, ids: list[int]):
        """Make the KV cache hold exactly ``ids`` (reusing the shared prefix); return the last position's logits."""
        import numpy as np

        keep = min(_common_prefix(list(self.llm._input_ids), ids), len(ids) - 1)
        self.stats.cached_prefix_tokens += keep
        self.llm.n_tokens = keep
        self.llm.eval(ids[keep:])
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float64)

    @staticmethod
    def _log_softmax(logits):
        import numpy as np

        m = logits.max()
        return logits - (m + np.log(np.exp(logits - m).sum()))

    def option_logprobs(self, conversations: list[Conversation], options: list[list[str]]) -> list[list[float | None]]:
        """Exact sum of log-probabilities of each option's tokens after the rendered conversation."""
        if len(conversations) != len(options):
            raise ModelError("option_logprobs needs one option list per conversation")
        result: list[list[float | None]] = []
        with self._lock:
            for conv, opts in zip(conversations, options):
                text = self.render(conv)
                base = self.tokenize(text)
                if len(base) + max((len(o) for o in opts), default=0) + 8 > self.n_ctx:
                    raise ModelError(
                        f"A prompt of {len(base)} tokens does not fit the llamacpp context of {self.n_ctx} tokens.",
                        fix="shorten the prompt (fewer few-shot demonstrations) or raise the context length.",
                    )
                first = self._log_softmax(self._eval_to(base))
                row: list[float | None] = []
                for o in opts:
                    # Tokenize prompt+option jointly so merges at the boundary match what the model would emit.
                    full = self.tokenize(text + o)
                    if full[: len(base)] != base:
                        full = base + list(self.llm.tokenize(o.encode("utf-8"), add_bos=False, special=False))
                    toks = full[len(base) :]
                    if not toks:
                        row.append(None)
                        continue
                    total = float(first[toks[0]])
                    for k in range(1, len(toks)):
                        total += float(self._log_softmax(self._eval_to(base + toks[:k]))[toks[k]])
                    row.append(total)
                self.stats.requests += 1
                self.stats.prompt_tokens += len(base)
                result.append(row)
        return result

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None and hasattr(llm, "close"):
            llm.close()
