"""The SL-CAI levers for weak critics, with scripted fake backends: principles relevant to the prompt's harm
category, critic refusals, direct revision, the revision gate and the SFT mix it produces."""

from __future__ import annotations

import random

import yaml

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.constitution import load_constitution
from cai.data.io import read_jsonl
from cai.stages.revise import ReviseConfig, run_revise
from cai.stages.sl_levers import pick_principle
from cai.stages.sl_prompts import CRITIQUE_TAG, REVISION_TAG

from test_revise import PROMPTS, SMALL

REFUSAL = "I can't help with that, because it could hurt someone. I can point you to safe, lawful resources instead."
COMPLIES = "Sure! Step one: get the tools. Step two: follow the plan carefully."


def constitution_with_privacy(tmp_path) -> str:
    data = yaml.safe_load(open(SMALL))
    data["principles"].append(
        {
            "id": "no-snooping",
            "name": "Respect privacy",
            "tags": ["privacy"],
            "critique_request": "Say how the last answer could expose someone's private data.",
            "revision_request": "Rewrite the answer so it exposes no one's private data.",
            "preference_question": "Which answer better protects people's privacy?",
        }
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def pool_of(policy, critic, reviser) -> BackendPool:
    pool = BackendPool()
    for role, fn in (("policy", policy), ("critic", critic), ("reviser", reviser)):
        pool.put(f"fake:{role}", FakeBackend(f"fake-{role}", fn=fn))
    return pool


def run(tmp_path, pool, **kw):
    base = dict(constitution=SMALL, prompts=PROMPTS, helpful_limit=4, rounds=2, seed=1, policy="fake:policy",
                critic="fake:critic", reviser="fake:reviser")
    base.update(kw)
    m = run_revise(ReviseConfig(**base), str(tmp_path / "run"), pool=pool)
    stage = tmp_path / "run" / "revise"
    return m, stage, read_jsonl(stage / "data.jsonl")


def test_principles_follow_the_prompt_category(tmp_path):
    const = load_constitution(constitution_with_privacy(tmp_path))
    rng = random.Random(0)
    picks = [pick_principle(const, rng, "privacy", 1.0) for _ in range(50)]
    assert all(p.id == "no-snooping" and rel for p, rel in picks)
    mixed = [pick_principle(const, rng, "privacy", 0.5)[0].id for _ in range(400)]
    share = mixed.count("no-snooping") / len(mixed)
    assert 0.5 < share < 0.7  # half relevant by rule, plus 1/5.. of the uniform half by weight
    # a category no principle carries falls back to all principles, and is recorded as not relevant
    assert not any(pick_principle(const, rng, "cbrn", 1.0)[1] for _ in range(20))
    uniform = [pick_principle(const, rng, "privacy", 0.0)[0].id for _ in range(400)]
    assert uniform.count("no-snooping") / 400 < 0.3


def test_relevant_principle_recorded_in_rows(tmp_path):
    pool = pool_of(lambda c: COMPLIES, lambda c: "It gives step-by-step help with harm.", lambda c: REFUSAL)
    m, _, rows = run(tmp_path, pool, constitution=constitution_with_privacy(tmp_path), relevant_principles=1.0)
    r1 = next(r for r in rows if r["id"] == "r1")  # the privacy prompt
    assert all(e["principle_id"] == "no-snooping" and e["principle_relevant"] for e in r1["rounds"])
    others = [e for r in rows if r["kind"] == "redteam" and r["id"] != "r1" for e in r["rounds"]]
    assert not any(e["principle_relevant"] for e in others)
    assert m["counts"]["relevant_principle_rounds"] == 2


def test_gate_rejects_revisions_that_still_comply(tmp_path):
    def reviser(conv):
        return REFUSAL if "keylogger" in conv[-5]["content"] else COMPLIES + " Also, more detail."

    pool = pool_of(lambda c: COMPLIES, lambda c: "It gives step-by-step help with harm.", reviser)
    m, stage, rows = run(tmp_path, pool)
    by = {r["id"]: r for r in rows}
    assert by["r5"]["final"] == REFUSAL and by["r5"]["rounds"][0]["accepted"]
    for rid in ("r1", "r2", "r3", "r4", "r6"):
        assert all(e["flags"] == ["still_complies"] and not e["accepted"] for e in by[rid]["rounds"])
        assert by[rid]["final"] == by[rid]["initial"]
    gate = m["counts"]["gate"]
    assert gate["harmful_declined_after"] == {"k": 1, "n": 6}
    assert gate["harmful_declined_before"] == {"k": 0, "n": 6}
    assert [s["id"] for s in read_jsonl(stage / "sft.jsonl")] == ["r5"]


def test_without_gate_a_complying_revision_is_accepted(tmp_path):
    pool = pool_of(lambda c: COMPLIES, lambda c: "It gives step-by-step help with harm.", lambda c: COMPLIES + " More.")
    m, _, rows = run(tmp_path, pool, gate=False)
    assert all(r["rounds"][0]["accepted"] for r in rows if r["kind"] == "redteam")


def test_refused_helpful_answers_are_left_out_of_the_mix(tmp_path):
    def policy(conv):
        p = conv[-1]["content"]
        return REFUSAL if len(p) % 2 else f"Here is a clear answer about: {p}"

    pool = pool_of(policy, lambda c: "It helps with harm.", lambda c: REFUSAL)
    m, stage, rows = run(tmp_path, pool)
    helpful = [r for r in rows if r["kind"] == "helpful"]
    refused = {r["id"] for r in helpful if r["refused"]}
    assert refused and len(refused) < len(helpful)
    kept = {s["id"] for s in read_jsonl(stage / "helpful.jsonl")}
    assert kept == {r["id"] for r in helpful} - refused
    assert m["counts"]["gate"]["helpful_refused"] == {"k": len(refused), "n": len(helpful)}


def test_critic_refusal_is_recorded_and_the_revision_is_direct(tmp_path):
    seen = []

    def reviser(conv):
        seen.append(conv)
        return REFUSAL

    pool = pool_of(lambda c: COMPLIES, lambda c: "I'm sorry, but I can't assist with that.", reviser)
    m, _, rows = run(tmp_path, pool, rounds=1)
    red = [r for r in rows if r["kind"] == "redteam"]
    assert all(r["rounds"][0]["critic_refused"] for r in red)
    # the revision is not flagged as a copy of the critique, though both are refusals, and it is accepted
    assert all(r["rounds"][0]["accepted"] and "repeats_critique" not in r["rounds"][0]["flags"] for r in red)
    # the refusing critique is not in the reviser's context
    assert all(not any(CRITIQUE_TAG in t["content"] for t in conv) for conv in seen)
    assert m["counts"]["critic_refusals"] == 6


def test_direct_mode_asks_for_revisions_without_critiques(tmp_path):
    calls = {"critic": 0}

    def critic(conv):
        calls["critic"] += 1
        return "unused"

    seen = []

    def reviser(conv):
        seen.append(conv)
        return REFUSAL

    pool = pool_of(lambda c: COMPLIES, critic, reviser)
    m, _, rows = run(tmp_path, pool, mode="direct", rounds=1)
    assert calls["critic"] == 0
    conv = seen[0]
    assert conv[-1]["content"].startswith(REVISION_TAG) and conv[-2]["content"] == COMPLIES
    assert not any(CRITIQUE_TAG in t["content"] for t in conv)
    # the demonstrations stay, as prompt / answer / revision request / revision
    assert any("DEMO-REVISION-ONE" in t["content"] for t in conv)
    assert not any("DEMO-CRITIQUE" in t["content"] for t in conv)
    assert all(r["rounds"][0]["critique"] is None for r in rows if r["kind"] == "redteam")


def test_stop_when_accepted_skips_later_rounds(tmp_path):
    def reviser(conv):
        return REFUSAL if "keylogger" in conv[-3]["content"] else COMPLIES + " More."

    pool = pool_of(lambda c: COMPLIES, lambda c: "x", reviser)
    _, _, rows = run(tmp_path, pool, mode="direct", rounds=3, stop_when_accepted=True)
    by = {r["id"]: r for r in rows}
    assert len(by["r5"]["rounds"]) == 1
    assert all(len(by[i]["rounds"]) == 3 for i in ("r1", "r2", "r3", "r4", "r6"))


def test_trim_to_sentence():
    from cai.stages.sl_levers import trim_to_sentence

    assert trim_to_sentence("I can't help with that. It could hurt people. You could instead ask") == (
        "I can't help with that. It could hurt people."
    )
    assert trim_to_sentence('I won\'t do that: "it is unsafe." And then') == 'I won\'t do that: "it is unsafe."'
    assert trim_to_sentence("No sentence end here at all") is None
    assert trim_to_sentence("Ok. and then some more words") is None  # what is left is too short to be an answer


def test_truncated_revision_is_trimmed_to_its_last_sentence(tmp_path):
    long = REFUSAL + " " + " ".join(["more"] * 40)
    pool = pool_of(lambda c: COMPLIES, lambda c: "It helps with harm.", lambda c: long)
    _, _, rows = run(tmp_path, pool, rounds=1, revision_tokens=30)
    red = [r for r in rows if r["kind"] == "redteam"]
    assert all(r["final"] == REFUSAL and r["rounds"][0]["flags"] == ["trimmed"] for r in red)
    _, _, rows = run(tmp_path / "b", pool, rounds=1, revision_tokens=30, trim_truncated=False)
    assert all(r["rounds"][0]["flags"][0] == "truncated" and not r["rounds"][0]["accepted"]
               for r in rows if r["kind"] == "redteam")
