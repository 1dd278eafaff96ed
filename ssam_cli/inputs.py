"""Open the recipe's base and specialists as sources, with errors that name the recipe field.

A `path:` is a local folder or a Hub repo id (the rule is in ssam_cli/sources/resolve.py); a Hub input is
downloaded (allow-listed files only) and pinned to the commit it resolved to, for the manifest.
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
from ssam_cli.sources.resolve import Resolved, patterns_for, resolve


@dataclass
class Inputs:
    base: Source
    specialists: list[NamedSource]
    origins: dict[str, Resolved]  # input name ("base" or a specialist's) → where its files came from

    def source(self, index: int) -> Source:
        return self.specialists[index].source


def _open(recipe: Recipe, ref: ModelRef, field: str, format: str = "auto",
          encoders: Optional[Mapping[str, str]] = None) -> tuple[Source, Resolved]:
    where = str(recipe.source_file)
    try:
        resolved = resolve(ref.path, ref.revision, recipe.folder, patterns_for(format), subfolder=ref.subfolder)
    except InputError as e:
        raise RecipeError(where, field, str(e)) from None
    try:
        return open_source(resolved.local_path, format, encoders), resolved
    except InputError as e:
        raise RecipeError(where, field, str(e)) from None


def open_inputs(recipe: Recipe) -> Inputs:
    """Headers only: no tensor data is read here (Hub inputs are downloaded first)."""
    base, base_origin = _open(recipe, recipe.base, "base.path", "full")
    origins = {"base": base_origin}
    specialists = []
    for i, s in enumerate(recipe.specialists):
        source, origins[s.name] = _open(recipe, s, f"specialists[{i}].path", s.format, s.encoders)
        decoder = DecoderMap(s.decoder.prefix, s.decoder.replaces) if s.decoder is not None else None
        specialists.append(NamedSource(s.name, source, decoder))
    return Inputs(base, specialists, origins)


def base_folder(inputs: Inputs) -> Path:
    return inputs.base.path if inputs.base.path.is_dir() else inputs.base.path.parent
