"""A model folder's own card metadata (the YAML front matter of its README.md): read from inputs, e.g. the base's
license, which the merge carries to its manifest and card."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

CARD = "README.md"


def read_license(folder: Path) -> Optional[str]:
    """The `license:` of a model folder's own card, if it has one (the base's license is carried to the merge)."""
    card = folder / CARD
    if not card.is_file():
        return None
    meta = front_matter(card.read_text(encoding="utf-8", errors="replace"))
    value = meta.get("license")
    return str(value) if isinstance(value, (str, int, float)) and str(value).strip() else None


def front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block at the top of a card ({} when absent or invalid)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}
