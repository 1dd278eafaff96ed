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


def test_copy_from_a_file_writes_the_same_bytes_and_checks_the_plan(tmp_path):
    a, b = torch.randn(3, 4), torch.arange(6, dtype=torch.int64)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"xx" + a.numpy().tobytes() + b.numpy().tobytes())
    specs = [TensorSpec("a", (3, 4), torch.float32), TensorSpec("b", (6,), torch.int64)]
    w = StreamingSafetensorsWriter(tmp_path / "x.safetensors", specs)
    with open(raw, "rb") as f:
        with pytest.raises(RuntimeError, match="expected a"):
            w.copy("b", f, 2 + a.numel() * 4)
        w.copy("a", f, 2)
        w.write("b", b)  # copies and ordinary writes mix
    w.close()
    back = load_file(str(tmp_path / "x.safetensors"))
    assert torch.equal(back["a"], a) and torch.equal(back["b"], b)


def test_copy_past_the_end_of_the_source_fails(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\0" * 10)
    w = StreamingSafetensorsWriter(tmp_path / "x.safetensors", [TensorSpec("a", (4,), torch.float32)])
    with open(raw, "rb") as f, pytest.raises(RuntimeError, match="source ended inside a"):
        w.copy("a", f, 0)
