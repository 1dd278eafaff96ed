"""`format: modelcompose`: one composed ModelCompose model (adapter_model.bin + config.json) that ModelCompose's own
loader reads: the merged `default` LoRAs beside every specialist's projector, tokens and modality LoRAs."""

from __future__ import annotations

from ssam_cli.dtypes import OUTPUT_DTYPES
from ssam_cli.errors import UserError
from ssam_cli.outputs.base import Finished, LowRankOutput
from ssam_cli.writers.modelcompose import ModelComposeWriter, check_composition


class ModelComposeOutput(LowRankOutput):
    name = "modelcompose"
    summary = "a composed ModelCompose model (DAMC / NaiveMC specialists), loadable by its load_pretrained_model"
    kept_where = "the composed adapter_model.bin"

    def check(self) -> None:
        try:
            self.composition = check_composition(self.recipe.output_path, self.prepared.inputs.specialists)
        except UserError as e:
            raise UserError(f"{self.where}: {e}") from None
        super().check()

    def open(self, folder) -> None:
        super().open(folder)
        out = self.recipe.output
        self.writer = ModelComposeWriter(folder, self.composition, OUTPUT_DTYPES.get(out.dtype))

    def finish(self) -> Finished:
        files = self.writer.close(self.shared)
        r = self.writer.result
        assert r is not None
        return Finished(files, r.modalities, {"lora_r": r.lora_r, "lora_alpha": r.lora_alpha, "notes": r.notes})

    def verify(self) -> None:
        """The writer reads its file back against the loader's key set before it returns (write_modelcompose)."""
