"""Pull releases back from the Hub, verified against their manifest (the repository is untrusted)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from factstore import config
from factstore.errors import FactStoreError, HubAuthError, HubError, HubNotFound, ReleaseVerificationError
from factstore.files import file_sha256, staged_folder, usable_folder
from factstore.hub import (
    VERSION_TAG,
    Hub,
    cached_blob,
    check_readable,
    check_repo_id,
    forget_snapshot,
    latest_version_tag,
)
from factstore.release import layout
from factstore.release import manifest as manifest_schema
from factstore.release.manifest import MANIFEST
from factstore.results import Imported
from factstore.weights import stats


@dataclass(frozen=True)
class Pulled:
    repo: str
    path: str
    version: str | None  # the tag pulled, when it was one
    commit: str
    verified: bool
    imported: Imported | None = None  # what --import-edits added

    def to_json(self) -> dict:
        return {**self.__dict__, "imported": self.imported.model_dump() if self.imported else None}


def pull(
    repo: str,
    version: str | None = None,
    out: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> Pulled:
    """Download one version (tag or commit SHA; default the newest vN tag), verify it, copy it to OUT.

    The repository is untrusted: its manifest is parsed against the schema before any other
    file is fetched, every file it names must be a plain name listed in the repository at that
    commit, and only those files are downloaded, read (inside the cache) and copied."""
    check_repo_id(repo)
    target = (
        usable_folder(out, empty=False) if out else config.home() / "pulled" / repo / "pending"
    )  # the same release may be there
    hub = reader(Hub(endpoint, token), repo)
    tags = hub.tags(repo)  # read once: picks the newest version, then names the pulled commit
    version = version or latest_version_tag(tags) or "main"
    commit, listed = hub.revision(repo, version)
    if not out:
        target = target.with_name(commit)
    if MANIFEST not in listed:
        raise ReleaseVerificationError(f"{repo}@{commit[:12]} has no {MANIFEST}: it is not a factstore release")
    manifest_file = hub.download_file(repo, commit, MANIFEST, manifest_schema.MAX_MANIFEST_BYTES)
    manifest = manifest_schema.read(manifest_file.parent, f"{repo}@{commit[:12]}")
    unlisted = sorted(set(manifest.files) - listed)
    if unlisted:
        raise ReleaseVerificationError(
            f"{repo}@{commit[:12]}: the manifest names files the repository does not hold ({', '.join(unlisted[:5])}); nothing was written"
        )
    _check_room(hub, repo, commit, manifest, target)
    snapshot = hub.download(repo, commit, allow_patterns=[*manifest.files, MANIFEST])
    _copy_verified(snapshot, manifest, target)
    named = sorted(t for t, sha in tags.items() if sha == commit and VERSION_TAG.fullmatch(t))
    return Pulled(
        repo, str(target), version if version in named else (named[-1] if named else None), commit, verified=True
    )


def _check_room(hub: Hub, repo: str, commit: str, manifest: manifest_schema.Manifest, target: Path) -> None:
    """Refuse before downloading when the release's files, as the Hub lists their sizes, would not
    fit: in the download cache (less the files it holds already) and again in TARGET, on whichever
    disks those are. A repository is untrusted: its files could be any size."""
    from huggingface_hub import constants

    origin = f"{repo}@{commit[:12]}"
    sizes = hub.file_sizes(repo, commit)
    if unknown := sorted(n for n in manifest.files if sizes.get(n) is None):
        raise ReleaseVerificationError(
            f"{origin}: the Hub did not say how large {unknown[0]} is; refused before downloading it"
        )
    total = sum(sizes[n] or 0 for n in manifest.files)
    fetched = sum(sizes[n] or 0 for n, sha in manifest.files.items() if not cached_blob(repo, sha))
    need: dict[int, tuple[int, Path]] = {}  # device -> (bytes, a folder on it)
    copied = 0 if (target / MANIFEST).is_file() else total  # a folder holding a release is kept as it is, or refused
    for folder, n in ((Path(constants.HF_HUB_CACHE), fetched), (target, copied)):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        device = existing.stat().st_dev
        need[device] = (need.get(device, (0, existing))[0] + n, existing)
    for n, folder in need.values():
        free = shutil.disk_usage(folder).free
        if n > free:
            raise HubError(
                f"{origin} needs {n / 1e9:.2f} GB on the disk of {folder}, which has {free / 1e9:.2f} GB free; "
                "free space, or set HF_HOME or --out elsewhere; nothing was downloaded"
            )


def reader(hub: Hub, repo: str) -> Hub:
    """Read anonymously when the repository is public; send the token only when it is needed.
    Refused at once over plain http to another machine."""
    check_readable(hub.endpoint)
    anonymous = hub.anonymous()
    try:
        anonymous.tags(repo)
        return anonymous
    except (HubNotFound, HubAuthError):
        return hub


def cached_file(snapshot: Path, name: str) -> Path:
    """The cached file behind SNAPSHOT/NAME, refused unless it is a regular file inside this
    repository's cache folder (huggingface_hub links snapshot files to ../../blobs)."""
    cache_root = snapshot.parents[1].resolve()
    path = (snapshot / name).resolve()
    if not path.is_relative_to(cache_root) or not path.is_file():
        raise ReleaseVerificationError(
            f"{name} of the release is not a regular file inside the download cache; nothing was written"
        )
    return path


def _copy_verified(snapshot: Path, manifest: manifest_schema.Manifest, target: Path) -> None:
    """Copy the manifest's files to TARGET through a temporary folder renamed into place, hashing
    each file once, in the copy: on a mismatch no folder is left and the cached commit is dropped."""
    source_manifest = cached_file(snapshot, MANIFEST)
    if target.exists() and any(target.iterdir()):
        if (target / MANIFEST).is_file() and file_sha256(target / MANIFEST) == file_sha256(source_manifest):
            layout.verify_folder(target)
            return  # the same release is already there
        raise FactStoreError(f"{target} exists and is not empty; choose another --out")
    with staged_folder(target) as tmp:
        for name in [*manifest.files, MANIFEST]:
            shutil.copyfile(cached_file(snapshot, name), tmp / name)
        if bad := layout.mismatched_files(tmp, manifest.files):
            forget_snapshot(snapshot)
            raise layout.mismatch_error(bad)


def shipped_stats(
    repo: str, commit: str, endpoint: str | None = None, token: str | None = None
) -> Callable[[str, int], Path | None]:
    """For --import-edits: (sha256 of a C, the most bytes its file can be) -> the file the release
    commit ships for it (stats/SHA.safetensors), downloaded only when asked for and not larger;
    None when the commit holds no such file. The caller checks its content."""
    hub = reader(Hub(endpoint, token), repo)
    _, listed = hub.revision(repo, commit)

    def fetch(sha256: str, max_bytes: int) -> Path | None:
        name = stats.shipped_name(sha256)
        if not re.fullmatch(r"[0-9a-f]{64}", sha256) or name not in listed:
            return None
        return cached_file(hub.download_file(repo, commit, name, max_bytes).parents[1], name)

    return fetch
