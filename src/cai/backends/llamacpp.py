"""GGUF models run natively by llama.cpp, in process: ``llamacpp:/path/model.gguf`` (and the ``teacher`` spec).

Needs the optional extra ``llamacpp`` (``llama-cpp-python``, built from source). The quantized weights are used as
they are (memory-mapped), which on a CPU is several times faster than dequantizing into transformers.

Why in process and not ``python -m llama_cpp.server`` behind the openai backend: that server answers one request at
a time anyway (a lock around one model); it returns chat ``top_logprobs`` only with its ``logits_all`` setting (on by
default), which computes the output layer for every prompt position and keeps context length x vocabulary floats
(2.5 GB for a 151k-token vocabulary at 4,096 tokens); and its chat endpoint closes a final assistant message instead
of continuing it, so option scoring (A/B labels after a prefilled "(") would score the wrong position. In process,
prompts are rendered here with the GGUF's own chat template, a prefilled assistant message is continued, and option
scores are exact log-probabilities read from the last position's logits, with no per-position logits kept.

Prefix cache: llama.cpp keeps the KV cache of the last evaluated tokens, and each request reuses the longest prefix
it shares with them. Requests of a batch are ordered so that prompts sharing a prefix (system prompt, few-shot
demonstrations) run one after another, so that prefix is evaluated once per batch. Across batches, the KV state of
each batch's shared prefix (when it is at least ``min_prefix_tokens`` long) is kept in a small LRU of sequence
snapshots (about 28 KB per token for a 1.5B model), so alternating calls (critique prompts, then revision prompts,
then critique prompts again) restore their prefix instead of evaluating it again.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cai.backends.base import Backend, Completion, Conversation, GenParams, empty_reason, failed_completion
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


def _trained_context(path: Path) -> int | None:
    """The context length the model was trained with, from the GGUF header (None when it does not say)."""
    from cai.backends.gguf import gguf_metadata

    try:
        arch = gguf_metadata(path, ("general.architecture",)).get("general.architecture")
        value = gguf_metadata(path, (f"{arch}.context_length",)).get(f"{arch}.context_length") if arch else None
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


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
        min_prefix_tokens: int = 64,
        prefix_slots: int = 4,
        llama: Any = None,
    ):
        super().__init__(model_id or str(gguf_path))
        self.gguf_path = Path(gguf_path)
        self.gguf_info = dict(gguf_info or {})
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self._lock = threading.Lock()
        self.min_prefix_tokens = min_prefix_tokens
        self._prefix_slots = prefix_slots
        self._snapshots: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        if llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as e:
                raise MissingExtraError(
                    f"The llamacpp backend needs the optional package llama-cpp-python ({e}).", fix=LLAMACPP_FIX
                ) from e
            n_ctx = min(n_ctx, _trained_context(self.gguf_path) or n_ctx)
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
        return self._render([{"role": m["role"], "content": m["content"]} for m in conv])

    def _render(self, messages: list[dict]) -> str:
        conv = messages
        prefill = bool(conv) and conv[-1]["role"] == "assistant"
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
        """Token ids of the rendered conversation, with message text tokenized as plain text: a special-token string
        inside a prompt or an answer ("<|im_end|>") stays text and cannot open or close a turn."""
        marks = [f"\x00{i}\x00" for i in range(len(conv))]
        text = self._render([{"role": m["role"], "content": mark} for m, mark in zip(conv, marks)])
        ids: list[int] = []
        rest = text
        for m, mark in zip(conv, marks):
            head, sep, rest = rest.partition(mark)
            if not sep:  # the template dropped or changed a message: fall back to the plain rendering
                return self.tokenize(self.render(conv))
            ids += self.tokenize(head) if not ids else self._plain(head, special=True)
            ids += self._plain(m["content"], special=False)
        return ids + self._plain(rest, special=True)

    def _plain(self, text: str, *, special: bool) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)) if text else []

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
                self._warm_prefix([seqs[i] for i in order])
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
            kwargs["seed"] = params.seed_for(index) or 0
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
        reason = empty_reason(choice.get("text"))
        if reason is not None:  # an empty answer is a failed row, never an answer
            self.stats.empty_completions += 1
            self.stats.failed_requests += 1
            return failed_completion(reason, p, c)
        return Completion(text=choice.get("text"), prompt_tokens=p, completion_tokens=c, finish_reason=finish)

    # --- prefix snapshots -----------------------------------------------------------------------------------------
    def _warm_prefix(self, ordered: list[list[int]]) -> None:
        """Make the KV cache start with the prefix every prompt of ``ordered`` (sorted) shares, from a snapshot if any."""
        if len(ordered) < 2 or self._prefix_slots < 1:
            return
        common = min(_common_prefix(ordered[0], ordered[-1]), min(len(s) for s in ordered) - 1)
        if common < self.min_prefix_tokens:
            return
        key = tuple(ordered[0][:common])
        if _common_prefix(list(self.llm._input_ids), list(key)) >= common:
            return
        snap = self._snapshots.get(key)
        if snap is not None and self._restore(key, snap):
            self._snapshots.move_to_end(key)
            self.stats.cached_prefix_tokens += common
            return
        self._eval_to(list(key))
        self._snapshots[key] = self._snapshot()
        while len(self._snapshots) > self._prefix_slots:
            self._snapshots.popitem(last=False)

    def _snapshot(self) -> bytes:
        import llama_cpp

        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        return bytes(buf[:n])

    def _restore(self, key: tuple[int, ...], snap: bytes) -> bool:
        import llama_cpp

        ctx = self.llm._ctx.ctx
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        buf = (ctypes.c_uint8 * len(snap)).from_buffer_copy(snap)
        if llama_cpp.llama_state_seq_set_data(ctx, buf, len(snap), 0) != len(snap):
            self.llm.n_tokens = 0
            return False
        self.llm.input_ids[: len(key)] = key
        self.llm.n_tokens = len(key)
        self.llm._requires_eval = True  # the logits are not restored: the next call evaluates at least one token
        return True

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
        texts = [self.render(c) for c in conversations]
        bases = [self.tokenize(t) for t in texts]
        order = sorted(range(len(bases)), key=lambda i: bases[i])
        result: list[list[float | None]] = [[] for _ in conversations]
        with self._lock:
            self._warm_prefix([bases[i] for i in order])
            for i in order:
                text, base, opts = texts[i], bases[i], options[i]
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
                result[i] = row
        return result

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None and hasattr(llm, "close"):
            llm.close()
