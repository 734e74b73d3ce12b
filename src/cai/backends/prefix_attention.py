"""Attention over one shared prompt prefix plus each row's own tokens, and the per-row KV store that lets a later call
reuse what an earlier one computed.

Why: in SL-CAI every critique prompt of a batch starts with the same ~870 tokens (system prompt and few-shot
demonstrations). A plain KV cache copies that prefix into every row, so each decode step reads it B times. Here the
prefix's keys and values are kept once (``[kv_heads, P, head_dim]``) and every query of the batch is multiplied with
them in one large matrix product; each row's own tokens live in a small per-row cache. The two parts are combined with
the usual log-sum-exp merge, which gives the same softmax as attention over the concatenation.

The kernel is registered as a transformers attention implementation that behaves exactly like ``sdpa`` unless a
:class:`DecodeState` is passed to the forward call (``cai_state=``), so the model stays usable by every other caller.

Each row's own keys and values can be kept after a call (:class:`RowEntry`, in a :class:`RowStore` bounded by a token
budget): a revision prompt that starts with its critique prompt and the critique the model wrote then prefills only the
new tokens ("Revision request: ..."), not the conversation again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: Model families whose attention modules call the attention interface after updating the cache, with no sliding
#: window or logit soft-capping: the kernel below is exact for them.
SUPPORTED_MODEL_TYPES = {"llama", "qwen2", "qwen3", "smollm3"}
_NAME = "cai_shared_prefix"


def install(model: Any) -> bool:
    """Route ``model``'s attention through the shared-prefix kernel; False (nothing changed) when unsupported."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    cfg = model.config
    if getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES or cfg._attn_implementation not in ("sdpa", _NAME):
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return False
    if _NAME not in AttentionInterface._global_mapping:

        def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, cai_state=None, **kwargs):
            if cai_state is None:
                return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                              scaling=scaling, **kwargs)
            return cai_state.attend(module.layer_idx, query, key, value, attention_mask, scaling)

        AttentionInterface.register(_NAME, attention)
        AttentionMaskInterface.register(_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    cfg._attn_implementation = _NAME
    return True


@dataclass
class PrefixKV:
    """Keys and values of a shared prefix, one ``([kv_heads, P, d], [kv_heads, P, d])`` pair per layer."""

    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.layers)


@dataclass
class RowEntry:
    """One row's tokens after a call, with the keys and values of its tokens past the shared prefix it was run with."""

    tokens: tuple[int, ...]
    prefix: PrefixKV | None  # the shared prefix of the batch it came from (positions [0, p0))
    own: list[tuple[torch.Tensor, torch.Tensor]]  # per layer [kv_heads, len(tokens) - p0, d]

    @property
    def p0(self) -> int:
        return self.prefix.length if self.prefix is not None else 0

    def kv(self, layer: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions [start, stop) of this row at one layer."""
        parts_k, parts_v = [], []
        p0 = self.p0
        if start < p0:
            k, v = self.prefix.layers[layer]  # type: ignore[union-attr]
            parts_k.append(k[:, start:min(stop, p0)])
            parts_v.append(v[:, start:min(stop, p0)])
        if stop > p0:
            k, v = self.own[layer]
            a = max(start, p0) - p0
            parts_k.append(k[:, a:stop - p0])
            parts_v.append(v[:, a:stop - p0])
        if len(parts_k) == 1:
            return parts_k[0], parts_v[0]
        return torch.cat(parts_k, 1), torch.cat(parts_v, 1)


@dataclass
class RowStore:
    """Row entries of the latest call, up to ``budget_tokens`` own tokens in all (0 turns reuse off)."""

    budget_tokens: int = 16384
    entries: list[RowEntry] = field(default_factory=list)
    used: int = 0

    def add(self, entry: RowEntry) -> bool:
        n = len(entry.tokens) - entry.p0
        if self.used + n > self.budget_tokens:
            return False
        self.entries.append(entry)
        self.used += n
        return True

    def match(self, seq: list[int], min_len: int) -> tuple[RowEntry | None, int]:
        """The entry sharing the longest token prefix with ``seq`` and that length (0 when none reaches min_len)."""
        import numpy as np

        best, best_n = None, 0
        if not self.entries:
            return None, 0
        a = np.asarray(seq)
        for e in self.entries:
            n = min(len(a), len(e.tokens))
            if n <= best_n or n < min_len:
                continue
            eq = a[:n] == np.asarray(e.tokens[:n])
            lcp = n if eq.all() else int(eq.argmin())
            if lcp > best_n:
                best, best_n = e, lcp
        return (best, best_n) if best_n >= min_len else (None, 0)


class DecodeState:
    """The own-token cache of a batch (a transformers ``Cache`` stand-in) and the attention over prefix + own tokens.

    Own tokens live in columns ``[0, width)`` of per-layer buffers ``[B, kv_heads, width, d]``; a forward call writes its
    tokens at columns ``[start, start + q)`` of the rows ``rows`` and attends with the 4-D boolean mask it is given
    (``[rows, 1, q, start + q]``, True = may attend) plus, without any mask, the whole shared prefix.
    """

    is_compileable = False

    def __init__(self, model_config: Any, batch: int, width: int, prefix: PrefixKV | None, dtype, device):
        n_layers = model_config.num_hidden_layers
        kvh = model_config.num_key_value_heads
        d = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
        self.k = [torch.zeros(batch, kvh, width, d, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(batch, kvh, width, d, dtype=dtype, device=device) for _ in range(n_layers)]
        self.prefix = prefix
        self.start = 0
        self.rows: slice | torch.Tensor = slice(None)

    # --- the parts of the Cache interface the decoder layers use ----------------------------------------------------
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        end = self.start + key_states.shape[2]
        k, v = self.k[layer_idx], self.v[layer_idx]
        if isinstance(self.rows, slice):
            k[self.rows, :, self.start:end] = key_states
            v[self.rows, :, self.start:end] = value_states
            return k[self.rows, :, :end], v[self.rows, :, :end]
        raise TypeError("DecodeState.rows must be a slice")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.start

    def keep_rows(self, idx: torch.Tensor) -> None:
        """Drop every row not in ``idx`` (finished rows leave the batch)."""
        self.k = [k.index_select(0, idx) for k in self.k]
        self.v = [v.index_select(0, idx) for v in self.v]

    # --- attention ---------------------------------------------------------------------------------------------------
    def attend(self, layer: int, query, key, value, mask, scaling):
        """softmax(q·[prefix; own]ᵀ)·[prefix; own] for one layer, without repeating the prefix per row."""
        if query.device.type == "cpu":
            return self._attend_cpu(layer, query, key, value, mask, scaling)
        B, H, Lq, d = query.shape
        kvh = key.shape[1]
        G = H // kvh
        qg = query.reshape(B, kvh, G * Lq, d)  # query head h uses key/value head h // G
        s_o = torch.matmul(qg, key.transpose(-1, -2)).float() * scaling  # [B, kvh, G*Lq, T]
        low = torch.finfo(s_o.dtype).min
        if mask is not None:
            T = key.shape[2]
            m = mask[:, :, None].expand(B, 1, G, Lq, T).reshape(B, 1, G * Lq, T) if Lq > 1 else mask
            s_o = s_o.masked_fill(~m, low)
        mx = s_o.amax(-1, keepdim=True)
        if self.prefix is not None:
            pk, pv = self.prefix.layers[layer]
            qp = qg.transpose(0, 1).reshape(kvh, B * G * Lq, d)  # every query of the batch in one product
            s_p = (torch.matmul(qp, pk.transpose(-1, -2)).float() * scaling).view(kvh, B, G * Lq, -1).transpose(0, 1)
            mx = torch.maximum(mx, s_p.amax(-1, keepdim=True))
            e_p = torch.exp(s_p - mx)
            e_o = torch.exp(s_o - mx)
            den = e_p.sum(-1, keepdim=True) + e_o.sum(-1, keepdim=True)
            out_p = torch.matmul(e_p.transpose(0, 1).reshape(kvh, B * G * Lq, -1).to(pv.dtype), pv)
            out = torch.matmul(e_o.to(value.dtype), value).float() + out_p.view(kvh, B, G * Lq, d).transpose(0, 1).float()
        else:
            e_o = torch.exp(s_o - mx)
            den = e_o.sum(-1, keepdim=True)
            out = torch.matmul(e_o.to(value.dtype), value).float()
        out = (out / den).to(query.dtype).view(B, kvh, G, Lq, d).reshape(B, H, Lq, d)
        return out.transpose(1, 2).contiguous(), None

    def _attend_cpu(self, layer: int, query, key, value, mask, scaling):
        """The same on CPU with torch's fused attention kernel, which also returns each query's log-sum-exp: the own
        part and the prefix part (every query of the batch as one sequence against the one prefix) are each one call,
        merged by their log-sum-exps."""
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        B, H, Lq, d = query.shape
        kvh = key.shape[1]
        G = H // kvh
        qg = query.reshape(B, kvh, G * Lq, d)
        add = None
        if mask is not None:
            T = key.shape[2]
            m = mask[:, :, None].expand(B, 1, G, Lq, T).reshape(B, 1, G * Lq, T)
            add = torch.zeros(m.shape, dtype=query.dtype, device=query.device).masked_fill_(~m, float("-inf"))
        out, lse = flash(qg, key, value, 0.0, False, attn_mask=add, scale=scaling)
        if self.prefix is not None:
            pk, pv = self.prefix.layers[layer]
            qp = qg.transpose(0, 1).reshape(1, kvh, B * G * Lq, d)
            out_p, lse_p = flash(qp, pk[None], pv[None], 0.0, False, scale=scaling)
            out_p = out_p.view(kvh, B, G * Lq, d).transpose(0, 1)
            lse_p = lse_p.view(kvh, B, G * Lq).transpose(0, 1)
            mx = torch.maximum(lse, lse_p)
            w_o, w_p = torch.exp(lse - mx)[..., None], torch.exp(lse_p - mx)[..., None]
            out = (out.float() * w_o + out_p.float() * w_p) / (w_o + w_p)
        out = out.to(query.dtype).view(B, kvh, G, Lq, d).reshape(B, H, Lq, d)
        return out.transpose(1, 2).contiguous(), None
