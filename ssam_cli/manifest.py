"""manifest.json: enough to reproduce and audit a merge (inputs by hash, recipe as run, per-tensor figures).

Typed: the merge writes a `Manifest` and `ssam push` (and the model card) read one, through the same models.
Per-tensor figures, the spectrum summary and a method's pre-pass record stay free-form mappings: each method
states its own figures (docs/methods.md).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ssam_cli import __version__
from ssam_cli.card_metadata import CARD
from ssam_cli.digests import sha256_file

MANIFEST = "manifest.json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRecord(_Record):
    path: str
    size: int
    sha256: str


class InputRecord(BaseModel):
    """One input: where it came from (local path, or Hub repo and commit), its kind and the files read."""

    model_config = ConfigDict(extra="allow")  # each source kind describes itself (ranks, adapters, variant, …)

    role: str
    name: str
    path: str
    revision: Optional[str] = None
    repo_id: Optional[str] = None
    subfolder: Optional[str] = None  # the folder of the repo (or local path) the input was read from
    commit: Optional[str] = None
    license: Optional[str] = None
    modality: Optional[str] = None
    weight: Optional[float] = None
    files: list[FileRecord] = Field(default_factory=list)


class OutputRecord(_Record):
    format: str
    dtype: str
    shard_size: int


class Summary(_Record):
    tensors: dict[str, int]
    seconds: float
    peak_rss_mb: float
    output_bytes: int


class MethodPaper(_Record):
    title: str
    url: Optional[str] = None


class Manifest(_Record):
    tool: str = "ssam"
    version: str = __version__
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    recipe: dict[str, Any]
    recipe_file: str
    recipe_text: str
    method: str
    paper: Optional[MethodPaper] = None
    parameters: dict[str, Any]
    space: str
    device: str
    threads: int
    workers: int
    seed: int
    output: OutputRecord
    inputs: list[InputRecord]
    tensors: dict[str, dict[str, Any]]
    modalities: dict[str, dict[str, Any]] = Field(default_factory=dict)
    summary: Summary
    modelcompose: Optional[dict[str, Any]] = None
    prepass: Optional[dict[str, Any]] = None
    spectrum: Optional[dict[str, Any]] = None
    files: list[FileRecord] = Field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The JSON document (absent optional sections left out)."""
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if v is not None or k not in ("modelcompose", "prepass", "spectrum",
                                                                              "paper")}

    def write(self, folder: Path) -> "Manifest":
        """List every file of the folder (but the manifest and the card) with its hash, then write manifest.json."""
        done = self.model_copy(update={"files": output_files(folder)})
        text = json.dumps(json_safe(done.as_json()), indent=2, default=str, allow_nan=False)
        (folder / MANIFEST).write_text(text)
        return done

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        """The folder's manifest.json, validated; ValueError naming the file when it is not one ssam wrote."""
        path = folder / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("tool") != "ssam":
            raise ValueError(f"{path}: not an ssam manifest (expected tool: ssam)")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
            raise ValueError(f"{path}: not an ssam manifest ({where}: {first['msg']})") from None


def json_safe(value: Any) -> Any:
    """value with every non-finite float (a figure of an all-zero update, say) as None: JSON has no NaN or inf,
    and a manifest must be valid JSON for every reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def describe_files(paths: Iterable[Path], root: Path) -> list[FileRecord]:
    """Each file's path (relative to root when inside it), size and sha256."""
    out = []
    for p in paths:
        try:
            rel = str(p.relative_to(root))
        except ValueError:
            rel = str(p)
        out.append(FileRecord(path=rel, size=p.stat().st_size, sha256=sha256_file(p)))
    return out


def output_files(folder: Path) -> list[FileRecord]:
    """Every file of an output folder except the manifest and the card (both regenerated)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and p != folder / CARD)
    return describe_files(files, folder)
