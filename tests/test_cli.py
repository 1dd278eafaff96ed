"""The CLI as a user meets it: a subprocess, exit codes, one-line errors, fast --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.tiny import write_recipe

REPO = Path(__file__).resolve().parents[1]


def ssam(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "ssam_cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


HELP_CHECK = """
import sys
sys.argv = {argv!r}
from ssam_cli.cli import main
try:
    main()
except SystemExit as e:
    assert e.code in (0, None), f"exit code {{e.code}}"
assert 'torch' not in sys.modules, 'torch imported'
"""


@pytest.mark.parametrize("command", [[], ["merge"], ["validate"], ["inspect-spectrum"], ["push"], ["methods"]])
def test_help_does_not_import_torch(command):
    argv = ["ssam", *command, "--help"]
    out = subprocess.run([sys.executable, "-c", HELP_CHECK.format(argv=argv)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"})
    assert out.returncode == 0, out.stderr
    usage = next(line for line in out.stdout.splitlines() if "Usage:" in line)
    assert usage.split()[1:2 + len(command)] == ["ssam", *command], usage


def test_merge_end_to_end_as_a_subprocess(tiny):
    recipe = write_recipe(tiny / "recipe.yaml", Path("base"), [("a", Path("a")), ("c", Path("c"))],
                          parameters={"rank": 4})
    out = ssam("merge", str(recipe))
    assert out.returncode == 0, out.stderr
    assert "peak memory" in out.stdout and "tensors: merge" in out.stdout
    manifest = json.loads((tiny / "out" / "manifest.json").read_text())
    assert manifest["summary"]["tensors"]["merge"] == 16
    again = ssam("merge", str(recipe))
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    assert ssam("merge", str(recipe), "--overwrite", "-q").returncode == 0


def test_validate_prints_the_plan_and_reads_no_tensor(tiny):
    recipe = write_recipe(tiny / "recipe.yaml", Path("base"), [("a", Path("a")), ("c", Path("c"))])
    out = ssam("validate", str(recipe))
    assert out.returncode == 0, out.stderr
    assert "merge" in out.stdout and "average" in out.stdout and "estimated output size" in out.stdout
    assert not (tiny / "out").exists()


@pytest.mark.parametrize("specialist, fields, message", [
    ("a", {"parameters": {"rank": -3}}, "recipe.yaml: parameters.rank: must be a positive integer, got -3"),
    ("nowhere", {}, "recipe.yaml: specialists[0].path: no such file or folder"),
])
def test_bad_input_is_one_line_and_exit_code_2(tiny, specialist, fields, message):
    recipe = write_recipe(tiny / "recipe.yaml", Path("base"), [("x", Path(specialist))], **fields)
    out = ssam("merge", str(recipe))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr and "Traceback" not in out.stderr


def test_dry_run_and_device_override(tiny):
    recipe = write_recipe(tiny / "recipe.yaml", Path("base"), [("a", Path("a"))])
    assert ssam("merge", str(recipe), "--dry-run").returncode == 0 and not (tiny / "out").exists()
    out = ssam("merge", str(recipe), "--device", "tpu")
    assert out.returncode == 2 and "--device: must be auto, cpu, cuda or cuda:N" in out.stderr


def test_methods_lists_the_registry():
    out = ssam("methods")
    assert out.returncode == 0 and "ssam" in out.stdout and "rank (128)" in out.stdout
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 2}
    assert "lambda (1/n)" in rows["ssam"] and "lambda (1)" in rows["ties"]  # the defaults merges use; no "auto"
    assert "auto" not in "".join(rows.values())
