"""sha256 of files, computed once: writers hash the bytes as they write them and record the digest here, so that
the manifest's file list does not read the output back (a 13.5 GB checkpoint is ≈ 10 s of sha256 on one core).

A recorded digest is used only while the file is unchanged: same inode, size and modification time (ns).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_known: dict[tuple[str, int, int, int], str] = {}
_lock = threading.Lock()


def _key(path: Path) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns


def remember(path: Path, sha256: str) -> None:
    """Record the digest of the file just written at `path` (call after its last byte is written and closed)."""
    with _lock:
        _known[_key(path)] = sha256


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """The file's sha256: the recorded digest when the file is unchanged since it was recorded, else read."""
    key = _key(path)
    with _lock:
        if key in _known:
            return _known[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
