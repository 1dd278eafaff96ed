"""The spectrum report for people and scripts: a rich table, JSON, CSV, and PNG figures (matplotlib, optional).

All of it reads a `SpectrumReport`; nothing here computes a singular value.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

import torch
from rich.table import Table

from ssam_cli.errors import UserError
from ssam_cli.spectrum_report import THRESHOLDS, SpectrumReport, WeightSpectrum, share_key

PLOT_HINT = "--plot needs matplotlib, an optional extra: pip install 'ssam[plot]' (or pip install matplotlib)"


def _pct(x: Optional[float], digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.2f}"


def spectrum_table(report: SpectrumReport, per_layer: bool = False) -> Table:
    """One row per module type (or per layer and module type): energy at k, k per share, overlap, kept."""
    target = share_key(report.target)
    table = Table(title=f"spectrum of {len(report.weights)} merged weight(s): {', '.join(report.specialists)}")
    if per_layer:
        table.add_column("layer", justify="right")
    table.add_column("module")
    table.add_column("weights", justify="right")
    table.add_column("k used", justify="right")
    table.add_column("energy@k U / V\n(min)", justify="right")
    table.add_column("k for " + " / ".join(f"{s:.0%}" for s in THRESHOLDS), justify="right")
    table.add_column("overlap U / V\n(chance U)", justify="right")
    for name in report.specialists:
        table.add_column(f"kept\n{name}", justify="right")
    table.add_column(f"suggested k\n({report.target:.0%})", justify="right", style="bold")
    for g in report.groups(per_layer):
        k_used = str(g.k_used[0]) if g.k_used[0] == g.k_used[1] else f"{g.k_used[0]}–{g.k_used[1]}"
        row = [] if not per_layer else ["–" if g.layer is None or g.layer < 0 else str(g.layer)]
        row += [g.module, str(g.weights), k_used,
                f"{_pct(g.energy_at_k_left[1])} / {_pct(g.energy_at_k_right[1])}",
                " / ".join(str(g.k_for[share_key(s)]) for s in THRESHOLDS),
                f"{_num(g.overlap_left)} / {_num(g.overlap_right)} ({_num(g.overlap_chance_left)})"]
        row += [_pct(g.kept[name]) for name in report.specialists]
        row.append(str(g.k_for[target]))
        table.add_row(*row)
    s = report.suggested()
    table.caption = (f"suggested k for the whole model: {s['model']}  —  rule: {s['rule']}.\n"
                     "energy@k: share of Σσ² of [Δ_1|…|Δ_n] (U) and [Δ_1;…;Δ_n] (V) in the top k; overlap: mean "
                     "squared cosine of principal angles between specialists' top subspaces (1 same, 0 orthogonal); "
                     "kept: share of each Δ_i's energy SSAM's projection at k keeps")
    for note in report.notes:
        table.caption += f"\nnote: {note}"
    return table


def write_json(report: SpectrumReport, path: Path) -> None:
    """Every figure, per weight, with the singular values (for notebooks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8")


def write_csv(report: SpectrumReport, path: Path) -> None:
    """One row per weight with every scalar figure (singular values: in the JSON)."""
    rows = [w.figures() for w in report.weights]
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})


# ----------------------------------------------------------------------------------------------- PNG


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the non-interactive backend, or a UserError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(PLOT_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: SpectrumReport, folder: Path) -> list[Path]:
    """spectra.png, energy.png, heatmap_energy.png, heatmap_overlap.png, kept.png in folder; returns the paths."""
    plt = require_matplotlib()
    folder.mkdir(parents=True, exist_ok=True)
    by_module: dict[str, list[WeightSpectrum]] = {m: [] for m in report.modules()}
    for w in report.weights:
        by_module[report.label(w)].append(w)
    written = []
    for name, draw in (("spectra.png", _spectra), ("energy.png", _energy), ("heatmap_energy.png", _heat_energy),
                       ("heatmap_overlap.png", _heat_overlap), ("kept.png", _heat_kept)):
        fig = draw(plt, report, by_module)
        path = folder / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _grid(plt: Any, n: int, size: tuple[float, float] = (3.6, 2.8)) -> tuple[Any, list[Any]]:
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat[:n]


def _k_line(ax: Any, items: list[WeightSpectrum]) -> None:
    ks = sorted({w.k_used for w in items})
    for k in ks:
        ax.axvline(k, color="crimson", lw=1, ls="--")
    ax.text(ks[-1], 1.0, f" k={ks[-1] if len(ks) == 1 else f'{ks[0]}–{ks[-1]}'}", color="crimson",
            transform=ax.get_xaxis_transform(), va="top", fontsize=8)


def _spectra(plt: Any, report: SpectrumReport, by_module: dict[str, list[WeightSpectrum]]) -> Any:
    """σ_j/σ_1 of [Δ_1|…|Δ_n] per weight (log scale), one panel per module type, colour = layer."""
    fig, axes = _grid(plt, len(by_module))
    cmap = plt.get_cmap("viridis")
    layers = sorted({w.layer for w in report.weights})
    for ax, (module, items) in zip(axes, by_module.items()):
        for w in items:
            v = torch.tensor(w.left.values, dtype=torch.float64)
            if v.numel() and float(v[0]) > 0:
                colour = cmap(layers.index(w.layer) / max(len(layers) - 1, 1))
                ax.semilogy(range(1, v.numel() + 1), (v / v[0]).tolist(), color=colour, lw=0.9, alpha=0.8)
        _k_line(ax, items)
        ax.set_title(f"{module}: σ_j / σ_1 of [Δ_1|…|Δ_n]", fontsize=9)
        ax.set_xlabel("j", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("consensus spectra (colour: layer, dark = first)", fontsize=10)
    fig.tight_layout()
    return fig


def _energy_curve(w: WeightSpectrum, length: int) -> torch.Tensor:
    """Energy captured by the top j, j = 0..length: the smaller of the U and V sides."""
    return torch.minimum(_cumulative(w.left.values, length), _cumulative(w.right.values, length))


def _cumulative(values: list[float], length: int) -> torch.Tensor:
    sq = torch.tensor(values, dtype=torch.float64).square()
    total = float(sq.sum())
    if total == 0.0:
        return torch.ones(length + 1, dtype=torch.float64)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(sq, 0) / total])
    return torch.cat([cum, cum[-1:].expand(length + 1 - cum.numel())])


def _energy(plt: Any, report: SpectrumReport, by_module: dict[str, list[WeightSpectrum]]) -> Any:
    """Energy captured vs k per module type: mean over layers, band = min–max."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    length = max(max(len(w.left.values), len(w.right.values)) for w in report.weights)
    x = list(range(length + 1))
    for module, items in by_module.items():
        curves = torch.stack([_energy_curve(w, length) for w in items])
        line, = ax.plot(x, curves.mean(0).tolist(), lw=1.5, label=module)
        ax.fill_between(x, curves.min(0).values.tolist(), curves.max(0).values.tolist(), color=line.get_color(),
                        alpha=0.15)
    for s in THRESHOLDS:
        ax.axhline(s, color="grey", lw=0.7, ls=":")
        ax.text(0, s, f" {s:.0%}", fontsize=7, va="bottom", ha="left", color="grey")
    _k_line(ax, report.weights)
    ax.set_xlabel("k")
    ax.set_ylabel("energy captured (min of U and V side)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("energy captured at k, per module type")
    fig.tight_layout()
    return fig


def _layer_module_matrix(report: SpectrumReport, value: Any) -> tuple[list[int], list[str], list[list[float]]]:
    layers = sorted({w.layer for w in report.weights})
    modules = report.modules()
    nan = float("nan")
    grid = [[nan] * len(modules) for _ in layers]
    for w in report.weights:
        v = value(w)
        grid[layers.index(w.layer)][modules.index(report.label(w))] = nan if v is None else v
    return layers, modules, grid


def _heat(ax: Any, fig: Any, report: SpectrumReport, value: Any, title: str, vmin: float = 0.0,
          vmax: float = 1.0, cmap: str = "viridis") -> None:
    layers, modules, grid = _layer_module_matrix(report, value)
    im = ax.imshow(grid, aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
    long = max(len(m) for m in modules) > 6
    ax.set_xticks(range(len(modules)), modules, fontsize=8, rotation=30 if long else 0, ha="right" if long else "center")
    if len(layers) * len(modules) <= 64:  # small grids: print the figure in each cell
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if (v - vmin) / (vmax - vmin) < 0.6 else "black")
    step = max(1, len(layers) // 16)
    ticks = list(range(0, len(layers), step))
    ax.set_yticks(ticks, [str(layers[i]) if layers[i] >= 0 else "other" for i in ticks], fontsize=7)
    ax.set_ylabel("layer", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _heat_energy(plt: Any, report: SpectrumReport, by_module: dict[str, list[WeightSpectrum]]) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.25 * len({w.layer for w in report.weights}) + 2.5))
    _heat(axes[0], fig, report, lambda w: w.left.energy_at_k, "energy at k, U side [Δ_1|…|Δ_n]")
    _heat(axes[1], fig, report, lambda w: w.right.energy_at_k, "energy at k, V side [Δ_1;…;Δ_n]")
    fig.tight_layout()
    return fig


def _heat_overlap(plt: Any, report: SpectrumReport, by_module: dict[str, list[WeightSpectrum]]) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.25 * len({w.layer for w in report.weights}) + 2.5))
    _heat(axes[0], fig, report, lambda w: w.left.mean_overlap, "mean pairwise overlap, column spaces (U)",
          cmap="magma")
    _heat(axes[1], fig, report, lambda w: w.right.mean_overlap, "mean pairwise overlap, row spaces (V)",
          cmap="magma")
    fig.tight_layout()
    return fig


def _heat_kept(plt: Any, report: SpectrumReport, by_module: dict[str, list[WeightSpectrum]]) -> Any:
    names = report.specialists
    fig, axes = _grid(plt, len(names), (4.2, 0.22 * len({w.layer for w in report.weights}) + 2.2))
    for i, (ax, name) in enumerate(zip(axes, names)):
        _heat(ax, fig, report, lambda w, i=i: w.kept[i], f"{name}: share of ‖Δ‖² kept at k")
    fig.tight_layout()
    return fig
