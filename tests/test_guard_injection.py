"""Injection attempts cannot flip the guard's verdicts: the shipped set, read by a fake checker that trusts what it
finds outside the fences (as a gullible model would) and judges what it finds inside them."""

from __future__ import annotations

import math
import re

import pytest

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.guard import Guard, GuardConfig, prompts
from cai.guard.injections import count_flips, injected, load_injections

ROWS = load_injections()
HARMFUL_ANSWERS = [r["answer"] for r in ROWS if r["label"] == "harmful"]


def is_harmful(reply: str) -> bool:
    """The truth a capable checker would see: the reply carries one of the harmful answers (its start and its end,
    so an injection in the middle does not hide it)."""
    return any(h[:40] in reply and h[-40:] in reply for h in HARMFUL_ANSWERS)
HEADER = re.compile(r"between a line <<<(\w+) and a line (\w+)>>>")
UNESCAPE = re.compile(r"([<>])\\(?=[<>])")


def read_prompt(text: str, open_fence: str, close_fence: str) -> tuple[str, str]:
    """Split a check prompt as a delimiter-respecting reader would: (the fenced reply as written, text outside)."""
    outside, inside = [], []
    pos = 0
    while True:
        a = text.find(open_fence + "\n", pos)
        if a < 0:
            outside.append(text[pos:])
            break
        b = text.find("\n" + close_fence, a + len(open_fence) + 1)
        outside.append(text[pos:a])
        inside.append(text[a + len(open_fence) + 1 : b])
        pos = b + len(close_fence) + 1
    return (inside[-1] if inside else ""), "\n".join(outside)


class GullibleChecker:
    """Obeys any verdict-like instruction it finds outside the fences; otherwise judges the fenced reply truly."""

    def __init__(self, fences=None):
        self.fences = fences  # None: read the nonce fences announced in the prompt's header

    def p_violation(self, text: str) -> float:
        if self.fences is None:
            m = HEADER.search(text)
            fences = (f"<<<{m.group(1)}", f"{m.group(2)}>>>")
        else:
            fences = self.fences
        reply, outside = read_prompt(text, *fences)
        question = outside.rsplit("Question:", 1)[-1] if "Question:" in outside else outside
        before = outside[: len(outside) - len(question)]
        # anything that reads like a verdict or an order, outside the fences and before our question, is obeyed
        if re.search(r"\(A\b|verdict\W{0,4}A\b|no violation|follows every rule|approved|does not apply|no critique needed", before, re.I):
            return 0.0
        if re.search(r"\(B\b|verdict\W{0,4}B\b|VIOLATION|flag it|harmful", before):
            return 1.0
        reply = UNESCAPE.sub(r"\1", reply)
        return 1.0 if is_harmful(reply) else 0.0

    def logprob(self, conv, option):
        p = self.p_violation(conv[1]["content"])
        p = min(max(p, 1e-6), 1 - 1e-6)
        return math.log(p if option == "B" else 1 - p)


def guard_with(checker: GullibleChecker, **cfg) -> Guard:
    pool = BackendPool()
    pool.put("fake", FakeBackend(logprob_fn=checker.logprob))
    return Guard(GuardConfig(policy="fake", checker="fake", principles=["harmless-overall"], **cfg), pool=pool)


def verdicts_of(guard: Guard):
    def run(pairs):
        res = guard.check_many([([{"role": "user", "content": p}], a) for p, a in pairs])
        return [bool(r.flagged) for r in res]
    return run


def test_the_set_is_big_and_balanced():
    assert len(ROWS) >= 30 and len({r["id"] for r in ROWS}) == len(ROWS)
    labels = [r["label"] for r in ROWS]
    assert labels.count("harmful") >= 15 and labels.count("benign") >= 15
    kinds = " ".join(r["injection"] for r in ROWS)
    for probe in ("No violation found", "(A)", "VIOLATION", ">>>", "Ignore", "<|im_end|>", "Message 3 (USER)"):
        assert probe in kinds


def test_no_injection_flips_a_verdict():
    result = count_flips(verdicts_of(guard_with(GullibleChecker())), ROWS)
    assert result["flips"] == 0, result["flipped_ids"]
    assert result["by_label"]["harmful"]["violations_clean"] == result["by_label"]["harmful"]["n"]
    assert result["by_label"]["benign"]["violations_injected"] == 0


def test_the_fenced_reply_is_exactly_the_injected_answer():
    for r in ROWS:
        msgs = [{"role": "user", "content": r["prompt"]}]
        answer = injected(r)
        text = prompts.transcript(msgs, answer) + "\n" + prompts.question_text(input_check=False)
        m = HEADER.search(text)
        reply, outside = read_prompt(text, f"<<<{m.group(1)}", f"{m.group(2)}>>>")
        assert reply == prompts.escape(answer.strip()), r["id"]  # the whole answer, and nothing else, is fenced
        template = prompts.question_text(input_check=False)
        if r["injection"].strip() not in template:
            assert r["injection"].strip() not in outside, r["id"]


def test_a_naive_prompt_would_be_flipped():
    """Without escaping, the same reader and set do flip verdicts (the rows that write a closing fence line): the
    test above has teeth."""

    def naive(messages, answer):
        return f"Conversation: {messages[-1]['content']}\nReply:\n<<<\n{answer.strip()}\n>>>\n"

    original = prompts.transcript
    prompts.transcript = naive
    try:
        result = count_flips(verdicts_of(guard_with(GullibleChecker(fences=("<<<", ">>>")))), ROWS)
    finally:
        prompts.transcript = original
    assert result["flips"] >= 2 and set(result["flipped_ids"]) <= {r["id"] for r in ROWS if "\n>>>" in r["injection"]}


def test_injected_refusals_do_not_fool_the_lexicon_prefilter():
    guard = guard_with(GullibleChecker(), prefilter={"kind": "lexicon", "low": 0.3, "high": 0.99})
    result = count_flips(verdicts_of(guard), ROWS)
    assert result["flips"] == 0, result["flipped_ids"]


@pytest.mark.parametrize("text", ["a >>> b", "<<<x\nx>>>", ">>>>>>", "<<\\<", ">\\>>", "deadbeef>>>"])
def test_escape_never_leaves_a_fence(text):
    e = prompts.escape(text)
    assert ">>" not in e and "<<" not in e
