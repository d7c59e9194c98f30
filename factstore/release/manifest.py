"""The release manifest (factstore.json) as a schema: what a pulled, untrusted release may say.

Everything is checked before anything is read from disk or written to the store: types, file
names that are plain names, bounded numbers and strings, finite floats, no NUL bytes. Checks
that need the model (shapes, layer range, module names) are done by the importer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from factstore import __version__
from factstore.domain import PROMPT_CHARS
from factstore.errors import ReleaseVerificationError
from factstore.extras import DISTRIBUTION

MANIFEST = "factstore.json"
# The manifest's format: raised (with factstore's version) whenever a field is added or its
# meaning changes, so that a reader can tell a release it cannot read from a malformed one.
FORMAT = 2  # 1: factstore 0.1.0 (no "format" field); 2: factstore 0.2.0
_VERSION = re.compile(r"[0-9]+(\.[0-9]+){0,3}([a-z]+[0-9]*)?")
MAX_MANIFEST_BYTES = 64 << 20  # a manifest of 100k edits is ~60 MB
FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"  # a plain name: no separators, no "..", no leading dot
INT32 = 2**31 - 1

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
FileName = Annotated[str, StringConstraints(pattern=FILE_NAME)]

_NO_NUL = r"^[^\x00]*$"
# strings of bounded length without NUL bytes
Text = Annotated[str, StringConstraints(max_length=PROMPT_CHARS, pattern=_NO_NUL)]
Template = Annotated[str, StringConstraints(max_length=2000, pattern=_NO_NUL)]
Source = Annotated[str, StringConstraints(max_length=1000, pattern=_NO_NUL)]
Short = Annotated[str, StringConstraints(max_length=200, pattern=_NO_NUL)]
Tiny = Annotated[str, StringConstraints(max_length=64, pattern=_NO_NUL)]
LICENSE_ID = r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$"  # a Hub licence identifier (apache-2.0, cc-by-sa-4.0, gemma)
LicenseId = Annotated[str, StringConstraints(pattern=LICENSE_ID)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class BaseInfo(_Strict):
    source: Source
    revision: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{40}|sha256:[0-9a-f]{64})$")]
    model_type: Short
    license: LicenseId | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # releases before dtypes were chosen: float32


class CovarianceInfo(_Strict):
    layer: Annotated[int, Field(ge=0, le=10_000)]
    corpus: Short
    corpus_sha256: Sha256
    tokens: Annotated[int, Field(ge=1, le=100_000_000)]
    dtype: Literal["float32", "float64"]
    sha256: Sha256


class ManifestEdit(_Strict):
    seq: Annotated[int, Field(ge=1, le=INT32)]
    prompt: Text
    subject: Text
    target_new: Text
    target_true: Text | None = None
    relation_id: Tiny | None = None
    layer: Annotated[int, Field(ge=0, le=10_000)]
    module: Short
    key_sha256: Sha256
    key_shape: Annotated[list[Annotated[int, Field(ge=1, le=1_000_000)]], Field(min_length=1, max_length=1)]
    value_sha256: Sha256
    value_shape: Annotated[list[Annotated[int, Field(ge=1, le=1_000_000)]], Field(min_length=1, max_length=1)]
    hparams: dict[str, Any]
    hparams_fingerprint: Sha256
    covariance: CovarianceInfo | None = None
    note: Text | None = None
    metrics: Annotated[dict[Short, float], Field(max_length=32)] = {}
    # an edit over a band of layers: its layers (lowest first, ending at `layer`), the sha256 of
    # its per-layer vectors (domain.band_sha256) and the C of each layer below its own
    band: Annotated[list[Annotated[int, Field(ge=0, le=10_000)]], Field(max_length=64)] = []
    band_sha256: Sha256 | None = None
    band_covariances: Annotated[list[CovarianceInfo], Field(max_length=64)] = []

    @field_validator("hparams")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > 4096:
            raise ValueError("hparams is larger than 4 kB")
        return value


class TemplateSet(_Strict):
    fingerprint: Sha256
    seed: Annotated[int, Field(ge=0, le=INT32)]
    templates: Annotated[dict[Short, Annotated[list[Template], Field(max_length=1000)]], Field(max_length=16)]


class Manifest(_Strict):
    base: BaseInfo
    mode: Short
    joint_ridge: Annotated[float, Field(ge=0, le=1)] | None = None
    null_space_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    spread_layers: Annotated[int, Field(ge=1, le=64)] | None = None
    spread_lower_ridge: Annotated[float, Field(ge=0, le=1e6)] | None = None
    soft_weight: Annotated[float, Field(gt=0, le=1e12)] | None = None
    soft_alpha: Annotated[float, Field(ge=0, le=1e6)] | None = None
    edit_log_sha256: Sha256
    context_templates: Annotated[list[TemplateSet], Field(max_length=100)] = []
    edits: Annotated[list[ManifestEdit], Field(max_length=1_000_000)]
    # the release's scores; "health" maps names to numbers (or "corpus"/"not_measured" to text)
    scores: Annotated[
        dict[Short, float | int | Annotated[dict[Short, float | int | Short | None], Field(max_length=32)] | None],
        Field(max_length=64),
    ] = {}
    factstore_version: Short
    format: Annotated[int, Field(ge=1, le=FORMAT)] = 1
    files: Annotated[dict[FileName, Sha256], Field(max_length=100_000)]


def _where(error: Any) -> str:
    return ".".join(str(p) for p in error["loc"]) or "the manifest"


def parse(data: Any, origin: str) -> Manifest:
    """The manifest as a Manifest, or a one-line ReleaseVerificationError naming the first bad field
    (or, for a newer format than this factstore reads, the version to upgrade to)."""
    _check_format(data, origin)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ReleaseVerificationError(
            f"{origin}: {MANIFEST} is malformed at {_where(first)} ({first['msg']}); nothing was written"
        ) from None


def _check_format(data: Any, origin: str) -> None:
    found = data.get("format") if isinstance(data, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found > FORMAT:
        version = data.get("factstore_version")
        upgrade = (
            f"'{DISTRIBUTION}>={version}'" if isinstance(version, str) and _VERSION.fullmatch(version) else DISTRIBUTION
        )
        raise ReleaseVerificationError(
            f"{origin}: this release's manifest is format {found}, newer than this factstore ({__version__}) reads "
            f"(format {FORMAT}); upgrade with: pip install -U {upgrade}"
        )


def read(folder: Path, origin: str | None = None) -> Manifest:
    """The parsed manifest of a release folder (ORIGIN names it in errors; default the folder)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ReleaseVerificationError(f"{folder} has no {MANIFEST}: it is not a factstore release")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ReleaseVerificationError(
            f"{folder}/{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MB; refusing to read it"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReleaseVerificationError(
            f"{folder}/{MANIFEST} is not valid JSON ({type(exc).__name__}); nothing was written"
        ) from None
    return parse(data, origin or str(folder))


def folder_scores(folder: Path) -> dict:
    """The scores of the release in FOLDER, or {} when its folder is not on this machine (or is
    not a readable release)."""
    try:
        return dict(read(folder).scores)
    except (ReleaseVerificationError, OSError):
        return {}
