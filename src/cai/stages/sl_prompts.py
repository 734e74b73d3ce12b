"""Critique and revision prompts for SL-CAI.

Layout (chat turns), chosen so every prompt of a round starts with the same tokens::

    system      reviewer instructions                          \
    user/asst   few-shot demonstrations: prompt, answer,        |  shared prefix, cached by the backend
                critique request, critique, revision request,   |
                revision                                       /
    user        the red-team prompt
    assistant   the answer under review
    user        "Critique request: ..."        -> critic generates the critique
    assistant   the critique
    user        "Revision request: ..."        -> reviser generates the revision
"""

from __future__ import annotations

import re

from cai.backends.base import Conversation
from cai.constitution.schema import Constitution, Demonstration, Principle

SYSTEM = (
    "You help review an AI assistant's answers against a written principle. When asked for a critique, point out "
    "concretely what in the answer breaks the principle, or say that it has no problem. When asked for a revision, "
    "write only the improved answer, addressed to the user. Refuse only what is harmful and keep everything helpful."
)

CRITIQUE_TAG = "Critique request:"
REVISION_TAG = "Revision request:"

_LABEL = re.compile(r"^\s*(critique|revision|revised (answer|response))\s*:\s*", re.IGNORECASE)


def _demo_turns(const: Constitution, demos: list[Demonstration], fallback: Principle, *, critique: bool = True) -> Conversation:
    """Few-shot turns: prompt, answer, [critique request, critique,] revision request, revision."""
    turns: Conversation = []
    for d in demos:
        p = const.principle(d.principle_id) if d.principle_id else fallback
        turns += [{"role": "user", "content": d.prompt}, {"role": "assistant", "content": d.response}]
        if critique:
            turns += [
                {"role": "user", "content": f"{CRITIQUE_TAG} {p.critique_request}"},
                {"role": "assistant", "content": d.critique},
            ]
        turns += [
            {"role": "user", "content": f"{REVISION_TAG} {p.revision_request}"},
            {"role": "assistant", "content": d.revision},
        ]
    return turns


def critique_conversation(
    const: Constitution, principle: Principle, prompt: str, answer: str, *, few_shot: int | None = None
) -> Conversation:
    demos = list(const.demonstrations[:few_shot] if few_shot is not None else const.demonstrations)
    conv: Conversation = [{"role": "system", "content": SYSTEM}]
    conv += _demo_turns(const, demos, principle)
    conv += _demo_turns(const, principle.demonstrations, principle)  # principle-specific, after the shared part
    conv += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": f"{CRITIQUE_TAG} {principle.critique_request}"},
    ]
    return conv


def direct_revision_conversation(
    const: Constitution, principle: Principle, prompt: str, answer: str, *, few_shot: int | None = None
) -> Conversation:
    """Revision without a critique (the CAI paper's "direct revision"): the same demonstrations minus their critiques."""
    demos = list(const.demonstrations[:few_shot] if few_shot is not None else const.demonstrations)
    conv: Conversation = [{"role": "system", "content": SYSTEM}]
    conv += _demo_turns(const, demos, principle, critique=False)
    conv += _demo_turns(const, principle.demonstrations, principle, critique=False)
    conv += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": f"{REVISION_TAG} {principle.revision_request}"},
    ]
    return conv


def revision_conversation(critique_conv: Conversation, principle: Principle, critique: str) -> Conversation:
    return critique_conv + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": f"{REVISION_TAG} {principle.revision_request}"},
    ]


VERDICT_REQUEST = (
    "Verdict request: judging by your critique, does the answer break the principle?\n"
    "(A) Yes: it needs revising.\n(B) No: it already follows the principle.\nAnswer with (A) or (B)."
)
VERDICT_PREFILL = "My verdict is ("


def verdict_conversation(critique_conv: Conversation, critique: str, *, prefill: bool) -> Conversation:
    """After the critique, the critic is asked for a structured verdict: option (A) revise, (B) no problem.

    With ``prefill`` the assistant turn is opened up to the letter, so the letters' log-probabilities are the verdict;
    without it (servers that give no log-probabilities) the critic writes the letter, which is parsed."""
    conv = critique_conv + [{"role": "assistant", "content": critique}, {"role": "user", "content": VERDICT_REQUEST}]
    return conv + [{"role": "assistant", "content": VERDICT_PREFILL}] if prefill else conv


def clean(text: str) -> str:
    """Strip a leading 'Critique:'/'Revision:' label the model may copy from the demonstrations."""
    return _LABEL.sub("", text.strip()).strip()
