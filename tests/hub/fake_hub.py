"""A small Hugging Face Hub on 127.0.0.1, speaking the endpoints huggingface_hub 2.x calls for our operations.

Implemented (as read from huggingface_hub's source): repo creation (`POST /api/repos/create`), branch creation,
repo info (`GET /api/models/{id}[/revision/{rev}]`), tree listing (`GET /api/models/{id}/tree/{rev}`), README
metadata validation (`POST /api/validate-yaml`), preupload (`POST /api/models/{id}/preupload/{rev}`), the LFS
batch API (`POST /{id}.git/info/lfs/objects/batch`) with basic PUT transfers, commits (ndjson,
`POST /api/models/{id}/commit/{rev}`, `create_pr=1`), and file download (`HEAD`/`GET /{id}/resolve/{rev}/{path}`
with ETag, X-Repo-Commit and Content-Length; a `Range: bytes=a-b` GET answers 206 with those bytes, as
huggingface_hub's safetensors header reads need). Xet is not implemented: tests disable hf_xet so large files take
the library's LFS path.

Test hooks: `tokens` (valid bearer tokens; an unknown one gets 401 as on the Hub), `fail(method, prefix, *codes)`
(answer the next matching requests with these status codes), `requests` (every request seen), `lfs_puts`, and
`served` / `downloaded(repo_id)` (the file bodies sent by GET, with their sizes; a range request counts the bytes it
sent), and `ranges` (the range requests answered).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
LFS_MIN_SIZE = 10 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """What the Hub reports: sha256 for an LFS file, the git blob sha1 otherwise."""
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_sha1(self.data)


@dataclass
class Repo:
    private: bool
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N → commit
    prs: int = 0

    def commit_of(self, revision: str) -> Optional[str]:
        return revision if revision in self.commits else self.refs.get(revision)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0


class FakeHub:
    """The server's state; `url` is what HF_ENDPOINT / endpoint= should be."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.tokens: set[str] = set()
        self.requests: list[Seen] = []
        self.lfs_puts: list[str] = []
        self.served: list[tuple[str, str, int]] = []  # (repo id, path in the repo, bytes) per file body sent
        self.ranges: list[tuple[str, str, int, int]] = []  # (repo id, path, start, end) per range request answered
        self._failures: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- test helpers -------------------------------------------------------------------------------------
    def fail(self, method: str, path_prefix: str, *codes: int) -> None:
        """Answer the next len(codes) requests `method path_prefix...` with these HTTP status codes."""
        with self._lock:
            self._failures.extend((method, path_prefix, c) for c in codes)

    def create(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """A repo with one commit holding `files`; returns the commit hash."""
        repo = self.repos.setdefault(repo_id, Repo(private))
        return self._commit(repo, "main", {p: StoredFile(d, p.endswith(LFS_SUFFIXES)) for p, d in files.items()},
                            [], "initial")

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return {p: f.data for p, f in repo.commits[repo.commit_of(revision)].items()}

    def head(self, repo_id: str, revision: str = "main") -> str:
        return self.repos[repo_id].commit_of(revision)

    def downloaded(self, repo_id: str) -> dict[str, int]:
        """Path in the repo → bytes sent, for every file of `repo_id` whose body was sent (HEAD requests excluded)."""
        out: dict[str, int] = {}
        for repo, path, size in self.served:
            if repo == repo_id:
                out[path] = out.get(path, 0) + size
        return out

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for r in self.requests if r.method == method and path_part in r.path)

    # ---- internals ----------------------------------------------------------------------------------------
    def _commit(self, repo: Repo, ref: str, add: dict[str, StoredFile], delete: list[str], message: str,
                parent: Optional[str] = None) -> str:
        parent = parent if parent is not None else repo.refs.get(ref)
        tree = dict(repo.commits.get(parent, {})) if parent else {}
        tree.update(add)
        for p in delete:
            tree.pop(p, None)
        digest = hashlib.sha1(json.dumps([parent, message, sorted((p, f.oid) for p, f in tree.items())]).encode())
        oid = digest.hexdigest()
        repo.commits[oid] = tree
        repo.refs[ref] = oid
        return oid

    def _take_failure(self, method: str, path: str) -> Optional[int]:
        with self._lock:
            for i, (m, prefix, code) in enumerate(self._failures):
                if m == method and path.startswith(prefix):
                    del self._failures[i]
                    return code
        return None


def _byte_range(header: Optional[str], size: int) -> Optional[tuple[int, int]]:
    """`Range: bytes=a-b` (b inclusive, clipped to the file) as [start, end); None for no header or another form."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes="):].partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start, end = int(first), min(int(last) + 1 if last else size, size)
    return (start, end) if start < end else None


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def setup(self) -> None:
            super().setup()
            # headers and body leave in separate writes: without this, delayed ACKs add 40 ms per request
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        # -- plumbing --
        def _dispatch(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            split = urlsplit(self.path)
            seen = Seen(method, split.path, {k.lower(): v for k, v in self.headers.items()}, body)
            hub.requests.append(seen)
            self.seen, self.body, self.query = seen, body, parse_qs(split.query)
            code = hub._take_failure(method, split.path)
            if code is not None:
                return self._json(code, {"error": f"injected {code}"})
            auth = self.headers.get("Authorization", "")
            self.token = auth[7:] if auth.startswith("Bearer ") else None
            if self.token is not None and self.token not in hub.tokens:
                return self._json(401, {"error": "Invalid credentials in Authorization header"})
            try:
                self._route(method, [unquote(p) for p in split.path.strip("/").split("/")])
            except Exception as e:  # a bug in the fake must show up in the test, not hang it
                self._json(500, {"error": f"fake hub bug: {e!r}"})
                raise

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
            self.seen.status = code
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, payload: Any, headers: Optional[dict[str, str]] = None) -> None:
            self._send(code, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _not_found(self, what: str) -> None:
            self._json(404, {"error": f"{what} not found"}, {"X-Error-Code": what})

        def _repo(self, repo_id: str, write: bool = False) -> Optional[Repo]:
            repo = hub.repos.get(repo_id)
            if write and self.token is None:
                self._json(401, {"error": "You must be authenticated to write"})
                return None
            if repo is None or (repo.private and self.token is None):
                self._not_found("RepoNotFound")
                return None
            return repo

        # -- routes --
        def _route(self, method: str, parts: list[str]) -> None:
            if parts[:1] == ["api"]:
                return self._api(method, parts[1:])
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            if parts[:1] == ["lfs-upload"] and method == "PUT":
                return self._lfs_put(parts[1])
            if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs_batch(f"{parts[0]}/{parts[1][:-4]}")
            self._json(404, {"error": f"no route {method} /{'/'.join(parts)}"})

        def _api(self, method: str, parts: list[str]) -> None:
            if parts == ["repos", "create"] and method == "POST":
                return self._create_repo(json.loads(self.body))
            if parts == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(json.loads(self.body))
            if len(parts) >= 3 and parts[0] == "models":
                repo_id, rest = f"{parts[1]}/{parts[2]}", parts[3:]
                if method == "GET" and not rest:
                    return self._info(repo_id, "main")
                if method == "GET" and rest[:1] == ["revision"] and len(rest) == 2:
                    return self._info(repo_id, rest[1])
                if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
                    return self._tree(repo_id, rest[1])
                if method == "POST" and rest[:1] == ["preupload"] and len(rest) == 2:
                    return self._preupload(repo_id, rest[1])
                if method == "POST" and rest[:1] == ["commit"] and len(rest) == 2:
                    return self._commit(repo_id, rest[1])
                if method == "POST" and rest[:1] == ["branch"] and len(rest) == 2:
                    return self._branch(repo_id, rest[1])
            self._json(404, {"error": f"no route {method} /api/{'/'.join(parts)}"})

        def _create_repo(self, payload: dict) -> None:
            if self.token is None:
                return self._json(401, {"error": "You must be authenticated"})
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            if repo_id in hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = hub.repos[repo_id] = Repo(private=private)
            attributes = StoredFile(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", False)
            hub._commit(repo, "main", {".gitattributes": attributes}, [], "initial commit")
            self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _branch(self, repo_id: str, branch: str) -> None:
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return
            if branch in repo.refs:
                return self._json(409, {"error": "Reference already exists"})
            start = json.loads(self.body or b"{}").get("startingPoint") or "main"
            repo.refs[branch] = repo.commit_of(start)
            self._json(200, {})

        def _at(self, repo_id: str, revision: str) -> Optional[tuple[Repo, str]]:
            """The repo and the commit a revision names, or None after answering 404."""
            repo = self._repo(repo_id)
            if repo is None:
                return None
            oid = repo.commit_of(revision)
            if oid is None:
                self._not_found("RevisionNotFound")
                return None
            return repo, oid

        def _info(self, repo_id: str, revision: str) -> None:
            found = self._at(repo_id, revision)
            if found is None:
                return
            repo, oid = found
            self._json(200, {"id": repo_id, "modelId": repo_id, "sha": oid, "private": repo.private, "tags": [],
                             "siblings": [{"rfilename": p} for p in sorted(repo.commits[oid])]})

        def _tree(self, repo_id: str, revision: str) -> None:
            found = self._at(repo_id, revision)
            if found is None:
                return
            repo, oid = found
            entries = []
            for p, f in sorted(repo.commits[oid].items()):
                entry: dict[str, Any] = {"type": "file", "path": p, "size": len(f.data), "oid": git_blob_sha1(f.data)}
                if f.lfs:
                    entry["lfs"] = {"oid": f.oid, "size": len(f.data), "pointerSize": 134}
                entries.append(entry)
            self._json(200, entries)

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            found = self._at(repo_id, revision)
            if found is None:
                return
            repo, oid = found
            f = repo.commits[oid].get(path)
            if f is None:
                return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound",
                                                                      "X-Repo-Commit": oid})
            headers = {"X-Repo-Commit": oid, "ETag": f'"{f.oid}"', "Content-Type": "application/octet-stream"}
            if f.lfs:
                headers["X-Linked-Etag"] = f'"{f.oid}"'
                headers["X-Linked-Size"] = str(len(f.data))
            wanted = _byte_range(self.headers.get("Range"), len(f.data))
            if wanted is not None:  # a range request (parse_safetensors_file_metadata reads headers this way)
                start, end = wanted
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(f.data)}"
                if self.command == "GET":
                    hub.served.append((repo_id, path, end - start))
                    hub.ranges.append((repo_id, path, start, end))
                return self._send(206, f.data[start:end], headers)
            if self.command == "GET":
                hub.served.append((repo_id, path, len(f.data)))
            self._send(200, f.data, headers)

        def _validate_yaml(self, payload: dict) -> None:
            content = payload.get("content", "")
            if content.startswith("---\n"):
                try:
                    meta = yaml.safe_load(content[4:content.index("\n---", 4)])
                    if not isinstance(meta, dict):
                        raise ValueError("metadata must be a mapping")
                except Exception as e:
                    return self._json(400, {"errors": [{"message": f"invalid YAML: {e}"}], "warnings": []})
            self._json(200, {"errors": [], "warnings": []})

        def _preupload(self, repo_id: str, revision: str) -> None:
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return
            current = repo.commits.get(repo.commit_of(revision) or "", {})
            out = []
            for f in json.loads(self.body)["files"]:
                lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE
                existing = current.get(f["path"])
                out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": existing.oid if existing else None})
            self._json(200, {"files": out, "commitOid": repo.commit_of(revision)})

        def _lfs_batch(self, repo_id: str) -> None:
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return
            objects = []
            for obj in json.loads(self.body)["objects"]:
                entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.lfs:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"}}
                objects.append(entry)
            self._json(200, {"transfer": "basic", "objects": objects})

        def _lfs_put(self, oid: str) -> None:
            if hashlib.sha256(self.body).hexdigest() != oid:
                return self._json(400, {"error": "sha256 mismatch"})
            hub.lfs[oid] = self.body
            hub.lfs_puts.append(oid)
            self._send(200, b"", {})

        def _commit(self, repo_id: str, revision: str) -> None:
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
            header = next(item["value"] for item in lines if item["key"] == "header")
            add: dict[str, StoredFile] = {}
            delete: list[str] = []
            for item in lines:
                v = item["value"]
                if item["key"] == "file":
                    add[v["path"]] = StoredFile(base64.b64decode(v["content"]), False)
                elif item["key"] == "lfsFile":
                    if v["oid"] not in hub.lfs:
                        return self._json(422, {"error": f"LFS object {v['oid']} was never uploaded"})
                    add[v["path"]] = StoredFile(hub.lfs[v["oid"]], True)
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    delete.append(v["path"])
            base = repo.commit_of(revision)
            if base is None:
                return self._not_found("RevisionNotFound")
            pr_url = None
            ref = revision
            if self.query.get("create_pr") == ["1"]:
                repo.prs += 1
                ref = f"refs/pr/{repo.prs}"
                pr_url = f"{hub.url}/{repo_id}/discussions/{repo.prs}"
            oid = hub._commit(repo, ref, add, delete, header["summary"], parent=base)
            self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": pr_url})

    return Handler


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running fake Hub; huggingface_hub in this process points at it, with a private cache and no login."""
    from huggingface_hub import constants

    hub = FakeHub().start()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    try:
        yield hub
    finally:
        hub.stop()


def hub_env(hub: FakeHub, home: Path) -> dict[str, str]:
    """Environment for a subprocess that must talk to `hub` only (no xet, its own HF_HOME, no progress bars)."""
    return {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "NO_COLOR": "1"}
