"""Output formats, one module each behind one registry: add a format by adding its module and one line here."""

from __future__ import annotations

from ssam_cli.outputs.base import OutputFormat
from ssam_cli.outputs.full import FullOutput
from ssam_cli.outputs.lora import LoraOutput
from ssam_cli.outputs.modelcompose import ModelComposeOutput
from ssam_cli.outputs.per_specialist import PerSpecialistOutput

FORMATS: dict[str, type[OutputFormat]] = {f.name: f for f in (FullOutput, LoraOutput, ModelComposeOutput,
                                                              PerSpecialistOutput)}
