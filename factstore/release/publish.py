"""Publish releases to the Hub as versions of one repository.

Publishing is three steps, each recorded, so a rerun after any failure finishes the job:
upload (one commit on main whose parent is the previous release's commit; the commit SHA is
stored on the release row), tag `vN`, mark the row `published`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from factstore.domain import Release, StoredEdit
from factstore.errors import PublishConflict
from factstore.hub import Hub, branch_commit, tag_for
from factstore.options import CompileOptions, PublishOptions
from factstore.progress import SILENT, Reporter
from factstore.release import build, health, layout
from factstore.release.build import checked_folder
from factstore.release.manifest import MAX_MANIFEST_BYTES
from factstore.storage.store import Store
from factstore.weights import stats


@dataclass(frozen=True)
class Published:
    repo: str
    version: int
    tag: str
    commit: str
    already: bool  # nothing to do: this release was published before

    def to_json(self) -> dict:
        return dict(self.__dict__)


def publish(
    store: Store,
    alias: str,
    repo: str,
    options: PublishOptions = PublishOptions(),
    *,
    token: str | None = None,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> Published:
    """Publish the current edit log of ALIAS to REPO as the next version (compiling if it
    changed). A release whose held-out perplexity rose past FACTSTORE_MAX_PERPLEXITY_RISE is
    refused unless options.allow_degraded. options.version (a publish job's): that release,
    which must be the current log's, or PublishConflict before anything is compiled or sent.
    TOKEN: the Hub token (None: HF_TOKEN or the stored login)."""
    version = options.version
    mode = options.mode if version is None else release_mode(store, alias, version)
    release, _ = build.build(store, alias, CompileOptions(mode=mode), device=device, progress=progress)
    if version is not None and release.version != version:
        raise PublishConflict(f"the current log of {alias} is v{release.version}, not v{version}; nothing was sent")
    if release.status != "published":
        scores = build.checked_folder(release).scores
        health.check_publishable(release.version, scores, options.allow_degraded, release.mode)
    if release.hub_repo not in (None, repo):
        raise PublishConflict(
            f"v{release.version} is already published to {release.hub_repo}; one repository holds one lineage"
        )
    tag = tag_for(release.version)
    if release.status == "published":
        if release.hub_commit is None:
            raise RuntimeError(f"release v{release.version} is marked published without a Hub commit")
        return Published(repo, release.version, tag, release.hub_commit, already=True)
    hub = Hub(options.endpoint, token)
    if release.hub_commit is None:  # not uploaded yet (or the upload failed before the commit landed)
        release = _upload(store, hub, release, repo, options.private, options.with_stats)
    if release.hub_commit is None:
        raise RuntimeError(f"release v{release.version} was uploaded without a Hub commit")
    hub.tag(repo, tag, release.hub_commit, f"factstore release {tag}: {len(release.edit_ids)} edits")
    store.set_release_published(release.id, tag)
    return Published(repo, release.version, tag, release.hub_commit, already=False)


def release_mode(store: Store, alias: str, version: int) -> str:
    """The compile mode of release VERSION of ALIAS, which must be the release of the current log
    (PublishConflict otherwise, before anything is compiled or sent)."""
    base_id = store.get_base_model(alias).id
    asked, latest = store.get_release(base_id, version), store.get_latest_release(base_id)
    if (
        latest is None
        or latest.version != version
        or build.current_log_sha256(store, alias, asked.mode) != asked.edit_log_sha256
    ):
        raise PublishConflict(
            f"v{version} is not the release of {alias}'s current log (edits were added or retracted since); "
            "compile, then publish the new version"
        )
    return asked.mode


def _upload(store: Store, hub: Hub, release: Release, repo: str, private: bool, with_stats: bool = False) -> Release:
    hub.ensure_repo(repo, private)
    branches, tags = hub.refs(repo)
    head = branch_commit(repo, branches)
    parent = store.get_published_release(release.base_model_id, repo)
    tag = tag_for(release.version)
    if tag in tags:
        raise PublishConflict(
            f"{repo} already has {tag}: someone published that version first; pull it with `factstore pull {repo} --import-edits`, then publish again"
        )
    if hub.file_sha256(repo, head, layout.MANIFEST, MAX_MANIFEST_BYTES) == release.manifest_sha256:
        return store.set_release_hub_commit(
            release.id, repo=repo, commit=head
        )  # an earlier try landed; its answer was lost
    if parent is not None and head != parent.hub_commit:
        raise PublishConflict(
            f"{repo} has moved on since v{parent.version} (main is at {head[:12]}); pull the latest with `factstore pull {repo} --import-edits`, then publish again"
        )
    if parent is None and any(t.startswith("v") for t in tags):
        raise PublishConflict(
            f"{repo} already holds releases of a lineage this store does not know; pull one with `factstore pull {repo} --import-edits` first"
        )
    n = len(release.edit_ids)
    files = [*checked_folder(release).files, layout.MANIFEST]
    extra = shipped_files(store, release.edit_ids, hub.revision(repo, head)[1]) if with_stats else {}
    try:
        commit = hub.upload(
            repo,
            Path(release.path),
            files,
            head,
            f"factstore release {tag}",
            f"{n} edits, {release.mode} compile",
            extra,
        )
    except PublishConflict:
        # huggingface_hub retries a commit whose answer was lost; the retry then finds main
        # moved, by our own commit: adopt it rather than report a conflict
        landed = hub.branch_head(repo)
        if hub.file_sha256(repo, landed, layout.MANIFEST, MAX_MANIFEST_BYTES) != release.manifest_sha256:
            raise
        commit = landed
    return store.set_release_hub_commit(release.id, repo=repo, commit=commit)


def _covariance_ids(store: Store, edit: StoredEdit) -> list[int]:
    """The C an edit's compile reads: its own, and for a band edit the C of each layer below
    of the same corpus, size and dtype (one record per spec)."""
    if edit.covariance_id is None:
        return []
    own = store.get_covariance(edit.covariance_id)
    lower = {a.layer for a in edit.band} - {edit.layer}
    spec = (own.corpus_sha256, own.tokens, own.dtype)
    below = [
        c.id
        for c in store.list_covariances(edit.base_model_id)
        if c.layer in lower and (c.corpus_sha256, c.tokens, c.dtype) == spec
    ]
    return [own.id, *below]


def shipped_files(store: Store, edit_ids: Sequence[int], present: set[str]) -> dict[str, Path]:
    """Path in the repository -> local file of each C the edits used that the repository does not
    hold yet (content-addressed: a C is uploaded once per repository, whatever the version)."""
    out: dict[str, Path] = {}
    for cov_id in sorted({c for i in edit_ids for c in _covariance_ids(store, store.get_edit(i))}):
        cov = store.get_covariance(cov_id)
        name = stats.shipped_name(cov.sha256)
        if name in present or name in out:
            continue
        out[name] = stats.checked_local_file(cov)
    return out
