"""The one training skeleton every training stage (sft, reward, dpo, rl) runs through.

A stage describes *what* it trains; :func:`run_training` does the rest, the same way for all of them::

    def run_sft(cfg, run_dir, *, overwrite=False, progress=True, callbacks=None, on_progress=None, on_ready=None):
        ...read and check the data (errors before the stage folder is touched)...
        def train(run: TrainingRun) -> Trained:
            trainer = SFTTrainer(..., args=SFTConfig(**run.trainer_kwargs(cfg, default_lr=2e-4), ...),
                                 callbacks=run.callbacks())
            return Trained(model=..., tokenizer=tok, manifest={...}, **run.fit(trainer))
        return run_training(run_dir, "sft", cfg, identity={...}, train=train, overwrite=overwrite, ...)

What :func:`run_training` guarantees, in order:

1. Settings that cannot work (an uninstalled tracker in ``report_to``, ``device: cuda`` without a GPU) are refused
   before the stage folder is touched; then ``StageDir.begin(identity)``: a finished stage is returned as it is
   (nothing loaded); a folder started with another configuration is refused; ``overwrite`` starts again.
2. Resume: a fresh stage starts with no checkpoints and an empty ``metrics.jsonl``; a resumed one restarts from the
   newest *complete* checkpoint (:attr:`TrainingRun.resume_from`) and keeps the metrics (and ``trim`` files, e.g.
   ``samples.jsonl``) logged up to that checkpoint's step; later lines are logged again.
3. ``train(run)`` builds and runs the trainer (TRL through :meth:`TrainingRun.fit`, or its own loop) and returns a
   :class:`Trained`. TRL's console printers are removed: each log record goes to ``metrics.jsonl`` and the progress
   line (:class:`~cai.train.logs.StepReporter`: steps done/total and loss/reward/KL), never raw dicts or tqdm bars.
   ``report_to`` and ``run_name`` reach the trainer, so installed experiment trackers record the run.
4. Merged save: the model (LoRA merged) and tokenizer become ``<stage>/model``, a plain Hugging Face folder, renamed
   into place atomically.
5. The manifest (the stage's own fields + ``lora``, ``params``, ``training``, ``outputs``, ``config``) is checked
   against its typed model (:func:`cai.manifests.load_manifest`) and written last.
6. Only then are the checkpoints removed (unless ``keep_checkpoints``): a kill at any point before the manifest leaves
   the newest checkpoint (one is saved at the last step too), and a rerun resumes from it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cai.runs import StageDir
from cai.train.logs import (
    StepReporter,
    final_loss,
    latest_checkpoint,
    no_library_bars,
    quiet,
    read_metrics,
    stage_log_callback,
    trim_metrics,
)
from cai.train.models import lora_config, lora_summary, param_counts, save_model_folder
from cai.train.settings import TrainSettings, precision_name, resolve_device, resolve_report_to, trainer_kwargs

#: Config fields that name where metrics go, not what is trained: they are left out of the stage's fingerprint, so
#: switching trackers never blocks a resume.
TRACKING_FIELDS = {"report_to", "run_name"}


def identity_config(cfg: TrainSettings) -> dict[str, Any]:
    """The config as it enters a stage's fingerprint (everything but the tracking fields)."""
    return cfg.model_dump(mode="json", exclude=TRACKING_FIELDS)


@dataclass
class Trained:
    """What a stage's ``train`` function returns to :func:`run_training`."""

    model: Any
    """The trained model (a PEFT model is merged on save)."""
    tokenizer: Any
    training: dict[str, Any]
    """The manifest's ``training`` block (see :meth:`TrainingRun.summary`)."""
    params: dict[str, int]
    manifest: dict[str, Any] = field(default_factory=dict)
    """The stage's own manifest fields."""
    model_files: dict[str, Any] = field(default_factory=dict)
    """Extra JSON files written into the model folder (name -> content)."""
    finalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Called with the manifest body after the model is saved (e.g. to summarise metrics); returns the final body."""


@dataclass
class TrainingRun:
    """The state a stage's ``train`` function works in."""

    stage: StageDir
    state: str
    """``"new"`` or ``"resume"``."""
    device: str
    run_name: str
    resume_from: str | None
    """The newest complete checkpoint when resuming (None: train from the start)."""
    resume_step: int
    reporter: StepReporter
    extra_callbacks: list = field(default_factory=list)

    @property
    def ckpt_dir(self) -> Path:
        return self.stage.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.stage.path / "metrics.jsonl"

    def trainer_kwargs(self, cfg: TrainSettings, *, default_lr: float, remove_unused_columns: bool = True) -> dict:
        """Keyword arguments for a TRL ``*Config``: checkpoints in this stage, trackers and run name passed through."""
        return trainer_kwargs(cfg, self.ckpt_dir, default_lr=default_lr, run_name=self.run_name,
                              remove_unused_columns=remove_unused_columns)

    def callbacks(self) -> list:
        """Trainer callbacks: the stage log (metrics.jsonl + progress), then the caller's own."""
        return [stage_log_callback(self.metrics_path, self.reporter), *self.extra_callbacks]

    def trainer_inputs(self, cfg: TrainSettings, tokenizer, dataset, *, task_type: str = "CAUSAL_LM",
                       modules_to_save: list[str] | None = None) -> dict[str, Any]:
        """The keyword arguments every TRL trainer of a stage takes besides the model and its config: the data, the
        tokenizer, the LoRA config (when ``cfg.lora``) and :meth:`callbacks`."""
        return {
            "train_dataset": dataset,
            "processing_class": tokenizer,
            "peft_config": lora_config(cfg, task_type, modules_to_save=modules_to_save) if cfg.lora else None,
            "callbacks": self.callbacks(),
        }

    def fit(self, trainer) -> dict[str, Any]:
        """Train a Trainer (resuming when there is a checkpoint). Returns ``training`` and ``params`` for :class:`Trained`."""
        quiet(trainer)
        params = param_counts(trainer.model)
        t0 = time.perf_counter()
        if self._finished_checkpoint():
            # the run was killed after its last step's checkpoint: take the final weights from it. (Resuming a
            # Trainer from its last step part-way through an epoch would train one step more.)
            from transformers import TrainerState

            trainer._load_from_checkpoint(self.resume_from)
            trainer.state = TrainerState.load_from_json(str(Path(self.resume_from) / "trainer_state.json"))
            self.reporter.start(trainer.state.max_steps, trainer.state.global_step)
            mean_loss = final_loss(read_metrics(self.metrics_path), "train_loss")
        else:
            result = trainer.train(resume_from_checkpoint=self.resume_from)
            mean_loss = float(result.training_loss) if result is not None else None
        st = trainer.state
        training = self.summary(
            steps=int(st.global_step),
            epochs=float(st.epoch or 0.0),
            final_loss=final_loss(st.log_history),
            mean_train_loss=mean_loss,
            learning_rate=trainer.args.learning_rate,
            effective_batch_size=trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps,
            seconds=time.perf_counter() - t0,
        )
        return {"training": training, "params": params}

    def _finished_checkpoint(self) -> bool:
        """Whether the checkpoint to resume from is the last step of the planned training."""
        if not self.resume_from:
            return False
        try:
            state = json.loads((Path(self.resume_from) / "trainer_state.json").read_text(encoding="utf-8"))
            return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)
        except (OSError, ValueError, TypeError):
            return False

    def summary(self, *, steps: int, epochs: float, final_loss: float | None, mean_train_loss: float | None,
                learning_rate: float, effective_batch_size: int, seconds: float) -> dict[str, Any]:
        """The manifest's ``training`` block, the same for TRL trainers and the toolkit's own loops."""
        steps_here = steps - self.resume_step
        return {
            "steps": int(steps),
            "epochs": round(float(epochs), 4),
            "final_loss": final_loss,
            "mean_train_loss": mean_train_loss,
            "learning_rate": learning_rate,
            "effective_batch_size": int(effective_batch_size),
            "device": self.device,
            "precision": precision_name(self.device),
            "resumed_from": os.path.basename(self.resume_from) if self.resume_from else None,
            "seconds_this_session": round(seconds, 2),
            "steps_this_session": int(steps_here),
            "seconds_per_step": round(seconds / steps_here, 3) if steps_here > 0 else None,
        }


def run_training(
    run_dir: str | Path,
    name: str,
    cfg: TrainSettings,
    *,
    identity: dict[str, Any],
    train: Callable[[TrainingRun], Trained],
    outputs: dict[str, str] | None = None,
    trim: tuple[str, ...] = (),
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
    on_progress: Callable[[Any], None] | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> dict:
    """Run (or resume, or skip when finished) the training stage ``name`` in ``run_dir``. Returns the manifest.

    ``identity``: what must match for a rerun to resume (config, input digests, model paths). ``outputs``: files of the
    stage besides ``model/`` and ``metrics.jsonl``. ``trim``: per-step JSONL files cut back to the resume step like
    ``metrics.jsonl``. ``progress``: print one plain line per logging step when neither a progress line is open nor
    ``on_progress`` is given. ``callbacks``: extra Trainer callbacks (the own PPO loop calls their ``on_save``).
    """
    run_dir = Path(run_dir)
    trackers = resolve_report_to(cfg.report_to)  # settings errors before the stage folder is touched
    device = resolve_device(cfg.device)
    stage = StageDir(run_dir, name)
    state = stage.begin(identity, overwrite=overwrite)
    if state == "complete":
        return stage.manifest()
    try:
        ckpt_dir = stage.path / "checkpoints"
        resume_from, resume_step = latest_checkpoint(ckpt_dir) if state == "resume" else (None, 0)
        if state != "resume" and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        for fname in ("metrics.jsonl", *trim):
            trim_metrics(stage.path / fname, resume_step)
        run = TrainingRun(
            stage=stage,
            state=state,
            device=device,
            run_name=cfg.run_name or f"{run_dir.name}/{name}",
            resume_from=resume_from,
            resume_step=resume_step,
            reporter=StepReporter(name, on_progress=on_progress, on_ready=on_ready, echo=progress),
            extra_callbacks=list(callbacks or []),
        )
        with no_library_bars():
            trained = train(run)
            save_model_folder(trained.model, trained.tokenizer, stage.path / "model",
                              extra_json=trained.model_files or None)
        body = {
            **trained.manifest,
            "lora": lora_summary(cfg),
            "params": trained.params,
            "training": dict(trained.training, report_to=trackers or None, run_name=run.run_name),
            "outputs": {"model": "model", "metrics": "metrics.jsonl", **(outputs or {})},
            "config": cfg.model_dump(mode="json"),
        }
        if trained.finalize is not None:
            body = trained.finalize(body)
        stage.finish(body)  # checked against the stage's typed manifest model before it is written
    except BaseException:
        stage.release()
        raise
    if not cfg.keep_checkpoints and ckpt_dir.exists():  # only now: a kill before the manifest can still resume
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return stage.manifest()
