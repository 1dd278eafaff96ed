"""End to end through the engine on tiny checkpoints: values against the float64 reference, atomicity,
determinism, LoRA output ≡ full output, modality files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from ssam_cli import api
from ssam_cli.engine import prepare, run_merge
from ssam_cli.errors import UserError
from ssam_cli.methods import REGISTRY
from ssam_cli.recipe import load_recipe
from ssam_cli.sources import open_source
from tests.fixtures.tiny import known_update, make_full_specialist, write_recipe
from tests.reference import rel_err, ssam_reference

Q = "model.layers.1.self_attn.q_proj.weight"
DOWN = "model.layers.0.mlp.down_proj.weight"


def merge(tiny, names, **fields):
    r = write_recipe(tiny / "recipe.yaml", tiny / "base", [(n, tiny / n) for n in names], **fields)
    return api.merge(r, overwrite=True)


def weights(folder):
    out = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


def true_deltas(tiny, names, tensor):
    """The base value and each specialist's update in float64, from the fixture's files (not ssam_cli's readers)."""
    base = load_file(str(tiny / "base" / "model.safetensors"))[tensor]
    return base, [known_update(tiny / n, tensor, tiny / "base") for n in names]


@pytest.mark.parametrize("tensor", [Q, DOWN])
def test_full_output_equals_base_plus_algorithm_1(tiny, tensor):
    result = merge(tiny, ["a", "b", "c"], parameters={"rank": 7}, output={"dtype": "float32"})
    base, deltas = true_deltas(tiny, ["a", "b", "c"], tensor)
    got = weights(result.output)[tensor] - base
    assert rel_err(got, ssam_reference(deltas, 7, 1 / 3)) < 1e-5
    entry = result.manifest.tensors[tensor]
    assert entry["role"] == "merge" and entry["rank_used"] == 7 and entry["specialists"] == ["a", "b", "c"]


def test_norms_are_the_mean_of_the_specialists(tiny):
    result = merge(tiny, ["a", "c"], output={"dtype": "float32"})
    name = "model.layers.0.input_layernorm.weight"
    base, c = (load_file(str(tiny / n / "model.safetensors"))[name] for n in ("base", "c"))
    assert torch.allclose(weights(result.output)[name], (base + c) / 2, atol=1e-6)


def test_lora_output_applied_to_the_base_equals_the_full_output(tiny):
    full = weights(merge(tiny, ["a", "b"], parameters={"rank": 5}, output={"dtype": "float32"}).output)
    lora = merge(tiny, ["a", "b"], parameters={"rank": 5}, output={"path": "lo", "format": "lora", "dtype": "float32"})
    cfg = json.loads((lora.output / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 5 and len(cfg["target_modules"]) == 14
    base = weights(tiny / "base")
    merged = [k for k, e in lora.manifest.tensors.items() if e["role"] == "merge"]
    assert len(merged) == 14
    for name in merged:  # the adapter read as PEFT would (safetensors, alpha/r), not by ssam_cli's reader
        applied = base[name].double() + known_update(lora.output, name, tiny / "base")
        assert torch.allclose(applied, full[name].double(), atol=1e-6), name
    assert lora.manifest.inputs[0].files == []  # base weights were not read, so not hashed


def test_manifest_records_inputs_hashes_parameters_and_output_files(tiny):
    result = merge(tiny, ["a", "c"], parameters={"rank": 3, "lambda": 0.8}, seed=7)
    m = json.loads((result.output / "manifest.json").read_text())
    assert m["method"] == "ssam" and m["parameters"] == {"exact": False, "lambda": 0.8, "rank": 3} and m["seed"] == 7
    spec_a = next(i for i in m["inputs"] if i["name"] == "a")
    sha = hashlib.sha256((tiny / "a" / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert {"path": "adapter_model.safetensors", "sha256": sha} .items() <= {
        k: v for f in spec_a["files"] if f["path"] == "adapter_model.safetensors" for k, v in f.items()}.items()
    listed = {f["path"] for f in m["files"]}
    assert {"model.safetensors", "config.json"} <= listed and "manifest.json" not in listed
    assert m["summary"]["tensors"]["merge"] == 16


def test_reruns_are_bit_identical(tiny):
    first = (merge(tiny, ["a", "b", "c"]).output / "model.safetensors").read_bytes()
    second = (merge(tiny, ["a", "b", "c"]).output / "model.safetensors").read_bytes()
    assert first == second


def test_small_shards_write_an_index_that_covers_every_tensor(tiny):
    result = merge(tiny, ["a"], output={"shard_size": "20KB"})
    index = json.loads((result.output / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(open_source(tiny / "base").tensors)
    assert len(set(index["weight_map"].values())) > 1


def test_a_merge_killed_midway_leaves_no_target(tiny, monkeypatch):
    import ssam_cli.methods.ssam as ssam_method

    calls = {"n": 0}
    real = ssam_method.SPEC.merge

    def dies_on_third(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setitem(REGISTRY, "ssam", dataclasses.replace(ssam_method.SPEC, merge=dies_on_third))
    with pytest.raises(KeyboardInterrupt):
        merge(tiny, ["a", "b"])
    assert not (tiny / "out").exists()
    assert not [p for p in tiny.iterdir() if p.name.startswith(".out")]


def test_modality_tensors_are_kept_byte_identical_per_specialist(tiny):
    proj = torch.randn(32, 16).to(torch.bfloat16)
    make_full_specialist(tiny / "v", tiny / "base", seed=9, extra={"model.mm_projector.weight": proj})
    result = merge(tiny, ["a", "v"], modules={"keep": ["*mm_projector*"]})
    kept = load_file(str(result.output / "modalities" / "v.safetensors"))
    assert torch.equal(kept["model.mm_projector.weight"], proj)
    assert "model.mm_projector.weight" not in weights(result.output)
    assert result.manifest.modalities["v"]["tensors"] == ["model.mm_projector.weight"]


def test_lora_format_with_a_full_specialist_is_refused_before_merging(tiny):
    r = write_recipe(tiny / "recipe.yaml", tiny / "base", [("a", tiny / "a"), ("c", tiny / "c")],
                     output={"path": "o", "format": "lora"})
    with pytest.raises(UserError, match="changed in full by specialist 'c'.*use format: full"):
        prepare(load_recipe(r))


def test_cuda_without_cuda_is_a_one_line_error(tiny):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = write_recipe(tiny / "recipe.yaml", tiny / "base", [("a", tiny / "a")], device="cuda")
    with pytest.raises(UserError, match="device: cuda requested but this machine has no CUDA device"):
        run_merge(prepare(load_recipe(r)), show_progress=False)


def test_output_dtype_auto_keeps_base_dtype_and_bfloat16_casts(tiny):
    result = merge(tiny, ["a"], output={"dtype": "bfloat16"})
    assert weights(result.output)[Q].dtype == torch.bfloat16
    result = merge(tiny, ["a"])
    assert weights(result.output)[Q].dtype == torch.float32


def test_prefetch_keeps_order_and_reads_at_most_depth_ahead():
    import threading

    from ssam_cli.stream import prefetched

    in_flight, seen = [], []
    lock = threading.Lock()
    consumed = {"n": 0}

    def read(i):
        with lock:
            in_flight.append(i - consumed["n"])
        return i

    for item in prefetched(list(range(10)), read, depth=2):
        seen.append(item)
        consumed["n"] += 1
    assert seen == list(range(10))
    assert max(in_flight) <= 2


def test_read_inputs_gives_one_delta_per_specialist(tiny):
    from ssam_cli.deltas import DenseDelta, LowRankDelta
    from ssam_cli.stream import read_inputs, to_deltas

    r = write_recipe(tiny / "recipe.yaml", tiny / "base", [(n, tiny / n) for n in ("a", "c")])
    p = prepare(load_recipe(r))
    t = next(t for t in p.plan.tensors if t.name == Q)
    _, (a, c) = to_deltas(read_inputs(p.inputs, t, need_base=False), 2, torch.device("cpu"))
    assert isinstance(a, LowRankDelta) and isinstance(c, DenseDelta)
    _, expected = true_deltas(tiny, ["c"], Q)
    assert torch.allclose(c.dense().double(), expected[0])


def test_manifest_carries_the_recipe_verbatim_and_the_merge_writes_its_model_card(tiny):
    result = merge(tiny, ["a", "b"], parameters={"rank": 3})
    text = (tiny / "recipe.yaml").read_text()
    assert result.manifest.recipe_text == text
    card = (result.output / "README.md").read_text()
    assert text.strip() in card and "ssam" in card.split("---")[1]


def test_spectrum_summary_of_a_lora_merge_matches_inspect_spectrum(tiny):

    result = merge(tiny, ["a", "b"], parameters={"rank": 3})
    r = load_recipe(tiny / "recipe.yaml")
    report = api.inspect_spectrum(r)
    summary = result.manifest.spectrum
    assert summary["suggested_k"] == report.suggested()
    assert summary["weights"][Q]["energy_at_k_left"] == pytest.approx(
        next(w for w in report.weights if w.name == Q).figures()["energy_at_k_left"])


def test_spectrum_is_off_by_default_for_full_finetunes_and_on_when_asked(tiny):
    assert merge(tiny, ["a", "c"]).manifest.spectrum is None
    r = write_recipe(tiny / "recipe.yaml", tiny / "base", [(n, tiny / n) for n in ("a", "c")])
    asked = run_merge(prepare(load_recipe(r)), show_progress=False, overwrite=True, spectrum=True)
    assert asked.manifest.spectrum["weights"][Q]["k_used"] >= 1


def test_the_spectrum_summary_of_an_ssam_lora_merge_reuses_the_merge_bases(tiny, monkeypatch):
    import ssam_cli.spectrum_report as spectrum

    def recompute(*_args, **_kwargs):
        raise AssertionError("consensus bases recomputed for the spectrum summary")

    monkeypatch.setattr(spectrum, "consensus_bases", recompute)
    assert merge(tiny, ["a", "b"], parameters={"rank": 3}).manifest.spectrum["weights"][Q]["k_used"] == 3


def test_lora_merges_run_on_one_thread_per_worker_by_default_and_threads_can_be_set(tiny):
    before = torch.get_num_threads()
    assert merge(tiny, ["a", "b"]).manifest.threads == 1
    r = write_recipe(tiny / "recipe.yaml", tiny / "base", [(n, tiny / n) for n in ("a", "b")])
    assert run_merge(prepare(load_recipe(r)), show_progress=False, overwrite=True, threads=2).manifest.threads == 2
    assert merge(tiny, ["a", "c"]).manifest.threads == before  # a full fine-tune: torch's own setting
    assert torch.get_num_threads() == before  # restored


def test_two_merge_workers_write_exactly_what_one_writes_in_plan_order(tiny):
    r = write_recipe(tiny / "recipe.yaml", tiny / "base", [(n, tiny / n) for n in ("a", "b")],
                     parameters={"rank": 3}, output={"path": "out", "format": "lora"})
    parallel = run_merge(prepare(load_recipe(r)), show_progress=False, overwrite=True)
    assert parallel.manifest.workers == (2 if (os.cpu_count() or 1) >= 2 else 1)
    first = (parallel.output / "adapter_model.safetensors").read_bytes()
    order = list(parallel.manifest.tensors)
    serial = run_merge(prepare(load_recipe(r)), show_progress=False, overwrite=True, threads=1)
    assert serial.manifest.workers == 1
    assert (serial.output / "adapter_model.safetensors").read_bytes() == first
    assert list(serial.manifest.tensors) == order


def test_a_merge_spreads_over_every_device_the_schedule_names_and_writes_the_same_adapter(tiny, monkeypatch):
    """Two CPU devices stand in for two GPUs: each worker is bound to one, the adapter equals a one-worker merge."""
    import ssam_cli.engine as engine_module
    import ssam_cli.stream as stream_module
    from ssam_cli.stream import Schedule

    r = write_recipe(tiny / "recipe.yaml", tiny / "base", [(n, tiny / n) for n in ("a", "b")],
                     parameters={"rank": 3}, output={"path": "out", "format": "lora"})
    serial = (api.merge(r, overwrite=True, threads=1).output / "adapter_model.safetensors").read_bytes()
    devices = (torch.device("cpu", 0), torch.device("cpu", 1))
    bound: list[torch.device] = []
    monkeypatch.setattr(stream_module, "bind_device", bound.append)
    monkeypatch.setattr(engine_module, "schedule",
                        lambda plan, device, threads=None: Schedule(torch.device("cpu"), 2, 1, devices))
    spread = api.merge(r, overwrite=True)
    assert sorted(bound, key=str) == list(devices)
    assert (spread.output / "adapter_model.safetensors").read_bytes() == serial
