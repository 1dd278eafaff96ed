"""`format: lora`: a PEFT LoRA adapter holding each merged weight's low-rank update; no base weight is read."""

from __future__ import annotations

import torch

from ssam_cli.dtypes import OUTPUT_DTYPES
from ssam_cli.outputs.base import Finished, LowRankOutput
from ssam_cli.outputs.modality_files import read_shapes, write_modality_files
from ssam_cli.writers.lora import WEIGHTS, LoraAdapterWriter


class LoraOutput(LowRankOutput):
    name = "lora"
    summary = "a PEFT LoRA adapter on the base (exact factors of each merged update; no base weight read)"

    def open(self, folder) -> None:
        super().open(folder)
        dtype = OUTPUT_DTYPES.get(self.recipe.output.dtype, torch.bfloat16)
        self.writer = LoraAdapterWriter(folder, dtype, base_model=self.recipe.as_run()["base"]["path"])

    def finish(self) -> Finished:
        assert self.folder is not None
        return Finished(self.writer.close(), write_modality_files(self.prepared, self.folder, self.shared))

    def verify(self) -> None:
        assert self.folder is not None
        if not read_shapes([self.folder / WEIGHTS]):
            raise RuntimeError("output incomplete: the adapter holds no tensors")
