"""Stage commands generated from the configs: every field reachable, defaults shown once, file < flags < --set."""

from __future__ import annotations

import typing

import pytest
import typer
from rich.markup import escape

from cai import registry
from cai.cli import options, stage_cmd
from cai.cli.main import app
from cai.config import build_config

ROOT = typer.main.get_command(app)
STAGE_NAMES = [s.name for s in registry.STAGES]


def _parse(stage: str, args: list[str]) -> tuple[dict, type]:
    """The raw settings a command line gives a stage (nothing runs)."""
    rec = registry.get(stage)
    cmd = ROOT.commands[stage]
    ctx = cmd.make_context(stage, list(args))
    cls = rec.config_class()
    flags = options.flags_for(cls, rec.aliases)
    data, _ = stage_cmd.settings(rec, cls, flags, options.roles(cls), ctx.params)
    return data, cls


def _sample(flag: options.Flag, cls: type) -> tuple[list[str], typing.Any]:
    """Arguments setting ``flag`` to a valid value, and the value expected in the settings."""
    fi = cls.model_fields[flag.field]
    name = flag.decls[0].split("/")[0]
    if flag.kind == "bool":
        default = fi.get_default(call_default_factory=True)
        return ([name] if not default else [f"--no-{flag.field.replace('_', '-')}"]), not default
    if flag.kind == "model":
        return [name, "fake"], "fake"
    if flag.kind == "pairs":
        return [name, "prompt=fake"], {"prompt": "fake"}
    t, _ = options._strip_optional(fi.annotation)
    if typing.get_origin(t) is typing.Literal:
        return [name, typing.get_args(t)[-1]], typing.get_args(t)[-1]
    if t is int:
        return [name, "3"], 3
    if t is float:
        return [name, "0.5"], 0.5
    if t is str:
        return [name, "some-value"], "some-value"
    return [name, "[]"], []  # lists, tuples, nested settings: a YAML value


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_config_field_is_reachable_from_the_stage_command(stage):
    rec = registry.get(stage)
    cls = rec.config_class()
    flags = {f.field: f for f in options.flags_for(cls, rec.aliases)}
    assert set(flags) == set(cls.model_fields), "every field has a flag"
    for field, flag in flags.items():
        args, want = _sample(flag, cls)
        data, _ = _parse(stage, args)
        assert data.get(field) == want, (stage, field, args, data)
        # ... and through --set, the way nested settings are reached
        data, _ = _parse(stage, ["--set", f"{field}={want if not isinstance(want, dict) else '{prompt: fake}'}"])
        assert field in data, (stage, field)


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_help_shows_each_default_once_and_from_the_config(runner, stage):
    r = runner.invoke(app, [stage, "--help"])
    assert r.exit_code == 0, r.output
    cmd = ROOT.commands[stage]
    for p in cmd.params:
        text = p.help or ""
        assert text.count("[default:") <= 1, (stage, p.name, text)
        assert not ("(default" in text and "[default:" in text), (stage, p.name, text)
    cls = registry.get(stage).config_class()
    shown = " ".join(r.output.replace("│", " ").split())
    for field, fi in cls.model_fields.items():  # rendered, not swallowed as markup
        if fi.default not in (None, True, False) and type(fi.default) in (int, float, str):
            assert f"[default: {fi.default}]" in shown or "(default" in (fi.description or ""), (stage, field)
    helps = {p.name: p.help for p in cmd.params}
    for field, fi in cls.model_fields.items():
        assert escape((fi.description or "").rstrip(".")) in helps["f_" + field]


def test_flags_override_the_file_and_set_reaches_nested_settings(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("revise:\n  rounds: 3\n  limit: 5\n  critic: openai:small@http://a:1/v1\n", encoding="utf-8")
    data, cls = _parse("revise", ["-c", str(cfg), "--rounds", "1", "--set", "critic.base_url=http://b:2/v1",
                                  "--set", "policy.batch_size=8", "--reviser", "fake"])
    c = build_config(cls, data)
    assert c.rounds == 1 and c.limit == 5  # flag beats file; file beats default
    assert c.critic.backend == "openai" and c.critic.model == "small" and c.critic.base_url == "http://b:2/v1"
    assert c.policy.model == "embedded" and c.policy.batch_size == 8 and c.reviser.backend == "fake"
    # --model sets every role the flags leave unset (over the file's), a role's own flag wins
    data, cls = _parse("revise", ["-c", str(cfg), "--model", "fake", "--critic", "openai:big@http://c:3/v1"])
    c = build_config(cls, data)
    assert (c.policy.backend, c.reviser.backend, c.critic.model) == ("fake", "fake", "big")


def test_names_users_rely_on_still_work():
    cases = {
        "revise": (["--run", "r", "--runs-dir", "d", "--overwrite", "--limit", "2", "--helpful-limit", "0",
                    "--rounds", "2", "--model", "fake", "--column", "prompt=q", "--skip-if-no-problem",
                    "--shard-size", "4", "--prompts", "p.csv", "--constitution", "c.yaml", "--seed", "1"],
                   {"limit": 2, "rounds": 2, "policy": "fake", "critic": "fake", "reviser": "fake",
                    "column_map": {"prompt": "q"}, "skip_if_no_problem": True}),
        "sft": (["--lr", "0.001", "--no-lora", "--helpful", "none", "--model", "embedded", "--max-steps", "2"],
                {"learning_rate": 0.001, "lora": False, "helpful": "none", "model": "embedded"}),
        "pairs": (["--k", "3", "--model", "fake", "--max-tokens", "9", "--top-p", "0.9"],
                  {"k": 3, "policy": "fake", "max_tokens": 9}),
        "label": (["--model", "fake", "--clamp", "0.45,0.55", "--min-confidence", "0.2", "--pairs", "p.jsonl"],
                  {"labeler": "fake", "clamp": "0.45,0.55", "pairs": "p.jsonl"}),
        "rl": (["--algorithm", "rloo", "--policy", "fake", "--reward-model", "r", "--lr", "0.1", "--helpful", "none"],
               {"algorithm": "rloo", "learning_rate": 0.1, "helpful": "none"}),
        "dpo": (["--beta", "0.2", "--min-p-chosen", "0.6", "--label-field", "p"], {"beta": 0.2, "min_p_chosen": 0.6}),
        "bestofn": (["--n", "3", "--split", "train"], {"n": 3, "prompt_split": "train"}),
        "eval": (["-m", "a=fake", "--model", "b=embedded", "--judge", "classifier", "--baseline", "a"],
                 {"models": {"a": "fake", "b": "embedded"}, "judge": "classifier"}),
        "reward": (["--eval-fraction", "0.2", "--model", "embedded"], {"eval_fraction": 0.2}),
    }
    for stage, (args, want) in cases.items():
        data, cls = _parse(stage, args)
        for k, v in want.items():
            assert data[k] == v, (stage, k, data)
        build_config(cls, data)  # and the result is a valid config


def test_special_values_are_parsed_by_the_configs():
    data, cls = _parse("label", ["--clamp", "0.45,0.55"])
    assert build_config(cls, data).clamp == (0.45, 0.55)
    data, cls = _parse("label", ["--clamp", "none"])
    assert build_config(cls, data).clamp is None
    data, cls = _parse("rl", ["--helpful", "none"])
    assert build_config(cls, data).helpful is None
    data, cls = _parse("eval", ["--pairwise", "[]", "--set", "benchmarks=[{path: x.csv, kind: xstest}]"])
    c = build_config(cls, data)
    assert c.pairwise == [] and c.benchmarks[0].kind == "xstest"


def test_bad_set_and_bad_pairs_are_user_errors(runner, tmp_path):
    r = runner.invoke(app, ["revise", "--runs-dir", str(tmp_path), "--set", "rounds"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["revise", "--runs-dir", str(tmp_path), "--set", "roundz=2", "--model", "fake"])
    assert r.exit_code == 2 and "roundz: unknown setting" in " ".join(r.output.split())
    r = runner.invoke(app, ["eval", "--runs-dir", str(tmp_path), "-m", "a=fake", "-m", "a=fake"])
    assert r.exit_code == 2 and "twice" in r.output


def test_top_level_help_imports_no_stage_module():
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from cai.cli.main import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.startswith(('cai.stages', 'trl', 'torch'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_a_misspelled_nested_setting_lists_the_settings_it_sits_in(runner, tmp_path):
    r = runner.invoke(app, ["revise", "--runs-dir", str(tmp_path), "--set", "critic.basee_url=http://x:1/v1"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "critic.basee_url: unknown setting" in text
    assert "base_url" in text and "rounds" not in text


def test_a_wrong_choice_is_the_same_error_as_in_a_file(runner, tmp_path):
    r = runner.invoke(app, ["rl", "--algorithm", "a2c", "--runs-dir", str(tmp_path)])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "algorithm: Input should be 'grpo', 'rloo' or 'ppo'" in text and "fix:" in text
