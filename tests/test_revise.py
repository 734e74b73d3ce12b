"""SL-CAI critique-revision (`run_revise`) with scripted fake backends: rounds, batching, few-shot, quality gates,
output views, manifest, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

import cai.runs
from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.constitution import load_constitution
from cai.data.io import read_jsonl
from cai.errors import UserInputError
from cai.stages.revise import ReviseConfig, run_revise
from cai.stages.sl_prompts import CRITIQUE_TAG, REVISION_TAG, SYSTEM

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = str(FIXTURES / "constitution_small.yaml")
PROMPTS = str(FIXTURES / "revise_prompts.jsonl")
RED = read_jsonl(FIXTURES / "revise_prompts.jsonl")
BY_PROMPT = {r["prompt"]: r["id"] for r in RED}

GOOD_REVISION = (
    "I can't help with the harmful part of this, because it could hurt people. I can share safe background on the "
    "topic and where to find proper help instead."
)


# --- scripted roles --------------------------------------------------------------------------------------------
def answer_fn(conv):
    return f"Initial answer: sure, here is exactly how to do it: {conv[-1]['content']}"


def critique_fn(conv):
    assert conv[-1]["content"].startswith(CRITIQUE_TAG)
    return "Critique: this response gives step-by-step help with something that could hurt other people."


def revision_fn(conv):
    """A different, acceptable revision each round: it builds on the answer under review (conv[-4])."""
    assert conv[-1]["content"].startswith(REVISION_TAG)
    level = conv[-4]["content"].count("[rev]") + 1
    return "[rev]" * level + " " + GOOD_REVISION


def red_id(conv, offset):
    """Id of the red-team prompt a critique (offset 3) or revision (offset 5) conversation is about."""
    return BY_PROMPT.get(conv[-offset]["content"])


def make_pool(policy=answer_fn, critic=critique_fn, reviser=revision_fn):
    fakes = {
        "policy": FakeBackend("fake-policy", fn=policy),
        "critic": FakeBackend("fake-critic", fn=critic),
        "reviser": FakeBackend("fake-reviser", fn=reviser),
    }
    pool = BackendPool()
    for role, fb in fakes.items():
        pool.put(f"fake:{role}", fb)
    return pool, fakes


def make_cfg(**kw) -> ReviseConfig:
    base = dict(
        constitution=SMALL,
        prompts=PROMPTS,
        helpful_limit=2,
        rounds=2,
        seed=3,
        shard_size=16,
        policy="fake:policy",
        critic="fake:critic",
        reviser="fake:reviser",
    )
    base.update(kw)
    return ReviseConfig(**base)


def run(tmp_path, name="run", pool=None, **kw):
    pool, fakes = (pool, None) if pool is not None else make_pool()
    manifest = run_revise(make_cfg(**kw), str(tmp_path / name), pool=pool)
    stage = tmp_path / name / "revise"
    return manifest, stage, read_jsonl(stage / "data.jsonl"), fakes


# --- rounds and principles -------------------------------------------------------------------------------------
def test_rounds_principles_and_final_answers(tmp_path):
    m, stage, rows, fakes = run(tmp_path)
    const = load_constitution(SMALL)
    red = [r for r in rows if r["kind"] == "redteam"]
    helpful = [r for r in rows if r["kind"] == "helpful"]
    assert [r["id"] for r in red] == [r["id"] for r in RED]
    assert [r["prompt"] for r in red] == [r["prompt"] for r in RED]
    assert [r["category"] for r in red] == [r["category"] for r in RED]
    assert len(helpful) == 2 and all(r["rounds"] == [] for r in helpful)
    assert all(r["initial"].startswith("Initial answer:") for r in rows)
    for r in red:
        assert [e["round"] for e in r["rounds"]] == [1, 2]
        for e in r["rounds"]:
            const.principle(e["principle_id"])  # a real principle id
            assert e["critique"].startswith("this response gives")  # the "Critique:" label is stripped
            assert e["accepted"] is True and e["flags"] == [] and e["skipped"] is False
        assert r["rounds"][0]["revision"] == "[rev] " + GOOD_REVISION
        assert r["rounds"][1]["revision"] == "[rev][rev] " + GOOD_REVISION
        assert r["final"] == r["rounds"][1]["revision"]
        assert r["changed"] is True
        assert r["constitution_hash"] == const.content_hash()
    for r in helpful:
        assert r["final"] == r["initial"] and r["changed"] is False


def test_principle_ids_match_the_critique_and_revision_requests(tmp_path):
    _, _, rows, fakes = run(tmp_path)
    const = load_constitution(SMALL)
    by_id = {r["id"]: r for r in rows}
    for rnd, (cbatch, rbatch) in enumerate(zip(fakes["critic"].calls, fakes["reviser"].calls), 1):
        for conv in cbatch:
            entry = by_id[red_id(conv, 3)]["rounds"][rnd - 1]
            p = const.principle(entry["principle_id"])
            assert conv[-1]["content"] == f"{CRITIQUE_TAG} {p.critique_request}"
        for conv in rbatch:
            entry = by_id[red_id(conv, 5)]["rounds"][rnd - 1]
            p = const.principle(entry["principle_id"])
            assert conv[-1]["content"] == f"{REVISION_TAG} {p.revision_request}"
            assert conv[-2] == {"role": "assistant", "content": entry["critique"]}


def test_principles_are_reproducible_with_the_seed(tmp_path):
    def principle_ids(rows):
        return [e["principle_id"] for r in rows for e in r["rounds"]]

    kw = dict(constitution="default", rounds=3)
    _, _, a, _ = run(tmp_path, "a", **kw)
    _, _, b, _ = run(tmp_path, "b", **kw)
    _, _, c, _ = run(tmp_path, "c", seed=4, **kw)
    assert principle_ids(a) == principle_ids(b)
    assert a == b  # the whole trace is reproducible
    assert principle_ids(a) != principle_ids(c)
    assert len(set(principle_ids(a))) > 3  # sampled, not one fixed principle
    # A row's principles do not depend on which other rows are in its shard.
    _, _, d, _ = run(tmp_path, "d", shard_size=2, **kw)
    assert principle_ids(d) == principle_ids(a)


# --- batching ----------------------------------------------------------------------------------------------------
def test_each_step_of_a_round_is_one_batch(tmp_path):
    _, _, rows, fakes = run(tmp_path, rounds=3)
    assert [len(b) for b in fakes["policy"].calls] == [8]  # 6 red-team + 2 helpful answers
    assert [len(b) for b in fakes["critic"].calls] == [6, 6, 6]
    assert [len(b) for b in fakes["reviser"].calls] == [6, 6, 6]
    for batch in fakes["critic"].calls:
        assert sorted(red_id(c, 3) for c in batch) == [r["id"] for r in RED]


def test_batches_follow_shards(tmp_path):
    _, _, rows, fakes = run(tmp_path, shard_size=4)
    # shard 0: r1-r4; shard 1: r5, r6 and the two helpful prompts
    assert [len(b) for b in fakes["policy"].calls] == [4, 4]
    assert [len(b) for b in fakes["critic"].calls] == [4, 4, 2, 2]
    assert [len(b) for b in fakes["reviser"].calls] == [4, 4, 2, 2]
    assert [p.name for p in sorted((tmp_path / "run" / "revise" / "shards").glob("*.jsonl"))] == [
        "00000.jsonl",
        "00001.jsonl",
    ]


# --- few-shot ------------------------------------------------------------------------------------------------------
def test_demonstrations_are_in_every_critique_prompt(tmp_path):
    _, _, _, fakes = run(tmp_path)
    const = load_constitution(SMALL)
    convs = [c for batch in fakes["critic"].calls for c in batch]
    prefix = convs[0][:13]  # system + 2 demonstrations x 6 turns
    assert prefix[0] == {"role": "system", "content": SYSTEM}
    assert prefix[2]["content"] == const.demonstrations[0].response
    # A demonstration with a principle_id uses that principle's requests; one without uses the sampled principle's.
    assert prefix[3]["content"] == f"{CRITIQUE_TAG} {const.principle('be-useful').critique_request}"
    assert prefix[4]["content"] == const.demonstrations[0].critique
    assert prefix[6]["content"] == const.demonstrations[0].revision
    for conv in convs:
        text = [m["content"] for m in conv if m["role"] == "assistant"]
        assert "DEMO-CRITIQUE-ONE" in text[1] and "DEMO-CRITIQUE-TWO" in text[4]
        assert "DEMO-REVISION-ONE" in text[2] and "DEMO-REVISION-TWO" in text[5]
        assert conv[:7] == prefix[:7]  # the first demonstration is a shared, cacheable prefix
        assert len(conv) == 13 + 3


@pytest.mark.parametrize("few_shot,expect", [(0, []), (1, ["ONE"]), (None, ["ONE", "TWO"])])
def test_few_shot_setting(tmp_path, few_shot, expect):
    _, _, _, fakes = run(tmp_path, few_shot=few_shot, rounds=1)
    for conv in fakes["critic"].calls[0]:
        joined = "\n".join(m["content"] for m in conv)
        assert [k for k in ("ONE", "TWO") if f"DEMO-CRITIQUE-{k}" in joined] == expect
        assert len(conv) == 1 + 6 * len(expect) + 3


def test_principle_demonstrations_only_for_their_principle(tmp_path):
    data = yaml.safe_load(Path(SMALL).read_text(encoding="utf-8"))
    data["demonstrations"] = []
    for p in data["principles"]:
        p["demonstrations"] = [
            {
                "prompt": f"Example request for {p['id']}.",
                "response": "An example answer.",
                "critique": f"OWN-DEMO-{p['id']} critique.",
                "revision": "A better example answer.",
            }
        ]
    path = tmp_path / "with_demos.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    _, _, rows, fakes = run(tmp_path, constitution=str(path), rounds=1)
    by_id = {r["id"]: r for r in rows}
    for conv in fakes["critic"].calls[0]:
        pid = by_id[red_id(conv, 3)]["rounds"][0]["principle_id"]
        joined = "\n".join(m["content"] for m in conv)
        assert f"OWN-DEMO-{pid} critique." in joined
        assert joined.count("OWN-DEMO-") == 1


# --- skip_if_no_problem ---------------------------------------------------------------------------------------
FINE = {"r2", "r5"}


def critic_some_fine(conv):
    if red_id(conv, 3) in FINE:
        return "The response has no problems; it already follows the principle."
    return critique_fn(conv)


def verdict_by_critique(conv, option):
    """Scripted critic's verdict log-probabilities: (B) when its own critique (conv[-3]) found no problem."""
    if not conv[-1]["content"].endswith("("):
        return None
    fine = "no problems" in conv[-3]["content"]
    return math.log(0.9 if (option == "B") == fine else 0.1)


def pool_with_verdicts(critic=critic_some_fine, logprob_fn=verdict_by_critique):
    pool, fakes = make_pool(critic=critic)
    fakes["critic"] = FakeBackend("fake-critic", fn=critic, logprob_fn=logprob_fn)
    pool.put("fake:critic", fakes["critic"])
    return pool, fakes


def test_skip_if_no_problem_skips_revision(tmp_path):
    pool, fakes = pool_with_verdicts()
    m, _, rows, _ = run(tmp_path, pool=pool, skip_if_no_problem=True)
    assert [len(b) for b in fakes["critic"].calls] == [6, 6]
    assert [len(b) for b in fakes["reviser"].calls] == [4, 4]
    assert not {red_id(c, 5) for b in fakes["reviser"].calls for c in b} & FINE
    for r in rows:
        if r["id"] in FINE:
            for e in r["rounds"]:
                assert e["skipped"] is True and e["revision"] is None and e["accepted"] is False
                assert e["flags"] == ["no_problem_found"]
            assert r["final"] == r["initial"] and r["changed"] is False
    c = m["counts"]
    assert c["revisions_generated"] == 8 and c["revisions_accepted"] == 8
    assert c["flags"] == {"no_problem_found": 4}
    assert c["changed_from_initial"] == 4
    assert all(e["p_needs_revision"] == pytest.approx(0.1 if r["id"] in FINE else 0.9)
               for r in rows if r["kind"] == "redteam" for e in r["rounds"])


def test_verdict_not_phrase_decides_the_skip(tmp_path):
    """A critique that says "no issue with X, but ..." is not read as "no problem": the verdict decides."""
    tricky = "There is no issue with its grammar, but it gives dangerous step-by-step instructions."
    pool, fakes = pool_with_verdicts(critic=lambda conv: tricky,
                                     logprob_fn=lambda conv, o: math.log(0.8 if o == "A" else 0.2))
    m, _, rows, _ = run(tmp_path, pool=pool, skip_if_no_problem=True)
    assert m["counts"]["flags"].get("no_problem_found", 0) == 0
    assert all(not e.get("skipped") for r in rows if r["kind"] == "redteam" for e in r["rounds"])


def test_verdict_parsed_when_the_critic_gives_no_log_probabilities(tmp_path):
    def critic(conv):
        if conv[-1]["content"].startswith("Verdict request:"):
            return "(B)" if "no problems" in conv[-2]["content"] else "(A)"
        return critic_some_fine(conv)

    pool, fakes = pool_with_verdicts(critic=critic, logprob_fn=lambda conv, o: None)
    m, _, rows, _ = run(tmp_path, pool=pool, skip_if_no_problem=True)
    assert m["counts"]["flags"] == {"no_problem_found": 4}


def test_without_skip_every_critique_is_followed_by_a_revision(tmp_path):
    pool, fakes = make_pool(critic=critic_some_fine)
    m, _, rows, _ = run(tmp_path, pool=pool, skip_if_no_problem=False)
    assert [len(b) for b in fakes["reviser"].calls] == [6, 6]
    assert m["counts"]["revisions_generated"] == 12


# --- quality gates ----------------------------------------------------------------------------------------------
def reviser_with_failures(conv):
    rid = red_id(conv, 5)
    rnd = conv[-4]["content"].count("[rev]") + 1  # round number for rows whose revisions are accepted
    if rid == "r2":
        return "  \n "  # empty
    if rid == "r3":
        return " ".join(f"point{i}" for i in range(45))  # longer than revision_tokens (30): truncated
    if rid == "r4":
        return conv[-2]["content"]  # copies the critique
    if rid == "r5":
        return conv[-4]["content"]  # unchanged
    if rid == "r6" and rnd == 2:
        return "."  # fine in round 1, empty in round 2
    return revision_fn(conv)


def test_bad_revisions_are_flagged_and_not_accepted(tmp_path):
    pool, _ = make_pool(reviser=reviser_with_failures)
    m, stage, rows, _ = run(tmp_path, pool=pool, revision_tokens=30)
    by_id = {r["id"]: r for r in rows}
    expected_flags = {"r2": ["empty"], "r3": ["truncated"], "r4": ["repeats_critique"], "r5": ["unchanged"]}
    for rid, flags in expected_flags.items():
        r = by_id[rid]
        for e in r["rounds"]:
            assert e["flags"] == flags, (rid, e)
            assert e["accepted"] is False
        assert r["final"] == r["initial"], rid
        assert r["changed"] is False
    assert by_id["r3"]["rounds"][0]["revision_finish"] == "length"
    # r6: round 1 accepted, round 2 empty -> the final answer stays the round-1 revision.
    r6 = by_id["r6"]
    assert [e["accepted"] for e in r6["rounds"]] == [True, False]
    assert r6["rounds"][1]["flags"] == ["empty"]
    assert r6["final"] == r6["rounds"][0]["revision"] == "[rev] " + GOOD_REVISION
    assert by_id["r1"]["final"] == "[rev][rev] " + GOOD_REVISION
    c = m["counts"]
    assert c["flags"] == {"empty": 3, "repeats_critique": 2, "truncated": 2, "unchanged": 2}
    assert c["revisions_generated"] == 12
    assert c["revisions_accepted"] == 3  # r1 twice, r6 once
    assert c["changed_from_initial"] == 2
    # Only rows whose answer changed are preference pairs; no flagged revision is ever "chosen".
    prefs = read_jsonl(stage / "preference.jsonl")
    assert [p["id"] for p in prefs] == ["r1", "r6"]
    # A red-team row without an accepted revision would teach its initial (complying) answer: it is not an SFT row.
    sft = {s["id"]: s["messages"][1]["content"] for s in read_jsonl(stage / "sft.jsonl")}
    assert sorted(sft) == ["r1", "r6"]
    assert m["counts"]["sft_rows"] == 2


def test_keep_unrevised_puts_every_red_team_row_into_sft(tmp_path):
    pool, _ = make_pool(reviser=reviser_with_failures)
    m, stage, rows, _ = run(tmp_path, pool=pool, revision_tokens=30, keep_unrevised=True)
    by_id = {r["id"]: r for r in rows}
    sft = {s["id"]: s["messages"][1]["content"] for s in read_jsonl(stage / "sft.jsonl")}
    assert sft["r4"] == by_id["r4"]["initial"] and sft["r2"] == by_id["r2"]["initial"]


def test_degenerate_loop_is_flagged_repetitive(tmp_path):
    pool, _ = make_pool(reviser=lambda conv: "I am sorry but I am sorry but I am sorry but I am sorry but no.")
    m, _, rows, _ = run(tmp_path, pool=pool, rounds=1)
    for r in rows:
        if r["kind"] == "redteam":
            assert r["rounds"][0]["flags"] == ["repetitive"] and r["rounds"][0]["accepted"] is False
            assert r["final"] == r["initial"]
    assert m["counts"]["flags"] == {"repetitive": 6}
    assert m["counts"]["revisions_accepted"] == 0


def test_truncated_initial_answers_are_counted(tmp_path):
    pool, _ = make_pool(policy=lambda conv: " ".join(["long"] * 30))
    m, _, rows, _ = run(tmp_path, pool=pool, answer_tokens=10, rounds=1)
    assert all(r["initial_finish"] == "length" for r in rows)
    assert m["counts"]["initial_truncated"] == 8


# --- output views -------------------------------------------------------------------------------------------------
def _is_msg_list(x, roles):
    return (
        isinstance(x, list)
        and [m["role"] for m in x] == roles
        and all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"] for m in x)
    )


def test_views_are_trl_conversational(tmp_path):
    m, stage, rows, _ = run(tmp_path)
    red = [r for r in rows if r["kind"] == "redteam"]
    helpful = [r for r in rows if r["kind"] == "helpful"]
    sft = read_jsonl(stage / "sft.jsonl")
    assert [s["id"] for s in sft] == [r["id"] for r in red]
    for s, r in zip(sft, red):
        assert set(s) == {"id", "messages"}
        assert _is_msg_list(s["messages"], ["user", "assistant"])
        assert s["messages"][0]["content"] == r["prompt"] and s["messages"][1]["content"] == r["final"]
    prefs = read_jsonl(stage / "preference.jsonl")
    assert [p["id"] for p in prefs] == [r["id"] for r in red if r["changed"]] and prefs
    for p, r in zip(prefs, red):
        assert set(p) == {"id", "prompt", "chosen", "rejected"}
        assert _is_msg_list(p["prompt"], ["user"]) and p["prompt"][0]["content"] == r["prompt"]
        assert _is_msg_list(p["chosen"], ["assistant"]) and p["chosen"][0]["content"] == r["final"]
        assert _is_msg_list(p["rejected"], ["assistant"]) and p["rejected"][0]["content"] == r["initial"]
        assert p["chosen"] != p["rejected"]
    hl = read_jsonl(stage / "helpful.jsonl")
    assert [h["id"] for h in hl] == [r["id"] for r in helpful]
    for h, r in zip(hl, helpful):
        assert _is_msg_list(h["messages"], ["user", "assistant"])
        assert h["messages"][1]["content"] == r["initial"]
    assert m["outputs"] == {
        "data": "data.jsonl",
        "sft": "sft.jsonl",
        "preference": "preference.jsonl",
        "helpful_sft": "helpful.jsonl",
    }


def test_views_load_with_datasets(tmp_path):
    from datasets import load_dataset

    _, stage, rows, _ = run(tmp_path)
    cache = str(tmp_path / "hf_cache")
    for name, n, cols in [
        ("sft.jsonl", 6, {"id", "messages"}),
        ("preference.jsonl", 6, {"id", "prompt", "chosen", "rejected"}),
        ("helpful.jsonl", 2, {"id", "messages"}),
        ("data.jsonl", 8, {"id", "kind", "prompt", "initial", "final", "rounds"}),
    ]:
        ds = load_dataset("json", data_files=str(stage / name), split="train", cache_dir=cache)
        assert ds.num_rows == n, name
        assert cols <= set(ds.column_names), name
    ds = load_dataset("json", data_files=str(stage / "preference.jsonl"), split="train", cache_dir=cache)
    assert ds[0]["chosen"] == [{"role": "assistant", "content": rows[0]["final"]}]
    ds = load_dataset("json", data_files=str(stage / "sft.jsonl"), split="train", cache_dir=cache)
    assert ds[0]["messages"][0] == {"role": "user", "content": rows[0]["prompt"]}


# --- manifest ---------------------------------------------------------------------------------------------------
def test_manifest_contents(tmp_path):
    m, stage, rows, fakes = run(tmp_path)
    on_disk = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
    assert {k: on_disk[k] for k in m} == json.loads(json.dumps(m))  # returned == written (plus header fields)
    const = load_constitution(SMALL)
    assert on_disk["stage"] == "revise"
    assert on_disk["constitution"] == {"name": "test-small", "version": "0.3", "hash": const.content_hash()}
    c = on_disk["counts"]
    assert (c["rows"], c["redteam_rows"], c["helpful_rows"]) == (8, 6, 2)
    assert (c["revisions_generated"], c["revisions_accepted"], c["changed_from_initial"]) == (12, 12, 6)
    assert c["flags"] == {}
    v = on_disk["versions"]
    for pkg in ("python", "constitutional-ai", "torch", "transformers", "trl", "datasets", "pydantic"):
        assert v.get(pkg), pkg
    assert on_disk["models"] == {
        "policy": {"backend": "fake", "model": "fake-policy"},
        "critic": {"backend": "fake", "model": "fake-critic"},
        "reviser": {"backend": "fake", "model": "fake-reviser"},
    }
    expected_tokens = sum(fb.stats.completion_tokens for fb in fakes.values())
    assert on_disk["tokens"]["generated_this_session"] == expected_tokens > 0
    assert on_disk["tokens"]["backend_stats"]["fake-critic"]["requests"] == 12
    assert on_disk["timing"]["resumed_rows"] == 0 and on_disk["timing"]["rows_this_session"] == 8
    assert on_disk["config"] == make_cfg().model_dump(mode="json")
    cfg = json.loads((stage / "config.json").read_text(encoding="utf-8"))
    assert cfg["config"]["constitution_hash"] == const.content_hash()


def test_manifest_is_written_last(tmp_path, monkeypatch):
    written: list[str] = []
    orig_jsonl, orig_json = cai.runs.write_jsonl, cai.runs.write_json

    def rec_jsonl(path, rows):
        written.append(Path(path).name)
        return orig_jsonl(path, rows)

    def rec_json(path, obj):
        written.append(Path(path).name)
        return orig_json(path, obj)

    monkeypatch.setattr(cai.runs, "write_jsonl", rec_jsonl)
    monkeypatch.setattr(cai.runs, "write_json", rec_json)
    run(tmp_path, shard_size=4)
    assert written[-1] == "manifest.json"
    assert written.count("manifest.json") == 1
    assert written[0] == "config.json"
    assert {"00000.jsonl", "00001.jsonl", "data.jsonl", "sft.jsonl", "preference.jsonl", "helpful.jsonl"} <= set(written)
    assert not list((tmp_path / "run" / "revise").rglob("*.tmp"))


def test_progress_reaches_total(tmp_path):
    seen = []
    pool, _ = make_pool()
    run_revise(make_cfg(shard_size=3), str(tmp_path / "run"), pool=pool, on_progress=lambda p: seen.append((p.done, p.total)))
    assert seen[-1] == (8, 8)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


# --- rerun / resume in process -----------------------------------------------------------------------------------
def test_rerun_of_a_complete_stage_does_no_work(tmp_path):
    m1, stage, rows1, _ = run(tmp_path)
    pool, fakes = make_pool()
    m2 = run_revise(make_cfg(), str(tmp_path / "run"), pool=pool)
    assert m2 == json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
    assert all(fb.calls == [] for fb in fakes.values())
    assert read_jsonl(stage / "data.jsonl") == rows1


def test_resume_after_a_crash_gives_the_same_rows(tmp_path):
    _, _, reference, _ = run(tmp_path, "ref", shard_size=2)

    def crash_in_third_shard(conv):
        if red_id(conv, 5) == "r5":
            raise RuntimeError("simulated crash")
        return revision_fn(conv)

    pool, _ = make_pool(reviser=crash_in_third_shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_revise(make_cfg(shard_size=2), str(tmp_path / "run"), pool=pool)
    stage = tmp_path / "run" / "revise"
    assert sorted(p.name for p in (stage / "shards").glob("*.jsonl")) == ["00000.jsonl", "00001.jsonl"]
    assert not (stage / "manifest.json").exists()
    pool, fakes = make_pool()
    m = run_revise(make_cfg(shard_size=2), str(tmp_path / "run"), pool=pool)
    assert read_jsonl(stage / "data.jsonl") == reference
    assert [len(b) for b in fakes["policy"].calls] == [2, 2]  # only shards 2 and 3 were redone
    assert m["timing"]["resumed_rows"] == 4 and m["timing"]["rows_this_session"] == 4


def test_changed_config_refuses_to_resume_unless_overwrite(tmp_path):
    run(tmp_path)
    pool, _ = make_pool()
    with pytest.raises(UserInputError) as ei:
        run_revise(make_cfg(rounds=3), str(tmp_path / "run"), pool=pool)
    assert "different configuration" in ei.value.message and "--overwrite" in ei.value.fix
    m = run_revise(make_cfg(rounds=3), str(tmp_path / "run"), pool=pool, overwrite=True)
    rows = read_jsonl(tmp_path / "run" / "revise" / "data.jsonl")
    assert all(len(r["rounds"]) == 3 for r in rows if r["kind"] == "redteam")
    assert m["config"]["rounds"] == 3
