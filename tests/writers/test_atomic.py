from __future__ import annotations

import pytest

from ssam_cli.errors import UserError
from ssam_cli.writers.atomic import AtomicFolder


def test_success_renames_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with AtomicFolder(target) as tmp:
            (tmp / "half.safetensors").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with AtomicFolder(target) as tmp:
        (tmp / "done").write_text("x")
    assert (target / "done").exists() and len(list(tmp_path.iterdir())) == 1


def test_existing_target_needs_overwrite_and_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("x")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        AtomicFolder(target).check_target()
    with AtomicFolder(target, overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert len(list(tmp_path.iterdir())) == 1


# Robustness (issue 18): overlap with inputs, one run per target, a recoverable swap, stale temporaries, OS errors.

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from ssam_cli.writers import atomic as atomic_module
from ssam_cli.writers.atomic import check_no_overlap


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def old_output(tmp_path: Path) -> Path:
    target = tmp_path / "out"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"old weights")
    return target


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("output, what", [
    ("base", "is the input"), ("spec/merged", "lies inside the input"), (".", "contains the input"),
    ("link", "is the input"), ("spec/../base", "is the input"), ("", "contains the input"),
])
def test_an_output_overlapping_an_input_is_refused_without_suggesting_overwrite(tmp_path, output, what):
    (tmp_path / "base").mkdir()
    (tmp_path / "spec").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "base")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("x")
    with pytest.raises(UserError) as e:
        check_no_overlap(tmp_path / output, [tmp_path / "base", tmp_path / "spec", recipe])
    assert what in str(e.value) and "--overwrite" not in str(e.value)
    check_no_overlap(tmp_path / "merged", [tmp_path / "base", tmp_path / "spec", recipe])  # apart: accepted


def test_a_second_run_on_a_locked_target_is_refused_and_the_lock_file_goes_with_the_run(tmp_path):
    target = tmp_path / "out"
    first = AtomicFolder(target)
    first.check_target()
    with pytest.raises(UserError, match="another ssam run is writing this output"):
        AtomicFolder(target).check_target()
    first.release()
    with AtomicFolder(target) as tmp:
        (tmp / "done").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_output_that_appears_during_the_run_is_never_replaced(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(UserError, match="appeared while this run was writing it"):
        with AtomicFolder(target) as tmp:
            (tmp / "new").write_text("ours")
            old_output(tmp_path)  # another program writes the target meanwhile
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "model.safetensors").read_bytes() == b"old weights"


def test_overwrite_replaces_only_the_folder_seen_at_the_start(tmp_path):
    target = old_output(tmp_path)
    with pytest.raises(UserError, match="was replaced while this run was writing it"):
        with AtomicFolder(target, overwrite=True) as tmp:
            (tmp / "new").write_text("ours")
            target.rename(tmp_path / "moved")
            target.mkdir()
            (target / "theirs").write_text("theirs")
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved", "out"]


def test_a_failing_second_rename_restores_the_old_output(tmp_path, monkeypatch):
    target = old_output(tmp_path)
    before = tree_hash(target)
    calls = []
    real = atomic_module._rename

    def failing(src: Path, dst: Path) -> None:
        calls.append((src.name, dst.name))
        if len(calls) == 2:  # temporary → target
            raise OSError(28, "No space left on device", str(src))
        real(src, dst)

    monkeypatch.setattr(atomic_module, "_rename", failing)
    with pytest.raises(UserError) as e:
        with AtomicFolder(target, overwrite=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"new weights")
    assert "No space left on device" in str(e.value) and "the existing output is unchanged" in str(e.value)
    assert calls[0] == ("out", f".out.ssam-old-{os.getpid()}") and calls[2] == (calls[0][1], "out")
    assert tree_hash(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_temporaries_of_dead_runs_are_removed_and_a_half_swap_is_undone(tmp_path, capsys):
    pid = dead_pid()
    (tmp_path / f".out.ssam-tmp-{pid}").mkdir()
    (tmp_path / f".out.ssam-tmp-{pid}" / "half.safetensors").write_text("x")
    (tmp_path / f".out.ssam-old-{pid}").mkdir()  # killed between the two renames: the old output is here
    (tmp_path / f".out.ssam-old-{pid}" / "model.safetensors").write_text("old")
    (tmp_path / f".other.ssam-tmp-{pid}").mkdir()  # another target's: not ours to touch
    (tmp_path / f".out.ssam-tmp-{os.getppid()}").mkdir()  # a live process's: left alone
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        AtomicFolder(tmp_path / "out").check_target()
    err = capsys.readouterr().err
    assert f"removed {tmp_path / f'.out.ssam-tmp-{pid}'}, left by an interrupted run (pid {pid})" in err
    assert f"restored {tmp_path / 'out'} from .out.ssam-old-{pid}" in err
    assert (tmp_path / "out" / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.ssam-tmp-{pid}", f".out.ssam-tmp-{os.getppid()}",
                                                          "out"]


def test_an_existing_file_is_refused_without_suggesting_overwrite(tmp_path):
    (tmp_path / "out").write_text("a file")
    for overwrite in (False, True):
        with pytest.raises(UserError) as e:
            AtomicFolder(tmp_path / "out", overwrite).check_target()
        assert "exists and is not a folder" in str(e.value) and "--overwrite" not in str(e.value)


def test_folders_made_for_the_output_are_removed_when_it_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with AtomicFolder(tmp_path / "a" / "b" / "out"):
            raise RuntimeError("merge failed")
    assert list(tmp_path.iterdir()) == []


def _mount(point: Path, *options: str) -> bool:
    """A small tmpfs at `point` (root only); False where it cannot be mounted."""
    point.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=256k", *options)), "tmpfs", str(point)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name: str, *options: str) -> Path:
        point = tmp_path / name
        if not _mount(point, *options):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_a_full_disk_is_one_error_naming_the_output_and_leaves_nothing(tmpfs):
    disk = tmpfs("disk")
    with pytest.raises(UserError) as e:
        with AtomicFolder(disk / "out") as tmp:
            with open(tmp / "model.safetensors", "wb") as f:
                f.write(b"\0" * (1 << 20))
    assert str(e.value) == f"{disk / 'out'}: No space left on device; no output was written"
    assert list(disk.iterdir()) == []


def test_a_full_disk_met_by_torch_save_is_the_same_error(tmpfs):
    """torch.save raises its own RuntimeError on a full disk, safetensors' save_file a SafetensorError."""
    import torch
    from safetensors.torch import save_file

    disk = tmpfs("disk")
    for save in (lambda folder: torch.save({"w": torch.zeros(1 << 17)}, folder / "adapter_model.bin"),
                 lambda folder: save_file({"w": torch.zeros(1 << 17)}, str(folder / "model.safetensors"))):
        with pytest.raises(UserError) as e:
            with AtomicFolder(disk / "out") as tmp:
                save(tmp)
        assert str(e.value) == f"{disk / 'out'}: No space left on device; no output was written"
        assert list(disk.iterdir()) == []


def test_a_read_only_parent_is_refused_before_any_work(tmpfs):
    disk = tmpfs("ro", "ro")
    with pytest.raises(UserError, match="Read-only file system"):
        AtomicFolder(disk / "out").check_target()


def test_a_mount_point_is_refused_before_any_work(tmpfs):
    disk = tmpfs("mounted")
    (disk / "old").write_text("x")
    with pytest.raises(UserError, match="is a mount point") as e:
        AtomicFolder(disk, overwrite=True).check_target()
    assert "--overwrite" not in str(e.value)
    assert [p.name for p in disk.iterdir()] == ["old"] and [p.name for p in disk.parent.iterdir()] == ["mounted"]
