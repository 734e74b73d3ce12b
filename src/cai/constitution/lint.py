"""``cai constitution lint``: located findings about how a constitution is written.

Rules (each finding names the file and line, the principle, the rule, and the fix):

- ``near-duplicate``: two principles whose texts (critique request, revision request and preference question, joined)
  have an embedding cosine similarity (packaged all-MiniLM-L6-v2, :mod:`cai.embed`) of at least
  ``duplicate_warning`` (warning) or ``duplicate_error`` (error). Measured on the shipped default constitution: its
  closest two distinct principles score 0.865; a lightly reworded copy of a principle scores 0.985, a heavily
  paraphrased one 0.81. Embeddings therefore catch copies and light edits only; heavier paraphrases are what the
  optional model check is for.
- ``model-duplicate`` / ``contradiction`` (only with a ``checker`` model): the most similar pairs are put to the model
  as yes/no questions, in both orders and with the yes/no letters swapped, and flagged when the mean P(yes) reaches
  ``checker_threshold``. Model findings are warnings: they are opinions.
- ``vague-wording``: a judgement word with nothing to anchor it ("is harmful", "anything bad", "harmful content")
  in a field that gives no examples (see :func:`cai.constitution.lint_words.bare_judgements`).
- ``wrong-form``: a critique request that asks for no critique, a revision request that asks for no rewrite, a
  preference question that is not a choice between answers.
- ``overlong``: a request or question longer than ``max_words_warning`` words (error above ``max_words_error``),
  a demonstration text longer than ``max_demo_words``.
- ``tag-typo``: a tag that is not a known tag but is one letter or so away from one.
- ``language``: a language with no built-in prompt templates or word lists.

A comment ``# lint: ignore RULE[, RULE] -- reason`` inside a principle (or on the lines just above it) marks those
findings of that principle as explained: they are still listed, with the reason, but do not count.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from cai.constitution.lint_words import bare_judgements, first_word, has_any, lexicon_for
from cai.constitution.load import _line_index, validate_constitution_file
from cai.constitution.schema import KNOWN_TAGS, Constitution, Principle
from cai.errors import UserInputError
from cai.yamlsafe import CONSTITUTION_MAX_BYTES, compose, read_text_limited

Severity = Literal["error", "warning"]
FIELDS = ("critique_request", "revision_request", "preference_question")
RULES = ("near-duplicate", "model-duplicate", "contradiction", "vague-wording", "wrong-form", "overlong", "tag-typo",
         "language")


class LintConfig(BaseModel):
    """Thresholds of ``cai constitution lint``."""

    model_config = ConfigDict(extra="forbid")

    duplicate_warning: float = Field(default=0.90, gt=0, le=1, description="Embedding similarity of two principles "
                                     "from which they are reported as near-duplicates (warning)")
    duplicate_error: float = Field(default=0.98, gt=0, le=1, description="Similarity from which a near-duplicate is "
                                   "an error (a copy or a light edit)")
    embeddings: bool = Field(default=True, description="Compare principles with sentence embeddings")
    checker: str | None = Field(default=None, description="Model spec that checks pairs for duplicates and "
                                "contradictions (e.g. 'embedded'); none: no model checks")
    checker_pairs: int = Field(default=10, ge=1, description="Pairs the checker reads: the most similar ones")
    checker_threshold: float = Field(default=0.75, gt=0, le=1, description="Mean P(yes) from which the checker's "
                                     "answer becomes a finding")
    max_words_warning: int = Field(default=60, ge=5, description="Words in one request or question above which it "
                                   "is reported as long (warning)")
    max_words_error: int = Field(default=150, ge=5, description="Words above which it is an error")
    max_demo_words: int = Field(default=250, ge=10, description="Words in one demonstration text above which it is "
                                "reported (every demonstration sits in every critique prompt)")


@dataclass
class Finding:
    """One located problem."""

    rule: str
    severity: Severity
    message: str
    fix: str
    file: str
    line: int | None
    principle_id: str | None = None
    field: str | None = None
    related: str | None = None
    score: float | None = None
    explained: str | None = None  # the reason given in a '# lint: ignore' comment

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class LintReport:
    file: str
    constitution: str
    principles: int
    findings: list[Finding] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    checked_pairs: list[dict] = field(default_factory=list)  # what the checker model said about each pair it read

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error" and not f.explained)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == "warning" and not f.explained)

    @property
    def explained(self) -> int:
        return sum(1 for f in self.findings if f.explained)

    def as_dict(self) -> dict:
        return {"file": self.file, "constitution": self.constitution, "principles": self.principles,
                "errors": self.errors, "warnings": self.warnings, "explained": self.explained,
                "settings": self.settings, "findings": [asdict(f) for f in self.findings],
                "checked_pairs": self.checked_pairs}


# --- locating ---------------------------------------------------------------------------------------------------------
_IGNORE = re.compile(r"#\s*lint:\s*ignore\s+([a-z, -]+?)\s*(?:--\s*(.*))?$")


class _Locator:
    """Lines of principles and their fields, and the '# lint: ignore' comments that belong to each principle."""

    def __init__(self, path: Path, const: Constitution):
        text = read_text_limited(path, max_bytes=CONSTITUTION_MAX_BYTES, what="constitution")
        node = compose(text, path=str(path))
        self.lines = _line_index(node) if node is not None else {}
        self.file = str(path)
        raw = text.splitlines()
        starts = [self.lines.get(("principles", i)) or 0 for i in range(len(const.principles))]
        self.ignores: dict[int, dict[str, str]] = {}
        for n, line in enumerate(raw, start=1):
            m = _IGNORE.search(line)
            if not m:
                continue
            owner = self._owner(n, starts, raw)
            if owner is None:
                continue
            reason = (m.group(2) or "").strip() or "explained in the file"
            for rule in (r.strip() for r in m.group(1).split(",")):
                if rule:
                    self.ignores.setdefault(owner, {})[rule] = reason

    @staticmethod
    def _owner(n: int, starts: list[int], raw: list[str]) -> int | None:
        """The principle a comment on line ``n`` belongs to: the next principle when only comments and blank lines
        lie between, else the principle whose lines contain it."""
        for i, s in enumerate(starts):
            if s >= n and all(not x.strip() or x.strip().startswith("#") for x in raw[n:s - 1]):
                return i
        inside = [i for i, s in enumerate(starts) if 0 < s <= n]
        return inside[-1] if inside else None

    def line(self, i: int | None, fld: str | None = None) -> int | None:
        if i is None:
            return None
        if fld and ("principles", i, fld) in self.lines:
            return self.lines[("principles", i, fld)]
        return self.lines.get(("principles", i))

    def explained(self, i: int | None, rule: str) -> str | None:
        return None if i is None else self.ignores.get(i, {}).get(rule)


# --- rules ------------------------------------------------------------------------------------------------------------
def _words(text: str) -> int:
    return len(text.split())


def _form_findings(p: Principle, language: str) -> list[tuple[str, Severity, str, str]]:
    """(field, severity, message, fix) for requests in the wrong form."""
    lex = lexicon_for(language)
    if lex is None:
        return []
    out: list[tuple[str, Severity, str, str]] = []
    crit, rev, pref = p.critique_request, p.revision_request, p.preference_question
    if not has_any(crit, lex.critique_verbs):
        kind = "a revision request" if has_any(crit, lex.revision_verbs) else "no request for a critique"
        out.append(("critique_request", "error", f"the critique request reads as {kind}: it never asks the critic to "
                    "identify or point out anything", "start it with 'Identify ...' or 'Point out ...' and name what "
                    "to look for in the last response"))
    elif not has_any(crit, lex.response_nouns):
        out.append(("critique_request", "warning", "the critique request does not say what to critique",
                    "name it: 'the assistant's last response'"))
    if not has_any(rev, lex.revision_verbs):
        kind = "a critique request" if has_any(rev, lex.critique_verbs) else "no request to rewrite"
        out.append(("revision_request", "error", f"the revision request reads as {kind}: it never asks the reviser to "
                    "rewrite the answer", "start it with 'Rewrite the response ...' and say what the rewrite must do"))
    opener = first_word(pref)
    selects = has_any(pref, lex.selectors)
    if not selects and opener in lex.yes_no_openers:
        out.append(("preference_question", "error", "the preference question asks yes or no about one answer; the "
                    "labeler must choose between two", "ask 'Which of these assistant responses ...?'"))
    elif not selects:
        out.append(("preference_question", "error", "the preference question does not ask for a choice between "
                    "answers", "ask 'Which of these assistant responses ...?'"))
    elif not has_any(pref, lex.answers_plural):
        out.append(("preference_question", "warning", "the preference question does not say that it compares "
                    "several answers", "say 'Which of these assistant responses ...?'"))
    return out


def _tag_typos(p: Principle) -> list[tuple[str, str]]:
    out = []
    for t in p.tags:
        if t in KNOWN_TAGS:
            continue
        close = difflib.get_close_matches(t, list(KNOWN_TAGS), n=1, cutoff=0.8)
        if close:
            out.append((t, close[0]))
    return out


def principle_text(p: Principle) -> str:
    """The text the near-duplicate rule compares: the three requests joined."""
    return " ".join(getattr(p, f) for f in FIELDS)


def _pairs_by_similarity(sim, n: int) -> list[tuple[float, int, int]]:
    return sorted(((float(sim[i][j]), i, j) for i in range(n) for j in range(i + 1, n)), reverse=True)


# --- the linter -------------------------------------------------------------------------------------------------------
def lint_constitution(
    path: str | Path,
    cfg: LintConfig | None = None,
    *,
    similarity_fn: Callable[[Sequence[str]], object] | None = None,
    checker=None,
) -> LintReport:
    """Lint the constitution at ``path``. ``similarity_fn(texts)`` returns a similarity matrix (default: sentence
    embeddings); ``checker`` is a ready backend for the model checks (default: ``cfg.checker`` from a pool)."""
    cfg = cfg or LintConfig()
    if cfg.duplicate_error < cfg.duplicate_warning:
        raise UserInputError(f"duplicate_error ({cfg.duplicate_error}) is below duplicate_warning "
                             f"({cfg.duplicate_warning}).", fix="make duplicate_error at least duplicate_warning.")
    path = Path(path)
    const, problems = validate_constitution_file(path)
    if problems or const is None:
        listing = "\n".join(f"  {p}" for p in problems)
        raise UserInputError(f"Constitution {path} is not valid, so it cannot be linted:\n{listing}",
                             fix="fix these first (`cai constitution validate` lists them), then lint again.")
    loc = _Locator(path, const)
    report = LintReport(str(path), f"{const.name} v{const.version}", len(const.principles),
                        settings=cfg.model_dump(mode="json"))
    ps = const.principles

    def add(rule: str, severity: Severity, message: str, fix: str, i: int | None, fld: str | None = None,
            **extra) -> None:
        report.findings.append(Finding(rule, severity, message, fix, loc.file, loc.line(i, fld) if i is not None
                                       else extra.pop("line", None), ps[i].id if i is not None else None, fld,
                                       explained=loc.explained(i, rule), **extra))

    _language_findings(const, loc, add)
    lex = lexicon_for(const.language)
    for i, p in enumerate(ps):
        for fld, sev, msg, fix in _form_findings(p, const.language):
            add("wrong-form", sev, msg, fix, i, fld)
        if lex is not None:
            for fld in FIELDS:
                words = bare_judgements(getattr(p, fld), lex)
                if words:
                    quoted = ", ".join(f"'{w}'" for w in words)
                    add("vague-wording", "warning", f"{quoted} stands without saying to whom, by what standard, or "
                        "with an example", "say what counts (for example 'harmful to the user or others, such as "
                        "...') or name the concrete failure to look for", i, fld)
        for fld in FIELDS:
            n = _words(getattr(p, fld))
            if n > cfg.max_words_warning:
                sev: Severity = "error" if n > cfg.max_words_error else "warning"
                add("overlong", sev, f"{n} words (limit {cfg.max_words_warning}; small models follow short "
                    "instructions best)", "shorten it to one or two sentences; move examples into a demonstration", i,
                    fld)
        for d_i, d in enumerate(p.demonstrations):
            for fld in ("prompt", "response", "critique", "revision"):
                n = _words(getattr(d, fld))
                if n > cfg.max_demo_words:
                    add("overlong", "warning", f"demonstrations[{d_i}].{fld} has {n} words (limit "
                        f"{cfg.max_demo_words})", "shorten the demonstration", i, "demonstrations")
        for tag, close in _tag_typos(p):
            add("tag-typo", "warning", f"tag '{tag}' is unknown; did you mean '{close}'?", f"write '{close}' (or keep "
                f"'{tag}' if it is meant as a custom tag; it counts towards coverage only where a taxonomy maps it)", i, "tags")
    for d_i, d in enumerate(const.demonstrations):
        for fld in ("prompt", "response", "critique", "revision"):
            n = _words(getattr(d, fld))
            if n > cfg.max_demo_words:
                report.findings.append(Finding("overlong", "warning", f"demonstrations[{d_i}].{fld} has {n} words "
                                               f"(limit {cfg.max_demo_words}); shared demonstrations sit in every "
                                               "critique prompt", "shorten it", loc.file,
                                               loc.lines.get(("demonstrations", d_i, fld))))

    sim = None
    if len(ps) > 1 and (cfg.embeddings or cfg.checker or checker is not None):
        sim = (similarity_fn or _embedding_similarity)([principle_text(p) for p in ps])
    flagged: set[tuple[int, int]] = set()
    if sim is not None and cfg.embeddings:
        for s, i, j in _pairs_by_similarity(sim, len(ps)):
            if s < cfg.duplicate_warning:
                break
            flagged.add((i, j))
            sev = "error" if s >= cfg.duplicate_error else "warning"
            add("near-duplicate", sev, f"principle '{ps[i].id}' and '{ps[j].id}' (line {loc.line(j)}) say nearly the "
                f"same thing (embedding similarity {s:.3f} >= {cfg.duplicate_warning})",
                f"merge them into one principle, or make '{ps[j].id}' about something '{ps[i].id}' does not cover",
                i, related=ps[j].id, score=round(s, 4))
    if sim is not None and (cfg.checker or checker is not None):
        from cai.constitution.lint_model import check_pairs

        backend = checker
        if backend is None:
            from cai.backends.registry import BackendPool

            backend = BackendPool().get(cfg.checker)
        pairs = [(i, j) for _, i, j in _pairs_by_similarity(sim, len(ps))[:cfg.checker_pairs]]
        for (i, j), p_same, p_conflict in check_pairs(backend, [(ps[i], ps[j]) for i, j in pairs], pairs):
            report.checked_pairs.append({"a": ps[i].id, "b": ps[j].id, "similarity": round(float(sim[i][j]), 4),
                                         "p_same": round(p_same, 4), "p_conflict": round(p_conflict, 4)})
            if p_same >= cfg.checker_threshold and (i, j) not in flagged:
                add("model-duplicate", "warning", f"the checker model reads '{ps[i].id}' and '{ps[j].id}' (line "
                    f"{loc.line(j)}) as asking for the same thing (mean P(yes) {p_same:.2f})",
                    f"merge them, or sharpen the difference between '{ps[i].id}' and '{ps[j].id}'", i,
                    related=ps[j].id, score=round(p_same, 4))
            if p_conflict >= cfg.checker_threshold:
                add("contradiction", "warning", f"the checker model reads '{ps[i].id}' and '{ps[j].id}' (line "
                    f"{loc.line(j)}) as pulling in opposite directions (mean P(yes) {p_conflict:.2f})",
                    "say in each principle where its scope ends (for example 'decline only the harmful part')", i,
                    related=ps[j].id, score=round(p_conflict, 4))
    report.findings.sort(key=lambda f: (f.explained is not None, f.severity != "error", f.line or 0, f.rule))
    return report


def _language_findings(const: Constitution, loc: _Locator, add) -> None:
    from cai.labeling.prompts import label_templates_for
    from cai.stages.sl_prompts import sl_templates_for

    lang = const.language
    missing = []
    if sl_templates_for(lang).language != (lang.split("-")[0].lower() or "en"):
        missing.append("no built-in critique and revision prompt templates (they fall back to English)")
    if label_templates_for(lang).language != (lang.split("-")[0].lower() or "en"):
        missing.append("no built-in label prompt template (it falls back to English)")
    if lexicon_for(lang) is None:
        missing.append("no word lists, so the wording and form rules are skipped")
    if missing:
        add("language", "warning", f"language '{lang}' has " + "; ".join(missing), "write the principles in a "
            "supported language (en, es), or add templates and word lists for this one", None,
            line=loc.lines.get(("language",)))


def _embedding_similarity(texts: Sequence[str]):
    from cai.embed import similarity

    return similarity(list(texts))
