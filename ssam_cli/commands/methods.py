"""`ssam methods`: every merge method with its parameters and defaults, from the registry itself."""

from __future__ import annotations


def methods() -> None:
    """List the merge methods a recipe can name, with their parameters and defaults."""
    from rich.table import Table

    from ssam_cli.commands.render import console
    from ssam_cli.methods import REGISTRY
    from ssam_cli.methods.base import ScaledParams, default_lambda

    table = Table(title="merge methods (recipe key: method)")
    table.add_column("method", style="bold")
    table.add_column("what it does")
    table.add_column("parameters (default)")
    table.add_column("LoRA output")
    for spec in REGISTRY.values():
        params = []
        for name, f in spec.params.model_fields.items():
            scaled = name == "lam" and issubclass(spec.params, ScaledParams)
            default = default_lambda(spec.params) if scaled and f.default is None else f.default
            params.append(f"{f.alias or name} ({default})")
        table.add_row(spec.name, f"{spec.summary}\n[dim]{spec.paper}[/dim]", "\n".join(params) or "—",
                      "yes" if spec.lowrank_output else "no")
    console().print(table)
