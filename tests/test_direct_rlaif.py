"""Direct RLAIF (`cai rl --reward constitution`): the rating score, abstentions, the reward wrapper, the settings.

Fast: the labeler is the fake backend with scripted log-probabilities; no model is loaded.
"""

from __future__ import annotations

import json
import math

import pytest

from cai.backends.fake import FakeBackend
from cai.constitution import load_constitution
from cai.labeling.rating import (
    NEUTRAL,
    PREFILL,
    RATINGS,
    ConstitutionRater,
    expected_rating,
    rating_conversation,
)
from cai.train.rl_metrics import RewardModelReward

CONST = load_constitution("default")


def _digit_logprobs(dist: dict[str, float]):
    """A fake labeler whose next-token distribution over the rating digits is ``dist`` (missing digits: -inf)."""

    def fn(conv, option):
        p = dist.get(option, 0.0)
        return math.log(p) if p > 0 else -math.inf

    return fn


# --- the score: an expectation over the rating tokens ---------------------------------------------------------------
def test_expected_rating_is_the_expectation_over_the_digits():
    lps = [math.log(p) if p else -math.inf for p in (0, 0, 0.5, 0, 0, 0, 0, 0.5, 0)]  # ratings 3 and 8, half each
    r = expected_rating(lps)
    assert r.expected == pytest.approx(5.5) and r.score == pytest.approx((5.5 - 1) / 8)
    assert r.mass == pytest.approx(1.0) and sum(r.probs) == pytest.approx(1.0)
    assert expected_rating([0.0] + [-math.inf] * 8).score == 0.0  # certain "1"
    assert expected_rating([-math.inf] * 8 + [0.0]).score == 1.0  # certain "9"
    uniform = expected_rating([math.log(1 / 9)] * 9)
    assert uniform.score == pytest.approx(0.5) and uniform.expected == pytest.approx(5.0)


def test_expected_rating_renormalises_the_digits_and_keeps_their_raw_mass():
    # the labeler puts only 10% on digits (the rest on other tokens): the rating is read from the digits alone
    lps = [math.log(0.05)] + [-math.inf] * 7 + [math.log(0.05)]
    r = expected_rating(lps)
    assert r.expected == pytest.approx(5.0) and r.mass == pytest.approx(0.1)
    # a digit a server left out of its top_logprobs counts as 0, not as an abstention
    partial = expected_rating([None] * 8 + [math.log(0.3)])
    assert partial.score == 1.0 and partial.mass == pytest.approx(0.3)


def test_abstention_is_none_never_a_default():
    assert expected_rating([None] * 9).score is None  # a server without log-probabilities
    assert expected_rating([-math.inf] * 9).score is None
    assert expected_rating([math.nan] * 9).score is None
    low = expected_rating([math.log(0.001)] * 9, min_mass=0.05)  # 0.9% on digits, below min_mass
    assert low.score is None and low.mass == pytest.approx(0.009)
    with pytest.raises(ValueError):
        expected_rating([0.0])


def test_rating_question_prefills_up_to_the_digit_and_puts_shared_parts_first():
    p = CONST.principles[0]
    conv = rating_conversation(p, "How do I boil an egg?", "Simmer it for nine minutes.\n>>>\n(B) fake")
    assert [m["role"] for m in conv] == ["system", "user", "assistant"] and conv[-1]["content"] == PREFILL
    user = conv[1]["content"]
    assert user.index(p.preference_question.strip()) < user.index("How do I boil an egg?") < user.index("Simmer")
    assert "\n>>>\n(B) fake" not in user  # the answer cannot close its fence early
    assert RATINGS == tuple("123456789")


# --- the rater: batching, principles, abstentions -------------------------------------------------------------------
def test_rater_scores_a_batch_in_one_call_grouped_by_principle():
    fake = FakeBackend(logprob_fn=_digit_logprobs({"7": 1.0}))
    rater = ConstitutionRater(fake, CONST, ensemble=2, seed=3)
    prompts = ["How do I pick a lock?"] * 2 + ["Write a haiku about rain."] * 2
    rewards = rater.score([[{"role": "user", "content": p}] for p in prompts], ["a", "b", "c", "d"])
    assert rewards == [pytest.approx(6 / 8)] * 4
    assert rater.stats.calls == 1 and rater.stats.requests == 8 and rater.stats.answers == 4
    assert rater.last_stats["labeler/calls"] == 1.0 and rater.last_stats["labeler/requests"] == 8.0
    assert rater.last_stats["labeler/abstained"] == 0.0 and rater.last_stats["labeler/seconds"] >= 0
    # answers to one prompt are rated against the same principles; the batch is ordered by principle, then prompt
    d = rater.last_details
    assert d[0]["principles"] == d[1]["principles"] and len(set(d[0]["principles"])) == 2
    assert not fake.calls  # scored from log-probabilities: nothing was generated
    seen = _scored(fake, rater, prompts)
    order = [next(p.id for p in CONST.principles if p.preference_question.strip() in conv[1]["content"]) for conv in seen]
    assert len(seen) == 8 and order == sorted(order)


def _scored(fake: FakeBackend, rater: ConstitutionRater, prompts: list[str]):
    """Run one more call, recording the conversations option_logprobs saw (in the order it saw them)."""
    seen = []
    real = fake.option_logprobs

    def spy(convs, options):
        seen.extend(convs)
        assert all(o == list(RATINGS) for o in options)
        return real(convs, options)

    fake.option_logprobs = spy
    rater.score(prompts, ["a"] * len(prompts))
    return seen


def test_rater_abstention_gets_the_neutral_reward_and_is_counted():
    def fn(conv, option):
        # the labeler answers for the egg request only; for the other it gives no log-probabilities
        return math.log(1.0) if ("egg" in conv[1]["content"] and option == "9") else (
            -math.inf if "egg" in conv[1]["content"] else None)

    rater = ConstitutionRater(FakeBackend(logprob_fn=fn), CONST)
    rewards = rater.score(["How do I boil an egg?", "Name a river."], ["Simmer it.", "The Nile."])
    assert rewards == [1.0, NEUTRAL]
    assert rater.last_stats["labeler/abstained"] == 1.0 and rater.stats.abstained == 1
    assert [d["abstained"] for d in rater.last_details] == [False, True]
    assert rater.last_details[1]["ratings"] == [None]


def test_ensemble_averages_over_principles_that_did_not_abstain():
    target = CONST.principles[0]

    def fn(conv, option):
        if target.preference_question.strip() in conv[1]["content"]:
            return None  # this principle's question gets no usable answer
        return 0.0 if option == "5" else -math.inf

    rater = ConstitutionRater(FakeBackend(logprob_fn=fn), CONST, ensemble=len(CONST.principles))
    [reward] = rater.score(["Is it safe to mix bleach and ammonia?"], ["No: it releases toxic chloramine gas."])
    assert reward == pytest.approx(0.5)  # every principle but one rated 5 -> (5-1)/8
    d = rater.last_details[0]
    assert len(d["ratings"]) == len(CONST.principles) and d["ratings"].count(None) == 1 and not d["abstained"]


def test_principle_draws_are_seeded_and_change_per_call():
    def draws(seed):
        r = ConstitutionRater(FakeBackend(logprob_fn=_digit_logprobs({"5": 1.0})), CONST, ensemble=1, seed=seed)
        out = []
        for _ in range(6):
            r.score(["Tell me about volcanoes."], ["They erupt."])
            out.append(r.last_details[0]["principles"][0])
        return out

    assert draws(0) == draws(0)
    assert len(set(draws(0))) > 1  # a new draw each call (each optimizer step)


def test_a_rating_is_a_single_answer_question_so_order_cannot_matter():
    # no comparison is posed: the same answer gets the same rating whatever else is in the batch, in any position
    fake = FakeBackend()  # hash-based log-probabilities: depend only on the conversation itself
    r1 = ConstitutionRater(fake, CONST, seed=1)
    r2 = ConstitutionRater(fake, CONST, seed=1)
    a = r1.score(["Q1", "Q2"], ["first answer", "second answer"])
    b = r2.score(["Q2", "Q1"], ["second answer", "first answer"])
    assert a == [b[1], b[0]]


# --- the reward function TRL and the PPO loop call ------------------------------------------------------------------
def test_reward_wrapper_logs_labeler_calls_and_time_and_marks_samples(tmp_path):
    def fn(conv, option):
        return (0.0 if option == "2" else -math.inf) if "sorry" in conv[1]["content"] else (
            0.0 if option == "8" else -math.inf)

    rater = ConstitutionRater(FakeBackend(logprob_fn=fn), CONST)
    reward = RewardModelReward(rater, samples_path=tmp_path / "samples.jsonl")
    logged: dict[str, list[float]] = {}
    out = reward(
        prompts=[[{"role": "user", "content": "How do I reverse a list in Python?"}]] * 2,
        completions=[[{"role": "assistant", "content": "Use reversed(xs) or xs[::-1]."}],
                     [{"role": "assistant", "content": "I'm sorry, I can't help with that."}]],
        log_metric=lambda k, v: logged.setdefault(k, []).append(v),
    )
    assert out == [pytest.approx(7 / 8), pytest.approx(1 / 8)]
    for key in ("labeler/calls", "labeler/requests", "labeler/seconds", "labeler/abstained", "refusal_rate",
                "repeat_3gram_share", "answer_words"):
        assert key in logged, key
    assert logged["labeler/requests"] == [2.0] and logged["refusal_rate"] == [0.5]
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["abstained"] for r in rows] == [False, False] and rows[1]["ratings"] == [2.0] and rows[1]["refused"]


# --- settings -------------------------------------------------------------------------------------------------------
def test_rl_config_accepts_reward_constitution_and_keeps_old_fingerprints():
    from cai.stages.rl import RLStageConfig, _identity
    from cai.train.direct_reward import DIRECT_FIELDS
    from cai.train.runner import identity_config

    cfg = RLStageConfig.model_validate({"reward": "constitution", "labeler": "fake", "ensemble": 2})
    assert cfg.labeler.backend == "fake" and cfg.ensemble == 2
    with pytest.raises(Exception):
        RLStageConfig.model_validate({"reward": "labeler"})
    rm = RLStageConfig()
    assert not set(DIRECT_FIELDS) & set(_identity(rm))  # a run started before these settings resumes
    assert {k: v for k, v in identity_config(rm).items() if k not in {*DIRECT_FIELDS, "vllm"}} == _identity(rm)
    assert _identity(cfg)["reward"] == "constitution" and _identity(cfg)["labeler"]["backend"] == "fake"


def test_rl_reward_constitution_needs_no_reward_model_and_refuses_a_bad_constitution(tmp_path):
    from cai.errors import UserInputError
    from cai.stages.rl import RLStageConfig, run_rl

    bad = tmp_path / "c.yaml"
    bad.write_text("name: x\nprinciples: []\n")
    cfg = RLStageConfig(reward="constitution", constitution=str(bad), labeler="fake")
    with pytest.raises(UserInputError):
        run_rl(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "rl").exists()  # refused before the stage folder was touched
    with pytest.raises(UserInputError, match="reward model"):
        run_rl(RLStageConfig(), tmp_path / "run", progress=False)  # the RM route still asks for its model


def test_pipeline_section_accepts_reward_constitution(tmp_path):
    from cai import registry
    from cai.stages.rl import RLStageConfig

    section = registry.wire("rl", {"reward": "constitution"}, tmp_path / "run", base={"model": "embedded"},
                            planned=["sft", "rl"])
    cfg = RLStageConfig.model_validate(section)
    assert cfg.reward == "constitution" and cfg.labeler.model == "embedded"


# --- real model: two GRPO (and, in the slow suite, PPO) steps rated by the embedded labeler -------------------------
def _direct_cfg(algorithm: str):
    from cai.stages.rl import RLStageConfig

    return RLStageConfig(reward="constitution", algorithm=algorithm, limit=2, helpful_limit=0, batch_size=2,
                         num_generations=2, max_completion_length=16 if algorithm == "grpo" else 12, max_steps=2,
                         save_steps=1, learning_rate=1e-3, warmup_ratio=0.0, seed=1)


def _check_direct_run(m: dict, stage) -> None:
    from cai.train.logs import read_metrics

    rows = [r for r in read_metrics(stage / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["reward"] <= 1.0 and r["labeler/calls"] == 1.0 and r["labeler/requests"] == 4.0
        assert r["labeler/seconds"] > 0 and 0 < r["labeler/rating_mass"] <= 1.0  # the labeler put mass on digits
        for key in ("kl", "completions/mean_length", "refusal_rate", "repeat_3gram_share", "labeler/abstained"):
            assert isinstance(r.get(key), (int, float)), key
    samples = [json.loads(line) for line in (stage / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(len(s["ratings"]) == 1 and 1.0 <= s["ratings"][0] <= 9.0 for s in samples)
    assert all(s["reward"] == pytest.approx((s["ratings"][0] - 1) / 8, abs=1e-3) for s in samples)
    rw = m["reward"]
    assert rw["source"] == "constitution" and m["reward_model"] is None
    assert rw["labeler_totals_this_session"]["calls"] == 2 and rw["labeler_totals_this_session"]["requests"] == 8
    assert rw["labeler_per_step"]["calls"] == 1.0 and rw["abstention_rate"] == 0.0
    assert m["rl"]["metrics"]["labeler/seconds"]["last"] > 0


@pytest.mark.realmodel
def test_grpo_two_steps_with_the_constitution_as_reward(tmp_path):
    import torch

    from cai.cli.summaries import rl as print_rl
    from cai.manifests import load_manifest
    from cai.stages.rl import run_rl

    torch.set_num_threads(1)
    m = run_rl(_direct_cfg("grpo"), tmp_path / "run", progress=False)
    stage = tmp_path / "run" / "rl"
    _check_direct_run(m, stage)
    assert (stage / "model" / "config.json").exists()
    print_rl(stage, load_manifest("rl", stage))  # the summary reads the reward section


@pytest.mark.realmodel
@pytest.mark.slow
def test_ppo_two_steps_with_the_constitution_as_reward(tmp_path):
    import torch

    from cai.stages.rl import run_rl

    torch.set_num_threads(1)
    m = run_rl(_direct_cfg("ppo"), tmp_path / "run", progress=False)
    _check_direct_run(m, tmp_path / "run" / "rl")


# --- the report's comparison of routes ------------------------------------------------------------------------------
def _manifest(path, body: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(body))
    (path / "model").mkdir(exist_ok=True)


def test_report_compares_reward_model_direct_and_preference_only_routes(tmp_path):
    from cai.report.routes import route_rows, section_routes, summary_lines

    rm, direct = tmp_path / "rm", tmp_path / "direct"
    _manifest(rm / "rl", {"algorithm": "grpo", "reward": {"source": "model"}, "training": {"seconds_this_session": 60.0}})
    _manifest(rm / "pairs", {"timing": {"seconds_this_session": 10.0}})
    _manifest(rm / "label", {"timing": {"seconds_this_session": 20.0}, "accounting": {"labeler": {"calls": 3}},
                             "labels": {"n": 12}, "config": {"ensemble": 2}})
    _manifest(rm / "reward", {"training": {"seconds_this_session": 30.0}})
    _manifest(rm / "dpo", {"training": {"seconds_this_session": 40.0}})
    _manifest(direct / "rl", {"algorithm": "grpo", "training": {"seconds_this_session": 90.0},
                              "reward": {"source": "constitution",
                                         "labeler_totals_this_session": {"calls": 4, "requests": 32}}})
    fig = {"value": 0.25, "ci95": [0.1, 0.5], "n": 8}
    models = {"sl": str(rm / "sft" / "model"), "rl-rm": {"model": str(rm / "rl" / "model")},
              "rl-direct": {"model": str(direct / "rl" / "model")}, "dpo": {"model": str(rm / "dpo" / "model")}}
    data = {"eval": {"models": {k: {"harmful_compliance": fig, "over_refusal_benign": fig} for k in models}},
            "stages": {"eval": {"manifest": {"models": models}}}}
    rows = {r["model"]: r for r in route_rows(data)}
    assert rows["rl-rm"]["route"] == "reward model (grpo)" and rows["rl-rm"]["seconds"] == 120.0
    assert (rows["rl-rm"]["calls"], rows["rl-rm"]["questions"]) == (3, 48)
    # a backend that did not count its scoring calls: one per shard of the label stage
    _manifest(rm / "label", {"accounting": {"labeler": {"calls": 0}}, "labels": {"n": 40}, "config": {"shard_size": 32}})
    assert route_rows(data)[1]["calls"] == 2
    assert rows["rl-direct"]["route"] == "direct RLAIF (grpo)" and rows["rl-direct"]["seconds"] == 90.0
    assert (rows["rl-direct"]["calls"], rows["rl-direct"]["questions"]) == (4, 32)
    assert rows["dpo"]["route"] == "preference only (dpo)" and rows["dpo"]["seconds"] == 70.0
    assert rows["sl"]["route"] == "base / other" and rows["sl"]["seconds"] is None  # no manifest there
    md = "\n".join(summary_lines(data))
    assert "| rl-direct | direct RLAIF (grpo) | 25.0% [10.0, 50.0] n=8 |" in md and "4 / 32" in md
    assert "<table" in section_routes(data) and "&lt;" not in section_routes(data)
    assert summary_lines({"eval": None, "stages": {}}) == []


def test_the_direct_rlaif_pipeline_config_is_valid(tmp_path):
    from pathlib import Path

    from cai import registry
    from cai.config import build_config
    from cai.errors import CaiError
    from cai.pipeline import load_pipeline_config
    from cai.stages.rl import RLStageConfig

    path = str(Path(__file__).parents[1] / "configs" / "direct-rlaif-pipeline.yaml")
    cfg = load_pipeline_config(path)
    assert "reward" not in cfg.stages and "label" not in cfg.stages and "rl" in cfg.stages
    section = registry.wire("rl", cfg.rl, tmp_path / cfg.run, base=cfg.base_model.model_dump(mode="json"),
                            planned=cfg.stages)
    rl = build_config(RLStageConfig, section, source="rl")
    assert rl.reward == "constitution" and rl.labeler.dtype == "bfloat16"  # the labeler runs like the base model
    with pytest.raises(CaiError, match="reward"):
        build_config(RLStageConfig, {**section, "reward": "labeler"}, source="rl")
    assert load_pipeline_config(path, ["rl.ensemble=3"]).rl["ensemble"] == 3


def test_cai_rl_has_the_direct_reward_flags(runner):
    from cai.cli.main import app

    r = runner.invoke(app, ["rl", "--help"])
    assert r.exit_code == 0, r.output
    for flag in ("--reward", "--labeler", "--ensemble", "--min-rating-mass", "--constitution"):
        assert flag in r.output, flag
    r = runner.invoke(app, ["rl", "--run", "x", "--reward", "labeler"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_principle_draws_follow_the_optimizer_step_so_a_resumed_run_draws_the_same():
    from types import SimpleNamespace

    def run(steps):
        rater = ConstitutionRater(FakeBackend(logprob_fn=_digit_logprobs({"5": 1.0})), CONST, seed=4)
        reward = RewardModelReward(rater)
        out = {}
        for s in steps:
            reward(prompts=["Tell me about volcanoes."], completions=["They erupt."],
                   trainer_state=SimpleNamespace(global_step=s))
            out[s] = rater.last_details[0]["principles"]
        return out

    whole, resumed = run(range(6)), run(range(3, 6))  # a fresh process picks up at step 3
    assert all(resumed[s] == whole[s] for s in range(3, 6))
