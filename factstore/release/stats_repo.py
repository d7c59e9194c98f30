"""Key statistics shared through a Hub repository of their own: `stats push` / `stats pull`.

The repository holds stats/SHA256.safetensors (content-addressed, each once) and
stats/index.json naming each file's spec. A pulled file is untrusted: only entries for the
local model's exact identity are taken, and each is checked (sha256, spec, shape) before it
enters the cache and the store, where the next edit finds it instead of computing it.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from factstore import arch
from factstore.domain import Covariance
from factstore.errors import FactStoreError, HubNotFound, PublishConflict, ReleaseVerificationError, StatisticsError
from factstore.hub import Hub, branch_commit, check_repo_id
from factstore.release.manifest import MANIFEST, Sha256, Short
from factstore.release.pull import cached_file, reader
from factstore.results import StatsPulled, StatsPushed
from factstore.storage.store import Store
from factstore.weights import assets, checkpoints, stats
from factstore.weights.plausible import check_installed, sample_corpus

INDEX = f"{stats.SHIPPED_DIR}/index.json"
MAX_INDEX_BYTES = 4_000_000


class StatsEntry(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    sha256: Sha256
    identity: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{40}|sha256:[0-9a-f]{64})(\+(bfloat16|float16))?$")]
    layer: Annotated[int, Field(ge=0, le=10_000)]
    module: Short
    corpus: Annotated[
        str, StringConstraints(pattern=r"^(starter:[a-z0-9-]{1,64}|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
    ]  # a name, never a path
    corpus_sha256: Sha256
    tokens: Annotated[int, Field(ge=1, le=100_000_000)]
    dtype: Literal["float32", "float64"]


class StatsIndex(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    files: Annotated[list[StatsEntry], Field(max_length=10_000)]


def _entry(cov: Covariance, identity: str) -> StatsEntry:
    corpus = (
        cov.corpus
        if cov.corpus.startswith(assets.PREFIX)
        else "c-" + re.sub(r"[^A-Za-z0-9._-]", "_", Path(cov.corpus).name)[:120]
    )
    return StatsEntry(
        sha256=cov.sha256,
        identity=identity,
        layer=cov.layer,
        module=cov.module,
        corpus=corpus,
        corpus_sha256=cov.corpus_sha256,
        tokens=cov.tokens,
        dtype=cov.dtype,  # type: ignore[arg-type]
    )


def _read_index(hub: Hub, repo: str, commit: str) -> StatsIndex:
    path = hub.download_file(repo, commit, INDEX, MAX_INDEX_BYTES)
    if path.stat().st_size > MAX_INDEX_BYTES:  # more than the Hub said it was
        raise ReleaseVerificationError(f"{repo}: {INDEX} is larger than {MAX_INDEX_BYTES} bytes; refused")
    try:
        return StatsIndex.model_validate(json.loads(path.read_bytes()))
    except (ValueError, ValidationError) as exc:
        raise ReleaseVerificationError(
            f"{repo}: {INDEX} is not a factstore statistics index ({type(exc).__name__}); refused"
        ) from None


def push_stats(
    store: Store, alias: str, repo: str, *, endpoint: str | None = None, token: str | None = None, private: bool = False
) -> StatsPushed:
    """Upload every C recorded for ALIAS that REPO does not hold, and the index, in one commit."""
    check_repo_id(repo)
    base = store.get_base_model(alias)
    covs = store.list_covariances(base.id)
    if not covs:
        raise StatisticsError(
            f"{alias} has no key statistics yet; compute some with `factstore stats compute --model {alias}`"
        )
    hub = Hub(endpoint, token)
    hub.ensure_repo(repo, private)
    head = branch_commit(repo, hub.refs(repo)[0])
    _, listed = hub.revision(repo, head)
    if MANIFEST in listed:
        raise PublishConflict(
            f"{repo} holds factstore releases; share statistics through a repository of their own (or publish with --with-stats)"
        )
    entries = {e.sha256: e for e in (_read_index(hub, repo, head).files if INDEX in listed else [])}
    extra: dict[str, Path] = {}
    for cov in covs:
        local = stats.checked_local_file(cov)
        entries.setdefault(cov.sha256, _entry(cov, base.identity))
        if (name := stats.shipped_name(cov.sha256)) not in listed:
            extra[name] = local
    if not extra and INDEX in listed:
        return StatsPushed(repo=repo, commit=head, uploaded=0, files=len(entries))
    with tempfile.TemporaryDirectory(prefix="factstore-stats-") as tmp:
        index = Path(tmp) / "index.json"
        index.write_text(StatsIndex(files=sorted(entries.values(), key=lambda e: e.sha256)).model_dump_json(indent=1))
        commit = hub.upload(
            repo,
            Path(tmp),
            [],
            head,
            f"factstore key statistics of {base.model_type}",
            f"{len(extra)} new files",
            {**extra, INDEX: index},
        )
    return StatsPushed(repo=repo, commit=commit, uploaded=len(extra), files=len(entries))


def pull_stats(
    store: Store, alias: str, repo: str, *, endpoint: str | None = None, token: str | None = None
) -> StatsPulled:
    """Download the C files REPO holds for ALIAS's exact weights, check each, record them."""
    check_repo_id(repo)
    base = store.get_base_model(alias)
    hub = reader(Hub(endpoint, token), repo)
    commit, listed = hub.revision(repo, "main")
    if INDEX not in listed:
        raise HubNotFound(f"{repo} holds no factstore key statistics ({INDEX} is missing)")
    cfg = checkpoints.load_config(base.source, base.revision)
    shapes = _input_dims(cfg)
    taken, other = [], 0
    loaded: checkpoints.LoadedModel | None = None  # loaded for the first file to check
    for entry in _read_index(hub, repo, commit).files:
        name = stats.shipped_name(entry.sha256)
        if entry.identity != base.identity or name not in listed:
            other += 1
            continue
        if not entry.layer < len(shapes) or entry.module != arch.config_down_proj_name(cfg, entry.layer):
            raise ReleaseVerificationError(
                f"{repo}: {name} is said to be of {entry.module}, which {alias} does not have as layer {entry.layer}; refused"
            )
        spec = stats.StatsSpec(base.identity, entry.layer, entry.module, entry.corpus_sha256, entry.tokens, entry.dtype)
        if store.get_covariance_by_key(spec.key()) is not None:  # this store has that C already (its own wins)
            other += 1
            continue
        source = cached_file(
            hub.download_file(repo, commit, name, stats.max_file_bytes(shapes[entry.layer], entry.dtype)).parents[1],
            name,
        )
        fresh = not stats.shipped_path(entry.sha256).exists()  # only a file this pull brought is removed on refusal
        found = stats.install_shipped(source, entry.sha256, spec, shapes[entry.layer])
        if loaded is None:
            loaded = checkpoints.load(base.source, expected=base.revision, dtype=base.dtype)
        sample = sample_corpus(store.list_covariances(base.id), entry.corpus, entry.corpus_sha256)
        try:  # one that passes every format check can still be built to steer edits
            what = f"{found.path.name} (layer {entry.layer})"
            check_installed(found.path, loaded, entry.layer, sample, what, fresh)
        except FactStoreError as exc:
            raise StatisticsError(str(exc)) from None
        record = Covariance(
            0,
            entry.layer,
            entry.module,
            entry.corpus,
            entry.corpus_sha256,
            found.tokens,
            entry.dtype,
            str(found.path),
            found.sha256,
        )
        taken.append(store.create_covariance(base.id, spec.key(), record=record).layer)
    return StatsPulled(repo=repo, commit=commit, layers=sorted(taken), skipped=other)


def _input_dims(cfg: object) -> list[int]:
    """Each layer's down-projection input size, from a weightless copy of the model."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg)
    return [arch.down_proj_weight(model, layer).shape[1] for layer in range(arch.num_layers(model))]
