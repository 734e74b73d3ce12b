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
from dataclasses import dataclass

from cai.backends.base import Conversation
from cai.constitution.schema import Constitution, Demonstration, Principle

SYSTEM = (
    "You help review an AI assistant's answers against a written principle. When asked for a critique, point out "
    "concretely what in the answer breaks the principle, or say that it has no problem. When asked for a revision, "
    "write only the improved answer, addressed to the user. Refuse only what is harmful and keep everything helpful."
)

CRITIQUE_TAG = "Critique request:"
REVISION_TAG = "Revision request:"

_LABEL = re.compile(r"^\s*(critique|revision|revised (answer|response)|crítica|revisión|respuesta revisada)\s*:\s*",
                    re.IGNORECASE)


def _demo_turns(const: Constitution, demos: list[Demonstration], fallback: Principle, *, critique: bool = True) -> Conversation:
    """Few-shot turns: prompt, answer, [critique request, critique,] revision request, revision."""
    t = sl_templates_for(const.language)
    turns: Conversation = []
    for d in demos:
        p = const.principle(d.principle_id) if d.principle_id else fallback
        turns += [{"role": "user", "content": d.prompt}, {"role": "assistant", "content": d.response}]
        if critique:
            turns += [
                {"role": "user", "content": f"{t.critique_tag} {p.critique_request}"},
                {"role": "assistant", "content": d.critique},
            ]
        turns += [
            {"role": "user", "content": f"{t.revision_tag} {p.revision_request}"},
            {"role": "assistant", "content": d.revision},
        ]
    return turns


def critique_conversation(
    const: Constitution, principle: Principle, prompt: str, answer: str, *, few_shot: int | None = None
) -> Conversation:
    demos = list(const.demonstrations[:few_shot] if few_shot is not None else const.demonstrations)
    t = sl_templates_for(const.language)
    conv: Conversation = [{"role": "system", "content": t.system}]
    conv += _demo_turns(const, demos, principle)
    conv += _demo_turns(const, principle.demonstrations, principle)  # principle-specific, after the shared part
    conv += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": f"{t.critique_tag} {principle.critique_request}"},
    ]
    return conv


def direct_revision_conversation(
    const: Constitution, principle: Principle, prompt: str, answer: str, *, few_shot: int | None = None
) -> Conversation:
    """Revision without a critique (the CAI paper's "direct revision"): the same demonstrations minus their critiques."""
    demos = list(const.demonstrations[:few_shot] if few_shot is not None else const.demonstrations)
    t = sl_templates_for(const.language)
    conv: Conversation = [{"role": "system", "content": t.system}]
    conv += _demo_turns(const, demos, principle, critique=False)
    conv += _demo_turns(const, principle.demonstrations, principle, critique=False)
    conv += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": f"{t.revision_tag} {principle.revision_request}"},
    ]
    return conv


def revision_conversation(critique_conv: Conversation, principle: Principle, critique: str) -> Conversation:
    """The critique conversation continued with the critique and the revision request, in its language."""
    return critique_conv + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": f"{templates_of(critique_conv).revision_tag} {principle.revision_request}"},
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
    t = templates_of(critique_conv)
    conv = critique_conv + [{"role": "assistant", "content": critique}, {"role": "user", "content": t.verdict_request}]
    return conv + [{"role": "assistant", "content": t.verdict_prefill}] if prefill else conv


@dataclass(frozen=True)
class SLTemplates:
    """The fixed wording of critique and revision prompts in one language (a constitution's ``language``)."""

    language: str
    system: str
    critique_tag: str
    revision_tag: str
    verdict_request: str
    verdict_prefill: str


SL_TEMPLATES: dict[str, SLTemplates] = {
    "en": SLTemplates("en", SYSTEM, CRITIQUE_TAG, REVISION_TAG, VERDICT_REQUEST, VERDICT_PREFILL),
    "es": SLTemplates(
        "es",
        "Ayudas a revisar las respuestas de un asistente de IA según un principio escrito. Cuando se te pida una "
        "crítica, señala de forma concreta qué parte de la respuesta incumple el principio, o di que no tiene ningún "
        "problema. Cuando se te pida una revisión, escribe solo la respuesta mejorada, dirigida al usuario. Rechaza "
        "solo lo que cause daño y conserva todo lo que sea útil.",
        "Petición de crítica:",
        "Petición de revisión:",
        "Petición de veredicto: a juzgar por tu crítica, ¿la respuesta incumple el principio?\n"
        "(A) Sí: hay que revisarla.\n(B) No: ya cumple el principio.\nResponde con (A) o (B).",
        "Mi veredicto es (",
    ),
}


def sl_templates_for(language: str) -> SLTemplates:
    """Templates for a BCP 47 tag ('es-MX' uses 'es'); English when the language has none."""
    tag = (language or "en").strip().lower()
    return SL_TEMPLATES.get(tag) or SL_TEMPLATES.get(tag.split("-")[0]) or SL_TEMPLATES["en"]


def templates_of(conv: Conversation) -> SLTemplates:
    """The templates a conversation was built with, read from its system turn (English when none matches)."""
    system = conv[0]["content"] if conv and conv[0]["role"] == "system" else None
    return next((t for t in SL_TEMPLATES.values() if t.system == system), SL_TEMPLATES["en"])


def clean(text: str) -> str:
    """Strip a leading 'Critique:'/'Revision:' label the model may copy from the demonstrations."""
    return _LABEL.sub("", text.strip()).strip()
