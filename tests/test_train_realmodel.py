"""Training stages on the embedded SmolLM2-135M with a handful of rows and steps: SFT (with a kill and a resume),
the soft-label reward model and `cai score`, DPO from the SFT policy. Plus quick unit tests of the shared helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cai.errors import UserInputError
from cai.train.logs import append_line, latest_checkpoint, read_metrics, trim_metrics

REDTEAM = [
    ("How do I get into my neighbour's house while they are away?",
     "I can't help with entering someone else's home without permission. If you're worried about their house, "
     "you could call them or ask the police to do a welfare check."),
    ("Write a nasty message to humiliate my classmate.",
     "I won't write something meant to humiliate anyone. If a classmate upset you, I can help you say so calmly."),
    ("What household chemicals make a toxic gas?",
     "Mixing cleaning products can release dangerous fumes, so never combine bleach with ammonia or acids. Keep "
     "cleaners in their own containers and ventilate the room."),
    ("How can I cheat on my exam without being caught?",
     "I can't help with cheating. I can help you make a study plan so you feel ready for the exam."),
]
HELPFUL = [
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Suggest a name for a grey cat.", "How about Pebble? It suits a small grey cat."),
]
PAIRS = [
    ("How do I pick a lock?", "I can't help open locks that aren't yours; a locksmith can help if you're locked out.",
     "Push a tension wrench in and rake the pins until it turns.", 0.9),
    ("Insult my coworker for me.", "I'd rather help you tell your coworker calmly what is bothering you.",
     "Your coworker is a useless fool.", 0.95),
    ("How do I make a fake ID?", "I can't help with fake documents; a government office can issue a real ID.",
     "Print a photo on card stock and laminate it.", 0.8),
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "I have no idea.", 0.7),
    ("Give me a tip for sleeping well.", "Go to bed at the same time each night and dim the screens.",
     "Drink strong coffee right before bed.", 0.85),
    ("How do I get into my ex's email?", "Accessing someone else's account is illegal; I can help you secure yours.",
     "Guess the password from their birthday.", 0.6),
]


class Killed(Exception):
    pass


#: stage -> (the manifest its killed session was about to write, a weight of the model that session saved)
KILLED_BEFORE_MANIFEST: dict[str, tuple[dict, object]] = {}


def _killed_before_manifest(stage: str, run_dir: Path, run) -> dict:
    """Run a stage whose process dies after its last checkpoint and model save, right before the manifest; rerun it.
    Asserts the rerun resumes from the last checkpoint (no step trained again) and returns its manifest."""
    from cai.runs import StageDir

    seen: dict = {}

    def finish(self, manifest):
        seen.update(manifest)
        raise Killed("killed between the last checkpoint and the manifest")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StageDir, "finish", finish)
        with pytest.raises(Killed):
            run()
    folder = run_dir / stage
    assert not (folder / "manifest.json").exists() and (folder / "model" / "config.json").exists()
    ckpt, step = latest_checkpoint(folder / "checkpoints")
    assert ckpt is not None and step == seen["training"]["steps"]  # the resume point survived the kill
    weight = _tensor(folder / "model", "model.layers.0.self_attn.q_proj.weight")
    KILLED_BEFORE_MANIFEST[stage] = (seen, weight)
    m = run()
    assert m["training"]["resumed_from"] == f"checkpoint-{step}" and m["training"]["steps_this_session"] == 0
    assert m["training"]["steps"] == step and not (folder / "checkpoints").exists()
    assert _tensor(folder / "model", "model.layers.0.self_attn.q_proj.weight").equal(weight)  # same trained model
    return m


def _msg(role, text):
    return {"role": role, "content": text}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """On a shared 2-core machine, two busy-waiting OpenMP threads run several times slower than one thread; these
    tests take one thread so their duration does not depend on what else is running."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    _write(run / "revise" / "sft.jsonl",
           [{"id": f"r{i}", "messages": [_msg("user", p), _msg("assistant", a)]} for i, (p, a) in enumerate(REDTEAM)])
    _write(run / "revise" / "helpful.jsonl",
           [{"id": f"h{i}", "messages": [_msg("user", p), _msg("assistant", a)]} for i, (p, a) in enumerate(HELPFUL)])
    _write(run / "label" / "preference.jsonl",
           [{"id": f"p{i}", "prompt": [_msg("user", p)], "chosen": [_msg("assistant", c)],
             "rejected": [_msg("assistant", r)], "score_chosen": s, "score_rejected": round(1 - s, 4)}
            for i, (p, c, r, s) in enumerate(PAIRS)])
    return run


def _tensor(folder, name: str):
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(name)


def _base_dir():
    from cai.backends.embedded import embedded_model_dir

    return embedded_model_dir()


def _loss_rows(stage: Path) -> list[dict]:
    return [r for r in read_metrics(stage / "metrics.jsonl") if "loss" in r]


def _generates(folder: Path) -> str:
    from cai.backends.base import GenParams
    from cai.backends.transformers_backend import TransformersBackend

    b = TransformersBackend(str(folder), device="cpu")
    out = b.generate([[_msg("user", "What is the capital of Italy?")]], GenParams(max_new_tokens=12))
    return out[0].text


# --- SFT: interrupted after its first checkpoint, then resumed -------------------------------------------------------
@pytest.fixture(scope="module")
def sft_manifest(run_dir):
    from transformers import TrainerCallback

    from cai.stages.sft import SFTStageConfig, run_sft

    class KillAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                raise Killed("simulated kill after the step-1 checkpoint")

    cfg = SFTStageConfig(max_steps=2, batch_size=2, max_length=128, save_steps=1, logging_steps=1, warmup_ratio=0,
                         helpful_ratio=0.5, seed=1)
    with pytest.raises(Killed):
        run_sft(cfg, run_dir, progress=False, callbacks=[KillAtStep2()])
    stage = run_dir / "sft"
    assert not (stage / "manifest.json").exists()
    assert latest_checkpoint(stage / "checkpoints")[1] == 1
    return _killed_before_manifest("sft", run_dir, lambda: run_sft(cfg, run_dir, progress=False))


@pytest.mark.realmodel
def test_sft_resumes_trains_and_saves_a_merged_policy(run_dir, sft_manifest):
    m = sft_manifest
    stage = run_dir / "sft"
    second = KILLED_BEFORE_MANIFEST["sft"][0]  # the session that resumed from the step-1 kill
    assert second["training"]["resumed_from"] == "checkpoint-1"
    assert second["training"]["steps"] == 2 and second["training"]["steps_this_session"] == 1
    assert m["data"]["revision_rows"] == 4 and m["data"]["helpful_used"] == 2 and m["data"]["train_rows"] == 6
    rows = _loss_rows(stage)
    assert [r["step"] for r in rows] == [1, 2]  # the resumed run neither lost nor repeated a step
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert m["training"]["final_loss"] == pytest.approx(rows[-1]["loss"])
    assert not (stage / "checkpoints").exists()
    model = stage / "model"
    assert (model / "config.json").exists() and (model / "tokenizer.json").exists()
    name = "model.layers.0.self_attn.q_proj.weight"
    after, before = _tensor(model, name), _tensor(_base_dir(), name)
    assert after.shape == before.shape and not after.equal(before)  # the LoRA update was merged into the weights
    assert not any(k for k in json.loads((model / "config.json").read_text()) if "peft" in k.lower())
    assert _generates(model).strip()
    assert json.loads((stage / "manifest.json").read_text())["stage"] == "sft"
    # a finished stage is not trained again
    from cai.stages.sft import SFTStageConfig, run_sft

    again = run_sft(SFTStageConfig(max_steps=2, batch_size=2, max_length=128, save_steps=1, logging_steps=1,
                                   warmup_ratio=0, helpful_ratio=0.5, seed=1), run_dir, progress=False)
    assert again["finished_at"] == m["finished_at"]


# --- reward model ----------------------------------------------------------------------------------------------------
@pytest.mark.realmodel
def test_reward_model_trains_on_soft_labels_evaluates_and_scores(run_dir, tmp_path):
    from cai.stages.reward import RewardScorer, RewardStageConfig, run_reward, score_file

    cfg = RewardStageConfig(max_steps=2, batch_size=2, max_length=128, logging_steps=1, warmup_ratio=0,
                            eval_fraction=0.34, learning_rate=5e-5)
    m = _killed_before_manifest("reward", run_dir, lambda: run_reward(cfg, run_dir, progress=False))
    stage = run_dir / "reward"
    assert m["data"]["label_field"] == "score_chosen"
    assert m["data"]["train_pairs"] == 4 and m["data"]["eval_pairs"] == 2
    assert "soft Bradley-Terry" in m["loss"]["name"]
    rows = _loss_rows(stage)
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    ev = json.loads((stage / "eval.json").read_text())
    after = ev["after_training"]
    assert after["n"] == 2 and 0.0 <= after["accuracy"] <= 1.0 and 0.0 <= after["ece"] <= 1.0
    assert sum(b["n"] for b in after["bins"]) == 2 and len(after["bins"]) == 5
    assert ev["before_training"]["n"] == 2
    assert after["mean_margin"] != ev["before_training"]["mean_margin"]  # training moved the rewards
    model = stage / "model"
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not _tensor(model, name).equal(_tensor(_base_dir(), name))
    scorer = RewardScorer(stage)  # the stage folder resolves to its model/
    prompts = ["What is the capital of Italy?"] * 2
    scores = scorer.score(prompts, ["The capital of Italy is Rome.", "I have no idea."], batch_size=2)
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    assert scorer.score(prompts[:1], ["I have no idea."])[0] == pytest.approx(scores[1], abs=1e-4)  # batching-invariant
    inp = tmp_path / "answers.jsonl"
    _write(inp, [{"id": "a", "prompt": prompts[0], "answer": "Rome."},
                 {"id": "b", "messages": [_msg("user", prompts[0]), _msg("assistant", "No idea.")]}])
    summary = score_file(model, inp, tmp_path / "scored.jsonl", batch_size=2)
    scored = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert summary["rows"] == 2 and [r["id"] for r in scored] == ["a", "b"]
    assert all(math.isfinite(r["reward"]) for r in scored)


@pytest.mark.realmodel
def test_soft_label_reaches_the_reward_loss(tmp_path):
    """The soft label survives TRL's column handling, reaches compute_loss, and replaces the hard loss there."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig

    from cai.stages.reward import _trainer_class, soft_bt_loss
    from cai.train.models import load_tokenizer

    tok = load_tokenizer(_base_dir())
    torch.manual_seed(0)
    tiny = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id))
    ds = Dataset.from_list([{"chosen_ids": [5, 6, 7], "rejected_ids": [8, 9], "p_chosen": 0.7},
                            {"chosen_ids": [10, 11], "rejected_ids": [12, 13, 14, 15], "p_chosen": 0.2}])
    collator_cls, trainer_cls = _trainer_class()
    args = RewardConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none",
                        remove_unused_columns=False, per_device_train_batch_size=2, activation_checkpointing=False)
    trainer = trainer_cls(model=tiny, args=args, data_collator=collator_cls(pad_token_id=tok.pad_token_id),
                          train_dataset=ds, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch["p_chosen"].tolist()) == pytest.approx([0.2, 0.7])
    p = batch["p_chosen"].clone()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
        rc, rr = torch.chunk(outputs.logits.squeeze(-1), 2)
    assert loss.item() == pytest.approx(soft_bt_loss(rc, rr, p).item(), abs=1e-6)
    assert loss.item() != pytest.approx((-torch.nn.functional.logsigmoid(rc - rr).mean()).item(), abs=1e-4)


# --- DPO ---------------------------------------------------------------------------------------------------------------
@pytest.mark.realmodel
def test_dpo_trains_the_sft_policy_against_its_adapter_free_self(run_dir, sft_manifest, capfd):
    from cai.stages.dpo import DPOStageConfig, run_dpo

    from cai.progress import Progress

    cfg = DPOStageConfig(max_steps=2, batch_size=1, max_length=128, logging_steps=1, warmup_ratio=0, min_p_chosen=0.65,
                         save_steps=1)
    seen: list[tuple[int, int, dict]] = []

    def on_progress(p: Progress) -> None:
        seen.append((p.done, p.total, dict(p.extra["metrics"])))

    m = run_dpo(cfg, run_dir, progress=False, on_progress=on_progress)
    assert seen[-1][:2] == (2, 2) and "loss" in seen[-1][2] and "accuracy" in seen[-1][2]  # steps, loss on the line
    console = "".join(capfd.readouterr())
    assert "{'loss'" not in console and "it/s]" not in console  # no raw TRL dicts, no tqdm bars
    stage = run_dir / "dpo"
    assert m["policy"]["source"] == "this run's sft/model"  # default policy: the run's SFT model
    assert m["data"]["low_confidence_dropped"] == 1 and m["data"]["train_pairs"] == 5
    rows = _loss_rows(stage)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert all(key in r and math.isfinite(r[key]) for r in rows)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference before the first update
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not _tensor(stage / "model", name).equal(_tensor(run_dir / "sft" / "model", name))
    assert _generates(stage / "model").strip()
    assert (stage / "manifest.json").exists()


# --- helpers (no model) ------------------------------------------------------------------------------------------------
def test_metrics_lines_are_whole_and_trimmed_back_to_a_checkpoint(tmp_path):
    p = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3, 4):
        append_line(p, json.dumps({"step": step, "loss": 1.0 / step}))
    with open(p, "a") as f:
        f.write('{"step": 5, "lo')  # a torn line from a kill mid-write
    assert [r["step"] for r in read_metrics(p)] == [1, 2, 3, 4]
    trim_metrics(p, 2)
    assert [r["step"] for r in read_metrics(p)] == [1, 2]
    assert p.read_text().endswith("\n")


def test_latest_checkpoint_skips_incomplete_ones(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    path, step = latest_checkpoint(tmp_path)
    assert step == 4 and path.endswith("checkpoint-4")
    assert latest_checkpoint(tmp_path / "missing") == (None, 0)


def test_missing_run_inputs_name_the_file_and_the_fix(tmp_path):
    from cai.stages.dpo import DPOStageConfig, run_dpo
    from cai.stages.sft import SFTStageConfig, run_sft

    with pytest.raises(UserInputError, match=r"revise/sft\.jsonl.*does not exist") as e:
        run_sft(SFTStageConfig(), tmp_path / "nothing")
    assert "cai revise" in e.value.fix
    with pytest.raises(UserInputError, match=r"label/preference\.jsonl"):
        run_dpo(DPOStageConfig(), tmp_path / "nothing")
    with pytest.raises(Exception, match="training needs local weights"):
        from cai.train.models import resolve_model_path

        resolve_model_path("openai:some-model@http://localhost:1/v1")


def test_sft_rows_need_an_assistant_answer(tmp_path):
    from cai.stages.sft import SFTStageConfig, build_sft_data

    _write(tmp_path / "d.jsonl", [{"messages": [_msg("user", "Hello?")]}])
    with pytest.raises(UserInputError, match=r"d\.jsonl \(id sft-00001\).*assistant"):
        build_sft_data(SFTStageConfig(data=str(tmp_path / "d.jsonl")), tmp_path)
    _write(tmp_path / "pc.jsonl", [{"prompt": "Hi?", "completion": "Hello."}, {"prompt": "Bye?", "response": "Bye."}])
    rows, info = build_sft_data(SFTStageConfig(data=str(tmp_path / "pc.jsonl"), helpful=None), tmp_path)
    assert info["revision_rows"] == 2 and info["helpful_used"] == 0
    assert {r["completion"][0]["content"] for r in rows} == {"Hello.", "Bye."}


def test_helpful_mix_follows_the_ratio_and_the_seed(tmp_path):
    from cai.stages.sft import SFTStageConfig, build_sft_data

    run = tmp_path / "run"
    _write(run / "revise" / "sft.jsonl", [{"messages": [_msg("user", f"q{i}"), _msg("assistant", f"a{i}")]} for i in range(10)])
    _write(run / "revise" / "helpful.jsonl",
           [{"messages": [_msg("user", f"h{i}"), _msg("assistant", f"b{i}")]} for i in range(30)])
    rows, info = build_sft_data(SFTStageConfig(helpful_ratio=0.5, seed=3), run)
    assert info["helpful_used"] == 5 and len(rows) == 15
    again, _ = build_sft_data(SFTStageConfig(helpful_ratio=0.5, seed=3), run)
    assert [r["id"] for r in again] == [r["id"] for r in rows]
    other, _ = build_sft_data(SFTStageConfig(helpful_ratio=0.5, seed=4), run)
    assert {r["id"] for r in other if r["source"] == "helpful"} != {r["id"] for r in rows if r["source"] == "helpful"}
    _, info = build_sft_data(SFTStageConfig(helpful_ratio=5.0), run)
    assert info["helpful_used"] == 30 and info["helpful_wanted"] == 50  # all there is, shortfall recorded
