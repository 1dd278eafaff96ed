"""results.json → results.md: means and stds over seeds land in the right cells."""

from __future__ import annotations

import numpy as np

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


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_items() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.random(30) < 0.7, rng.random(3000) < 0.7
    lo, hi = report.bootstrap_interval(small.astype(float))
    assert lo < small.mean() < hi and hi - lo > 0.2
    lo2, hi2 = report.bootstrap_interval(large.astype(float))
    assert lo2 < large.mean() < hi2 and hi2 - lo2 < 0.05
    assert report.bootstrap_interval(np.ones(30)) == (1.0, 1.0)


def test_real_and_complementary_tables() -> None:
    per_clip = [1.0] * 15 + [0.0] * 15
    real = {"per_type": {"digit": 0.5, "parity": 0.5, "big": 0.5}, "per_clip": per_clip}
    comp = {**{m: 0.6 for m in report.MODALITIES}, **{c: 0.8 for c in report.COMBOS}}
    seeds = {str(s): {"rows": {"ssam (default)": {**_res(0.9), "real_audio": real, "complementary": comp}},
                      "tuned": {}, "rank_ablation": {}, "total_rank": 24, "noise": {m: 1.0 for m in report.MODALITIES}}
             for s in (0, 1)}
    md = report.markdown({"mode": "full", "seeds": seeds, "wall_seconds": 1.0})
    line = next(x for x in md.splitlines() if x.startswith("| ssam (default) | 50.0"))
    lo, hi = (float(v) for v in line.split("|")[-2].split("–"))
    assert lo < 50.0 < hi and hi - lo > 20  # 30 clips: a wide interval
    assert "| ssam (default) | 60.0 ± 0.0 | 60.0 ± 0.0 | 60.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 |" in md


def test_regimes_get_a_section_each_with_the_paper_shaped_main_table() -> None:
    four = ("image", "audio", "points", "text")
    row = {**_res(0.5), "single": {m: {"digit": 0.5, "parity": 0.5, "big": 0.5} for m in four},
           "complementary": {c: 0.6 for c in report.COMBOS}, "retention": 0.95, "drift": 0.1,
           "lambda_used": [0.3, 0.4, 0.5]}
    ablation = {"16": _res(0.7), "64": _res(0.6)}
    seed = {"rows": {"ssam (auto)": row}, "tuned": {}, "rank_ablation": ablation, "total_rank": 64,
            "suggested_k": 64}
    regime = {"name": "interfering", "rank": 16, "alpha": 32, "steps": 300, "lr": 0.01, "modalities": four}
    md = report.markdown({"mode": "full", "wall_seconds": 1.0,
                          "regimes": {"interfering": {"regime": regime, "seeds": {"0": seed}},
                                      "low": {"regime": {**regime, "rank": 8}, "seeds": {"0": seed}}}})
    assert "## Regime: interfering" in md and "## Regime: low" in md
    assert ("| ssam (auto) | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 25.0 | 25.0 | 25.0 | 25.0 | 60.0 | 0.950 |" in md)
    assert "| ssam (auto) | 0.400 (0.300–0.500) |" in md  # the λ auto chose
    assert "| 0 | 64 | 16 | 70.0 | 60.0 |" in md  # suggested k against the ablation's best


def test_combine_takes_every_regime_and_seed_of_its_parts() -> None:
    reg = {"name": "low"}
    a = {"mode": "full", "wall_seconds": 10.0, "regimes": {"low": {"regime": reg, "seeds": {"1": {"x": 1}}}}}
    b = {"mode": "full", "wall_seconds": 5.0, "regimes": {"low": {"regime": reg, "seeds": {"0": {"x": 0}}},
                                                        "interfering": {"regime": reg, "seeds": {"0": {"x": 2}}}}}
    got = report.combine([a, b])
    assert list(got["regimes"]["low"]["seeds"]) == ["0", "1"] and got["regimes"]["interfering"]["seeds"]["0"] == {"x": 2}
    assert got["wall_seconds"] == 15.0


def test_lambda_curve_table_and_rows_present_in_some_seeds_only() -> None:
    curve = lambda acc: {"ssam": [{"params": {"lambda": 0.25, "rank": 16}, "single": acc},  # noqa: E731
                                  {"params": {"lambda": 1.0, "rank": 16}, "single": acc / 2}],
                         "task_arithmetic": [{"params": {"lambda": 0.25}, "single": acc}]}
    seeds = {"0": {"rows": {"ssam (default)": _res(0.8), "joint": _res(0.9)}, "tuned": {}, "rank_ablation": {},
                   "total_rank": 64, "val_curve": curve(0.8)},
             "1": {"rows": {"ssam (default)": _res(0.6)}, "tuned": {}, "rank_ablation": {}, "total_rank": 64,
                   "val_curve": curve(0.6)}}
    md = report.markdown({"mode": "full", "seeds": seeds, "wall_seconds": 1.0})
    assert "| ssam (k = 16) | 70.0 ± 14.1 | 35.0 ± 7.1 |" in md  # λ = 0.25 and λ = 1, mean ± std over seeds
    assert "| task_arithmetic | 70.0 ± 14.1 | — |" in md
    assert "| joint | 90.0 | 90.0 | 90.0 | 90.0 |" in md  # scored on seed 0 only: one value, no std
