"""Resolve a model reference to exact weights, and load model + tokenizer from it.

A reference is a Hub id (optionally at a revision; pinned to the commit SHA), a local
folder, a .gguf file, or a starter asset (starter:smollm2-135m). Local weights are pinned
by "sha256:<hex>" over their files; the same reference must load the same identity.
This is the one place that loads a model.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from factstore import config, extras
from factstore.domain import DTYPES, ModelRef
from factstore.errors import HubNotFound, IdentityMismatch, InvalidArgument, ModelSourceNotFound, shown
from factstore.files import atomic_write_text, file_sha256
from factstore.progress import SILENT, Reporter
from factstore.weights import assets

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
HUB_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")  # "gpt2" or "org/name"
# what a Hub model needs to load: weights, config, tokenizer (never the rest of the repository)
HUB_MODEL_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer.model", "*.txt", "*.tiktoken"]


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any  # a fast tokenizer (offsets are needed to find subjects)
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
        cache[key] = file_sha256(path)
        atomic_write_text(cache_file, json.dumps(cache))
    return str(cache[key])


def weights_identity(folder: Path) -> str:
    """ "sha256:<hex>" over (name, sha256) of every weight file in a folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelSourceNotFound(f"{folder} has no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}:{cached_file_sha256(p)}\n".encode())
    return "sha256:" + digest.hexdigest()


def _model_type(folder: Path) -> str:
    try:
        model_type = json.loads((folder / "config.json").read_text())["model_type"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelSourceNotFound(f"{folder} has no readable config.json with a model_type") from None
    if not isinstance(model_type, str):
        raise ModelSourceNotFound(f"{folder}/config.json has a model_type that is not a string")
    return model_type


def checkpoint_dtype(folder: Path) -> str:
    """The dtype a checkpoint's config declares, as one of DTYPES (float32 when it declares none,
    or one factstore does not edit in)."""
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    declared = data.get("dtype") or data.get("torch_dtype") if isinstance(data, dict) else None
    return declared if declared in DTYPES else "float32"


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise InvalidArgument(f"unknown dtype {shown(dtype)}; use one of {', '.join(DTYPES)}")
    return dtype


def _converted_dir(gguf: Path, identity: str, progress: Reporter) -> Path:
    """A safetensors copy of a GGUF checkpoint, made once (GGUF loads take 20-40 s, this 1-3 s)."""
    out = config.cache_dir() / "converted" / identity.removeprefix("sha256:")[:32]
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress.note(f"converting {gguf.name} to safetensors (once)")
    extras.require("gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
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
    from factstore.hub import Hub

    hub = Hub()
    try:
        sha = hub.resolve(source, revision)
        return sha, hub.download(source, sha, allow_patterns=HUB_MODEL_FILES)
    except HubNotFound:
        raise ModelSourceNotFound(
            f"{source!r} is not a local path, and the Hub has no such repository or revision {revision or 'main'!r} "
            "(or it is private: set HF_TOKEN)"
        ) from None


def resolve(source: str, revision: str | None = None, progress: Reporter = SILENT) -> ModelRef:
    """Pin a reference to exact weights and a local folder that holds them (downloads/converts if needed)."""
    if source.startswith(assets.PREFIX):
        return _ref_for_gguf(source, assets.gguf_path(source, progress), progress)
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return _ref_for_gguf(source, path.resolve(), progress)
        if path.is_dir():
            folder = path.resolve()
            return ModelRef(
                source=str(folder),
                revision=weights_identity(folder),
                model_type=_model_type(folder),
                local_path=str(folder),
            )
        raise ModelSourceNotFound(f"{source} is a file but not a .gguf checkpoint; give a model folder or a .gguf file")
    if source.startswith((".", "/", "~")) or source.endswith(".gguf") or source.count("/") > 1:
        raise ModelSourceNotFound(f"no model at {source}: the path does not exist")
    if not HUB_MODEL_ID.fullmatch(source) or ".." in source:
        raise ModelSourceNotFound(
            f"{source[:80]!r} is not a model folder, a .gguf file, a starter: asset or a Hub id (NAMESPACE/NAME)"
        )
    sha, folder = _resolve_hub(source, revision)
    return ModelRef(source=source, revision=sha, model_type=_model_type(folder), local_path=str(folder))


def _ref_for_gguf(source: str, gguf: Path, progress: Reporter) -> ModelRef:
    identity = "sha256:" + cached_file_sha256(gguf)
    folder = _converted_dir(gguf, identity, progress)
    return ModelRef(source=source, revision=identity, model_type=_model_type(folder), local_path=str(folder))


def check_device(device: str) -> str:
    if not config.DEVICE_PATTERN.fullmatch(device):
        raise InvalidArgument(f"unknown device {device[:40]!r}; use {config.DEVICES} (accelerate's device map)")
    return device


def default_device() -> str:
    """FACTSTORE_DEVICE, else auto."""
    return check_device(config.device() or "auto")


def _placement(device: str, folder: Path, dtype: str) -> tuple[str, dict[str, Any]]:
    """Where to load: (device for .to(), from_pretrained keyword arguments). "auto" is the CPU
    without a GPU, the GPU when there is one and the model fits in 90 % of it, else accelerate's
    device map over every GPU (and the CPU when they are full). The one place a device is chosen."""
    import torch

    if device != "auto":
        return device, {}
    if not torch.cuda.is_available():
        return "cpu", {}
    if (
        torch.cuda.device_count() == 1
        and _loaded_bytes(folder, dtype) < 0.9 * torch.cuda.get_device_properties(0).total_memory
    ):
        return "cuda", {}
    return "auto", {"device_map": "auto"}


def _loaded_bytes(folder: Path, dtype: str) -> int:
    """About how many bytes the weights take once loaded in DTYPE (file sizes scaled from the
    checkpoint's own dtype)."""
    import torch

    on_disk = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    stored = torch.finfo(getattr(torch, checkpoint_dtype(folder))).bits
    return on_disk * torch.finfo(getattr(torch, dtype)).bits // stored


def _quiet_transformers() -> None:
    """factstore reports its own progress; transformers' per-load bars and notices are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _pinned(source: str, revision: str | None, expected: str | None, progress: Reporter) -> ModelRef:
    """The reference resolved; with `expected`, refused when its weights are not those."""
    _quiet_transformers()
    ref = resolve(source, revision if not expected or not expected.startswith("sha256:") else None, progress)
    if expected and ref.revision != expected:
        raise IdentityMismatch(
            f"{source} now holds weights {ref.revision[:19]}..., not the pinned {expected[:19]}...; "
            "register the new weights under a new alias with `factstore model add`"
        )
    return ref


def _fast_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.local_path)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelSourceNotFound(
            f"{ref.source} has no fast tokenizer (tokenizer.json); factstore needs character offsets"
        )
    return tokenizer


def load_tokenizer(source: str, expected: str) -> Any:
    """The tokenizer of pinned weights alone (fast: no weights are read), for checks that must
    come before a model is loaded."""
    return _fast_tokenizer(_pinned(source, expected, expected, SILENT))


def load_config(source: str, expected: str) -> Any:
    """The config of pinned weights alone (no weights are read)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(_pinned(source, expected, expected, SILENT).local_path)


def load(
    source: str,
    revision: str | None = None,
    expected: str | None = None,
    device: str | None = None,
    progress: Reporter = SILENT,
    dtype: str = "float32",
) -> LoadedModel:
    """Load model and tokenizer in DTYPE ("auto": what the checkpoint declares); with `expected`,
    refuse weights whose identity differs. Device: see _placement (default FACTSTORE_DEVICE, else auto)."""
    import torch
    from transformers import AutoModelForCausalLM

    ref = _pinned(source, revision, expected, progress)
    dtype = checkpoint_dtype(Path(ref.local_path)) if dtype == "auto" else check_dtype(dtype)
    device, kwargs = _placement(check_device(device) if device else default_device(), Path(ref.local_path), dtype)
    model: Any = AutoModelForCausalLM.from_pretrained(ref.local_path, dtype=getattr(torch, dtype), **kwargs)
    if device != "auto":
        model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=_fast_tokenizer(ref), ref=replace(ref, dtype=dtype))
