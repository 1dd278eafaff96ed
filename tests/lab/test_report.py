"""results.json → results.md: means and stds over seeds land in the right cells."""

from __future__ import annotations

from benchmarks.lab import report


def _res(acc: float) -> dict:
    single = {m: {"digit": acc, "parity": acc, "big": acc} for m in report.MODALITIES}
    return {"single": single, "combined": {c: acc / 2 for c in report.COMBOS}}


def test_markdown_means_and_stds() -> None:
    seeds = {str(s): {"rows": {"ssam (default)": _res(a), "specialist: image": {"single": {"image": {"digit": 1.0}},
                                                                              "combined": {}}},
                      "tuned": {"ssam": {"rank": 8}}, "rank_ablation": {"8": _res(a)}, "total_rank": 24}
             for s, a in ((0, 0.8), (1, 0.6))}
    md = report.markdown({"mode": "full", "seeds": seeds, "wall_seconds": 12.0})
    assert "| ssam (default) | 70.0 ± 14.1 | 70.0 ± 14.1 | 70.0 ± 14.1 | 70.0 ± 14.1 |" in md
    assert "| specialist: image | 100.0 ± 0.0 | — | — | — |" in md  # a specialist has no average over modalities
    assert "| ssam (default) | 35.0 ± 7.1 | 35.0 ± 7.1 | 35.0 ± 7.1 | 35.0 ± 7.1 | 35.0 ± 7.1 |" in md
    assert "| 8 | 0.33 | 70.0 ± 14.1 | 35.0 ± 7.1 |" in md
    assert report.single_mean(_res(0.5)) == 0.5
