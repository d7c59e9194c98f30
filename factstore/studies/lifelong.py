"""The lifelong protocol: records registered one after another in a store of their own, then
the log compiled each way and scored.

The run lives in a folder (a SQLite store and state.json): the edits are registered through
the import path (batches computed on the head as it is, resumable), and every score is kept
as soon as it is computed, so an interrupted run continues where it stopped and a rerun with
another compile mode computes only that mode. Scores at a point of the curve are of the log's
first I edits compiled in a mode; the end point adds fluency on a sample and the perplexity of
held-out text the key statistics never read (damage that does not depend on the edited facts).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

from transformers import PreTrainedModel

from factstore import arch, config
from factstore.analysis.metrics import FluencySettings, RecordScores, aggregate, score_records
from factstore.analysis.perplexity import perplexity
from factstore.domain import Record, StoredEdit, request_sha256
from factstore.editing.imports import add_requests
from factstore.editing.models import register_model
from factstore.editing.session import EditSession
from factstore.errors import CompileError, InvalidArgument, InvalidEditRequest
from factstore.files import atomic_write_text
from factstore.options import MODES, LifelongSettings
from factstore.progress import SILENT, Reporter
from factstore.release import health
from factstore.release.build import spread_inputs
from factstore.rome.edit import Snapshot
from factstore.storage import schema
from factstore.storage.engine import make_engine
from factstore.storage.store import Store
from factstore.studies.figures import plot_curve
from factstore.weights.replay import (
    DEFAULT_MODE,
    LAYERED_MODES,
    apply_edits,
    check_mode,
    constraint_errors,
    default_mode,
    tolerance,
)
from factstore.weights.spread import SPREAD_LAYERS, LayerInputs, spread_layers

CURVE_MODES = (DEFAULT_MODE, "band")  # scored at every curve point; the other modes at the end


# the run folder -------------------------------------------------------------------------------


def records_sha256(records: Sequence[Record]) -> str:
    blob = json.dumps([asdict(r) for r in records], ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_folder(alias: str, records: Sequence[Record]) -> Path:
    return config.home() / "evals" / alias / f"lifelong-{len(records)}-{records_sha256(records)[:12]}"


class _State:
    """state.json of a run: every score once computed, written atomically."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.data: dict = json.loads(path.read_text()) if path.exists() else {**header, "points": {}, "seconds": {}}
        for key, want in header.items():
            self.data.setdefault(key, want)  # a setting an older state did not record is taken as this run's
            if self.data.get(key) != want:
                raise InvalidArgument(
                    f"{path.parent} holds a run with another {key} ({self.data.get(key)!r}); give another --run-dir"
                )

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True))

    def add_seconds(self, phase: str, seconds: float) -> None:
        self.data["seconds"][phase] = round(self.data["seconds"].get(phase, 0.0) + seconds, 1)


RUN_DB = "lifelong.db"  # a run folder's own store


def run_store(folder: Path | str) -> Store:
    """The store of a run folder, as it is (bench scripts read a run with it)."""
    path = Path(folder) / RUN_DB
    if not path.is_file():
        raise InvalidArgument(f"{folder} is not a lifelong run folder (it has no {RUN_DB})")
    return Store(f"sqlite:///{path}")


def _open_store(folder: Path, source: Store, alias: str, progress: Reporter) -> Store:
    """The run's own SQLite store in FOLDER, with ALIAS registered as in SOURCE."""
    url = f"sqlite:///{folder / RUN_DB}"
    engine = make_engine(url)
    try:
        schema.upgrade(engine)
    finally:
        engine.dispose()
    store = Store(url)
    base = source.get_base_model(alias)
    register_model(store, alias, base.source, base.revision, dtype=base.dtype, progress=progress)
    return store


# scoring --------------------------------------------------------------------------------------


def weights_restored(model: PreTrainedModel) -> Snapshot:
    """Every down-projection as it is now, put back on exit (a compile mode may touch any layer)."""
    return Snapshot(model, range(arch.num_layers(model)))


def _with_generations(record: Record) -> Record:
    """A record without generation prompts is sampled from its own rewrite and paraphrase prompts."""
    if record.generations:
        return record
    req = record.request
    return replace(record, generations=(req.prompt.replace("{}", req.subject, 1), *record.paraphrases))


def _compact(scores: Sequence[RecordScores]) -> list[list]:
    """Per-record ES, PS, NS shares (for subsets: retracted vs kept, each curve point's own records)."""

    def pct(v: list[bool]) -> float | None:
        return sum(v) / len(v) if v else None

    return [[pct(s.efficacy), pct(s.paraphrase), pct(s.neighbourhood)] for s in scores]


def subset_means(compact: Sequence[list], which: Sequence[int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for col, name in enumerate(("ES", "PS", "NS")):
        vals = [compact[i][col] for i in which if compact[i][col] is not None]
        out[name] = 100.0 * sum(vals) / len(vals) if vals else None
    return out


def _score(
    model: PreTrainedModel,
    tok: object,
    records: Sequence[Record],
    fluency: FluencySettings | None,
    sample: int,
    heldout: list[list[int]] | None,
) -> dict:
    scores = score_records(model, tok, records[sample:], None)  # type: ignore[arg-type]
    if sample:
        scores = score_records(model, tok, [_with_generations(r) for r in records[:sample]], fluency) + scores  # type: ignore[arg-type]
    result = {**aggregate(scores), "records": _compact(scores)}
    if heldout:
        result["perplexity"] = perplexity(model, heldout)
    return result


def score_variant(
    session: EditSession,
    records: Sequence[Record],
    apply: Callable[[PreTrainedModel], None],
    heldout: list[list[int]] | None,
    fluency: FluencySettings | None = None,
) -> dict:
    """Scores of RECORDS (and the held-out perplexity) on the base model changed by APPLY: for
    sweeps of a compile mode's settings over a finished run's log (bench/soft_sweep.py). With
    FLUENCY, GE too, every record's generations sampled as the lifelong run samples its end point's."""
    with weights_restored(session.model), session.base_weights():
        apply(session.model)
        return _score(session.model, session.tokenizer, records, fluency, len(records) if fluency else 0, heldout)


def band_inputs(session: EditSession, edits: list[StoredEdit], band: int = SPREAD_LAYERS) -> LayerInputs:
    """The spread machinery's inputs for a band of BAND layers ending at each edit layer, with C
    computed first for every layer below (same corpus and size as the edit's own C)."""
    for layer, cov_id in sorted({(e.layer, e.covariance_id) for e in edits if e.covariance_id is not None}):
        session.covariances_like(session.store.get_covariance(cov_id), spread_layers(layer, band)[:-1])
    return spread_inputs(session.store, session.base, session.model, session.tokenizer)


def _width(mode: str, edits: list[StoredEdit]) -> int:
    """Layers below each edit layer a layered compile of EDITS reads C of."""
    return SPREAD_LAYERS if mode == "spread" else max([len(e.band) for e in edits] + [1])


def heldout_rows(session: EditSession, store: Store, tokens: int) -> list[list[int]] | None:
    """The run's held-out text (TOKENS of the statistics' corpus past what any C read)."""
    return _heldout(session, store, LifelongSettings(heldout_tokens=tokens))


# the run --------------------------------------------------------------------------------------


def _record_index(records: Sequence[Record]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, record in enumerate(records):
        index.setdefault(request_sha256(record.request), i)
    return index


def _points(n: int, every: int | None) -> list[int]:
    return sorted({*(range(every, n, every) if every else ()), n})


def lifelong(
    store: Store,
    alias: str,
    records: list[Record],
    fluency: FluencySettings | None = None,
    settings: LifelongSettings = LifelongSettings(),
    *,
    device: str | None = None,
    progress: Reporter = SILENT,
) -> dict:
    """Register RECORDS one after another in the run folder's store (resumable), score the log
    compiled in each of settings.modes at every curve point, then retract settings.retract
    edits at random and score the default mode's rebuild. Returns the table, curve and paths
    (the run in settings.folder, the curve drawn into settings.out)."""
    for mode in settings.modes or ():
        check_mode(mode)
    _check_band_modes(settings.modes or (), (settings.band or 1) > 1)  # before a model loads, when asked
    run = Path(settings.folder).expanduser() if settings.folder else default_folder(alias, records)
    run.mkdir(parents=True, exist_ok=True)
    base = store.get_base_model(alias)
    header = {
        "alias": alias,
        "identity": base.identity,
        "records_sha256": records_sha256(records),
        "batch": settings.batch,
        "heldout_tokens": settings.heldout_tokens,
        "fluency": fluency is not None and settings.fluency_sample > 0,
        "fluency_sample": settings.fluency_sample,
        **({} if settings.layer is None else {"layer": settings.layer}),
        **({} if settings.band is None else {"band": settings.band}),
    }  # what the kept scores depend on (compile modes may vary)
    state = _State(run / "state.json", header)
    scratch = _open_store(run, store, alias, progress)
    try:
        session = EditSession(scratch, alias, device=device, progress=progress, band=settings.band)
        settings = replace(settings, modes=_log_modes(session, settings))
        _register(session, records, settings, state, progress)
        heldout = _heldout(session, scratch, settings)
        log = _log(scratch, session.base.id, state)
        under_way = _Run(session, records, log, _record_index(records), settings, state)
        _score_modes(under_way, fluency, heldout, progress)
        if settings.retract:
            _retraction(under_way, progress)
    finally:
        scratch.close()
    return _result(state.data, records, settings, run)


def _log_modes(session: EditSession, settings: LifelongSettings) -> tuple[str, ...]:
    """The compile modes to score: settings.modes, else the log's own: band for a log registered
    over a band (it compiles only so: the head its edits were measured on), else every mode."""
    banded = session.hparams(settings.layer, settings.band).band > 1
    if settings.modes is None:
        return ("band",) if banded else MODES
    _check_band_modes(settings.modes, banded)
    return settings.modes


def _check_band_modes(modes: Sequence[str], banded: bool) -> None:
    if banded and set(modes) - {"band"}:
        raise InvalidArgument(
            "this run's log is registered over a band, which compiles only in band mode; give --compile-mode band "
            f"or leave it out (not {', '.join(m for m in modes if m != 'band')})"
        )


def _register(
    session: EditSession, records: list[Record], settings: LifelongSettings, state: _State, progress: Reporter
) -> None:
    if state.data.get("registered") == len(records):
        return
    if "unedited" not in state.data:  # before any edit: the head is the base model
        with session.base_weights():
            clock = time.perf_counter()
            state.data["unedited"] = _score(session.model, session.tokenizer, records, None, 0, None)
            state.add_seconds("score unedited", time.perf_counter() - clock)
        state.save()
    requests = [r.request for r in records]
    for i, request in enumerate(requests, start=1):
        try:
            session.validate(request)
        except InvalidEditRequest as exc:
            raise InvalidEditRequest(f"record {i}: {exc}") from None
    clock = time.perf_counter()
    step = settings.every or len(records)
    for lo in range(0, len(records), step):  # seconds recorded per slice: an interrupted run keeps what it spent
        add_requests(
            session,
            requests[lo : lo + step],
            layer=settings.layer,
            batch=settings.batch,
            note="lifelong evaluation",
            progress=progress,
        )
        state.add_seconds("register", time.perf_counter() - clock)
        state.save()
        clock = time.perf_counter()
    state.data["registered"] = len(records)
    state.save()


def _log(store: Store, base_id: int, state: _State) -> list[StoredEdit]:
    """The run's full log: active edits and the ones the retraction step retracted; the same
    log the kept scores were computed on (else the run's store was changed behind its back)."""
    retracted = set(state.data.get("retraction", {}).get("edit_ids", []))
    edits = store.list_edits(base_id, "all")
    log = [e for e in edits if e.status == "active" or (e.status == "retracted" and e.id in retracted)]
    digest = hashlib.sha256(json.dumps([[e.key_sha256, e.value_sha256] for e in log]).encode()).hexdigest()
    if state.data.setdefault("log_sha256", digest) != digest:
        raise InvalidArgument(
            f"the edit log in {state.path.parent} is not the one its kept scores were computed on; give another --run-dir"
        )
    state.save()
    return log


def _heldout(session: EditSession, store: Store, settings: LifelongSettings) -> list[list[int]] | None:
    if not settings.heldout_tokens:
        return None
    edits = store.list_edits(session.base.id, "all")
    tokens = settings.heldout_tokens
    return health.held_out_text(store, session.base.id, edits, session.model, session.tokenizer, tokens, tokens).rows


def _scoring_order(i: int, n: int, every: int | None) -> tuple[bool, int, int]:
    """Sort key of curve point I: the whole log first (what a stopped run most needs), then
    coarse to fine (every 8th point, then every 4th, ...), so a run stopped early still has a
    curve spread over the whole log rather than its first part."""
    step = i // every if every and i % every == 0 else 1
    return i != n, -(step & -step), i


def _point_key(mode: str, i: int) -> str:
    return f"{mode}@{i}"


class _Run(NamedTuple):
    """A run under way: the head on the run's store, the records, the full log (positions:
    request sha256 -> record position), the settings and the kept state."""

    session: EditSession
    records: list[Record]
    log: list[StoredEdit]
    positions: dict[str, int]
    settings: LifelongSettings
    state: _State


def _score_modes(
    run: _Run, fluency: FluencySettings | None, heldout: list[list[int]] | None, progress: Reporter
) -> None:
    session, records, log, index, settings, state = run
    n = len(records)
    if "unedited_perplexity" not in state.data and heldout:
        with session.base_weights():
            state.data["unedited_perplexity"] = perplexity(session.model, heldout)
        state.save()
    sample = min(settings.fluency_sample, n)
    if fluency is not None and sample and "unedited_GE" not in state.data:  # the GE gate's reference
        with session.base_weights():
            state.data["unedited_GE"] = _score(
                session.model, session.tokenizer, records[:sample], fluency, sample, None
            )["GE"]
        state.save()
    todo = [
        (mode, i)
        for mode in settings.modes or ()  # (resolved by _log_modes)
        for i in _points(n, settings.every if mode in CURVE_MODES else None)
        if _point_key(mode, i) not in state.data["points"]
    ]
    todo.sort(key=lambda point: _scoring_order(point[1], n, settings.every))
    with progress.task("scoring compiled logs", len(todo)) as advance:
        for done, (mode, i) in enumerate(todo, start=1):
            clock = time.perf_counter()
            edits = [e for e in log if index.get(request_sha256(e.request()), n) < i]
            end = i == n
            inputs = band_inputs(session, edits, _width(mode, edits)) if mode in LAYERED_MODES else None
            with weights_restored(session.model), session.base_weights():
                try:
                    apply_edits(session.model, edits, session.matrix, mode, inputs)
                except CompileError as exc:  # the mode cannot compile this log (a finding, not a crash)
                    state.data["points"][_point_key(mode, i)] = {"refused": str(exc), "edits": len(edits)}
                    state.save()
                    advance(done)
                    continue
                errors = (
                    constraint_errors(session.model, edits) if mode not in LAYERED_MODES else {}
                )  # spread checks its own targets
                scores = _score(
                    session.model,
                    session.tokenizer,
                    records[:i],
                    fluency if end else None,
                    min(settings.fluency_sample, i) if end and fluency else 0,
                    heldout if end else None,
                )
            seconds = time.perf_counter() - clock
            held = (
                sum(err <= tolerance(session.model, e.layer) for e, err in zip(edits, errors.values()))
                if errors
                else None
            )
            state.data["points"][_point_key(mode, i)] = {
                **scores,
                "edits": len(edits),
                "seconds": round(seconds, 1),
                "constraints_held": held,
                "max_constraint_error": max(errors.values(), default=None),
            }
            state.add_seconds(f"score {mode}", seconds)
            state.save()
            advance(done)


def _retraction(run: _Run, progress: Reporter) -> None:
    """Retract settings.retract edits of the log at random (seeded), rebuild the default mode without
    them: the retracted facts should fall back to the unedited model's scores, the rest keep theirs."""
    session, records, log, index, settings, state = run
    done = state.data.get("retraction")
    if done and (done.get("n"), done.get("seed")) not in ((settings.retract, settings.seed), (None, None)):
        raise InvalidArgument(
            f"{state.path.parent} retracted {done.get('n')} edits (seed {done.get('seed')}) already; give another --run-dir"
        )
    if done and "after" in done:
        return
    if not done:
        chosen = sorted(random.Random(settings.seed).sample([e.id for e in log], min(settings.retract, len(log))))
        state.data["retraction"] = done = {
            "edit_ids": chosen,
            "mode": default_mode(log),
            "n": settings.retract,
            "seed": settings.seed,
        }
        state.save()
    for edit_id in done["edit_ids"]:
        if session.store.get_edit(edit_id).status == "active":
            session.store.set_edit_retracted(edit_id)
    kept = session.store.list_edits(session.base.id, "active")
    clock = time.perf_counter()
    mode = done["mode"]
    inputs = band_inputs(session, kept, _width(mode, kept)) if mode in LAYERED_MODES else None
    with weights_restored(session.model), session.base_weights():
        apply_edits(session.model, kept, session.matrix, mode, inputs)
        scores = score_records(session.model, session.tokenizer, records, None)
    state.add_seconds("retraction", time.perf_counter() - clock)
    gone = {e.id for e in log} - {e.id for e in kept}
    rec_of = {e.id: index[request_sha256(e.request())] for e in log}
    done["after"] = _compact(scores)
    done["retracted_records"] = sorted(rec_of[i] for i in gone)
    done["kept_records"] = sorted(rec_of[e.id] for e in kept)
    state.save()


def _result(data: dict, records: list[Record], settings: LifelongSettings, run: Path) -> dict:
    n = len(records)
    points = data["points"]

    def strip(p: dict) -> dict:
        return {k: v for k, v in p.items() if k != "records"}

    modes = {m: strip(points[_point_key(m, n)]) for m in settings.modes or () if _point_key(m, n) in points}
    for scores in modes.values():
        if data.get("unedited_perplexity") and scores.get("perplexity") and "refused" not in scores:
            scores["perplexity_change_pct"] = 100 * (scores["perplexity"] / data["unedited_perplexity"] - 1)
        if data.get("unedited_GE") and scores.get("GE") is not None and "refused" not in scores:
            scores["GE_change_pct"] = 100 * (scores["GE"] / data["unedited_GE"] - 1)
    unedited = {**strip(data["unedited"]), "perplexity": data.get("unedited_perplexity"), "GE": data.get("unedited_GE")}
    curve = []
    for i in _points(n, settings.every):
        row: dict = {"edits": i, "unedited": subset_means(data["unedited"]["records"], range(i))}
        row.update(
            {
                m: strip(points[_point_key(m, i)])
                for m in settings.modes or ()
                if _point_key(m, i) in points and "refused" not in points[_point_key(m, i)]
            }
        )
        curve.append(row)
    default = DEFAULT_MODE if DEFAULT_MODE in modes else next(iter(modes), "")
    result: dict = {
        **(modes.get(default) or {}),
        "mode": "lifelong",
        "compile_mode": default,
        "modes": modes,
        "unedited": unedited,
        "curve": curve,
        "run_dir": str(run),
        "seconds": data["seconds"],
    }
    if (r := data.get("retraction")) and "after" in r:
        gone, kept = r["retracted_records"], r["kept_records"]
        full = points.get(_point_key(r["mode"], n), {}).get("records")
        result["retraction"] = {
            "mode": r["mode"],
            "retracted": len(gone),
            "kept": len(kept),
            "retracted_unedited": subset_means(data["unedited"]["records"], gone),
            "retracted_before": subset_means(full, gone) if full else None,
            "retracted_after": subset_means(r["after"], gone),
            "kept_before": subset_means(full, kept) if full else None,
            "kept_after": subset_means(r["after"], kept),
        }
    if len(curve) > 1:
        folder = Path(settings.out).expanduser() if settings.out else run
        title = f"{data['alias']}: {n} edits registered one after another"
        drawn = [c for c in curve if default in c]
        result["png"] = plot_curve(
            [{"edits": c["edits"], **c[default]} for c in drawn],
            folder / f"lifelong-{n}.png",
            f"{title} ({default} compile)",
            [c["unedited"]["NS"] for c in drawn],
        )
    return result
