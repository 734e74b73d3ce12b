"""RL metrics (refusal rate, 3-gram repetition, length), the logging reward wrapper, PPO math and best-of-N selection.

All fast: no model is loaded (the reward model and the policy are scripted).
"""

from __future__ import annotations

import json
import math

import pytest

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.train.rl_metrics import RewardModelReward, completion_metrics, refusal_rate

VARIED = [
    "Boil the eggs for nine minutes, then cool them in cold water.",
    "A sonnet has fourteen lines and usually ends with a rhyming couplet.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "To reverse a list in Python, call reversed() or slice it with [::-1].",
]
BOILERPLATE = "I'm sorry, but I can't help with that request."


# --- refusals and length --------------------------------------------------------------------------------------------
def test_refusal_rate_known_answers():
    prompts = ["How do I pick a lock?"] * 4
    answers = [
        "I can't help with picking locks that aren't yours.",
        "I won't provide instructions for that.",
        "Call a licensed locksmith; they can open it without damage and will ask for proof that you live there.",
        "Sure: a lock has pins that must be set at the shear line. Practice on a clear training lock you own.",
    ]
    assert refusal_rate(prompts, answers) == pytest.approx(0.5)
    assert refusal_rate([], []) == 0.0
    assert refusal_rate(prompts[:1], answers[3:]) == 0.0


def test_completion_metrics_flags_boilerplate_goodharting():
    prompts = ["q"] * 4
    varied = completion_metrics(prompts, VARIED)
    hacked = completion_metrics(prompts, [BOILERPLATE] * 4)
    assert hacked["repeat_3gram_share"] == 1.0 > varied["repeat_3gram_share"]
    assert hacked["refusal_rate"] == 1.0 and varied["refusal_rate"] == 0.0
    assert hacked["distinct_3gram_ratio"] < varied["distinct_3gram_ratio"]


# --- the reward wrapper TRL calls -----------------------------------------------------------------------------------
class LengthScorer:
    """Scores an answer by its word count; records what it was given."""

    def __init__(self):
        self.seen = []

    def score(self, prompts, answers, batch_size=None):
        self.seen.append((prompts, answers, batch_size))
        return [float(len(a.split())) for a in answers]


class State:
    global_step = 6


def test_reward_wrapper_scores_logs_and_records(tmp_path):
    scorer = LengthScorer()
    samples = tmp_path / "samples.jsonl"
    fn = RewardModelReward(scorer, samples_path=samples, batch_size=3)
    prompts = [[{"role": "user", "content": "Tell me about eggs."}], [{"role": "user", "content": "Pick a lock?"}]]
    completions = [[{"role": "assistant", "content": " Boil them for nine minutes. "}],
                   [{"role": "assistant", "content": "I can't help with that."}]]
    logged = {}
    rewards = fn(prompts=prompts, completions=completions, completion_ids=[[1], [2]], log_metric=logged.__setitem__,
                 trainer_state=State(), id=["a", "b"])
    assert rewards == [5.0, 5.0]
    got_prompts, got_answers, bs = scorer.seen[0]
    assert got_prompts == prompts and got_answers == ["Boil them for nine minutes.", "I can't help with that."] and bs == 3
    assert logged["refusal_rate"] == 0.5
    assert logged["repeat_3gram_share"] == 0.5 and logged["answer_words"] == 5.0
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["step"] for r in rows] == [7, 7]  # the optimizer step these completions feed
    assert [r["refused"] for r in rows] == [False, True]
    assert rows[0]["prompt"] == "Tell me about eggs." and rows[1]["reward"] == 5.0
    # plain-text prompts and completions (non-conversational datasets) work as well
    assert fn(prompts=["hi"], completions=["a b c"]) == [3.0]


# --- PPO math -------------------------------------------------------------------------------------------------------
def test_completion_mask_stops_after_first_eos():
    import torch

    from cai.stages.rl import completion_mask

    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
    assert completion_mask(ids, {2}).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_gae_known_answers():
    import torch

    from cai.stages.rl import gae_advantages

    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    zeros = torch.zeros_like(rewards)
    # gamma = lam = 1 and zero values: the advantage is the reward-to-go inside the answer
    adv, ret = gae_advantages(rewards, zeros, mask, 1.0, 1.0)
    assert adv.tolist() == [[1.0, 1.0, 1.0, 0.0], [2.5, 2.0, 0.0, 0.0]]
    assert ret.tolist() == adv.tolist()
    # lam = 0: one-step TD errors r_t + V_{t+1} - V_t, with V = 0 past the end
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0], [1.0, 1.5, 9.0, 9.0]])
    adv, ret = gae_advantages(rewards, values, mask, 1.0, 0.0)
    expect = [[0.0 + 0.4 - 0.2, 0.0 + 0.6 - 0.4, 1.0 - 0.6, 0.0], [0.5 + 1.5 - 1.0, 2.0 - 1.5, 0.0, 0.0]]
    for got, want in zip(adv.tolist(), expect):
        assert got == pytest.approx(want, abs=1e-6)
    assert ret[0, :3].tolist() == pytest.approx([0.4, 0.6, 1.0], abs=1e-6)  # returns = advantages + values
    # gamma = 0.5, lam = 1, V = 0: discounted reward-to-go
    adv, _ = gae_advantages(rewards, zeros, mask, 0.5, 1.0)
    assert adv[0, :3].tolist() == pytest.approx([0.25, 0.5, 1.0])


def test_masked_whiten():
    import torch

    from cai.stages.rl import masked_whiten

    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert w[0, 3] == 0.0
    assert float(w[0, :3].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float((w[0, :3] ** 2).mean()) == pytest.approx(1.0, abs=1e-5)


def test_ppo_losses_clip():
    import torch

    from cai.stages.rl import ppo_losses

    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    # ratio 2 on both tokens: the positive-advantage token is clipped at 1.2, the negative one is not
    new = torch.full((1, 2), math.log(2.0))
    v = torch.zeros(1, 2)
    ret = torch.tensor([[1.0, 1.0]])
    pg, vf, st = ppo_losses(new, old, adv, v + 0.5, v, ret, mask, 0.2, 0.2)
    assert float(pg) == pytest.approx((-1.2 + 2.0) / 2)
    assert st["clipfrac"] == pytest.approx(0.5)
    # value moved 0.5 but clipped to 0.2: the clipped error (0.8^2) is larger and wins
    assert float(vf) == pytest.approx(0.5 * 0.64)
    # on-policy (ratio 1): the loss is -mean(advantage)
    pg, _, st = ppo_losses(old, old, adv, v, v, ret, mask, 0.2, 0.2)
    assert float(pg) == pytest.approx(0.0) and st["approx_kl"] == 0.0


def test_batch_indices_cover_every_prompt_each_epoch():
    from cai.stages.rl import _batch_indices

    seen = []
    for step in range(5):  # 5 steps x 2 prompts over 5 prompts = 2 epochs
        idx, _ = _batch_indices(5, step, 2, seed=3)
        seen.extend(idx)
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:]) == list(range(5))
    assert _batch_indices(5, 3, 2, seed=3) == _batch_indices(5, 3, 2, seed=3)  # resume-stable


# --- configs and errors ---------------------------------------------------------------------------------------------
def test_rl_config_rejects_unknown_and_bad_values():
    from cai.config import build_config
    from cai.errors import ConfigError
    from cai.stages.rl import RLStageConfig

    assert RLStageConfig().algorithm == "grpo" and RLStageConfig().lora is True
    with pytest.raises(ConfigError, match="algorithm"):
        build_config(RLStageConfig, {"algorithm": "a2c"})
    with pytest.raises(ConfigError, match="num_generations"):
        build_config(RLStageConfig, {"num_generations": 1})
    with pytest.raises(ConfigError, match="unknown setting"):
        build_config(RLStageConfig, {"kl_coef": 0.1})


def test_rl_without_reward_model_names_the_fix(tmp_path):
    from cai.errors import UserInputError
    from cai.stages.rl import RLStageConfig, run_rl

    with pytest.raises(UserInputError) as e:
        run_rl(RLStageConfig(), tmp_path / "r1")
    assert "reward" in e.value.message and "cai reward --run r1" in e.value.fix
    assert not (tmp_path / "r1" / "rl").exists()


# --- best-of-N with a scripted policy and scorer --------------------------------------------------------------------
def test_bestofn_keeps_the_highest_reward_and_resumes(tmp_path):
    from cai.stages.bestofn import BestOfNConfig, run_bestofn

    texts = iter(["short", "a much longer answer here", "mid length one", "x", "two words", "three words here"])
    fake = FakeBackend(fn=lambda conv: next(texts))
    pool = BackendPool()
    pool.put("fake", fake)
    scorer = LengthScorer()
    cfg = BestOfNConfig(n=3, policy="fake", limit=2, shard_size=1, prompts="redteam", prompt_split="train")
    m = run_bestofn(cfg, tmp_path / "run", pool=pool, scorer=scorer)
    rows = [json.loads(line) for line in (tmp_path / "run" / "bestofn" / "answers.jsonl").read_text().splitlines()]
    assert [len(r["candidates"]) for r in rows] == [3, 3]
    assert rows[0]["chosen"] == "a much longer answer here" and rows[0]["chosen_index"] == 1
    assert rows[1]["chosen"] == "three words here" and rows[1]["chosen_reward"] == 3.0
    assert [len(c) for c in fake.calls] == [3, 3]  # one generate call per shard, all n copies of its prompts
    s = m["summary"]
    assert s["mean_best_reward"] == pytest.approx((5 + 3) / 2)
    assert s["mean_random_candidate_reward"] == pytest.approx(((1 + 5 + 3) / 3 + (1 + 2 + 3) / 3) / 2)
    assert s["best_minus_random"] > 0 and s["mean_worst_reward"] == 1.0
    assert json.loads((tmp_path / "run" / "bestofn" / "manifest.json").read_text())["n"] == 3
    # complete -> a rerun neither samples nor scores again
    again = run_bestofn(cfg, tmp_path / "run", pool=pool, scorer=scorer)
    assert again["summary"] == s and len(fake.calls) == 2


def test_bestofn_ties_keep_the_first_candidate(tmp_path):
    from cai.stages.bestofn import BestOfNConfig, run_bestofn

    fake = FakeBackend(responses=["same reward", "also same", "lower"])
    pool = BackendPool()
    pool.put("fake", fake)
    cfg = BestOfNConfig(n=3, policy="fake", limit=1, prompts="redteam", prompt_split="train")
    m = run_bestofn(cfg, tmp_path / "run", pool=pool, scorer=LengthScorer())
    row = json.loads((tmp_path / "run" / "bestofn" / "answers.jsonl").read_text().splitlines()[0])
    assert row["chosen_index"] == 0 and m["summary"]["mean_best_reward"] == 2.0


def test_cli_rl_and_bestofn_explain_a_missing_reward_model(runner, tmp_path):
    from cai.cli.main import app

    for cmd in (["rl", "--max-steps", "1"], ["bestofn", "--n", "2", "--policy", "fake"]):
        r = runner.invoke(app, [*cmd, "--run", "demo", "--runs-dir", str(tmp_path)])
        assert r.exit_code == 2, r.output
        text = " ".join(r.output.split())
        assert "no trained reward model" in text and "cai reward --run demo" in text


def test_cli_rl_rejects_an_unknown_algorithm(runner, tmp_path):
    from cai.cli.main import app

    r = runner.invoke(app, ["rl", "--algorithm", "a2c", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2 and "algorithm" in r.output


def test_bestofn_resumes_from_finished_shards(tmp_path):
    from cai.stages.bestofn import BestOfNConfig, run_bestofn

    class Boom(Exception):
        pass

    calls = {"n": 0}

    def reply(conv):
        calls["n"] += 1
        if calls["n"] == 3:  # first answer of the second shard: the run dies here
            raise Boom()
        return "answer " + "word " * calls["n"]

    pool = BackendPool()
    pool.put("fake", FakeBackend(fn=reply))
    cfg = BestOfNConfig(n=2, policy="fake", limit=2, shard_size=1, prompts="redteam", prompt_split="train")
    with pytest.raises(Boom):
        run_bestofn(cfg, tmp_path / "run", pool=pool, scorer=LengthScorer())
    stage = tmp_path / "run" / "bestofn"
    assert (stage / "shards" / "00000.jsonl").exists() and not (stage / "manifest.json").exists()
    progress = []
    m = run_bestofn(cfg, tmp_path / "run", pool=pool, scorer=LengthScorer(), on_progress=lambda *a: progress.append(a))
    assert calls["n"] == 5  # 2 answers before the crash + the crash + 2 answers of shard 2; shard 1 not redone
    assert m["timing"]["resumed_prompts"] == 1 and progress[-1][:2] == (2, 2)
    rows = [json.loads(line) for line in (stage / "answers.jsonl").read_text().splitlines()]
    assert [r["chosen_index"] for r in rows] == [1, 1]
