"""Pieces the speed benchmarks share: the naive baselines, timing, peak memory and how loaded the machine was.

Every benchmark times its fast path and its baseline in alternating repetitions within one process, so that load
from other processes falls on both; it reports wall-clock seconds and this process's CPU seconds (which load
inflates far less), the 1-minute load average before and after, and the peak resident memory.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any, Callable

from cai.backends.base import Backend, Completion, Conversation, GenParams, empty_reason, failed_completion


def machine_state() -> dict:
    """CPU count and 1-minute load average; ``loaded`` when other work kept more than half the cores busy."""
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    return {"cpus": cpus, "loadavg_1m": round(load, 2), "loaded": load > cpus * 0.5}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def matmul_gflops(dtype: str = "float32", seconds: float = 1.0) -> float:
    """This CPU's matrix-product speed in the shape of the embedded model's MLP (4096 x 576 by 576 x 1536), GFLOP/s.

    The ceiling of any forward pass here: a prefill or a wide decode step is made of such products.
    """
    import torch

    dt = getattr(torch, dtype)
    a, w = torch.randn(4096, 576, dtype=dt), torch.randn(576, 1536, dtype=dt)
    torch.matmul(a, w)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, w)
        n += 1
    return round(2 * 4096 * 576 * 1536 * n / (time.perf_counter() - t0) / 1e9, 1)


def body_gflop_per_token(model: Any) -> float:
    """Multiply-adds of the decoder layers per token position, in GFLOP (2 per weight; the LM head and attention
    scores are left out): the model's share of the work that :func:`matmul_gflops` bounds."""
    n = sum(p.numel() for p in model.model.layers.parameters())
    return 2 * n / 1e9


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


class NaiveBackend(Backend):
    """The baseline: one conversation at a time through ``model.generate`` (batch 1, no cache kept between calls)."""

    name = "naive"

    def __init__(self, model: Any, tok: Any):
        super().__init__("naive")
        self.model, self.tok = model, tok

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        import torch

        if not params.greedy:
            raise ValueError("the naive baseline decodes greedily only")
        eos = self.tok.eos_token_id
        out = []
        for conv in conversations:
            prefill = bool(conv) and conv[-1]["role"] == "assistant"
            ids = self.tok.apply_chat_template(conv, add_generation_prompt=not prefill, continue_final_message=prefill,
                                               tokenize=True, return_dict=True, return_tensors="pt")
            with torch.inference_mode():
                gen = self.model.generate(**ids, max_new_tokens=params.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tok.pad_token_id)
            new = gen[0, ids["input_ids"].shape[1]:].tolist()
            ended = eos in new
            toks = new[: new.index(eos)] if ended else new
            text = self.tok.decode(toks, skip_special_tokens=True)
            n_prompt = int(ids["input_ids"].shape[1])
            self.stats.completion_tokens += len(toks)
            if empty_reason(text) is not None:
                out.append(failed_completion("empty completion", n_prompt, len(toks)))
            else:
                out.append(Completion(text.strip(), n_prompt, len(toks), "stop" if ended else "length"))
        return out

    def option_logprobs(self, conversations, options):
        raise NotImplementedError("the naive baseline only generates")


def plain_batched_generate(model: Any, tok: Any, convs: list[Conversation], max_new: int, batch_size: int,
                           temperature: float = 0.0) -> int:
    """Plain batched ``model.generate`` (left padding, prompts in input order); returns the tokens generated."""
    import torch

    tok.padding_side = "left"
    eos = tok.eos_token_id
    total = 0
    for a in range(0, len(convs), batch_size):
        texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs[a:a + batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature else {"do_sample": False}
            gen = model.generate(**enc, max_new_tokens=max_new, pad_token_id=tok.pad_token_id, **sampling)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            total += row.index(eos) if eos in row else len(row)
    return total
