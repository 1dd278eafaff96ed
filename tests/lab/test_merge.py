"""The lab merges through the real CLI and loads both output formats back: checked against W0 + Σ s·B·A in float64."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")
pytest.importorskip("transformers")

from benchmarks.lab import loaders, merge  # noqa: E402
from ssam_cli.recipe import load_recipe  # noqa: E402
from ssam_cli.sources.lora import LoraAdapter  # noqa: E402
from tests.lab.helpers import make_tiny_base, make_tiny_specialist  # noqa: E402


def test_recipe_validates_with_the_cli_schema(tmp_path: Path) -> None:
    spec = merge.recipe("ssam", tmp_path / "base", [("image", tmp_path / "i", "image")], Path("out"), {"rank": 4})
    path = tmp_path / "r.yaml"
    path.write_text(__import__("yaml").safe_dump(spec))
    r = load_recipe(path)
    assert r.modules.keep == ["modality.*"] and r.output.format == "lora" and r.specialists[0].modality == "image"


@pytest.mark.parametrize("method,params,fmt", [("task_arithmetic", {"lambda": 1.0}, "full"),
                                               ("ssam", {"rank": 16, "lambda": 1.0}, "lora")])
def test_merge_output_loads_with_the_exact_sum_and_both_towers(tmp_path: Path, method: str, params: dict,
                                                               fmt: str) -> None:
    """Task arithmetic at λ = 1, and SSAM with k = Σr (the subspace spans every Δ_i, so nothing is projected
    away) at λ = 1, must both give W0 + Σ s_i B_i A_i."""
    base = make_tiny_base(tmp_path / "base")
    specialists = [(m, make_tiny_specialist(base, tmp_path / m, m, seed=i + 1), m) for i, m in enumerate(("image", "audio"))]
    out = merge.run_merge(merge.recipe(method, base, specialists, Path("out"), params, fmt=fmt), tmp_path / "r.yaml")

    model = loaders.load_merged(base, out)
    merged = model.bert.state_dict()
    w0 = load_file(str(base / "model.safetensors"))
    sources = [LoraAdapter(p) for _, p, _ in specialists]
    for name in sources[0].lowrank:
        weight = name if name.endswith(".weight") else f"{name}.weight"
        expected = w0[weight].double() + sum(s.read_lowrank(name).dense().double() for s in sources)
        torch.testing.assert_close(merged[weight].double(), expected, atol=2e-5, rtol=1e-4)
    assert set(model.towers) == {"image", "audio"}
    for mod, folder, _ in specialists:
        own = loaders.load_specialist(base, folder).towers[mod].state_dict()
        for k, v in model.towers[mod].state_dict().items():
            assert torch.equal(v, own[k]), f"{mod} tower tensor {k} changed in the merge"


def test_a_failing_merge_raises_with_the_cli_message(tmp_path: Path) -> None:
    spec = merge.recipe("ssam", tmp_path / "missing-base", [("image", tmp_path / "nope", "image")], Path("out"))
    with pytest.raises(RuntimeError, match="failed"):
        merge.run_merge(spec, tmp_path / "r.yaml")


def test_recipe_carries_the_merge_space(tmp_path: Path) -> None:
    spec = merge.recipe("ties", tmp_path / "base", [("image", tmp_path / "i", "image")], Path("out"), space="core")
    path = tmp_path / "r.yaml"
    path.write_text(__import__("yaml").safe_dump(spec))
    assert load_recipe(path).space == "core"
