"""A local fake of the Hugging Face Hub for tests: a threaded ``http.server`` on 127.0.0.1
speaking the endpoints huggingface_hub 2.x uses to push and pull a model repo.

Served (paths relative to the endpoint; ``R`` = owner/name):

* ``GET /api/whoami-v2``                         the token's user (401 for an unknown token)
* ``POST /api/repos/create``                     create a model repo (403 outside the user's namespaces,
                                                  409 if it exists)
* ``POST /api/validate-yaml``                    accepts any README front matter that parses
* ``GET /api/models/R[/revision/REV]``           model info with ``siblings``
* ``GET /api/{datasets,spaces}/R``               404 unless the id was registered as that type
* ``POST /api/models/R/preupload/REV``           ``lfs`` upload mode for .gguf files, ``regular`` for the rest
* ``POST /R.git/info/lfs/objects/batch``         LFS "basic" transfer: one PUT URL per object
* ``PUT /lfs/OID``                               the LFS object's bytes (checked against its sha256)
* ``POST /api/models/R/commit/REV``              the NDJSON commit: recorded in ``FakeHub.commits``
* ``HEAD|GET /R/resolve/REV/PATH``               file download with X-Repo-Commit / ETag headers

Xet storage is not spoken: tests set ``HF_HUB_DISABLE_XET`` so huggingface_hub falls back to
LFS. ``FakeHub.fail`` injects failures: ``{"commit": 403}`` answers that endpoint with the
status, ``{"lfs": "drop"}`` reads part of the request body and closes the connection (a network
failure mid-upload). Endpoint keys: whoami, create, preupload, lfs-batch, lfs, commit, info, resolve.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml


@dataclass
class Commit:
    repo_id: str
    summary: str
    files: dict[str, bytes]  # path in repo -> content (LFS files resolved from their uploaded bytes)
    lfs_paths: set[str]  # which of them went through LFS
    sha: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = "0" * 40


class FakeHub:
    """The server plus its state; ``url`` is the endpoint to give huggingface_hub."""

    def __init__(self, tokens: dict[str, str] | None = None, orgs: dict[str, list[str]] | None = None):
        self.tokens = dict(tokens or {})  # token -> user name
        self.orgs = dict(orgs or {})  # user -> organisations they may write to
        self.repos: dict[str, Repo] = {}
        self.other_types: dict[str, str] = {}  # repo id -> "dataset" / "space" (exist only as that type)
        self.lfs: dict[str, bytes] = {}
        self.commits: list[Commit] = []
        self.created: list[dict] = []  # create-repo payloads
        self.fail: dict[str, int | str] = {}
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, had Authorization)
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> Repo:
        """A repo that already exists on the hub, with one commit holding ``files``."""
        repo = self.repos[repo_id] = Repo(repo_id, private)
        repo.files.update(files)
        repo.sha = hashlib.sha1(repr(sorted(files)).encode() + repo_id.encode()).hexdigest()
        return repo

    def user_of(self, headers) -> str | None:
        auth = headers.get("Authorization", "")
        return self.tokens.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None

    def may_write(self, user: str | None, repo_id: str) -> bool:
        owner = repo_id.split("/")[0]
        return user is not None and (owner == user or owner in self.orgs.get(user, []))


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", r"^/api/whoami-v2$", "whoami"),
    ("POST", r"^/api/repos/create$", "create"),
    ("POST", r"^/api/validate-yaml$", "validate"),
    ("GET", rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$", "info"),
    ("GET", rf"^/api/(?P<kind>datasets|spaces)/{_REPO}(?:/revision/(?P<rev>[^/]+))?$", "other_info"),
    ("POST", rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", rf"^/{_REPO}\.git/info/lfs/objects/batch$", "lfs-batch"),
    ("PUT", r"^/lfs/(?P<oid>[0-9a-f]{64})$", "lfs"),
    ("POST", rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$", "commit"),
    ("GET", rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ("HEAD", rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # -- plumbing ---------------------------------------------------------------------------------

    def _body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
                if limit is not None and len(out) >= limit:
                    return out
        n = int(self.headers.get("Content-Length", 0))
        return self.rfile.read(n if limit is None else min(n, limit))

    def _send(self, status: int, obj=None, headers: dict | None = None, raw: bytes | None = None,
              head: bool = False) -> None:
        body = raw if raw is not None else (b"" if obj is None else json.dumps(obj).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _dispatch(self) -> None:
        hub = self.hub
        path = unquote(urlparse(self.path).path)
        with hub.lock:
            hub.requests.append((self.command, path, "Authorization" in self.headers))
        for method, pattern, name in _ROUTES:
            m = re.match(pattern, path)
            if method == self.command and m:
                failure = hub.fail.get(name)
                if failure == "drop":  # read part of the request, then vanish: a network failure
                    self._body(limit=64)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if isinstance(failure, int):
                    self._body()
                    return self._error(failure, f"injected failure on {name}")
                return getattr(self, "do_" + name.replace("-", "_"))(**m.groupdict())
        self._body()
        self._error(404, f"no route {self.command} {path}")

    do_GET = do_POST = do_PUT = do_HEAD = lambda self: self._dispatch()  # noqa: E731

    # -- endpoints --------------------------------------------------------------------------------

    def do_whoami(self) -> None:
        user = self.hub.user_of(self.headers)
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": user, "orgs": [{"name": o} for o in self.hub.orgs.get(user, [])],
                         "auth": {"accessToken": {"role": "write"}}})

    def do_create(self) -> None:
        hub, payload = self.hub, json.loads(self._body())
        user = hub.user_of(self.headers)
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        if payload.get("type", "model") != "model":
            return self._error(400, "only model repos in this fake")
        if not hub.may_write(user, repo_id):
            owner = repo_id.split("/")[0]
            return self._error(403, f'You don\'t have the rights to create a model under the namespace "{owner}"')
        with hub.lock:
            hub.created.append(payload)
            if repo_id in hub.repos:
                return self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
            hub.repos[repo_id] = Repo(repo_id, private=payload.get("visibility") == "private"
                                      or bool(payload.get("private")))
        self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

    def do_validate(self) -> None:
        content = json.loads(self._body())["content"]
        m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            if m is None or not isinstance(yaml.safe_load(m.group(1)), dict):
                raise ValueError("no YAML front matter")
        except (ValueError, yaml.YAMLError) as e:
            return self._send(400, {"errors": [{"message": str(e)}]})
        self._send(200, {"errors": [], "warnings": []})

    def _readable(self, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self.hub.may_write(self.hub.user_of(self.headers), repo_id)):
            return None
        return repo

    def do_info(self, repo: str, rev: str | None = None) -> None:
        r = self._readable(repo)
        if r is None:
            return self._error(404, "Repository not found", "RepoNotFound")
        self._send(200, {"id": repo, "sha": r.sha, "private": r.private,
                         "siblings": [{"rfilename": p} for p in sorted(r.files)]})

    def do_other_info(self, kind: str, repo: str, rev: str | None = None) -> None:
        if self.hub.other_types.get(repo) == kind[:-1]:
            return self._send(200, {"id": repo, "sha": "1" * 40, "private": False, "siblings": []})
        self._error(404, "Repository not found", "RepoNotFound")

    def _writable(self, repo: str) -> bool:
        user = self.hub.user_of(self.headers)
        if user is None:
            self._error(401, "Invalid credentials in Authorization header")
            return False
        if repo not in self.hub.repos:
            self._error(404, "Repository not found", "RepoNotFound")
            return False
        if not self.hub.may_write(user, repo):
            self._error(403, "You don't have write access to this repo")
            return False
        return True

    def do_preupload(self, repo: str, rev: str) -> None:
        files = json.loads(self._body())["files"]
        if not self._writable(repo):
            return
        mode = lambda path: "lfs" if path.endswith(".gguf") else "regular"  # noqa: E731 - as the Hub for binaries
        self._send(200, {"files": [{"path": f["path"], "uploadMode": mode(f["path"]), "shouldIgnore": False}
                                   for f in files]})

    def do_lfs_batch(self, repo: str) -> None:
        payload = json.loads(self._body())
        if not self._writable(repo):
            return
        objs = [{"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"{self.hub.url}/lfs/{o['oid']}"}}} for o in payload["objects"]]
        self._send(200, {"transfer": "basic", "objects": objs})

    def do_lfs(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "sha256 mismatch")
        with self.hub.lock:
            self.hub.lfs[oid] = data
        self._send(200)

    def do_commit(self, repo: str, rev: str) -> None:
        lines = [json.loads(x) for x in self._body().splitlines() if x.strip()]
        if not self._writable(repo):
            return
        hub, files, lfs_paths = self.hub, {}, set()
        for item in lines[1:]:
            v = item["value"]
            if item["key"] == "file":
                files[v["path"]] = base64.b64decode(v["content"])
            elif item["key"] == "lfsFile":
                if v["oid"] not in hub.lfs:
                    return self._error(400, f"LFS object {v['oid']} was never uploaded")
                files[v["path"]] = hub.lfs[v["oid"]]
                lfs_paths.add(v["path"])
        with hub.lock:
            r = hub.repos[repo]
            sha = hashlib.sha1(r.sha.encode() + json.dumps(sorted(files)).encode() + str(len(hub.commits)).encode())
            r.sha = sha.hexdigest()
            r.files.update(files)
            hub.commits.append(Commit(repo, lines[0]["value"]["summary"], files, lfs_paths, r.sha))
        self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{r.sha}", "commitOid": r.sha})

    def do_resolve(self, repo: str, rev: str, path: str) -> None:
        r = self._readable(repo)
        if r is None:
            return self._error(404, "Repository not found", "RepoNotFound")
        if path not in r.files:
            return self._error(404, "Entry not found", "EntryNotFound")
        data = r.files[path]
        etag = hashlib.sha256(data).hexdigest()
        self._send(200, raw=data, head=self.command == "HEAD",
                   headers={"X-Repo-Commit": r.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"})
