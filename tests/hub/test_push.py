"""Pushing an output folder: verification against the manifest, byte-exact upload, idempotence, errors.

Against the fake Hub (tests/hub/fake_hub.py); large files take huggingface_hub's LFS path (xet disabled).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssam_cli.errors import UserError
from ssam_cli.hub import push as push_module
from ssam_cli.hub.card import model_card
from ssam_cli.hub.push import prepare_upload, push_upload, verify_output
from tests.hub.fake_hub import FakeHub, fake_hub  # noqa: F401  (fixture)
from tests.hub.outputs import _built_output, output  # noqa: F401  (fixtures)

TOKEN = "hf_writer_token_for_tests"
REPO = "me/merged"


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:
    fake_hub.tokens.add(TOKEN)
    return fake_hub


def push(folder: Path, **options) -> push_module.Pushed:
    return push_upload(prepare_upload(folder, REPO), token=TOKEN, **options)


def test_every_file_and_the_card_arrive_byte_for_byte(output: Path, hub: FakeHub):
    pushed = push(output)
    remote = hub.files(REPO)
    local = folder_files(output)
    assert set(local) == {"config.json", "model.safetensors", "modalities/v.safetensors", "manifest.json", "README.md"}
    assert {p: remote[p] for p in local} == local
    manifest = json.loads(local["manifest.json"])
    assert remote["README.md"].decode() == model_card(manifest, REPO)
    assert pushed.changed and pushed.commit == hub.head(REPO)
    # the weights went through the LFS batch API + PUT, not inline in the commit
    lfs = {p for p, f in hub.repos[REPO].commits[hub.head(REPO)].items() if f.lfs}
    assert lfs == {"model.safetensors", "modalities/v.safetensors"} and len(hub.lfs_puts) == 2


def test_pushing_the_same_folder_twice_changes_nothing(output: Path, hub: FakeHub):
    first = push(output)
    commits, puts = hub.count("POST", "/commit/"), len(hub.lfs_puts)
    second = push(output)
    assert not second.changed and second.commit == first.commit == hub.head(REPO)
    assert hub.count("POST", "/commit/") == commits and len(hub.lfs_puts) == puts


def test_the_repo_is_created_private_when_asked(output: Path, hub: FakeHub):
    push(output, private=True)
    assert hub.repos[REPO].private


def test_a_branch_is_created_and_main_left_alone(output: Path, hub: FakeHub):
    push(output, revision="ssam-v2")
    main = hub.files(REPO, "main")
    assert "model.safetensors" not in main and hub.files(REPO, "ssam-v2")["model.safetensors"] == \
        (output / "model.safetensors").read_bytes()


def test_create_pr_commits_to_a_pull_request_ref(output: Path, hub: FakeHub):
    pushed = push(output, create_pr=True)
    assert pushed.pr_url and pushed.pr_url.endswith("/discussions/1")
    assert "model.safetensors" not in hub.files(REPO, "main")
    assert "model.safetensors" in hub.files(REPO, "refs/pr/1")


def test_create_pr_with_a_branch_is_refused_before_any_request(output: Path, hub: FakeHub):
    with pytest.raises(UserError, match="--create-pr"):
        push(output, create_pr=True, revision="dev")
    assert hub.requests == []


def test_weights_of_an_earlier_push_that_this_folder_lacks_are_deleted(output: Path, hub: FakeHub):
    hub.create(REPO, {"model-00001-of-00002.safetensors": b"old", "notes.md": b"keep me"})
    push(output)
    remote = hub.files(REPO)
    assert "model-00001-of-00002.safetensors" not in remote and remote["notes.md"] == b"keep me"


def test_a_500_is_retried_by_the_library(output: Path, hub: FakeHub):
    hub.fail("POST", f"/api/models/{REPO}/preupload", 500)
    push(output)
    assert hub.count("POST", "/preupload/") == 2
    assert hub.files(REPO)["model.safetensors"] == (output / "model.safetensors").read_bytes()


def test_a_500_on_the_commit_retries_the_whole_push(output: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(push_module, "RETRY_WAITS", (0.0, 0.0))
    hub.fail("POST", f"/api/models/{REPO}/commit", 500, 503)
    pushed = push(output)
    assert pushed.changed and hub.count("POST", "/commit/") == 3
    assert folder_files(output).items() <= hub.files(REPO).items()


def test_a_hub_that_keeps_failing_is_a_one_line_error(output: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(push_module, "RETRY_WAITS", (0.0,))
    hub.fail("POST", "/api/repos/create", 500, 500)
    with pytest.raises(UserError) as e:
        push(output)
    assert "kept failing" in str(e.value) and "\n" not in str(e.value)


def test_a_401_is_a_clear_one_line_error_without_the_token(output: Path, hub: FakeHub):
    bad = "hf_this_token_is_revoked_42"
    with pytest.raises(UserError) as e:
        push_upload(prepare_upload(output, REPO), token=bad)
    message = str(e.value)
    assert "401" in message and "--token" in message and "\n" not in message and bad not in message
    assert REPO not in hub.repos


def test_a_failed_lfs_transfer_and_a_refused_card_are_one_line_errors(output: Path, hub: FakeHub):
    hub.fail("PUT", "/lfs-upload/", 400, 400)
    with pytest.raises(UserError) as e:
        push(output)
    assert "upload failed: Error while uploading" in str(e.value) and "\n" not in str(e.value)
    hub.fail("POST", "/api/validate-yaml", 400)
    with pytest.raises(UserError, match="upload failed: Invalid metadata in README.md"):
        push(output)


def test_an_unreachable_hub_is_a_one_line_error(output: Path):
    with pytest.raises(UserError) as e:
        push_upload(prepare_upload(output, REPO), token=TOKEN, endpoint="http://127.0.0.1:9")
    assert "cannot reach the Hub" in str(e.value) and "\n" not in str(e.value)


def test_no_token_at_all_is_the_same_clear_error(output: Path, hub: FakeHub):
    with pytest.raises(UserError, match="401"):
        push_upload(prepare_upload(output, REPO), token=None)


def test_prepare_upload_touches_neither_the_folder_nor_the_hub(output: Path, hub: FakeHub):
    before = folder_files(output)
    upload = prepare_upload(output, REPO)
    assert folder_files(output) == before and hub.requests == []
    assert [p for p, _ in upload.files] == sorted({*before, "README.md"})  # the card is written by merge too
    assert upload.card == model_card(upload.manifest, REPO)


# ---- verification: refuse anything that is not exactly what the merge wrote -----------------------------


def edit_bytes(folder: Path) -> None:
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(data))


def rewrite_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "manifest.json").unlink(), "no manifest.json; not a finished ssam output"),
    (lambda f: (f / "modalities" / "v.safetensors").unlink(),
     "modalities/v.safetensors is listed in manifest.json but missing"),
    (lambda f: (f / "config.json").write_text("{}"), "config.json has 2 bytes"),
    (edit_bytes, "model.safetensors does not match its sha256"),
    (lambda f: (f / "extra.bin").write_bytes(b"x"), "extra.bin is not recorded in manifest.json"),
    (lambda f: (f / "manifest.json").write_text("{not json"), "not valid JSON"),
    (lambda f: rewrite_manifest(f, lambda m: m.pop("tool")), "not an ssam manifest"),
    (lambda f: rewrite_manifest(f, lambda m: m["files"].append({"path": "../outside", "size": 1, "sha256": "0"})),
     "must be a path inside the folder"),
    (lambda f: rewrite_manifest(f, lambda m: m["files"][0].pop("sha256")), "not an ssam manifest (files[0].sha256: Field required)"),
])
def test_an_interrupted_or_edited_folder_is_refused(output: Path, damage, message):
    damage(output)
    with pytest.raises(UserError) as e:
        verify_output(output)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_readme_and_hub_cache_folders_are_not_edits(output: Path):
    (output / "README.md").write_text("my own card")
    (output / ".cache" / "huggingface").mkdir(parents=True)
    (output / ".cache" / "huggingface" / "x.lock").write_text("")
    assert verify_output(output)["tool"] == "ssam"


def test_a_missing_folder_and_a_bad_repo_id_are_refused(tmp_path: Path, output: Path):
    with pytest.raises(UserError, match="no such folder"):
        verify_output(tmp_path / "nope")
    with pytest.raises(UserError, match="REPO_ID: expected org/name"):
        prepare_upload(output, "not a repo")


@pytest.mark.parametrize("name", ["model.safetensors", "odd[1]*?.safetensors", "modalities/v.safetensors"])
def test_upload_patterns_match_exactly_one_path(name):
    import fnmatch

    from ssam_cli.hub.repo_id import literal_pattern

    pattern = literal_pattern(name)
    assert fnmatch.fnmatch(name, pattern)
    assert not fnmatch.fnmatch(name + "x", pattern) and not fnmatch.fnmatch("x" + name, pattern)
