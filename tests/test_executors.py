"""Executors: the `executor:` setting of every sharded stage, the start-up version check, the engines' requests and
answers, and the ray executor end to end on 2 CPUs against a local OpenAI-compatible server (outputs, resume and
manifests equal the local executor's). One Ray session serves the module (ray.init costs ~10-20 s)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cai import registry
from cai.backends.base import GenParams
from cai.backends.openai_backend import OpenAIBackend
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.config import build_config
from cai.errors import ConfigError, MissingExtraError
from cai.executors import versions
from cai.executors.config import ExecutorConfig
from cai.executors.engines import HttpEngine, VllmEngine, http_postprocess, vllm_postprocess, vllm_preprocess
from cai.executors.raydata import blocks_of

sys.path.insert(0, str(Path(__file__).parent))
from openai_stub_server import StubServer  # noqa: E402

SHARDED = [s.name for s in registry.STAGES if s.kind == "sharded"]


# ------------------------------------------------------------------------------------------- settings (no Ray)
@pytest.mark.parametrize("stage", SHARDED)
def test_every_sharded_stage_takes_an_executor_left_out_of_its_fingerprint(stage):
    cls = registry.get(stage).config_class()
    cfg = build_config(cls, {"executor": "ray"})
    assert cfg.executor.kind == "ray" and cfg.executor.engine == "vllm" and cfg.executor.num_engines == 1
    assert "executor" not in cfg.model_dump(mode="json")  # a stage started locally resumes on ray
    assert cls.model_config.get("extra") == "forbid" and cls.__name__ == cls.__mro__[1].__name__


def test_training_stages_have_no_executor():
    for name in registry.TRAINING_STAGES:
        assert "executor" not in registry.get(name).config_class().model_fields


def test_executor_errors_name_the_field():
    cls = registry.get("pairs").config_class()
    with pytest.raises(ConfigError) as e:
        build_config(cls, {"executor": {"kind": "slurm"}})
    assert "executor.kind" in e.value.message
    with pytest.raises(ConfigError) as e:
        build_config(cls, {"executor": {"kind": "ray", "engine_kwargs": {"tensor_parallel_size": 2}}})
    assert "executor.tensor_parallel_size" in e.value.message
    with pytest.raises(ConfigError) as e:
        build_config(cls, {"executor": {"kind": "ray", "gpus": 2}})
    assert "executor.gpus" in e.value.message and "num_engines" in e.value.message


def test_version_check_names_the_fix(monkeypatch):
    found = {"ray": "2.60.0", "vllm": "0.33.0"}
    monkeypatch.setattr(versions, "installed", lambda dist: found.get(dist))
    with pytest.raises(MissingExtraError) as e:
        versions.check_versions("vllm")
    assert "vllm==0.29.0" in e.value.message and "found vllm 0.33.0" in e.value.message
    assert "pip install -e '.[scale]'" in e.value.fix
    found.pop("vllm")
    with pytest.raises(MissingExtraError) as e:
        versions.check_versions("vllm")
    assert "needs vllm, which is not installed" in e.value.message
    found["ray"] = "2.59.1"
    with pytest.raises(MissingExtraError) as e:
        versions.check_versions("http")
    assert "ray==2.60.0" in e.value.message and "found ray 2.59.1" in e.value.message


def test_the_command_line_refuses_ray_without_vllm_with_the_fix(runner, tmp_path):
    from cai.cli.main import app

    if versions.installed("vllm") is not None:
        pytest.skip("vLLM is installed here")
    r = runner.invoke(app, ["pairs", "--executor", "ray", "--model", "fake", "--limit", "1",
                            "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert "needs vllm" in r.output and "pip install -e '.[scale]'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "default" / "pairs").exists()  # refused before the stage folder was touched


def test_roles_must_suit_the_engine():
    ray_http = ExecutorConfig(kind="ray", engine="http")
    with pytest.raises(ConfigError, match="openai:NAME@"):
        HttpEngine(ModelSpec.model_validate("fake"), ray_http)
    with pytest.raises(ConfigError, match="executor.engine: http"):
        VllmEngine(ModelSpec.model_validate("openai:m@http://127.0.0.1:1/v1"), ExecutorConfig(kind="ray"))
    with pytest.raises(ConfigError, match="not the GGUF"):
        VllmEngine(ModelSpec.model_validate("gguf:/models/m.gguf"), ExecutorConfig(kind="ray"))


def test_blocks_keep_the_samples_of_a_conversation_together():
    a, b, c = ([{"role": "user", "content": x}] for x in "abc")
    convs = [a, a, a, b, b, c, c, c, c]
    blocks = blocks_of(convs, batch_size=2)
    assert [i for blk in blocks for i in blk] == list(range(9))
    assert blocks == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    assert blocks_of(convs, batch_size=100) == [list(range(9))]


def test_http_requests_are_the_http_backends_requests():
    spec = ModelSpec.model_validate("openai:stub-model@http://127.0.0.1:9/v1")
    eng = HttpEngine(spec, ExecutorConfig(kind="ray", engine="http"))
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}]
    p = GenParams(max_new_tokens=7, temperature=0.7, seed=3, stop=["\n"], repetition_penalty=1.2)
    req = eng.generate_request(conv, p, p.seed_for(1))
    assert req == {"model": "stub-model", "messages": conv, "max_tokens": 7, "temperature": 0.7, "top_p": 1.0,
                   "seed": p.seed_for(1), "stop": ["\n"], "repetition_penalty": 1.2,
                   "continue_final_message": True, "add_generation_prompt": False}
    assert eng.url == "http://127.0.0.1:9/v1/chat/completions"
    assert eng.penalty().describe()["repetition_penalty_route"].startswith("field")  # nothing answers on port 9
    assert eng.score_request(conv[:1]) == {"model": "stub-model", "messages": conv[:1], "max_tokens": 1,
                                           "temperature": 0, "logprobs": True, "top_logprobs": 20}
    assert eng.option_scores({" A": -0.5, "(B": -1.0, "C": -2.0}, ["A", "B"]) == [-0.5, -1.0]


def test_answers_are_flattened_for_arrow():
    resp = {"model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 2},
            "choices": [{"message": {"content": " (A"}, "finish_reason": "length",
                         "logprobs": {"content": [{"token": "A", "logprob": -0.1,
                                                   "top_logprobs": [{"token": "A", "logprob": -0.1},
                                                                    {"token": " B", "logprob": -2.5}]}]}}]}
    row = http_postprocess({"cai_index": 4, "http_response": resp})
    assert row["cai_index"] == 4 and row["text"] == " (A" and row["finish"] == "length"
    assert (row["prompt_tokens"], row["completion_tokens"], row["error"]) == (5, 2, "")
    assert json.loads(row["top"]) == {"A": -0.1, " B": -2.5}
    err = http_postprocess({"cai_index": 0, "http_response": {"error": {"message": "model `x` does not exist"}}})
    assert "does not exist" in err["error"] and not err["has_text"]
    # vLLM: token id -> Logprob info dicts do not convert to Arrow; only the scored ids' numbers are kept
    req = {"messages": [{"role": "user", "content": "q"}], "sampling_params": {"max_tokens": 1, "temperature": 0.0,
                                                                                "logprob_token_ids": [32, 33]}}
    pre = vllm_preprocess({"cai_index": 1, "request": json.dumps(req)})
    assert pre["sampling_params"]["logprob_token_ids"] == [32, 33] and pre["max_tokens"] == 1
    out = vllm_postprocess({**pre, "generated_text": "A", "num_generated_tokens": 1, "num_input_tokens": 9,
                            "logprobs": [{32: {"logprob": -0.2, "rank": 1}, 33: {"logprob": -1.9, "rank": 2}}]})
    assert json.loads(out["top"]) == {"32": -0.2, "33": -1.9} and out["finish"] == "length" and out["prompt_tokens"] == 9


def test_vllm_option_ids_come_from_the_tokenizer(monkeypatch):
    class Tok:
        table = {"A": [32], " A": [330], "(A": [7, 32], " (A": [320, 32], "B": [33], " B": [347], "(B": [7, 33], " (B": [320, 33]}

        def encode(self, text, add_special_tokens=False):
            return self.table[text]

    eng = VllmEngine(ModelSpec.model_validate("/models/llama"), ExecutorConfig(kind="ray"))
    monkeypatch.setattr(eng, "tokenizer", lambda: Tok())
    req = eng.score_request([{"role": "user", "content": "q"}], ["A", "B"])
    assert req["sampling_params"] == {"max_tokens": 1, "temperature": 0.0, "logprob_token_ids": [32, 33, 330, 347]}
    a, b = eng.option_scores({"32": -0.7, "330": -0.7, "33": -3.0}, ["A", "B"])
    assert a == pytest.approx(-0.0068, abs=1e-3) and b == -3.0


# ------------------------------------------------------------------------------------------- one Ray session
@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    ray = pytest.importorskip("ray")
    try:
        import ray.data.llm  # noqa: F401
    except ImportError as e:  # ray[data] alone lacks aiohttp, which ray.data.llm imports
        pytest.skip(f"ray.data.llm cannot be imported here ({e}); pip install aiohttp")
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def server():
    srv = StubServer().start()
    yield srv
    srv.stop()


def test_the_vllm_processor_is_built_without_vllm(ray_session):
    from ray.data.llm import vLLMEngineProcessorConfig

    ex = ExecutorConfig(kind="ray", num_engines=4, tensor_parallel_size=2, batch_size=32,
                        engine_kwargs={"max_model_len": 4096})
    eng = VllmEngine(ModelSpec.model_validate("/models/qwen2.5-7b"), ex)
    cfg = eng.config()
    assert isinstance(cfg, vLLMEngineProcessorConfig)
    assert cfg.model_source == "/models/qwen2.5-7b" and cfg.concurrency == (4, 4) and cfg.batch_size == 32
    assert cfg.engine_kwargs["tensor_parallel_size"] == 2 and cfg.engine_kwargs["enable_prefix_caching"] is True
    proc = eng.processor()  # build_processor runs without vLLM installed
    assert list(proc.stages) == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    stage = proc.stages["vLLMEngineStage"]
    assert stage.fn_constructor_kwargs["engine_kwargs"]["max_model_len"] == 4096
    # repetition_penalty keeps its local meaning: the engines load the answer-only processor and requests ask for it
    assert cfg.engine_kwargs["logits_processors"] == ["cai.resources.vllm.cai_answer_penalty:AnswerRepetitionPenalty"]
    req = eng.generate_request([{"role": "user", "content": "q"}], GenParams(repetition_penalty=1.2), 5)
    assert req["sampling_params"]["extra_args"] == {"answer_repetition_penalty": 1.2}
    assert "repetition_penalty" not in req["sampling_params"]
    pool = stage.map_batches_kwargs["compute"]
    assert (pool.min_size, pool.max_size) == (4, 4)


class _Interrupted(Exception):
    pass


class _StopsAfterFirstCall(OpenAIBackend):
    """The HTTP backend, killed (an exception) when the second shard starts."""

    def generate(self, conversations, params):
        if self.stats.calls >= 1:
            raise _Interrupted("killed")
        return super().generate(conversations, params)


def _pairs_cfg(srv, kind):
    cls = registry.get("pairs").config_class()
    return build_config(cls, {"limit": 4, "k": 2, "shard_size": 2, "max_tokens": 40, "seed": 5,
                              "policy": f"openai:stub-model@{srv.base_url}",
                              "executor": {"kind": kind, "engine": "http", "batch_size": 2}})


def test_ray_executor_resumes_a_local_run_with_identical_outputs(ray_session, server, tmp_path):
    local, mixed = tmp_path / "local", tmp_path / "mixed"
    m_local = registry.call("pairs", _pairs_cfg(server, "local"), local)
    # the same stage, killed after its first shard on the local executor ...
    spec = ModelSpec.model_validate(f"openai:stub-model@{server.base_url}")
    pool = BackendPool()
    pool.put(spec, _StopsAfterFirstCall("stub-model", base_url=server.base_url))
    with pytest.raises(_Interrupted):
        registry.call("pairs", _pairs_cfg(server, "local"), mixed, pool=pool)
    assert not (mixed / "pairs" / "manifest.json").exists()
    # ... resumed on the ray executor: only shard 1 runs, through one Ray Data job
    before = len(server.requests)
    m_ray = registry.call("pairs", _pairs_cfg(server, "ray"), mixed)
    ray_requests = server.requests[before:]
    assert (mixed / "pairs" / "pairs.jsonl").read_bytes() == (local / "pairs" / "pairs.jsonl").read_bytes()
    rows = [json.loads(x) for x in (mixed / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["n_distinct"] == 2 for r in rows)  # K seeded rows: the samples differ
    assert m_ray["counts"] == m_local["counts"] and m_ray["config"] == m_local["config"]
    assert m_ray["timing"]["resumed_rows"] == 2
    policy = m_ray["model"]
    assert policy["backend"] == "ray" and policy["engine"] == "http" and policy["versions"]["ray"] == "2.60.0"
    assert policy["throughput"]["jobs"] == 1 and policy["throughput"]["generated_tokens"] > 0
    # the requests the ray workers sent are the ones the HTTP backend sent for the same shard
    local_requests = [r for r in server.requests[:before] if r["messages"] in [q["messages"] for q in ray_requests]]
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, ray_requests)) == sorted(map(key, local_requests[-len(ray_requests):]))


def test_ray_executor_labels_equal_the_local_labels(ray_session, server, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}",
                                         "responses": [f"answer one {i}", f"answer two {i}"]}) + "\n" for i in range(3)))
    server.top_logprobs = [("A", -0.4), (" B", -1.3), ("C", -4.0)]
    server.reject_fields = {"continue_final_message"}  # a server without assistant prefill: both executors drop it
    try:
        out = {}
        for kind in ("local", "ray"):
            cls = registry.get("label").config_class()
            cfg = build_config(cls, {"pairs": str(pairs), "limit": 3, "labeler": f"openai:stub-model@{server.base_url}",
                                     "executor": {"kind": kind, "engine": "http"}})
            out[kind] = registry.call("label", cfg, tmp_path / kind)
        a = (tmp_path / "local" / "label" / "labels.jsonl").read_text()
        b = (tmp_path / "ray" / "label" / "labels.jsonl").read_text()
        assert a == b and a.strip()
        ray_model, local_model = out["ray"]["model"], out["local"]["model"]
        assert ray_model["backend"] == "ray" and ray_model["throughput"]["jobs"] == 2  # the refused rows, sent again
        assert set(ray_model["not_applied"]) == set(local_model["not_applied"]) == {"assistant_prefill"}
        assert out["ray"]["labels"] == out["local"]["labels"]
    finally:
        server.top_logprobs = None
        server.reject_fields = set()


# ------------------------------------------------------------------------------------------- training launch
def test_accelerate_configs_resolve_to_the_ones_trl_ships(tmp_path):
    from cai.train import accelerate_launch as acc

    for name, marker in (("zero2", "zero_stage: 2"), ("zero3", "zero_stage: 3"), ("fsdp2", "fsdp_version: 2")):
        path = acc.resolve_config(name)
        assert path.parent.name == "accelerate_configs" and path.parent.parent.name == "trl"
        assert marker in path.read_text()
    mine = tmp_path / "mine.yaml"
    mine.write_text("distributed_type: MULTI_GPU\n")
    assert acc.resolve_config(str(mine)) == mine
    with pytest.raises(ConfigError) as e:
        acc.resolve_config("zero9")
    assert "zero2" in e.value.fix and "accelerate YAML" in e.value.fix
    assert acc.launch_args(["num_processes=8", "--machine-rank=1"]) == ["--num_processes", "8", "--machine_rank", "1"]
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        acc.launch_args(["num_processes"])


def test_training_commands_launch_through_accelerate(runner, tmp_path, monkeypatch):
    from cai.cli.main import app
    from cai.train import accelerate_launch as acc

    calls = []
    monkeypatch.setattr(acc.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    r = runner.invoke(app, ["sft", "--accelerate-config", "zero2", "--accelerate-arg", "num_processes=2",
                            "--run", "r1", "--runs-dir", str(tmp_path), "--max-steps", "3", "--no-lora",
                            "--set", "seed=4"])
    assert r.exit_code == 0, r.output
    (cmd,) = calls
    i = cmd.index("-m", 3)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and cmd[cmd.index("--config_file") + 1].endswith("zero2.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[i + 1: i + 3] == ["cai.train.accelerate_launch", "sft"]
    stage_args = cmd[i + 3:]
    assert "--accelerate-config" not in stage_args and "--accelerate-arg" not in stage_args
    for pair in (["--run", "r1"], ["--runs-dir", str(tmp_path)], ["--max-steps", "3"], ["--set", "seed=4"]):
        j = stage_args.index(pair[0])
        assert stage_args[j: j + 2] == pair
    assert "--no-lora" in stage_args
    # an unfinished stage is not resumed by several processes
    (tmp_path / "r1" / "sft").mkdir(parents=True)
    (tmp_path / "r1" / "sft" / "config.json").write_text("{}")
    r = runner.invoke(app, ["sft", "--accelerate-config", "zero2", "--run", "r1", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2 and "cannot resume" in r.output and len(calls) == 1
    r = runner.invoke(app, ["dpo", "--accelerate-arg", "num_processes=2"])
    assert r.exit_code == 2 and "without --accelerate-config" in r.output


@pytest.mark.slow
def test_ray_executor_revises_like_the_local_executor(ray_session, server, tmp_path):
    """revise: answers, then critique and revision rounds (a model call each) give the same rows and counts."""
    spec = f"openai:stub-model@{server.base_url}"
    out = {}
    for kind in ("local", "ray"):
        cls = registry.get("revise").config_class()
        cfg = build_config(cls, {"limit": 3, "helpful_limit": 1, "rounds": 2, "shard_size": 4, "temperature": 0.7,
                                 "policy": spec, "critic": spec, "reviser": spec,
                                 "executor": {"kind": kind, "engine": "http"}})
        out[kind] = registry.call("revise", cfg, tmp_path / kind)
    for name in ("data.jsonl", "sft.jsonl", "preference.jsonl", "helpful.jsonl"):
        assert (tmp_path / "ray" / "revise" / name).read_text() == (tmp_path / "local" / "revise" / name).read_text()
    assert out["ray"]["counts"] == out["local"]["counts"] and out["ray"]["counts"]["rounds_run"] == 6
    assert {m["backend"] for m in out["ray"]["models"].values()} == {"ray"}
