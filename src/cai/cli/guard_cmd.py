"""``cai guard``: serve guarded models over an OpenAI-compatible API, check one conversation, manage API keys."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import typer

from cai.cli.common import console, handle_errors, out
from cai.errors import UserInputError

app = typer.Typer(help="The constitution at inference time: a guard server, one-off checks, API keys.",
                  no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the guard server (stored salted and hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _server_config(config_file: str | None, flags: dict[str, Any]):
    from cai.config import build_config
    from cai.guard.server import GuardServerConfig

    data: dict[str, Any] = {}
    if config_file:
        from cai.yamlsafe import YamlError, load_yaml

        try:
            loaded, _ = load_yaml(config_file, what="guard server config")
        except YamlError as e:
            raise UserInputError(e.message, fix=e.fix) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserInputError(f"{config_file}:1: expected a mapping of settings.", fix="write key: value lines")
        data.update(loaded or {})
    for k, v in flags.items():
        if v is None or v == [] or v is False and k in ("no_auth", "audit_content"):
            continue
        data[k] = list(data.get(k, [])) + v if k == "policies" and isinstance(v, list) else v
    return build_config(GuardServerConfig, data, source=config_file or "cai guard serve")


@app.command()
@handle_errors
def serve(
    policy: Optional[list[str]] = typer.Option(None, "--policy", "-p", help="Guard policy YAML file or folder of them (repeatable)"),
    host: Optional[str] = typer.Option(None, help="Interface to listen on [default: 127.0.0.1]"),
    port: Optional[int] = typer.Option(None, help="TCP port [default: 8088]"),
    keys: Optional[str] = typer.Option(None, "--keys", help="API key file written by `cai guard keys add`"),
    key_env: Optional[str] = typer.Option(None, "--key-env", help="Environment variable holding one more key [default: CAI_GUARD_API_KEY]"),
    no_auth: bool = typer.Option(False, "--no-auth", help="Accept requests without a key (local experiments only)"),
    default_policy: Optional[str] = typer.Option(None, "--default-policy", help="Policy id of requests that name none"),
    audit: Optional[str] = typer.Option(None, "--audit", help="Audit log file [default: guard-audit.jsonl]"),
    audit_content: bool = typer.Option(False, "--audit-content", help="Store conversations and answers in the audit log"),
    workers: Optional[int] = typer.Option(None, help="Threads running model work [default: 8]"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Deadline of one request's model work, seconds [default: 600]"),
    max_body_bytes: Optional[int] = typer.Option(None, help="Largest request body (HTTP 413 above) [default: 1 MiB]"),
    max_prompt_tokens: Optional[int] = typer.Option(None, help="Largest conversation in estimated tokens (413 above) [default: 8192]"),
    max_completion_tokens: Optional[int] = typer.Option(None, help="Largest max_tokens a request may ask (413 above) [default: 2048]"),
    stream_mode: Optional[str] = typer.Option(None, "--stream-mode", help="Streaming default: hold (check, then "
                                              "send) or window (send a streaming upstream's text window by window, "
                                              "each after a check) [default: hold]"),
    window_chars: Optional[int] = typer.Option(None, "--window-chars", help="window mode: characters per checked window [default: 200]"),
    cors_origin: Optional[list[str]] = typer.Option(None, "--cors-origin", help="Allow this browser origin (repeatable; default: CORS off)"),
    config: Optional[str] = typer.Option(None, "--config", help="YAML file of server settings (flags override it)"),
) -> None:
    """Serve guarded models: POST /v1/chat/completions (streaming too), /v1/guard/check, GET /v1/models, /healthz, /metrics."""
    import os

    from cai.guard.server import serve as run_server

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars in the server log

    cfg = _server_config(config, {
        "policies": policy or [], "host": host, "port": port, "keys_file": keys, "key_env": key_env, "no_auth": no_auth,
        "default_policy": default_policy, "audit_path": audit, "audit_content": audit_content, "workers": workers,
        "request_timeout_s": timeout, "max_body_bytes": max_body_bytes, "max_prompt_tokens": max_prompt_tokens,
        "max_completion_tokens": max_completion_tokens, "cors_origins": cors_origin or None,
        "stream_mode": stream_mode, "window_chars": window_chars,
    })
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(cfg)


def _read_conversation(path: str) -> tuple[list[dict], str | None]:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"Conversation file {p} does not exist.", fix="give a JSON file: a list of {role, content} messages")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        line = getattr(e, "lineno", None)
        raise UserInputError(f"{p}:{line or 1}: not valid JSON ({getattr(e, 'msg', e)}).",
                             fix='write [{"role": "user", "content": "..."}] or {"messages": [...], "answer": "..."}') from None
    answer = None
    if isinstance(data, dict):
        unknown = set(data) - {"messages", "answer"}
        if unknown or "messages" not in data:
            raise UserInputError(f"{p}: an object needs the field 'messages' (and optionally 'answer'); found {sorted(data)}.",
                                 fix='write {"messages": [{"role": "user", "content": "..."}], "answer": "..."}')
        data, answer = data["messages"], data.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise UserInputError(f"{p}: field 'answer' must be text.", fix="give the answer as a JSON string")
    if not isinstance(data, list):
        raise UserInputError(f"{p}: expected a list of messages, found {type(data).__name__}.",
                             fix='write [{"role": "user", "content": "..."}]')
    return data, answer


@app.command()
@handle_errors
def check(
    conversation: str = typer.Argument(..., help='JSON file: [{"role", "content"}, ...] or {"messages": [...], "answer": "..."}'),
    policy: str = typer.Option(..., "--policy", "-p", help="Guard policy YAML file"),
    answer: Optional[str] = typer.Option(None, "--answer", help="The answer to check (overrides the file's 'answer')"),
    apply: bool = typer.Option(False, "--apply", help="Also act on the verdicts: generate when there is no answer, "
                               "then pass, revise or block (prints the final answer and the trace)"),
) -> None:
    """Check one conversation (and an answer) against a policy; prints the verdicts as JSON. Exit 0 whatever the verdict."""
    from cai.guard.config import GuardConfig
    from cai.guard.core import Guard

    messages, file_answer = _read_conversation(conversation)
    answer = answer if answer is not None else file_answer
    guard = Guard(GuardConfig.load(policy))
    if apply:
        res = guard.apply(messages, answer=answer).as_dict()
    else:
        res = {"policy_id": guard.policy_id, "policy_hash": guard.policy_hash, **guard.check(messages, answer).as_dict()}
    out.print_json(json.dumps(res, ensure_ascii=False))


@keys_app.command("add")
@handle_errors
def keys_add(
    file: str = typer.Option(..., "--file", "-f", help="Key file to append to (created with mode 0600)"),
    key_id: str = typer.Option(..., "--id", help="Public name of the key (appears in logs and the audit log)"),
    policy: Optional[str] = typer.Option(None, "--policy", help="Default policy id for requests with this key"),
    key: Optional[str] = typer.Option(None, "--key", envvar="CAI_GUARD_NEW_KEY",
                                      help="Store this key instead of a random one (better: set CAI_GUARD_NEW_KEY)"),
) -> None:
    """Add a key: its salted sha256 goes into the file; the key is printed once, here, and stored nowhere."""
    from cai.guard.auth import append_key, generate_key, new_record

    secret = key or generate_key()
    if len(secret) < 16:
        raise UserInputError("An API key must have at least 16 characters.", fix="omit --key to get a random one")
    append_key(file, new_record(key_id, secret, policy))
    console.print(f"added key '{key_id}' to {file} (only its salted hash is stored); the key:", highlight=False)
    out.print(secret, markup=False, highlight=False, soft_wrap=True)


@keys_app.command("list")
@handle_errors
def keys_list(file: str = typer.Option(..., "--file", "-f", help="Key file")) -> None:
    """List the key ids (and default policies) of a key file."""
    from cai.guard.auth import read_key_file

    for r in read_key_file(file):
        typer.echo(f"{r.id}\t{r.policy or '-'}")
