"""The stage registry: every record loads, the pipeline is built from it, inputs default to earlier stages."""

from __future__ import annotations

import inspect

import pytest

from cai import registry
from cai.pipeline import STAGES, PipelineConfig

BASE = {"backend": "fake", "model": "fake"}


@pytest.mark.parametrize("rec", registry.STAGES, ids=[s.name for s in registry.STAGES])
def test_every_record_loads(rec):
    cls = rec.config_class()
    assert cls.model_config.get("extra") == "forbid"
    params = list(inspect.signature(rec.run_function()).parameters)
    assert params[:2] == ["cfg", "run_dir"]
    for inp in rec.inputs:
        assert inp.field in cls.model_fields and inp.stage in registry.BY_NAME and inp.description
    for role in rec.roles:
        assert role in cls.model_fields
    assert rec.summary_function() is not None and rec.help


def test_the_pipeline_is_built_from_the_registry():
    assert STAGES == registry.PIPELINE_STAGES == (
        "redteam", "revise", "sft", "pairs", "label", "reward", "rl", "dpo", "eval")
    assert set(STAGES) <= set(PipelineConfig.model_fields)
    assert PipelineConfig().stages == list(registry.DEFAULT_PIPELINE) == list(STAGES[1:])  # redteam only when named
    assert registry.TRAINING_STAGES == ("sft", "reward", "rl", "dpo", "orpo")


def test_wire_in_a_pipeline_that_trains_sft(tmp_path):
    planned = list(STAGES)
    sft = str(tmp_path / "sft" / "model")
    for stage in ("pairs", "rl", "dpo"):
        assert registry.wire(stage, {}, tmp_path, base=BASE, planned=planned)["policy"]["model"] == sft
    assert registry.wire("revise", {}, tmp_path, base=BASE, planned=planned) == {
        "policy": BASE, "critic": BASE, "reviser": BASE}
    assert registry.wire("label", {}, tmp_path, base=BASE, planned=planned)["labeler"] == BASE
    models = registry.wire("eval", {}, tmp_path, base=BASE, planned=planned)["models"]
    assert list(models) == ["base", "sl-cai", "rl-cai", "rl-cai-dpo"]
    # what the user set is kept
    assert registry.wire("pairs", {"policy": "x"}, tmp_path, base=BASE, planned=planned)["policy"] == "x"


def test_wire_without_sft_falls_back_to_the_base_model(tmp_path):
    planned = ["revise", "pairs", "label", "eval"]
    assert registry.wire("pairs", {}, tmp_path, base=BASE, planned=planned)["policy"] == BASE
    assert registry.wire("eval", {}, tmp_path, base=BASE, planned=planned)["models"] == {"base": BASE}


def test_policy_default_and_the_command_line_wiring(tmp_path):
    assert registry.policy_default(tmp_path)[0] is None
    assert registry.policy_default(tmp_path, planned=["sft"])[0] == tmp_path / "sft" / "model"
    assert registry.wire("pairs", {}, tmp_path, leave_null=True) == {}
    (tmp_path / "sft" / "model").mkdir(parents=True)
    (tmp_path / "sft" / "model" / "config.json").write_text("{}")
    path, how = registry.policy_default(tmp_path)
    assert path == tmp_path / "sft" / "model" and "sft/model" in how
    # on the command line pairs gets the run's SL-CAI model; rl, dpo and bestofn (default null) resolve it themselves
    assert registry.wire("pairs", {}, tmp_path, leave_null=True)["policy"]["model"] == str(path)
    for stage in ("rl", "dpo", "bestofn"):
        assert "policy" not in registry.wire(stage, {}, tmp_path, leave_null=True)


def test_pipeline_set_overrides_a_section(runner, tmp_path):
    import json

    import yaml

    from cai.cli.main import app

    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"run": "s", "runs_dir": str(tmp_path / "runs"), "stages": ["revise"],
                                   "base_model": "fake", "revise": {"limit": 2, "helpful_limit": 0, "rounds": 3}}))
    r = runner.invoke(app, ["pipeline", str(cfg), "--set", "revise.rounds=1", "--set", "revise.shard_size=1"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "runs" / "s" / "revise" / "manifest.json").read_text())
    assert m["config"]["rounds"] == 1 and m["config"]["shard_size"] == 1
    assert "revise done" in r.output and "pipeline done" in r.output
    r = runner.invoke(app, ["pipeline", str(cfg), "--set", "revise.rounds=1", "--set", "revise.critic.batch_size=3",
                            "--run", "s2"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "runs" / "s2" / "revise" / "manifest.json").read_text())
    assert m["config"]["critic"]["batch_size"] == 3 and m["config"]["critic"]["backend"] == "fake"
    r = runner.invoke(app, ["pipeline", str(cfg), "--set", "revise.roundz=1"])
    assert r.exit_code == 2 and "roundz" in r.output


def test_the_report_charts_the_curves_the_registry_declares():
    from cai.report.read import CURVES, STAGES as REPORT_STAGES

    assert REPORT_STAGES == registry.PIPELINE_STAGES
    for name in registry.TRAINING_STAGES:
        assert [key for key, _, _ in CURVES[name]] == list(registry.get(name).curves), name


def test_settings_without_a_model_refine_the_default_model(tmp_path):
    planned = list(STAGES)
    w = registry.wire("revise", {"critic": {"batch_size": 3}}, tmp_path, base=BASE, planned=planned)
    assert w["critic"] == {**BASE, "batch_size": 3} and w["policy"] == BASE
    w = registry.wire("pairs", {"policy": {"batch_size": 3}}, tmp_path, base=BASE, planned=planned)
    assert w["policy"] == {"backend": "transformers", "model": str(tmp_path / "sft" / "model"), "batch_size": 3}
