"""The console progress line: plain periodic lines off a terminal (never silent), in-place redraws on one."""

from __future__ import annotations

import io
import time
import warnings

from cai import progress
from cai.progress import Progress, ProgressLine


def test_plain_lines_at_start_periodically_and_at_the_end():
    buf = io.StringIO()
    with ProgressLine("label", stream=buf, interval=0.2, tty=False) as line:
        p = Progress(total=4, done=1, tokens=0, callback=line.update)
        line.ready(p)
        p.advance(1, 50)  # within the interval: no new line
        time.sleep(0.25)
        p.advance(1, 50)  # the interval passed: a line
        p.advance(1, 50)  # 100%: a line
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("label  1/4 (25%)")
    # after the interval a line (from the advance, or the timer if it came first) shows ETA and tokens/s
    assert any(x.startswith(("label  2/4 (50%)", "label  3/4 (75%)")) and "ETA" in x and "tok/s" in x for x in lines)
    assert lines[-1].startswith("label  4/4 (100%)") and "ETA" not in lines[-1]
    assert sum("4/4" in x for x in lines) == 1  # the end is printed once
    assert "\r" not in buf.getvalue()


def test_a_silent_stage_still_prints_every_interval():
    buf = io.StringIO()
    with ProgressLine("eval", stream=buf, interval=0.1, tty=False) as line:
        line.ready(Progress(total=10))
        time.sleep(0.45)  # nothing advances (one long shard)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 3, lines
    assert all(x.startswith("eval  0/10 (0%)  elapsed") for x in lines)


def test_training_hook_reports_steps_and_metrics_to_the_running_line():
    progress.update(step=1, total=2, metrics={"loss": 1.0})  # no line open: nothing happens
    buf = io.StringIO()
    with ProgressLine("rl", stream=buf, interval=60, tty=False):
        assert progress.current() is not None
        progress.update(step=1, total=4, metrics={"loss": 2.5, "reward": 0.12345, "kl": 0.01, "other": 3})
        progress.update(step=4, total=4, metrics={"loss": 1.25})
    assert progress.current() is None
    last = buf.getvalue().splitlines()[-1]
    assert last.startswith("rl  4/4 (100%)")
    assert "loss 1.25" in last and "reward 0.1235" in last and "kl 0.01" in last and "other" not in last


def test_counts_callback_form_and_terminal_redraw():
    buf = io.StringIO()
    with ProgressLine("bestofn", stream=buf, tty=True) as line:
        line.update(2, 8, 100)
        line.update(8, 8, 400)
    text = buf.getvalue()
    assert "\r\x1b[2K" in text and "bestofn  8/8 (100%)" in text and text.endswith("\n")


def test_library_warnings_are_filtered_and_ours_are_not():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        progress.quiet_library_warnings()
        warnings.warn_explicit("internal deprecation", FutureWarning, "x.py", 1, module="transformers.trainer")
        warnings.warn_explicit("a toolkit warning", UserWarning, "y.py", 1, module="cai.stages.label")
    assert [str(w.message) for w in seen] == ["a toolkit warning"]
