"""Word lists behind ``cai constitution lint``'s wording rules, one set per constitution language.

Each list is matched as whole words, case-insensitively. A language without a set here gets only the rules that
need no words (near-duplicates, length, model checks); lint says so once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Lexicon:
    """The words one language's wording rules look for."""

    critique_verbs: tuple[str, ...]
    """A critique request asks for one of these (identify, point out, ...)."""
    revision_verbs: tuple[str, ...]
    """A revision request asks for one of these (rewrite, revise, ...)."""
    selectors: tuple[str, ...]
    """A preference question selects among answers with one of these (which, choose, ...)."""
    answers_plural: tuple[str, ...]
    """Words that show the question is about several answers (responses, these, both, ...)."""
    yes_no_openers: tuple[str, ...]
    """A question opening with one of these asks yes or no about one thing (is, does, ...)."""
    response_nouns: tuple[str, ...]
    """Words naming the answer under review."""
    vague: tuple[str, ...]
    """Judgement words that say nothing about what to look for unless something anchors them."""
    anchors: tuple[str, ...]
    """A vague word followed (within two words) by one of these has an object or a standard (harmful *to* whom)."""
    example_markers: tuple[str, ...]
    """A field that gives examples (such as, for example) is concrete enough whatever words it uses."""
    copulas: tuple[str, ...]
    """Linking verbs: '<copula> [adverb] <vague word>' at the end of a clause is a bare judgement."""
    bare_heads: tuple[str, ...]
    """'<vague word> <head>' (harmful content) or '<pronoun> <vague word>' (anything harmful) is a bare judgement."""
    bare_pronouns: tuple[str, ...]


EN = Lexicon(
    critique_verbs=("identify", "point out", "critique", "criticize", "criticise", "find", "note", "list", "explain",
                    "discuss", "assess", "evaluate", "examine", "check", "spot", "highlight", "flag", "describe",
                    "analyze", "analyse", "review", "judge", "say whether", "tell whether", "determine"),
    revision_verbs=("rewrite", "revise", "edit", "rephrase", "reword", "redraft", "redo", "change", "modify",
                    "correct", "fix", "improve", "amend", "update", "adjust", "remove", "replace", "restate"),
    selectors=("which", "choose", "pick", "select", "compare", "prefer", "the better", "the best"),
    answers_plural=("responses", "answers", "replies", "options", "outputs", "completions", "these", "both", "two",
                    "(a)", "(b)", "of them"),
    yes_no_openers=("is", "are", "does", "do", "did", "can", "could", "should", "would", "was", "were", "has", "have",
                    "will"),
    response_nouns=("response", "answer", "reply", "output", "completion", "message", "it"),
    vague=("appropriate", "inappropriate", "good", "bad", "harmful", "acceptable", "unacceptable", "proper",
           "improper", "nice", "okay", "fine", "problematic", "offensive", "objectionable", "wrong", "toxic",
           "better", "worse"),
    anchors=("to", "for", "toward", "towards", "than", "if", "when", "because", "about", "under", "by", "in"),
    example_markers=("such as", "for example", "for instance", "e.g.", "including", "like", "namely"),
    copulas=("is", "are", "be", "being", "was", "were", "seems", "seem", "looks", "sounds"),
    bare_heads=("content", "material", "materials", "things", "stuff", "behavior", "behaviour", "language", "part",
                "parts", "information", "requests"),
    bare_pronouns=("anything", "something", "nothing", "everything", "whatever"),
)

ES = Lexicon(
    critique_verbs=("identifica", "identifique", "señala", "señale", "indica", "indique", "critica", "critique",
                    "encuentra", "detecta", "explica", "explique", "evalúa", "evalúe", "analiza", "analice",
                    "examina", "revisa si", "comprueba", "describe", "observa", "anota", "menciona"),
    revision_verbs=("reescribe", "reescriba", "revisa", "revise", "corrige", "corrija", "modifica", "modifique",
                    "reformula", "reformule", "cambia", "mejora", "mejore", "redacta", "edita", "quita", "elimina",
                    "sustituye", "reemplaza", "ajusta"),
    selectors=("cuál", "cuáles", "elige", "elija", "escoge", "escoja", "selecciona", "seleccione", "compara",
               "prefiere", "la mejor", "la más", "la menos"),
    answers_plural=("respuestas", "opciones", "estas", "estos", "ambas", "dos", "(a)", "(b)"),
    yes_no_openers=("es", "son", "está", "están", "hay", "puede", "debe", "tiene", "fue"),
    response_nouns=("respuesta", "contestación", "mensaje"),
    vague=("apropiado", "apropiada", "inapropiado", "inapropiada", "adecuado", "adecuada", "bueno", "buena", "malo",
           "mala", "dañino", "dañina", "perjudicial", "aceptable", "inaceptable", "correcto", "correcta",
           "incorrecto", "incorrecta", "problemático", "problemática", "ofensivo", "ofensiva", "mejor", "peor"),
    anchors=("para", "a", "hacia", "que", "si", "cuando", "porque", "sobre", "según", "en", "con"),
    example_markers=("como", "por ejemplo", "p. ej.", "incluido", "incluida", "incluidos", "es decir"),
    copulas=("es", "son", "sea", "sean", "está", "están", "parece", "resulta", "fue"),
    bare_heads=("contenido", "material", "cosas", "conducta", "lenguaje", "parte", "partes", "información"),
    bare_pronouns=("algo", "nada", "todo", "cualquier cosa", "lo"),
)

LEXICONS: dict[str, Lexicon] = {"en": EN, "es": ES}


def lexicon_for(language: str) -> Lexicon | None:
    """The word lists for a BCP 47 tag ('es-MX' uses 'es'), or None when there are none."""
    tag = (language or "en").strip().lower()
    return LEXICONS.get(tag) or LEXICONS.get(tag.split("-")[0])


def _alt(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def has_any(text: str, words: tuple[str, ...]) -> bool:
    """Whether ``text`` contains one of ``words`` as a whole word or phrase."""
    return re.search(rf"(?<!\w)(?:{_alt(words)})(?!\w)", text, re.IGNORECASE) is not None


def first_word(text: str) -> str:
    m = re.match(r"\W*(\w+)", text)
    return m.group(1).lower() if m else ""


def bare_judgements(text: str, lex: Lexicon) -> list[str]:
    """The vague words in ``text`` used as bare judgements (no object, no standard, no examples in the field).

    Four shapes count: '<copula> [adverb] <vague>' ("the response is harmful"), '<vague> <head noun>' ("harmful
    content"), '<pronoun> <vague>' ("anything harmful") and a vague word ending a sentence ("... appropriate?"). A
    vague word followed within two words by an anchor ("harmful to children", "appropriate for a general audience")
    is not flagged, and a field that gives examples is never flagged.
    """
    if has_any(text, lex.example_markers):
        return []
    vague, anchors = _alt(lex.vague), _alt(lex.anchors)
    hits: list[str] = []
    adverb = r"(?:\w+ly\s+|\w+mente\s+|more\s+|less\s+|most\s+|least\s+|not\s+|too\s+|más\s+|menos\s+|muy\s+)?"
    unanchored = rf"(?!\w)(?!\s+(?:\w+\s+)?(?:{anchors})\b)"
    patterns = [
        rf"(?<!\w)(?:{_alt(lex.copulas)})\s+{adverb}(?P<w>{vague}){unanchored}",
        rf"(?<!\w)(?P<w>{vague})\s+(?:{_alt(lex.bare_heads)}){unanchored}",
        rf"(?<!\w)(?:{_alt(lex.bare_pronouns)})\s+{adverb}(?P<w>{vague}){unanchored}",
        rf"(?<!\w)(?P<w>{vague})\s*[.?!]",
    ]
    for pat in patterns:
        for m in re.finditer(pat, text, re.IGNORECASE):
            word = re.match(r"\w+", m.group("w"))
            if word and word.group(0).lower() not in hits:
                hits.append(word.group(0).lower())
    return hits
