"""Digests recorded while writing stand for the file only while it is unchanged; otherwise the file is read."""

from __future__ import annotations

import hashlib
import os

import torch

from ssam_cli.digests import remember, sha256_file
from ssam_cli.writers.safetensors_stream import StreamingSafetensorsWriter, TensorSpec


def test_writer_records_the_sha256_of_the_bytes_on_disk(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    raw = tmp_path / "raw.bin"
    b = torch.arange(6, dtype=torch.int64)
    raw.write_bytes(b"xx" + b.numpy().tobytes())
    w = StreamingSafetensorsWriter(path, [TensorSpec("a", (3, 4), torch.bfloat16), TensorSpec("b", (6,), torch.int64)])
    w.write("a", torch.randn(3, 4).to(torch.bfloat16))
    with open(raw, "rb") as f:
        w.copy("b", f, 2)  # copied bytes are hashed too
    w.close()
    truth = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr("builtins.open", None)  # the recorded digest is used: the file is not read again
    assert sha256_file(path) == truth


def test_a_changed_file_is_read_again(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    remember(path, "0" * 64)  # a stale or wrong record
    assert sha256_file(path) == "0" * 64
    path.write_bytes(b"two!")  # size and mtime change
    assert sha256_file(path) == hashlib.sha256(b"two!").hexdigest()
    st = os.stat(path)
    remember(path, "1" * 64)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # same size, touched
    assert sha256_file(path) == hashlib.sha256(b"two!").hexdigest()


def test_background_hashes_are_waited_for_and_equal_the_bytes(tmp_path):
    from ssam_cli import digests

    files = [tmp_path / f"{i}.bin" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(os.urandom(1 << 20) * (i + 1))
    digests.in_background(files + files[:1])  # a file named twice is hashed once
    assert [sha256_file(f) for f in files] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert not digests._pending
