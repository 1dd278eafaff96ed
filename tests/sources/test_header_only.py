"""A merge into a low-rank output reads no base weight: a config-only base folder serves, a Hub base is read by its
safetensors headers (range requests, counted by the fake Hub), a `.bin`-only Hub base by its config alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from ssam_cli import api
from ssam_cli.errors import RecipeError
from ssam_cli.plan import Role
from tests.fixtures.tiny import make_base, make_full_specialist, make_lora_specialist, write_recipe
from tests.fixtures.torch_bin import llama_state_dict, write_bin_checkpoint
from tests.hub.fake_hub import FakeHub, fake_hub  # noqa: F401  (fixture)

HEADER = 100_001  # huggingface_hub reads the first 100 kB of a safetensors file, then the rest of a longer header


def lora_recipe(root: Path, base: str, fmt: str = "lora") -> Path:
    for name, seed in (("a", 1), ("b", 2)):
        if not (root / name).exists():
            make_lora_specialist(root / name, seed=seed)
    return write_recipe(root / "recipe.yaml", Path(base), [("a", Path("a")), ("b", Path("b"))],
                        parameters={"rank": 4}, output={"path": f"out-{base.replace('/', '-')}", "format": fmt})


def base_row(result) -> dict:
    return next(r for r in result.manifest.as_json()["inputs"] if r["name"] == "base")


def test_a_config_only_base_folder_gives_the_merge_its_weights_would(tmp_path: Path):
    make_base(tmp_path / "base")
    (tmp_path / "config-only").mkdir()
    shutil.copy(tmp_path / "base" / "config.json", tmp_path / "config-only" / "config.json")
    with_weights = api.merge(lora_recipe(tmp_path, "base"))
    config_only = api.merge(lora_recipe(tmp_path, "config-only"))
    a = load_file(str(with_weights.output / "adapter_model.safetensors"))
    b = load_file(str(config_only.output / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert base_row(config_only)["read"] == "header" and base_row(with_weights)["read"] == "header"
    assert base_row(config_only)["shapes_from"] == "config.json and the specialists' adapters"
    assert base_row(config_only)["files"] == []
    from ssam_cli.commands.render import plan_table

    caption = plan_table(api.validate(lora_recipe(tmp_path, "config-only"))).caption
    assert "base: read by header only (config.json and the specialists' adapters); no base weight is read" in caption


def test_an_adapter_the_config_does_not_fit_is_one_line_naming_config_json(tmp_path: Path):
    make_base(tmp_path / "base")
    (tmp_path / "config-only").mkdir()
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    (tmp_path / "config-only" / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(RecipeError, match=r"base.path: specialist 'a' \(.*\): LoRA on model.layers.0.mlp.\w+_proj"
                                          r".weight has shape \(\d+, \d+\), .*config-only/config.json gives \(.*40.*\)$"):
        api.validate(lora_recipe(tmp_path, "config-only"))


def test_full_specialists_or_a_full_output_still_need_the_base_weights(tmp_path: Path):
    make_full_specialist(tmp_path / "c", make_base(tmp_path / "base"), seed=3)
    (tmp_path / "config-only").mkdir()
    shutil.copy(tmp_path / "base" / "config.json", tmp_path / "config-only" / "config.json")
    with pytest.raises(RecipeError, match="base.path: .*config-only: no model.safetensors"):
        api.validate(lora_recipe(tmp_path, "config-only", fmt="full"))
    recipe = write_recipe(tmp_path / "full.yaml", Path("config-only"), [("c", Path("c"))], output={"format": "lora"})
    with pytest.raises(RecipeError, match="base.path: .*config-only: no model.safetensors"):
        api.validate(recipe)


def upload(hub: FakeHub, repo_id: str, folder: Path, **extra: bytes) -> str:
    return hub.create(repo_id, {**{p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}, **extra})


def test_a_hub_base_is_read_by_its_headers_and_no_weight_file_is_downloaded(tmp_path: Path, fake_hub: FakeHub):
    base = make_base(tmp_path / "src" / "base", layers=12, shards=3)  # shards of ~140 kB, longer than one range
    commit = upload(fake_hub, "org/base", base, **{"README.md": b"---\nlicense: mit\n---\n"})
    result = api.merge(lora_recipe(tmp_path / "work", "org/base"))
    local = api.merge(lora_recipe(tmp_path / "work", str(base)))

    served = fake_hub.downloaded("org/base")
    sizes = {p: len(d) for p, d in fake_hub.files("org/base").items()}
    shards = sorted(p for p in sizes if p.endswith(".safetensors"))
    assert len(shards) == 3 and all(sizes[s] > HEADER for s in shards)
    assert set(served) == {"config.json", "README.md", "model.safetensors.index.json", *shards}
    for s in shards:  # header bytes only, by range requests; never a whole file
        assert served[s] <= HEADER < sizes[s]
        assert {(r[2], r[3]) for r in fake_hub.ranges if r[1] == s} == {(0, HEADER)}
    assert not list((tmp_path / "hf-cache").rglob("*.safetensors"))  # no weight file in the Hugging Face cache
    print(f"bytes served for org/base: {sum(served.values())} of {sum(sizes.values())} "
          f"(weights: {sum(served[s] for s in shards)} of {sum(sizes[s] for s in shards)})")
    row = base_row(result)
    assert (row["commit"], row["read"], row["shapes_from"], row["license"]) == \
        (commit, "header", "safetensors headers on the Hub (range requests)", "mit")
    a = load_file(str(result.output / "adapter_model.safetensors"))
    b = load_file(str(local.output / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_a_bin_only_hub_base_needs_only_its_config(tmp_path: Path, fake_hub: FakeHub):
    base = write_bin_checkpoint(tmp_path / "src" / "base", llama_state_dict(2), 2, "40KB")
    commit = upload(fake_hub, "lmsys/tiny-vicuna", base)
    assert any(p.endswith(".bin") for p in fake_hub.files("lmsys/tiny-vicuna"))
    result = api.merge(lora_recipe(tmp_path / "work", "lmsys/tiny-vicuna"))
    assert set(fake_hub.downloaded("lmsys/tiny-vicuna")) == {"config.json"} and not fake_hub.ranges
    row = base_row(result)
    assert (row["commit"], row["read"], row["shapes_from"]) == \
        (commit, "header", "config.json and the specialists' adapters")
    assert yaml.safe_load(result.manifest.recipe_text)["base"] == "lmsys/tiny-vicuna"


def test_a_hub_base_in_a_subfolder_offline_falls_back_to_its_cached_config(tmp_path: Path, fake_hub: FakeHub,
                                                                            monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    base = make_base(tmp_path / "src" / "base", layers=12)  # one model.safetensors of ~450 kB
    fake_hub.create("org/bundle", {f"text/{p.name}": p.read_bytes() for p in base.iterdir()})
    recipe = lora_recipe(tmp_path / "work", "org/bundle")
    data = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**data, "base": {"path": "org/bundle", "subfolder": "text"}}))
    online = api.validate(recipe)
    assert online.inputs.base.describe()["shapes_from"] == "safetensors headers on the Hub (range requests)"
    assert [(r[1], r[2], r[3]) for r in fake_hub.ranges] == [("text/model.safetensors", 0, HEADER)]
    assert set(fake_hub.downloaded("org/bundle")) == {"text/config.json", "text/model.safetensors"}

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = api.validate(recipe)
    assert offline.inputs.base.describe()["shapes_from"] == "config.json and the specialists' adapters"
    assert {t.name: t.shape for t in offline.plan.of_role(Role.MERGE)} == \
        {t.name: t.shape for t in online.plan.of_role(Role.MERGE)}
