"""Rich tables the commands print: the plan before a merge, the summary after it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from ssam_cli.engine import Prepared, RunResult


def console() -> Console:
    return Console()


def human_bytes(n: float, digits: int = 2) -> str:
    """Decimal units, as the Hub and file browsers show sizes: 2500000 → '2.50 MB' (`digits` after the point)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1000
    return f"{n:.{digits}f} TB"


def plan_table(p: "Prepared") -> Table:
    from ssam_cli.plan import Role

    r = p.recipe
    table = Table(title=f"plan: {r.method} → {r.output_path} ({r.output.format})", show_header=True)
    table.add_column("role")
    table.add_column("tensors", justify="right")
    table.add_column("what happens")
    what = {
        Role.MERGE: f"merged by {r.method}",
        Role.AVERAGE: "mean of the specialists (biases, norms, shared tokens)",
        Role.KEEP: f"kept per specialist in {p.output.kept_where}",
        Role.COPY: "base value" + ("" if p.output.reads_base_weights else f" (not written: {r.output.format} output)"),
    }
    for role in Role:
        table.add_row(role.value, str(p.plan.count(role)), what[role])
    if p.output.lowrank_only:
        table.caption = "output size: rank-dependent (about (d_out + d_in)·k per merged weight)"
    else:
        table.caption = f"estimated output size: {human_bytes(p.output.estimated_bytes())}"
    kinds = ", ".join(f"{n.name} ({n.source.kind})" for n in p.inputs.specialists)
    table.caption += f"\nspecialists: {kinds}"
    base = p.inputs.base.describe()
    if base.get("read") == "header":
        table.caption += f"\nbase: read by header only ({base['shapes_from']}); no base weight is read"
    for line in decoder_lines(p):
        table.caption += f"\n{line}"
    return table


def decoder_lines(p: "Prepared") -> list[str]:
    """Where each full specialist holds the base's decoder, and how many of its tensors are kept as its own."""
    kept: dict[str, int] = {}
    for k in p.plan.kept:
        kept[k.specialist] = kept.get(k.specialist, 0) + 1
    return [f"{name}: decoder at {mapping.describe()}; {kept.get(name, 0)} other tensor(s) kept as its own"
            for name, mapping in p.plan.decoders.items()]


def summary_table(result: "RunResult") -> Table:
    manifest = result.manifest.as_json()
    s = manifest["summary"]
    table = Table(title=f"merged → {result.output}", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for role, n in s["tensors"].items():
        table.add_row(f"tensors: {role}", str(n))
    merged = [v for v in manifest["tensors"].values() if "rank_used" in v]
    if merged:
        capped = sum(bool(v.get("rank_capped")) for v in merged)
        table.add_row("rank used (min–max)", f"{min(v['rank_used'] for v in merged)}–{max(v['rank_used'] for v in merged)}")
        if capped:
            table.add_row("rank capped at numerical rank", f"{capped} weight(s)")
    table.add_row("method / space", f"{manifest['method']} / {manifest['space']}")
    table.add_row("device", manifest["device"])
    table.add_row("time", f"{s['seconds']:.2f} s")
    table.add_row("peak memory (RSS)", f"{s['peak_rss_mb']:.0f} MB")
    table.add_row("output size", human_bytes(s["output_bytes"]))
    return table
