"""`inspect-spectrum` on tiny checkpoints: the figures come from the deltas on disk, filters narrow, errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ssam_cli.commands.spectrum import inspect_spectrum, layer_filter, module_filter
from ssam_cli.spectrum_scan import scan
from ssam_cli.engine import prepare
from ssam_cli.errors import UserError
from ssam_cli.recipe import load_recipe
from tests.fixtures.tiny import known_update, write_recipe

Q1 = "model.layers.1.self_attn.q_proj.weight"


def recipe_of(tiny: Path, **fields) -> Path:
    path = write_recipe(tiny / "recipe.yaml", Path("base"), [("a", Path("a")), ("b", Path("b")), ("c", Path("c"))],
                        **fields)
    data = path.read_text().replace("path: b\n", "path: b\n  weight: 0.5\n")  # b counts half, as in the merge
    path.write_text(data)
    return path


def dense_delta(tiny: Path, name: str, tensor: str) -> np.ndarray:
    """The specialist's update from the fixture's files (safetensors itself, s = alpha/r), not ssam_cli's readers."""
    return known_update(tiny / name, tensor, tiny / "base").numpy()


def test_figures_come_from_the_weighted_deltas_on_disk(tiny):
    p = prepare(load_recipe(recipe_of(tiny, parameters={"rank": 5})), check_output=False)
    report = scan(p)
    assert len(report.weights) == 16 and report.specialists == ["a", "b", "c"]  # 14 linear + embed + lm_head (c)
    w = next(w for w in report.weights if w.name == Q1)
    X = [dense_delta(tiny, n, Q1) * wt for n, wt in (("a", 1.0), ("b", 0.5), ("c", 1.0))]
    for i, x in enumerate(X):  # LoRA scale alpha/r and the recipe weight are applied, the full one is W_c − W_0
        ref = np.linalg.svd(x, compute_uv=False)
        np.testing.assert_allclose(w.specialist_values[i], ref[: len(w.specialist_values[i])], atol=1e-5 * ref[0])
    ref = np.linalg.svd(np.hstack(X), compute_uv=False)
    np.testing.assert_allclose(w.left.values, ref[: len(w.left.values)], atol=1e-5 * ref[0])
    assert w.k_requested == 5 and w.k_used == 5


def test_recipe_overrides_set_k_per_tensor_and_rank_option_wins(tiny):
    p = prepare(load_recipe(recipe_of(tiny, parameters={"rank": 5},
                                             modules={"overrides": [{"pattern": "*.mlp.*", "parameters": {"rank": 9}}]})),
                check_output=False)
    ks = {w.name: w.k_requested for w in scan(p).weights}
    assert ks[Q1] == 5 and ks["model.layers.0.mlp.up_proj.weight"] == 9
    assert {w.k_requested for w in scan(p, rank=3).weights} == {3}


def test_method_without_rank_evaluates_the_papers_k_and_says_so(tiny):
    p = prepare(load_recipe(recipe_of(tiny, method="task_arithmetic")), check_output=False)
    report = scan(p, modules=module_filter("q"))
    assert len(report.weights) == 2 and report.weights[0].k_requested == 128
    assert any("no rank parameter" in n for n in report.notes)
    assert any("numerical rank below k" in n for n in report.notes)


@pytest.mark.parametrize("spec, inside, outside", [
    ("0-1,5", [0, 1, 5], [2, 4, -1]), ("1*", [1, 10, 17], [0, 2, -1]), ("3", [3], [13, 30]),
])
def test_layer_filter(spec, inside, outside):
    keep = layer_filter(spec)
    assert all(keep(i) for i in inside) and not any(keep(i) for i in outside)


def test_module_filter_matches_module_type_or_name():
    keep = module_filter("q, *mlp.down*")
    assert keep("model.layers.0.self_attn.q_proj.weight") and keep("model.layers.3.mlp.down_proj.weight")
    assert not keep("model.layers.0.self_attn.k_proj.weight")


@pytest.mark.parametrize("option, value, message", [
    ("--layers", "first", "--layers: must be comma-separated"),
    ("--layers", "7", "no weight to inspect"),
    ("--target", "1.5", "--target: must be an energy share"),
    ("--rank", "0", "--rank: must be a positive integer"),
])
def test_bad_options_are_one_line_errors(tiny, option, value, message):
    with pytest.raises(UserError, match=message):
        runner_invoke([str(recipe_of(tiny)), option, value], catch=False)


def runner_invoke(args: list[str], catch: bool = True):
    app = typer.Typer()
    app.command()(inspect_spectrum)
    result = CliRunner().invoke(app, args, catch_exceptions=catch)
    if not catch and result.exception is not None:
        raise result.exception
    return result


def test_command_prints_the_table_and_writes_json_and_csv(tiny):
    out = tiny / "report"
    result = runner_invoke([str(recipe_of(tiny, parameters={"rank": 4})), "--layers", "1", "--modules", "q,v",
                            "--per-layer", "--json", str(out / "s.json"), "--csv", str(out / "s.csv")])
    assert result.exit_code == 0, result.output
    assert "suggested k for the whole model" in result.output
    data = json.loads((out / "s.json").read_text())
    assert [w["name"] for w in data["weights"]] == [Q1, "model.layers.1.self_attn.v_proj.weight"]
    assert len((out / "s.csv").read_text().splitlines()) == 3


def test_importing_the_command_does_not_import_torch():
    code = "import sys, ssam_cli.commands.spectrum; assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
