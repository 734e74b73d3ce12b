"""Batched generation on the shared-prefix kernel (:mod:`cai.backends.prefix_attention`).

One batch (rows already sorted by length) is laid out in the own-token buffers as::

    [tokens reused from an earlier call, right-aligned][tokens to prefill, right-aligned][generated tokens]

with padding masked, every real token at its true position and the batch's shared prefix kept once. The prefill runs
in row chunks of about ``prefill_tokens`` tokens (large matrix products, bounded memory); decoding drops finished
rows from the batch as soon as a quarter of it is done. After the call each row's own keys and values (prompt and
generated tokens) go to the backend's :class:`~cai.backends.prefix_attention.RowStore` for the next call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cai.backends.base import Completion, GenParams, empty_reason, failed_completion
from cai.backends.prefix_attention import DecodeState, PrefixKV, RowEntry, RowStore

if TYPE_CHECKING:  # pragma: no cover
    from cai.backends.transformers_backend import TransformersBackend

#: A reused row prefix shorter than this (past the batch's shared prefix) is prefilled again instead.
MIN_REUSE = 8


def prefix_kv(b: "TransformersBackend", tokens: tuple[int, ...]) -> PrefixKV:
    """The shared prefix's keys and values, from the backend's LRU or computed once (one row, no padding)."""
    if tokens in b._cache:
        b._cache.move_to_end(tokens)
        return b._cache[tokens]
    state = DecodeState(b.model.config, 1, len(tokens), None, b.model.dtype, b.device)
    n = len(tokens)
    causal = torch.ones((n, n), dtype=torch.bool, device=b.device).tril()[None, None]
    b.forward_tokens += n
    with torch.inference_mode():
        b.model(input_ids=torch.tensor([list(tokens)], device=b.device), attention_mask=causal,
                position_ids=torch.arange(n, device=b.device)[None], past_key_values=state, cai_state=state,
                use_cache=True, logits_to_keep=1)
    kv = PrefixKV(tokens, [(k[0], v[0]) for k, v in zip(state.k, state.v)])
    b._cache[tokens] = kv
    while len(b._cache) > b._cache_slots:
        b._cache.popitem(last=False)
    return kv


def forward(b: "TransformersBackend", state: DecodeState, ids, pos, mask):
    """Logits of the last position of each row (``[rows, vocab]``, float32)."""
    b.forward_tokens += ids.numel()
    out = b.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=state, cai_state=state,
                  use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :].float()


def shared_prefix(b: "TransformersBackend", seqs: list[list[int]]) -> PrefixKV | None:
    if not b.prefix_cache:
        return None
    p = min(b._common_prefix(seqs), min(len(s) for s in seqs) - 1)
    return prefix_kv(b, tuple(seqs[0][:p])) if p >= b.min_prefix_tokens else None


def prefill(b: "TransformersBackend", seqs: list[list[int]], extra: int, store: RowStore | None,
            save_to: RowStore | None = None):
    """Lay the rows out, copy reused keys/values in, prefill the rest. Returns (state, valid, next_pos, logits, meta).

    ``extra`` columns are left free after the prompts (for generated tokens); with ``save_to`` each row's keys and
    values are kept there.
    """
    dev = b.device
    prefix = shared_prefix(b, seqs)
    P = prefix.length if prefix is not None else 0
    B = len(seqs)
    reuse: list[tuple[RowEntry | None, int]] = []
    for s in seqs:
        e, n = store.match(s, P + MIN_REUSE) if store is not None else (None, 0)
        n = min(n, len(s) - 1)  # at least one token is prefilled, for its logits
        reuse.append((e, n) if e is not None and n - P >= MIN_REUSE else (None, P))
    R = max(n - P for _, n in reuse)
    U = max(len(s) - n for s, (_, n) in zip(seqs, reuse))
    width = R + U + extra
    state = DecodeState(b.model.config, B, width, prefix, b.model.dtype, dev)
    valid = torch.zeros((B, width), dtype=torch.bool, device=dev)
    ids = torch.full((B, U), b.pad_id, dtype=torch.long)
    pos = torch.zeros((B, U), dtype=torch.long)
    for i, (s, (e, n)) in enumerate(zip(seqs, reuse)):
        if e is not None:
            r = n - P
            for layer in range(len(state.k)):
                k, v = e.kv(layer, P, n)
                state.k[layer][i, :, R - r:R] = k
                state.v[layer][i, :, R - r:R] = v
            valid[i, R - r:R] = True
            b.stats.cached_prefix_tokens += r
            b.reused_row_tokens += r
        u = len(s) - n
        ids[i, U - u:] = torch.tensor(s[n:])
        pos[i, U - u:] = torch.arange(n, len(s))
        valid[i, R + U - u:R + U] = True
    b.stats.cached_prefix_tokens += P * B
    ids, pos = ids.to(dev), pos.to(dev)
    causal = torch.arange(R + U, device=dev)[None, :] <= torch.arange(R, R + U, device=dev)[:, None]  # [U, R+U]
    logits = []
    with torch.inference_mode():
        for a, z, w in _chunks([len(s) - n for s, (_, n) in zip(seqs, reuse)], b.prefill_tokens):
            # a chunk runs only its own widest row's last w columns: no padding wider than the chunk needs
            state.rows, state.start = slice(a, z), R + U - w
            mask = valid[a:z, None, None, :R + U] & causal[None, None, U - w:]
            logits.append(forward(b, state, ids[a:z, U - w:], pos[a:z, U - w:], mask))
    state.rows, state.start = slice(None), R
    if save_to is not None:
        for i, s in enumerate(seqs):
            save_to.add(_entry(state, i, valid[i, :R + U], R + U, 0, tuple(s), prefix))
    next_pos = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=dev)
    return state, valid, next_pos, torch.cat(logits), (prefix, R, U)


def _chunks(widths: list[int], budget: int) -> list[tuple[int, int, int]]:
    """Consecutive row ranges ``(a, z, w)`` for prefill calls: each holds rows while rows x widest row (``w``) stays
    within ``budget`` tokens (at least one row per call)."""
    out, a = [], 0
    while a < len(widths):
        z, w = a + 1, widths[a]
        while z < len(widths) and (z + 1 - a) * max(w, widths[z]) <= budget:
            w = max(w, widths[z])
            z += 1
        out.append((a, z, w))
        a = z
    return out


def _entry(state: DecodeState, j: int, prompt_cols, start: int, n_gen: int, tokens: tuple[int, ...],
           prefix: PrefixKV | None) -> RowEntry:
    """Row ``j``'s keys/values: its prompt columns, then its first ``n_gen`` generated columns from ``start``."""
    cols = torch.cat([prompt_cols.nonzero().squeeze(1), torch.arange(start, start + n_gen, device=prompt_cols.device)])
    own = [(k[j].index_select(1, cols), v[j].index_select(1, cols)) for k, v in zip(state.k, state.v)]
    return RowEntry(tokens, prefix, own)


def generate_batch(b: "TransformersBackend", seqs: list[list[int]], params: GenParams, seeds: list[int],
                   store: RowStore | None, new_store: RowStore | None) -> list[Completion]:
    """Generate for one batch; finished rows leave it, and each row's keys/values go to ``new_store``."""
    dev = b.device
    B, max_new = len(seqs), params.max_new_tokens
    state, valid, next_pos, logits, (prefix, R, U) = prefill(b, seqs, max_new, store)
    gens = None if params.greedy else [torch.Generator(device=dev).manual_seed(s) for s in seeds]
    stops = [s for s in params.stop if s]
    b._stop_window = 8 + max((len(s) for s in stops), default=0)
    alive = list(range(B))  # original row index of each live row
    out_tokens: list[list[int]] = [[] for _ in range(B)]
    finished = [False] * B
    eos = torch.tensor(sorted(b.eos_ids), device=dev)
    penalize = params.repetition_penalty != 1.0
    seen = torch.zeros((B, b.model.config.vocab_size), dtype=torch.bool, device=dev) if penalize else None
    fed = 0  # generated tokens written to the cache so far (the same column for every live row)

    def save(j: int, r: int) -> None:
        if new_store is not None:
            n = min(len(out_tokens[r]), fed)
            new_store.add(_entry(state, j, valid[j, :R + U], R + U, n, tuple(seqs[r]) + tuple(out_tokens[r][:n]), prefix))

    with torch.inference_mode():
        for step in range(max_new):
            if seen is not None:
                rp = params.repetition_penalty
                logits = torch.where(seen, torch.where(logits > 0, logits / rp, logits * rp), logits)
            nxt = b._pick(logits, params, None if gens is None else [gens[r] for r in alive])
            if seen is not None:
                seen[torch.arange(len(nxt), device=dev), nxt] = True
            done_now = torch.isin(nxt, eos).tolist()
            nl = nxt.tolist()
            for j, r in enumerate(alive):
                if not finished[r]:
                    if done_now[j]:
                        finished[r] = True
                    else:
                        out_tokens[r].append(nl[j])
                        if stops and b._stopped(out_tokens[r], stops):
                            finished[r] = True
            keep = [not finished[r] for r in alive]
            if not any(keep) or step == max_new - 1:
                break
            if sum(keep) <= len(keep) * 3 // 4:  # compact: finished rows leave every tensor and the cache
                for j, r in enumerate(alive):
                    if not keep[j]:
                        save(j, r)
                idx = torch.tensor([j for j, k in enumerate(keep) if k], device=dev)
                alive = [alive[j] for j in idx.tolist()]
                nxt, valid, next_pos = nxt[idx], valid[idx], next_pos[idx]
                if seen is not None:
                    seen = seen[idx]
                state.keep_rows(idx)
            col = R + U + fed
            valid[:, col] = True
            state.start = col
            logits = forward(b, state, nxt.unsqueeze(1), next_pos.unsqueeze(1), valid[:, None, None, :col + 1])
            next_pos = next_pos + 1
            fed += 1
    for j, r in enumerate(alive):
        save(j, r)
    return completions(b, seqs, out_tokens, finished, stops)


def completions(b, seqs, out_tokens, finished, stops) -> list[Completion]:
    """Decode each row's tokens into a Completion (stop strings cut, empty text a failed row) and count them."""
    comps = []
    for r, s in enumerate(seqs):
        toks = out_tokens[r]
        finish = "stop" if finished[r] else "length"
        text = b.tok.decode(toks, skip_special_tokens=True)
        cuts = [k for k in (text.find(stop) for stop in stops) if k >= 0]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        reason = empty_reason(text)
        if reason is not None:
            if not toks:
                reason = "empty completion (the model ended its answer at once)"
            comps.append(failed_completion(reason, len(s), len(toks)))
        else:
            comps.append(Completion(text=text.strip(), prompt_tokens=len(s), completion_tokens=len(toks), finish_reason=finish))
        b.stats.requests += 1
        b.stats.prompt_tokens += len(s)
        b.stats.completion_tokens += len(toks)
    return comps


#: Sequences of one call that share at least this many tokens past the call's common prefix have them prefilled once.
MIN_GROUP = 32


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_nodes(seqs: list[list[int]], base: int) -> list[list[tuple[int, ...]]]:
    """The prefixes worth prefilling once for ``seqs`` (sorted lexicographically), in waves: shallow ones first.

    The prefixes are the branch points of the sequences' token trie (the common prefix of each pair of neighbours in
    sorted order), e.g. the request and question that both orders of a comparison share, and, under it, the first
    answer that two comparisons of the same model share. A branch point is kept when it is at least ``MIN_GROUP``
    tokens longer than the deepest kept branch point above it (``base`` at the top); wave ``d`` holds the kept points
    with ``d`` kept points above them, so every wave reuses the keys and values of the one before.
    """
    found = set()
    for a, c in zip(seqs, seqs[1:]):
        n = common_prefix_len(a, c)
        if n >= base + MIN_GROUP:
            found.add(tuple(a[: n - 1]))  # one token short: a member equal to it still prefills a token for its logits
    kept: list[tuple[tuple[int, ...], int]] = []  # (prefix, depth)
    for node in sorted(found, key=len):
        above = [(p, d) for p, d in kept if len(p) < len(node) and node[: len(p)] == p]
        parent_len, depth = max(((len(p), d + 1) for p, d in above), default=(base, 0))
        if len(node) - parent_len >= MIN_GROUP:
            kept.append((node, depth))
    waves: list[list[tuple[int, ...]]] = [[] for _ in range(1 + max((d for _, d in kept), default=-1))]
    for node, d in kept:
        waves[d].append(node)
    return waves


def last_logits(b: "TransformersBackend", seqs: list[list[int]], store: RowStore | None) -> torch.Tensor:
    """Log-probabilities of the next token after each sequence (``[len(seqs), vocab]``), with no generation.

    Sequences that share a long prefix are grouped, and inside a group every shared prefix is prefilled once, shallow
    ones first (:func:`shared_nodes`): the two orders of a comparison share the request and the question, and
    comparisons of one model with several others also share that model's answer when it comes first. Each member is
    then prefilled only from its deepest shared prefix on. Work goes in windows of about ``batch_size`` sequences, so
    the kept keys/values stay bounded.
    """
    out = torch.empty((len(seqs), b.model.config.vocab_size), dtype=torch.float32)
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])  # lexicographic: shared prefixes become neighbours
    base = b._common_prefix(seqs) if seqs else 0
    groups: list[tuple[int, list[int]]] = []  # (group prefix length, members)
    for i in order:
        if groups:
            n = min(groups[-1][0], common_prefix_len(seqs[groups[-1][1][-1]], seqs[i]))
            if n >= base + MIN_GROUP:
                groups[-1] = (n, groups[-1][1] + [i])
                continue
        groups.append((len(seqs[i]), [i]))
    groups.sort(key=lambda g: max(len(seqs[i]) for i in g[1]))
    window: list[tuple[int, list[int]]] = []
    for k, g in enumerate(groups):
        window.append(g)
        if sum(len(m) for _, m in window) < b.batch_size and k < len(groups) - 1:
            continue
        rows = RowStore(budget_tokens=1 << 62, entries=list(store.entries) if store is not None else [])
        waves: list[list[tuple[int, ...]]] = []  # wave d of every group in the window, prefilled as one batch
        for _, m in window:
            for d, wave in enumerate(shared_nodes(sorted(seqs[i] for i in m), base)):
                waves.extend([] for _ in range(d + 1 - len(waves)))
                waves[d].extend(wave)
        for wave in waves:
            prefill(b, sorted((list(p) for p in wave), key=len), 0, rows, save_to=rows)
        nodes = [p for wave in waves for p in wave]

        def own(i: int) -> int:  # tokens member i still prefills past its deepest shared prefix
            s = seqs[i]
            return len(s) - max((len(p) for p in nodes if len(p) < len(s) and tuple(s[:len(p)]) == p), default=base)

        members = sorted((i for _, m in window for i in m), key=own)  # similar widths share a prefill call
        logits = prefill(b, [seqs[i] for i in members], 0, rows)[3]
        out[torch.tensor(members)] = torch.log_softmax(logits, dim=-1).cpu()
        window = []
    return out
