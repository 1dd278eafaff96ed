"""Local folder or Hub repo: the rule, the download (only what a source reads), the commit pin, the errors.

The Hub is the fake one in tests/hub/fake_hub.py on 127.0.0.1; nothing here reaches huggingface.co.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import constants

from ssam_cli.errors import InputError
from ssam_cli.sources import open_source
from ssam_cli.sources.resolve import Resolved, is_repo_id, patterns_for, resolve
from tests.fixtures.tiny import make_lora_specialist
from tests.hub.fake_hub import FakeHub, fake_hub  # noqa: F401  (fixture)

ADAPTER_FILES = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": b"\0" * 64}
NOT_NEEDED = {"optimizer.pt": b"o", "training_args.bin": b"t", "checkpoint-100/adapter_model.bin": b"c",
              "images/plot.png": b"p"}


@pytest.mark.parametrize("text, ok", [
    ("org/name", True), ("lmsys/vicuna-7b-v1.5", True), ("a/b", True), ("Org_1/m.v2", True),
    ("name", False), ("./org/name", False), ("/org/name", False), ("~/x", False), ("a/b/c", False),
    ("org/name/", False), ("org/-name", False), ("org/name.", False), ("org/na--me", False), ("org/na..me", False),
    ("my models/x", False), ("org\\name", False), ("C:/x", False), ("org/" + "n" * 97, False),
])
def test_repo_id_shape(text, ok):
    assert is_repo_id(text) is ok


def test_an_existing_folder_is_local_relative_to_the_recipe(tmp_path: Path):
    (tmp_path / "org" / "name").mkdir(parents=True)  # looks like a repo id, but exists: local wins
    assert resolve("org/name", None, tmp_path) == Resolved((tmp_path / "org" / "name").resolve())
    assert resolve(str(tmp_path / "org"), None, Path("/elsewhere")).local_path == tmp_path / "org"


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").mkdir()
    assert resolve("~/ckpt", None, Path("/")).local_path == tmp_path / "ckpt"


def test_a_revision_on_a_local_folder_is_an_error(tmp_path: Path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(InputError, match="applies to Hub repo ids only"):
        resolve("ckpt", "main", tmp_path)


@pytest.mark.parametrize("path", ["./vision-lora", "/no/such/folder", "~/no-such-ssam-folder", "runs/a/final",
                                  "vision-lora", "my models/vision", "../up/there"])
def test_a_missing_local_path_is_reported_as_missing_not_as_a_bad_repo_id(path, tmp_path, fake_hub: FakeHub):
    with pytest.raises(InputError) as e:
        resolve(path, None, tmp_path)
    message = str(e.value)
    assert "no such file or folder" in message and "repo id" not in message.replace("a Hub repo is written", "")
    assert "\n" not in message
    assert fake_hub.requests == []  # decided locally: the Hub was never asked


def test_a_bare_name_gets_a_hint_about_the_repo_id_form(tmp_path: Path):
    with pytest.raises(InputError, match="a Hub repo is written org/name"):
        resolve("vicuna", None, tmp_path)


def test_a_hub_id_downloads_only_what_a_source_reads_and_pins_the_commit(tmp_path: Path, fake_hub: FakeHub):
    commit = fake_hub.create("org/vision-lora", {**ADAPTER_FILES, **NOT_NEEDED, "README.md": b"# card"})
    r = resolve("org/vision-lora", None, tmp_path)
    assert (r.repo_id, r.commit) == ("org/vision-lora", commit)
    got = {p.relative_to(r.local_path).as_posix(): p.read_bytes() for p in r.local_path.rglob("*") if p.is_file()}
    assert got == {**ADAPTER_FILES, "README.md": b"# card"}
    assert r.local_path.is_relative_to(Path(constants.HF_HUB_CACHE))


def test_the_commit_is_the_resolved_hash_of_a_branch_not_its_name(tmp_path: Path, fake_hub: FakeHub):
    first = fake_hub.create("org/m", ADAPTER_FILES)
    second = fake_hub.create("org/m", {"adapter_model.safetensors": b"\1" * 64})
    fake_hub.repos["org/m"].refs["v1"] = first
    assert resolve("org/m", None, tmp_path).commit == second
    r = resolve("org/m", "v1", tmp_path)
    assert r.commit == first and (r.local_path / "adapter_model.safetensors").read_bytes() == b"\0" * 64
    assert resolve("org/m", first, tmp_path).commit == first  # a commit hash as revision


def test_hf_prefix_forces_the_hub_even_when_a_folder_of_that_name_exists(tmp_path: Path, fake_hub: FakeHub):
    (tmp_path / "org" / "m").mkdir(parents=True)
    commit = fake_hub.create("org/m", ADAPTER_FILES)
    assert resolve("hf://org/m", None, tmp_path).commit == commit
    with pytest.raises(InputError, match="expected hf://org/name"):
        resolve("hf://not a repo", None, tmp_path)


def test_a_resolved_hub_adapter_opens_as_a_source(tmp_path: Path, fake_hub: FakeHub):
    local = make_lora_specialist(tmp_path / "src", seed=1)
    fake_hub.create("org/lora", {p.name: p.read_bytes() for p in local.iterdir()})
    r = resolve("org/lora", None, tmp_path / "recipes", patterns_for("lora"))
    source = open_source(r.local_path)
    assert source.kind == "lora" and len(source.lowrank) == 14


def test_a_missing_repo_says_the_local_folder_is_missing_too(tmp_path: Path, fake_hub: FakeHub):
    with pytest.raises(InputError) as e:
        resolve("org/nothing", None, tmp_path)
    assert "not a Hub repo you can read" in str(e.value)
    assert f"no local folder {tmp_path / 'org' / 'nothing'} either" in str(e.value)


def test_a_missing_revision_is_named(tmp_path: Path, fake_hub: FakeHub):
    fake_hub.create("org/m", ADAPTER_FILES)
    with pytest.raises(InputError, match="revision 'v9' not found"):
        resolve("org/m", "v9", tmp_path)


def test_a_private_repo_needs_a_token(tmp_path: Path, fake_hub: FakeHub):
    fake_hub.tokens.add("hf_reader")
    fake_hub.create("org/secret", ADAPTER_FILES, private=True)
    with pytest.raises(InputError, match="private without a token"):
        resolve("org/secret", None, tmp_path)
    assert resolve("org/secret", None, tmp_path, token="hf_reader").repo_id == "org/secret"


@pytest.mark.parametrize("where", ["HF_TOKEN", "cached login"])
def test_the_token_comes_from_the_environment_or_the_cached_login(where, tmp_path: Path, fake_hub: FakeHub,
                                                                  monkeypatch: pytest.MonkeyPatch):
    fake_hub.tokens.add("hf_from_elsewhere")
    fake_hub.create("org/secret", ADAPTER_FILES, private=True)
    if where == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", "hf_from_elsewhere")
    else:
        Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
        Path(constants.HF_TOKEN_PATH).write_text("hf_from_elsewhere")
    assert resolve("org/secret", None, tmp_path).repo_id == "org/secret"


def test_a_bad_token_is_a_one_line_401(tmp_path: Path, fake_hub: FakeHub):
    fake_hub.create("org/m", ADAPTER_FILES)
    with pytest.raises(InputError) as e:
        resolve("org/m", None, tmp_path, token="hf_wrong_token_123")
    assert "401" in str(e.value) and "hf_wrong_token_123" not in str(e.value) and "\n" not in str(e.value)


def test_a_repo_with_none_of_the_needed_files_is_refused(tmp_path: Path, fake_hub: FakeHub):
    fake_hub.create("org/empty", NOT_NEEDED)
    with pytest.raises(InputError, match="holds none of the files ssam reads"):
        resolve("org/empty", None, tmp_path)


def test_offline_uses_the_cache_and_keeps_the_commit(tmp_path: Path, fake_hub: FakeHub,
                                                     monkeypatch: pytest.MonkeyPatch):
    commit = fake_hub.create("org/m", ADAPTER_FILES)
    online = resolve("org/m", None, tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    seen = len(fake_hub.requests)
    offline = resolve("org/m", None, tmp_path)
    assert offline == online and offline.commit == commit
    assert len(fake_hub.requests) == seen  # not one request
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        resolve("org/other", None, tmp_path)


def test_a_hub_that_fails_is_a_one_line_error(tmp_path: Path, fake_hub: FakeHub):
    fake_hub.create("org/m", ADAPTER_FILES)
    fake_hub.fail("GET", "/api/models/org/m/revision", 500)
    with pytest.raises(InputError) as e:
        resolve("org/m", None, tmp_path)
    assert "cannot be reached" in str(e.value) and "\n" not in str(e.value)


def test_patterns_per_format_never_include_other_checkpoints():
    for fmt in ("auto", "full", "lora", "modelcompose"):
        patterns = patterns_for(fmt)
        assert "*.bin" not in patterns and "*.pt" not in patterns and "*.safetensors" not in patterns
    assert "adapter_config.json" in patterns_for("lora") and "pytorch_model.bin" not in patterns_for("lora")
    assert {"model.safetensors", "model-*.safetensors", "pytorch_model-*.bin", "pytorch_model.bin.index.json"} <= \
        set(patterns_for("full")) <= set(patterns_for("auto"))
    assert patterns_for("unknown") == patterns_for("auto")


SAFETENSORS = {"model.safetensors.index.json": b'{"weight_map": {}}', "model-00001-of-00002.safetensors": b"s1",
               "model-00002-of-00002.safetensors": b"s2"}
BIN = {"pytorch_model.bin.index.json": b'{"weight_map": {}}', "pytorch_model-00001-of-00002.bin": b"b1",
       "pytorch_model-00002-of-00002.bin": b"b2"}
OTHER_WEIGHTS = {"consolidated.safetensors": b"c", "optimizer.bin": b"o", "checkpoint-9/model.safetensors": b"n"}


def local_files(r: Resolved) -> dict[str, bytes]:
    return {p.relative_to(r.local_path).as_posix(): p.read_bytes() for p in r.local_path.rglob("*") if p.is_file()}


def test_a_bin_sharded_repo_gets_its_shards_and_index_and_nothing_else(tmp_path: Path, fake_hub: FakeHub):
    fake_hub.create("lmsys/tiny-vicuna", {**BIN, **OTHER_WEIGHTS, "config.json": b"{}"})
    r = resolve("lmsys/tiny-vicuna", None, tmp_path, patterns_for("full"))
    assert local_files(r) == {**BIN, "config.json": b"{}"}
    assert set(fake_hub.downloaded("lmsys/tiny-vicuna")) == set(BIN) | {"config.json"}


@pytest.mark.parametrize("fmt", ["full", "auto"])
def test_safetensors_are_preferred_and_the_bin_weights_never_downloaded(fmt, tmp_path: Path, fake_hub: FakeHub):
    fake_hub.create("org/both", {**SAFETENSORS, **BIN, "config.json": b"{}"})
    r = resolve("org/both", None, tmp_path, patterns_for(fmt))
    assert local_files(r) == {**SAFETENSORS, "config.json": b"{}"}
    served = fake_hub.downloaded("org/both")
    assert not any(p.endswith(".bin") or p in BIN for p in served)
    assert sum(served.values()) == sum(len(v) for v in SAFETENSORS.values()) + 2  # bytes: no .bin shard body sent


def test_a_lora_input_never_downloads_full_weights(tmp_path: Path, fake_hub: FakeHub):
    fake_hub.create("org/mixed", {**ADAPTER_FILES, **BIN})
    assert local_files(resolve("org/mixed", None, tmp_path, patterns_for("lora"))) == ADAPTER_FILES


def test_offline_after_preferring_safetensors_reuses_the_cache(tmp_path: Path, fake_hub: FakeHub,
                                                              monkeypatch: pytest.MonkeyPatch):
    commit = fake_hub.create("org/both", {**SAFETENSORS, **BIN})
    online = resolve("org/both", None, tmp_path, patterns_for("full"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    seen = len(fake_hub.requests)
    offline = resolve("org/both", None, tmp_path, patterns_for("full"))
    assert offline == online and offline.commit == commit and len(fake_hub.requests) == seen


def test_an_incomplete_cache_offline_is_one_line(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch):
    fake_hub.create("org/m", {**BIN, "config.json": b"{}"})
    r = resolve("org/m", None, tmp_path, patterns_for("full"))
    (r.local_path / "pytorch_model-00002-of-00002.bin").unlink()  # as an interrupted download leaves it
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError) as e:
        resolve("org/m", None, tmp_path, patterns_for("full"))
    assert "cached download is incomplete" in str(e.value) and "\n" not in str(e.value)


COMPOSE = {"README.md": b"# all specialists", "vision-damc/config.json": b'{"v": 1}',
           "vision-damc/adapter_model.bin": b"v", "audio-damc/config.json": b'{"a": 1}',
           "audio-damc/adapter_model.bin": b"a", "vision-damc/checkpoint-5/adapter_model.bin": b"old"}


def test_a_subfolder_fetches_only_that_folders_files_and_is_recorded(tmp_path: Path, fake_hub: FakeHub):
    commit = fake_hub.create("Adu2021/compose", COMPOSE)
    r = resolve("Adu2021/compose", None, tmp_path, patterns_for("modelcompose"), subfolder="vision-damc")
    assert (r.repo_id, r.subfolder, r.commit) == ("Adu2021/compose", "vision-damc", commit)
    assert r.local_path.name == "vision-damc" and r.local_path.parent.name == commit
    assert local_files(r) == {"config.json": b'{"v": 1}', "adapter_model.bin": b"v"}
    assert set(fake_hub.downloaded("Adu2021/compose")) == {"vision-damc/config.json", "vision-damc/adapter_model.bin"}


def test_a_missing_subfolder_is_named(tmp_path: Path, fake_hub: FakeHub):
    fake_hub.create("Adu2021/compose", COMPOSE)
    with pytest.raises(InputError, match="holds none of the files ssam reads in subfolder 'video-damc'"):
        resolve("Adu2021/compose", None, tmp_path, patterns_for("modelcompose"), subfolder="video-damc")


def test_a_local_path_with_a_subfolder_is_that_folder(tmp_path: Path):
    (tmp_path / "compose" / "vision-damc").mkdir(parents=True)
    r = resolve("compose", None, tmp_path, subfolder="vision-damc")
    assert r == Resolved((tmp_path / "compose" / "vision-damc").resolve(), subfolder="vision-damc")
    with pytest.raises(InputError, match="subfolder 'audio': no such folder in"):
        resolve("compose", None, tmp_path, subfolder="audio")


@pytest.mark.parametrize("subfolder, ok", [("vision-damc", "vision-damc"), ("a/b/", "a/b"), ("../up", None),
                                           ("/abs", None), ("a//b", None), (".", None), ("a\\b", None),
                                           ("", None)])
def test_the_subfolder_field_is_a_folder_inside_the_input(subfolder, ok, tmp_path: Path):
    from ssam_cli.errors import RecipeError
    from ssam_cli.recipe import load_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"method": "ssam", "base": {"path": "org/base", "subfolder": subfolder},
                                      "specialists": [{"name": "a", "path": "org/a"}], "output": {"path": "out"}}))
    if ok is None:
        with pytest.raises(RecipeError, match="base.subfolder"):
            load_recipe(recipe)
    else:
        assert load_recipe(recipe).base.subfolder == ok
