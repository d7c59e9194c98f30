"""The façade: every operation behind the CLI and the HTTP server, callable directly
by tests and scripts. Nothing inside factstore imports this module.

Torch-free at import (listing edits or models must start fast): the rooms that need torch are
imported inside the functions that use them.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING

from factstore import config, extras
from factstore.domain import (
    ApiTokenInfo,
    BaseModel,
    Covariance,
    EditEntry,
    EditRequest,
    Job,
    LogMatch,
    Release,
    StoredEdit,
    TracedFact,
    check_alias,
)
from factstore.errors import EditStateError, FactStoreError, InvalidArgument, InvalidEditRequest, ScopeError, shown
from factstore.options import (
    KINDS,
    MODES,
    CompileOptions,
    EditOptions,
    EvalSettings,
    FluencySettings,
    LifelongSettings,
    PublishOptions,
    PullOptions,
    StatsOptions,
    TraceOptions,
    TraceSettings,
    WorkerSettings,
)
from factstore.progress import SILENT, Reporter
from factstore.results import (
    Answer,
    AnswerProb,
    Comparison,
    SchemaStatus,
    SchemaUpgrade,
    ShardSum,
    Side,
    StatsLayers,
    StatsPulled,
    StatsPushed,
    StatsRecord,
)
from factstore.storage import schema
from factstore.storage.engine import check_reachable, make_engine
from factstore.storage.models import EDIT_STATUSES as _EDIT_STATUSES
from factstore.storage.queue import idempotency_sha256 as idempotency_hash
from factstore.storage.store import Store

if TYPE_CHECKING:
    from factstore.editing.requests import ModelChecks
    from factstore.editing.session import EditOutcome, EditSession
    from factstore.release.capacity import Capacity
    from factstore.release.publish import Published
    from factstore.release.pull import Pulled
    from factstore.worker.loop import WorkerStats

__all__ = [
    "EDIT_STATUSES",
    "KINDS",
    "MODES",
    "SILENT",
    "CompileOptions",
    "EditOptions",
    "EditRequest",
    "EvalSettings",
    "FactStoreError",
    "FluencySettings",
    "LifelongSettings",
    "LogMatch",
    "PublishOptions",
    "PullOptions",
    "Reporter",
    "StatsOptions",
    "Store",
    "TraceOptions",
    "TraceSettings",
    "TracedFact",
    "WorkerSettings",
    "debug_enabled",
    "idempotency_hash",
]

EVAL_MODES = ("single", "lifelong")
EDIT_STATUSES = _EDIT_STATUSES


def check_settings() -> None:
    """Every FACTSTORE_* variable holds a usable value, else one SettingsError line naming it."""
    config.settings()


def require_server() -> None:
    """The service's packages are installed (the `server` extra), else one MissingExtra line."""
    extras.require_extra("server")


def debug_enabled() -> bool:
    """FACTSTORE_DEBUG is set: front ends show tracebacks."""
    return config.debug()


# database ----------------------------------------------------------------------------------


def open_store(url: str | None = None) -> Store:
    """The fact store at URL (default FACTSTORE_DATABASE_URL, else the embedded SQLite file)."""
    return Store(url)


def upgrade_database(url: str | None = None) -> SchemaUpgrade:
    engine = make_engine(url or config.database_url())
    try:
        check_reachable(engine)
        previous = schema.current_revision(engine)
        schema.upgrade(engine)
        return SchemaUpgrade(previous=previous, current=schema.current_revision(engine), head=schema.head_revision())
    finally:
        engine.dispose()


def database_status(url: str | None = None) -> SchemaStatus:
    engine = make_engine(url or config.database_url())
    try:
        check_reachable(engine)
        shown = engine.url.render_as_string(hide_password=True)
        return SchemaStatus(url=shown, current=schema.current_revision(engine), head=schema.head_revision())
    finally:
        engine.dispose()


# models ------------------------------------------------------------------------------------


def add_model(
    store: Store,
    alias: str,
    source: str,
    revision: str | None = None,
    *,
    dtype: str | None = None,
    progress: Reporter = SILENT,
) -> tuple[BaseModel, bool]:
    """Pin SOURCE (Hub id, folder, .gguf, starter:NAME) to exact weights under ALIAS, edited in
    DTYPE (default: the checkpoint's own). Returns (model, created)."""
    from factstore.editing.models import register_model

    return register_model(store, alias, source, revision, dtype=dtype, progress=progress)


def shown_source(model: BaseModel) -> str:
    """A model's source as a service shows it to readers: a Hub id or a starter name, never a
    path on the server's disk ("local")."""
    from factstore.hub import REPO_ID
    from factstore.weights.assets import PREFIX

    source = model.source
    return source if source.startswith(PREFIX) or (REPO_ID.fullmatch(source) and not Path(source).exists()) else "local"


def list_models(store: Store) -> list[BaseModel]:
    return store.list_base_models()


def model_capacity(store: Store, alias: str) -> Capacity:
    """Per edited layer: active edits, key dimension and load (edits per key dimension, against
    the safe load docs/hparams.md measured); the newest release's health."""
    from factstore.release.capacity import capacity

    return capacity(store, alias)


def capacity_warning(store: Store, alias: str) -> str | None:
    """One line when a layer of ALIAS holds more edits than the load measured as safe, else None."""
    return model_capacity(store, alias).warning


def compute_stats(
    store: Store,
    alias: str,
    options: StatsOptions = StatsOptions(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> ShardSum | StatsRecord | StatsLayers:
    """C for a model's edit layer (options.layer; none given: every layer the next edit reads,
    its band's), or for options.layers, from one pass (computed once, cached, resumable).
    options.shard "I/N": only the float64 partial sum of that shard of the corpus, for
    `merge_stats`."""
    from factstore.editing.session import EditSession
    from factstore.weights import shards, stats
    from factstore.weights.corpus import DEFAULT_CORPUS

    layers, shard = options.layers, options.shard
    split = stats.parse_shard(shard) if shard is not None else None  # before the model is loaded
    session = EditSession(
        store,
        alias,
        device=device,
        corpus=options.corpus or DEFAULT_CORPUS,
        stats_tokens=options.tokens,
        progress=progress,
    )
    hp = session.hparams(options.layer)
    if split is not None:
        if layers:
            raise InvalidArgument("--shard computes one layer; give --layer")
        text = session.stats_corpus()
        with session.base_weights():
            spec = session.stats_spec(hp.layer, hp, text)
            part = shards.compute(session.model, session.tokenizer, [spec], text, split, progress)[0]
        return ShardSum(
            layer=hp.layer, shard=f"{split[0]}/{split[1]}", tokens=part.tokens, path=str(part.path), sha256=part.sha256
        )
    from factstore.weights.spread import spread_layers

    # neither --layer nor --layers: every layer the next edit reads (its band's, one without a band)
    wanted = list(layers) if layers else [hp.layer] if options.layer is not None else spread_layers(hp.layer, hp.band)
    rows = [_stats_record(c) for c in session.covariances(wanted, hp)]
    return rows[0] if len(wanted) == 1 and not layers else StatsLayers(layers=rows)


def merge_stats(
    store: Store, alias: str, options: StatsOptions, *, folders: Sequence[str] = (), progress: Reporter = SILENT
) -> StatsRecord:
    """C of options.layer (a layer number) from the shard files `compute_stats` wrote with
    options.shard (here, or in FOLDERS), for the same corpus and tokens: equal to a single pass;
    recorded like a computed C. Reads the model's config and tokenizer only."""
    from factstore.weights import shards, stats
    from factstore.weights.corpus import DEFAULT_CORPUS
    from factstore.worker.stats_jobs import plan_specs

    layer = options.layer
    if not isinstance(layer, int) or options.layers or options.shard is not None:
        raise InvalidArgument("merging shards takes one layer number, and no layers or shard")
    base = store.get_base_model(alias)
    planned = plan_specs(base, [layer], options.corpus or DEFAULT_CORPUS, options.tokens, progress)
    spec, expected, text = planned.specs[0], planned.expected_tokens, planned.corpus
    result = shards.merge_found(spec, expected, [Path(f).expanduser() for f in folders])
    return _stats_record(store.create_covariance(base.id, spec.key(), record=stats.covariance_record(result, text)))


def _stats_record(c: Covariance) -> StatsRecord:
    fields = ("id", "layer", "module", "corpus", "tokens", "dtype", "path", "sha256")
    return StatsRecord(**{name: getattr(c, name) for name in fields})


def queue_stats(
    store: Store,
    alias: str,
    options: StatsOptions,
    jobs: int,
    *,
    requested_by: str | None = None,
    idempotency: str | None = None,
    max_pending: int | None = None,
) -> tuple[Job, bool]:
    """Queue C of options.layers (or options.layer) as JOBS shard jobs that any worker with the
    statistics share takes, and one merge job that runs once they have ended, all in one
    transaction (MAX_PENDING counts all of them); workers then fetch the merged C from the share
    instead of computing it. Returns (the merge job, created): its params name the shard jobs."""
    from factstore.worker.jobs import check_params
    from factstore.worker.stats_jobs import MERGE, SHARD, check_layers, job_params

    if options.layer is not None and not isinstance(options.layer, int):
        raise InvalidArgument("statistics jobs take layer numbers")
    params = job_params(options, jobs)
    base = store.get_base_model(alias)
    check_layers(base, params[0]["layers"])
    merge = {k: v for k, v in params[0].items() if k != "shard"}
    check_params(MERGE, {**merge, "after": list(range(jobs))})  # as a worker will check it
    job, created = store.create_job_group(
        base.id,
        [(SHARD, check_params(SHARD, p)) for p in params],
        (MERGE, merge),
        requested_by=requested_by or _user(),
        idempotency=idempotency,
        max_pending=max_pending,
    )
    _check_replay(job, created, MERGE, alias, merge)  # its "after" names the shards stored with it
    return job, created


def push_stats(
    store: Store, alias: str, repo: str, *, endpoint: str | None = None, private: bool = False
) -> StatsPushed:
    """Share every C recorded for ALIAS through REPO (a repository of statistics alone)."""
    from factstore.release import stats_repo

    return stats_repo.push_stats(store, alias, repo, endpoint=endpoint, private=private)


def pull_stats(store: Store, alias: str, repo: str, *, endpoint: str | None = None) -> StatsPulled:
    """Take the C files REPO holds for ALIAS's exact weights (checked), so edits need not compute them."""
    from factstore.release import stats_repo

    return stats_repo.pull_stats(store, alias, repo, endpoint=endpoint)


# edits -------------------------------------------------------------------------------------


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def submit_edit(
    store: Store,
    alias: str,
    request: EditRequest,
    options: EditOptions = EditOptions(),
    *,
    idempotency: str | None = None,
    checks: ModelChecks | None = None,
    max_pending: int | None = None,
) -> tuple[EditEntry, bool]:
    """Check REQUEST with the model's tokenizer only and store it pending for a worker (options:
    its layer, note and requester; band and batch play no part). Returns (entry, created); an
    IDEMPOTENCY hash already stored returns that entry. With MAX_PENDING, a requester with that
    many requests not yet computed is refused (TooManyRequests, a replay still answered;
    concurrent submissions can pass it by a few)."""
    from factstore.editing.requests import ModelChecks, submit

    checks = checks or ModelChecks.load(store, alias)
    asked = replace(options, requested_by=options.requested_by or _user())
    return submit(store, checks, request, asked, idempotency=idempotency, max_pending=max_pending)


def add_edit(
    store: Store,
    alias: str,
    request: EditRequest,
    options: EditOptions = EditOptions(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> EditOutcome:
    """Submit one edit and compute it in this process on the head model (or wait for the worker
    that holds the model to compute it). options.band: layers to spread it over (weights/band.py)."""
    from factstore.editing.session import EditSession

    entry, _ = submit_edit(store, alias, request, options)
    session = EditSession(store, alias, device=device, progress=progress, band=options.band)
    return session.run(entry.id)


def import_edits(
    store: Store,
    alias: str,
    path: str,
    limit: int | None = None,
    options: EditOptions = EditOptions(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> dict:
    """Validate every record of PATH (the first LIMIT), then compute and commit one edit (or
    options.batch together) at a time; a rerun skips stored ones. options.band: layers to spread
    each edit over (weights/band.py); each edit notes the file instead of options.note."""
    from factstore.editing import imports

    asked = replace(options, requested_by=options.requested_by or _user())
    return imports.import_edits(store, alias, path, limit, asked, device=device, progress=progress)


def list_edits(store: Store, alias: str, status: str = "active") -> list[StoredEdit]:
    """Computed edits (active, retracted, superseded or all of them) with their vectors, in seq order."""
    return store.list_edits(store.get_base_model(alias).id, status)


def list_log(
    store: Store, alias: str, match: LogMatch | str = "all", *, limit: int | None = None, offset: int = 0
) -> list[EditEntry]:
    """A model's log as people look at it: the rows MATCH selects (a bare status: one state,
    "current" for active edits and the queue, or "all")."""
    match = LogMatch(match) if isinstance(match, str) else match
    return store.list_entries(store.get_base_model(alias).id, match, limit=limit, offset=offset)


def count_log(store: Store, alias: str, match: LogMatch) -> int:
    """How many rows of ALIAS's log MATCH selects (list_log pages them)."""
    return store.count_matching(store.get_base_model(alias).id, match)


def get_edit(store: Store, edit_id: int) -> StoredEdit:
    return store.get_edit(edit_id)


def get_entry(store: Store, edit_id: int) -> EditEntry:
    """One edit or request in any state."""
    return store.get_entry(edit_id)


def retract_edit(store: Store, edit_id: int, who: ApiTokenInfo | None = None) -> StoredEdit:
    """Mark an active edit retracted, recording who and when; the next compile rebuilds without
    it. Over HTTP (WHO given) another token's edit needs an admin token."""
    if who is not None:
        _check_owner(who, store.get_entry(edit_id).requested_by, f"edit {edit_id}", "retracting")
    return store.set_edit_retracted(edit_id, who.name if who is not None else _user())


def withdraw_edit(store: Store, edit_id: int, who: ApiTokenInfo | None = None) -> EditEntry:
    """Withdraw a pending request (not yet claimed by a worker): it fails with who withdrew it.
    Over HTTP (WHO given) another token's request needs an admin token."""
    if who is not None:
        _check_owner(who, store.get_entry(edit_id).requested_by, f"edit {edit_id}", "withdrawing")
    return store.withdraw_pending(edit_id, f"withdrawn by {who.name if who is not None else _user()}")


def ask_model(
    store: Store, alias: str, prompt: str, top: int = 5, *, device: str | None = None, progress: Reporter = SILENT
) -> Answer:
    """Top next tokens and the greedy continuation on the head model (ask_head on a fresh head),
    the request checked with the tokenizer alone before any weights are loaded."""
    from factstore.editing.models import check_prompt_size, tokenizer_for
    from factstore.editing.session import EditSession

    _check_top(top)
    check_prompt_size(tokenizer_for(store, alias), prompt)
    return ask_head(EditSession(store, alias, device=device, progress=progress), prompt, top)


def _check_top(top: int) -> None:
    if not 1 <= top <= 100:
        raise InvalidEditRequest(f"top must be between 1 and 100, not {top}")


# releases ----------------------------------------------------------------------------------


def compile_release(
    store: Store,
    alias: str,
    options: CompileOptions = CompileOptions(),
    *,
    device: str | None = None,
    timings: dict[str, float] | None = None,
    progress: Reporter = SILENT,
) -> tuple[Release, bool]:
    """Build (or reuse, when the log is unchanged) a release folder. Returns (release, created);
    timings, when given, receives seconds per phase. options.min_efficacy: soft modes'
    acceptance (None: build.MIN_EFFICACY)."""
    from factstore.release import build

    return build.build(store, alias, options, device=device, timings=timings, progress=progress)


def list_releases(store: Store, alias: str, *, limit: int | None = None, offset: int = 0) -> list[Release]:
    """ALIAS's releases by version (LIMIT of them from OFFSET; all when None)."""
    return store.list_releases(store.get_base_model(alias).id, limit, offset)


def count_releases(store: Store, alias: str) -> int:
    """How many releases ALIAS has (a paged listing's total)."""
    return store.count_releases(store.get_base_model(alias).id)


def publish_release(
    store: Store,
    alias: str,
    repo: str,
    options: PublishOptions = PublishOptions(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> Published:
    """Compile if the log changed, upload as one commit on main, tag vN; options.with_stats also
    uploads the C files the release's edits used (stats/SHA256.safetensors, each once per
    repository). A release whose held-out perplexity rose past FACTSTORE_MAX_PERPLEXITY_RISE is
    refused unless options.allow_degraded."""
    from factstore.release import publish

    return publish.publish(store, alias, repo, options, device=device, progress=progress)


def pull_release(
    repo: str,
    options: PullOptions = PullOptions(),
    *,
    import_into: Store | None = None,
    alias: str | None = None,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> Pulled:
    """Download and verify one version; with import_into, continue its lineage in that store under ALIAS."""
    from factstore.release import lineage, pull

    alias = alias or repo.split("/")[-1]
    if import_into is not None:
        check_alias(alias)  # before anything is downloaded
    pulled = pull.pull(repo, options.version, options.out, options.endpoint)
    if import_into is None:
        return pulled
    shipped = pull.shipped_stats(repo, pulled.commit, options.endpoint)  # the release's own C files, if it ships them
    published = (repo, pulled.commit, pulled.version) if pulled.version is not None else None  # tagged: published
    imported = lineage.import_release(
        import_into, Path(pulled.path), alias, published, device=device, progress=progress, shipped=shipped
    )
    return replace(pulled, imported=imported)


# studies -----------------------------------------------------------------------------------


def trace_fact(
    store: Store,
    alias: str,
    fact: TracedFact,
    options: TraceOptions = TraceOptions(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> dict:
    """Causal-tracing maps of one fact (PNGs + JSON); options.settings.kinds empty: every kind."""
    from factstore.editing.models import check_size, tokenizer_for
    from factstore.studies import tracing

    options = _checked_trace(options)
    check_size(tokenizer_for(store, alias), EditRequest(fact.prompt, fact.subject, fact.target or "x"))
    return tracing.trace_fact(store, alias, fact, options, device=device, progress=progress)


def trace_dataset(
    store: Store,
    alias: str,
    path: str,
    n: int = 50,
    options: TraceOptions = TraceOptions(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> dict:
    """Average maps over N known facts; stores the MLP peak layer as the model's recommended layer."""
    from factstore.studies import tracing

    options = _checked_trace(options)
    if "mlp" not in options.settings.kinds:
        raise InvalidEditRequest("tracing a dataset needs the mlp map: the recommended layer is where its effect peaks")
    return tracing.trace_dataset(store, alias, path, n, options, device=device, progress=progress)


def _checked_trace(options: TraceOptions) -> TraceOptions:
    """OPTIONS with its kinds checked (none given: every kind)."""
    chosen = options.settings.kinds or KINDS
    if not set(chosen) <= set(KINDS):
        raise InvalidEditRequest(f"trace kinds must be among {', '.join(KINDS)}; got {', '.join(chosen) or 'none'}")
    return replace(options, settings=replace(options.settings, kinds=tuple(chosen)))


def evaluate_model(
    store: Store,
    alias: str,
    dataset: str,
    n: int | None = 100,
    settings: EvalSettings = EvalSettings(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> dict:
    """CounterFact scores of the first N records of DATASET: `single` (each record edited alone on
    the base), `lifelong` (all registered one after another in a resumable run folder, the log
    compiled in each of settings.lifelong.modes and scored, then settings.lifelong.retract edits
    retracted at random) or a built release (settings.release)."""
    from factstore.datasets import read_records
    from factstore.studies import evaluation, lifelong

    plan = settings.lifelong or LifelongSettings(batch=settings.batch)
    if settings.mode not in EVAL_MODES:
        raise InvalidEditRequest(f"unknown evaluation mode {shown(settings.mode)}; use {' or '.join(EVAL_MODES)}")
    if plan.retract < 0 or plan.heldout_tokens < 0 or plan.fluency_sample < 0:
        raise InvalidArgument("--retract, --heldout-tokens and --fluency-sample take a number >= 0")
    records = read_records(dataset, n)
    if settings.release is not None:
        return evaluation.release(
            store, alias, settings.release, records, settings.fluency, device=device, progress=progress
        )
    if settings.mode == "single":
        return evaluation.single(store, alias, records, settings, device=device, progress=progress)
    return lifelong.lifelong(store, alias, records, settings.fluency, plan, device=device, progress=progress)


# the service: workers, jobs, tokens ---------------------------------------------------------


def run_worker(
    store: Store,
    settings: WorkerSettings | None = None,
    *,
    stop: Event | None = None,
    max_idle_turns: int | None = None,
    progress: Reporter = SILENT,
) -> WorkerStats:
    """Compute the queue (of settings.models, default all) until STOP is set, which lets the
    current edit finish; with max_idle_turns, also until the queue stayed empty that many polls.
    A model is given up after settings.fair_batches batches in a row while another model waits."""
    from factstore.worker.loop import Worker

    settings = settings or WorkerSettings()
    if not 1 <= settings.batch <= 1000:
        raise InvalidEditRequest(f"batch must be between 1 and 1000, not {settings.batch}")
    if not 1 <= settings.fair_batches <= 10_000:
        raise InvalidEditRequest(f"fair_batches must be between 1 and 10000, not {settings.fair_batches}")
    worker = Worker(store, settings, progress)
    if stop is not None:
        worker.stopping = stop
    return worker.run(max_idle_turns=max_idle_turns)


def submit_job(
    store: Store,
    alias: str,
    kind: str,
    params: dict,
    *,
    requested_by: str | None = None,
    idempotency: str | None = None,
    max_pending: int | None = None,
) -> tuple[Job, bool]:
    """Queue a compile, a trace or a publish for a worker. Returns (job, created). MAX_PENDING:
    the jobs REQUESTED_BY may have pending or running (TooManyRequests past it; None: no limit)."""
    from factstore.editing.models import check_size, check_trace_size, tokenizer_for
    from factstore.worker.jobs import check_params

    base = store.get_base_model(alias)
    checked = check_params(kind, params)
    if kind == "trace":
        tokenizer = tokenizer_for(store, alias)
        request = EditRequest(checked["prompt"], checked["subject"], checked["target"] or "x")
        check_size(tokenizer, request)
        check_trace_size(tokenizer, request.text)
    if kind == "publish":
        store.get_release(base.id, checked["version"])  # an unknown version is refused now, not by a worker
    job, created = store.create_job(
        base.id, kind, checked, requested_by=requested_by, idempotency=idempotency, max_pending=max_pending
    )
    _check_replay(job, created, kind, alias, checked)
    return job, created


def _check_replay(job: Job, created: bool, kind: str, alias: str, params: dict) -> None:
    """A job found under an idempotency key must be the one asked for (KIND, ALIAS, PARAMS as
    stored), else the key was reused for another request: refused."""
    if not created and (job.kind, job.model, {k: job.params.get(k) for k in params}) != (kind, alias, params):
        from factstore.editing.requests import REUSED_KEY

        raise InvalidEditRequest(REUSED_KEY)


def queue_publish(
    store: Store,
    alias: str,
    repo: str,
    options: PublishOptions = PublishOptions(),
    *,
    requested_by: str | None = None,
    idempotency: str | None = None,
    max_pending: int | None = None,
) -> tuple[Job, bool]:
    """Queue publishing release options.version (None: the release of the current log, which
    must be compiled) for a worker with Hub credentials of its own (its own Hub endpoint: the
    mode and endpoint of OPTIONS play no part). Returns (job, created). REQUESTED_BY: the API
    token's name (None: the local user)."""
    from factstore.release.build import current_log_sha256

    version = options.version
    if version is None:
        latest = store.get_latest_release(store.get_base_model(alias).id)
        if latest is None or latest.edit_log_sha256 != current_log_sha256(store, alias, latest.mode):
            raise EditStateError(
                f"the current log of {alias} is not compiled yet: run `factstore compile --model {alias}` "
                "(or POST a compile job) first, then queue its publish"
            )
        version = latest.version
    params = {
        "version": version,
        "repo": repo,
        "private": options.private,
        "with_stats": options.with_stats,
        "allow_degraded": options.allow_degraded,
    }
    return submit_job(
        store,
        alias,
        "publish",
        params,
        requested_by=requested_by or _user(),
        idempotency=idempotency,
        max_pending=max_pending,
    )


def get_job(store: Store, job_id: int) -> Job:
    return store.get_job(job_id)


def cancel_job(store: Store, job_id: int, who: ApiTokenInfo | None = None) -> Job:
    """Cancel a job: a pending one at once, a running one at its worker's next check (within a
    few seconds). Over HTTP (WHO given) only its requester or an admin token may."""
    if who is not None:
        _check_owner(who, store.get_job(job_id).requested_by, f"job {job_id}", "cancelling")
    return store.cancel_job(job_id)


def _check_owner(who: ApiTokenInfo, requested_by: str | None, what: str, doing: str) -> None:
    """Only the token that asked for WHAT, or an admin token, may change it (ScopeError, 403)."""
    from factstore.auth import allows

    if who.name != requested_by and not allows(who.scope, "admin"):
        raise ScopeError(f"{what} was asked for by another token; {doing} it needs an admin token")


def list_jobs(store: Store, alias: str, kind: str | None = None) -> list[Job]:
    return store.list_jobs(store.get_base_model(alias).id, kind)


def create_token(store: Store, name: str, scope: str) -> tuple[ApiTokenInfo, str]:
    """A new API token; the secret is returned once and only its sha256 is stored."""
    from factstore.auth import create_token as create

    return create(store, name, scope)


def list_tokens(store: Store) -> list[ApiTokenInfo]:
    return store.list_tokens()


def revoke_token(store: Store, name: str) -> ApiTokenInfo:
    return store.set_token_revoked(name)


def authenticate(store: Store, token: str | None, scope: str) -> ApiTokenInfo:
    """The token's record if it may do what SCOPE allows; TokenError (401) or ScopeError (403)."""
    from factstore.auth import authenticate as check

    return check(store, token, scope)


def load_heavy_modules() -> None:
    """Import torch, transformers and the rooms that use them now, in this thread: a long-running
    process (the server) must not have two threads race through transformers' lazy imports."""
    from importlib import import_module

    for name in ("factstore.editing.requests", "factstore.editing.session", "factstore.worker.loop"):
        import_module(name)


def model_checks(store: Store, alias: str) -> ModelChecks:
    """A model's tokenizer and shape (no weights), to check submissions against."""
    from factstore.editing.requests import ModelChecks

    return ModelChecks.load(store, alias)


def open_head(store: Store, alias: str, *, device: str | None = None) -> EditSession:
    """The head model (base + active edits) kept in memory; `sync()` it before each use."""
    from factstore.editing.session import EditSession

    return EditSession(store, alias, device=device)


def ask_head(head: EditSession, prompt: str, top: int = 5) -> Answer:
    """Top next tokens and the greedy continuation on a head from open_head."""
    from factstore.editing.models import check_prompt_size
    from factstore.editing.session import ask

    _check_top(top)
    check_prompt_size(head.tokenizer, prompt)
    head.sync()
    reply = ask(head.model, head.tokenizer, prompt, top)
    return Answer(**dict(reply), edits_applied=len(head.applied))


def compare_head(head: EditSession, prompt: str, answers: Sequence[str] = (), top: int = 5) -> Comparison:
    """PROMPT on the head and on the base model, side by side: each one's top next tokens, greedy
    continuation and probability of each of ANSWERS (a new and an old object: a paraphrase of an
    edit should now prefer the new one, a neighbouring fact should answer as before)."""
    from factstore.editing.models import check_prompt_size
    from factstore.editing.session import ask
    from factstore.rome.scoring import target_probs

    _check_top(top)
    answers = list(dict.fromkeys(a.strip() for a in answers if a and a.strip()))[:4]
    check_prompt_size(head.tokenizer, prompt)
    head.sync()

    def one() -> Side:
        reply = ask(head.model, head.tokenizer, prompt, top)
        probs: list[float] = (
            target_probs(head.model, head.tokenizer, [prompt] * len(answers), answers).tolist() if answers else []
        )
        chances = [AnswerProb(answer=a, prob=p) for a, p in zip(answers, probs, strict=True)]
        return Side(**dict(reply), answers=chances)

    edited = one()
    with head.base_weights():
        base = one()
    return Comparison(prompt=prompt, head=edited, base=base, edits_applied=len(head.applied))


def release_scores(release: Release) -> dict:
    """A release's scores: recorded at compile time, else (a release built before they were)
    from its manifest when its folder is on this machine, else empty."""
    from factstore.release import manifest

    return dict(release.scores) if release.scores is not None else manifest.folder_scores(Path(release.path))


def service_state(store: Store) -> dict:
    """What /readyz reports: schema revision against head, and the live workers."""
    return {
        "schema_current": schema.current_revision(store.engine),
        "schema_head": schema.head_revision(),
        "workers": store.list_live_workers(3 * config.lease_seconds()),
    }
