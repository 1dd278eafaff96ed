"""Open the recipe's base and specialists as sources, with errors that name the recipe field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssam_cli.errors import InputError, RecipeError
from ssam_cli.plan import NamedSource
from ssam_cli.recipe import ModelRef, Recipe
from ssam_cli.sources import Source, open_source


@dataclass
class Inputs:
    base: Source
    specialists: list[NamedSource]

    def source(self, index: int) -> Source:
        return self.specialists[index].source


def _open(recipe: Recipe, ref: ModelRef, field: str, format: str = "auto") -> Source:
    path = recipe.local_path(ref)
    if not path.exists():
        raise RecipeError(str(recipe.source_file), field, f"no such file or folder: {path}")
    try:
        return open_source(path, format)
    except InputError as e:
        raise RecipeError(str(recipe.source_file), field, str(e)) from None


def open_inputs(recipe: Recipe) -> Inputs:
    """Headers only: no tensor data is read here."""
    base = _open(recipe, recipe.base, "base.path", "full")
    specialists = [NamedSource(s.name, _open(recipe, s, f"specialists[{i}].path", s.format))
                   for i, s in enumerate(recipe.specialists)]
    return Inputs(base, specialists)


def base_folder(inputs: Inputs) -> Path:
    return inputs.base.path if inputs.base.path.is_dir() else inputs.base.path.parent
