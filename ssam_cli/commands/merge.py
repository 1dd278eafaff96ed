"""`ssam merge` and `ssam validate`: the pipeline from a recipe to an output folder (or to a printed plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

RECIPE = typer.Argument(..., help="The YAML recipe (see docs/recipe.md).", show_default=False)


def merge(
    recipe: Path = RECIPE,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the plan; read no tensor, write nothing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder (atomically, at the end)."),
    device: Optional[str] = typer.Option(None, "--device", help="Override the recipe's device: auto, cpu, cuda or cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables; errors only."),
    spectrum: Optional[bool] = typer.Option(None, "--spectrum/--no-spectrum", show_default=False,
                                            help="Put the spectrum summary (see inspect-spectrum) in manifest.json "
                                                 "and the model card. Default: on when every merged weight is a "
                                                 "LoRA update (cheap), off for full fine-tunes (an SVD per weight)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help="CPU threads for torch. Default: 1 when every merged weight is a "
                                               "LoRA update (measured faster: small products), torch's own "
                                               "setting otherwise."),
) -> None:
    """Merge the specialists named in RECIPE into one model.

    Reads each weight of every specialist one at a time (never a whole model), merges it with the recipe's
    method on the device, and writes the output folder atomically with a manifest.json. Example:

        ssam merge recipes/demo.yaml --overwrite
    """
    from ssam_cli.allocator import use_huge_pages_for

    use_huge_pages_for(recipe)  # before torch is imported (by api)
    from ssam_cli import api
    from ssam_cli.commands.render import console, plan_table, summary_table

    if dry_run:
        console().print(plan_table(api.validate(api.load(recipe, device))))
        return
    result = api.merge(recipe, overwrite=overwrite, device=device, show_progress=not quiet, spectrum=spectrum,
                       threads=threads)
    if not quiet:
        console().print(summary_table(result))


def validate(recipe: Path = RECIPE) -> None:
    """Check RECIPE and its inputs (headers only) and print the plan: tensors per role, output size.

    Nothing is merged and no tensor data is read; exit code 0 means `ssam merge` would start.
    """
    from ssam_cli import api
    from ssam_cli.commands.render import console, plan_table

    console().print(plan_table(api.validate(recipe)))
