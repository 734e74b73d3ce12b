"""Local Hugging Face models: batched left-padded generation with a reused KV cache for long shared prefixes.

Requests are sorted by length and cut into batches. Inside a batch, the longest token prefix shared by every prompt
(system prompt, constitution, few-shot demonstrations) is run through the model once; its KV cache is kept in a small
LRU and expanded over the batch, so only each prompt's own suffix is prefilled. Prompts are laid out as
``[shared prefix][padding][own suffix]`` with the padding masked, which keeps every real token at its true position.

Behaviour shared with every backend (see :mod:`cai.backends.base`):

* message text is tokenized as plain text (:mod:`cai.backends.chat_tokens`): special-token strings in a prompt or an
  answer never become control tokens, in generation and in option scoring;
* each request samples from its own generator seeded with ``params.seed_for(i)``, so its sample depends on its seed
  only, not on the batch it shares;
* stop strings end a row's generation when they appear (the text is cut before them, the tokens counted up to them);
* an empty answer (the model ends at once, or only special tokens) is retried with a new seed when sampling, then
  returned as a failed row (``finish_reason="error"``).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any

from cai.backends.base import Backend, Completion, Conversation, GenParams, failed_completion, request_seed
from cai.backends.chat_tokens import ChatEncoder
from cai.backends.fast_generate import completions, generate_batch, last_logits
from cai.backends.prefix_attention import RowStore, install
from cai.errors import ModelError, UserInputError


def _pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _kv_pairs(cache):
    """(key, value) tensors per layer of a transformers Cache."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache]


class TransformersBackend(Backend):
    """A causal LM loaded with transformers from a local folder (or the embedded model)."""

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        *,
        model_id: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        prefix_cache: bool = True,
        min_prefix_tokens: int = 32,
        cache_slots: int = 4,
        empty_retries: int = 2,
        prefill_tokens: int = 2048,
        row_cache_tokens: int = 16384,
        model: Any = None,
        tokenizer: Any = None,
    ):
        super().__init__(model_id or model_path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = _pick_device(device)
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.batch_size = batch_size
        self.empty_retries = max(0, empty_retries)
        self.prefix_cache = prefix_cache
        self.min_prefix_tokens = min_prefix_tokens
        self._cache: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._cache_slots = cache_slots
        self.prefill_tokens = max(1, prefill_tokens)
        self.row_cache_tokens = max(0, row_cache_tokens)
        self._rows = RowStore(self.row_cache_tokens)
        #: Prompt tokens whose keys/values came from a row of an earlier call instead of a prefill.
        self.reused_row_tokens = 0
        #: Token positions run through the model on the fast path (padding included): the work a call really did.
        self.forward_tokens = 0
        if model is None:
            if not os.path.isdir(model_path):
                raise UserInputError(
                    f"Model folder '{model_path}' does not exist.",
                    fix="point `model:` at a local Hugging Face folder (config.json + weights), use `embedded`, or "
                    "use `backend: openai` for a server. Models are never downloaded at run time.",
                )
            try:
                tokenizer = AutoTokenizer.from_pretrained(model_path)
                model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
            except (OSError, ValueError) as e:
                raise UserInputError(
                    f"Could not load a causal LM from '{model_path}': {e}",
                    fix="the folder must hold a transformers checkpoint (config.json, weights, tokenizer files).",
                ) from e
        self.model = model.to(self.device).eval()
        self.tok = tokenizer
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.pad_id = self.tok.pad_token_id
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(self.tok.eos_token_id)
        self.chat = ChatEncoder(self.tok)
        #: The shared-prefix kernel (one copy of the batch's prefix, rows' caches reused across calls) where the
        #: model family supports it; otherwise the StaticCache path below.
        self.fast = install(self.model)

    # --- prompt rendering ---------------------------------------------------------------------------------------
    def encode(self, conv: Conversation) -> list[int]:
        """Token ids of the conversation in the model's chat template; message text stays plain text.

        A trailing assistant message is continued (assistant prefill); otherwise the generation prompt is added.
        """
        return self.chat.encode(conv)

    def describe(self) -> dict:
        d = super().describe()
        if self.chat.unaligned:
            d["unaligned_chat_renders"] = self.chat.unaligned
        return d

    # --- prefix cache ---------------------------------------------------------------------------------------------
    def _prefix_kv(self, prefix: tuple[int, ...]):
        import torch

        if prefix in self._cache:
            self._cache.move_to_end(prefix)
            return self._cache[prefix]
        with torch.inference_mode():
            ids = torch.tensor([list(prefix)], device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
        kv = out.past_key_values
        self._cache[prefix] = kv
        while len(self._cache) > self._cache_slots:
            self._cache.popitem(last=False)
        return kv

    @staticmethod
    def _common_prefix(seqs: list[list[int]]) -> int:
        n = min(len(s) for s in seqs)
        first = seqs[0]
        i = 0
        while i < n and all(s[i] == first[i] for s in seqs):
            i += 1
        return i

    # --- generation -----------------------------------------------------------------------------------------------
    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        if not conversations:
            return []
        if params.seeds is not None and len(params.seeds) != len(conversations):
            raise ModelError(f"GenParams.seeds has {len(params.seeds)} seed(s) for {len(conversations)} conversation(s)")
        t0 = time.perf_counter()
        encoded = [self.encode(c) for c in conversations]
        results: list[Completion | None] = [None] * len(encoded)
        todo = list(range(len(encoded)))
        new_rows = RowStore(self.row_cache_tokens) if self.fast and self.row_cache_tokens else None
        for attempt in range(self.empty_retries + 1):
            if attempt:
                if params.greedy:  # greedy decoding would give the same empty answer again
                    break
                self.stats.retries += len(todo)
            seeds = {i: self._row_seed(params, i, attempt) for i in todo}
            order = sorted(todo, key=lambda i: len(encoded[i]))
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch, batch_seeds = [encoded[i] for i in idx], [seeds[i] for i in idx]
                if self.fast:
                    outs = generate_batch(self, batch, params, batch_seeds, self._rows, new_rows)
                else:
                    outs = self._generate_batch(batch, params, batch_seeds)
                for i, c in zip(idx, outs):
                    results[i] = c
            todo = [i for i in todo if results[i] is not None and results[i].failed]  # type: ignore[union-attr]
            self.stats.empty_completions += len(todo)
            if not todo:
                break
        self.stats.failed_requests += len(todo)
        if new_rows is not None:
            self._rows = new_rows  # the rows of this call, for a next call that continues them
        for i in todo:
            c = results[i]
            assert c is not None
            tries = 1 if params.greedy else self.empty_retries + 1
            results[i] = failed_completion(f"{c.error}; {tries} attempt(s)", c.prompt_tokens, c.completion_tokens)
        self.stats.calls += 1
        self.stats.generate_seconds += time.perf_counter() - t0
        return [r for r in results if r is not None]

    @staticmethod
    def _row_seed(params: GenParams, index: int, attempt: int) -> int:
        seed = params.seed_for(index, attempt)
        return seed if seed is not None else request_seed(0, index, attempt)

    def _stopped(self, toks: list[int], stops: list[str]) -> bool:
        """Whether the tail of a row's tokens contains a stop string."""
        tail = self.tok.decode(toks[-self._stop_window :], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def _generate_batch(self, seqs: list[list[int]], params: GenParams, seeds: list[int]) -> list[Completion]:
        """Generate for one batch with a preallocated KV cache and an own decode loop.

        The cache is allocated once for prefix + prompt + new tokens (no per-step concatenation); finished rows are
        dropped from the batch as soon as enough of them are done, so a few long answers do not keep the whole batch
        busy.
        """
        import torch
        from transformers import StaticCache

        p = 0
        if self.prefix_cache:
            p = self._common_prefix(seqs)
            p = min(p, min(len(s) for s in seqs) - 1)
            if p < self.min_prefix_tokens:
                p = 0
        B = len(seqs)
        width = max(len(s) - p for s in seqs)
        max_new = params.max_new_tokens
        total = p + width + max_new
        dev = self.device
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, total), dtype=torch.long)
        pos = torch.zeros((B, width), dtype=torch.long)
        next_pos = torch.zeros(B, dtype=torch.long)
        mask[:, :p] = 1
        for i, s in enumerate(seqs):
            suf = s[p:]
            off = width - len(suf)
            ids[i, off:] = torch.tensor(suf)
            mask[i, p + off : p + width] = 1
            pos[i, off:] = torch.arange(p, p + len(suf))
            next_pos[i] = p + len(suf)
        ids, mask, pos, next_pos = ids.to(dev), mask.to(dev), pos.to(dev), next_pos.to(dev)
        cache = StaticCache(config=self.model.config, max_cache_len=total)
        if p:
            prefix = self._prefix_kv(tuple(seqs[0][:p]))
            for layer, (k, v) in zip(cache.layers, _kv_pairs(prefix)):
                kb = k[:, :, :p].expand(B, -1, -1, -1)
                vb = v[:, :, :p].expand(B, -1, -1, -1)
                layer.lazy_initialization(kb, vb)
                layer.keys[:, :, :p] = kb
                layer.values[:, :, :p] = vb
                layer.cumulative_length.fill_(p)
            self.stats.cached_prefix_tokens += p * B
        gens = None
        if not params.greedy:
            gens = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
        stops = [s for s in params.stop if s]
        self._stop_window = 8 + max((len(s) for s in stops), default=0)
        alive = torch.arange(B, device=dev)  # original row index of each live row
        out_tokens: list[list[int]] = [[] for _ in range(B)]
        finished = [False] * B
        eos = torch.tensor(sorted(self.eos_ids), device=dev)
        cache_pos = torch.arange(p, p + width, device=dev)
        cur_ids, cur_pos = ids, pos
        penalize = params.repetition_penalty != 1.0
        seen = torch.zeros((B, self.model.config.vocab_size), dtype=torch.bool, device=dev) if penalize else None
        with torch.inference_mode():
            for step in range(max_new):
                logits = self.model(
                    input_ids=cur_ids,
                    attention_mask=mask,
                    position_ids=cur_pos,
                    past_key_values=cache,
                    cache_position=cache_pos,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1, :].float()
                if seen is not None:
                    rp = params.repetition_penalty
                    logits = torch.where(seen, torch.where(logits > 0, logits / rp, logits * rp), logits)
                nxt = self._pick(logits, params, None if gens is None else [gens[r] for r in alive.tolist()])
                if seen is not None:
                    seen[torch.arange(len(nxt), device=dev), nxt] = True
                done_now = torch.isin(nxt, eos)
                col = p + width + step
                nl = nxt.tolist()
                for j, r in enumerate(alive.tolist()):
                    if not finished[r]:
                        if bool(done_now[j]):
                            finished[r] = True
                        else:
                            out_tokens[r].append(nl[j])
                            if stops and self._stopped(out_tokens[r], stops):
                                finished[r] = True
                keep = torch.tensor([not finished[r] for r in alive.tolist()], device=dev)
                if not bool(keep.any()):
                    break
                mask[:, col] = 1
                cur_ids = nxt.unsqueeze(1)
                cur_pos = next_pos.unsqueeze(1).clone()
                next_pos = next_pos + 1
                cache_pos = torch.tensor([col], device=dev)
                n_alive = int(keep.sum())
                if n_alive <= len(keep) * 3 // 4:  # compact: drop finished rows from every tensor and the cache
                    idx = keep.nonzero().squeeze(1)
                    alive, mask, cur_ids, cur_pos, next_pos = alive[idx], mask[idx], cur_ids[idx], cur_pos[idx], next_pos[idx]
                    if seen is not None:
                        seen = seen[idx]
                    for layer in cache.layers:
                        layer.keys = layer.keys.index_select(0, idx)
                        layer.values = layer.values.index_select(0, idx)
                        layer.batch_size = len(idx)
        return completions(self, seqs, out_tokens, finished, stops)

    @staticmethod
    def _pick(logits, params: GenParams, gens):
        """Next token per row: argmax when greedy, else a sample drawn with each row's own generator."""
        import torch

        if params.greedy:
            return logits.argmax(-1)
        logits = logits / params.temperature
        probs = torch.softmax(logits, -1)
        if params.top_p < 1.0:
            sp, si = probs.sort(-1, descending=True)
            cum = sp.cumsum(-1)
            sp[(cum - sp) > params.top_p] = 0
            probs = torch.zeros_like(probs).scatter(-1, si, sp)
            probs = probs / probs.sum(-1, keepdim=True)
        picks = [torch.multinomial(probs[j], 1, generator=g) for j, g in enumerate(gens)]
        return torch.cat(picks)

    # --- scoring ----------------------------------------------------------------------------------------------------
    def option_logprobs(self, conversations: list[Conversation], options: list[list[str]]) -> list[list[float | None]]:
        """Sum of log-probabilities of each option's tokens after the rendered conversation.

        Each conversation counts in ``stats.requests`` and its tokens in ``stats.prompt_tokens`` (as on the other
        backends), not in ``stats.calls``."""
        import torch

        if len(conversations) != len(options):
            raise ModelError("option_logprobs needs one option list per conversation")
        items: list[tuple[int, int, list[int], int]] = []  # (row, option index, ids, prompt length)
        single: list[tuple[int, list[int], list[int]]] = []  # (row, prompt ids, one token id per option)
        for r, (conv, opts) in enumerate(zip(conversations, options)):
            base = self.encode(conv)
            self.stats.requests += 1
            self.stats.prompt_tokens += len(base)
            fulls = []
            for o in opts:
                # Tokenize the reply's text and the option jointly so merges at the boundary match what the model
                # would emit; both stay plain text (no special tokens from either).
                full = self.chat.encode(conv, extra_text=o) if conv and conv[-1]["role"] == "assistant" else []
                if full[: len(base)] != base or len(full) <= len(base):
                    full = base + self.chat.encode_text(o)
                fulls.append(full)
            if opts and all(len(f) == len(base) + 1 for f in fulls):
                single.append((r, base, [f[-1] for f in fulls]))
            else:
                items.extend((r, k, f, len(base)) for k, f in enumerate(fulls))
        result: list[list[float | None]] = [[None] * len(o) for o in options]
        # Options of one token each (A/B labels): one forward pass per conversation, last position only.
        if self.fast and single:  # one pass per window, prefixes shared within the call computed once
            logp = last_logits(self, [x[1] for x in single], self._rows)
            for j, (r, _, toks) in enumerate(single):
                result[r] = [float(logp[j, t]) for t in toks]
            single = []
        single.sort(key=lambda x: len(x[1]))
        for start in range(0, len(single), self.batch_size):
            chunk = single[start : start + self.batch_size]
            width = max(len(x[1]) for x in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (_, base, _) in enumerate(chunk):
                ids[j, width - len(base) :] = torch.tensor(base)
                mask[j, width - len(base) :] = 1
            with torch.inference_mode():
                logits = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), logits_to_keep=1
                ).logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            for j, (r, _, toks) in enumerate(chunk):
                result[r] = [float(logp[j, t]) for t in toks]
        items.sort(key=lambda x: len(x[2]))
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            width = max(len(x[2]) for x in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (_, _, seq, _) in enumerate(chunk):
                ids[j, width - len(seq) :] = torch.tensor(seq)
                mask[j, width - len(seq) :] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            for j, (r, k, seq, plen) in enumerate(chunk):
                off = width - len(seq)
                total = 0.0
                for t in range(plen, len(seq)):
                    total += float(logp[j, off + t - 1, seq[t]])
                result[r][k] = total
        return result
