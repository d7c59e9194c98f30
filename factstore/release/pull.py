"""Pull releases back from the Hub, verified against their manifest, and import a pulled
release's edit log so a teammate continues the same lineage."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from factstore import config
from factstore.domain import BaseModel, EditRequest, NewEdit, Release, StoredEdit
from factstore.editing.models import register_model
from factstore.editing.session import EditSession
from factstore.errors import FactStoreError, ImportConflict, ReleaseVerificationError
from factstore.files import file_sha256, staged_folder
from factstore.hub import VERSION_TAG, Hub, latest_version_tag
from factstore.progress import SILENT, Reporter
from factstore.release import layout
from factstore.release.build import log_entries
from factstore.rome.hparams import ROMEHyperParams
from factstore.storage.store import Store
from factstore.weights.vectors import to_bytes


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
    _copy_verified(snapshot, layout.read_manifest(snapshot), target)
    named = sorted(t for t, sha in tags.items() if sha == commit and VERSION_TAG.fullmatch(t))
    return Pulled(repo, str(target), version if version in named else (named[-1] if named else None), commit, verified=True)


def _copy_verified(snapshot: Path, manifest: dict, target: Path) -> None:
    """Copy the manifest's files to TARGET through a temporary folder renamed into place, hashing
    each file once, in the copy: on a mismatch no folder is left and the cached files are dropped."""
    if target.exists() and any(target.iterdir()):
        if (target / layout.MANIFEST).exists() and file_sha256(target / layout.MANIFEST) == file_sha256(snapshot / layout.MANIFEST):
            layout.verify_folder(target)
            return  # the same release is already there
        raise FactStoreError(f"{target} exists and is not empty; choose another --out")
    with staged_folder(target) as tmp:
        for name in [*manifest["files"], layout.MANIFEST]:
            if (snapshot / name).is_file():
                shutil.copyfile(snapshot / name, tmp / name)
        if bad := layout.mismatched_files(tmp, manifest):
            _forget_cached(snapshot, bad)
            raise layout.mismatch_error(bad)


def import_release(
    store: Store, folder: Path, alias: str, repo: str | None = None, commit: str | None = None, tag: str | None = None,
    device: str | None = None, progress: Reporter = SILENT,
) -> dict:
    """Continue a pulled release's lineage locally: its base model, templates and edit log.

    The local active log of ALIAS must be a prefix of the release's (a fresh alias is the
    empty prefix); the rest of the release's edits are appended in order with their stored
    k* and v*. The release itself is recorded (published, when REPO and COMMIT are given), so
    the next compile is the next version and the next publish builds on its commit.
    """
    manifest = layout.verify_folder(folder)
    base_info = manifest["base"]
    base, _ = register_model(store, alias, base_info["source"], base_info["revision"], progress=progress)
    if base.revision != base_info["revision"]:
        raise ImportConflict(f"alias {alias} is {base.source}@{base.revision[:12]}, the release is built on {base_info['revision'][:12]}; import under another --alias")
    entries = manifest["edits"]
    local = store.list_edits(base.id, "active")
    if [(e.key_sha256, e.value_sha256) for e in local] != [(x["key_sha256"], x["value_sha256"]) for x in entries[: len(local)]]:
        raise ImportConflict(f"the active edits of {alias} are not a prefix of this release's edit log; import under a fresh --alias")
    for t in manifest.get("context_templates", []):
        store.create_context_templates(base.id, t["fingerprint"], seed=t["seed"], templates=t["templates"])
    vectors = layout.read_edit_vectors(folder, len(entries))
    added = [_import_edit(store, base.id, entry, key, value, cov) for entry, (key, value), cov in
             zip(entries[len(local):], vectors[len(local):], _covariances(store, alias, entries[len(local):], device, progress))]
    release = _record_imported(store, base, manifest, folder, (repo, commit, tag) if repo and commit and tag else None)
    return {"alias": alias, "base_revision": base.revision, "edits_added": len(added), "edits_total": len(entries), "release": release.version if release else None}


def _covariances(store: Store, alias: str, entries: list[dict], device: str | None, progress: Reporter) -> list[int | None]:
    """The local C record for each entry: computed (or reused) the way the release recorded it."""
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
            session = session or EditSession(store, alias, device=device, corpus=spec["corpus"], stats_tokens=spec["tokens"], progress=progress)
            hp = ROMEHyperParams.from_json(entry["hparams"])
            by_spec[key] = session.covariance(spec["layer"], hp).id
        result.append(by_spec[key])
    return result


def _import_edit(store: Store, base_id: int, entry: dict, key: torch.Tensor, value: torch.Tensor, cov_id: int | None) -> StoredEdit:
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
    return store.create_edit(base_id, new)


def _record_imported(store: Store, base: BaseModel, manifest: dict, folder: Path, published: tuple[str, str, str] | None) -> Release:
    """The pulled release as a row of this store, numbered as its tag says (or next, for a local folder)."""
    edits = store.list_edits(base.id, "active")
    log_sha = layout.edit_log_sha256(base.revision, manifest["mode"], log_entries(edits))
    for r in store.list_releases(base.id):
        if r.edit_log_sha256 == log_sha and (published is None or r.hub_commit == published[1]):
            return r  # this store already has that release
    match = VERSION_TAG.fullmatch(published[2]) if published else None
    version = int(match.group(1)) if match else store.get_next_release_version(base.id)
    if any(r.version == version for r in store.list_releases(base.id)):
        raise ImportConflict(f"this store already has a different v{version} of {base.alias}; import under a fresh --alias")
    manifest_sha = file_sha256(folder / layout.MANIFEST)
    return store.create_release(
        base.id, version, mode=manifest["mode"], edit_log_sha256=log_sha, manifest_sha256=manifest_sha, path=str(folder),
        edit_ids=[e.id for e in edits], published=published,
    )
