from __future__ import annotations

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
