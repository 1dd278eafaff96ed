"""`format: full`: a Hugging Face checkpoint (sharded safetensors + index) holding every tensor of the base,
merged ones as W_0 + Δ, with the base's config and tokenizer files and the modality files."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ssam_cli.deltas import Delta, LowRankDelta
from ssam_cli.finite import merged_finite
from ssam_cli.inputs import base_folder
from ssam_cli.outputs.base import Finished, OutputFormat
from ssam_cli.outputs.modality_files import read_shapes, write_modality_files
from ssam_cli.plan import PlannedTensor
from ssam_cli.writers.full import FullCheckpointWriter, copy_side_files
from ssam_cli.writers.safetensors_stream import TensorSpec


class FullOutput(OutputFormat):
    name = "full"
    summary = "a full checkpoint: sharded safetensors + index, config and tokenizer files of the base"
    reads_base_weights = True
    lowrank_only = False

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, t.shape, self.out_dtype(t)) for t in self.prepared.plan.tensors if t.in_base]

    def materialize(self, t: PlannedTensor, base: Optional[torch.Tensor], delta: Delta) -> Any:
        """W_0 + Δ in float32, then cast. A low-rank Δ = s·B·A (SSAM's: rank k) is one GEMM of inner size k
        accumulated onto W_0 (no d_out × d_in temporary for Δ). Both add into the base's own copy in place."""
        assert base is not None, "a full output reads every base weight"
        if isinstance(delta, LowRankDelta):
            merged = base.addmm_(delta.B, delta.A, alpha=delta.scale) if delta.rank else base
        else:
            merged = base.add_(delta.dense())
        return merged_finite(t.name, merged).to("cpu", self.out_dtype(t))

    def open(self, folder) -> None:
        super().open(folder)
        self.writer = FullCheckpointWriter(folder, self.specs(), self.recipe.output.shard_size)

    def accept(self, t: PlannedTensor, value: Any) -> None:
        self.writer.write(t.name, value)

    def finish(self) -> Finished:
        assert self.folder is not None
        files = self.writer.close() + copy_side_files(base_folder(self.prepared.inputs), self.folder)
        return Finished(files, write_modality_files(self.prepared, self.folder, self.shared))

    def verify(self) -> None:
        assert self.folder is not None
        expected = {s.name: s.shape for s in self.specs()}
        found = read_shapes(sorted(self.folder.glob("model*.safetensors")))
        if found != expected:
            missing = sorted(set(expected) - set(found))
            raise RuntimeError(f"output incomplete: {len(missing)} planned tensor(s) missing, e.g. {missing[:3]}")
