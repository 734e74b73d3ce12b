"""A vLLM logits processor: the toolkit's repetition penalty, on the answer's tokens only.

vLLM's own ``repetition_penalty`` also penalizes every prompt token, so a request whose prompt asks for a refusal
makes the refusal's words less likely, and the chat template's end-of-turn token (in every prompt) makes answers run
to the token limit. The toolkit's local backends penalize only the tokens the answer has produced. This processor
does the same inside vLLM, so that one config gives the same behaviour on both.

It runs in the vLLM server's own Python (it imports only vLLM and torch). Start the server with its folder on the
path and the processor named::

    PYTHONPATH=$(cai-resources)/vllm vllm serve MODEL --logits-processors cai_answer_penalty:AnswerRepetitionPenalty

(``scripts/serve_vllm_cpu.sh`` does this.) A request asks for it with ``vllm_xargs: {"answer_repetition_penalty":
1.2}``; requests without that key are untouched. A logit ``l`` of a token the answer already holds becomes ``l / p``
when positive and ``l * p`` otherwise, as in the transformers backend.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

KEY = "answer_repetition_penalty"


def _penalty(params) -> float | None:
    extra = getattr(params, "extra_args", None) or {}
    value = extra.get(KEY)
    if value is None:
        return None
    value = float(value)
    return value if value != 1.0 else None


class _AnswerPenalty:
    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if not output_ids:
            return logits
        idx = torch.tensor(sorted(set(output_ids)), dtype=torch.long, device=logits.device)
        seen = logits[idx]
        logits[idx] = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        return logits


class AnswerRepetitionPenalty(AdapterLogitsProcessor):
    """Per request: divide (or multiply, when negative) the logits of tokens the answer already produced."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        extra = getattr(sampling_params, "extra_args", None) or {}
        if KEY in extra:
            try:
                ok = float(extra[KEY]) >= 1.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"vllm_xargs.{KEY} must be a number >= 1 (1 turns it off), got {extra[KEY]!r}")

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        penalty = _penalty(params)
        return _AnswerPenalty(penalty) if penalty else None
