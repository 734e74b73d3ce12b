"""Error types shown to users.

Every error carries a one-paragraph message that names what was wrong (file, line, field) and how to fix it.
The CLI turns any :class:`CaiError` into that message and exit code 2, with no traceback unless ``--debug``.
"""

from __future__ import annotations


class CaiError(Exception):
    """Base class for errors the toolkit explains to the user."""

    exit_code = 2

    def __init__(self, message: str, *, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        if self.fix:
            return f"{self.message}\nFix: {self.fix}"
        return self.message


class UserInputError(CaiError):
    """The user's files, flags or config are wrong."""


class ConfigError(UserInputError):
    """A config file or flag has an invalid value."""


class ModelError(CaiError):
    """A model or server misbehaved (unreachable, unknown model, bad output)."""


class MissingExtraError(CaiError):
    """An optional dependency is not installed."""
