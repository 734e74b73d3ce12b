"""Constitution schema, the shipped default, hashing, sampling, and line-aware validation (library and CLI)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from cai.cli.main import app
from cai.constitution import (
    HARM_CATEGORIES,
    Constitution,
    default_constitution_path,
    load_constitution,
    validate_constitution_file,
)
from cai.errors import UserInputError
from conftest import flat


# --- the shipped default --------------------------------------------------------------------------------------
def test_default_constitution_validates():
    const, problems = validate_constitution_file(default_constitution_path())
    assert problems == []
    assert const is not None
    assert load_constitution(None) == const
    assert load_constitution("default") == const


def test_default_has_enough_principles_covering_every_category():
    const = load_constitution()
    assert len(const.principles) >= 16
    cov = const.covered_categories()
    assert set(cov) == set(HARM_CATEGORIES) and len(HARM_CATEGORIES) == 12
    uncovered = [c for c, ids in cov.items() if not ids]
    assert uncovered == [], f"harm categories without a principle: {uncovered}"
    tags = {t for p in const.principles for t in p.tags}
    assert "honesty" in tags
    assert "helpfulness" in tags
    ids = [p.id for p in const.principles]
    assert len(set(ids)) == len(ids)


def test_default_demonstrations_name_real_principles():
    const = load_constitution()
    assert const.demonstrations, "the default should ship few-shot demonstrations"
    for d in const.demonstrations:
        if d.principle_id is not None:
            const.principle(d.principle_id)  # raises KeyError if it names no principle


# --- hashing ----------------------------------------------------------------------------------------------------
def test_content_hash_is_stable(fixtures):
    a = load_constitution(fixtures / "constitution_small.yaml")
    b = load_constitution(fixtures / "constitution_small.yaml")
    assert a.content_hash() == b.content_hash()
    assert len(a.content_hash()) == 16
    int(a.content_hash(), 16)
    # Round-trip through a dump must give the same hash (key order is irrelevant).
    c = Constitution.model_validate(json.loads(a.model_dump_json()))
    assert c.content_hash() == a.content_hash()
    assert load_constitution().content_hash() != a.content_hash()


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(version="0.4"),
        lambda d: d.update(name="other"),
        lambda d: d["principles"][1].update(critique_request=d["principles"][1]["critique_request"] + " Be specific."),
        lambda d: d["principles"][0].update(tags=["general", "cyber"]),
        lambda d: d["principles"][2].update(weight=3.0),
        lambda d: d["demonstrations"][0].update(revision="A different worked revision for the example."),
        lambda d: d["principles"].reverse(),
    ],
    ids=["version", "name", "critique_request", "tags", "weight", "demonstration", "order"],
)
def test_content_hash_changes_when_a_field_changes(fixtures, change):
    base = load_constitution(fixtures / "constitution_small.yaml")
    data = base.model_dump(mode="json")
    change(data)
    changed = Constitution.model_validate(data)
    assert changed.content_hash() != base.content_hash()


# --- sampling ---------------------------------------------------------------------------------------------------
def test_sample_is_seeded_and_reproducible():
    const = load_constitution()
    a = [p.id for p in const.sample(random.Random(123), k=50)]
    b = [p.id for p in const.sample(random.Random(123), k=50)]
    c = [p.id for p in const.sample(random.Random(124), k=50)]
    assert a == b
    assert a != c
    assert len(set(a)) > 5  # draws from many principles, not one


def test_sample_respects_tags_and_weights(fixtures):
    const = load_constitution(fixtures / "constitution_small.yaml")
    only = const.sample(random.Random(0), k=30, tags={"honesty"})
    assert {p.id for p in only} == {"be-honest"}
    # be-useful has weight 2, the others 1: it should be drawn about half the time.
    counts = Counter(p.id for p in const.sample(random.Random(7), k=4000))
    assert set(counts) == {"be-safe", "be-honest", "be-useful"}
    assert 0.45 < counts["be-useful"] / 4000 < 0.55
    # An unknown tag falls back to every principle rather than failing.
    assert len(const.sample(random.Random(0), k=3, tags={"no-such-tag"})) == 3


# --- validation problems name file, line and field ----------------------------------------------------------------
def _only(problems, field_contains):
    hits = [p for p in problems if field_contains in p.field]
    assert hits, f"no problem about {field_contains!r} in {[str(p) for p in problems]}"
    return hits[0]


def test_valid_fixture_has_no_problems(fixtures):
    const, problems = validate_constitution_file(fixtures / "constitution_small.yaml")
    assert problems == []
    assert [p.id for p in const.principles] == ["be-safe", "be-honest", "be-useful"]
    assert len(const.demonstrations) == 2


def test_unknown_key_typo_reports_file_line_field(fixtures):
    path = fixtures / "constitution_typo.yaml"  # line 10: critque_request
    const, problems = validate_constitution_file(path)
    assert const is None
    typo = _only(problems, "critque_request")
    assert typo.line == 10
    assert typo.field == "principles[0].critque_request"
    assert typo.file == str(path)
    assert "unknown key" in typo.message
    assert str(typo).startswith(f"{path}:10: principles[0].critque_request:")
    # The correctly spelled key is then missing; it is reported at the principle's line (7).
    missing = _only(problems, "principles[0].critique_request")
    assert missing.line == 7
    assert "missing" in missing.message


def test_missing_field_reports_principle_line(fixtures):
    path = fixtures / "constitution_missing_field.yaml"  # be-honest (line 13) lost revision_request
    const, problems = validate_constitution_file(path)
    assert const is None
    assert len(problems) == 1
    p = problems[0]
    assert (p.file, p.line, p.field) == (str(path), 13, "principles[1].revision_request")
    assert "missing" in p.message


def test_duplicate_id_is_reported(fixtures):
    path = fixtures / "constitution_duplicate_id.yaml"
    const, problems = validate_constitution_file(path)
    assert const is None
    assert len(problems) == 1
    p = problems[0]
    assert p.file == str(path)
    assert p.line is not None
    assert "duplicate principle id 'be-safe'" in p.message


def test_duplicate_id_points_at_the_duplicate(fixtures):
    _, problems = validate_constitution_file(fixtures / "constitution_duplicate_id.yaml")
    p = problems[0]
    assert (p.line, p.field) == (13, "principles[1].id")


def test_demonstration_naming_no_principle_is_reported(fixtures):
    path = fixtures / "constitution_bad_demo.yaml"
    const, problems = validate_constitution_file(path)
    assert const is None
    assert len(problems) == 1
    p = problems[0]
    assert p.file == str(path)
    assert "demonstrations[0].principle_id 'no-such-principle' names no principle" in p.message
    assert "be-useful" in p.message  # lists the valid ids


def test_demonstration_naming_no_principle_points_at_its_line(fixtures):
    _, problems = validate_constitution_file(fixtures / "constitution_bad_demo.yaml")
    p = problems[0]
    assert (p.line, p.field) == (27, "demonstrations[0].principle_id")


def test_yaml_syntax_error_reports_line(fixtures):
    path = fixtures / "constitution_bad_syntax.yaml"  # line 14: "name: Be: honest"
    const, problems = validate_constitution_file(path)
    assert const is None
    assert len(problems) == 1
    p = problems[0]
    assert (p.file, p.line, p.field) == (str(path), 14, "(syntax)")
    assert "YAML syntax error" in p.message


def test_non_utf8_file_is_reported(tmp_path, fixtures):
    path = tmp_path / "latin1.yaml"
    text = (fixtures / "constitution_small.yaml").read_text(encoding="utf-8")
    path.write_bytes(text.replace("Be honest", "Be honest, café", 1).encode("latin-1"))
    const, problems = validate_constitution_file(path)
    assert const is None
    assert len(problems) == 1
    p = problems[0]
    assert p.file == str(path)
    assert p.field == "(file)"
    assert "UTF-8" in p.message and "byte" in p.message


def test_non_utf8_file_reports_line(tmp_path, fixtures):
    path = tmp_path / "latin1.yaml"
    text = (fixtures / "constitution_small.yaml").read_text(encoding="utf-8")
    path.write_bytes(text.replace("Be honest", "Be honest, café", 1).encode("latin-1"))
    _, problems = validate_constitution_file(path)
    assert problems[0].line == 14


def test_missing_file_and_non_mapping(tmp_path):
    _, problems = validate_constitution_file(tmp_path / "nope.yaml")
    assert "not found" in problems[0].message
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n", encoding="utf-8")
    _, problems = validate_constitution_file(lst)
    assert problems[0].field == "(top level)"


def test_load_constitution_raises_user_error_listing_problems(fixtures):
    path = fixtures / "constitution_typo.yaml"
    with pytest.raises(UserInputError) as ei:
        load_constitution(path)
    e = ei.value
    assert f"{path}:10: principles[0].critque_request" in e.message
    assert "2 problem(s)" in e.message
    assert e.fix and "cai constitution schema" in e.fix


# --- CLI ----------------------------------------------------------------------------------------------------------
def test_cli_validate_bad_file_exits_2_and_prints_line(runner, fixtures):
    path = fixtures / "constitution_typo.yaml"
    r = runner.invoke(app, ["constitution", "validate", str(path)])
    assert r.exit_code == 2, r.output
    out = flat(r.output)
    assert f"{path}:10: principles[0].critque_request" in out
    assert "unknown key" in out
    assert "Traceback" not in r.output


def test_cli_validate_syntax_error_prints_line(runner, fixtures):
    path = fixtures / "constitution_bad_syntax.yaml"
    r = runner.invoke(app, ["constitution", "validate", str(path)])
    assert r.exit_code == 2
    assert f"{path}:14: (syntax)" in flat(r.output)


def test_cli_validate_good_file(runner, fixtures):
    r = runner.invoke(app, ["constitution", "validate", str(fixtures / "constitution_small.yaml")])
    assert r.exit_code == 0, r.output
    const = load_constitution(fixtures / "constitution_small.yaml")
    out = flat(r.output)
    assert "OK:" in out and const.content_hash() in out
    # The small fixture does not cover the harm taxonomy, and the CLI says so.
    assert "no principle is tagged with harm categories" in out
    r = runner.invoke(app, ["constitution", "validate", str(default_constitution_path())])
    assert r.exit_code == 0
    assert "no principle is tagged" not in r.output


def test_cli_schema_is_json_with_principles(runner):
    r = runner.invoke(app, ["constitution", "schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert "principles" in schema["properties"]
    assert set(schema["required"]) >= {"name", "version", "principles"}
    assert schema.get("additionalProperties") is False
    principle = schema["$defs"]["Principle"]
    assert "critique_request" in principle["properties"]
    assert all(v.get("description") for v in principle["properties"].values())


def test_cli_show_default_and_file(runner, fixtures):
    r = runner.invoke(app, ["constitution", "show"])
    assert r.exit_code == 0, r.output
    const = load_constitution()
    out = r.output
    assert const.content_hash() in out
    for p in const.principles:
        assert p.id in out
    r = runner.invoke(app, ["constitution", "show", str(fixtures / "constitution_small.yaml")])
    assert r.exit_code == 0
    assert "test-small" in r.output and "be-useful" in r.output
    r = runner.invoke(app, ["constitution", "show", str(fixtures / "constitution_typo.yaml")])
    assert r.exit_code == 2
    assert "Traceback" not in r.output and "fix" in r.output.lower()


def test_cli_path_prints_default(runner):
    r = runner.invoke(app, ["constitution", "path"])
    assert r.exit_code == 0
    assert r.stdout.strip() == str(default_constitution_path())
