"""Every method end to end through the CLI on tiny checkpoints, LoRA and full specialists: the written
checkpoint loads in transformers, and each merged weight is base + the method applied to the true updates.

The true updates come from the fixture's files (tests.fixtures.tiny.known_update / known_factors: safetensors
itself and s = alpha/r), never from ssam_cli's readers, so a reading bug cannot cancel out of the comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssam_cli.cli import app
from ssam_cli.deltas import Delta, DenseDelta, LowRankDelta
from ssam_cli.seeds import tensor_seed
from ssam_cli.methods import REGISTRY
from ssam_cli.methods.base import MergeContext
from ssam_cli.sources import open_source
from tests.fixtures.tiny import (known_factors, known_update, make_base, make_full_specialist, make_lora_specialist,
                                 write_recipe)
from tests.reference import core_space_reference, rel_err, ties_reference

Q = "model.layers.1.self_attn.q_proj.weight"
FAST = {"wudi": {"iterations": 40}, "optmerge": {"iterations": 40}}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    base = make_base(root / "base")
    make_lora_specialist(root / "la", seed=1)
    make_lora_specialist(root / "lb", seed=2)
    make_full_specialist(root / "fa", base, seed=3)
    make_full_specialist(root / "fb", base, seed=4, rank=None)
    return root


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def true_deltas(root: Path, names: list[str], tensor: str) -> tuple[torch.Tensor, list[Delta]]:
    """The base value and each specialist's update from the fixture's files: factored (B, A, alpha/r) for an
    adapter, W_i − W_0 for a full fine-tune."""
    base = load_file(str(root / "base" / "model.safetensors"))[tensor]
    out: list[Delta] = []
    for n in names:
        pair = known_factors(root / n, tensor) if (root / n / "adapter_config.json").is_file() else None
        out.append(LowRankDelta(*pair) if pair else DenseDelta(known_update(root / n, tensor, root / "base").float()))
    return base, out


@pytest.mark.parametrize("kind", ["lora", "full"])
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_method_merges_end_to_end(zoo, method, kind):
    names = ["la", "lb"] if kind == "lora" else ["fa", "fb"]
    out = f"out-{method}-{kind}"
    params = FAST.get(method, {})
    recipe = write_recipe(zoo / f"{out}.yaml", Path("base"), [(n, Path(n)) for n in names], method=method,
                          parameters=params, output={"path": out, "dtype": "float32"})
    result = cli("merge", str(recipe), "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    folder = zoo / out
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["method"] == method
    merged = load_file(str(folder / "model.safetensors"))
    assert set(merged) == set(open_source(zoo / "base").tensors)
    assert all(torch.isfinite(t).all() for t in merged.values())

    base, deltas = true_deltas(zoo, names, Q)
    spec = REGISTRY[method]
    # the method itself is checked against float64 references in tests/methods; the seed rule end to end in
    # tests/test_weights_and_seed.py: here the pipeline must hand the method the true updates
    ctx = MergeContext(Q, len(names), torch.device("cpu"), torch.Generator().manual_seed(tensor_seed(0, Q)))
    expected = spec.merge(deltas, [1.0] * len(names), spec.params.model_validate(params), ctx)
    assert rel_err(merged[Q] - base, expected.delta.dense()) < 1e-5


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_baseline_output_loads_in_transformers(zoo, kind):
    """The writer is the same for every method (names, shapes and dtypes are checked above): load one."""
    from transformers import LlamaForCausalLM

    folder = zoo / f"out-ties-{kind}"
    if not folder.exists():
        test_method_merges_end_to_end(zoo, "ties", kind)

    model, info = LlamaForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing (randomly initialised), unexpected or mismatched
    written = load_file(str(folder / "model.safetensors"))
    state = model.state_dict()
    assert set(state) == set(written) and all(torch.equal(state[k], written[k]) for k in written)
    base = LlamaForCausalLM.from_pretrained(zoo / "base")
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        logits, base_logits = model(tokens).logits, base(tokens).logits
    assert torch.isfinite(logits).all() and not torch.allclose(logits, base_logits, atol=1e-4)


def test_methods_command_lists_every_method_and_parameter():
    result = cli("methods")
    assert result.exit_code == 0
    for name, spec in REGISTRY.items():
        assert name in result.output
        for field_name, f in spec.params.model_fields.items():
            assert (f.alias or field_name) in result.output


@pytest.mark.parametrize("space", ["dense", "core"])
def test_space_is_recorded_and_core_space_writes_a_lora_adapter(zoo, space):
    out = f"out-ties-{space}"
    recipe = write_recipe(zoo / f"{out}.yaml", Path("base"), [("la", Path("la")), ("lb", Path("lb"))], method="ties",
                          space=space, output={"path": out, "format": "lora" if space == "core" else "full",
                                               "dtype": "float32"})
    result = cli("merge", str(recipe), "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    manifest = json.loads((zoo / out / "manifest.json").read_text())
    assert manifest["tensors"][Q]["space"] == space
    base = load_file(str(zoo / "base" / "model.safetensors"))[Q].double()
    if space == "dense":
        got = load_file(str(zoo / out / "model.safetensors"))[Q].double()
        want = ties_reference([known_update(zoo / n, Q, zoo / "base") for n in ("la", "lb")], 0.2)
    else:
        got = peft_merged(zoo / "base", zoo / out)[Q].double()
        want = core_space_reference([known_factors(zoo / n, Q) for n in ("la", "lb")],
                                    lambda cores: ties_reference(cores, 0.2))
    assert rel_err(got - base, want) < 1e-5


def peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """The base model with the adapter applied by PEFT itself (the tool that reads it), as a state dict."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapter)
    return {k: v.float() for k, v in model.merge_and_unload().state_dict().items()}


def direct_global_ties(updates: dict[str, list[torch.Tensor]], density: float, lam: float
                       ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """TIES with global trimming on the concatenated model, as MLLMerging's modality line flattens it."""
    names = list(updates)
    n = len(updates[names[0]])
    flat = [torch.cat([updates[k][i].reshape(-1) for k in names]) for i in range(n)]
    thresholds = [float(torch.topk(f.abs(), int(density * f.numel())).values[-1]) for f in flat]
    stacked = torch.stack([f * (f.abs() >= t) for f, t in zip(flat, thresholds)])
    agree = (torch.sign(stacked) == torch.sign(stacked.sum(0))) & (stacked != 0)
    merged = (stacked * agree).sum(0) / agree.sum(0).clamp_min(1) * lam
    out, start = {}, 0
    for k in names:
        size = updates[k][0].numel()
        out[k] = merged[start:start + size].reshape(updates[k][0].shape)
        start += size
    return out, thresholds


def merged_updates(root: Path, out: str) -> dict[str, torch.Tensor]:
    """merged − base for every weight the manifest says was merged."""
    manifest = json.loads((root / out / "manifest.json").read_text())
    merged = load_file(str(root / out / "model.safetensors"))
    base = open_source(root / "base")
    return {k: merged[k] - base.read(k) for k, e in manifest["tensors"].items() if e["role"] == "merge"}


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_global_ties_is_ties_on_the_concatenated_model(zoo, kind):
    names = ["la", "lb"] if kind == "lora" else ["fa", "fb"]
    out = f"out-ties-global-{kind}"
    params = {"density": 0.1, "trim": "global", "lambda": 0.8}
    recipe = write_recipe(zoo / f"{out}.yaml", Path("base"), [(n, Path(n)) for n in names], method="ties",
                          parameters=params, output={"path": out, "dtype": "float32"})
    result = cli("merge", str(recipe), "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    got = merged_updates(zoo, out)
    updates = {k: [d.dense() for d in true_deltas(zoo, names, k)[1]] for k in got}
    want, thresholds = direct_global_ties(updates, 0.1, 0.8)
    for k in got:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
    manifest = json.loads((zoo / out / "manifest.json").read_text())
    record = manifest["prepass"]
    assert record["thresholds"] == thresholds and record["weights"] == len(got) and record["specialists"] == names
    assert record["entries"] == sum(t.numel() for t in got.values())
    assert all(manifest["tensors"][k]["trim"] == "global" for k in got)
    # a global threshold is not the per-tensor one: some weight keeps far more or fewer than 10 %
    fractions = [f for k in got for f in manifest["tensors"][k]["kept_fraction"]]
    assert max(fractions) > 0.15 or min(fractions) < 0.05


def test_per_tensor_trim_runs_no_prepass(zoo):
    recipe = write_recipe(zoo / "out-ties-pt.yaml", Path("base"), [("fa", Path("fa")), ("fb", Path("fb"))],
                          method="ties", output={"path": "out-ties-pt", "dtype": "float32"})
    assert cli("merge", str(recipe), "-q", "--overwrite").exit_code == 0
    manifest = json.loads((zoo / "out-ties-pt" / "manifest.json").read_text())
    assert "prepass" not in manifest and manifest["tensors"][Q]["trim"] == "per_tensor"


def test_global_dare_ties_trims_the_rescaled_updates_over_the_model(zoo):
    from ssam_cli.methods.dare import drop_and_rescale

    out = "out-dare-ties-global"
    recipe = write_recipe(zoo / f"{out}.yaml", Path("base"), [("fa", Path("fa")), ("fb", Path("fb"))],
                          method="dare_ties", parameters={"p": 0.3, "density": 0.5, "trim": "global"},
                          output={"path": out, "dtype": "float32"})
    assert cli("merge", str(recipe), "-q", "--overwrite").exit_code == 0
    got = merged_updates(zoo, out)
    updates = {}
    for k in got:
        g = torch.Generator().manual_seed(tensor_seed(0, k))
        updates[k] = [drop_and_rescale(d.dense(), 0.3, g) for d in true_deltas(zoo, ["fa", "fb"], k)[1]]
    want, thresholds = direct_global_ties(updates, 0.5, 1.0)
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)
    assert json.loads((zoo / out / "manifest.json").read_text())["prepass"]["thresholds"] == thresholds


@pytest.mark.parametrize("space", ["core", "factor"])
def test_global_ties_in_core_and_factor_space_trims_what_the_method_sees(zoo, space):
    """The pool is every core (resp. every lora_A and lora_B) entry; each weight then merges with those thresholds."""
    from dataclasses import replace

    from ssam_cli.methods.base import MergeResult
    from ssam_cli.methods.global_trim import GlobalThresholds
    from ssam_cli.spaces import merge_in_space

    out = f"out-ties-global-{space}"
    params = {"density": 0.2, "trim": "global"}
    recipe = write_recipe(zoo / f"{out}.yaml", Path("base"), [("la", Path("la")), ("lb", Path("lb"))],
                          method="ties", space=space, parameters=params, output={"path": out, "dtype": "float32"})
    result = cli("merge", str(recipe), "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    got = merged_updates(zoo, out)
    spec = REGISTRY["ties"]
    seen: list = []

    def record(deltas, weights, p, ctx):
        seen.append([d.dense() for d in deltas])
        return MergeResult(DenseDelta(torch.zeros(deltas[0].shape)))

    cpu = torch.device("cpu")
    for k in got:
        merge_in_space(replace(spec, merge=record), true_deltas(zoo, ["la", "lb"], k)[1], [1.0, 1.0],
                       spec.params.model_validate(params), MergeContext(k, 2, cpu), space)
    pool = [torch.cat([group[i].reshape(-1) for group in seen]) for i in range(2)]
    thresholds = [float(torch.topk(f.abs(), int(0.2 * f.numel())).values[-1]) for f in pool]
    record_ = json.loads((zoo / out / "manifest.json").read_text())["prepass"]
    assert record_["thresholds"] == thresholds and record_["entries"] == pool[0].numel()
    state = GlobalThresholds(0.2, pool[0].numel(), thresholds, record_["kept"])
    for k in got:
        want = merge_in_space(spec, true_deltas(zoo, ["la", "lb"], k)[1], [1.0, 1.0],
                              spec.params.model_validate(params), MergeContext(k, 2, cpu, prepass=state), space)
        assert torch.allclose(got[k], want.delta.dense(), atol=1e-6), k


def test_global_trim_pools_the_weights_that_ask_for_it(zoo):
    def merge(out: str, override: dict):
        recipe = write_recipe(zoo / f"{out}.yaml", Path("base"), [("fa", Path("fa")), ("fb", Path("fb"))],
                              method="ties", parameters={"trim": "global"}, output={"path": out},
                              modules={"overrides": [{"pattern": "*.mlp.*", "parameters": override}]})
        return cli("merge", str(recipe), "-q", "--overwrite")

    clash = merge("out-ties-clash", {"density": 0.3})
    assert clash.exit_code != 0 and "one density" in str(clash.exception)  # before any tensor is read
    assert not (zoo / "out-ties-clash").exists()
    assert merge("out-ties-mixed", {"density": 0.3, "trim": "per_tensor"}).exit_code == 0
    manifest = json.loads((zoo / "out-ties-mixed" / "manifest.json").read_text())
    merged = {k: e for k, e in manifest["tensors"].items() if e["role"] == "merge"}
    assert manifest["prepass"]["weights"] == sum(".mlp." not in k for k in merged)
    assert all(e["trim"] == ("per_tensor" if ".mlp." in k else "global") for k, e in merged.items())
