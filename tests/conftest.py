from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tiny import make_base, make_full_specialist, make_lora_specialist


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A base, two LoRA specialists (a, b) and one full fine-tune (c) in tmp_path."""
    base = make_base(tmp_path / "base")
    make_lora_specialist(tmp_path / "a", seed=1)
    make_lora_specialist(tmp_path / "b", seed=2, r=6, alpha=12)
    make_full_specialist(tmp_path / "c", base, seed=3)
    return tmp_path
