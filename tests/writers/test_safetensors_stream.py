from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ssam_cli.writers.safetensors_stream import StreamingSafetensorsWriter, TensorSpec


def test_streamed_file_loads_with_safetensors_bit_for_bit(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.randn(2, 2, 2, dtype=torch.float16), "d": torch.tensor([True, False])}
    w = StreamingSafetensorsWriter(tmp_path / "x.safetensors", [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in tensors.items()])
    for k, v in tensors.items():
        w.write(k, v)
    w.close()
    back = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_out_of_plan_writes_and_early_close_fail(tmp_path):
    specs = [TensorSpec("a", (2,), torch.float32), TensorSpec("b", (2,), torch.float32)]
    w = StreamingSafetensorsWriter(tmp_path / "x.safetensors", specs)
    with pytest.raises(RuntimeError, match="expected a"):
        w.write("b", torch.zeros(2))
    w.write("a", torch.zeros(2))
    with pytest.raises(RuntimeError, match="closed after 1 of 2"):
        w.close()
