"""A Hub-compatible HTTP server for the tests: enough of the Hugging Face Hub's API for the
unmodified huggingface_hub client to create repos, commit (inline and LFS), tag, list and
download. Standard library only.

It is strict where the real Hub is: writes need a valid token for the namespace, private
repos are invisible without one, a commit whose parent is not the branch head is refused
(412), an LFS file must have been uploaded before a commit names it, and every download
carries the headers the client relies on (X-Repo-Commit, ETag, Content-Length).
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

LFS_THRESHOLD = 1024  # bytes; larger files are LFS when the server offers LFS


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    sha256: str  # content address in Hub.blobs
    size: int
    lfs: bool

    def oid(self, blobs: dict[str, bytes]) -> str:
        """What the client compares with its local oid: sha256 for LFS, git sha1 otherwise."""
        return self.sha256 if self.lfs else git_blob_sha1(blobs[self.sha256])


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, Entry]
    message: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        sha = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        return self.commits.get(sha) if sha else None


class HubState:
    def __init__(self, tokens: dict[str, str], lfs: bool) -> None:
        self.tokens = tokens  # token -> user name (its namespace)
        self.lfs = lfs  # offer LFS uploads; when False every file is "regular" (inline in the commit)
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.upload_bytes = 0  # request-body bytes of commits and LFS uploads
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        # (method, path regex, when): once, close the connection without an answer, "before" or
        # "after" the server has done what the request asked
        self.drop: list[tuple[str, str, str]] = []
        self.hold: threading.Event | None = None  # when set, commits wait on it (for concurrency tests)
        # (path regex, headers): file responses whose path matches carry these headers instead (a hostile server)
        self.file_headers: list[tuple[str, dict[str, str]]] = []
        self._counter = itertools.count(1)

    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, Entry], message: str) -> Commit:
        seed = f"{repo.repo_id}|{parent}|{message}|{next(self._counter)}|" + json.dumps(
            {p: e.sha256 for p, e in sorted(files.items())}
        )
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, files, message)
        repo.commits[commit.sha] = commit
        return commit

    def tamper(self, repo_id: str, rev: str, path: str, data: bytes) -> None:
        """Replace a file's bytes behind the client's back (as a corrupted store or a man in the middle would)."""
        commit = self.repos[repo_id].resolve(rev)
        assert commit is not None
        entry = commit.files[path]
        self.blobs[entry.sha256] = data


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, *args) -> None:
        pass

    # plumbing -----------------------------------------------------------------------------

    @property
    def hub(self) -> HubState:
        return self.server.state

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data: object, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.hub.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        user = self._user()
        repo = self.hub.repos.get(repo_id)
        visible = repo is not None and (not repo.private or user == repo_id.split("/")[0])
        if not visible:
            raise HubError(404, "Repository not found", "RepoNotFound")
        assert repo is not None
        if write and user != repo_id.split("/")[0]:
            raise HubError(403, "You don't have the rights to write to this repo")
        return repo

    def _dispatch(self, method: str) -> None:
        raw_path, _, query = self.path.partition("?")
        self.hub.log.append((method, raw_path))
        for i, (m, pattern, when) in enumerate(self.hub.drop):
            if m == method and re.search(pattern, raw_path):
                del self.hub.drop[i]
                if when == "before":
                    self._body()
                else:
                    self.wfile = io.BytesIO()  # do the work, lose the answer
                    self._route(method, raw_path, query)
                self.close_connection = True  # the client sees the connection close with no answer
                return
        self._route(method, raw_path, query)

    def _route(self, method: str, raw_path: str, query: str) -> None:
        try:
            for verb, pattern, handler in ROUTES:
                match = re.fullmatch(pattern, raw_path) if verb == method else None
                if match:
                    # split the path first, unquote each part after (a revision may be "release%2F1")
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    handler(self, parse_qs(query), **args)
                    return
            raise HubError(404, f"no route for {method} {raw_path}")
        except Exception as exc:
            err = exc if isinstance(exc, HubError) else HubError(500, f"test hub failed: {type(exc).__name__}: {exc}")
            headers = {"Content-Type": "application/json", "X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, json.dumps({"error": err.message}).encode(), headers, head=method == "HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # API ----------------------------------------------------------------------------------

    def create_repo(self, query: dict) -> None:
        body = json.loads(self._body())
        user = self._user()
        namespace = body.get("organization") or user
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self.server.url}/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                self._json({"error": "You already created this model repo", "url": url}, 409)
                return
            repo = Repo(repo_id, private=body.get("visibility", "public") == "private" or bool(body.get("private")))
            attributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            sha = hashlib.sha256(attributes).hexdigest()
            self.hub.blobs[sha] = attributes
            first = self.hub.new_commit(
                repo, None, {".gitattributes": Entry(sha, len(attributes), False)}, "initial commit"
            )
            repo.branches["main"] = first.sha
            self.hub.repos[repo_id] = repo
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, query: dict) -> None:
        body = json.loads(self._body())
        if not isinstance(body.get("content"), str):
            raise HubError(400, "content must be a string")
        self._json({"errors": [], "warnings": []})

    def info(self, query: dict, repo: str, rev: str = "main") -> None:
        found = self._repo(repo)
        commit = found.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        siblings: list[dict] = [{"rfilename": p} for p in sorted(commit.files)]
        if query.get("blobs", ["false"])[0].lower() == "true":  # files_metadata=True: sizes, as the Hub gives them
            for sibling in siblings:
                entry = commit.files[sibling["rfilename"]]
                sibling.update(blobId=entry.oid(self.hub.blobs), size=entry.size)
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": 134}
        self._json(
            {"id": repo, "modelId": repo, "sha": commit.sha, "private": found.private, "siblings": siblings, "tags": []}
        )

    def refs(self, query: dict, repo: str) -> None:
        found = self._repo(repo)

        def refs(kind: str, names: dict[str, str]) -> list[dict]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": sha} for n, sha in sorted(names.items())]

        self._json({"branches": refs("heads", found.branches), "tags": refs("tags", found.tags), "converts": []})

    def tree(self, query: dict, repo: str, rev: str, path: str = "") -> None:
        found = self._repo(repo)
        commit = found.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        entries = []
        for p, e in sorted(commit.files.items()):
            item: dict = {"type": "file", "path": p, "size": e.size, "oid": git_blob_sha1(self.hub.blobs[e.sha256])}
            if e.lfs:
                item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": 134}
            entries.append(item)
        self._json(entries)

    def preupload(self, query: dict, repo: str, rev: str) -> None:
        found = self._repo(repo, write=True)
        body = json.loads(self._body())
        head = found.resolve(rev)
        files = []
        for f in body["files"]:
            if (
                not isinstance(f.get("path"), str)
                or not isinstance(f.get("size"), int)
                or not isinstance(f.get("sample"), str)
            ):
                raise HubError(400, "each file needs path, size and a base64 sample")
            lfs = self.hub.lfs and f["size"] >= LFS_THRESHOLD
            info: dict = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = head.files.get(f["path"]) if head else None
            if existing is not None and existing.lfs == lfs:
                info["oid"] = existing.oid(self.hub.blobs)
            files.append(info)
        self._json({"files": files})

    def lfs_batch(self, query: dict, repo: str) -> None:
        self._repo(repo, write=True)
        body = json.loads(self._body())
        if body.get("operation") != "upload" or body.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, "only sha256 uploads are supported")
        objects = []
        for obj in body["objects"]:
            item: dict = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.blobs:  # already stored: no actions, the client skips it
                base = f"{self.server.url}/lfs-store/{repo}/{obj['oid']}"
                item["actions"] = {
                    "upload": {"href": base, "header": {}},
                    "verify": {"href": base + "/verify", "header": {}},
                }
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects})

    def lfs_put(self, query: dict, repo: str, oid: str) -> None:
        data = self._body()
        with self.hub.lock:
            self.hub.upload_bytes += len(data)
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "uploaded bytes do not match the oid")
        self.hub.blobs[oid] = data
        self._send(200)

    def lfs_verify(self, query: dict, repo: str, oid: str) -> None:
        body = json.loads(self._body())
        if body.get("oid") != oid or oid not in self.hub.blobs or len(self.hub.blobs[oid]) != body.get("size"):
            raise HubError(422, "object not uploaded")
        self._json({"success": True})

    def commit(self, query: dict, repo: str, rev: str) -> None:
        found = self._repo(repo, write=True)
        raw = self._body()
        if self.headers.get("Content-Type") != "application/x-ndjson":
            raise HubError(400, "commit body must be application/x-ndjson")
        lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first line must be the header")
        header = lines[0]["value"]
        if self.hub.hold is not None:
            self.hub.hold.wait(30)
        with self.hub.lock:
            self.hub.upload_bytes += len(raw)
            head_sha = found.branches.get(rev)
            if head_sha is None:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent is not None and parent != head_sha:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(found.commits[head_sha].files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    sha = hashlib.sha256(data).hexdigest()
                    self.hub.blobs[sha] = data
                    files[value["path"]] = Entry(sha, len(data), False)
                elif key == "lfsFile":
                    if value["oid"] not in self.hub.blobs:
                        raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = Entry(value["oid"], len(self.hub.blobs[value["oid"]]), True)
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    raise HubError(400, f"unsupported commit operation {key}")
            commit = self.hub.new_commit(found, head_sha, files, header.get("summary", ""))
            found.branches[rev] = commit.sha
        self._json(
            {"commitUrl": f"{self.server.url}/{repo}/commit/{commit.sha}", "commitOid": commit.sha, "success": True}
        )

    def tag(self, query: dict, repo: str, rev: str) -> None:
        found = self._repo(repo, write=True)
        body = json.loads(self._body())
        commit = found.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        with self.hub.lock:
            if body["tag"] in found.tags:
                raise HubError(409, f"Tag {body['tag']} already exists")
            found.tags[body["tag"]] = commit.sha
        self._json({"success": True})

    def resolve(self, query: dict, repo: str, rev: str, path: str, head: bool = False) -> None:
        found = self._repo(repo)
        commit = found.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        data = self.hub.blobs[entry.sha256]
        etag = entry.sha256 if entry.lfs else git_blob_sha1(data)
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(entry.size)
        for pattern, override in self.hub.file_headers:
            if re.fullmatch(pattern, path):
                headers = {**headers, **override}
        self._send(200, data, headers, head=head)

    def resolve_head(self, query: dict, repo: str, rev: str, path: str) -> None:
        self.resolve(query, repo, rev, path, head=True)


ROUTES = [
    ("POST", r"/api/repos/create", Handler.create_repo),
    ("POST", r"/api/validate-yaml", Handler.validate_yaml),
    ("GET", rf"/api/models/{_REPO}", Handler.info),
    ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)", Handler.info),
    ("GET", rf"/api/models/{_REPO}/refs", Handler.refs),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", Handler.tree),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", Handler.preupload),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", Handler.commit),
    ("POST", rf"/api/models/{_REPO}/tag/(?P<rev>[^/]+)", Handler.tag),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", Handler.lfs_batch),
    ("PUT", rf"/lfs-store/{_REPO}/(?P<oid>[0-9a-f]{{64}})", Handler.lfs_put),
    ("POST", rf"/lfs-store/{_REPO}/(?P<oid>[0-9a-f]{{64}})/verify", Handler.lfs_verify),
    ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", Handler.resolve),
    ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", Handler.resolve_head),
]


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        tokens: dict[str, str],
        lfs: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """TLS: (certificate file, key file) to serve https (a token goes only to https off this host)."""
        super().__init__((host, port), Handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.state = HubState(tokens, lfs)
        self.url = f"{'https' if tls else 'http'}://{host}:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def main() -> None:
    """Serve until killed, on a host of its own (tests/test_hosts.py): prints the URL once listening."""
    import argparse
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token", action="append", default=[], help="TOKEN=USER (repeatable)")
    args = parser.parse_args()
    tokens = dict(t.split("=", 1) for t in args.token)
    server = HubServer(tokens, host=args.host, port=args.port, tls=(args.cert, args.key))
    print(server.url, flush=True, file=sys.stdout)
    server.serve_forever()


if __name__ == "__main__":
    main()
