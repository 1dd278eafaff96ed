"""Publish an ssam output folder on the Hub, but only a folder that is exactly what the merge wrote.

Verification first (manifest present, every listed file present with its recorded size and sha256, nothing
unlisted), then: refresh the card, create the repo if missing, upload with `upload_folder` (huggingface_hub
skips files whose content the Hub already has and makes no empty commit, so pushing twice changes nothing).
Weight files of an earlier push that this folder no longer has are deleted in the same commit, so a re-merge
with another sharding cannot leave a stale `model.safetensors` beside the new shards.
The token is passed to huggingface_hub and never printed, logged or written.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional

from ssam_cli.errors import UserError
from ssam_cli.card_metadata import CARD
from ssam_cli.hub.card import model_card, write_model_card
from ssam_cli.hub.repo_id import is_repo_id, literal_pattern
from ssam_cli.manifest import MANIFEST, Manifest, sha256_file

# Left alone by verification: never uploaded by upload_folder either.
IGNORED = (".git/", ".cache/huggingface/")
# Remote files a new push replaces wholesale (what a merge writes), so no stale weights survive a re-push.
STALE_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.bin", "modalities/*", "adapter_config.json"]
RETRY_STATUSES = (500, 502, 503, 504)
RETRY_WAITS = (2.0, 8.0)  # whole-push retries after the library's own per-request retries gave up


@dataclass
class Upload:
    """A verified folder and what pushing it sends: the manifest's files, manifest.json and the fresh card."""

    folder: Path
    repo_id: str
    manifest: dict[str, Any]
    files: list[tuple[str, int]]
    card: str

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


@dataclass
class Pushed:
    url: str
    commit: str
    changed: bool
    pr_url: Optional[str] = None


def verify_output(folder: Path) -> dict[str, Any]:
    """The folder's manifest, if every file it lists is there unchanged and nothing else is; else a UserError."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder}: no {MANIFEST}; not a finished ssam output (interrupted merge?)")
    try:
        manifest = Manifest.read(folder).as_json()
    except ValueError as e:
        raise UserError(str(e)) from None
    listed: set[str] = set()
    for i, entry in enumerate(manifest["files"]):
        rel = _listed_path(path, i, entry)
        listed.add(rel)
        f = folder / rel
        if not f.is_file():
            raise UserError(f"{folder}: {rel} is listed in {MANIFEST} but missing (interrupted or edited folder)")
        if f.stat().st_size != entry["size"]:
            raise UserError(f"{folder}: {rel} has {f.stat().st_size} bytes, {MANIFEST} recorded {entry['size']} "
                            "(edited or truncated after the merge)")
        if sha256_file(f) != entry["sha256"]:
            raise UserError(f"{folder}: {rel} does not match its sha256 in {MANIFEST} (edited after the merge)")
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if f.is_file() and rel not in listed and rel not in (MANIFEST, CARD) and not rel.startswith(IGNORED):
            raise UserError(f"{folder}: {rel} is not recorded in {MANIFEST} (added after the merge); "
                            "remove it or merge again")
    return manifest


def _listed_path(manifest_path: Path, i: int, entry: dict[str, Any]) -> str:
    """A listed file's path, which must stay inside the folder (the manifest's types are checked by Manifest)."""
    p = PurePosixPath(entry["path"])
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise UserError(f"{manifest_path}: files[{i}].path: must be a path inside the folder, got {entry['path']!r}")
    return p.as_posix()


def prepare_upload(folder: Path, repo_id: str) -> Upload:
    """Verify the folder and render its card for `repo_id`; nothing is written and the Hub is not contacted."""
    check_repo_id(repo_id)
    manifest = verify_output(folder)
    files = [(e["path"], e["size"]) for e in manifest["files"]]
    card = model_card(manifest, repo_id)
    files += [(MANIFEST, (folder / MANIFEST).stat().st_size), (CARD, len(card.encode("utf-8")))]
    return Upload(folder, repo_id, manifest, sorted(files), card)


def check_repo_id(repo_id: str) -> None:
    if not is_repo_id(repo_id):
        raise UserError(f"REPO_ID: expected org/name (letters, digits, '-', '_', '.'), got {repo_id!r}")


def push_upload(upload: Upload, *, private: bool = False, revision: Optional[str] = None, create_pr: bool = False,
                commit_message: Optional[str] = None, token: Optional[str] = None,
                endpoint: Optional[str] = None) -> Pushed:
    """Refresh the card, create the repo if missing, upload; retried whole on a 5xx (safe: pushing is idempotent)."""
    if create_pr and revision not in (None, "main"):
        raise UserError("--create-pr opens a pull request against main; do not combine it with --revision")
    write_model_card(upload.folder, upload.manifest, upload.repo_id)
    for wait in (*RETRY_WAITS, None):
        try:
            with _hub_errors(upload.repo_id, token):
                return _push_once(upload, private, revision, create_pr, commit_message, token, endpoint)
        except _Retryable:
            if wait is None:
                raise UserError(f"{upload.repo_id}: the Hub kept failing (HTTP 5xx); nothing was lost, "
                                "run the same push again later") from None
            time.sleep(wait)
    raise AssertionError("unreachable")


def _push_once(upload: Upload, private: bool, revision: Optional[str], create_pr: bool,
               commit_message: Optional[str], token: Optional[str], endpoint: Optional[str]) -> Pushed:
    from huggingface_hub import HfApi

    from ssam_cli import __version__

    api = HfApi(endpoint=endpoint, token=token, library_name="ssam", library_version=__version__)
    api.create_repo(upload.repo_id, private=private, exist_ok=True, repo_type="model")
    branch = revision or "main"
    if branch != "main":
        api.create_branch(upload.repo_id, branch=branch, exist_ok=True)
    before = api.repo_info(upload.repo_id, revision=branch).sha
    info = api.upload_folder(repo_id=upload.repo_id, folder_path=upload.folder, revision=revision,
                             create_pr=create_pr or None, commit_message=commit_message or _default_message(upload),
                             allow_patterns=[literal_pattern(p) for p, _ in upload.files], delete_patterns=STALE_PATTERNS)
    return Pushed(str(info.commit_url), str(info.oid), changed=info.oid != before, pr_url=info.pr_url)


def _default_message(upload: Upload) -> str:
    names = [str(r.get("name")) for r in upload.manifest.get("inputs") or [] if r.get("role") == "specialist"]
    return f"ssam: {upload.manifest.get('method', 'merge')} merge of {', '.join(names) or 'specialists'}"




class _Retryable(Exception):
    pass


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures of whichever HTTP client this huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


@contextmanager
def _hub_errors(repo_id: str, token: Optional[str]) -> Iterator[None]:
    """Hub failures as one-line UserErrors, 5xx as _Retryable; any token is scrubbed (the library echoes none)."""
    from huggingface_hub.errors import HfHubHTTPError

    secrets = [t for t in (token, os.environ.get("HF_TOKEN")) if t]

    def clean(error: BaseException) -> str:
        text = str(error).strip()
        line = text.splitlines()[0] if text else type(error).__name__
        for secret in secrets:
            line = line.replace(secret, "***")
        return line

    try:
        yield
    except UserError:
        raise
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise UserError(f"{repo_id}: the Hub refused the credentials (401 Unauthorized); pass a valid --token, "
                            "set HF_TOKEN or run `hf auth login`") from None
        if status == 403:
            raise UserError(f"{repo_id}: the token may not write to this repo (403 Forbidden); use a token with "
                            "write access to it") from None
        if status in RETRY_STATUSES:
            raise _Retryable() from None
        raise UserError(f"{repo_id}: the Hub answered HTTP {status}: {clean(e)}") from None
    except _transport_errors() as e:
        raise UserError(f"{repo_id}: cannot reach the Hub ({clean(e)}); check the network or HF_ENDPOINT") from None
    except (RuntimeError, ValueError) as e:  # upload_folder: an LFS transfer that failed, invalid card metadata
        detail = f"; {clean(e.__cause__)}" if e.__cause__ is not None else ""
        raise UserError(f"{repo_id}: upload failed: {clean(e)}{detail}") from None
