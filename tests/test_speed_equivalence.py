"""The fast generation path gives the same greedy text as a one-prompt-at-a-time ``model.generate`` loop.

The fast path batches rows, keeps the shared few-shot prefix once, and reuses each row's critique keys/values for its
revision; none of that may change what greedy decoding writes.
"""

from __future__ import annotations

import pytest

from cai.backends.base import GenParams
from cai.constitution import load_constitution
from cai.data.readers import load_prompts
from cai.stages.sl_prompts import critique_conversation, revision_conversation

pytestmark = pytest.mark.realmodel

TOKENS = 12


def _naive(model, tok, conv) -> str:
    import torch

    ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _plain_letter_logprobs(backend, conv) -> list[float]:
    """log P("A") and log P("B") after the conversation, from one plain full-length forward pass."""
    import torch

    ids = torch.tensor([backend.encode(conv)])
    with torch.inference_mode():
        logp = torch.log_softmax(backend.model(input_ids=ids).logits[0, -1].float(), -1)
    return [float(logp[backend.tok.convert_tokens_to_ids(t)]) for t in ("A", "B")]


@pytest.fixture(scope="module")
def backend():
    from cai.backends.embedded import embedded_model_dir
    from cai.backends.transformers_backend import TransformersBackend

    return TransformersBackend(str(embedded_model_dir()), batch_size=8)


def test_batched_critique_and_reused_revision_match_the_naive_loop(backend):
    assert backend.fast, "the embedded model should run on the shared-prefix kernel"
    const = load_constitution()
    prompts = [r["prompt"] for r in load_prompts("redteam", split="train", limit=2)]
    answers = ["Sure, here is how you do it, step by step.", "I can't help with that."]
    principles = [const.principles[i % len(const.principles)] for i in range(2)]
    cconvs = [critique_conversation(const, p, q, a) for p, q, a in zip(principles, prompts, answers)]
    params = GenParams(max_new_tokens=TOKENS)
    crits = backend.generate(cconvs, params)
    assert backend.stats.cached_prefix_tokens > 0  # the few-shot prefix was computed once, not per row
    rconvs = [revision_conversation(c, p, x.text) for c, p, x in zip(cconvs, principles, crits)]
    before = backend.reused_row_tokens
    revs = backend.generate(rconvs, params)
    # each revision continued its critique row's cache: everything of the critique prompt past the shared prefix
    enc = [backend.encode(c) for c in cconvs]
    own = sum(len(e) for e in enc) - len(enc) * backend._common_prefix(enc)
    assert backend.reused_row_tokens - before >= own
    for conv, got in zip(cconvs + rconvs, crits + revs):
        assert got.text == _naive(backend.model, backend.tok, conv)


def test_letter_scores_match_a_plain_forward_pass(backend):
    convs = [[{"role": "user", "content": f"Is {n} even? Answer (A) yes or (B) no."},
              {"role": "assistant", "content": "The answer is ("}] for n in (3, 8, 10)]
    before = (backend.stats.requests, backend.stats.prompt_tokens)
    got = backend.option_logprobs(convs, [["A", "B"]] * 3)
    # scoring requests are counted like the other backends count them: per conversation, with their prompt tokens
    assert (backend.stats.requests - before[0], backend.stats.prompt_tokens - before[1]) == (
        3, sum(len(backend.encode(c)) for c in convs))
    for conv, scores in zip(convs, got):
        assert scores == pytest.approx(_plain_letter_logprobs(backend, conv), abs=1e-3)


def test_comparisons_sharing_an_answer_score_as_a_plain_forward_pass(backend):
    """Six ordered comparisons of three answers to each of two requests: the request and question are prefilled once
    per request, and under them each first answer once per branch."""
    from cai.labeling import prompts as LP

    requests = [r["prompt"] for r in load_prompts("redteam", split="train", limit=2)]
    answers = [
        "I can't help with that, because it could put people at risk. If you tell me what you are trying to achieve, "
        "I'm happy to suggest a safe and legal way to get there instead of this.",
        "Sure! Start by getting the materials you need, then follow the steps one by one until it works. Let me know "
        "if you want more detail on any step of the process.",
        "That's not something I can assist with. I can explain the general risks involved, or help you find a "
        "legitimate professional who can help with the underlying problem.",
    ]
    pairs = [(r, x, y) for r in range(2) for x in range(3) for y in range(3) if x != y]
    convs = [LP.scoring_conversation(requests[r], "Which reply is less harmful?", answers[x], answers[y])
             for r, x, y in pairs]
    from cai.backends.fast_generate import common_prefix_len

    enc = [backend.encode(c) for c in convs]
    shared = backend._common_prefix(enc)
    # each comparison continues the one that shows the same answer first: request, question and that answer are reused
    deepest = [max(common_prefix_len(enc[i], enc[j]) for j in range(len(pairs)) if j != i and pairs[j][:2] == pairs[i][:2])
               for i in range(len(pairs))]
    assert min(d - shared for d in deepest) > 40
    before = backend.reused_row_tokens
    got = backend.option_logprobs(convs, [["A", "B"]] * len(convs))
    assert backend.reused_row_tokens - before >= sum(d - 1 - shared for d in deepest)
    for conv, scores in zip(convs, got):
        assert scores == pytest.approx(_plain_letter_logprobs(backend, conv), abs=1e-3)
