"""Publish releases to the Hub as versions of one repository, pull them back verified, and
import a pulled release's edit log so a teammate continues the same lineage.

Publishing is three steps, each recorded, so a rerun after any failure finishes the job:
upload (one commit on main whose parent is the previous release's commit; the commit SHA is
stored on the release row), tag `vN`, mark the row `published`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from factstore import config, layout
from factstore.assets import file_sha256
from factstore.domain import EditRequest, NewEdit, Release
from factstore.errors import FactStoreError, ImportConflict, PublishConflict, ReleaseVerificationError
from factstore.hub import VERSION_TAG, Hub, branch_commit, latest_version_tag, tag_for
from factstore.store import Store


@dataclass(frozen=True)
class Published:
    repo: str
    version: int
    tag: str
    commit: str
    already: bool  # nothing to do: this release was published before

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Pulled:
    repo: str
    path: str
    version: str | None  # the tag pulled, when it was one
    commit: str
    verified: bool
    imported: dict | None = None  # what --import-edits added

    def to_json(self) -> dict:
        return dict(self.__dict__)


# publish -------------------------------------------------------------------------------------


def publish(
    store: Store, alias: str, repo: str, private: bool = False, mode: str | None = None,
    endpoint: str | None = None, token: str | None = None, device: str | None = None,
) -> Published:
    """Publish the current edit log of ALIAS to REPO as the next version (compiling if it changed)."""
    from factstore import compiler

    release, _ = compiler.build(store, alias, mode or compiler.DEFAULT_MODE, device=device)
    if release.hub_repo not in (None, repo):
        raise PublishConflict(f"v{release.version} is already published to {release.hub_repo}; one repository holds one lineage")
    tag = tag_for(release.version)
    if release.status == "published":
        assert release.hub_commit is not None
        return Published(repo, release.version, tag, release.hub_commit, already=True)
    hub = Hub(endpoint, token)
    if release.hub_commit is None:  # not uploaded yet (or the upload failed before the commit landed)
        release = _upload(store, hub, release, repo, private)
    assert release.hub_commit is not None
    hub.tag(repo, tag, release.hub_commit, f"factstore release {tag}: {len(release.edit_ids)} edits")
    store.mark_published(release.id, tag)
    return Published(repo, release.version, tag, release.hub_commit, already=False)


def _upload(store: Store, hub: Hub, release: Release, repo: str, private: bool) -> Release:
    hub.ensure_repo(repo, private)
    branches, tags = hub.refs(repo)
    head = branch_commit(repo, branches)
    parent = store.published_release(release.base_model_id, repo)
    tag = tag_for(release.version)
    if tag in tags:
        raise PublishConflict(f"{repo} already has {tag}: someone published that version first; pull it with `factstore pull {repo} --import-edits`, then publish again")
    if hub.manifest_sha256(repo, head) == release.manifest_sha256:
        return store.record_hub_commit(release.id, repo, head)  # an earlier try landed; its answer was lost
    if parent is not None and head != parent.hub_commit:
        raise PublishConflict(f"{repo} has moved on since v{parent.version} (main is at {head[:12]}); pull the latest with `factstore pull {repo} --import-edits`, then publish again")
    if parent is None and any(t.startswith("v") for t in tags):
        raise PublishConflict(f"{repo} already holds releases of a lineage this store does not know; pull one with `factstore pull {repo} --import-edits` first")
    n = len(release.edit_ids)
    try:
        commit = hub.upload(repo, Path(release.path), head, f"factstore release {tag}", f"{n} edits, {release.mode} compile")
    except PublishConflict:
        # huggingface_hub retries a commit whose answer was lost; the retry then finds main
        # moved, by our own commit: adopt it rather than report a conflict
        landed = hub.branch_head(repo)
        if hub.manifest_sha256(repo, landed) != release.manifest_sha256:
            raise
        commit = landed
    return store.record_hub_commit(release.id, repo, commit)


# pull ----------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict:
    path = folder / layout.MANIFEST
    if not path.exists():
        raise ReleaseVerificationError(f"{folder} has no {layout.MANIFEST}: it is not a factstore release")
    return json.loads(path.read_text())


def _mismatched(folder: Path, manifest: dict) -> list[str]:
    """Names of the manifest's files that are missing from FOLDER or differ from their sha256."""
    return [name for name, sha in sorted(manifest["files"].items()) if not (folder / name).is_file() or file_sha256(folder / name) != sha]


def _mismatch_error(bad: list[str]) -> ReleaseVerificationError:
    return ReleaseVerificationError(f"{', '.join(bad)} do not match the release manifest; the download is corrupted or was tampered with; nothing was written")


def verify_folder(folder: Path) -> dict:
    """Check every file the manifest names against its sha256; return the manifest."""
    manifest = read_manifest(folder)
    if bad := _mismatched(folder, manifest):
        raise _mismatch_error(bad)
    return manifest


def _forget_cached(snapshot: Path, names: list[str]) -> None:
    """Drop cached files that failed verification, so a retry downloads them again."""
    for name in names:
        path = snapshot / name
        if path.exists():
            blob = path.resolve()
            path.unlink()
            blob.unlink(missing_ok=True)


def pull(
    repo: str, version: str | None = None, out: str | None = None, endpoint: str | None = None, token: str | None = None,
) -> Pulled:
    """Download one version (tag or commit SHA; default the newest vN tag), verify it, copy it to OUT."""
    hub = Hub(endpoint, token)
    tags = hub.tags(repo)  # read once: picks the newest version, then names the pulled commit
    version = version or latest_version_tag(tags) or "main"
    commit = hub.resolve(repo, version)
    snapshot = hub.download(repo, commit)
    target = Path(out).expanduser().resolve() if out else config.home() / "pulled" / repo / commit
    _copy_verified(snapshot, read_manifest(snapshot), target)
    named = sorted(t for t, sha in tags.items() if sha == commit and VERSION_TAG.fullmatch(t))
    return Pulled(repo, str(target), version if version in named else (named[-1] if named else None), commit, verified=True)


def _copy_verified(snapshot: Path, manifest: dict, target: Path) -> None:
    """Copy the manifest's files to TARGET through a temporary folder renamed into place, hashing
    each file once, in the copy: on a mismatch no folder is left and the cached files are dropped."""
    if target.exists() and any(target.iterdir()):
        if (target / layout.MANIFEST).exists() and file_sha256(target / layout.MANIFEST) == file_sha256(snapshot / layout.MANIFEST):
            verify_folder(target)
            return  # the same release is already there
        raise FactStoreError(f"{target} exists and is not empty; choose another --out")
    with layout.staged_folder(target) as tmp:
        for name in [*manifest["files"], layout.MANIFEST]:
            if (snapshot / name).is_file():
                shutil.copyfile(snapshot / name, tmp / name)
        if bad := _mismatched(tmp, manifest):
            _forget_cached(snapshot, bad)
            raise _mismatch_error(bad)


# import --------------------------------------------------------------------------------------


def import_release(
    store: Store, folder: Path, alias: str, repo: str | None = None, commit: str | None = None, tag: str | None = None,
    device: str | None = None,
) -> dict:
    """Continue a pulled release's lineage locally: its base model, templates and edit log.

    The local active log of ALIAS must be a prefix of the release's (a fresh alias is the
    empty prefix); the rest of the release's edits are appended in order with their stored
    k* and v*. The release itself is recorded (published, when REPO and COMMIT are given), so
    the next compile is the next version and the next publish builds on its commit.
    """
    from factstore import service

    manifest = verify_folder(folder)
    base_info = manifest["base"]
    base, _ = service.add_model(store, alias, base_info["source"], base_info["revision"])
    if base.revision != base_info["revision"]:
        raise ImportConflict(f"alias {alias} is {base.source}@{base.revision[:12]}, the release is built on {base_info['revision'][:12]}; import under another --alias")
    entries = manifest["edits"]
    local = store.edits(base.id, "active")
    if [(e.key_sha256, e.value_sha256) for e in local] != [(x["key_sha256"], x["value_sha256"]) for x in entries[: len(local)]]:
        raise ImportConflict(f"the active edits of {alias} are not a prefix of this release's edit log; import under a fresh --alias")
    for t in manifest.get("context_templates", []):
        store.save_context_templates(base.id, t["fingerprint"], t["seed"], t["templates"])
    vectors = layout.read_edit_vectors(folder, len(entries))
    added = [_import_edit(store, base.id, entry, key, value, cov) for entry, (key, value), cov in
             zip(entries[len(local):], vectors[len(local):], _covariances(store, alias, entries[len(local):], device))]
    release = _record_imported(store, base, manifest, folder, (repo, commit, tag) if repo and commit and tag else None)
    return {"alias": alias, "base_revision": base.revision, "edits_added": len(added), "edits_total": len(entries), "release": release.version if release else None}


def _covariances(store: Store, alias: str, entries: list[dict], device: str | None) -> list[int | None]:
    """The local C record for each entry: computed (or reused) the way the release recorded it."""
    from factstore import service
    from factstore.rome.hparams import ROMEHyperParams

    if not entries:
        return []
    by_spec: dict[str, int] = {}
    result: list[int | None] = []
    session = None
    for entry in entries:
        spec = entry.get("covariance")
        if spec is None:
            result.append(None)
            continue
        key = json.dumps(spec, sort_keys=True)
        if key not in by_spec:
            session = session or service.open_session(store, alias, device=device, corpus=spec["corpus"], stats_tokens=spec["tokens"])
            hp = ROMEHyperParams.from_json(entry["hparams"])
            by_spec[key] = session.covariance(spec["layer"], hp).id
        result.append(by_spec[key])
    return result


def _import_edit(store: Store, base_id: int, entry: dict, key, value, cov_id: int | None):  # type: ignore[no-untyped-def]
    from factstore.vectors import to_bytes

    key_bytes, key_shape = to_bytes(key)
    value_bytes, value_shape = to_bytes(value)
    if hashlib.sha256(key_bytes).hexdigest() != entry["key_sha256"] or hashlib.sha256(value_bytes).hexdigest() != entry["value_sha256"]:
        raise ReleaseVerificationError(f"edit {entry['seq']}'s vectors do not match their sha256 in the manifest")
    request = EditRequest(entry["prompt"], entry["subject"], entry["target_new"], entry["target_true"], entry["relation_id"])
    new = NewEdit(
        request=request, target_true=entry["target_true"], layer=entry["layer"], module=entry["module"], key=key_bytes,
        key_shape=key_shape, value=value_bytes, value_shape=value_shape, hparams=entry["hparams"],
        hparams_fingerprint=entry["hparams_fingerprint"], covariance_id=cov_id, metrics=entry.get("metrics", {}),
        requested_by="import", note=entry.get("note"),
    )
    return store.add_edit(base_id, new)


def _record_imported(store: Store, base, manifest: dict, folder: Path, published: tuple[str, str, str] | None) -> Release:  # type: ignore[no-untyped-def]
    """The pulled release as a row of this store, numbered as its tag says (or next, for a local folder)."""
    from factstore import compiler

    edits = store.edits(base.id, "active")
    log_sha = layout.edit_log_sha256(base.revision, manifest["mode"], compiler.log_entries(edits))
    for r in store.releases(base.id):
        if r.edit_log_sha256 == log_sha and (published is None or r.hub_commit == published[1]):
            return r  # this store already has that release
    match = VERSION_TAG.fullmatch(published[2]) if published else None
    version = int(match.group(1)) if match else store.next_release_version(base.id)
    if any(r.version == version for r in store.releases(base.id)):
        raise ImportConflict(f"this store already has a different v{version} of {base.alias}; import under a fresh --alias")
    manifest_sha = file_sha256(folder / layout.MANIFEST)
    return store.record_release(base.id, version, manifest["mode"], log_sha, manifest_sha, str(folder), [e.id for e in edits], published)
