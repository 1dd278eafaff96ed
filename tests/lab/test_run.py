"""The runner's choices: the validation grid follows each method's parameters; --quick fails below chance."""

from __future__ import annotations

from benchmarks.lab import run


def test_auto_rows_only_for_methods_that_take_lambda_auto() -> None:
    assert run._takes_auto("ssam") and run._takes_auto("task_arithmetic")
    assert not run._takes_auto("ties") and not run._takes_auto("average")


def test_variants_that_are_the_same_merge_resolve_alike() -> None:
    assert run._resolved("ssam", {}, 4, 64) == run._resolved("ssam", {"lambda": 0.25}, 4, 64)  # k 128 → Σr, λ 1/n
    assert run._resolved("task_arithmetic", {}, 4, 64) == run._resolved("task_arithmetic", {"lambda": 1.0}, 4, 64)
    assert run._resolved("ssam", {"lambda": "auto"}, 4, 64) != run._resolved("ssam", {}, 4, 64)
    assert run._resolved("ssam", {"rank": 16}, 4, 64) != run._resolved("ssam", {}, 4, 64)


def test_regimes_k_below_the_total_rank_in_the_interfering_one() -> None:
    hard, low = run.REGIMES["interfering"], run.REGIMES["low"]
    assert hard.rank == 16 and len(hard.modalities) == 4 and 16 < hard.rank * len(hard.modalities)
    assert low.rank == 8 and hard.train_config(2).seed == 2 and hard.train_config(0).rank == 16
    # the joint reference on four modalities: a four times larger batch for the same steps, so each tower sees a
    # specialist's examples in a specialist's number of updates
    joint, one = hard.train_config(0, modalities=4), hard.train_config(0)
    assert joint.batch == 4 * one.batch and joint.steps == one.steps == hard.steps
    assert max(hard.ablation_ranks) == hard.rank * len(hard.modalities)


def test_grid_covers_lambda_and_rank_only_where_the_method_takes_them() -> None:
    curve = (1 / 6, 1 / 3, 3 ** -0.5, 1.0)  # 1/(2n), 1/n, 1/√n (norm matching of orthogonal updates), the sum
    ssam = run.grid("ssam", 3, 24)
    assert [(p["lambda"], p["rank"]) for p in ssam] == [(l, 8) for l in curve]  # k = Σr would be task arithmetic
    assert run.grid("average", 3, 24) == [{}]
    assert [p["lambda"] for p in run.grid("task_arithmetic", 3, 24)] == list(curve)
    assert run.lambda_curve(4) == (0.125, 0.25, 0.5, 1.0)  # n = 4: 1/√n = 2/n, listed once


def test_labels_are_unique_per_parameter_set() -> None:
    assert run._label("ssam", {"rank": 8, "lambda": 1 / 3}) == "ssam_lambda0.333_rank8"
    assert run._label("average", {}) == "average"


def _seed(single: float, combined: float) -> dict:
    res = {"single": {m: {"digit": single, "parity": single, "big": single} for m in run.MODALITIES},
           "combined": {"+".join(c): combined for c in run.COMBOS}}
    return {"rows": {"ssam (default)": res, "specialist: image": {"single": {"image": {"digit": 0.0}}, "combined": {}}}}


def test_quick_failures_flag_broken_merges_and_lost_language_deltas() -> None:
    assert run.quick_failures(_seed(0.9, 0.8)) == []
    failures = run.quick_failures(_seed(0.4, 0.3))  # at chance: every modality, the mean and the combinations
    assert len(failures) == len(run.MODALITIES) + 2 and all(f.startswith("ssam (default)") for f in failures)
    towers_only = run.quick_failures(_seed(0.75, 0.8))  # above chance, but what the towers give without a delta
    assert towers_only == ["ssam (default): mean accuracy over modalities 0.750 < 0.8"]


def test_space_is_part_of_the_label_except_the_default_dense() -> None:
    assert run._label("ties", {}, "core") == "ties_core"
    assert run._label("ties", {"lambda": 1.0}) == "ties_lambda1"


def test_spaces_are_the_non_dense_ones_each_method_supports() -> None:
    assert run._spaces("ssam") == []  # no factor space for SSAM; in core it is exactly its dense merge
    assert run._spaces("task_arithmetic") == ["factor"]
    assert set(run._spaces("ties")) == {"factor", "core"}


def test_quick_runs_committed_low_interference_specialists_at_their_own_rank() -> None:
    import json

    regime = run.folder_regime(run.QUICK_SPECIALISTS, "quick")
    assert regime.modalities == run.PERCEPTUAL
    config = json.loads((run.QUICK_SPECIALISTS / "image" / "adapter_config.json").read_text())
    assert regime.rank == config["r"] == 8
    demo = run.folder_regime(run.DEMO, "demo")  # the demo: the interfering regime's four
    assert demo.modalities == run.MODALITIES and demo.rank == run.REGIMES["interfering"].rank
