"""Write a folder under a temporary name beside the target and rename it at the end.

An interrupted merge leaves at most a hidden `.<name>.ssam-tmp-<pid>` folder, never something that looks
like a finished output.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Optional

from ssam_cli.errors import UserError

TMP_MARK = ".ssam-tmp-"


class AtomicFolder:
    """Context manager yielding the temporary folder; on success it replaces the target."""

    def __init__(self, target: Path, overwrite: bool = False) -> None:
        self.target = target
        self.overwrite = overwrite
        self.tmp = target.parent / f".{target.name}{TMP_MARK}{os.getpid()}"

    def check_target(self) -> None:
        """Refuse an existing target unless overwriting; called before any work is done."""
        if self.target.exists() and not self.overwrite:
            raise UserError(f"{self.target}: already exists; pass --overwrite to replace it")
        if self.target.exists() and not self.target.is_dir():
            raise UserError(f"{self.target}: exists and is not a folder")

    def __enter__(self) -> Path:
        self.check_target()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.ssam-old-{os.getpid()}"
            self.target.rename(old)
            self.tmp.rename(self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.target)
