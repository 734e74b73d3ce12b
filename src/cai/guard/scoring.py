"""Option scoring with the shared prompt prefix computed once, for local transformers checkers.

Every principle's question of one check starts with the same tokens (instructions, the quoted conversation, the
question) and differs only in its last line (the rule). :class:`PrefixScorer` wraps a local transformers backend so
that :func:`cai.labeling.mc.score_choices` gets the letters' log-probabilities from one forward pass over the shared
prefix and one batched pass over the rules, instead of one full-length pass per principle. The numbers are the
backend's own :meth:`option_logprobs` (same chat rendering, same tokens, the letter read at the same position); any
request that does not fit this shape (multi-token options, no shared prefix) goes to the backend unchanged. Other
backends (servers, llama.cpp) are used as they are: they cache shared prefixes themselves.
"""

from __future__ import annotations

from cai.backends.base import Backend, Completion, Conversation, GenParams
from cai.backends.fast_generate import common_prefix_len

MIN_PREFIX = 16


def wrap(backend: Backend) -> Backend:
    """The backend, wrapped in a :class:`PrefixScorer` when it is a local transformers model that does not already
    share prompt prefixes in its own scoring (a backend with a shared-prefix kernel, ``fast``, is used as it is)."""
    from cai.backends.transformers_backend import TransformersBackend

    if not isinstance(backend, TransformersBackend) or getattr(backend, "fast", None):
        return backend
    return PrefixScorer(backend)


class PrefixScorer(Backend):
    """A view of a transformers backend whose option scoring reuses the shared prefix; generation is delegated."""

    def __init__(self, inner: Backend):
        super().__init__(inner.model_id)
        self.inner = inner
        self.name = inner.name
        self.stats = inner.stats

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        return self.inner.generate(conversations, params)

    def describe(self) -> dict:
        return self.inner.describe()

    def option_logprobs(self, conversations: list[Conversation], options: list[list[str]]) -> list[list[float | None]]:
        inner = self.inner
        if len(conversations) < 2:
            return inner.option_logprobs(conversations, options)
        bases, tokens = [], []
        for conv, opts in zip(conversations, options):
            base = inner.encode(conv)  # type: ignore[attr-defined]
            ids = []
            for o in opts:
                full = inner.chat.encode(conv, extra_text=o) if conv and conv[-1]["role"] == "assistant" else []  # type: ignore[attr-defined]
                if full[: len(base)] != base or len(full) != len(base) + 1:
                    return inner.option_logprobs(conversations, options)
                ids.append(full[-1])
            bases.append(base)
            tokens.append(ids)
        out: list[list[float | None] | None] = [None] * len(conversations)
        plain: list[int] = []  # prompts without a long shared prefix: scored together by the backend, in one call
        for lo, hi, p in _groups(bases):
            if p < MIN_PREFIX or hi - lo < 2:
                plain.extend(range(lo, hi))
            else:
                out[lo:hi] = self._scored(bases[lo:hi], tokens[lo:hi], p)
        if plain:
            for i, row in zip(plain, inner.option_logprobs([conversations[i] for i in plain], [options[i] for i in plain])):
                out[i] = row
        return [row if row is not None else [None] * len(options[i]) for i, row in enumerate(out)]

    def _scored(self, bases: list[list[int]], tokens: list[list[int]], p: int) -> list[list[float | None]]:
        import torch
        from transformers import DynamicCache

        inner = self.inner
        model, dev, pad = inner.model, inner.device, inner.pad_id  # type: ignore[attr-defined]
        out: list[list[float | None]] = []
        with torch.inference_mode():
            pre = model(input_ids=torch.tensor([bases[0][:p]], device=dev), use_cache=True).past_key_values
            layers = [(layer.keys, layer.values) for layer in pre.layers] if hasattr(pre, "layers") else list(pre)
            step = max(1, int(getattr(inner, "batch_size", 16)))
            for start in range(0, len(bases), step):
                chunk = bases[start : start + step]
                B = len(chunk)
                width = max(len(b) - p for b in chunk)
                ids = torch.full((B, width), pad, dtype=torch.long)
                for j, b in enumerate(chunk):  # right padding: real tokens never attend to the pads after them
                    ids[j, : len(b) - p] = torch.tensor(b[p:])
                cache = DynamicCache()
                for li, (k, v) in enumerate(layers):
                    cache.update(k.expand(B, -1, -1, -1).contiguous(), v.expand(B, -1, -1, -1).contiguous(), li)
                mask = torch.ones((B, p + width), dtype=torch.long, device=dev)
                pos = torch.arange(p, p + width, device=dev).unsqueeze(0).expand(B, -1)
                logits = model(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos, past_key_values=cache,
                               use_cache=True).logits.float()
                for j, b in enumerate(chunk):
                    logp = torch.log_softmax(logits[j, len(b) - p - 1], dim=-1)
                    out.append([float(logp[t]) for t in tokens[start + j]])
        inner.stats.cached_prefix_tokens += p * (len(bases) - 1)
        return out


def _groups(bases: list[list[int]]) -> list[tuple[int, int, int]]:
    """Runs of consecutive prompts sharing most of their tokens: (start, end, shared prefix length).

    A prompt joins the run when it shares at least half of the run's first prompt; the shared length stops one
    token short of the shortest prompt so every row keeps a token of its own to score after."""
    out = []
    lo = 0
    while lo < len(bases):
        first = bases[lo]
        hi, p = lo + 1, len(first) - 1
        while hi < len(bases):
            c = common_prefix_len(first, bases[hi])
            if c < len(first) // 2:
                break
            p = min(p, c, len(bases[hi]) - 1)
            hi += 1
        out.append((lo, hi, p))
        lo = hi
    return out
