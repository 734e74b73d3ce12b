"""The `cai` command: help for every command, and bad input -> exit 2 with one paragraph naming the fix."""

from __future__ import annotations

import json
import subprocess

import pytest
import typer

from cai import __version__
from cai.cli.main import app
from cai.errors import CaiError, UserInputError
from conftest import flat


def _walk(cmd, path: tuple[str, ...] = ()):
    """Every command and sub-command of a typer/click group (typer ships its own click, so duck-type)."""
    yield path, cmd
    for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
        yield from _walk(sub, path + (name,))


ROOT = typer.main.get_command(app)
COMMANDS = list(_walk(ROOT))
COMMAND_IDS = [" ".join(p) or "cai" for p, _ in COMMANDS]


def test_command_discovery_finds_the_known_commands():
    found = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "revise", "constitution", "constitution validate", "constitution show",
            "constitution schema", "constitution path"} <= found


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=COMMAND_IDS)
def test_help_for_every_command(runner, path, cmd):
    r = runner.invoke(app, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    assert "Traceback" not in r.output
    assert cmd.help, f"`cai {' '.join(path)}` has no help text"
    # Every option and argument explains itself in --help.
    for param in cmd.params:
        if param.name in ("help",):
            continue
        assert getattr(param, "help", None), f"`cai {' '.join(path)}`: {param.name} has no help text"
    for name in getattr(cmd, "commands", None) or {}:
        assert name in r.output


def test_no_args_shows_help(runner):
    r = runner.invoke(app, [])
    assert "Usage:" in r.output
    assert "revise" in r.output and "constitution" in r.output


def test_version(runner):
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.stdout.strip() == f"cai {__version__}"


# --- bad input -------------------------------------------------------------------------------------------------
def assert_user_error(r, *needles: str) -> str:
    """Exit 2, no traceback, one paragraph that says how to fix it and names ``needles``."""
    assert r.exit_code == 2, f"exit {r.exit_code}: {r.output}\n{r.exception!r}"
    out = r.output.strip()
    assert "Traceback" not in out
    assert "fix" in out.lower(), out
    assert "\n\n" not in out, f"message is more than one paragraph:\n{out}"
    assert len(out) < 2000, out
    for n in needles:
        assert n in flat(out), f"{n!r} not in:\n{out}"
    return out


def _revise(runs, *args: str) -> list[str]:
    return ["revise", "--runs-dir", str(runs), "--model", "fake", "--limit", "2", "--helpful-limit", "0", *args]


def test_malformed_constitution(runner, fixtures, tmp_path):
    path = fixtures / "constitution_typo.yaml"
    r = runner.invoke(app, _revise(tmp_path, "--constitution", str(path)))
    assert_user_error(r, f"{path}:10: principles[0].critque_request", "cai constitution schema")
    assert not (tmp_path / "default").exists()  # nothing was started


def test_empty_prompt_file(runner, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    r = runner.invoke(app, _revise(tmp_path / "runs", "--prompts", str(path)))
    assert_user_error(r, f"{path} is empty")


def test_non_utf8_prompt_file(runner, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "ok"}\n{"prompt": "na\u00efve"}\n'.encode("latin-1"))
    r = runner.invoke(app, _revise(tmp_path / "runs", "--prompts", str(path)))
    assert_user_error(r, f"{path}:2: not valid UTF-8", "UTF-8")


def test_bad_json_line_in_prompt_file(runner, fixtures, tmp_path):
    path = fixtures / "bad_line.jsonl"
    r = runner.invoke(app, _revise(tmp_path / "runs", "--prompts", str(path)))
    assert_user_error(r, f"{path}:3: invalid JSON")


def test_missing_column_then_mapped(runner, fixtures, tmp_path):
    path = fixtures / "questions.csv"
    r = runner.invoke(app, _revise(tmp_path / "runs", "--prompts", str(path)))
    assert_user_error(r, "no column 'prompt'", "Columns found: question, kind", "--column prompt=")
    # Following the fix works.
    r = runner.invoke(app, _revise(tmp_path / "runs", "--prompts", str(path), "--column", "prompt=question", "--rounds", "1"))
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "runs" / "default" / "revise" / "data.jsonl").read_text().splitlines()]
    assert [x["prompt"] for x in rows] == [
        "How can I read my partner's messages without them knowing?",
        "What household chemicals should never be mixed, and why?",
    ]


def test_bad_column_flag(runner, fixtures, tmp_path):
    r = runner.invoke(app, _revise(tmp_path / "runs", "--prompts", str(fixtures / "questions.csv"), "--column", "question"))
    assert_user_error(r, "'question' is not of the form FIELD=COLUMN")


def test_unknown_backend_in_config(runner, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("policy: {backend: nope}\n", encoding="utf-8")
    r = runner.invoke(app, ["revise", "--config", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert_user_error(r, str(cfg), "policy.backend", "Input should be 'transformers', 'openai'", "'fake'")
    # The same inside a `revise:` section.
    cfg.write_text("revise:\n  critic: {backend: nope, model: x}\n", encoding="utf-8")
    r = runner.invoke(app, ["revise", "--config", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert_user_error(r, "critic.backend")


def test_unknown_setting_in_config(runner, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("revise:\n  rounds: 2\n  critque_tokens: 10\n", encoding="utf-8")
    r = runner.invoke(app, ["revise", "--config", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert_user_error(r, "critque_tokens: unknown setting", "critique_tokens")


def test_bad_value_and_bad_yaml_in_config(runner, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("rounds: 0\n", encoding="utf-8")
    r = runner.invoke(app, ["revise", "--config", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert_user_error(r, "rounds")
    cfg.write_text("rounds: 2\nseed: [1\n", encoding="utf-8")
    r = runner.invoke(app, ["revise", "--config", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert_user_error(r, "YAML syntax error")
    r = runner.invoke(app, ["revise", "--config", str(tmp_path / "none.yaml"), "--runs-dir", str(tmp_path / "runs")])
    assert_user_error(r, "none.yaml not found")


def test_unreachable_server(runner, tmp_path, closed_port):
    url = f"http://127.0.0.1:{closed_port}/v1"
    r = runner.invoke(
        app,
        ["revise", "--runs-dir", str(tmp_path / "runs"), "--model", f"openai:x@{url}", "--limit", "2", "--helpful-limit", "0"],
    )
    out = assert_user_error(r, url, "Cannot reach")
    assert not (tmp_path / "runs" / "default" / "revise" / "manifest.json").exists()
    assert "start the server" in out


def test_debug_raises_the_error_in_process(runner, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    r = runner.invoke(app, ["--debug", *_revise(tmp_path / "runs", "--prompts", str(path))])
    assert r.exit_code != 0
    assert isinstance(r.exception, UserInputError)


def test_debug_flag_does_not_leak_into_the_next_invocation(runner, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    runner.invoke(app, ["--debug", *_revise(tmp_path / "runs", "--prompts", str(path))])
    r = runner.invoke(app, _revise(tmp_path / "runs", "--prompts", str(path)))
    assert r.exit_code == 2


def _run_cai(cai_exe, env, *args, cwd=None):
    return subprocess.run([str(cai_exe), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_subprocess_error_has_no_traceback_and_debug_has_one(cai_exe, subprocess_env, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    args = ["revise", "--runs-dir", str(tmp_path / "runs"), "--model", "fake", "--prompts", str(path)]
    p = _run_cai(cai_exe, subprocess_env, *args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr + p.stdout
    assert f"{path} is empty" in flat(p.stderr)
    assert "fix:" in p.stderr
    p = _run_cai(cai_exe, subprocess_env, "--debug", *args)
    assert p.returncode != 0
    assert "Traceback (most recent call last)" in p.stderr
    assert "UserInputError" in p.stderr
    # CAI_DEBUG=1 in the environment does the same as --debug.
    p = _run_cai(cai_exe, dict(subprocess_env, CAI_DEBUG="1"), *args)
    assert "Traceback (most recent call last)" in p.stderr


def test_subprocess_validate_bad_constitution(cai_exe, subprocess_env, fixtures):
    path = fixtures / "constitution_typo.yaml"
    p = _run_cai(cai_exe, subprocess_env, "constitution", "validate", str(path))
    assert p.returncode == 2
    assert f"{path}:10: principles[0].critque_request" in flat(p.stderr + p.stdout)
    assert "Traceback" not in p.stderr


def test_subprocess_unreachable_server(cai_exe, subprocess_env, tmp_path, closed_port):
    url = f"http://127.0.0.1:{closed_port}/v1"
    p = _run_cai(cai_exe, subprocess_env, "revise", "--runs-dir", str(tmp_path / "runs"), "--model", f"openai:x@{url}",
                 "--limit", "1", "--helpful-limit", "0")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert url in flat(p.stderr) and "fix:" in p.stderr


def test_every_cai_error_maps_to_exit_2():
    assert CaiError.exit_code == 2
    for cls in CaiError.__subclasses__():
        assert cls.exit_code == 2
