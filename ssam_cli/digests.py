"""sha256 of files, computed once: writers hash the bytes as they write them and record the digest here, so that
the manifest's file list does not read the output back (a 13.5 GB checkpoint is ≈ 10 s of sha256 on one core).

A recorded digest is used only while the file is unchanged: same inode, size and modification time (ns). Input files
can be hashed in a background thread while the merge reads them (`in_background`), instead of in a pass after it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

_known: dict[tuple[str, int, int, int], str] = {}
_pending: dict[tuple[str, int, int, int], Future[str]] = {}
_lock = threading.Lock()


def _key(path: Path) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns


def remember(path: Path, sha256: str) -> None:
    """Record the digest of the file just written at `path` (call after its last byte is written and closed)."""
    with _lock:
        _known[_key(path)] = sha256


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """The file's sha256: the recorded digest when the file is unchanged since it was recorded, the background
    hash's result when one is under way, else read now."""
    key = _key(path)
    with _lock:
        known, pending = _known.get(key), _pending.get(key)
    if known is not None:
        return known
    if pending is not None:
        return pending.result()
    return _read(path, key, chunk)


def in_background(paths: Iterable[Path]) -> None:
    """Start hashing these files in one background thread (hashlib releases the GIL); sha256_file waits for them."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="ssam-hash")
    with _lock:
        for path in paths:
            key = _key(path)
            if key not in _known and key not in _pending:
                _pending[key] = pool.submit(_read, Path(path), key)
    pool.shutdown(wait=False)


def _read(path: Path, key: tuple[str, int, int, int], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    with _lock:
        _known[key] = digest
        _pending.pop(key, None)
    return digest
