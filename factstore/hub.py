"""The Hugging Face Hub, through huggingface_hub: model revisions, repos, commits, tags, downloads.

Every call goes through `_translated`, which turns the client's exceptions into one-line
FactStoreErrors that say what to do next. Tokens come from the argument, `HF_TOKEN` or the
huggingface_hub login (the library resolves them); they are never stored or printed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    get_session,
    get_token,
    hf_hub_download,
    hf_hub_url,
    scan_cache_dir,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from factstore.errors import (
    HubAuthError,
    HubError,
    HubFileTooLarge,
    HubNotFound,
    HubUnreachable,
    PublishConflict,
    ReleaseVerificationError,
)

TOKEN_HINT = "set HF_TOKEN or run `hf auth login`"
VERSION_TAG = re.compile(r"v(\d+)")


# What huggingface_hub turns into cache paths, as the Hub defines them: a commit is a git SHA-1,
# an ETag the git SHA-1 of a small file or the sha256 of an LFS one.
COMMIT_HEADER = "x-repo-commit"
ETAG_HEADERS = ("x-linked-etag", "etag")
SAFE_COMMIT = re.compile(r"[0-9a-f]{40}")
SAFE_ETAG = re.compile(r'(?:W/)?"?(?:[0-9a-f]{40}|[0-9a-f]{64})"?')
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def check_repo_id(repo: str) -> None:
    """A Hub repository id NAMESPACE/NAME (it also names local folders: no '..', no other separators)."""
    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise HubError(f"{repo!r} is not a Hub repository id: give NAMESPACE/NAME (letters, digits, '.', '_', '-')")


def has_credentials() -> bool:
    """Whether this process has a Hub token of its own (HF_TOKEN, or a `hf auth login`): what a
    worker needs to run publish jobs (a token never travels through the API or the database)."""
    return get_token() is not None


def tag_for(version: int) -> str:
    return f"v{version}"


@contextmanager
def _translated(endpoint: str, repo: str, what: str) -> Iterator[None]:
    try:
        yield
    except (RevisionNotFoundError, EntryNotFoundError) as exc:
        raise HubNotFound(
            f"{repo}: {what} failed, not found ({_first_line(exc)}); `factstore pull {repo}` without --version takes the newest release"
        ) from None
    except RepositoryNotFoundError:
        raise HubNotFound(
            f"repository {repo} not found at {endpoint}, or it is private and the token cannot read it; check the name, {TOKEN_HINT}"
        ) from None
    except HFValidationError as exc:
        raise HubError(f"{what} on {repo[:100]!r} refused: {_first_line(exc)}") from None
    except LocalTokenNotFoundError:
        raise HubAuthError(f"{what} needs a Hub token; {TOKEN_HINT}") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise HubAuthError(
                f"the Hub at {endpoint} refused the token for {what}; {TOKEN_HINT} with a valid token"
            ) from None
        if status == 403:
            raise HubAuthError(
                f"the token may not {what} on {repo}; use a token with write access to its namespace"
            ) from None
        if status in (409, 412):
            raise PublishConflict(
                f"{repo} changed while we published ({_first_line(exc)}); pull the latest release with `factstore pull {repo} --import-edits` and publish again"
            ) from None
        raise HubError(f"{what} on {repo} failed: {_first_line(exc)}") from None
    except (httpx2.TransportError, OfflineModeIsEnabled) as exc:
        raise HubUnreachable(
            f"cannot reach the Hub at {endpoint} ({type(exc).__name__}: {exc}); check the network or --endpoint, then rerun (finished steps are kept)"
        ) from None


def branch_commit(repo: str, branches: dict[str, str], branch: str = "main") -> str:
    """The commit BRANCH points at, from Hub.refs()[0]."""
    if branch not in branches:
        raise HubNotFound(f"{repo} has no branch {branch!r}")
    return branches[branch]


def latest_version_tag(tags: dict[str, str]) -> str | None:
    """The highest vN among a repository's tags (from Hub.tags())."""
    versions = [int(m.group(1)) for t in tags if (m := VERSION_TAG.fullmatch(t))]
    return tag_for(max(versions)) if versions else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def trusted(endpoint: str | None) -> bool:
    """Whether a token may be sent to ENDPOINT: the default Hub, any https endpoint, or plain
    http on this machine (a local test server); never plain http to another host."""
    if endpoint is None:
        return True
    url = urlsplit(endpoint)
    return url.scheme == "https" or (url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost", "::1"))


def check_download_headers(response: httpx2.Response) -> None:
    """Refuse a file response whose commit or ETag is not a hash. huggingface_hub (2.4) joins both
    into cache paths unchecked (blobs/<etag>, .no_exist/<commit>/...): a server answering
    `ETag: "../../x"` would have it write outside the cache. This runs on every response, before
    huggingface_hub reads a header."""
    if "/resolve/" not in response.request.url.path:
        return  # API listings carry their own ETags, which no path is made of
    commit = response.headers.get(COMMIT_HEADER)
    if commit is not None and not SAFE_COMMIT.fullmatch(commit):
        raise ReleaseVerificationError(
            f"the Hub at {response.request.url.host} named a commit that is not a SHA-1 for a file; refused before anything was written"
        )
    # the one huggingface_hub uses: X-Linked-Etag (an LFS file's sha256), else ETag; a redirect's
    # own ETag beside an X-Linked-Etag names no path
    etag = response.headers.get(ETAG_HEADERS[0]) or response.headers.get(ETAG_HEADERS[1])
    if etag is not None and not SAFE_ETAG.fullmatch(etag):
        raise ReleaseVerificationError(
            f"the Hub at {response.request.url.host} gave a file an ETag that is not a hash; refused before anything was written"
        )


def install_download_checks() -> None:
    """Make huggingface_hub's shared HTTP client run check_download_headers on every response.
    Called before each download: the library makes a new client after a fork or a reset."""
    client = get_session()
    hooks = client.event_hooks
    if check_download_headers not in hooks["response"]:
        client.event_hooks = {**hooks, "response": [*hooks["response"], check_download_headers]}


def check_readable(endpoint: str) -> None:
    """Downloads only over https or from this machine: over plain http to another host a man in
    the middle chooses the bytes (and the headers huggingface_hub makes paths of)."""
    if not trusted(endpoint):
        raise HubError(
            f"refusing to download from {endpoint}: plain http is allowed only to this machine (127.0.0.1, localhost, ::1); use https"
        )


class Hub:
    """One endpoint and token. endpoint=None means HF_ENDPOINT or huggingface.co.

    token: a token, None (HF_TOKEN or the huggingface_hub login, sent only to a trusted
    endpoint) or False (anonymous). The token is never stored or printed."""

    def __init__(self, endpoint: str | None = None, token: str | bool | None = None) -> None:
        self._token: str | bool | None = token if trusted(endpoint) else False
        self.api = HfApi(endpoint=endpoint, token=self._token)
        self.endpoint = self.api.endpoint

    def anonymous(self) -> Hub:
        """The same endpoint without a token (reads of public repositories need none)."""
        return Hub(self.endpoint, token=False)

    def ensure_repo(self, repo: str, private: bool) -> None:
        with _translated(self.endpoint, repo, "create the repository"):
            self.api.create_repo(repo, private=private, exist_ok=True, repo_type="model")

    def refs(self, repo: str) -> tuple[dict[str, str], dict[str, str]]:
        """(branch name -> commit SHA, tag name -> commit SHA), from one request."""
        with _translated(self.endpoint, repo, "read the repository's branches and tags"):
            refs = self.api.list_repo_refs(repo, repo_type="model")
        return {b.name: b.target_commit for b in refs.branches}, {t.name: t.target_commit for t in refs.tags}

    def branch_head(self, repo: str, branch: str = "main") -> str:
        """The commit BRANCH points at now."""
        return branch_commit(repo, self.refs(repo)[0], branch)

    def tags(self, repo: str) -> dict[str, str]:
        """tag name -> commit SHA."""
        return self.refs(repo)[1]

    def upload(
        self,
        repo: str,
        folder: Path,
        files: list[str],
        parent: str,
        message: str,
        description: str = "",
        extra: dict[str, Path] | None = None,
    ) -> str:
        """One commit on main holding exactly FILES (plain names) of FOLDER, and EXTRA (path in the
        repository -> local file); refused by the Hub unless main is still at PARENT. Files the
        repository already holds with the same content are not sent again."""
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
        ops += [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(local))
            for name, local in sorted((extra or {}).items())
        ]
        with _translated(self.endpoint, repo, "upload the release"):
            info = self.api.create_commit(
                repo_id=repo,
                operations=ops,
                repo_type="model",
                revision="main",
                parent_commit=parent,
                commit_message=message,
                commit_description=description,
            )
        return info.oid

    def put_file(self, repo: str, local: Path, path_in_repo: str, message: str) -> str:
        """One commit on main adding LOCAL as PATH_IN_REPO, on whatever main is then (a file of its
        own name: concurrent writers of other files do not conflict). Returns the commit."""
        op = CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=str(local))
        with _translated(self.endpoint, repo, f"upload {path_in_repo}"):
            info = self.api.create_commit(repo_id=repo, operations=[op], repo_type="model", commit_message=message)
        return info.oid

    def tag(self, repo: str, tag: str, commit: str, message: str) -> None:
        """Create TAG at COMMIT; an existing tag at the same commit is success (a resumed publish)."""
        try:
            with _translated(self.endpoint, repo, "tag the release"):
                self.api.create_tag(repo, tag=tag, revision=commit, tag_message=message, repo_type="model")
        except PublishConflict:
            if self.tags(repo).get(tag) != commit:
                raise PublishConflict(
                    f"{repo} already has a tag {tag} on another commit: someone published that version first; pull it with `factstore pull {repo} --import-edits` and publish again"
                ) from None

    def file_sha256(self, repo: str, commit: str, filename: str, max_bytes: int) -> str | None:
        """sha256 of one file at COMMIT, or None when that commit holds no such file or one larger
        than MAX_BYTES (not the file asked about, and not worth fetching)."""
        try:
            return hashlib.sha256(self.download_file(repo, commit, filename, max_bytes).read_bytes()).hexdigest()
        except (HubNotFound, HubFileTooLarge):
            return None

    def resolve(self, repo: str, version: str | None = None) -> str:
        """A tag, branch or commit SHA (None: the default branch) -> the commit SHA it names."""
        return self.revision(repo, version)[0]

    def revision(self, repo: str, version: str | None = None) -> tuple[str, set[str]]:
        """(commit SHA, the names of every file at that commit) of a tag, branch or commit SHA."""
        with _translated(self.endpoint, repo, f"resolve version {version or 'main'}"):
            info = self.api.model_info(repo, revision=version)
        if info.sha is None or not re.fullmatch(r"[0-9a-f]{40}", info.sha):
            raise HubError(f"{repo}: the Hub named no commit for {version or 'main'}")
        return info.sha, {s.rfilename for s in info.siblings or []}

    def file_sizes(self, repo: str, commit: str) -> dict[str, int | None]:
        """Name -> size in bytes, as the Hub lists it, of every file at COMMIT (None: not given)."""
        with _translated(self.endpoint, repo, f"list the files of {commit[:12]}"):
            info = self.api.model_info(repo, revision=commit, files_metadata=True)
        return {s.rfilename: s.size for s in info.siblings or []}

    def download_file(self, repo: str, commit: str, filename: str, max_bytes: int | None = None) -> Path:
        """One file of one commit, through the huggingface_hub cache. With MAX_BYTES, a file the
        Hub says is larger is refused before a byte of it is fetched (a repository is untrusted:
        a huge file where a small one belongs would fill the disk before any later check ran)."""
        check_readable(self.endpoint)
        install_download_checks()
        with _translated(self.endpoint, repo, f"download {filename}"):
            if max_bytes is not None:
                url = hf_hub_url(repo, filename, revision=commit, repo_type="model", endpoint=self.endpoint)
                size = self.api.get_hf_file_metadata(url=url).size
                if size is None:
                    raise HubFileTooLarge(
                        f"{repo}@{commit[:12]}: the Hub did not say how large {filename} is; refused before downloading it"
                    )
                if size > max_bytes:
                    raise HubFileTooLarge(
                        f"{repo}@{commit[:12]}: {filename} is {size:,} bytes, more than the {max_bytes:,} it can be; refused before downloading it"
                    )
            return Path(
                hf_hub_download(
                    repo, filename, revision=commit, repo_type="model", endpoint=self.endpoint, token=self._token
                )
            )

    def download(self, repo: str, commit: str, allow_patterns: list[str] | None = None) -> Path:
        """The files of one commit (those matching ALLOW_PATTERNS, when given), through the
        huggingface_hub cache (unchanged files are not fetched again)."""
        check_readable(self.endpoint)
        install_download_checks()
        try:
            with _translated(self.endpoint, repo, f"download {commit[:12]}"):
                path = snapshot_download(
                    repo,
                    revision=commit,
                    repo_type="model",
                    endpoint=self.endpoint,
                    token=self._token,
                    allow_patterns=allow_patterns,
                )
        except OSError as exc:
            if exc.errno is not None:  # the local disk: full, read-only, no permission
                raise HubError(
                    f"cannot write {repo}@{commit[:12]} into the download cache ({exc.strerror}); free disk space or set HF_HOME"
                ) from None
            # huggingface_hub's own consistency check of a downloaded file's size
            raise ReleaseVerificationError(f"{repo}@{commit[:12]}: {_first_line(exc)}; nothing was written") from None
        return Path(path)


def cached_blob(repo: str, sha256: str) -> bool:
    """Whether the huggingface_hub download cache holds an LFS file of REPO with this sha256 (a
    download fetches it no more)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return (
        Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "blobs" / sha256
    ).is_file()


def forget_snapshot(snapshot: Path) -> None:
    """Drop one cached commit through huggingface_hub's cache API (so a retry downloads its files
    again); blobs other cached commits still use are kept. SNAPSHOT is what download returned."""
    cache_dir, commit = snapshot.parents[2], snapshot.name
    cached = scan_cache_dir(cache_dir)
    if any(r.commit_hash == commit for repo in cached.repos for r in repo.revisions):
        cached.delete_revisions(commit).execute()
