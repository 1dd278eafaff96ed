"""results.json → results.md: per regime, tables shaped like the paper's Tables 1–3 (rows: specialists, the
jointly trained reference, late fusion and the merges; columns: each modality alone, every combination, the
complementary-evidence task, language retention), mean ± std over seeds; then the details."""

from __future__ import annotations

from typing import Any

import numpy as np

MODALITIES = ("image", "audio", "points", "text")
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
    names: dict[str, None] = {}  # every seed's rows, in order of first appearance (some rows run on some seeds)
    for seed in results["seeds"].values():
        names.update(dict.fromkeys(seed["rows"]))
    return [r for r in names if _row(results, r)["single"] or not single]


def _row(results: dict[str, Any], row: str) -> dict[str, Any]:
    """The row's result in the first seed that has it."""
    return next(s["rows"][row] for s in results["seeds"].values() if row in s["rows"])


def _mods(results: dict[str, Any]) -> tuple[str, ...]:
    """The regime's modalities (older results files: the three perceptual ones)."""
    return tuple((results.get("regime") or {}).get("modalities") or MODALITIES[:3])


def _single_table(results: dict[str, Any]) -> list[str]:
    mods = _mods(results)
    lines = ["| model | " + " | ".join(mods) + " | avg |", "|---" * (len(mods) + 2) + "|"]
    for row in _rows(results, single=True):
        cells = []
        for mod in mods:
            cells.append(_cell(_gather(results, row, lambda r, m=mod: float(np.mean(list(r["single"][m].values())))
                                       if m in r["single"] else None)))
        has_all = all(m in _row(results, row)["single"] for m in mods)
        cells.append(_cell(_gather(results, row, single_mean)) if has_all else "—")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _qtype_table(results: dict[str, Any]) -> list[str]:
    mods = _mods(results)
    qtypes = ("digit", "parity", "big")
    head = [f"{m} {q}" for m in mods for q in qtypes]
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for row in _rows(results, single=True):
        cells = [_cell(_gather(results, row, lambda r, m=m, q=q: r["single"].get(m, {}).get(q)))
                 for m in mods for q in qtypes]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _combined_table(results: dict[str, Any]) -> list[str]:
    lines = ["| model | " + " | ".join(COMBOS) + " | avg |", "|---" * (len(COMBOS) + 2) + "|"]
    for row in _rows(results):
        if not _row(results, row)["combined"]:
            continue
        cells = [_cell(_gather(results, row, lambda r, c=c: r["combined"][c])) for c in COMBOS]
        cells.append(_cell(_gather(results, row, lambda r: float(np.mean(list(r["combined"].values()))))))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _complementary_table(results: dict[str, Any]) -> list[str]:
    mods = tuple(m for m in _mods(results) if m != "text")
    cols = mods + COMBOS
    first = next(iter(results["seeds"].values()))
    noise = ", ".join(f"{m} σ = {first['noise'][m]:.2f}" for m in mods) if first.get("noise") else ""
    lines = [f"Noise (× feature std, calibrated per seed on val so each specialist alone is ~60 %; seed "
             f"{next(iter(results['seeds']))}: {noise}).", "",
             "| model | " + " | ".join(f"{c} alone" if "+" not in c else c for c in cols) + " | avg combined |",
             "|---" * (len(cols) + 2) + "|"]
    for row in _rows(results):
        if "complementary" not in _row(results, row):
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


def _scalar_table(results: dict[str, Any], key: str, header: str) -> list[str]:
    """One column of a per-row figure that is not an accuracy (4 decimals, mean ± std over seeds)."""
    lines = [f"| model | {header} |", "|---|---|"]
    for row in _rows(results):
        values = _gather(results, row, lambda r: r.get(key))
        if values:
            v = np.asarray(values)
            lines.append(f"| {row} | {v.mean():.4f}" + (f" ± {v.std(ddof=1):.4f}" if len(v) > 1 else "") + " |")
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
        comb = [float(np.mean(list(c.values()))) for s in seeds if (c := s["rank_ablation"][k]["combined"])]
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


def _mean_of(values: dict[str, float], keys) -> float | None:
    got = [values[k] for k in keys if k in values]
    return float(np.mean(got)) if got and len(got) == len(list(keys)) else None


def _main_table(results: dict[str, Any]) -> list[str]:
    """The paper's Tables 1–3 in one: modalities alone, their average, every combination, complementary, retention."""
    mods = _mods(results)
    head = [*mods, "avg", *COMBOS, "complementary", "retention"]
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for row in _rows(results):
        cells = [_cell(_gather(results, row, lambda r, m=m: float(np.mean(list(r["single"][m].values())))
                               if m in r["single"] else None)) for m in mods]
        has_all = all(m in _row(results, row)["single"] for m in mods)
        cells.append(_cell(_gather(results, row, single_mean)) if has_all else "—")
        cells += [_cell(_gather(results, row, lambda r, c=c: r["combined"].get(c))) for c in COMBOS]
        cells.append(_cell(_gather(results, row, lambda r: _mean_of(r.get("complementary") or {}, COMBOS))))
        kept = _gather(results, row, lambda r: r.get("retention"))
        cells.append(f"{np.mean(kept):.3f}" if kept else "—")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _lambda_table(results: dict[str, Any]) -> list[str]:
    """The λ each row's merge used, per weight (min–max over weights, mean over seeds): what auto chose."""
    lines = ["| model | λ used (mean over weights; min–max) |", "|---|---|"]
    for row in _rows(results):
        used = _gather(results, row, lambda r: r.get("lambda_used"))
        if used and "auto)" in row:
            u = np.asarray(used)
            lines.append(f"| {row} | {u[:, 1].mean():.3f} ({u[:, 0].min():.3f}–{u[:, 2].max():.3f}) |")
    return lines if len(lines) > 2 else []


def _curve_table(results: dict[str, Any]) -> list[str]:
    """The validation λ curve: per method (and k) the mean single-modality validation accuracy at every λ of the
    grid, mean ± std over seeds; the data the val-tuned rows chose from and `lambda: auto` is judged against."""
    cells: dict[str, dict[float, list[float]]] = {}
    for s in results["seeds"].values():
        for method, points in (s.get("val_curve") or {}).items():
            for pt in points:
                p = pt["params"]
                if "lambda" not in p:
                    continue
                row = method + (f" (k = {p['rank']})" if "rank" in p else "")
                cells.setdefault(row, {}).setdefault(round(p["lambda"], 4), []).append(pt["single"])
    if not cells:
        return []
    lams = sorted({lam for by in cells.values() for lam in by})
    lines = ["| method | " + " | ".join(f"λ = {lam:.3g}" for lam in lams) + " |", "|---" * (len(lams) + 1) + "|"]
    for row, by in cells.items():
        lines.append(f"| {row} | " + " | ".join(_cell(by.get(lam, [])) for lam in lams) + " |")
    return lines


def _choosing_k(results: dict[str, Any]) -> list[str]:
    """Per seed: the k inspect-spectrum suggests, against the ablation's best k (single-modality average)."""
    lines = ["| seed | suggested k (inspect-spectrum) | best k of the ablation | its single avg | suggested k's single avg |",
             "|---|---|---|---|---|"]
    for seed, s in results["seeds"].items():
        abl = s.get("rank_ablation") or {}
        if not abl:
            continue
        best = max(abl, key=lambda k: single_mean(abl[k]))
        sk = s.get("suggested_k")
        at = f"{100 * single_mean(abl[str(sk)]):.1f}" if sk is not None and str(sk) in abl else "not in the ablation"
        lines.append(f"| {seed} | {sk} | {best} | {100 * single_mean(abl[best]):.1f} | {at} |")
    return lines if len(lines) > 2 else []


def markdown(results: dict[str, Any]) -> str:
    """The whole results page: one section per regime."""
    out = [f"# Quality lab results ({results['mode']})", "",
           f"Accuracy in %, mean ± sample std over seeds where there are several. Wall time of the invocation that "
           f"wrote this: {results['wall_seconds']:.0f} s. How to read and rerun: docs/lab.md.", ""]
    regimes = results.get("regimes") or {"": results}
    for name, reg in regimes.items():
        out += _regime_markdown(name, reg)
    return "\n".join(out)


def _regime_markdown(name: str, results: dict[str, Any]) -> list[str]:
    seeds = ", ".join(results["seeds"])
    cpu = ", ".join(f"{s.get('cpu_seconds', float('nan')):.0f}" for s in results["seeds"].values())
    wall = ", ".join(f"{s.get('wall_seconds', float('nan')):.0f}" for s in results["seeds"].values())
    reg = results.get("regime") or {}
    h = "## " if name else "# "
    sub = "### " if name else "## "
    first = next(iter(results["seeds"].values()))
    setting = (f"LoRA rank r = {reg['rank']} (α = {reg['alpha']}), {reg['steps']} steps at lr {reg['lr']:g}, "
               f"{len(reg['modalities'])} specialists ({', '.join(reg['modalities'])}), Σr = {first['total_rank']}. "
               if reg else "")
    out = ([f"{h}Regime: {name}", ""] if name else []) + [
        f"{setting}Seeds: {seeds}; wall seconds per seed: {wall}; CPU seconds per seed: {cpu}.", "",
        f"{sub}Main table", "",
        "Single modality: mean over the three question types (chance ≈ 40 %); combinations: four options (chance "
        "25 %), never trained on; complementary: mean of the four degraded combinations; retention: cosine to the "
        "base's sentence embeddings (1 = untouched).", "",
        *_main_table(results), ""]
    drifts = _scalar_table(results, "drift", "‖Δ‖_F / ‖W₀‖_F (LoRA-targeted weights)")
    if drifts:
        out += [f"{sub}How far the LoRAs moved", "", *drifts, ""]
    lams = _lambda_table(results)
    if lams:
        out += [f"{sub}λ chosen by `lambda: auto`", "", *lams, ""]
    out += [f"{sub}Single modality", "", *_single_table(results), "",
            f"{sub}Per question type", "", *_qtype_table(results), "",
            f"{sub}Combined modalities, never trained on (four options, chance 25 %)", "",
            *_combined_table(results), ""]
    real = _real_table(results)
    if real:
        out += [f"{sub}Real human recordings (audio; 30 clips: Tux Paint en, Tux Paint en_GB, Asterisk en_US)", "",
                "Never trained on: the specialists heard only TTS. The interval resamples the 30 clips (each clip "
                "scored as its mean over question types and seeds); it, not the mean, is the result.", "", *real, ""]
    comp = _complementary_table(results)
    if comp:
        out += [f"{sub}Complementary evidence (degraded inputs, four options, chance 25 %)", "", *comp, ""]
    kept = _scalar_table(results, "retention", "cosine to base embeddings")
    if kept:
        out += [f"{sub}Language retention (mean cosine, base vs merged sentence embeddings of held-out English; 1 = untouched)",
                "", *kept, ""]
    ablation = _ablation_table(results)
    if ablation:
        out += [f"{sub}Rank ablation (SSAM)", "", *ablation, ""]
    choosing = _choosing_k(results)
    if choosing:
        out += [f"{sub}Choosing k from the spectrum", "", *choosing, ""]
    curve = _curve_table(results)
    if curve:
        out += [f"{sub}The λ curve on the validation split", "",
                "Mean single-modality accuracy on validation (40 items per modality), for every grid point; the "
                "val-tuned rows take the best.", "", *curve, ""]
    tuned = _tuned(results)
    if tuned:
        out += [f"{sub}Parameters chosen on the validation split", "", *tuned, ""]
    return out


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several results.json of one mode (e.g. seeds or regimes run in separate invocations) as one: every
    (regime, seed) they hold; a (regime, seed) present twice keeps the later part's. Wall time: the sum."""
    regimes: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, reg in part["regimes"].items():
            into = regimes.setdefault(name, {"regime": reg["regime"], "seeds": {}})
            into["seeds"].update(reg["seeds"])
    for reg in regimes.values():
        reg["seeds"] = {k: reg["seeds"][k] for k in sorted(reg["seeds"], key=int)}
    return {**parts[-1], "regimes": regimes, "wall_seconds": sum(p["wall_seconds"] for p in parts),
            "combined_from": len(parts)}


def main(argv: list[str] | None = None) -> int:
    """python -m benchmarks.lab.report OUT.json PART.json… : combine results files and write OUT.json + OUT.md."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("parts", type=Path, nargs="+")
    args = parser.parse_args(argv)
    results = combine([json.loads(p.read_text()) for p in args.parts])
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
