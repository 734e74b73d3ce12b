"""The two shared stage runners without real models: the shard loop (cai.stages.sharded) and the training skeleton
(cai.train.runner), plus seeding, tracker settings and the training progress report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cai.backends.fake import FakeBackend
from cai.backends.registry import BackendPool
from cai.errors import ConfigError, UserInputError
from cai.progress import ProgressLine
from cai.runs import StageDir
from cai.seeding import rng, shard_seed
from cai.stages.sharded import Shard, cut_shards, run_sharded
from cai.train.logs import StepReporter, read_metrics
from cai.train.runner import Trained, run_training
from cai.train.settings import TrainSettings, trainer_kwargs


class Killed(Exception):
    pass


# --- seeding --------------------------------------------------------------------------------------------------------
def test_seeds_depend_only_on_the_run_seed_the_shard_and_the_step():
    assert shard_seed(3, 2, 17) == 3 * 7919 + 2 * 101 + 17
    assert len({shard_seed(0, i, s) for i in range(10) for s in range(5)}) == 50
    assert rng(4, "row-1", 2).random() == rng("4:row-1:2").random()  # string keyed: stable across processes
    assert rng(4, "row-1", 2).random() != rng(4, "row-1", 3).random()


# --- the shard loop -------------------------------------------------------------------------------------------------
def _items(n: int) -> list[dict]:
    return [{"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(n)]


def _echo_work(shard: Shard, backend: FakeBackend, prog) -> list[dict]:
    comps = backend.generate([[{"role": "user", "content": it["prompt"]}] for it in shard.items],
                             __import__("cai.backends.base", fromlist=["GenParams"]).GenParams(seed=shard.seed(5)))
    prog.advance(0, sum(c.completion_tokens for c in comps))  # tokens only: the runner counts the items
    return [{"id": it["id"], "answer": c.text, "shard": shard.index} for it, c in zip(shard.items, comps)]


def _finish(result) -> dict:
    result.stage.write_output("out.jsonl", result.rows)
    return {"rows": len(result.rows), "timing": result.timing(), "outputs": {"out": "out.jsonl"}}


def test_shards_are_cut_from_the_full_input():
    shards = cut_shards(_items(7), 3, seed=2)
    assert [[it["id"] for it in s.items] for s in shards] == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]]
    assert [s.seed(1) for s in shards] == [shard_seed(2, i, 1) for i in range(3)]


def test_a_backend_that_fails_to_load_leaves_no_stage_behind(tmp_path):
    def load():
        raise UserInputError("model 'nope' not found", fix="check the name")

    with pytest.raises(UserInputError):
        run_sharded(tmp_path / "run", "demo", _items(3), shard_size=2, seed=0, identity={"x": 1}, load=load,
                    work=_echo_work, finish=_finish)
    assert not (tmp_path / "run" / "demo" / "config.json").exists()


def test_shard_loop_resumes_counts_progress_and_skips_a_finished_stage(tmp_path):
    backend = FakeBackend(fn=lambda conv: "answer to " + conv[-1]["content"])
    loads, seen = [], []

    def load():
        loads.append(1)
        return backend

    def dying_work(shard, b, prog):
        if shard.index == 1:
            raise Killed("killed in shard 1")
        return _echo_work(shard, b, prog)

    kw = dict(shard_size=2, seed=3, identity={"demo": 1}, load=load, finish=_finish)
    with pytest.raises(Killed):
        run_sharded(tmp_path, "demo", _items(5), work=dying_work, **kw)
    stage = tmp_path / "demo"
    assert (stage / "shards" / "00000.jsonl").exists() and not (stage / "manifest.json").exists()

    ready = []
    m = run_sharded(tmp_path, "demo", _items(5), work=_echo_work, on_ready=lambda p: ready.append(p.done),
                    on_progress=lambda p: seen.append((p.done, p.total)), **kw)
    assert ready == [2]  # shard 0 was finished by the killed session
    assert seen[-1] == (5, 5) and m["timing"]["resumed_rows"] == 2 and m["timing"]["rows_this_session"] == 3
    rows = [json.loads(x) for x in (stage / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(5)] and [r["shard"] for r in rows] == [0, 0, 1, 1, 2]
    # shard 0 in the first session, shards 1 and 2 in the second: each seeded by its own index
    assert [p.seed for p in backend.params] == [shard_seed(3, i, 5) for i in range(3)]
    assert json.loads((stage / "manifest.json").read_text())["rows"] == 5
    n_loads = len(loads)
    assert run_sharded(tmp_path, "demo", _items(5), work=_echo_work, **kw)["rows"] == 5
    assert len(loads) == n_loads and len(backend.calls) == 3  # complete: nothing loaded, nothing generated


def test_pairs_seeds_each_shard_from_its_index(tmp_path):
    from cai.stages.pairs import SAMPLING_STEP, PairsConfig, run_pairs

    pool = BackendPool()
    fake = FakeBackend(fn=lambda conv: "a reply")
    pool.put("fake", fake)
    cfg = PairsConfig(policy="fake", limit=3, shard_size=2, k=2, seed=4)
    m = run_pairs(cfg, str(tmp_path), pool=pool)
    assert [p.seed for p in fake.params] == [shard_seed(4, 0, SAMPLING_STEP), shard_seed(4, 1, SAMPLING_STEP)]
    assert m["counts"]["prompts"] == 3 and m["counts"]["answers"] == 6


# --- the training skeleton ------------------------------------------------------------------------------------------
def _tiny_model_and_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "hello", "world"])}
    raw = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    return model, tok


def _fake_checkpoint(ckpt_dir: Path, step: int) -> None:
    p = ckpt_dir / f"checkpoint-{step}"
    p.mkdir(parents=True)
    (p / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def _train_fn(calls: list):
    """A stand-in for a stage's train(): 'trains' 2 steps, checkpointing each, logging a line per step."""
    from cai.train.logs import append_line

    def train(run):
        calls.append((run.state, Path(run.resume_from).name if run.resume_from else None, run.resume_step))
        for step in range(run.resume_step + 1, 3):
            append_line(run.metrics_path, json.dumps({"step": step, "loss": 1.0 / step}))
            _fake_checkpoint(run.ckpt_dir, step)
        model, tok = _tiny_model_and_tokenizer()
        training = run.summary(steps=2, epochs=1.0, final_loss=0.5, mean_train_loss=0.75, learning_rate=1e-4,
                               effective_batch_size=2, seconds=0.1)
        return Trained(model=model, tokenizer=tok, training=training, params={"total": 1, "trainable": 1},
                       manifest={"data": {"rows": 2}})

    return train


def test_a_kill_between_checkpoint_and_manifest_resumes_from_the_last_checkpoint(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    cfg = TrainSettings(device="cpu")
    calls: list = []
    real_finish = StageDir.finish

    def killed_finish(self, manifest):
        raise Killed("killed right before the manifest")

    monkeypatch.setattr(StageDir, "finish", killed_finish)
    with pytest.raises(Killed):
        run_training(tmp_path / "run", "sft", cfg, identity={"x": 1}, train=_train_fn(calls), progress=False)
    stage = tmp_path / "run" / "sft"
    assert not (stage / "manifest.json").exists()
    assert (stage / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()  # the resume point survives
    with open(stage / "metrics.jsonl", "a") as f:  # a line logged after the last checkpoint is dropped on resume
        f.write(json.dumps({"step": 3, "loss": 0.1}) + "\n")

    monkeypatch.setattr(StageDir, "finish", real_finish)
    m = run_training(tmp_path / "run", "sft", cfg, identity={"x": 1}, train=_train_fn(calls), progress=False)
    assert calls == [("new", None, 0), ("resume", "checkpoint-2", 2)]
    assert m["training"]["resumed_from"] == "checkpoint-2" and m["training"]["steps_this_session"] == 0
    assert [r["step"] for r in read_metrics(stage / "metrics.jsonl")] == [1, 2]
    assert not (stage / "checkpoints").exists()  # removed only once the manifest is written
    assert m["outputs"] == {"model": "model", "metrics": "metrics.jsonl"} and m["data"] == {"rows": 2}
    assert m["training"]["report_to"] is None and m["training"]["run_name"] == "run/sft"
    assert AutoModelForCausalLM.from_pretrained(str(stage / "model")).config.num_hidden_layers == 1
    # finished: not trained again
    assert run_training(tmp_path / "run", "sft", cfg, identity={"x": 1}, train=_train_fn(calls))["finished_at"]
    assert len(calls) == 2


def test_checkpoints_are_kept_when_asked(tmp_path):
    cfg = TrainSettings(device="cpu", keep_checkpoints=True)
    run_training(tmp_path, "dpo", cfg, identity={}, train=_train_fn([]), progress=False)
    assert sorted(p.name for p in (tmp_path / "dpo" / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]


def test_tracker_settings_are_checked_before_the_stage_starts(tmp_path):
    assert TrainSettings(report_to=["wandb", "tensorboard"]).report_to == "wandb,tensorboard"  # YAML list form
    assert TrainSettings().report_to == "none" and TrainSettings(report_to=None).report_to == "none"
    for bad, words in (("nosuchtracker", "unknown experiment tracker"), ("swanlab", "not installed")):
        with pytest.raises(ConfigError) as e:
            run_training(tmp_path, "sft", TrainSettings(report_to=bad), identity={}, train=_train_fn([]))
        assert "report_to" in e.value.message and words in e.value.message and "none" in e.value.fix
    assert not (tmp_path / "sft").exists()


def test_trl_configs_get_the_run_name_trackers_and_no_progress_bars(tmp_path):
    from trl import SFTConfig

    kw = trainer_kwargs(TrainSettings(device="cpu", run_name="mine"), tmp_path, default_lr=1e-4, run_name="r/sft")
    args = SFTConfig(**kw)
    assert args.run_name == "mine" and args.disable_tqdm is True and args.report_to in ([], "none", ["none"])
    kw = trainer_kwargs(TrainSettings(device="cpu"), tmp_path, default_lr=1e-4, run_name="r/sft")
    assert kw["run_name"] == "r/sft" and kw["report_to"] == "none"


def test_training_progress_reaches_the_progress_line_and_callbacks(capsys):
    stream = io.StringIO()
    seen = []
    with ProgressLine("sft", stream=stream, tty=False, interval=3600):
        rep = StepReporter("sft", on_progress=lambda p: seen.append((p.done, p.total, dict(p.extra["metrics"]))))
        rep.start(4, 1)
        rep.step(2)
        rep.logged(2, {"step": 2, "loss": 1.25, "rewards/accuracies": 0.5, "grad_norm": 3.0})
        rep.step(4)
    text = stream.getvalue()
    assert "sft" in text and "4/4" in text and "loss 1.25" in text and "accuracy 0.5" in text
    assert seen[-1][:2] == (4, 4) and seen[-2] == (2, 4, {"loss": 1.25, "accuracy": 0.5})
    assert "grad_norm" not in text
    # no progress line and no callback: one plain line per logging step
    quiet = StepReporter("dpo")
    quiet.start(2, 0)
    quiet.logged(1, {"loss": 0.69})
    assert "dpo step 1/2: loss 0.69" in capsys.readouterr().err


def test_trainer_logs_go_to_the_metrics_file_not_the_console(tmp_path, capfd):
    """A real transformers Trainer with the stage log: records land in metrics.jsonl, no raw dicts on the console."""
    import torch
    from transformers import Trainer, TrainingArguments

    from cai.train.logs import no_library_bars, quiet, stage_log_callback

    model, _ = _tiny_model_and_tokenizer()
    data = [{"input_ids": torch.tensor([2, 3, 2]), "labels": torch.tensor([2, 3, 2])} for _ in range(4)]
    kw = trainer_kwargs(TrainSettings(device="cpu", max_steps=2, logging_steps=1, batch_size=2, save_steps=10),
                        tmp_path / "ckpt", default_lr=1e-3, run_name="r/x")
    rep = StepReporter("x", echo=False)
    trainer = Trainer(model=model, args=TrainingArguments(**kw), train_dataset=data,
                      callbacks=[stage_log_callback(tmp_path / "metrics.jsonl", rep)])
    quiet(trainer)
    line = io.StringIO()
    with no_library_bars(), ProgressLine("x", stream=line, tty=False, interval=3600):
        trainer.train()
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and rep.progress.done == 2 and rep.progress.total == 2
    last = [x for x in line.getvalue().splitlines() if "2/2" in x]
    assert len(last) == 1 and f"loss {rows[-1]['loss']:.4g}" in last[0]  # the 100% line carries the last loss
    out = capfd.readouterr()
    assert "{'loss'" not in out.out + out.err and "it/s" not in out.out + out.err


def test_the_own_ppo_loop_feeds_the_trackers_like_a_trl_trainer(tmp_path, monkeypatch):
    """`report_to` with `--algorithm ppo`: transformers' integration callbacks get begin, each record, and end."""
    from types import SimpleNamespace

    import transformers.integrations as integrations
    from transformers import TrainerCallback

    from cai.stages.rl import RLStageConfig
    from cai.train.ppo import _Trackers

    calls = []

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            calls.append(("begin", args.run_name, list(args.report_to)))

        def on_log(self, args, state, control, logs=None, **kw):
            calls.append(("log", state.global_step, logs))

        def on_train_end(self, args, state, control, **kw):
            calls.append(("end",))

    monkeypatch.setattr(integrations, "get_reporting_integration_callbacks", lambda names: [Recorder])
    run = SimpleNamespace(ckpt_dir=tmp_path, run_name="demo/rl", device="cpu")
    trackers = _Trackers(["tensorboard"], run, RLStageConfig(), model=None)
    trackers.log(3, {"step": 3, "reward": 0.5, "kl": 0.01, "time": 1.0, "note": "text"})
    trackers.close()
    assert calls == [("begin", "demo/rl", ["tensorboard"]), ("log", 3, {"reward": 0.5, "kl": 0.01}), ("end",)]


def test_resuming_from_the_last_steps_checkpoint_trains_no_step_again(tmp_path):
    """A Trainer resumed from its final checkpoint part-way through an epoch would train one step more; fit() takes
    the final weights from the checkpoint instead."""
    import torch
    from transformers import Trainer, TrainingArguments

    from cai.train.runner import TrainingRun

    def trainer_for(model):
        data = [{"input_ids": torch.tensor([2, 3, 2]), "labels": torch.tensor([2, 3, 2])} for _ in range(6)]
        kw = trainer_kwargs(TrainSettings(device="cpu", max_steps=2, logging_steps=1, batch_size=2, save_steps=1),
                            tmp_path / "x" / "checkpoints", default_lr=1e-2, run_name="r/x")
        return Trainer(model=model, args=TrainingArguments(**kw), train_dataset=data)

    def run(resume_from, resume_step):
        return TrainingRun(stage=StageDir(tmp_path, "x"), state="resume", device="cpu", run_name="r/x",
                           resume_from=resume_from, resume_step=resume_step, reporter=StepReporter("x", echo=False))

    torch.manual_seed(0)
    first, _ = _tiny_model_and_tokenizer()
    done = run(None, 0).fit(trainer_for(first))
    assert done["training"]["steps"] == 2  # 3 batches per epoch: the run stopped inside the epoch
    trained = {k: v.clone() for k, v in first.state_dict().items()}
    fresh, _ = _tiny_model_and_tokenizer()
    again = run(str(tmp_path / "x" / "checkpoints" / "checkpoint-2"), 2).fit(trainer_for(fresh))
    assert again["training"]["steps"] == 2 and again["training"]["steps_this_session"] == 0
    assert all(torch.equal(trained[k], v) for k, v in fresh.state_dict().items())
