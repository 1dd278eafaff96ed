"""What a Hugging Face Hub repo id looks like, and exact file patterns for its API; torch-free so `ssam push` starts
fast."""

from __future__ import annotations

import re

HF_PREFIX = "hf://"
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_PART}/{_PART}$")


def is_repo_id(text: str) -> bool:
    """`org/name` with Hub-legal parts: letters, digits, `-`, `_`, `.`; no `--` or `..`; at most 96 characters each."""
    return bool(_REPO_ID.match(text)) and "--" not in text and ".." not in text


def literal_pattern(path: str) -> str:
    """An fnmatch pattern matching exactly this path (huggingface_hub's allow_patterns are fnmatch patterns)."""
    return re.sub(r"([*?\[])", r"[\1]", path)
