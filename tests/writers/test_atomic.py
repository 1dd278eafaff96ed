from __future__ import annotations

import pytest

from ssam_cli.errors import UserError
from ssam_cli.writers.atomic import AtomicFolder


def test_success_renames_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with AtomicFolder(target) as tmp:
            (tmp / "half.safetensors").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with AtomicFolder(target) as tmp:
        (tmp / "done").write_text("x")
    assert (target / "done").exists() and len(list(tmp_path.iterdir())) == 1


def test_existing_target_needs_overwrite_and_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("x")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        AtomicFolder(target).check_target()
    with AtomicFolder(target, overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert len(list(tmp_path.iterdir())) == 1
