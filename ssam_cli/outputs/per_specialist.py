"""`format: per_specialist`: the `full` output (merged decoder, config and tokenizer of the base, modalities/), and
beside it one folder per specialist that its own model class loads: the specialist's config, tokenizer and
processor files copied as they are, its towers and projectors byte for byte, and the merged decoder under the
specialist's own names (`<output>/vision` loads with LlavaForConditionalGeneration.from_pretrained).

A format of its own rather than an option of `full`: it writes a different tree and checks more (every specialist
a full checkpoint, folder names free), and `full` stays the one layout every other merge writes.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from ssam_cli.errors import UserError
from ssam_cli.manifest import MANIFEST
from ssam_cli.outputs.full import FullOutput
from ssam_cli.outputs.base import Finished
from ssam_cli.outputs.modality_files import read_shapes
from ssam_cli.plan import NamedSource, PlannedTensor
from ssam_cli.writers.full import SIDE_FILES, FullCheckpointWriter, copy_side_files
from ssam_cli.writers.safetensors_stream import TensorSpec

# what the `full` part writes at the top of the output: no specialist folder may take one of these names
_TAKEN = ("modalities", MANIFEST, "README.md", "model*.safetensors", "model.safetensors.index.json", *SIDE_FILES)


class PerSpecialistOutput(FullOutput):
    name = "per_specialist"
    summary = ("the full checkpoint, plus one folder per specialist that loads with its own class: its config, "
               "processor files and towers, and the merged decoder under its names")
    kept_where = "modalities/<name>.safetensors and in <name>/ beside the merged decoder"

    def check(self) -> None:
        super().check()
        p = self.prepared
        for named in p.inputs.specialists:
            if named.name not in p.plan.decoders:
                raise UserError(f"{self.where}: specialist '{named.name}' is a {named.source.kind} source, which has "
                                "no architecture of its own to write a folder for; use format: full")
            if any(fnmatch.fnmatchcase(named.name, pattern) for pattern in _TAKEN):
                raise UserError(f"{self.where}: specialist name '{named.name}' is also a file or folder of the merged "
                                "checkpoint; rename the specialist")

    def estimated_bytes(self) -> int:
        """The full checkpoint plus each specialist's folder (the merged decoder again, and its own tensors)."""
        folders = sum(s.nbytes for named in self.prepared.inputs.specialists for s in self.specialist_specs(named.name))
        return super().estimated_bytes() + folders

    def specialist_specs(self, name: str) -> list[TensorSpec]:
        """The specialist folder's tensors: the merged decoder under its names (plan order), then its own."""
        plan, mapping = self.prepared.plan, self.prepared.plan.decoders[name]
        decoder = [TensorSpec(mapping(t.name), t.shape, self.out_dtype(t)) for t in plan.tensors if t.in_base]
        return decoder + [TensorSpec(k.key, k.shape, k.dtype) for k in plan.kept if k.specialist == name]

    def open(self, folder: Path) -> None:
        super().open(folder)
        self.folders: dict[str, FullCheckpointWriter] = {}
        for named in self.prepared.inputs.specialists:
            (folder / named.name).mkdir()
            self.folders[named.name] = FullCheckpointWriter(folder / named.name, self.specialist_specs(named.name),
                                                            self.recipe.output.shard_size)

    def accept(self, t: PlannedTensor, value: Any) -> None:
        super().accept(t, value)
        for name, writer in self.folders.items():
            writer.write(self.prepared.plan.decoders[name](t.name), value)

    def finish(self) -> Finished:
        assert self.folder is not None
        finished = super().finish()
        for named in self.prepared.inputs.specialists:
            files = self._finish_folder(named)
            record = finished.modalities.setdefault(named.name, {})
            record.update({"folder": named.name, "decoder": self.prepared.plan.decoders[named.name].describe(),
                           "folder_files": files})
            finished.files += [f"{named.name}/{f}" for f in files]
        return finished

    def _finish_folder(self, named: NamedSource) -> list[str]:
        """The specialist's own tensors after the decoder, then its side files (copied, never rewritten)."""
        writer = self.folders[named.name]
        for k in self.prepared.plan.kept:
            if k.specialist == named.name:
                writer.write(k.key, named.source.read(k.key))
        src = named.source.path if named.source.path.is_dir() else named.source.path.parent
        assert self.folder is not None
        return writer.close() + copy_side_files(src, self.folder / named.name)

    def verify(self) -> None:
        super().verify()
        assert self.folder is not None
        for name in self.folders:
            expected = {s.name: s.shape for s in self.specialist_specs(name)}
            found = read_shapes(sorted((self.folder / name).glob("model*.safetensors")))
            if found != expected:
                missing = sorted(set(expected) - set(found))
                raise RuntimeError(f"output incomplete: folder {name}: {len(missing)} planned tensor(s) missing, "
                                   f"e.g. {missing[:3]}")
