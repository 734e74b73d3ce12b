"""`cai rl` (GRPO and PPO) and `cai bestofn` on the embedded SmolLM2 with a tiny reward model built here.

The reward model is the embedded model with a freshly initialised (seeded) scalar head: its scores are arbitrary but
deterministic, which is all these runs need - real generation, real scoring, real updates, a real merged model.
Each training run is interrupted after its first checkpoint and resumed, as a killed run would be.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The test machine's cores are shared: one intra-op thread avoids oversubscription stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.backends.embedded import embedded_model_dir

    out = tmp_path_factory.mktemp("tiny-reward") / "model"
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(embedded_model_dir()), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


class Interrupted(Exception):
    pass


def _stop_after_first_checkpoint():
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise Interrupted("killed after checkpoint-1")

    return Stop()


def _rl_cfg(reward_dir: Path, algorithm: str):
    from cai.stages.rl import RLStageConfig

    return RLStageConfig(
        algorithm=algorithm,
        reward_model=str(reward_dir),
        limit=2,
        helpful_limit=0,
        batch_size=2,
        num_generations=2,
        max_completion_length=16 if algorithm == "grpo" else 12,
        max_steps=2,
        save_steps=1,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        seed=1,
    )


def _killed_before_manifest(run) -> dict:
    """Run a stage whose process dies after its last checkpoint and model save, right before the manifest is written.
    Returns the manifest it was about to write."""
    from cai.runs import StageDir

    seen: dict = {}

    def finish(self, manifest):
        seen.update(manifest)
        raise Interrupted("killed between the last checkpoint and the manifest")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StageDir, "finish", finish)
        with pytest.raises(Interrupted):
            run()
    return seen


def _train_interrupted_then_resumed(cfg, run_dir: Path) -> tuple[dict, dict]:
    """Killed after checkpoint-1, resumed and killed again between the last checkpoint and the manifest, resumed
    again. Returns (the manifest the second session was about to write, the final manifest)."""
    from cai.stages.rl import run_rl

    with pytest.raises(Interrupted):
        run_rl(cfg, run_dir, progress=False, callbacks=[_stop_after_first_checkpoint()])
    stage = run_dir / "rl"
    assert not (stage / "manifest.json").exists()
    assert (stage / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()
    second = _killed_before_manifest(lambda: run_rl(cfg, run_dir, progress=False))
    assert not (stage / "manifest.json").exists() and (stage / "model" / "config.json").exists()
    assert (stage / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()  # the resume point survived
    model_before = (stage / "model" / "model.safetensors").read_bytes()
    final = run_rl(cfg, run_dir, progress=False)
    assert final["training"]["resumed_from"] == "checkpoint-2" and final["training"]["steps_this_session"] == 0
    assert final["training"]["steps"] == 2
    assert (stage / "model" / "model.safetensors").read_bytes() == model_before  # the same trained policy
    return second, final


def _check_training_outputs(second: dict, m: dict, stage: Path, *, kl_after_update_positive: bool) -> None:
    from cai.train.logs import read_metrics

    assert second["training"]["steps"] == 2 and second["training"]["resumed_from"] == "checkpoint-1"
    rows = [r for r in read_metrics(stage / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]  # step 1 logged once, before the kill; step 2 after resuming
    for r in rows:
        for key in ("reward", "kl", "completions/mean_length", "answer_words", "refusal_rate", "repeat_3gram_share"):
            assert isinstance(r.get(key), (int, float)), (key, r)
        assert 0.0 <= r["refusal_rate"] <= 1.0 and 0.0 < r["repeat_3gram_share"] <= 1.0
        assert 1 <= r["completions/mean_length"] <= 16
    if kl_after_update_positive:
        assert rows[1]["kl"] > 0  # the policy moved away from the reference after the first update
    samples = [json.loads(line) for line in (stage / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [1, 2] and len(samples) == 8  # 2 prompts x 2 answers x 2 steps
    assert all(isinstance(s["reward"], float) for s in samples)
    assert m["rl"]["metrics"]["reward"]["last"] == pytest.approx(rows[1]["reward"])
    assert not (stage / "checkpoints").exists()  # removed once the stage finished (keep_checkpoints false)


def _check_merged_model(model_dir: Path) -> None:
    from safetensors.torch import load_file

    from cai.backends.base import GenParams
    from cai.backends.embedded import embedded_model_dir
    from cai.backends.transformers_backend import TransformersBackend

    new = load_file(str(model_dir / "model.safetensors"))
    base = load_file(str(embedded_model_dir() / "model.safetensors"))
    assert set(new) == set(base) and not any(k for k in new if "lora" in k)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert float((new[q] - base[q]).abs().max()) > 0  # LoRA update merged into the weights
    assert float((new["model.embed_tokens.weight"] - base["model.embed_tokens.weight"]).abs().max()) == 0
    backend = TransformersBackend(str(model_dir))
    out = backend.generate([[{"role": "user", "content": "Name a fruit that is yellow."}]], GenParams(max_new_tokens=8))
    assert out[0].completion_tokens > 0 and out[0].text.strip()


def test_grpo_two_steps_resume_merge_reload(tmp_path, reward_dir):
    from cai.stages.rl import run_rl

    cfg = _rl_cfg(reward_dir, "grpo")
    second, m = _train_interrupted_then_resumed(cfg, tmp_path / "run")
    stage = tmp_path / "run" / "rl"
    _check_training_outputs(second, m, stage, kl_after_update_positive=True)
    assert m["algorithm"] == "grpo" and "k3" in m["rl"]["kl_definition"]
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["versions"]["trl"] and manifest["config"]["algorithm"] == "grpo"
    _check_merged_model(stage / "model")
    t0 = time.perf_counter()
    assert run_rl(cfg, tmp_path / "run", progress=False) == manifest  # complete -> skipped
    assert time.perf_counter() - t0 < 10


def test_ppo_two_steps_resume_merge_reload(tmp_path, reward_dir):
    from cai.train.logs import read_metrics

    cfg = _rl_cfg(reward_dir, "ppo")
    second, m = _train_interrupted_then_resumed(cfg, tmp_path / "run")
    stage = tmp_path / "run" / "rl"
    # the per-answer sum of (logp - ref) is a first-order estimate that can dip below 0 for a few samples
    _check_training_outputs(second, m, stage, kl_after_update_positive=False)
    rows = read_metrics(stage / "metrics.jsonl")
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] != 0.0  # identical to the reference at first, then not
    assert all(r["vf_loss"] > 0 and 0 <= r["clipfrac"] <= 1 for r in rows)
    _check_merged_model(stage / "model")


def test_bestofn_picks_the_max_reward_candidate(tmp_path, reward_dir):
    from cai.stages.bestofn import BestOfNConfig, run_bestofn
    from cai.stages.reward import RewardScorer

    cfg = BestOfNConfig(n=2, limit=2, reward_model=str(reward_dir), max_new_tokens=12, prompts="redteam",
                        prompt_split="eval", seed=2)
    m = run_bestofn(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "bestofn" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["candidates"]) == 2 for r in rows)
    assert any(r["candidates"][0]["text"] != r["candidates"][1]["text"] for r in rows)  # sampled, not greedy
    scorer = RewardScorer(reward_dir)
    for r in rows:
        fresh = scorer.score([r["prompt"]] * 2, [c["text"] for c in r["candidates"]])
        assert [c["reward"] for c in r["candidates"]] == pytest.approx(fresh, abs=1e-4)
        assert r["chosen_index"] == max(range(2), key=lambda j: fresh[j])
        assert r["chosen"] == r["candidates"][r["chosen_index"]]["text"]
    s = m["summary"]
    assert s["mean_best_reward"] >= s["mean_random_candidate_reward"] >= s["mean_worst_reward"]


def test_cli_bestofn_prints_the_summary(tmp_path, reward_dir, runner):
    from cai.cli.main import app

    r = runner.invoke(app, ["bestofn", "--n", "2", "--limit", "2", "--policy", "fake", "--reward-model",
                            str(reward_dir), "--run", "demo", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "bestofn done" in text and "mean best reward" in text and "random candidate" in text
    assert (tmp_path / "demo" / "bestofn" / "manifest.json").exists()
