"""Where workers on different hosts hand each other key statistics: shard sums on their way to
a merge, and the merged C every worker then reads instead of computing it.

FACTSTORE_STATS_SHARE names it: a folder every host mounts, or `hub:NS/NAME`, a Hub repository
(each worker's own token and HF_ENDPOINT). Files are named by content or by spec key, never by a
path a job chose, and whoever reads one checks it against the sha256 the database recorded."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Protocol

from factstore import config
from factstore.config import SettingsError
from factstore.errors import HubError, HubNotFound
from factstore.files import atomic_path, file_sha256

SHARE_DIR = "factstore-stats"  # the share's own folder (in a shared folder, or in the repository)
# a merged C ({spec key}.safetensors) or one shard sum ({work key}.shard-I-of-N.{sha256[:16]}.safetensors)
NAME = re.compile(r"[0-9a-f]{64}(\.shard-\d{1,4}-of-\d{1,4}\.[0-9a-f]{16})?\.safetensors")


class Share(Protocol):
    where: str

    def put(self, local: Path, name: str) -> None:
        """Store LOCAL under NAME (replacing a file of that name: names are content or spec keys)."""

    def fetch(self, name: str, dest: Path, max_bytes: int) -> bool:
        """NAME copied to DEST (False when the share has no such file)."""


def _checked(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"not a statistics share file name: {name[:80]!r}")
    return name


class FolderShare:
    """A folder every host mounts (NFS, a bind mount): files are written whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = root / SHARE_DIR
        self.where = str(root)

    def put(self, local: Path, name: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.root / _checked(name)) as tmp:
            shutil.copyfile(local, tmp)

    def fetch(self, name: str, dest: Path, max_bytes: int) -> bool:
        source = self.root / _checked(name)
        if not source.is_file() or source.is_symlink() or source.stat().st_size > max_bytes:
            return False
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)
        return True


class HubShare:
    """A Hub repository of statistics (`stats push` writes its stats/ folder; this, its own)."""

    def __init__(self, repo: str) -> None:
        from factstore.hub import check_repo_id

        check_repo_id(repo)
        self.repo, self.where = repo, f"hub:{repo}"

    def put(self, local: Path, name: str) -> None:
        from factstore.hub import Hub

        hub = Hub(_endpoint())
        hub.ensure_repo(self.repo, private=True)
        hub.put_file(self.repo, local, f"{SHARE_DIR}/{_checked(name)}", f"factstore: {name}")

    def fetch(self, name: str, dest: Path, max_bytes: int) -> bool:
        from factstore.hub import Hub

        try:
            path = Hub(_endpoint()).download_file(self.repo, "main", f"{SHARE_DIR}/{_checked(name)}", max_bytes)
        except HubNotFound:
            return False
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)
        return True


def fetch_checked(source: Share, name: str, dest: Path, sha256: str, max_bytes: int) -> bool:
    """NAME from SOURCE written at DEST when its bytes have SHA256 (True); else DEST is left as
    it was (False)."""
    fetched = dest.with_suffix(".fetched")
    try:
        if not source.fetch(name, fetched, max_bytes) or file_sha256(fetched) != sha256:
            return False
        fetched.replace(dest)
        return True
    finally:
        fetched.unlink(missing_ok=True)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None  # the worker's own Hub, read now, as its token is


def configured() -> Share | None:
    """The share FACTSTORE_STATS_SHARE names, or None when it is unset."""
    text = config.settings().stats_share
    if text is None:
        return None
    if text.startswith("hub:"):
        try:
            return HubShare(text.removeprefix("hub:"))
        except HubError as exc:
            raise SettingsError(f"FACTSTORE_STATS_SHARE: {exc}") from None
    root = Path(text).expanduser()
    if not root.is_absolute():
        raise SettingsError(f"FACTSTORE_STATS_SHARE takes an absolute folder or hub:NS/NAME, not {text[:60]!r}")
    return FolderShare(root)
