"""From Hub repo ids to a pushed merge: recipe → resolve → merge → manifest with commits → card → push.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.fixtures.tiny import make_base, make_lora_specialist, write_recipe
from tests.hub.fake_hub import FakeHub, fake_hub  # noqa: F401  (fixture)

TOKEN = "hf_merge_and_push_token"


def upload_folder(hub: FakeHub, repo_id: str, folder: Path) -> str:
    return hub.create(repo_id, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})


def test_a_recipe_naming_hub_repos_merges_pins_commits_and_pushes(tmp_path: Path, fake_hub: FakeHub):
    from ssam_cli import api
    from ssam_cli.hub.push import prepare_upload, push_upload

    src = tmp_path / "src"
    base = make_base(src / "base")
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny base\n")
    base_commit = upload_folder(fake_hub, "org/tiny-base", base)
    a_commit = upload_folder(fake_hub, "org/lora-a", make_lora_specialist(src / "a", seed=1))
    make_lora_specialist(tmp_path / "work" / "b", seed=2)  # a local-only specialist
    recipe = write_recipe(tmp_path / "work" / "recipe.yaml", Path("org/tiny-base"),
                          [("a", Path("org/lora-a")), ("b", Path("b"))], parameters={"rank": 4},
                          output={"path": "out", "format": "lora"})
    data = yaml.safe_load(recipe.read_text())
    data["specialists"][0]["revision"] = "main"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))

    result = api.merge(recipe)

    rows = {r["name"]: r for r in result.manifest.as_json()["inputs"]}
    assert rows["base"]["commit"] == base_commit and rows["a"]["commit"] == a_commit  # hashes, not "main"
    assert rows["b"].get("commit") is None
    card = (result.output / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == ["org/tiny-base", "org/lora-a"] and meta["license"] == "apache-2.0"
    assert "Not on the Hub, so not listed in `base_model`: b" in card

    fake_hub.tokens.add(TOKEN)
    push_upload(prepare_upload(result.output, "me/merged"), token=TOKEN)
    remote = fake_hub.files("me/merged")
    assert remote["adapter_model.safetensors"] == (result.output / "adapter_model.safetensors").read_bytes()
    assert json.loads(remote["manifest.json"])["inputs"][0]["commit"] == base_commit


def test_a_bin_sharded_base_and_specialists_in_subfolders_of_one_repo_resolve_and_merge(tmp_path: Path,
                                                                                         fake_hub: FakeHub):
    """The paper's setting as released: a vicuna-style base in `.bin` shards, specialists in folders of one repo."""
    from safetensors.torch import load_file, save_file

    from ssam_cli import api
    from tests.fixtures.torch_bin import fine_tuned, llama_state_dict, write_bin_checkpoint
    from tests.reference import rel_err, ssam_reference

    src, layers = tmp_path / "src", 2
    base = llama_state_dict(layers)
    base_commit = upload_folder(fake_hub, "lmsys/tiny-vicuna", write_bin_checkpoint(src / "base", base, layers, "40KB"))
    tuned = {name: fine_tuned(base, layers, seed) for name, seed in (("vision", 1), ("audio", 2), ("video", 3))}
    files = {}
    for name, state in tuned.items():
        folder = write_bin_checkpoint(src / name, state, layers, "40KB" if name == "vision" else None)
        if name == "audio":  # both kinds in one folder: only the safetensors may be fetched
            save_file(state, str(folder / "model.safetensors"))
        files.update({f"{name}-ft/{p.name}": p.read_bytes() for p in folder.iterdir()})
    compose_commit = fake_hub.create("org/compose", {**files, "README.md": b"# specialists"})
    recipe = tmp_path / "work" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text(yaml.safe_dump({
        "method": "ssam", "base": "lmsys/tiny-vicuna", "parameters": {"rank": 4},
        "specialists": [{"name": n, "path": "org/compose", "subfolder": f"{n}-ft", "format": "full"}
                        for n in ("vision", "audio")],
        "output": {"path": "out", "format": "full", "dtype": "float32"}}))

    origins = api.validate(recipe).inputs.origins
    assert (origins["base"].repo_id, origins["base"].commit, origins["base"].subfolder) == \
        ("lmsys/tiny-vicuna", base_commit, None)
    for name in ("vision", "audio"):
        assert (origins[name].repo_id, origins[name].subfolder, origins[name].commit) == \
            ("org/compose", f"{name}-ft", compose_commit)
    result = api.merge(recipe)

    local = {n: sorted(p.name for p in origins[n].local_path.iterdir()) for n in ("vision", "audio")}
    assert local == {"vision": sorted(f.split("/")[1] for f in files if f.startswith("vision-ft/")),
                     "audio": ["config.json", "model.safetensors"]}
    # nothing of video-ft, no .bin of audio-ft (the cache shares identical blobs, so config.json may come once)
    assert set(fake_hub.downloaded("org/compose")) <= {f for f in files if f.startswith("vision-ft/")} | \
        {"audio-ft/config.json", "audio-ft/model.safetensors"}
    assert set(fake_hub.downloaded("lmsys/tiny-vicuna")) == set(fake_hub.files("lmsys/tiny-vicuna"))
    merged = {}
    for f in sorted(result.output.glob("model*.safetensors")):
        merged.update(load_file(str(f)))
    for name in ("model.layers.0.self_attn.v_proj.weight", "model.layers.1.mlp.up_proj.weight"):
        deltas = [tuned[n][name] - base[name] for n in ("vision", "audio")]
        assert rel_err(merged[name] - base[name], ssam_reference(deltas, 4, 1 / 2)) < 1e-5, name
    rows = {r["name"]: r for r in json.loads((result.output / "manifest.json").read_text())["inputs"]}
    assert rows["base"]["commit"] == base_commit and rows["vision"]["commit"] == compose_commit
    assert (rows["vision"]["repo_id"], rows["vision"]["subfolder"], rows["base"]["subfolder"]) == \
        ("org/compose", "vision-ft", None)  # the manifest pins repo, subfolder and commit
    assert sorted(f["path"] for f in rows["base"]["files"]) == sorted(fake_hub.files("lmsys/tiny-vicuna"))[1:]
