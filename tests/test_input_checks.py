"""Inputs that would silently spoil a merge are refused with one line naming the input, the file and the tensor
(non-finite values), or the specialist and the tensor (a changed integer tensor); the manifest is valid JSON."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssam_cli import api
from ssam_cli.errors import UserError
from ssam_cli.manifest import json_safe
from tests.fixtures.tiny import make_base, make_full_specialist, make_lora_specialist, write_recipe

Q = "model.layers.1.self_attn.q_proj.weight"


def _poison(path, key, value=float("nan")):
    tensors = load_file(str(path))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[3] = value
    save_file(tensors, str(path))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_full_specialist_weight_is_refused_naming_specialist_file_and_tensor(tmp_path, value):
    base = make_base(tmp_path / "base")
    make_full_specialist(tmp_path / "a", base, seed=1)
    make_full_specialist(tmp_path / "b", base, seed=2)
    _poison(tmp_path / "b" / "model.safetensors", Q, value)
    recipe = write_recipe(tmp_path / "r.yaml", base, [("a", tmp_path / "a"), ("b", tmp_path / "b")],
                          parameters={"rank": 4})
    with pytest.raises(UserError) as e:
        api.merge(recipe)
    msg = str(e.value)
    assert msg.startswith("specialist 'b': ") and str(tmp_path / "b" / "model.safetensors") in msg and Q in msg
    assert "\n" not in msg and not (tmp_path / "out").exists()


def test_a_non_finite_lora_factor_is_refused(tmp_path):
    base = make_base(tmp_path / "base")
    make_lora_specialist(tmp_path / "a", seed=1)
    adapter = tmp_path / "a" / "adapter_model.safetensors"
    key = next(k for k in load_file(str(adapter)) if "q_proj.lora_B" in k and ".1." in k)
    _poison(adapter, key)
    recipe = write_recipe(tmp_path / "r.yaml", base, [("a", tmp_path / "a")], output={"path": "out", "format": "lora"})
    with pytest.raises(UserError, match=r"specialist 'a': .*adapter_model\.safetensors: tensor .*q_proj"):
        api.merge(recipe)


def test_a_non_finite_base_weight_is_refused_for_a_full_output(tmp_path):
    base = make_base(tmp_path / "base")
    make_lora_specialist(tmp_path / "a", seed=1)
    _poison(base / "model.safetensors", "model.norm.weight", float("-inf"))
    recipe = write_recipe(tmp_path / "r.yaml", base, [("a", tmp_path / "a")])
    with pytest.raises(UserError, match=r"^base: .*model\.safetensors: tensor model\.norm\.weight has non-finite"):
        api.merge(recipe)


def test_an_integer_tensor_a_specialist_changed_is_refused_and_an_unchanged_one_is_copied(tmp_path):
    base = make_base(tmp_path / "base")
    ids = torch.arange(16, dtype=torch.int64).reshape(1, 16)
    tensors = load_file(str(base / "model.safetensors"))
    save_file({**tensors, "model.position_ids": ids}, str(base / "model.safetensors"))
    for name, shift in (("same", 0), ("moved", 1)):  # full fine-tunes as save_file writes them, int64 kept
        folder = tmp_path / name
        shutil.copytree(base, folder)
        tuned = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(len(k)))
                 if v.is_floating_point() else v + shift for k, v in load_file(str(base / "model.safetensors")).items()}
        save_file(tuned, str(folder / "model.safetensors"))

    ok = write_recipe(tmp_path / "ok.yaml", base, [("same", tmp_path / "same")], parameters={"rank": 4},
                      output={"path": "ok"})
    out = load_file(str(api.merge(ok).output / "model.safetensors"))
    assert torch.equal(out["model.position_ids"], ids)
    bad = write_recipe(tmp_path / "bad.yaml", base, [("same", tmp_path / "same"), ("moved", tmp_path / "moved")],
                       parameters={"rank": 4}, output={"path": "bad"})
    with pytest.raises(UserError, match=r"specialist 'moved': tensor model\.position_ids is an integer tensor"):
        api.merge(bad)
    assert not (tmp_path / "bad").exists()


def test_the_manifest_is_valid_json_even_when_a_figure_is_not_finite(tmp_path):
    assert json_safe({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "x"}) == \
        {"a": [1.0, None], "b": {"c": None}, "d": "x"}
    base = make_base(tmp_path / "base")
    make_lora_specialist(tmp_path / "a", seed=1)
    recipe = write_recipe(tmp_path / "r.yaml", base, [("a", tmp_path / "a")], parameters={"rank": 4})
    text = (api.merge(recipe).output / "manifest.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in manifest.json"))
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in json.loads(text)["summary"].values())
