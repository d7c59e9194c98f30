"""Resolve a model reference to exact weights, and load model + tokenizer from it.

A reference is a Hub id (optionally at a revision; pinned to the commit SHA), a local
folder, a .gguf file, or a starter asset (starter:smollm2-135m). Local weights are pinned
by "sha256:<hex>" over their files; the same reference must load the same identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from factstore import assets, config
from factstore.domain import ModelRef
from factstore.errors import IdentityMismatch, ModelSourceNotFound
from factstore.progress import note

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel, in eval mode
    tokenizer: object  # a fast tokenizer (offsets are needed to find subjects)
    ref: ModelRef


def _hash_cache_path() -> Path:
    return config.cache_dir() / "file-hashes.json"


def cached_file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so big checkpoints hash once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = _hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = assets.file_sha256(path)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    return cache[key]


def weights_identity(folder: Path) -> str:
    """"sha256:<hex>" over (name, sha256) of every weight file in a folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelSourceNotFound(f"{folder} has no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}:{cached_file_sha256(p)}\n".encode())
    return "sha256:" + digest.hexdigest()


def _model_type(folder: Path) -> str:
    try:
        return json.loads((folder / "config.json").read_text())["model_type"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelSourceNotFound(f"{folder} has no readable config.json with a model_type") from exc


def _converted_dir(gguf: Path, identity: str) -> Path:
    """A safetensors copy of a GGUF checkpoint, made once (GGUF loads take 20-40 s, this 1-3 s)."""
    out = config.cache_dir() / "converted" / identity.removeprefix("sha256:")[:32]
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    note(f"converting {gguf.name} to safetensors (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the
    # weights are already dequantised float32, so the markers can go.
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": gguf.name, "identity": identity}))
        if not (out / "config.json").exists():  # another process may have converted it meanwhile
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _resolve_hub(source: str, revision: str | None) -> tuple[str, Path]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        sha = HfApi().model_info(source, revision=revision).sha
        path = snapshot_download(source, revision=sha)
    except RepositoryNotFoundError:
        raise ModelSourceNotFound(f"{source!r} is not a local path and no such Hub repository exists (or it is private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ModelSourceNotFound(f"the Hub repository {source!r} has no revision {revision!r}") from None
    except Exception as exc:  # connection errors come from the HTTP client, whose types vary by version
        raise ModelSourceNotFound(
            f"could not reach the Hugging Face Hub for {source!r} ({exc.__class__.__name__}: {exc}); "
            "check the network, or give a local folder, a .gguf file or a starter: asset"
        ) from None
    return sha, Path(path)


def resolve(source: str, revision: str | None = None) -> ModelRef:
    """Pin a reference to exact weights and a local folder that holds them (downloads/converts if needed)."""
    if source.startswith(assets.PREFIX):
        gguf = assets.gguf_path(source)
        return _ref_for_gguf(source, gguf)
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return _ref_for_gguf(source, path.resolve())
        if path.is_dir():
            folder = path.resolve()
            return ModelRef(source=str(folder), revision=weights_identity(folder), model_type=_model_type(folder), local_path=str(folder))
        raise ModelSourceNotFound(f"{source} is a file but not a .gguf checkpoint; give a model folder or a .gguf file")
    if source.startswith((".", "/", "~")) or source.endswith(".gguf") or source.count("/") > 1:
        raise ModelSourceNotFound(f"no model at {source}: the path does not exist")
    sha, folder = _resolve_hub(source, revision)
    return ModelRef(source=source, revision=sha, model_type=_model_type(folder), local_path=str(folder))


def _ref_for_gguf(source: str, gguf: Path) -> ModelRef:
    identity = "sha256:" + cached_file_sha256(gguf)
    folder = _converted_dir(gguf, identity)
    return ModelRef(source=source, revision=identity, model_type=_model_type(folder), local_path=str(folder))


def default_device() -> str:
    import torch

    return os.environ.get("FACTSTORE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def _quiet_transformers() -> None:
    """factstore draws its own progress; transformers' per-load bars and notices are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load(source: str, revision: str | None = None, expected: str | None = None, device: str | None = None) -> LoadedModel:
    """Load model and tokenizer; with `expected`, refuse weights whose identity differs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    ref = resolve(source, revision if not expected or not expected.startswith("sha256:") else None)
    if expected and ref.revision != expected:
        raise IdentityMismatch(
            f"{source} now holds weights {ref.revision[:19]}..., not the pinned {expected[:19]}...; "
            "register the new weights under a new alias with `factstore model add`"
        )
    device = device or default_device()
    kwargs = {"device_map": "auto"} if device == "auto" else {}
    model = AutoModelForCausalLM.from_pretrained(ref.local_path, dtype="float32", **kwargs)
    if device != "auto":
        model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(ref.local_path)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelSourceNotFound(f"{source} has no fast tokenizer (tokenizer.json); factstore needs character offsets")
    return LoadedModel(model=model, tokenizer=tokenizer, ref=ref)
