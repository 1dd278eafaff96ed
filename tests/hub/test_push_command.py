"""`ssam push` as a user runs it: a subprocess against the fake Hub, the token never shown or stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ssam_cli.commands.push import push
from tests.hub.fake_hub import FakeHub, fake_hub, hub_env  # noqa: F401  (fixture)
from tests.hub.outputs import _built_output, output  # noqa: F401  (fixtures)

REPO = "me/merged"
SECRET = "hf_DISTINCTIVE_s3cr3t_token_7f3a9c"
ROOT = Path(__file__).resolve().parents[2]
# The real entry point (errors → one line, exit 2), with `push` registered if cli.py does not have it yet.
CLI = ("from ssam_cli.cli import app, main\n"
       "from ssam_cli.commands.push import push\n"
       "if 'push' not in {c.name or c.callback.__name__ for c in app.registered_commands}:\n"
       "    app.command()(push)\n"
       "main()\n")


def ssam(hub: FakeHub, home: Path, *args: str, token_env: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(hub_env(hub, home), PYTHONPATH=str(ROOT))
    if token_env:
        env["HF_TOKEN"] = SECRET
    return subprocess.run([sys.executable, "-c", CLI, "push", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_push_end_to_end_never_shows_or_stores_the_token(output: Path, fake_hub: FakeHub, tmp_path: Path):
    fake_hub.tokens.add(SECRET)
    home = tmp_path / "hf-home-cli"
    first = ssam(fake_hub, home, str(output), REPO, "--private", "-m", "first push")
    assert first.returncode == 0, first.stderr
    assert f"{REPO} (branch main): pushed 5 files" in first.stdout
    second = ssam(fake_hub, home, str(output), REPO)
    assert second.returncode == 0 and "already up to date, nothing pushed" in second.stdout
    assert fake_hub.repos[REPO].private
    # the secret went in Authorization headers only: not in any output, file on disk, or uploaded file
    for run in (first, second):
        assert SECRET not in run.stdout + run.stderr
    assert files_containing(tmp_path, SECRET.encode()) == []
    assert all(SECRET.encode() not in data for data in fake_hub.files(REPO).values())
    assert all(SECRET not in r.path and SECRET.encode() not in r.body for r in fake_hub.requests)


def test_a_rejected_token_is_one_line_on_stderr_and_exit_2(output: Path, fake_hub: FakeHub, tmp_path: Path):
    run = ssam(fake_hub, tmp_path / "home", str(output), REPO, "--token", SECRET, token_env=False)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ") and "401" in run.stderr
    assert SECRET not in run.stdout + run.stderr
    assert files_containing(tmp_path, SECRET.encode()) == []


def test_an_edited_folder_is_refused_with_exit_2_before_any_request(output: Path, fake_hub: FakeHub, tmp_path: Path):
    (output / "config.json").write_text("{}")
    run = ssam(fake_hub, tmp_path / "home", str(output), REPO)
    assert run.returncode == 2 and "config.json has 2 bytes" in run.stderr and run.stderr.count("\n") == 1
    assert fake_hub.requests == []


def test_dry_run_prints_files_and_card_and_uploads_nothing(output: Path, fake_hub: FakeHub):
    app = typer.Typer()
    app.command()(push)
    before = sorted(p.name for p in output.rglob("*"))
    result = CliRunner().invoke(app, [str(output), REPO, "--dry-run", "--token", SECRET])
    assert result.exit_code == 0, result.output
    assert f"dry run: would push 5 files" in result.output
    for name in ("config.json", "model.safetensors", "modalities/v.safetensors", "manifest.json", "README.md"):
        assert f"  {name}  " in result.output
    assert "--- README.md (model card) ---\n---\nbase_model" not in result.output  # local inputs: no base_model
    assert "library_name: transformers" in result.output and "## Recipe" in result.output
    assert SECRET not in result.output
    assert fake_hub.requests == [] and sorted(p.name for p in output.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1500, "1.5 KB"), (2_500_000, "2.5 MB"),
                                     (7_000_000_000, "7.0 GB")])
def test_sizes_are_human(n, text):
    from ssam_cli.commands.render import human_bytes

    assert human_bytes(n, 1) == text
