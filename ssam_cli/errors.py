"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (recipe, checkpoint, option): one line, no traceback, exit code 2."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe problem, rendered as `file: field: what was expected`."""

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file, self.field, self.message = file, field, message
        where = f"{file}: {field}: " if field else f"{file}: "
        super().__init__(where + message)


class InputError(UserError):
    """A checkpoint or tensor problem found while planning or reading inputs."""
