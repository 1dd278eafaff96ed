"""The lab's only way to merge: write a recipe and run `ssam merge` on it as a user would (a subprocess).

A merge that fails raises with the CLI's own one-line message, so a broken spine shows up as a lab failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

REPO = Path(__file__).resolve().parents[2]
KEEP = ["modality.*"]  # the towers inside each specialist adapter: kept per specialist, never merged


def recipe(method: str, base: Path, specialists: Sequence[tuple[str, Path, str]], output: Path,
           parameters: dict[str, Any] | None = None, fmt: str = "lora", seed: int = 0,
           space: str = "dense") -> dict[str, Any]:
    """A recipe (as a dict) merging (name, adapter folder, modality) specialists of `base` into `output`, in the
    LoRA merge `space` (dense | factor | core, docs/methods.md)."""
    return {
        "method": method,
        "base": str(base),
        "specialists": [{"name": n, "path": str(p), "modality": m} for n, p, m in specialists],
        "parameters": dict(parameters or {}),
        "space": space,
        "modules": {"keep": KEEP},
        "output": {"path": str(output), "format": fmt, "dtype": "float32"},
        "device": "cpu",
        "seed": seed,
    }


def run_merge(spec: dict[str, Any], recipe_path: Path, reuse: bool = False, spectrum: bool = False) -> Path:
    """Write `spec` to `recipe_path`, run `ssam merge` on it, and return the output folder. With `reuse`, an
    output whose manifest exists and whose recipe file is byte-identical is taken as is (a rerun's cache).
    `spectrum` keeps the merge's spectrum summary (the suggested k) in the manifest."""
    text = yaml.safe_dump(spec, sort_keys=False)
    output = (recipe_path.parent / spec["output"]["path"]).resolve()
    if reuse and (output / "manifest.json").is_file() and recipe_path.is_file() and recipe_path.read_text() == text:
        return output
    recipe_path.parent.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # --no-spectrum: the spectrum summary costs seconds per merge and the lab reads none of it
    command = [sys.executable, "-m", "ssam_cli", "merge", str(recipe_path), "--overwrite", "--quiet",
               *([] if spectrum else ["--no-spectrum"])]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"ssam merge {recipe_path} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return output
