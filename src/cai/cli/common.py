"""Shared CLI pieces: error handling, progress bars, printing."""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cai.errors import CaiError
from cai.redact import redact_text

console = Console(stderr=True)
out = Console()
DEBUG = {"on": bool(os.environ.get("CAI_DEBUG"))}


def handle_errors(fn: Callable) -> Callable:
    """Turn a CaiError into its message and exit code 2; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CaiError as e:
            if DEBUG["on"]:
                raise
            # user text (paths, ids, values) may hold rich markup such as "[/]" or a URL with a password
            console.print(f"[bold red]error:[/] {escape(redact_text(e.message))}", highlight=False, markup=True,
                          soft_wrap=True)
            if e.fix:
                console.print(f"[bold]fix:[/] {escape(redact_text(e.fix))}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)

    return wrapper


class StageProgress:
    """A rich progress bar showing items done, ETA and generated tokens/s."""

    def __init__(self, description: str):
        self.description = description
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = None
        self.t0 = time.perf_counter()
        self.tokens0 = 0

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def ready(self, p) -> None:
        self.task = self.bar.add_task(self.description, total=p.total, completed=p.done, tps="-")
        self.t0 = time.perf_counter()
        self.tokens0 = p.tokens

    def update(self, p) -> None:
        if self.task is None:
            self.ready(p)
        dt = time.perf_counter() - self.t0
        generated = p.tokens - self.tokens0
        tps = f"{generated / dt:.1f}" if dt > 0 and generated > 0 else "-"  # scoring-only stages generate nothing
        self.bar.update(self.task, completed=p.done, tps=tps)
