from __future__ import annotations

import pytest
import torch

from ssam_cli.errors import InputError
from ssam_cli.plan import NamedSource, Role, build_plan, layer_of
from ssam_cli.sources import open_source
from tests.fixtures.tiny import make_full_specialist, make_lora_specialist


def named(tiny, *names):
    return [NamedSource(n, open_source(tiny / n)) for n in names]


def test_roles_for_mixed_lora_and_full_specialists(tiny):
    plan = build_plan(open_source(tiny / "base"), named(tiny, "a", "b", "c"))
    roles = {t.name: t.role for t in plan.tensors}
    assert roles["model.layers.0.self_attn.q_proj.weight"] is Role.MERGE
    assert roles["model.layers.1.input_layernorm.weight"] is Role.AVERAGE
    assert roles["model.norm.weight"] is Role.AVERAGE
    q = next(t for t in plan.tensors if t.name == "model.layers.0.self_attn.q_proj.weight")
    assert [c.kind for c in q.contributions] == ["lowrank", "lowrank", "full"]


def test_only_lora_specialists_leave_untouched_tensors_to_copy(tiny):
    plan = build_plan(open_source(tiny / "base"), named(tiny, "a", "b"))
    assert plan.count(Role.MERGE) == 14 and plan.count(Role.AVERAGE) == 0
    assert {t.name for t in plan.of_role(Role.COPY)} >= {"model.embed_tokens.weight", "model.norm.weight"}


def test_processing_order_is_layer_by_layer(tiny):
    plan = build_plan(open_source(tiny / "base"), named(tiny, "a"))
    layers = [layer_of(t.name) for t in plan.tensors]
    assert layers == sorted(layers)


def test_keep_patterns_route_extra_tensors_per_specialist(tiny):
    extra = {"model.mm_projector.0.weight": torch.randn(32, 16)}
    make_full_specialist(tiny / "v", tiny / "base", seed=4, extra=extra)
    plan = build_plan(open_source(tiny / "base"), named(tiny, "v"), keep=["*mm_projector*"])
    assert [(k.specialist, k.key) for k in plan.kept] == [("v", "model.mm_projector.0.weight")]
    with pytest.raises(InputError, match=r"tensor model.mm_projector.0.weight is not in the base .*modules.keep"):
        build_plan(open_source(tiny / "base"), named(tiny, "v"))


def test_shape_mismatch_names_tensor_and_file(tiny):
    make_full_specialist(tiny / "bad", tiny / "base", seed=4, extra={"model.norm.weight": torch.ones(7)})
    with pytest.raises(InputError, match=r"specialist 'bad' \(.*bad\): tensor model.norm.weight has shape \(7,\)"):
        build_plan(open_source(tiny / "base"), named(tiny, "bad"))


def test_tensor_missing_from_a_full_specialist_is_an_error(tiny):
    from safetensors.torch import load_file, save_file

    path = tiny / "c" / "model.safetensors"
    t = load_file(str(path))
    del t["model.layers.1.mlp.up_proj.weight"]
    save_file(t, str(path))
    with pytest.raises(InputError, match="tensor model.layers.1.mlp.up_proj.weight of the base is missing"):
        build_plan(open_source(tiny / "base"), named(tiny, "c"))


def test_lora_target_missing_from_the_base_is_an_error(tiny):
    make_lora_specialist(tiny / "wide", seed=1, layers=3)
    with pytest.raises(InputError, match=r"LoRA target model\.layers\.2\.\S+ matches no weight of the base"):
        build_plan(open_source(tiny / "base"), named(tiny, "wide"))


def test_forced_average_for_2d(tiny):
    plan = build_plan(open_source(tiny / "base"), named(tiny, "c"), average=["*embed_tokens*"])
    role = {t.name: t.role for t in plan.tensors}
    assert role["model.embed_tokens.weight"] is Role.AVERAGE and role["lm_head.weight"] is Role.MERGE
