"""Key statistics as jobs: N shard jobs that any worker with the statistics share takes, and one
merge job that runs once they are all done. Shards and the merged C travel through the share
(FACTSTORE_STATS_SHARE), never through the database, which records only names and sha256s."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factstore import arch
from factstore.domain import BaseModel, Job
from factstore.errors import InvalidEditRequest, StatisticsError
from factstore.files import file_sha256
from factstore.options import StatsOptions
from factstore.progress import SILENT, Reporter
from factstore.storage.models import STATS_MERGE, STATS_SHARD
from factstore.storage.store import Store
from factstore.weights import shards, share, stats
from factstore.weights.corpus import DEFAULT_CORPUS, Corpus, is_starter_corpus

SHARD, MERGE = STATS_SHARD, STATS_MERGE
MAX_SHARD_JOBS = 64
MAX_TOKENS = 1_000_000_000


@dataclass(frozen=True)
class Planned:
    specs: list[stats.StatsSpec]  # one per layer, in layer order
    corpus: Corpus
    expected_tokens: int  # keys the single pass sums: the shards must add up to it


def check_layers(base: BaseModel, layers: list[int]) -> Any:
    """BASE's config, once every one of LAYERS is one of its layers (else InvalidEditRequest)."""
    from factstore.weights import checkpoints

    cfg = checkpoints.load_config(base.source, base.revision)
    n_layers = arch.config_num_layers(cfg)
    if outside := [layer for layer in layers if not 0 <= layer < n_layers]:
        raise InvalidEditRequest(f"layer {outside[0]} is outside {base.alias}'s layers 0 to {n_layers - 1}")
    return cfg


def plan_specs(base: BaseModel, layers: list[int], corpus: str, tokens: int | None, progress: Reporter) -> Planned:
    """The specs of LAYERS' C for BASE from its config and tokenizer alone (no weights): what a
    single pass, each shard and the merge agree on."""
    from factstore.rome.covariance import TEXT_TOKENS, plan
    from factstore.rome.hparams import default_hparams
    from factstore.weights import checkpoints
    from factstore.weights.corpus import load_corpus

    cfg = check_layers(base, layers)
    hp = default_hparams(cfg.model_type, arch.config_num_layers(cfg), cfg.get_text_config().hidden_size)
    text = load_corpus(corpus, progress)
    budget = tokens or hp.stats_tokens
    specs = [
        stats.StatsSpec(
            base.identity, layer, arch.config_down_proj_name(cfg, layer), text.sha256, budget, hp.stats_dtype
        )
        for layer in sorted(set(layers))
    ]
    tokenizer = checkpoints.load_tokenizer(base.source, base.revision)
    width = min(TEXT_TOKENS, arch.config_context_length(cfg))
    return Planned(specs, text, sum(b.keys for b in plan(tokenizer, text.texts, budget, width)))


def job_params(options: StatsOptions, jobs: int) -> list[dict]:
    """The parameters of the JOBS shard jobs (the merge's are the same plus the shards' ids), or
    InvalidEditRequest: statistics jobs read a starter corpus, which every host can fetch."""
    layers = sorted(set(options.layers or ([options.layer] if isinstance(options.layer, int) else [])))
    if not layers:
        raise InvalidEditRequest("statistics jobs need the layers to compute: give --layers A-B (or --layer N)")
    corpus = options.corpus or DEFAULT_CORPUS
    if not is_starter_corpus(corpus):
        raise InvalidEditRequest(
            f"statistics jobs read a starter corpus every host can fetch, not {corpus[:60]!r}; "
            "compute C of your own text with `factstore stats compute --corpus FILE` and share it with `stats push`"
        )
    if not 1 <= jobs <= MAX_SHARD_JOBS:
        raise InvalidEditRequest(f"statistics are split into 1 to {MAX_SHARD_JOBS} shard jobs, not {jobs}")
    if options.tokens is not None and not 1 <= options.tokens <= MAX_TOKENS:
        raise InvalidEditRequest(f"tokens must be between 1 and {MAX_TOKENS:,}, not {options.tokens}")
    common = {"layers": layers, "corpus": corpus, "tokens": options.tokens}
    return [{**common, "shard": i, "of": jobs} for i in range(jobs)]


def check_params(kind: str, params: dict) -> dict:
    """A stored statistics job's parameters, checked again as a worker takes them."""
    layers, of = params.get("layers"), params.get("of")
    tokens = params.get("tokens")
    if not isinstance(of, int) or not 1 <= of <= MAX_SHARD_JOBS:
        raise InvalidEditRequest("a statistics job names its number of shards")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and 0 <= x < 1000 for x in layers):
        raise InvalidEditRequest("a statistics job names its layers")
    if tokens is not None and not (isinstance(tokens, int) and 1 <= tokens <= MAX_TOKENS):
        raise InvalidEditRequest("a statistics job's token count is a whole number")
    if not is_starter_corpus(str(params.get("corpus"))):
        raise InvalidEditRequest("a statistics job reads a starter corpus")
    common = {"layers": layers, "corpus": params["corpus"], "tokens": tokens, "of": of}
    if kind == SHARD:
        shard = params.get("shard")
        if not isinstance(shard, int) or not 0 <= shard < of:
            raise InvalidEditRequest("a shard job names its shard, 0 to N-1")
        return {**common, "shard": shard}
    after = params.get("after")
    if not isinstance(after, list) or len(after) != of or not all(isinstance(i, int) for i in after):
        raise InvalidEditRequest("a merge job names its N shard jobs")
    return {**common, "after": after}


def _share() -> share.Share:
    found = share.configured()
    if found is None:  # runnable_kinds offers these jobs only with a share; a changed environment
        raise StatisticsError("this worker has no statistics share (FACTSTORE_STATS_SHARE)")
    return found


def run_shard(
    store: Store, job: Job, device: str | None, progress: Reporter = SILENT, stop: Callable[[], None] | None = None
) -> dict:
    """Compute one shard's sums on the base weights (STOP called between batches) and hand them
    to the share, one file per layer; the result names each file by its sha256, so the merge uses
    exactly this computation of the shard."""
    from factstore.weights import checkpoints

    p = check_params(SHARD, job.params)
    target = _share()
    base = store.get_base_model(job.model)
    planned = plan_specs(base, p["layers"], p["corpus"], p["tokens"], progress)
    loaded = checkpoints.load(base.source, expected=base.revision, device=device, progress=progress, dtype=base.dtype)
    split = (p["shard"], p["of"])
    files = shards.compute(loaded.model, loaded.tokenizer, planned.specs, planned.corpus, split, progress, stop)
    for done in files:
        target.put(done.path, done.name)
    return {"shard": p["shard"], "of": p["of"], "tokens": files[0].tokens, "files": [f.to_json() for f in files]}


def run_merge(store: Store, job: Job, progress: Reporter = SILENT) -> dict:
    """Per layer, one at a time: add the shards the shard jobs handed in (each checked against
    the sha256 its job recorded), record C and hand it to the share, where every worker finds it.
    A layer whose C is recorded already (a single pass, an earlier merge) keeps that C: it is
    shared as it is, never overwritten by sums in another order."""
    p = check_params(MERGE, job.params)
    target = _share()
    base = store.get_base_model(job.model)
    planned = plan_specs(base, p["layers"], p["corpus"], p["tokens"], progress)
    shard_jobs = [_finished_shard(store.get_job(i), job, p) for i in p["after"]]
    rows = []
    for spec in planned.specs:
        cov = store.get_covariance_by_key(spec.key())
        if cov is None:
            paths = [_fetched_shard(shard_job, spec.layer, target) for shard_job in shard_jobs]
            result = shards.merge(spec, paths, planned.expected_tokens)
            record = stats.covariance_record(result, planned.corpus)
            cov = store.create_covariance(base.id, spec.key(), record=record)
            for path in paths:
                path.unlink(missing_ok=True)  # the shard sums stay in the share; this disk keeps C only
        if (local := stats.local_file(cov)) is not None and file_sha256(local) == cov.sha256:
            target.put(local, f"{cov.key}.safetensors")
        rows.append({"layer": cov.layer, "id": cov.id, "tokens": cov.tokens, "sha256": cov.sha256})
    return {"of": p["of"], "layers": rows}


def _finished_shard(shard_job: Job, merge: Job, params: dict) -> Job:
    """A shard job of this merge (same model, layers, corpus and size), finished."""
    mine = {k: params[k] for k in ("layers", "corpus", "tokens", "of")}
    if shard_job.kind != SHARD or shard_job.model != merge.model or {k: shard_job.params.get(k) for k in mine} != mine:
        raise StatisticsError(f"job {shard_job.id} is not a shard of this merge")
    if shard_job.status != "done" or not shard_job.result:
        raise StatisticsError(f"shard job {shard_job.id} is {shard_job.status}: {shard_job.error or 'no result'}")
    return shard_job


def _fetched_shard(shard_job: Job, layer: int, source: share.Share) -> Path:
    """LAYER's file of a finished shard job, from the share, checked against the sha256 it recorded."""
    files = (shard_job.result or {}).get("files")
    entry = (
        next((f for f in files if isinstance(f, dict) and f.get("layer") == layer), None)
        if isinstance(files, list)
        else None
    )
    name, sha256 = str((entry or {}).get("name")), str((entry or {}).get("sha256"))
    if not share.NAME.fullmatch(name) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise StatisticsError(f"shard job {shard_job.id} recorded no file of layer {layer}")
    local = stats.cache_folder() / "shared" / name
    if local.is_file() and file_sha256(local) == sha256:
        return local
    if not share.fetch_checked(source, name, local, sha256, stats.SHARE_MAX_BYTES):
        raise StatisticsError(
            f"the share {source.where} does not hold shard job {shard_job.id}'s sums of layer {layer} as it recorded them"
        )
    return local
