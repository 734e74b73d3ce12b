"""Training logs: ``metrics.jsonl`` lines, checkpoints on disk, and the progress a training stage reports.

* :func:`append_line` / :func:`read_metrics` / :func:`trim_metrics` - one JSON line per logging step, written whole with
  a single ``write``; a resumed run drops the lines logged after the checkpoint it resumes from.
* :func:`latest_checkpoint` - the newest *complete* checkpoint (its ``trainer_state.json`` is written last).
* :class:`StepReporter` - turns logging steps into the stage's progress (steps done of total, loss / reward / KL) for
  a callback, or into one plain line per logging step on stderr; never TRL's raw dicts or tqdm bars.
* :func:`stage_log_callback` - a ``transformers.TrainerCallback`` writing each Trainer log record to ``metrics.jsonl``
  and feeding a :class:`StepReporter`; :func:`quiet` removes the Trainer's own printers and :func:`no_library_bars`
  the libraries' tqdm bars, so nothing else reaches the console.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from cai.data.io import atomic_write_text

from cai import progress as console_progress
from cai.progress import Progress

#: Logged keys summarised on the progress line (logged name -> shown name), when a logging step has them.
PROGRESS_KEYS = {"loss": "loss", "reward": "reward", "kl": "kl", "rewards/accuracies": "accuracy",
                 "accuracy": "accuracy", "refusal_rate": "refusal_rate"}


def append_line(path: str | Path, line: str) -> None:
    """Append one line with a single ``write`` on an O_APPEND descriptor and fsync it: a line is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def trim_metrics(path: str | Path, max_step: int) -> None:
    """Drop records logged after ``max_step`` (they are logged again when training resumes from that step)."""
    path = Path(path)
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if int(r.get("step", 0)) <= max_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def latest_checkpoint(ckpt_dir: str | Path) -> tuple[str | None, int]:
    """Newest complete Trainer checkpoint (it has ``trainer_state.json``, written last) and its global step."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None, 0
    best: tuple[int, Path] | None = None
    for p in ckpt_dir.glob("checkpoint-*"):
        state = p / "trainer_state.json"
        if not p.is_dir() or not state.exists():
            continue
        try:
            step = int(json.loads(state.read_text(encoding="utf-8")).get("global_step", 0))
        except (json.JSONDecodeError, ValueError, OSError):
            continue
        if best is None or step > best[0]:
            best = (step, p)
    if best is None:
        return None, 0
    return str(best[1]), best[0]


def final_loss(log_history: list[dict], key: str = "loss") -> float | None:
    """The last logged value of ``key`` (None when it was never logged)."""
    for rec in reversed(log_history):
        if key in rec and isinstance(rec[key], (int, float)):
            return float(rec[key])
    return None


def first_last(rows: list[dict], key: str) -> dict[str, float | None]:
    """``{"first": ..., "last": ...}`` of a logged numeric key (None when it was never logged)."""
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return {"first": vals[0] if vals else None, "last": vals[-1] if vals else None}


def log_row(step: int, epoch: float, logs: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl record: numbers kept (non-finite ones as strings), strings and booleans as they are."""
    row: dict[str, Any] = {"step": int(step), "epoch": round(float(epoch or 0.0), 4)}
    for k, v in logs.items():
        if isinstance(v, bool) or v is None or isinstance(v, str):
            row[k] = v
        elif isinstance(v, (int, float)):
            row[k] = v if math.isfinite(v) else str(v)
    row["time"] = round(time.time(), 3)
    return row


class StepReporter:
    """Progress of a training stage: optimizer steps done of the total, and the latest loss / reward / KL.

    Every step and logging step goes to the running stage's progress line (:func:`cai.progress.update`, a no-op when
    no line is open) and, when given, to ``on_progress`` with the stage's :class:`~cai.progress.Progress` record
    (``done``/``total`` in optimizer steps; ``extra["metrics"]`` holds the last logged values of
    :data:`PROGRESS_KEYS`). With neither a line nor a callback, ``echo=True`` prints one plain line per logging step
    to stderr.
    """

    def __init__(self, name: str, *, on_progress: Callable[[Any], None] | None = None,
                 on_ready: Callable[[Any], None] | None = None, echo: bool = True):
        self.name = name
        self.on_ready = on_ready
        self.echo = echo and on_progress is None
        self.progress = Progress(total=0, callback=on_progress)
        self.progress.extra.update(unit="steps", metrics={})
        self._started = False

    def start(self, total: int, done: int) -> None:
        self.progress.total = int(total)
        self.progress.done = int(done)
        self.progress.extra["resumed_steps"] = int(done)
        if not self._started and self.on_ready:
            self.on_ready(self.progress)
        self._started = True
        console_progress.update(step=int(done), total=int(total))

    def step(self, done: int) -> None:
        """Optimizer step ``done`` finished (without new metrics)."""
        console_progress.update(step=int(done), total=self.progress.total or None)
        self._advance_to(done)

    def logged(self, step: int, row: dict[str, Any]) -> None:
        """A log record of step ``step``: the step counts as done and its loss / reward / KL are shown."""
        shown = {name: float(row[k]) for k, name in PROGRESS_KEYS.items()
                 if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)}
        if shown:
            self.progress.extra["metrics"] = shown
        # the metrics reach the line together with the step, so the line that says 100% carries the last loss
        console_progress.update(step=int(step), total=self.progress.total or None, metrics=shown or None)
        if not self._advance_to(step) and shown and self.progress.callback:
            self.progress.callback(self.progress)
        if shown and self.echo and console_progress.current() is None:
            parts = " ".join(f"{k} {v:.4g}" for k, v in shown.items())
            print(f"{self.name} step {step}/{self.progress.total or '?'}: {parts}", file=sys.stderr, flush=True)

    def _advance_to(self, done: int) -> bool:
        if done == self.progress.done:
            return False
        self.progress.advance(int(done) - self.progress.done, 0)
        return True


def stage_log_callback(metrics_path: str | Path, reporter: StepReporter | None = None):
    """A ``TrainerCallback`` appending every Trainer log record to ``metrics_path`` and feeding ``reporter``."""
    from transformers import TrainerCallback

    class StageLog(TrainerCallback):
        def __init__(self):
            self.path = Path(metrics_path)

        def on_train_begin(self, args, state, control, **kwargs):
            if reporter is not None:
                reporter.start(state.max_steps, state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            # a logging step (and the last step, always followed by the run's closing record) is reported by
            # on_log, with its metrics
            if reporter is not None and not control.should_log and state.global_step < state.max_steps:
                reporter.step(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            row = log_row(state.global_step, state.epoch, logs)
            append_line(self.path, json.dumps(row))
            if reporter is not None:
                reporter.logged(int(state.global_step), row)

    return StageLog()


@contextlib.contextmanager
def no_library_bars() -> Iterator[None]:
    """Within the block, transformers and datasets draw no tqdm bars (loading or writing weights, tokenizing)."""
    from transformers.utils import logging as hf_logging

    try:
        from datasets.utils import logging as ds_logging
    except ImportError:  # pragma: no cover - datasets is a dependency
        ds_logging = None
    hf_was = hf_logging.is_progress_bar_enabled()
    ds_was = ds_logging.is_progress_bar_enabled() if ds_logging else False
    hf_logging.disable_progress_bar()
    if ds_logging:
        ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hf_was:
            hf_logging.enable_progress_bar()
        if ds_was:
            ds_logging.enable_progress_bar()


def quiet(trainer) -> None:
    """Remove the Trainer's console printers (raw log dicts, tqdm bars): the stage log and the reporter replace them."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
