"""The CLI when things go wrong, as a subprocess: usage errors, signals mid-merge, concurrent runs, OS errors.

Every failure is an exit code and one line on stderr (click's usual message for usage errors), never a traceback;
inputs are never touched and no temporary output is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.tiny import make_base, make_lora_specialist, write_recipe
from tests.test_cli import REPO, ssam
from tests.writers.test_atomic import tree_hash


def one_line(out: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    return out.stderr.strip()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A base and one LoRA specialist; recipe.yaml (fast) and slow.yaml (WUDI: many weights, each a fraction of a
    second, so that a signal is answered quickly)."""
    make_base(tmp_path / "base", layers=6)
    make_lora_specialist(tmp_path / "a", seed=1, layers=6)
    write_recipe(tmp_path / "recipe.yaml", Path("base"), [("a", Path("a"))], parameters={"rank": 4})
    write_recipe(tmp_path / "slow.yaml", Path("base"), [("a", Path("a"))], method="wudi",
                 parameters={"iterations": 1000})
    return tmp_path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".ssam-" in p.name)


def start_slow(folder: Path, *args: str) -> subprocess.Popen:
    """`ssam merge slow.yaml`, returned once its temporary output exists (the merge is under way)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "ssam_cli", "merge", str(folder / "slow.yaml"), "-q", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not (folder / f".out.ssam-tmp-{proc.pid}").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the merge never started"
        time.sleep(0.02)
    time.sleep(0.2)
    return proc


@pytest.mark.parametrize("args, message", [
    (["merge", "--bogus", "r.yaml"], "Error: No such option: --bogus"),
    (["merge"], "Error: Missing argument"),
    (["nope"], "Error: No such command 'nope'."),
    (["merge", "r.yaml", "--threads", "0"], "Error: Invalid value for '--threads'"),
])
def test_usage_errors_exit_2_with_clicks_message(args, message):
    out = ssam(*args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(message) and "Usage:" in out.stderr


def test_a_recipe_that_is_not_utf8_or_not_a_file_is_one_line(tmp_path):
    (tmp_path / "recipe.yaml").write_bytes(b"method: \xff\n")
    out = ssam("merge", str(tmp_path / "recipe.yaml"))
    assert out.returncode == 2 and one_line(out) == f"error: {tmp_path / 'recipe.yaml'}: not UTF-8 text (byte 0xff on line 1)"
    out = ssam("validate", str(tmp_path))
    assert out.returncode == 2 and one_line(out) == f"error: {tmp_path}: cannot read: Is a directory"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_merge_exits_128_plus_it_removes_the_temporary_output_and_keeps_the_old(inputs, signum):
    (inputs / "out").mkdir()
    (inputs / "out" / "model.safetensors").write_bytes(b"the old output")
    before = {name: tree_hash(inputs / name) for name in ("base", "a", "out")}
    proc = start_slow(inputs, "--overwrite")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.strip() == f"interrupted ({signal.Signals(signum).name}): stopped; any partial output was removed"
    assert leftovers(inputs) == [] and {name: tree_hash(inputs / name) for name in before} == before


def test_a_killed_run_leaves_a_temporary_folder_that_the_next_run_removes_and_names(inputs):
    proc = start_slow(inputs)
    proc.kill()
    proc.wait()
    assert leftovers(inputs) == [".out.ssam-lock", f".out.ssam-tmp-{proc.pid}"]
    out = ssam("merge", str(inputs / "recipe.yaml"), "-q")
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == (f"note: removed {inputs / f'.out.ssam-tmp-{proc.pid}'}, left by an interrupted "
                                  f"run (pid {proc.pid})")
    assert leftovers(inputs) == [] and (inputs / "out" / "manifest.json").is_file()


def test_a_second_run_to_the_same_output_is_refused_while_the_first_runs(inputs):
    proc = start_slow(inputs)
    try:
        out = ssam("merge", str(inputs / "recipe.yaml"), "--overwrite", "-q")
        assert out.returncode == 2
        assert one_line(out) == (f"error: {inputs / 'out'}: another ssam run is writing this output (it holds "
                                 f"{inputs / '.out.ssam-lock'}); wait for it to finish or choose another output.path")
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and leftovers(inputs) == [] and not (inputs / "out").exists()


def test_an_existing_file_as_output_is_refused_without_suggesting_overwrite(inputs):
    (inputs / "out").write_text("not a folder")
    out = ssam("merge", str(inputs / "recipe.yaml"), "--overwrite")
    assert out.returncode == 2
    assert one_line(out) == f"error: {inputs / 'out'}: exists and is not a folder; choose another output.path"


def _mount_tmpfs(point: Path, *options: str) -> None:
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64k", *options)), "tmpfs", str(point)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")


@pytest.fixture
def disk(inputs):
    point = inputs / "disk"
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(inputs, disk):
    _mount_tmpfs(disk)
    before = {name: tree_hash(inputs / name) for name in ("base", "a")}
    write_recipe(inputs / "recipe.yaml", Path("base"), [("a", Path("a"))], parameters={"rank": 4},
                 output={"path": "disk/out"})
    out = ssam("merge", str(inputs / "recipe.yaml"), "-q")
    assert out.returncode == 2
    assert one_line(out) == f"error: {disk / 'out'}: No space left on device; no output was written"
    assert list(disk.iterdir()) == [] and {name: tree_hash(inputs / name) for name in before} == before


def test_an_unreadable_input_is_one_line_with_the_os_reason(inputs):
    """Root reads everything; dropping CAP_DAC_OVERRIDE (setpriv) makes the permission bits count."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the capability that bypasses permission bits")
    (inputs / "a").chmod(0)
    try:
        drop = ["setpriv", "--inh-caps", "-dac_override,-dac_read_search",
                "--bounding-set", "-dac_override,-dac_read_search"]
        out = subprocess.run([*drop, sys.executable, "-m", "ssam_cli", "merge", str(inputs / "recipe.yaml"), "-q"],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        (inputs / "a").chmod(0o755)
    assert out.returncode == 2
    line = one_line(out)
    assert str(inputs / "a") in line and "Permission denied" in line, line
    assert not (inputs / "out").exists() and leftovers(inputs) == []


@pytest.mark.parametrize("output, what", [(".", "contains the input"), ("base", "is the input"),
                                          ("a/merged", "lies inside the input"), ("..", "contains the input")])
def test_an_output_overlapping_an_input_is_refused_even_with_overwrite(inputs, output, what):
    write_recipe(inputs / "recipe.yaml", Path("base"), [("a", Path("a"))], parameters={"rank": 4},
                 output={"path": output})
    before = tree_hash(inputs)
    out = ssam("merge", str(inputs / "recipe.yaml"), "--overwrite", "-q")
    assert out.returncode == 2
    line = one_line(out)
    assert what in line and "--overwrite" not in line, line
    assert tree_hash(inputs) == before
