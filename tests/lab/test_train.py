"""The exported specialist is a PEFT adapter that both ssam's LoRA source and PEFT read as the same update."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")
pytest.importorskip("transformers")

from benchmarks.lab import loaders, train  # noqa: E402
from benchmarks.lab import model as lm  # noqa: E402
from ssam_cli.sources.lora import LoraAdapter  # noqa: E402
from tests.lab.helpers import make_tiny_base, make_tiny_specialist  # noqa: E402


@pytest.fixture
def tiny_lab(tmp_path: Path) -> tuple[Path, Path]:
    base = make_tiny_base(tmp_path / "base")
    return base, make_tiny_specialist(base, tmp_path / "image", "image", seed=1)


def test_adapter_keys_name_base_tensors_and_tower_is_kept(tiny_lab: tuple[Path, Path]) -> None:
    base, adapter = tiny_lab
    src = LoraAdapter(adapter)
    base_names = set(load_file(str(base / "model.safetensors")))
    # 6 linear layers × 2 blocks, each targeting a base weight by its exact name
    assert len(src.lowrank) == 12
    assert all(f"{name}.weight" in base_names or name in base_names for name in src.lowrank)
    assert src.tensors and all(k.startswith("modality.image.") for k in src.tensors)


def test_ssam_source_and_peft_agree_on_the_update(tiny_lab: tuple[Path, Path]) -> None:
    """ΔW read by ssam (scale·B·A) equals what PEFT folds into the weight, in float64."""
    base, adapter = tiny_lab
    src = LoraAdapter(adapter)
    before = load_file(str(base / "model.safetensors"))
    after = loaders._with_adapter(base, adapter).state_dict()
    for name in src.lowrank:
        weight = name if name.endswith(".weight") else f"{name}.weight"
        delta = src.read_lowrank(name).dense().double()
        assert delta.abs().max() > 0
        torch.testing.assert_close(after[weight].double() - before[weight].double(), delta, atol=1e-5, rtol=1e-4)


def test_specialist_tower_round_trips(tiny_lab: tuple[Path, Path]) -> None:
    base, adapter = tiny_lab
    raw = load_file(str(adapter / "adapter_model.safetensors"))
    tensors = {k[len("base_model.model."):]: v for k, v in raw.items() if ".modality." in f".{k}"}
    tower = loaders.tower_from_tensors(tensors, "image")
    x = torch.rand(3, *lm.FEATURE_SHAPES["image"])
    assert tower(x).shape == (3, lm.SOFT_TOKENS, lm.HIDDEN)
    assert loaders.adapter_modality(adapter) == "image"


def test_missing_tower_tensors_fail_loudly() -> None:
    with pytest.raises(ValueError, match="modality.audio"):
        loaders.tower_from_tensors({"modality.image.projector.weight": torch.zeros(1)}, "audio")


def test_damc_specialist_trains_its_token_lora_and_keeps_it_through_a_merge(tmp_path: Path) -> None:
    """A few steps of the DAMC-style variant on the tiny base: the token LoRA learns (B leaves zero), is
    exported inside the tower, comes back from `ssam merge`'s modality file, and changes the answer."""
    from benchmarks.lab import merge
    from benchmarks.lab.data import ModalityData, Split

    base = make_tiny_base(tmp_path / "base")
    rng = np.random.default_rng(0)
    split = Split(rng.random((40, 64)).astype(np.float32), rng.integers(0, 10, 40))
    cfg = train.TrainConfig(steps=3, batch=8, token_lora=True)
    model = train.train_specialist(base, ModalityData("image", split, split, split), cfg)
    trained = model.towers["image"].token_lora
    assert max(float(b.abs().max()) for b in trained.B.values()) > 0
    train.export_specialist(model.bert, model.towers["image"], tmp_path / "image")

    out = merge.run_merge(merge.recipe("average", base, [("image", tmp_path / "image", "image")], Path("out")),
                          tmp_path / "r.yaml")
    merged = loaders.load_merged(base, out)
    kept = merged.towers["image"].token_lora
    assert kept is not None and set(kept.layers()) == set(trained.layers())
    for k, b in trained.B.items():
        assert torch.equal(kept.B[k], b.detach())
    x = torch.from_numpy(split.x[:4])
    with torch.no_grad():
        with_lora = merged([("image", x)], ["which digit is this?"] * 4)
        merged.towers["image"].token_lora = None
        without = merged([("image", x)], ["which digit is this?"] * 4)
    assert not torch.allclose(with_lora, without)


def test_cache_key_follows_config_and_data() -> None:
    from benchmarks.lab.data import ModalityData, Split

    rng = np.random.default_rng(0)
    split = Split(rng.random((10, 64)).astype(np.float32), rng.integers(0, 10, 10))
    d = ModalityData("image", split, split, split)
    key = train.cache_key(train.TrainConfig(), [d])
    assert key == train.cache_key(train.TrainConfig(), [d])
    assert key != train.cache_key(train.TrainConfig(seed=1), [d])
    assert key != train.cache_key(train.TrainConfig(rank=16, alpha=32), [d])
    other = Split(split.x.copy(), split.y.copy())
    other.x[0, 0] += 1.0
    assert key != train.cache_key(train.TrainConfig(), [ModalityData("image", other, split, split)])


def test_joint_model_trains_one_lora_and_every_tower_and_loads_back(tmp_path: Path) -> None:
    """The jointly trained reference: one rank-4 LoRA and a tower per modality (text included), exported as one
    adapter whose config carries the rank and alpha, loaded back with all towers answering the same."""
    from benchmarks.lab.data import ModalityData, Split

    base = make_tiny_base(tmp_path / "base")
    rng = np.random.default_rng(0)
    image = Split(rng.random((20, 64)).astype(np.float32), rng.integers(0, 10, 20))
    text = Split(rng.integers(5, 20, (20, 3)).astype(np.int64), rng.integers(0, 10, 20))
    datas = [ModalityData("image", image, image, image), ModalityData("text", text, text, text)]
    cfg = train.TrainConfig(steps=2, batch=8, rank=4, alpha=8)
    secs = train.timed_train(base, datas, cfg, tmp_path / "joint")
    assert secs > 0 and not (tmp_path / "joint.partial").exists()
    config = json.loads((tmp_path / "joint" / train.ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    model = loaders.load_specialist(base, tmp_path / "joint")
    assert set(model.towers) == {"image", "text"}
    with torch.no_grad():
        out = model([("text", torch.from_numpy(text.x[:2]))], ["which number is it?"] * 2)
    assert out.shape == (2, lm.HIDDEN)
