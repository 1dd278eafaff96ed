"""The one rule for a local path in a recipe: relative to the recipe's folder, `~` expanded, symlinks resolved."""

from __future__ import annotations

from pathlib import Path


def resolve_local(folder: Path, text: str) -> Path:
    """`text` as a path against `folder` (the recipe's folder), absolute and with symlinks resolved."""
    return (folder / Path(text).expanduser()).resolve()
