"""Open the recipe's base and specialists as sources, with errors that name the recipe field.

A `path:` is a local folder or a Hub repo id (the rule is in ssam_cli/sources/resolve.py); a Hub input is
downloaded (allow-listed files only) and pinned to the commit it resolved to, for the manifest. A base whose weights
the merge does not read is opened by header only, and its weight files are never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from ssam_cli.errors import InputError, RecipeError
from ssam_cli.plan import NamedSource
from ssam_cli.recipe import ModelRef, Recipe
from ssam_cli.sources import Source, open_source
from ssam_cli.sources.decoder_prefix import DecoderMap
from ssam_cli.sources.header_only import lowrank_targets, open_header_only
from ssam_cli.sources.resolve import HEADER_PATTERNS, WEIGHT_PATTERNS, Resolved, patterns_for, resolve


@dataclass
class Inputs:
    base: Source
    specialists: list[NamedSource]
    origins: dict[str, Resolved]  # input name ("base" or a specialist's) → where its files came from

    def source(self, index: int) -> Source:
        return self.specialists[index].source


def _resolve(recipe: Recipe, ref: ModelRef, field: str, patterns: tuple[str, ...],
             listed: tuple[str, ...] = ()) -> Resolved:
    try:
        return resolve(ref.path, ref.revision, recipe.folder, patterns, subfolder=ref.subfolder, listed=listed)
    except InputError as e:
        raise RecipeError(str(recipe.source_file), field, str(e)) from None


def _open(recipe: Recipe, ref: ModelRef, field: str, format: str = "auto",
          encoders: Optional[Mapping[str, str]] = None) -> tuple[Source, Resolved]:
    resolved = _resolve(recipe, ref, field, patterns_for(format))
    try:
        return open_source(resolved.local_path, format, encoders), resolved
    except InputError as e:
        raise RecipeError(str(recipe.source_file), field, str(e)) from None


def open_inputs(recipe: Recipe) -> Inputs:
    """Headers only: no tensor data is read here (Hub inputs are downloaded first). The specialists come first:
    when they are all low-rank and the output reads no base weight, the base is opened by header only
    (sources/header_only.py) and no base weight file is downloaded."""
    origins: dict[str, Resolved] = {}
    specialists = []
    for i, s in enumerate(recipe.specialists):
        source, origins[s.name] = _open(recipe, s, f"specialists[{i}].path", s.format, s.encoders)
        decoder = DecoderMap(s.decoder.prefix, s.decoder.replaces) if s.decoder is not None else None
        specialists.append(NamedSource(s.name, source, decoder))
    if reads_no_base_weight(recipe, specialists):
        origins["base"] = _resolve(recipe, recipe.base, "base.path", HEADER_PATTERNS, listed=WEIGHT_PATTERNS)
        targets, target_of = lowrank_targets([(n.name, n.source) for n in specialists])
        try:
            base: Source = open_header_only(origins["base"], targets, target_of)
        except InputError as e:
            raise RecipeError(str(recipe.source_file), "base.path", str(e)) from None
    else:
        base, origins["base"] = _open(recipe, recipe.base, "base.path", "full")
    return Inputs(base, specialists, {"base": origins["base"], **origins})


def reads_no_base_weight(recipe: Recipe, specialists: list[NamedSource]) -> bool:
    """The output format reads no base weight and every specialist changes the base by low-rank updates only
    (a LoRA adapter without saved modules, or a ModelCompose specialist, whose own tensors are all kept)."""
    from ssam_cli.outputs import FORMATS  # outputs import this module

    return not FORMATS[recipe.output.format].reads_base_weights and all(
        n.source.kind == "modelcompose" or (n.source.kind == "lora" and not n.source.tensors) for n in specialists)


def base_folder(inputs: Inputs) -> Path:
    return inputs.base.path if inputs.base.path.is_dir() else inputs.base.path.parent
