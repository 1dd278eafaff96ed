"""results.json → results.md: tables shaped like the paper's (rows: specialists and merges; columns:
modalities and their combinations, then the average), mean ± std over seeds."""

from __future__ import annotations

from typing import Any

import numpy as np

MODALITIES = ("image", "audio", "points")
COMBOS = ("image+audio", "image+points", "audio+points", "image+audio+points")


def single_mean(res: dict[str, Any]) -> float:
    """Mean accuracy over modalities and question types: the validation criterion and the table's average."""
    per_mod = [float(np.mean(list(q.values()))) for q in res["single"].values()]
    return float(np.mean(per_mod)) if per_mod else float("nan")


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    pct = 100 * np.asarray(values)
    return f"{pct.mean():.1f}" if len(pct) == 1 else f"{pct.mean():.1f} ± {pct.std(ddof=1):.1f}"


def _gather(results: dict[str, Any], row: str, pick) -> list[float]:
    out = []
    for seed in results["seeds"].values():
        res = seed["rows"].get(row)
        v = pick(res) if res is not None else None
        if v is not None:
            out.append(v)
    return out


def _rows(results: dict[str, Any], single: bool = False) -> list[str]:
    """Row names in order; with `single`, only rows that have single-modality scores (not late fusion)."""
    first = next(iter(results["seeds"].values()))
    return [r for r, res in first["rows"].items() if res["single"] or not single]


def _single_table(results: dict[str, Any]) -> list[str]:
    lines = ["| model | " + " | ".join(MODALITIES) + " | avg |", "|---" * (len(MODALITIES) + 2) + "|"]
    for row in _rows(results, single=True):
        cells = []
        for mod in MODALITIES:
            cells.append(_cell(_gather(results, row, lambda r, m=mod: float(np.mean(list(r["single"][m].values())))
                                       if m in r["single"] else None)))
        has_all = all(m in next(iter(results["seeds"].values()))["rows"][row]["single"] for m in MODALITIES)
        cells.append(_cell(_gather(results, row, single_mean)) if has_all else "—")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _qtype_table(results: dict[str, Any]) -> list[str]:
    qtypes = ("digit", "parity", "big")
    head = [f"{m} {q}" for m in MODALITIES for q in qtypes]
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for row in _rows(results, single=True):
        cells = [_cell(_gather(results, row, lambda r, m=m, q=q: r["single"].get(m, {}).get(q)))
                 for m in MODALITIES for q in qtypes]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _combined_table(results: dict[str, Any]) -> list[str]:
    lines = ["| model | " + " | ".join(COMBOS) + " | avg |", "|---" * (len(COMBOS) + 2) + "|"]
    for row in _rows(results):
        first = next(iter(results["seeds"].values()))["rows"][row]
        if not first["combined"]:
            continue
        cells = [_cell(_gather(results, row, lambda r, c=c: r["combined"][c])) for c in COMBOS]
        cells.append(_cell(_gather(results, row, lambda r: float(np.mean(list(r["combined"].values()))))))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _complementary_table(results: dict[str, Any]) -> list[str]:
    cols = MODALITIES + COMBOS
    first = next(iter(results["seeds"].values()))
    noise = ", ".join(f"{m} σ = {first['noise'][m]:.2f}" for m in MODALITIES) if first.get("noise") else ""
    lines = [f"Noise (× feature std, calibrated per seed on val so each specialist alone is ~60 %; seed "
             f"{next(iter(results['seeds']))}: {noise}).", "",
             "| model | " + " | ".join(f"{c} alone" if "+" not in c else c for c in cols) + " | avg combined |",
             "|---" * (len(cols) + 2) + "|"]
    for row in _rows(results):
        if "complementary" not in first["rows"][row]:
            continue
        cells = [_cell(_gather(results, row, lambda r, c=c: r["complementary"].get(c))) for c in cols]
        cells.append(_cell(_gather(results, row, lambda r: float(np.mean([r["complementary"][c] for c in COMBOS]))
                                   if all(c in r["complementary"] for c in COMBOS) else None)))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 4 else []


def bootstrap_interval(per_item: np.ndarray, n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over items of the mean score: with 30 clips the interval, not the point, is the result."""
    rng = np.random.default_rng(seed)
    means = per_item[rng.integers(0, len(per_item), (n, len(per_item)))].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def _real_table(results: dict[str, Any]) -> list[str]:
    qtypes = ("digit", "parity", "big")
    lines = ["| model | " + " | ".join(qtypes) + " | mean | 95 % bootstrap interval |", "|---" * 6 + "|"]
    for row in _rows(results):
        clips = _gather(results, row, lambda r: r.get("real_audio", {}).get("per_clip"))
        if not clips:
            continue
        cells = [_cell(_gather(results, row, lambda r, q=q: r["real_audio"]["per_type"][q])) for q in qtypes]
        cells.append(_cell(_gather(results, row, lambda r: float(np.mean(r["real_audio"]["per_clip"])))))
        lo, hi = bootstrap_interval(np.mean(np.asarray(clips), axis=0))
        cells.append(f"{100 * lo:.1f} – {100 * hi:.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def _retention_table(results: dict[str, Any]) -> list[str]:
    lines = ["| model | cosine to base embeddings |", "|---|---|"]
    for row in _rows(results):
        values = _gather(results, row, lambda r: r.get("retention"))
        if values:
            pct = np.asarray(values)
            cell = f"{pct.mean():.4f}" if len(pct) == 1 else f"{pct.mean():.4f} ± {pct.std(ddof=1):.4f}"
            lines.append(f"| {row} | {cell} |")
    return lines if len(lines) > 2 else []


def _ablation_table(results: dict[str, Any]) -> list[str]:
    seeds = list(results["seeds"].values())
    ranks = list(seeds[0]["rank_ablation"])
    if not ranks:
        return []
    total = seeds[0]["total_rank"]
    lines = [f"SSAM at its validation-chosen λ, k relative to Σr = {total}:", "",
             "| k | k / Σr | single avg | combined avg |", "|---|---|---|---|"]
    for k in ranks:
        single = [single_mean(s["rank_ablation"][k]) for s in seeds]
        comb = [float(np.mean(list(s["rank_ablation"][k]["combined"].values()))) for s in seeds]
        lines.append(f"| {k} | {int(k) / total:.2f} | {_cell(single)} | {_cell(comb)} |")
    return lines


def _params(params: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items()) + ")"


def _tuned(results: dict[str, Any]) -> list[str]:
    lines = []
    for seed, s in results["seeds"].items():
        chosen = ", ".join(f"{m} {_params(p)}" for m, p in s["tuned"].items())
        if chosen:
            lines.append(f"- seed {seed}: {chosen}")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole results page."""
    seeds = ", ".join(results["seeds"])
    cpu = ", ".join(f"{s.get('cpu_seconds', float('nan')):.0f}" for s in results["seeds"].values())
    out = [f"# Quality lab results ({results['mode']})", "",
           f"Seeds: {seeds} (mean ± sample std over seeds where there are several). Accuracy in %. "
           f"Wall time of the invocation that wrote this: {results['wall_seconds']:.0f} s; CPU seconds per seed "
           f"in that invocation: {cpu}. How to read and rerun: docs/lab.md.", "",
           "## Single modality (mean over the three question types; chance ≈ 40 %: 10 %, 50 %, 50 %)", "",
           *_single_table(results), "",
           "## Per question type", "", *_qtype_table(results), "",
           "## Combined modalities, never trained on (four options, chance 25 %)", "",
           *_combined_table(results), ""]
    real = _real_table(results)
    if real:
        out += ["## Real human recordings (audio; 30 clips: Tux Paint en, Tux Paint en_GB, Asterisk en_US)", "",
                "Never trained on: the specialists heard only TTS. The interval resamples the 30 clips (each clip "
                "scored as its mean over question types and seeds); it, not the mean, is the result.", "", *real, ""]
    comp = _complementary_table(results)
    if comp:
        out += ["## Complementary evidence (degraded inputs, four options, chance 25 %)", "", *comp, ""]
    kept = _retention_table(results)
    if kept:
        out += ["## Language retention (mean cosine, base vs merged sentence embeddings of held-out English; 1 = untouched)",
                "", *kept, ""]
    ablation = _ablation_table(results)
    if ablation:
        out += ["## Rank ablation (SSAM)", "", *ablation, ""]
    tuned = _tuned(results)
    if tuned:
        out += ["## Parameters chosen on the validation split", "", *tuned, ""]
    return "\n".join(out)
