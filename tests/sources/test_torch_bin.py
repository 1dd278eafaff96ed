"""`.bin` checkpoints as written by the real tools (see tests/fixtures/torch_bin.py): names, shapes and dtypes from a
memory-mapped weights-only load, tensors equal to what was saved, pickles that would run code refused with nothing
run, torch's legacy format refused with how to convert, safetensors preferred, and a `.bin`-sharded base with `.bin`
full fine-tunes merged through the CLI exactly as the float64 Algorithm 1 reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssam_cli.errors import InputError
from ssam_cli.sources import open_source, torch_bin
from ssam_cli.sources.checkpoint import FullCheckpoint
from ssam_cli.sources.lora import LoraAdapter
from tests.fixtures.tiny import make_lora_specialist, write_recipe
from tests.fixtures.torch_bin import fine_tuned, llama_state_dict, write_bin_checkpoint
from tests.reference import rel_err, ssam_reference

REPO = Path(__file__).resolve().parents[2]
LAYERS = 2


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return llama_state_dict(LAYERS, seed=0)


class Payload:
    """Unpickling this runs `open(marker, 'w')`: the proof that a loader executed the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def assert_one_line(e: pytest.ExceptionInfo, path: Path) -> str:
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    assert "weights_only" not in message  # never suggests loading the file unsafely
    return message


@pytest.mark.parametrize("shard_size", [None, "40KB"])
def test_names_shapes_dtypes_and_values_are_what_was_saved(tmp_path, state_dict, shard_size):
    folder = write_bin_checkpoint(tmp_path / "m", state_dict, LAYERS, shard_size)
    src = open_source(folder)
    assert isinstance(src, FullCheckpoint)
    assert {n: (i.shape, i.dtype) for n, i in src.tensors.items()} == \
        {n: (tuple(t.shape), t.dtype) for n, t in state_dict.items()}
    for name, tensor in state_dict.items():
        assert torch.equal(src.read(name), tensor), name
    shards = sorted(folder.glob("pytorch_model*.bin"))
    assert len(shards) == (1 if shard_size is None else 3)
    index = [folder / "pytorch_model.bin.index.json"] if shard_size else []
    assert src.files() == shards + index


def test_each_shard_is_loaded_once_weights_only_and_memory_mapped(tmp_path, state_dict, monkeypatch):
    folder = write_bin_checkpoint(tmp_path / "m", state_dict, LAYERS, "40KB")
    calls = []
    real = torch.load

    def spy(path, **kwargs):
        calls.append((Path(path).name, kwargs))
        return real(path, **kwargs)

    monkeypatch.setattr(torch_bin.torch, "load", spy)
    src = open_source(folder)
    for name in src.tensors:
        src.read(name)
    assert sorted(name for name, _ in calls) == sorted(p.name for p in folder.glob("pytorch_model-*.bin"))
    assert all(k["weights_only"] is True and k["mmap"] is True and k["map_location"] == "cpu" for _, k in calls)


def test_a_file_path_is_a_checkpoint_too(tmp_path, state_dict):
    write_bin_checkpoint(tmp_path / "m", state_dict, LAYERS)
    src = open_source(tmp_path / "m" / "pytorch_model.bin")
    assert set(src.tensors) == set(state_dict)


@pytest.mark.parametrize("shard", [False, True])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, state_dict, shard):
    marker = tmp_path / "executed"
    folder = write_bin_checkpoint(tmp_path / "m", state_dict, LAYERS, "40KB" if shard else None)
    target = sorted(folder.glob("pytorch_model*.bin"))[-1]
    torch.save({**torch.load(target, weights_only=True), "model.payload": Payload(marker)}, target)
    with pytest.raises(InputError) as e:
        open_source(folder)
    message = assert_one_line(e, target)
    assert "refused to load: not a plain dict of tensors" in message and "refers to io.open" in message
    assert not marker.exists()


def test_a_peft_adapter_bin_that_would_run_code_is_refused_by_the_same_rule(tmp_path):
    marker = tmp_path / "executed"
    folder = make_lora_specialist(tmp_path / "lora", seed=1)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    (folder / "adapter_model.safetensors").unlink()
    torch.save({**tensors, "x": Payload(marker)}, folder / "adapter_model.bin")
    with pytest.raises(InputError) as e:
        LoraAdapter(folder)
    assert_one_line(e, folder / "adapter_model.bin")
    assert not marker.exists()


@pytest.mark.parametrize("content, expected", [
    ([torch.ones(2)], "expected a dict of name → tensor, got list"),
    ({"a.weight": torch.ones(2), "step": 3}, "entry 'step' is a int, not a tensor"),
])
def test_anything_but_a_dict_of_tensors_is_refused(tmp_path, content, expected):
    (tmp_path / "m").mkdir()
    torch.save(content, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(InputError, match=expected) as e:
        open_source(tmp_path / "m")
    assert_one_line(e, tmp_path / "m" / "pytorch_model.bin")


def test_the_legacy_format_is_refused_with_how_to_convert(tmp_path, state_dict):
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "pytorch_model.bin"
    torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    with pytest.raises(InputError) as e:
        open_source(tmp_path / "m")
    message = assert_one_line(e, path)
    assert "legacy" in message and "safetensors" in message and "torch.save" in message


def test_a_truncated_file_is_one_line(tmp_path, state_dict):
    folder = write_bin_checkpoint(tmp_path / "m", state_dict, LAYERS)
    path = folder / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError) as e:
        open_source(folder)
    assert "not a torch zip-format checkpoint" in assert_one_line(e, path)


def test_an_unsupported_dtype_is_named(tmp_path):
    (tmp_path / "m").mkdir()
    torch.save({"a.weight": torch.ones(2, dtype=torch.complex64)}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(InputError, match="tensor a.weight: unsupported dtype torch.complex64"):
        open_source(tmp_path / "m")


def test_safetensors_win_over_bin_in_one_folder(tmp_path, state_dict):
    folder = write_bin_checkpoint(tmp_path / "m", state_dict, LAYERS, "40KB")
    shifted = {k: v + 1 for k, v in state_dict.items()}
    save_file(shifted, str(folder / "model.safetensors"))
    src = open_source(folder)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(src.read(name), shifted[name])
    assert src.files() == [folder / "model.safetensors"]


def test_a_tensor_the_index_maps_to_a_shard_that_lacks_it_is_named(tmp_path, state_dict):
    folder = write_bin_checkpoint(tmp_path / "m", state_dict, LAYERS, "40KB")
    index = folder / "pytorch_model.bin.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["ghost.weight"] = "pytorch_model-00001-of-00003.bin"
    index.write_text(json.dumps(data))
    with pytest.raises(InputError, match="ghost.weight is listed in the index but not in the file"):
        open_source(folder)


def ssam(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "ssam_cli", *args], capture_output=True, text=True, env=env)


def test_a_bin_sharded_base_and_bin_fine_tunes_merge_exactly_through_the_cli(tmp_path, state_dict):
    base = write_bin_checkpoint(tmp_path / "base", state_dict, LAYERS, "40KB")
    tuned = {n: fine_tuned(state_dict, LAYERS, seed) for n, seed in (("a", 1), ("b", 2))}
    write_bin_checkpoint(tmp_path / "a", tuned["a"], LAYERS, "40KB")
    write_bin_checkpoint(tmp_path / "b", tuned["b"], LAYERS)
    recipe = write_recipe(tmp_path / "recipe.yaml", Path("base"), [("a", Path("a")), ("b", Path("b"))],
                          parameters={"rank": 4}, output={"path": "out", "format": "full", "dtype": "float32"})
    out = ssam("merge", str(recipe))
    assert out.returncode == 0, out.stderr
    merged = {}
    for f in sorted((tmp_path / "out").glob("model*.safetensors")):
        merged.update(load_file(str(f)))
    assert set(merged) == set(state_dict)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        deltas = [tuned[n][name] - state_dict[name] for n in ("a", "b")]
        assert rel_err(merged[name] - state_dict[name], ssam_reference(deltas, 4, 1 / 2)) < 1e-5, name
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.allclose(merged[norm], (tuned["a"][norm] + tuned["b"][norm]) / 2, atol=1e-6)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    files = {r["name"]: sorted(f["path"] for f in r["files"]) for r in manifest["inputs"]}
    assert files["base"] == sorted(p.name for p in base.glob("pytorch_model*"))
    assert files["b"] == ["pytorch_model.bin"]


def test_the_cli_refuses_a_bin_that_would_run_code_and_nothing_runs(tmp_path, state_dict):
    marker = tmp_path / "executed"
    write_bin_checkpoint(tmp_path / "base", state_dict, LAYERS)
    (tmp_path / "a").mkdir()
    torch.save({**state_dict, "payload": Payload(marker)}, tmp_path / "a" / "pytorch_model.bin")
    recipe = write_recipe(tmp_path / "recipe.yaml", Path("base"), [("a", Path("a"))])
    out = ssam("merge", str(recipe))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "specialists[0].path" in out.stderr and "refused to load" in out.stderr
    assert "weights_only" not in out.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
