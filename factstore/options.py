"""The settings objects the façade takes (factstore.api re-exports them): what an operation does
beyond its store, its subject (a model alias, an edit, a repository) and where it runs (`device`,
`progress`, which stay keyword arguments). Frozen, torch-free values with defaults, at the
foundation: the CLI and the HTTP layer build them, and the rooms below the façade read the
same objects instead of a dozen keyword arguments unpacked and packed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# names the settings below default to (the rooms that implement them import them from here)
MODES = ("joint", "sequential", "spread", "null-space", "soft", "band")  # compile modes (weights/replay.py)
KINDS = ("hidden", "mlp", "attn")  # causal-tracing maps (analysis/causal_trace.py)
NOISE_FACTOR = 3.0  # ROME: noise std = 3 x the std of subject-token embeddings


# edits and key statistics ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EditOptions:
    """How edit requests are registered: submit_edit, add_edit, import_edits."""

    layer: int | str | None = None  # a layer number or "auto" (the traced one); None: the measured, else the traced
    note: str | None = None  # free text kept with the edit (an import notes its file instead)
    requested_by: str | None = None  # recorded with the edit; None: the local user
    band: int | None = None  # computed here: spread over this many layers ending at its own (weights/band.py)
    batch: int = 1  # import_edits: requests computed together in one optimisation


@dataclass(frozen=True, slots=True)
class StatsOptions:
    """Which key statistics C to compute (compute_stats) or merge (merge_stats), from what text."""

    layer: int | str | None = None  # one layer; None: the model's edit layer (merge_stats: the layer number)
    layers: tuple[int, ...] = ()  # several layers from one pass over the corpus instead
    corpus: str | None = None  # starter:NAME or a .txt/.json/.jsonl file; None: the default corpus
    tokens: int | None = None  # keys summed; None: the model's default
    shard: str | None = None  # "I/N": only shard I of N of the corpus (a partial sum for merge_stats)


# releases -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompileOptions:
    """How a release is compiled: compile_release (and publish_release's compile, through its mode)."""

    mode: str | None = None  # one of MODES; None: the log's default (band for a band log, else joint)
    out: str | None = None  # write the release folder here instead of under FACTSTORE_HOME/releases
    min_efficacy: float | None = None  # soft modes: the share of edits that must still take; None: 95 %
    check: bool = True  # False: refuse no edit that does not hold (benchmarks measure how edits fare)


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """How a release goes to the Hub: publish_release, and queue_publish (which reads private,
    with_stats, allow_degraded and version; the worker uses its own Hub and the release's mode)."""

    private: bool = False  # create the repository private
    mode: str | None = None  # compile mode if a compile is needed
    endpoint: str | None = None  # Hub URL; None: HF_ENDPOINT, else https://huggingface.co
    with_stats: bool = False  # also upload the key statistics the edits used (once per repository)
    allow_degraded: bool = False  # publish even when held-out perplexity rose past FACTSTORE_MAX_PERPLEXITY_RISE
    version: int | None = None  # publish that release, which must be the current log's; None: the current log's


@dataclass(frozen=True, slots=True)
class PullOptions:
    """Which version of a Hub repository to pull (pull_release), and where to."""

    version: str | None = None  # a tag (vN) or commit SHA; None: the newest vN
    out: str | None = None  # folder to write; None: FACTSTORE_HOME/pulled/NS/NAME/COMMIT
    endpoint: str | None = None  # Hub URL; None: HF_ENDPOINT, else https://huggingface.co


# studies --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """The causal trace itself (analysis/causal_trace.py)."""

    samples: int = 10  # corrupted runs, each with its own noise draw
    noise_factor: float = NOISE_FACTOR  # noise std as a multiple of the subject embeddings' std
    window: int = 10  # layers restored together for "mlp" and "attn"
    seed: int = 0
    batch_rows: int = 256  # sequences per forward pass (restorations x samples)
    kinds: tuple[str, ...] = KINDS


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """A tracing run: trace_fact, trace_dataset."""

    out: str | None = None  # folder for the PNGs and JSON; None: under FACTSTORE_HOME/traces
    settings: TraceSettings = field(default_factory=TraceSettings)


@dataclass(frozen=True, slots=True)
class FluencySettings:
    """Generation fluency (GE): sampled continuations of a record's generation prompts."""

    prompts: int = 2  # generation prompts per record (CounterFact has 10; sampling dominates the cost)
    new_tokens: int = 50  # ROME samples 100
    top_k: int = 5
    seed: int = 0


@dataclass(frozen=True, slots=True)
class LifelongSettings:
    """The lifelong protocol (studies/lifelong.py): what is registered, scored and kept where."""

    every: int | None = None  # a curve point every EVERY edits (None: the end point only)
    batch: int = 8  # requests computed together on the head
    # compile modes scored (): none, registration only; None: the log's own (band for a band log, else every mode)
    modes: tuple[str, ...] | None = None
    fluency_sample: int = 50  # records whose generations are scored for GE at the end point
    heldout_tokens: int = 20_000  # perplexity check; 0 skips it
    retract: int = 0  # edits retracted at random after the modes are scored (then the default mode is rebuilt)
    seed: int = 0
    layer: int | None = None  # the edit layer (None: the model's default; a band mode spreads below it)
    band: int | None = None  # register over a band of this many layers (stored per layer; None: one)
    folder: str | Path | None = None  # the run folder, continued by a rerun (None: under FACTSTORE_HOME/evals)
    out: str | None = None  # folder for the curve PNG; None: the run's folder


@dataclass(frozen=True, slots=True)
class EvalSettings:
    """A CounterFact evaluation (evaluate_model): single edits, a lifelong log or a release."""

    mode: str = "single"  # single: each record edited alone on the base model; lifelong: all, one after another
    release: int | None = None  # score this built release (vN) on the edits it contains instead
    fluency: FluencySettings | None = field(default_factory=FluencySettings)  # None: no GE (the slowest part)
    batch: int = 1  # edits computed in one optimisation (single mode: each still scored alone)
    lifelong: LifelongSettings | None = None  # lifelong mode's protocol; None: its defaults with BATCH


# the service ----------------------------------------------------------------------------------


@dataclass
class WorkerSettings:
    """A worker process (worker/loop.py, run_worker)."""

    models: list[str] = field(default_factory=list)  # aliases to serve; empty: every model
    batch: int = 8  # requests claimed per turn on a model, computed in one optimisation where they can be
    device: str | None = None
    poll: float = 1.0  # seconds between looks at an empty queue
    lease_seconds: float | None = None  # default: FACTSTORE_LEASE_SECONDS
    jobs: bool = True  # run compile, trace and publish jobs
    edits: bool = True  # compute queued edits (False and jobs True: a worker only for jobs, so edits never wait on one)
    threads: int | None = None  # torch threads; several workers on one machine should split its cores
    heads: int = 2  # models kept loaded (warm heads); more cost memory, fewer cost reloads
    fair_batches: int = 4  # batches in a row on one model while another model waits, then it is given up
    listen: bool = True  # on PostgreSQL, wake at a submission (LISTEN/NOTIFY) instead of at the next poll
