"""‖Δ‖/‖W₀‖ of an exported specialist equals the same ratio computed from what PEFT folds into the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")
pytest.importorskip("transformers")

from benchmarks.lab import drift, loaders  # noqa: E402
from ssam_cli.sources.lora import LoraAdapter  # noqa: E402
from tests.lab.helpers import make_tiny_base, make_tiny_specialist  # noqa: E402


def test_relative_drift_matches_the_folded_weights(tmp_path: Path) -> None:
    """Reference in float64 from PEFT's merge_and_unload; tolerance 1e-4 relative (float32 weights)."""
    base = make_tiny_base(tmp_path / "base")
    adapter = make_tiny_specialist(base, tmp_path / "image", "image", seed=1)
    w0 = load_file(str(base / "model.safetensors"))
    folded = loaders._with_adapter(base, adapter).state_dict()
    names = [n if n.endswith(".weight") else f"{n}.weight" for n in LoraAdapter(adapter).lowrank]
    delta_sq = sum(float((folded[n].double() - w0[n].double()).square().sum()) for n in names)
    base_sq = sum(float(w0[n].double().square().sum()) for n in names)
    got = drift.relative_drift(base, adapter)
    assert got > 0
    assert got == pytest.approx((delta_sq / base_sq) ** 0.5, rel=1e-4)
