"""The release folder: weights laid out so an edit touches few files, a model card, a manifest.

Every MLP down-projection lives in its own file (an edit of layer L changes only that file);
everything else goes into base shards whose bytes never change for a base model. Files are
written deterministically (sorted keys, fixed metadata, no timestamps), so the same edit log
gives byte-identical folders.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from factstore import __version__, arch
from factstore.errors import ReleaseVerificationError
from factstore.files import atomic_path, atomic_write_text, file_sha256, sweep_leftovers
from factstore.release.manifest import FORMAT as MANIFEST_FORMAT
from factstore.release.manifest import MANIFEST, Manifest
from factstore.release.manifest import read as read_manifest

LAYOUT_VERSION = 1  # bump when shard_plan or the file format changes: cached stable files are keyed by it
BASE_SHARD_BYTES = 1 << 30  # at most 1 GiB per base shard
EDIT_VECTORS = "factstore-edits.safetensors"  # every edit's k* and v*, so a pulled release can be imported
INDEX = "model.safetensors.index.json"
_LOAD_TIME_KEYS = ("local_files_only", "is_local", "name_or_path", "_commit_hash")


def _tied_targets(model: PreTrainedModel) -> set[str]:
    """Parameters that from_pretrained re-ties to another (e.g. lm_head.weight to the embedding)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if not getattr(config, "tie_word_embeddings", False):
        return set()
    return set(getattr(model, "_tied_weights_keys", None) or {})


def shard_plan(model: PreTrainedModel) -> dict[str, list[str]]:
    """file name -> sorted tensor names."""
    state = model.state_dict()
    tied = _tied_targets(model)
    down = {arch.down_proj_name(model, i) + ".weight": i for i in range(arch.num_layers(model))}
    plan: dict[str, list[str]] = {f"mlp-down-{layer:03d}.safetensors": [name] for name, layer in down.items()}
    rest = sorted(k for k in state if k not in down and k not in tied)
    shards: list[list[str]] = [[]]
    size = 0
    for name in rest:
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > BASE_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    for i, names in enumerate(shards, start=1):
        plan[f"base-{i:05d}-of-{len(shards):05d}.safetensors"] = names
    return plan


def edited_files(layers: set[int]) -> set[str]:
    """The weight files an edit log of these layers changes."""
    return {f"mlp-down-{layer:03d}.safetensors" for layer in layers}


def write_weights(
    model: PreTrainedModel, folder: Path, fresh: set[str] | None = None, stable: StableFiles | None = None
) -> dict[str, str]:
    """Write the weight files and the index. With STABLE, every file not in FRESH (the files
    whose tensors edits changed) is placed from that per-base cache instead of serialised
    again. Returns file name -> sha256 for the files placed from the cache."""
    state = model.state_dict()
    plan = shard_plan(model)
    known = stable.place(state, {f: n for f, n in plan.items() if f not in (fresh or set())}, folder) if stable else {}
    for filename, names in sorted(plan.items()):
        if filename not in known:
            _save(state, names, folder / filename)
    weight_map = {n: filename for filename, names in plan.items() for n in names}
    total = sum(state[n].numel() * state[n].element_size() for n in weight_map)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return known


def _save(state: dict[str, torch.Tensor], names: list[str], path: Path) -> None:
    save_file({n: state[n].detach().to("cpu").contiguous() for n in names}, str(path), metadata={"format": "pt"})


class StableFiles:
    """Weight files that no edit touches, serialised and hashed once per base model.

    Releases get them as reflinks where the file system has them, else as copies (never hard
    links: a release file is its own inode), so a compile serialises and hashes only the
    down-projections its edits changed. Cached files are read-only and are
    rewritten when their size or mtime no longer matches what was recorded.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index_file = folder / "files.json"

    def _index(self) -> dict[str, dict]:
        try:
            return json.loads(self.index_file.read_text())
        except (OSError, ValueError):
            return {}

    def place(self, state: dict[str, torch.Tensor], plan: dict[str, list[str]], target: Path) -> dict[str, str]:
        """Link (or copy) each planned file into TARGET, writing it into the cache first if
        needed; returns file name -> sha256."""
        self.folder.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(self.folder)  # a full disk or a kill can leave half-written files behind
        index, changed = self._index(), False
        for name, names in sorted(plan.items()):
            path = self.folder / name
            entry = index.get(name)
            if entry is None or not path.exists() or _stamp(path) != (entry["size"], entry["mtime_ns"]):
                index[name], changed = self._write(state, names, path), True
            _clone_or_copy(path, target / name)
        if changed:
            atomic_write_text(self.index_file, json.dumps(index, indent=2, sort_keys=True))
        return {name: index[name]["sha256"] for name in plan}

    @staticmethod
    def _write(state: dict[str, torch.Tensor], names: list[str], path: Path) -> dict:
        with atomic_path(path) as tmp:  # another compile may write the same bytes meanwhile
            _save(state, names, tmp)
            tmp.chmod(0o444)
            sha = file_sha256(tmp)
        size, mtime = _stamp(path)
        return {"sha256": sha, "size": size, "mtime_ns": mtime}


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


FICLONE = 0x40049409  # Linux ioctl: the new file shares the source's blocks copy-on-write (btrfs, XFS)


def _clone_or_copy(source: Path, target: Path) -> None:
    """TARGET as its own file with SOURCE's bytes: a reflink where the file system offers one, a
    copy elsewhere. Never a hard link: a write into one release must not change another."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return
        except OSError:  # no reflinks here (ext4, tmpfs, another file system)
            pass
    shutil.copyfile(source, target)


def write_edit_vectors(
    folder: Path,
    vectors: list[tuple[torch.Tensor, torch.Tensor]],
    bands: list[list[tuple[int, torch.Tensor, torch.Tensor]]] | None = None,
) -> None:
    """Edit i's key and value (float32) as `edit.{i:05d}.key` / `.value`, in log order, and what
    a band edit asks of each layer l as `edit.{i:05d}.band.{l:03d}.key` / `.target`."""
    tensors = {}
    for i, (key, value) in enumerate(vectors):
        tensors[f"edit.{i:05d}.key"] = key.to(torch.float32).contiguous()
        tensors[f"edit.{i:05d}.value"] = value.to(torch.float32).contiguous()
    for i, asks in enumerate(bands or []):
        for layer, key, target in asks:
            tensors[f"edit.{i:05d}.band.{layer:03d}.key"] = key.to(torch.float32).contiguous()
            tensors[f"edit.{i:05d}.band.{layer:03d}.target"] = target.to(torch.float32).contiguous()
    save_file(tensors, str(folder / EDIT_VECTORS), metadata={"format": "pt"})


def read_edit_vectors(
    folder: Path, count: int, bands: list[list[int]] | None = None
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[list[tuple[int, torch.Tensor, torch.Tensor]]]]:
    """The vectors write_edit_vectors wrote: (key, value) per edit, and per edit its asks
    (layer, key, target) of the layers BANDS[i] (KeyError for any that is missing)."""
    tensors = load_file(str(folder / EDIT_VECTORS)) if count else {}
    pairs = [(tensors[f"edit.{i:05d}.key"], tensors[f"edit.{i:05d}.value"]) for i in range(count)]
    asks = [
        [(n, tensors[f"edit.{i:05d}.band.{n:03d}.key"], tensors[f"edit.{i:05d}.band.{n:03d}.target"]) for n in layers]
        for i, layers in enumerate(bands or [[] for _ in range(count)])
    ]
    return pairs, asks


def file_hashes(folder: Path, known: dict[str, str] | None = None) -> dict[str, str]:
    """sha256 of every file in FOLDER but the manifest; KNOWN ones are not read again."""
    known = known or {}
    return {
        p.name: known.get(p.name) or file_sha256(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(folder: Path, data: dict, known: dict[str, str] | None = None) -> str:
    """Write factstore.json (with the sha256 of every other file); return its own sha256."""
    manifest = {
        **data,
        "factstore_version": __version__,
        "format": MANIFEST_FORMAT,
        "files": file_hashes(folder, known),
    }
    blob = (json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode()
    (folder / MANIFEST).write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def write_model_config(model: PreTrainedModel, tokenizer: Any, folder: Path) -> None:
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    # a fast tokenizer keeps the truncation and padding of its last call and writes them into
    # tokenizer.json; every call sets its own, so cleared here the file says what the tokenizer
    # is, not what it was last asked (a release written again must be the same bytes)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(folder)
    # transformers records how the tokenizer was loaded (offline mode, local path); that
    # depends on the environment, not on the model, and would break byte-identical builds
    config_file = folder / "tokenizer_config.json"
    if config_file.exists():
        data = json.loads(config_file.read_text())
        for key in _LOAD_TIME_KEYS:
            data.pop(key, None)
        config_file.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def edit_log_sha256(base_revision: str, mode: str, edits: list[dict]) -> str:
    """Identity of what a release contains: base weights, mode, and each edit's vectors in order."""
    blob = json.dumps({"base": base_revision, "mode": mode, "edits": edits}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def finite(model: PreTrainedModel) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def mismatched_files(folder: Path, files: dict[str, str]) -> list[str]:
    """Names among FILES (name -> sha256) that are missing from FOLDER, are not regular files
    there, or differ from their sha256."""
    return [
        name
        for name, sha in sorted(files.items())
        if (folder / name).is_symlink() or not (folder / name).is_file() or file_sha256(folder / name) != sha
    ]


def mismatch_error(bad: list[str]) -> ReleaseVerificationError:
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return ReleaseVerificationError(
        f"{shown} do not match the release manifest; the files are corrupted or were tampered with; nothing was written"
    )


def verify_folder(folder: Path) -> Manifest:
    """Check every file the manifest names against its sha256; return the manifest."""
    manifest = read_manifest(folder)
    if bad := mismatched_files(folder, manifest.files):
        raise mismatch_error(bad)
    return manifest
