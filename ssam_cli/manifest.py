"""manifest.json: enough to reproduce and audit a merge (inputs by hash, recipe as run, per-tensor figures)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ssam_cli import __version__

MANIFEST = "manifest.json"
CARD = "README.md"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_files(paths: Iterable[Path], root: Path) -> list[dict[str, Any]]:
    """Each file's path (relative to root when inside it), size and sha256."""
    out = []
    for p in paths:
        try:
            rel = str(p.relative_to(root))
        except ValueError:
            rel = str(p)
        out.append({"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)})
    return out


def output_files(folder: Path) -> list[dict[str, Any]]:
    """Every file of an output folder except the manifest and the card (both regenerated)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST,) and p != folder / CARD)
    return describe_files(files, folder)


def write_manifest(folder: Path, body: dict[str, Any]) -> dict[str, Any]:
    manifest = {"tool": "ssam", "version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **body, "files": output_files(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())
