"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional


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


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwind (removing temporary output) and exit with 128 + the signal's number.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way turns it into an input error;
    not a KeyboardInterrupt, which Typer turns into a return value that reads as success.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


def describe_os_error(e: OSError, path: Optional[Path] = None) -> str:
    """`path: reason` for an OS error, naming the file the OS named (else `path`), never a traceback."""
    where = e.filename if e.filename is not None else path
    if where is not None and e.filename2 is not None:
        where = f"{where} → {e.filename2}"
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where is not None else reason
