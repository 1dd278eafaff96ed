"""The report as people and scripts read it: table rows, JSON and CSV that carry the computed figures, PNGs."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch
from rich.console import Console

from ssam_cli.deltas import LowRankDelta
from ssam_cli.errors import UserError
from ssam_cli.spectrum_report import SpectrumReport, analyse_weight
from ssam_cli.spectrum_render import PLOT_HINT, require_matplotlib, spectrum_table, write_csv, write_json, write_plots

MODULES = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def report() -> SpectrumReport:
    g = torch.Generator().manual_seed(0)
    weights = []
    for layer in range(2):
        for m in MODULES:
            deltas = [LowRankDelta(torch.randn(16, 3, generator=g), torch.randn(3, 12, generator=g)) for _ in range(2)]
            weights.append(analyse_weight(f"model.layers.{layer}.{m}.weight", deltas, [1.0, 1.0], 4, ["vis", "aud"]))
    return SpectrumReport(weights, 0.95, notes=["a note"])


def render(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_table_has_one_row_per_module_type_or_layer(report):
    text = render(spectrum_table(report))
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["q", "v", "down"]
    assert "kept" in text and "vis" in text and "aud" in text and "note: a note" in text
    assert f"suggested k for the whole model: {report.suggested()['model']}" in text
    per_layer = [line for line in render(spectrum_table(report, per_layer=True)).splitlines() if line.startswith("│")]
    assert len(per_layer) == 6 and per_layer[0].split("│")[1].strip() == "0"


def test_json_carries_every_figure_and_the_singular_values(report, tmp_path):
    write_json(report, tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["suggested_k"] == report.suggested()
    w0 = data["weights"][0]
    assert w0["values_left"] == report.weights[0].left.values
    assert w0["specialist_values"]["aud"] == report.weights[0].specialist_values[1]
    assert w0["kept_vis"] == report.weights[0].kept[0]
    assert [g["module"] for g in data["by_module"]] == ["q", "v", "down"]


def test_csv_has_one_row_per_weight_with_scalar_figures(report, tmp_path):
    write_csv(report, tmp_path / "s.csv")
    with (tmp_path / "s.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [w.name for w in report.weights]
    assert float(rows[1]["energy_at_k_left"]) == report.weights[1].left.energy_at_k
    assert float(rows[0]["overlap_left_vis~aud"]) == report.weights[0].left.overlap[0][1]
    assert int(rows[2]["k95_right"]) == report.weights[2].right.k_for["0.95"]


def test_pngs_are_written_and_non_empty(report, tmp_path):
    pytest.importorskip("matplotlib")
    paths = write_plots(report, tmp_path / "png")
    assert {p.name for p in paths} == {"spectra.png", "energy.png", "heatmap_energy.png", "heatmap_overlap.png",
                                       "kept.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_without_matplotlib_the_message_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(UserError, match="pip install 'ssam\\[plot\\]'"):
        require_matplotlib()
    assert "matplotlib" in PLOT_HINT
