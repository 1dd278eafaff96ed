from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ssam_cli.errors import InputError
from ssam_cli.sources import open_source
from ssam_cli.sources.checkpoint import FullCheckpoint
from tests.fixtures.tiny import base_tensors, make_base


@pytest.mark.parametrize("shards", [1, 3])
def test_lists_names_shapes_dtypes_and_reads_one_tensor(tmp_path, shards):
    make_base(tmp_path / "m", shards=shards)
    src = open_source(tmp_path / "m")
    assert isinstance(src, FullCheckpoint)
    expected = base_tensors(2)
    assert set(src.tensors) == set(expected)
    name = "model.layers.1.mlp.down_proj.weight"
    assert src.tensors[name].shape == tuple(expected[name].shape) and src.tensors[name].dtype == torch.float32
    assert torch.equal(src.read(name), expected[name])
    assert len(src.files()) == shards + (1 if shards > 1 else 0)


def test_index_naming_a_missing_tensor_is_an_error(tmp_path):
    make_base(tmp_path / "m", shards=2)
    index = tmp_path / "m" / "model.safetensors.index.json"
    index.write_text(index.read_text().replace('"weight_map": {', '"weight_map": {"ghost.weight": "model-00001-of-00002.safetensors", '))
    with pytest.raises(InputError, match="ghost.weight is listed in the index but not in the file"):
        open_source(tmp_path / "m")


def test_a_folder_without_weights_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a checkpoint ssam reads"):
        open_source(tmp_path / "empty")


def test_headers_only_no_data_read(tmp_path, monkeypatch):
    """Opening and listing never calls get_tensor."""
    make_base(tmp_path / "m")
    import ssam_cli.sources.safetensors_files as sf

    calls = []
    real = sf.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self._h = real(*a, **k)

        def __getattr__(self, name):
            if name == "get_tensor":
                calls.append(name)
            return getattr(self._h, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(sf, "safe_open", Spy)
    src = open_source(tmp_path / "m")
    assert len(src.tensors) > 0 and calls == []
    assert load_file(str(tmp_path / "m" / "model.safetensors"))  # sanity: the file is real


INDEXES = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}


def sharded(tmp_path, kind):
    """A 2-shard base of either kind, and its index."""
    folder = make_base(tmp_path / "m", shards=2)
    if kind == "bin":
        for shard in folder.glob("model-*.safetensors"):
            torch.save(load_file(str(shard)), shard.with_name(shard.name.replace("model-", "pytorch_model-")
                                                                .replace(".safetensors", ".bin")))
            shard.unlink()
        index = folder / INDEXES["safetensors"]
        index.rename(folder / INDEXES["bin"])
        text = (folder / INDEXES["bin"]).read_text().replace('"model-', '"pytorch_model-').replace(".safetensors", ".bin")
        (folder / INDEXES["bin"]).write_text(text)
    return folder, folder / INDEXES[kind]


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_either_index_kind_reads(tmp_path, kind):
    folder, index = sharded(tmp_path, kind)
    src = open_source(folder)
    assert set(src.tensors) == set(base_tensors(2)) and index in src.files()


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
@pytest.mark.parametrize("shard", ["../other/model.safetensors", "../../etc/passwd", "/etc/passwd", "a/../../x",
                                   "..\\x.bin", ""])
def test_an_index_naming_a_shard_outside_the_folder_is_refused_before_opening_it(tmp_path, kind, shard):
    folder, index = sharded(tmp_path, kind)
    outside = tmp_path / "other"
    make_base(outside)  # a readable checkpoint next door: must not be read silently
    data = json.loads(index.read_text())
    data["weight_map"]["model.norm.weight"] = shard
    index.write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        open_source(folder)
    message = str(e.value)
    assert message.startswith(f"{index}: weight_map: model.norm.weight: shard ") and "not a file inside" in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
@pytest.mark.parametrize("text, expected", [
    ('{"weight_map": ["model-00001-of-00002.safetensors"]}', "weight_map: expected an object of tensor name → shard "
                                                             "file, got list"),
    ('{"weight_map": {"model.norm.weight": 3}}', "weight_map: model.norm.weight: expected a shard file name, got 3"),
    ('{"metadata": {}}', "weight_map: expected an object of tensor name → shard file, got nothing"),
    ('[1, 2]', "weight_map: expected an object"),
    ('{"weight_map": ', "not a readable JSON index"),
])
def test_a_malformed_index_is_one_line_naming_the_file(tmp_path, kind, text, expected):
    folder, index = sharded(tmp_path, kind)
    index.write_text(text)
    with pytest.raises(InputError) as e:
        open_source(folder)
    assert str(e.value).startswith(f"{index}: ") and expected in str(e.value) and "\n" not in str(e.value)


def test_an_index_naming_a_missing_shard_is_named(tmp_path):
    folder, index = sharded(tmp_path, "safetensors")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match="weight_map names model-00002-of-00002.safetensors, which is not in"):
        open_source(folder)


def test_an_unreadable_shard_names_the_os_reason_not_a_missing_file(tmp_path):
    """safetensors reports every failed open as 'No such file'; the source asks the OS first. Root reads
    everything: dropping CAP_DAC_OVERRIDE (setpriv) makes the permission bits count."""
    import os
    import shutil
    import subprocess
    import sys

    from safetensors.torch import save_file

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the capability that bypasses permission bits")
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    os.chmod(tmp_path / "model.safetensors", 0)
    code = ("from pathlib import Path; from ssam_cli.sources.checkpoint import FullCheckpoint\n"
            f"FullCheckpoint(Path({str(tmp_path)!r}))")
    drop = ["setpriv", "--inh-caps", "-dac_override,-dac_read_search",
            "--bounding-set", "-dac_override,-dac_read_search"]
    run = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Permission denied" in run.stderr and "No such file" not in run.stderr, run.stderr
