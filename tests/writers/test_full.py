from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from ssam_cli.writers.full import FullCheckpointWriter, shard_layout
from ssam_cli.writers.safetensors_stream import TensorSpec


def test_shards_pack_consecutively_and_a_big_tensor_gets_its_own():
    specs = [TensorSpec(n, (s,), torch.float32) for n, s in [("a", 10), ("b", 10), ("c", 100), ("d", 5)]]
    assert [[s.name for s in sh] for sh in shard_layout(specs, 80)] == [["a", "b"], ["c"], ["d"]]


def test_sharded_output_has_hf_names_and_index(tmp_path):
    tensors = {f"t{i}": torch.full((4,), float(i)) for i in range(5)}
    w = FullCheckpointWriter(tmp_path, [TensorSpec(k, (4,), torch.float32) for k in tensors], shard_size=40)
    for k, v in tensors.items():
        w.write(k, v)
    files = w.close()
    assert files[:3] == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                         "model-00003-of-00003.safetensors"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 80
    for name, file in index["weight_map"].items():
        assert torch.equal(load_file(str(tmp_path / file))[name], tensors[name])
