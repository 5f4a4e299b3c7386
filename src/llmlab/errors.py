"""Errors a user can act on.

Every stage raises a subclass of `LlmlabError` for problems caused by input, configuration or the
environment. The message says what was wrong; `hint` says what to do about it. The CLI prints both
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LlmlabError(Exception):
    """Base of all errors llmlab reports to its user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(LlmlabError):
    """An option, recipe or config value is invalid."""


class InputError(LlmlabError):
    """An input file or record is missing, truncated or malformed."""


class CheckpointError(InputError):
    """A checkpoint, tokenizer or shard on disk cannot be used."""
