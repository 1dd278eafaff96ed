"""A recipe's `path:` is a local folder or a Hugging Face Hub repo: one rule decides, then the Hub is read.

The rule, in order (docs/hub.md):
1. `hf://org/name` is always a Hub repo id (the way to force the Hub when a folder of that name exists).
2. A path that exists, after `~` expansion and relative to the recipe's folder, is local.
3. Otherwise `org/name` (exactly one `/`, both parts Hub-legal names) is a Hub repo id.
4. Anything else (`./x`, `/x`, `~/x`, `a/b/c`, `name`, spaces...) is a local path that does not exist: reported
   as a missing path, never as an invalid repo id.

A Hub repo is downloaded with `snapshot_download`, limited to the files a source reads, into the usual
Hugging Face cache (HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE and the token from HF_TOKEN or the cached login are
honoured by huggingface_hub itself); the resolved commit hash is returned so the manifest can pin it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

from ssam_cli.errors import InputError
from ssam_cli.paths import resolve_local
from ssam_cli.hub.repo_id import HF_PREFIX, is_repo_id, literal_pattern
from ssam_cli.sources import checkpoint, torch_bin

__all__ = ["Resolved", "resolve", "patterns_for", "is_repo_id", "HF_PREFIX", "PATTERNS"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")

# Full weights of either kind (transformers' names: one file, or shards + index) and, for a folder, the small files
# a loadable model needs. Patterns match names inside the input's folder (the repo root or `subfolder:`), never in
# folders below it. A folder that has safetensors weights never gets its `.bin` weights downloaded.
SAFETENSORS_WEIGHTS = (checkpoint.SINGLE, checkpoint.INDEX, "model-*.safetensors")
BIN_WEIGHTS = (torch_bin.SINGLE, torch_bin.INDEX, torch_bin.SHARDS)
WEIGHT_PATTERNS = SAFETENSORS_WEIGHTS + BIN_WEIGHTS
ADAPTER_PATTERNS = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
SIDE_PATTERNS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                 "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                 "chat_template.json", "chat_template.jinja", "preprocessor_config.json", "processor_config.json",
                 "README.md")  # README.md: the model card, where the base's license is read from

PATTERNS = {
    "full": WEIGHT_PATTERNS + SIDE_PATTERNS,
    "lora": ADAPTER_PATTERNS + SIDE_PATTERNS,
    "auto": WEIGHT_PATTERNS + ADAPTER_PATTERNS + SIDE_PATTERNS,
    "modelcompose": ADAPTER_PATTERNS + SIDE_PATTERNS,  # config.json + adapter_model.bin
}
# A base read by header (sources/header_only.py): its config, card (license) and index are downloaded, its weights
# only listed; a low-rank output copies none of the base's tokenizer files, so they are not fetched.
HEADER_PATTERNS = ("config.json", "README.md", checkpoint.INDEX)


@dataclass(frozen=True)
class Resolved:
    """Where an input's files are on disk; for a Hub input also its repo id and the exact commit read.
    `subfolder` is the recipe's `subfolder:` (already part of `local_path`). `listed`: files of the input's folder
    on the Hub that were asked to be listed, not downloaded (names inside the folder; empty when offline)."""

    local_path: Path
    repo_id: Optional[str] = None
    commit: Optional[str] = None
    subfolder: Optional[str] = None
    listed: tuple[str, ...] = ()


def patterns_for(format: str) -> tuple[str, ...]:
    """The files worth downloading for a source of this recipe `format` (never optimizer states or other weights)."""
    return PATTERNS.get(format, PATTERNS["auto"])


def choose_files(repo_files: Sequence[str], patterns: Sequence[str], subfolder: Optional[str]) -> list[str]:
    """The repo files to download: those directly in the input's folder whose names match `patterns`, without the
    `.bin` weights when safetensors weights are there (transformers prefers them too; never fetch both)."""
    folder = PurePosixPath(subfolder or "")
    here = [f for f in repo_files if PurePosixPath(f).parent == folder]
    wanted = [f for f in here if _matches(PurePosixPath(f).name, patterns)]
    if any(_matches(PurePosixPath(f).name, SAFETENSORS_WEIGHTS) for f in wanted):
        wanted = [f for f in wanted if not _matches(PurePosixPath(f).name, BIN_WEIGHTS)]
    return sorted(wanted)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def resolve(path_or_id: str, revision: Optional[str], recipe_dir: Path, patterns: Sequence[str] = PATTERNS["auto"],
            *, subfolder: Optional[str] = None, cache_dir: Optional[Path] = None, endpoint: Optional[str] = None,
            token: Optional[str] = None, listed: Sequence[str] = ()) -> Resolved:
    """A local folder as is, or a Hub repo downloaded (allow-listed files only) and pinned to its commit;
    `subfolder` is a folder inside either (as transformers' `from_pretrained(..., subfolder=...)`). Files matching
    `listed` are listed in Resolved.listed, never downloaded (a base read by header).

    `cache_dir`, `endpoint` and `token` default to huggingface_hub's own (environment, cached login); errors are
    InputError without a recipe prefix, for the caller to wrap with the file and field.
    """
    forced = path_or_id.startswith(HF_PREFIX)
    text = path_or_id[len(HF_PREFIX):] if forced else path_or_id
    local = resolve_local(recipe_dir, text)
    if not forced and local.exists():
        if revision is not None:
            raise InputError(f"{path_or_id}: `revision: {revision}` applies to Hub repo ids only, "
                             f"but this is the local path {local}")
        if subfolder is None:
            return Resolved(local)
        if not (local / subfolder).is_dir():
            raise InputError(f"{path_or_id}: subfolder {subfolder!r}: no such folder in {local}")
        return Resolved(local / subfolder, subfolder=subfolder)
    if not is_repo_id(text):
        if forced:
            raise InputError(f"{path_or_id}: not a Hub repo id; expected hf://org/name")
        hint = "; a Hub repo is written org/name" if "/" not in text else ""
        raise InputError(f"no such file or folder: {local}{hint}")
    return _download(text, revision, subfolder, list(patterns), local if not forced else None, cache_dir, endpoint,
                     token, list(listed))


def _download(repo_id: str, revision: Optional[str], subfolder: Optional[str], patterns: list[str],
              local: Optional[Path], cache_dir: Optional[Path], endpoint: Optional[str],
              token: Optional[str], listed: list[str]) -> Resolved:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (DryRunError, GatedRepoError, HfHubHTTPError, IncompleteSnapshotError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{repo_id}@{revision}" if revision else repo_id
    inside = f" in subfolder {subfolder!r}" if subfolder else ""
    not_local = f" (no local folder {local} either; write ./{repo_id} for a local path)" if local else ""
    prefix = f"{subfolder}/" if subfolder else ""
    common = dict(cache_dir=cache_dir, endpoint=endpoint, token=token)
    remote: tuple[str, ...] = ()
    try:
        try:  # list the repo's files at this revision, to choose exactly what to fetch
            listing = snapshot_download(repo_id, revision=revision,
                                        allow_patterns=[prefix + p for p in patterns + listed], dry_run=True, **common)
        except DryRunError as e:  # the Hub was not reached, or refused: the reason is the cause
            if isinstance(e.__cause__, HfHubHTTPError) and not _unreachable(e.__cause__):
                raise e.__cause__ from None
            folder = _cached(repo_id, revision, prefix, patterns, **common)
        else:
            names = [f.filename for f in listing]
            chosen = choose_files(names, patterns, subfolder)
            remote = tuple(PurePosixPath(f).name for f in choose_files(names, patterns + listed, subfolder)
                           if f not in chosen)
            if not chosen:
                raise InputError(f"{where}: the repo holds none of the files ssam reads{inside} "
                                 f"({', '.join(patterns[:4])}, ...)")
            folder = Path(snapshot_download(repo_id, revision=listing[0].commit_hash,
                                            allow_patterns=[literal_pattern(f) for f in chosen], **common))
    except RevisionNotFoundError:
        raise InputError(f"{repo_id}: revision {revision!r} not found on the Hub") from None
    except GatedRepoError:
        raise InputError(f"{repo_id}: gated on the Hub; accept its conditions on the repo page and log in "
                         "(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise InputError(f"{repo_id}: not a Hub repo you can read (missing, or private without a token){not_local}") \
            from None
    except IncompleteSnapshotError:
        raise InputError(f"{where}: the cached download is incomplete and the Hub cannot be reached; "
                         "finish the download once online") from None
    except LocalEntryNotFoundError:
        raise InputError(f"{where}: not in the local Hugging Face cache and the Hub cannot be reached "
                         "(offline, HF_HUB_OFFLINE=1, or a network error); download it once online") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status == 401:
            raise InputError(f"{repo_id}: the Hub refused the credentials (401); check HF_TOKEN or "
                             "`hf auth login`") from None
        raise InputError(f"{where}: the Hub answered HTTP {status}; try again later") from None
    commit = folder.name if _COMMIT.match(folder.name) else None
    folder = folder / subfolder if subfolder else folder
    if not folder.is_dir() or not any(p.is_file() for p in folder.iterdir()):
        raise InputError(f"{where}: the repo holds none of the files ssam reads{inside} "
                         f"({', '.join(patterns[:4])}, ...)")
    return Resolved(folder, repo_id, commit, subfolder, remote)


def _unreachable(error: Exception) -> bool:
    """A Hub error that means "try the cache" (server trouble), not "you may not read this repo"."""
    from huggingface_hub.errors import RepositoryNotFoundError

    status = error.response.status_code if getattr(error, "response", None) is not None else None
    return not isinstance(error, RepositoryNotFoundError) and status not in (401, 403)


def _cached(repo_id: str, revision: Optional[str], prefix: str, patterns: list[str], **common: object) -> Path:
    """The snapshot an earlier online run left in the cache, checked complete (huggingface_hub compares it with the
    cached file listing). That run fetched one kind of weights when the repo had both: the cache is complete for
    all the patterns, or holds safetensors weights and is complete without the `.bin` ones, or is complete without
    the safetensors ones."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    def cached(allowed: list[str]) -> Path:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[prefix + p for p in allowed],
                                      local_files_only=True, **common))

    try:
        return cached(patterns)
    except IncompleteSnapshotError:
        pass
    folder = cached([p for p in patterns if p not in BIN_WEIGHTS])
    here = folder / prefix
    if here.is_dir() and any(_matches(f.name, SAFETENSORS_WEIGHTS) for f in here.iterdir()):
        return folder
    return cached([p for p in patterns if p not in SAFETENSORS_WEIGHTS])


