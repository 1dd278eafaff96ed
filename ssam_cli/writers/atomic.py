"""Write a folder under a temporary name beside the target and rename it at the end, never losing an output.

- An interrupted merge leaves at most a hidden `.<name>.ssam-tmp-<pid>` folder, never something that looks like a
  finished output; the next run to the same target removes those of processes that are gone, and says so.
- A lock on the sibling file `.<name>.ssam-lock` (flock) is held from the check to the rename, so two runs never
  write one target; the target is checked again at the rename, and an output that appeared or changed meanwhile
  (written by something else) is never replaced: with --overwrite only the folder seen at the start is.
- Replacing is two renames (target → `.<name>.ssam-old-<pid>`, temporary → target); if the second fails the first
  is undone, and a run killed between the two is repaired by the next run, which puts the old folder back.
- `check_no_overlap` keeps the output apart from every input, so that replacing it can never delete one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import sys
from pathlib import Path
from types import TracebackType
from typing import Iterable, Optional

from ssam_cli.errors import UserError, describe_os_error

TMP_MARK = ".ssam-tmp-"
OLD_MARK = ".ssam-old-"
LOCK_MARK = ".ssam-lock"
_RENAME_NOREPLACE = 1


def check_no_overlap(output: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output that is an input, contains one, or lies inside one (symlinks and `..` resolved).

    Replacing the output deletes the folder at its path, so an overlap would delete an input; pass the recipe file
    among `inputs` too (an output that contains it is the recipe's own folder or one above it).
    """
    out = Path(os.path.realpath(output))
    for given in inputs:
        inp = Path(os.path.realpath(given))
        if out == inp:
            what = "is the input"
        elif out in inp.parents:
            what = "contains the input"
        elif inp in out.parents:
            what = "lies inside the input"
        else:
            continue
        raise UserError(f"{output} {what} {given}; the output must be a new folder apart from every input "
                        "(and from the recipe's own folder)")


class AtomicFolder:
    """Context manager yielding the temporary folder; on success it becomes the target.

    `check_target()` may be called before the work starts (it takes the lock and refuses what cannot be written);
    entering calls it if it was not called. The lock is released on exit, or by `release()`.
    """

    def __init__(self, target: Path, overwrite: bool = False) -> None:
        self.target = target
        self.overwrite = overwrite
        self.tmp = self._sibling(TMP_MARK, os.getpid())
        self.lock_path = target.parent / f".{target.name}{LOCK_MARK}"
        self._lock: Optional[int] = None
        self._seen: Optional[tuple[int, int]] = None  # (device, inode) of the target at the check; None: absent
        self._made: list[Path] = []  # folders above the target that this run created (removed if it fails)

    def _sibling(self, mark: str, pid: int) -> Path:
        return self.target.parent / f".{self.target.name}{mark}{pid}"

    def check_target(self) -> None:
        """Before any work: lock the target, clean up after dead runs, refuse what this run may not replace."""
        if self._lock is None:
            self._make_parent()
            self._lock = self._acquire()
            try:
                self._clean_stale()
                self._seen = self._check_existing()
            except BaseException:
                self.release()
                raise

    def _make_parent(self) -> None:
        parent = self.target.parent
        missing = [p for p in (parent, *parent.parents) if not os.path.lexists(p)]
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output's folder: {describe_os_error(e, parent)}") from None
        self._made = missing  # deepest first

    def _acquire(self) -> int:
        """flock on the lock file, non-blocking; retried if the previous holder removed the file meanwhile."""
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                self._remove_made()
                raise UserError(f"cannot write the output here: {describe_os_error(e, self.lock_path)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(f"{self.target}: another ssam run is writing this output (it holds "
                                f"{self.lock_path}); wait for it to finish or choose another output.path") from None
            try:
                st, held = os.stat(self.lock_path), os.fstat(fd)
                if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        """Drop the lock (removing the lock file while still holding it, so no other run locks a stale file)."""
        if self._lock is not None:
            try:
                os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self._lock)
            self._lock = None

    def _clean_stale(self) -> None:
        """Remove the temporary folders of dead runs; put back an old output a run was killed in the middle of
        replacing (`.ssam-old-` with no target)."""
        prefix = f".{self.target.name}"
        for entry in sorted(self.target.parent.iterdir()):
            for mark in (OLD_MARK, TMP_MARK):
                rest = entry.name[len(prefix + mark):] if entry.name.startswith(prefix + mark) else ""
                if not rest.isdigit() or int(rest) == os.getpid() or _alive(int(rest)):
                    continue
                if mark == OLD_MARK and not os.path.lexists(self.target):
                    _rename(entry, self.target)
                    _note(f"restored {self.target} from {entry.name}, left by a run (pid {rest}) killed while "
                          "replacing it")
                else:
                    shutil.rmtree(entry, ignore_errors=True)
                    _note(f"removed {entry}, left by an interrupted run (pid {rest})")

    def _check_existing(self) -> Optional[tuple[int, int]]:
        try:
            st = os.lstat(self.target)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UserError(f"cannot use the output path: {describe_os_error(e, self.target)}") from None
        if not self.target.is_dir() or self.target.is_symlink():
            raise UserError(f"{self.target}: exists and is not a folder; choose another output.path")
        if os.path.ismount(self.target):
            raise UserError(f"{self.target}: is a mount point, which cannot be replaced by a rename; "
                            "write the output to a folder inside it")
        if not self.overwrite:
            raise UserError(f"{self.target}: already exists; pass --overwrite to replace it")
        return st.st_dev, st.st_ino

    def __enter__(self) -> Path:
        self.check_target()
        try:
            self.tmp.mkdir()
        except OSError as e:
            self.release()
            self._remove_made()
            raise UserError(f"cannot create the output: {describe_os_error(e, self.tmp)}") from None
        return self.tmp

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        done = False
        try:
            if exc is not None:
                if isinstance(exc, OSError):
                    raise UserError(f"{describe_os_error(exc, self.target)}; {self._unchanged()}") from None
                if isinstance(exc, Exception) and not isinstance(exc, UserError) and _out_of_space(self.tmp, exc):
                    raise UserError(f"{self.target}: {os.strerror(errno.ENOSPC)}; {self._unchanged()}") from None
                return
            try:
                self._swap()
            except OSError as e:
                raise UserError(f"cannot finish the output: {describe_os_error(e, self.target)}; "
                                f"{self._unchanged()}") from None
            done = True
        finally:
            if not done:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self.release()
            if not done:
                self._remove_made()

    def _unchanged(self) -> str:
        return "the existing output is unchanged" if self._seen else "no output was written"

    def _swap(self) -> None:
        now = _identity(self.target)
        if now != self._seen:
            happened = "appeared" if self._seen is None else ("was removed" if now is None else "was replaced")
            raise UserError(f"{self.target}: {happened} while this run was writing it (by another program?); "
                            "it was left as it is and this run's output was discarded")
        if self._seen is None:
            _rename(self.tmp, self.target)
            return
        old = self._sibling(OLD_MARK, os.getpid())
        _rename(self.target, old)
        try:
            _rename(self.tmp, self.target)
        except BaseException:
            try:
                _rename(old, self.target)
            except OSError:
                raise UserError(f"{self.target}: the new output could not be put in place, nor the old one back; "
                                f"the old output is kept at {old}") from None
            raise
        shutil.rmtree(old, ignore_errors=True)

    def _remove_made(self) -> None:
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:
                break


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _out_of_space(path: Path, exc: Exception) -> bool:
    """Whether a writer's own error (torch.save's RuntimeError, safetensors' SafetensorError: not OSError) means a
    full disk: its message says so, or no block is left on path's file system (root may use the reserved ones)."""
    if os.strerror(errno.ENOSPC) in str(exc):
        return True
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _renameat2() -> Optional[ctypes._CFuncPtr]:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _renameat2() if sys.platform.startswith("linux") else None
_AT_FDCWD = -100


def _rename(src: Path, dst: Path) -> None:
    """Rename that never replaces an existing `dst` (renameat2 RENAME_NOREPLACE where the system has it; plain
    rename, which would replace an empty folder, elsewhere). The one function every rename here goes through."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # not supported here: fall back
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(src), None, str(dst))
    os.rename(src, dst)
