"""One config line points a role at an OpenAI-compatible server: revise and label run end to end over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openai_stub_server import StubServer

CAI = str(Path(sys.executable).parent / "cai")


@pytest.fixture
def server():
    s = StubServer().start()
    yield s
    s.stop()


def test_revise_critic_and_reviser_on_a_server_from_one_config_line(server, tmp_path):
    cfg = tmp_path / "revise.yaml"
    cfg.write_text(
        "revise:\n"
        "  limit: 3\n  helpful_limit: 1\n  rounds: 1\n"
        "  policy: fake\n"
        f"  critic: openai:stub-model@{server.base_url}\n"
        f"  reviser: {{backend: openai, model: stub-model, base_url: '{server.base_url}', max_concurrency: 2}}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    r = subprocess.run([CAI, "revise", "-c", str(cfg), "--run", "r", "--runs-dir", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    # 3 critiques + 3 revisions went over HTTP, after one one-token probe for the answer-penalty plugin; the policy
    # (fake) answered locally.
    assert server.chat_hits == 7
    probe, first = server.requests[0], server.requests[1]
    assert probe["max_tokens"] == 1 and probe["vllm_xargs"] == {"answer_repetition_penalty": 0.5}
    assert first["model"] == "stub-model" and first["messages"][-1]["content"].startswith("Critique request:")
    rows = [json.loads(x) for x in (tmp_path / "r" / "revise" / "data.jsonl").read_text().splitlines()]
    red = [x for x in rows if x["kind"] == "redteam"]
    assert all(x["rounds"][0]["critique"].startswith("echo: Critique request:") for x in red)
    manifest = json.loads((tmp_path / "r" / "revise" / "manifest.json").read_text())
    assert manifest["models"]["critic"]["backend"] == "openai"
    assert manifest["models"]["critic"]["base_url"] == server.base_url
