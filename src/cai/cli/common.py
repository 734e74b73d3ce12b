"""Shared CLI pieces: error handling and the two consoles (stdout for results, stderr for progress and errors)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape

from cai.errors import CaiError
from cai.redact import redact_text

class _Console(Console):
    """A console that never crashes on text that looks like broken markup (a path or id holding "[/]"): such a
    line is printed as plain text instead. Messages should still ``escape()`` user text."""

    def print(self, *objects, **kwargs) -> None:  # type: ignore[override]
        try:
            super().print(*objects, **kwargs)
        except MarkupError:
            kwargs["markup"] = False
            super().print(*objects, **kwargs)


console = _Console(stderr=True)
out = _Console()
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
