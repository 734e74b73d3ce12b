"""What a running stage tells the console: one progress line per stage.

Stages count their work in a :class:`Progress` (items done of total, generated tokens) and call ``advance``; the
command line shows it through a :class:`ProgressLine`::

    revise  12/24 (50%)  elapsed 41s  ETA 41s  52.3 tok/s

On a terminal the line is redrawn in place. When stderr is not a terminal (a pipe, a log file, CI) the same line is
printed as plain text every ``interval`` seconds (``CAI_PROGRESS_INTERVAL``, default 30), also while nothing moves,
and once more at the end, so a long stage is never silent for minutes.

Training stages report steps and metrics through the line of the stage that is running::

    from cai import progress
    progress.update(step=3, total=12, metrics={"loss": 1.93, "reward": 0.41, "kl": 0.02})

``update`` does nothing when no line is open (library use, tests), so stages can call it unconditionally.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

# Metrics shown on the line, in this order, when a stage reports them (other names are accepted and not shown).
SHOWN_METRICS = ("loss", "reward", "kl", "accuracy", "refusal_rate")


@dataclass
class Progress:
    """Work done by a sharded stage: items of ``total``, generated tokens; ``callback`` sees every advance."""

    total: int
    done: int = 0
    tokens: int = 0
    callback: Callable[["Progress"], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def advance(self, n: int, tokens: int) -> None:
        self.done += n
        self.tokens += tokens
        if self.callback:
            self.callback(self)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _metric(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


class ProgressLine:
    """One stage's progress line; a context manager that makes it the line ``update`` reports to."""

    def __init__(self, stage: str, *, stream: TextIO | None = None, interval: float | None = None,
                 tty: bool | None = None):
        self.stage = stage
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval if interval is not None else float(os.environ.get("CAI_PROGRESS_INTERVAL", "30"))
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.total: int | None = None
        self.done = 0
        self.done0 = 0
        self.tokens = 0
        self.tokens0 = 0
        self.metrics: dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self.t_ready = self.t0
        self._last_print = 0.0
        self._last_draw = 0.0
        self._printed_final = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: ProgressLine | None = None

    # --- what a stage reports -------------------------------------------------------------------------------
    def ready(self, p: Progress) -> None:
        """The stage knows its size: ``p.done`` items (and ``p.tokens``) come from an earlier, resumed session."""
        with self._lock:
            self.total, self.done, self.done0 = p.total, p.done, p.done
            self.tokens = self.tokens0 = p.tokens
            self.t_ready = time.perf_counter()
        self._emit(force=True)

    def update(self, p: Progress | int | None = None, total: int | None = None, tokens: int | None = None, *,
               step: int | None = None, metrics: dict[str, Any] | None = None) -> None:
        """Accepts a :class:`Progress`, ``(done, total, tokens)`` counts, or ``step=``/``total=``/``metrics=``."""
        with self._lock:
            if isinstance(p, Progress):
                if self.total is None:
                    self.total, self.done0, self.tokens0 = p.total, p.done, p.tokens
                self.total, self.done, self.tokens = p.total, p.done, p.tokens
            else:
                done = p if isinstance(p, int) else step
                if done is not None:
                    self.done = done
                if total is not None:
                    self.total = total
                if tokens is not None:
                    self.tokens = tokens
            if metrics:
                self.metrics.update(metrics)
        self._emit()

    # --- rendering --------------------------------------------------------------------------------------------
    def text(self) -> str:
        with self._lock:
            now = time.perf_counter()
            parts = [self.stage]
            if self.total:
                parts.append(f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)")
            elif self.done:
                parts.append(f"{self.done} done")
            else:
                parts.append("starting")
            parts.append(f"elapsed {_duration(now - self.t0)}")
            moved = self.done - self.done0
            spent = now - self.t_ready
            if self.total and 0 < moved and self.done < self.total and spent > 0:
                parts.append(f"ETA {_duration((self.total - self.done) * spent / moved)}")
            generated = self.tokens - self.tokens0
            if generated > 0 and spent > 0:
                parts.append(f"{generated / spent:.1f} tok/s")
            for name in SHOWN_METRICS:
                if name in self.metrics:
                    parts.append(f"{name} {_metric(self.metrics[name])}")
            return "  ".join(parts)

    def _emit(self, force: bool = False) -> None:
        now = time.perf_counter()
        with self._lock:
            finished = bool(self.total) and self.done >= (self.total or 0)
            if self.tty:
                if force or finished or now - self._last_draw >= 0.2:
                    self._last_draw = now
                    self._write("\r\x1b[2K" + self.text())
                    if finished:
                        self._printed_final = True
                return
            if finished and self._printed_final:
                return
            if force or finished or now - self._last_print >= self.interval:
                self._last_print = now
                self._printed_final = finished
                self._write(self.text() + "\n")

    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the stage
            pass

    def _heartbeat(self) -> None:
        """A line every ``interval`` seconds even while nothing advances (on a terminal: the clock ticks each second)."""
        while not self._stop.wait(1.0 if self.tty else min(self.interval, 5.0)):
            if self.tty or time.perf_counter() - self._last_print >= self.interval:
                self._emit(force=True)

    # --- lifetime ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "ProgressLine":
        global _CURRENT
        self._previous, _CURRENT = _CURRENT, self
        self.t0 = self.t_ready = time.perf_counter()
        self._last_print = time.perf_counter()
        self._thread = threading.Thread(target=self._heartbeat, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        global _CURRENT
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        _CURRENT = self._previous
        with self._lock:
            if self.tty:
                if self._last_draw or self.total or self.done or self.metrics:  # end the line drawn in place
                    self._write("\r\x1b[2K" + self.text() + "\n")
            elif not self._printed_final and (self.total or self.done or self.metrics):
                self._write(self.text() + "\n")


_CURRENT: ProgressLine | None = None


def current() -> ProgressLine | None:
    """The progress line of the stage running now, if the command line opened one."""
    return _CURRENT


def update(*, step: int | None = None, total: int | None = None, tokens: int | None = None,
           metrics: dict[str, Any] | None = None) -> None:
    """Report training steps (and metrics such as loss, reward, kl) to the running stage's line; no-op without one."""
    line = _CURRENT
    if line is not None:
        line.update(step, total, tokens, metrics=metrics)


# Warnings from libraries that describe their own internals (deprecations inside transformers/TRL/torch, tokenizer
# fork notices, generation-config notes): nothing a user of this toolkit can change.
_LIBRARY_MODULES = r"(transformers|trl|peft|accelerate|torch|datasets|huggingface_hub|tokenizers)(\.|$)"


def quiet_library_warnings() -> None:
    """Keep library chatter off the console; errors and this toolkit's own warnings still show."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars read this
    if "transformers" in sys.modules:  # already imported: its bar switch was read at import time
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    for category in (UserWarning, FutureWarning, DeprecationWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARY_MODULES)
