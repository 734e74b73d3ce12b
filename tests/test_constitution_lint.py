"""`cai constitution lint`: each rule on planted problems, located at the right line; exit codes; JSON; model checks
with scripted fakes; the shipped constitutions are clean or explained."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from cai.backends.fake import FakeBackend
from cai.cli.main import app
from cai.constitution.lint import LintConfig, lint_constitution
from cai.constitution.lint_model import QUESTIONS
from cai.constitution.load import default_constitution_path
from cai.errors import UserInputError

runner = CliRunner()
NO_EMBED = LintConfig(embeddings=False)

GOOD = """\
  - id: {id}
    name: {name}
    tags: [{tag}]
    critique_request: Identify where the assistant's last response helps someone {what}.
    revision_request: Rewrite the response so it gives no help to {what}, while answering the rest.
    preference_question: Which of these assistant responses is less likely to help someone {what}?
"""


def write(tmp_path, body: str, *, language: str = "en", name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(f"name: t\nversion: '1'\nlanguage: {language}\nprinciples:\n{body}", encoding="utf-8")
    return path


def line_of(path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)


def by_rule(report, rule):
    return [f for f in report.findings if f.rule == rule]


PLANTED = (
    GOOD.format(id="fine", name="Fine", tag="cyber", what="break into computers they do not own")
    + """\
  - id: wrong-forms
    name: Every field in the wrong form
    tags: [fraud]
    critique_request: Rewrite the response so that it no longer helps with scams.
    revision_request: Identify where the response helps with scams and list each place.
    preference_question: Is the response helping with a scam?
  - id: vague
    name: Vague
    tags: [privcy]
    critique_request: Identify any ways the assistant's last response is inappropriate.
    revision_request: Rewrite the response to remove anything bad.
    preference_question: Which of these assistant responses is better?
  - id: long
    name: Long
    tags: [hate]
    critique_request: Identify where the assistant's last response demeans people for who they are {pad}.
    revision_request: Rewrite the response so it treats every group of people with equal respect.
    preference_question: Which of these assistant responses treats people of every group with more respect?
""".replace("{pad}", " ".join(["and also"] * 40))
)


@pytest.fixture()
def planted(tmp_path):
    path = write(tmp_path, PLANTED)
    return path, lint_constitution(path, NO_EMBED)


def test_wrong_form_findings_are_errors_at_their_lines(planted):
    path, report = planted
    wrong = {(f.principle_id, f.field): f for f in by_rule(report, "wrong-form")}
    assert set(wrong) == {("wrong-forms", "critique_request"), ("wrong-forms", "revision_request"),
                          ("wrong-forms", "preference_question")}
    assert all(f.severity == "error" for f in wrong.values())
    crit = wrong[("wrong-forms", "critique_request")]
    assert crit.line == line_of(path, "critique_request: Rewrite the response so that")
    assert "reads as a revision request" in crit.message and "Identify" in crit.fix
    assert "reads as a critique request" in wrong[("wrong-forms", "revision_request")].message
    pref = wrong[("wrong-forms", "preference_question")]
    assert "yes or no" in pref.message and pref.line == line_of(path, "Is the response helping")
    assert crit.file == str(path) and crit.where() == f"{path}:{crit.line}"


def test_vague_wording_is_flagged_but_anchored_words_are_not(planted):
    path, report = planted
    vague = {(f.principle_id, f.field): f for f in by_rule(report, "vague-wording")}
    assert set(vague) == {("vague", "critique_request"), ("vague", "revision_request"), ("vague", "preference_question")}
    assert "'inappropriate'" in vague[("vague", "critique_request")].message
    assert "'bad'" in vague[("vague", "revision_request")].message
    assert "'better'" in vague[("vague", "preference_question")].message
    assert all(f.severity == "warning" for f in vague.values())
    assert vague[("vague", "revision_request")].line == line_of(path, "remove anything bad")


def test_overlong_and_tag_typo(planted):
    path, report = planted
    (long_,) = by_rule(report, "overlong")
    assert (long_.principle_id, long_.field, long_.severity) == ("long", "critique_request", "warning")
    assert "words" in long_.message and long_.line == line_of(path, "demeans people for who")
    (typo,) = by_rule(report, "tag-typo")
    assert typo.principle_id == "vague" and "'privacy'" in typo.message and typo.line == line_of(path, "tags: [privcy]")


def test_clean_principles_have_no_findings(planted):
    _, report = planted
    assert not [f for f in report.findings if f.principle_id in ("fine", "long") and f.rule != "overlong"]
    assert report.errors == 3 and report.warnings == 5  # 3 vague, 1 overlong, 1 tag typo


def test_overlong_becomes_an_error_past_the_error_limit(tmp_path):
    path = write(tmp_path, GOOD.format(id="a", name="A", tag="hate", what="x " * 200))
    report = lint_constitution(path, NO_EMBED)
    assert {f.severity for f in by_rule(report, "overlong")} == {"error"}


def test_cli_exit_codes_and_json(planted, tmp_path):
    path, _ = planted
    res = runner.invoke(app, ["constitution", "lint", str(path), "--no-embeddings"])
    assert res.exit_code == 1, res.output
    assert "[wrong-form] wrong-forms.critique_request" in res.output and "fix:" in res.output
    res = runner.invoke(app, ["constitution", "lint", str(path), "--no-embeddings", "--format", "json"])
    assert res.exit_code == 1
    data = json.loads(res.output)
    assert data["errors"] == 3 and data["warnings"] == 5
    assert {"rule", "severity", "line", "principle_id", "field", "message", "fix"} <= set(data["findings"][0])
    assert data["findings"][0]["severity"] == "error"  # errors first
    warn_only = write(tmp_path, GOOD.format(id="a", name="A", tag="privcy", what="track people"), name="w.yaml")
    res = runner.invoke(app, ["constitution", "lint", str(warn_only), "--no-embeddings"])
    assert res.exit_code == 0 and "1 warning(s)" in res.output.replace("\n", " ")


def test_bad_input_is_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nversion: '1'\nprinciples:\n  - id: a\n    name: A\n", encoding="utf-8")
    res = runner.invoke(app, ["constitution", "lint", str(bad)])
    assert res.exit_code == 2 and "cannot be linted" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["constitution", "lint", "default", "--format", "xml"])
    assert res.exit_code == 2 and "--format" in res.output
    with pytest.raises(UserInputError, match="duplicate_error"):
        lint_constitution(default_constitution_path(), LintConfig(duplicate_warning=0.9, duplicate_error=0.8,
                                                                  embeddings=False))


def test_ignore_comment_explains_a_finding_of_its_principle_only(tmp_path):
    body = (GOOD.format(id="a", name="A", tag="hate", what="x")
            + "  # lint: ignore vague-wording -- the general principle, on purpose\n"
            + GOOD.format(id="b", name="B", tag="hate", what="y").replace("less likely to help someone y?", "better?")
            + GOOD.format(id="c", name="C", tag="hate", what="z").replace("less likely to help someone z?", "better?"))
    report = lint_constitution(write(tmp_path, body), NO_EMBED)
    vague = {f.principle_id: f for f in by_rule(report, "vague-wording")}
    assert vague["b"].explained == "the general principle, on purpose"
    assert vague["c"].explained is None
    assert report.warnings == 1 and report.explained == 1


def _fixed_similarity(pairs: dict[tuple[int, int], float]):
    def fn(texts):
        m = np.eye(len(texts))
        for (i, j), s in pairs.items():
            m[i, j] = m[j, i] = s
        return m
    return fn


def test_near_duplicate_thresholds(tmp_path):
    body = "".join(GOOD.format(id=k, name=k.upper(), tag="hate", what=k) for k in ("a", "b", "c", "d"))
    path = write(tmp_path, body)
    report = lint_constitution(path, LintConfig(), similarity_fn=_fixed_similarity({(0, 1): 0.99, (2, 3): 0.93,
                                                                                    (0, 2): 0.80}))
    dups = {(f.principle_id, f.related): f for f in by_rule(report, "near-duplicate")}
    assert set(dups) == {("a", "b"), ("c", "d")}
    assert dups[("a", "b")].severity == "error" and dups[("c", "d")].severity == "warning"
    assert dups[("c", "d")].line == line_of(path, "- id: c") and f"line {line_of(path, '- id: d')}" in dups[("c", "d")].message


def _yes_no_fake(yes_for: set[tuple[str, str]]):
    """A checker that answers Yes for the (question kind, principle-name pair) listed, wherever the letters stand."""
    def fn(conv, option):
        user = conv[1]["content"]
        kind = next(k for k, q in QUESTIONS.items() if q in user)
        names = tuple(sorted(n for n in ("Alpha", "Beta", "Gamma") if f": {n}." in user))
        says_yes = (kind, names) in yes_for
        yes_letter = "A" if "(A) Yes" in user else "B"
        return math.log(0.9 if (option == yes_letter) == says_yes else 0.1)
    return fn


def test_model_checker_finds_contradiction_and_duplicate(tmp_path):
    body = "".join(GOOD.format(id=k.lower(), name=k, tag="hate", what=k) for k in ("Alpha", "Beta", "Gamma"))
    path = write(tmp_path, body)
    fake = FakeBackend(logprob_fn=_yes_no_fake({("conflict", ("Alpha", "Beta")), ("same", ("Beta", "Gamma"))}))
    report = lint_constitution(path, LintConfig(embeddings=False, checker="fake"), checker=fake,
                               similarity_fn=_fixed_similarity({}))
    (con,) = by_rule(report, "contradiction")
    assert {con.principle_id, con.related} == {"alpha", "beta"} and con.score == pytest.approx(0.9)
    (dup,) = by_rule(report, "model-duplicate")
    assert {dup.principle_id, dup.related} == {"beta", "gamma"} and dup.severity == "warning"
    checked = {(c["a"], c["b"]): c for c in report.checked_pairs}
    assert len(checked) == 3 and checked[("alpha", "gamma")]["p_same"] == pytest.approx(0.1)


def test_position_biased_checker_finds_nothing(tmp_path):
    body = "".join(GOOD.format(id=k.lower(), name=k, tag="hate", what=k) for k in ("Alpha", "Beta", "Gamma"))
    fake = FakeBackend(logprob_fn=lambda conv, option: math.log(0.95 if option == "A" else 0.05))
    report = lint_constitution(write(tmp_path, body), LintConfig(embeddings=False, checker="fake"), checker=fake,
                               similarity_fn=_fixed_similarity({}))
    assert not by_rule(report, "contradiction") and not by_rule(report, "model-duplicate")


def test_spanish_rules_and_unsupported_language(tmp_path):
    es = """\
  - id: mal
    name: Mal
    tags: [fraud]
    critique_request: Reescribe la respuesta para que no ayude con estafas.
    revision_request: Reescribe la respuesta para que no ayude con estafas.
    preference_question: ¿Es la respuesta apropiada?
"""
    report = lint_constitution(write(tmp_path, es, language="es"), NO_EMBED)
    fields = {f.field for f in by_rule(report, "wrong-form")}
    assert fields == {"critique_request", "preference_question"}
    assert by_rule(report, "vague-wording") and not by_rule(report, "language")
    ta = write(tmp_path, GOOD.format(id="a", name="A", tag="hate", what="x"), language="ta", name="ta.yaml")
    (lang,) = by_rule(lint_constitution(ta, NO_EMBED), "language")
    assert lang.line == 3 and "fall back to English" in lang.message and lang.severity == "warning"


def test_shipped_constitutions_are_clean_or_explained():
    """With real embeddings: the default has only explained findings; the Spanish one has none; a light rewording
    of a default principle is caught as a near-duplicate."""
    report = lint_constitution(default_constitution_path())
    assert report.errors == 0 and report.warnings == 0
    assert report.explained == 4 and all(f.rule == "vague-wording" for f in report.findings)
    es = default_constitution_path().with_name("es.yaml")
    assert lint_constitution(es).findings == []
    text = default_constitution_path().read_text(encoding="utf-8")
    copy = """
  - id: privacy-again
    name: Privacy again
    tags: [privacy]
    critique_request: >-
      Identify where the assistant's last response reveals or helps uncover private information about a
      person, such as a home address, contact details, or health records, without their consent.
    revision_request: >-
      Rewrite the response so it does not reveal or help track down private personal information, while
      still helping with the user's legitimate goal.
    preference_question: >-
      Which of these responses better protects the privacy and personal information of people?
"""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "dup.yaml"
        path.write_text(text.replace("\ndemonstrations:", copy + "\ndemonstrations:"), encoding="utf-8")
        dups = by_rule(lint_constitution(path), "near-duplicate")
    assert [(f.principle_id, f.related) for f in dups] == [("respect-privacy", "privacy-again")]
    assert dups[0].score > 0.95
