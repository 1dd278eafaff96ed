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
    from ssam_cli.engine import prepare, run_merge
    from ssam_cli.hub.push import prepare_upload, push_upload
    from ssam_cli.recipe import load_recipe

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

    result = run_merge(prepare(load_recipe(recipe)), show_progress=False)

    rows = {r["name"]: r for r in result.manifest["inputs"]}
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
