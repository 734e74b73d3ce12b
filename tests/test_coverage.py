"""`cai constitution coverage`: shipped taxonomies, the tag matrix, the judge model and the probe with scripted fakes."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.cli.main import app
from cai.constitution import load_constitution
from cai.constitution.coverage import CoverageConfig, clean_probe, measure_coverage
from cai.constitution.schema import HARM_CATEGORIES, KNOWN_TAGS
from cai.constitution.taxonomies import SHIPPED, load_taxonomy
from cai.errors import UserInputError

runner = CliRunner()


@pytest.mark.parametrize("name,count", [("cai-12", 12), ("mlcommons-ailuminate", 12), ("llama-guard-3", 14),
                                        ("harmbench", 7)])
def test_shipped_taxonomies_are_versioned_and_map_to_known_tags(name, count):
    tax, path = load_taxonomy(name)
    assert path.endswith(SHIPPED[name])
    assert len(tax.categories) == count and tax.version and len(tax.source) > 40
    for c in tax.categories:
        assert c.name and c.description
        assert set(c.maps_to) <= set(KNOWN_TAGS)


def test_own_taxonomy_matches_the_schema_and_llama_guard_codes():
    own, _ = load_taxonomy("cai-12")
    assert {c.id: c.name for c in own.categories} == HARM_CATEGORIES
    assert all(c.maps_to == [c.id] for c in own.categories)
    lg, _ = load_taxonomy("llamaguard")  # alias
    assert [c.id for c in lg.categories] == [f"S{i}" for i in range(1, 15)]


def test_default_constitution_covers_its_own_taxonomy():
    report = measure_coverage(load_constitution(), load_taxonomy("cai-12")[0], CoverageConfig())
    assert report.uncovered == []
    rows = {c.id: c for c in report.categories}
    assert rows["privacy"].by_tag == ["respect-privacy"]


def test_uncovered_categories_come_first_with_a_matrix():
    const = load_constitution()
    report = measure_coverage(const, load_taxonomy("mlcommons-ailuminate")[0], CoverageConfig())
    uncovered = [c.id for c in report.uncovered]
    assert sorted(uncovered) == ["intellectual_property", "sexual_content", "specialized_advice"]
    assert [c.id for c in report.categories[:3]] == uncovered
    d = report.as_dict()
    assert d["covered"] == 9 and d["total"] == 12
    cells = dict(zip(d["matrix"]["rows"], d["matrix"]["cells"]))
    col = d["matrix"]["columns"].index("no-fraud-scams")
    assert cells["non_violent_crimes"][col] == "T" and cells["hate"][col] == ""
    assert len(d["matrix"]["columns"]) == len(const.principles)


def test_custom_taxonomy_file_and_its_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nversion: 2\nsource: written for this test\ncategories:\n"
                    "  - id: scams\n    name: Scams\n    maps_to: [fraud]\n"
                    "  - id: gambling\n    name: Gambling\n", encoding="utf-8")
    tax, _ = load_taxonomy(str(good))
    assert tax.version == "2"
    report = measure_coverage(load_constitution(), tax, CoverageConfig())
    assert [c.id for c in report.uncovered] == ["gambling"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: '1'\nsource: x\ncategories:\n  - id: a\n    name: A\n    maps_to: [fraudd]\n",
                   encoding="utf-8")
    with pytest.raises(UserInputError, match=r"bad.yaml:7: categories\[0\].maps_to.*unknown tag\(s\) fraudd"):
        load_taxonomy(str(bad))
    with pytest.raises(UserInputError, match="neither a shipped taxonomy nor a file"):
        load_taxonomy("no-such-taxonomy")


def _judge_fake(yes: set[tuple[str, str]]):
    """Says Yes, wherever the letters stand, for the (category name, principle name) pairs listed."""
    def fn(conv, option):
        user = conv[1]["content"]
        cat = user.split("Harm category: ", 1)[1].split(".", 1)[0]
        principle = user.split("Principle: ", 1)[1].split(".", 1)[0]
        yes_letter = "A" if "(A) Yes" in user else "B"
        return math.log(0.9 if (option == yes_letter) == ((cat, principle) in yes) else 0.1)
    return fn


def test_judge_model_adds_coverage_and_position_bias_adds_none():
    const = load_constitution()
    tax, _ = load_taxonomy("llama-guard-3")
    pool = BackendPool()
    pool.put("fake:judge", FakeBackend(logprob_fn=_judge_fake({("Specialized advice", "Honest and calibrated")})))
    report = measure_coverage(const, tax, CoverageConfig(judge="fake:judge", judge_all=True), pool=pool)
    rows = {c.id: c for c in report.categories}
    assert rows["S6"].by_model == ["honest-uncertainty"] and rows["S6"].by_tag == []
    assert rows["S6"].p_model["honest-uncertainty"] == pytest.approx(0.9)
    assert [c.id for c in report.uncovered] == ["S8", "S12"]
    col = report.principles.index("honest-uncertainty")
    assert report.matrix()[report.categories.index(rows["S6"])][col] == "M"
    pool.put("fake:biased", FakeBackend(logprob_fn=lambda conv, o: math.log(0.95 if o == "A" else 0.05)))
    biased = measure_coverage(const, tax, CoverageConfig(judge="fake:biased", judge_all=True), pool=pool)
    assert all(c.by_model == [] for c in biased.categories)


def test_judge_reads_only_uncovered_categories_by_default():
    const = load_constitution()
    asked: list[str] = []

    def fn(conv, option):
        asked.append(conv[1]["content"].split("Harm category: ", 1)[1].split(".", 1)[0])
        return math.log(0.5)

    pool = BackendPool()
    pool.put("fake:judge", FakeBackend(logprob_fn=fn))
    report = measure_coverage(const, load_taxonomy("llama-guard-3")[0], CoverageConfig(judge="fake:judge"), pool=pool)
    assert set(asked) == {"Specialized advice", "Intellectual property", "Sexual content"}
    assert len(asked) == 3 * len(const.principles) * 2 * 2  # both presentations, both letters scored
    assert all(c.p_model == {} for c in report.categories if c.by_tag)


def test_probe_writes_requests_and_shows_the_policy_behaviour():
    pool = BackendPool()
    pool.put("fake:gen", FakeBackend(fn=lambda conv: '"Request: copy the whole of a bestselling novel for me"\nmore'))
    answers = iter(["I can't help with that, but I can summarise the book.", "Sure, here is chapter one: ..."] * 10)
    pool.put("fake:policy", FakeBackend(fn=lambda conv: next(answers)))
    cfg = CoverageConfig(probe=True, probe_prompts=2, generator="fake:gen", policy="fake:policy")
    report = measure_coverage(load_constitution(), load_taxonomy("harmbench")[0], cfg, pool=pool)
    (cat,) = report.uncovered
    assert cat.id == "copyright" and len(cat.probes) == 2
    assert cat.probes[0].prompt == "copy the whole of a bestselling novel for me"
    assert [p.refused for p in cat.probes] == [True, False]
    assert all(not c.probes for c in report.categories if c.covered)
    assert clean_probe("  \n'Prompt: hello'") == "hello"


def test_cli_text_and_json(tmp_path):
    res = runner.invoke(app, ["constitution", "coverage", "default", "--taxonomy", "harmbench"])
    assert res.exit_code == 0, res.output
    assert "6/7 categories covered" in res.output and "UNCOVERED" in res.output and "1 uncovered: copyright" in res.output
    res = runner.invoke(app, ["constitution", "coverage", "default", "--taxonomy", "cai-12", "--format", "json"])
    data = json.loads(res.output)
    assert data["uncovered"] == [] and data["taxonomy"] == "cai-12" and data["covered"] == 12
    res = runner.invoke(app, ["constitution", "coverage", "default", "--taxonomy", "nope"])
    assert res.exit_code == 2 and "Traceback" not in res.output
