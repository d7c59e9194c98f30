"""What the scripts that read a finished lifelong run share: its arguments and its opening."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser, dataset: bool = True) -> None:
    """--run-dir, --alias, --edits (and --dataset, --n when the script scores records)."""
    parser.add_argument("--run-dir", required=True, help="a folder of `factstore eval --mode lifelong`")
    parser.add_argument("--alias", default="smollm2")
    parser.add_argument("--edits", type=int, default=None, help="the log's first N active edits (default all)")
    if dataset:
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--n", type=int, default=1000, help="records scored (the first N of the dataset)")


def open_run(args: argparse.Namespace) -> tuple[Any, Any, list, list]:
    """(store, session on the base model's head, the first --edits active edits, the records)."""
    from factstore.datasets import read_records
    from factstore.editing.session import EditSession
    from factstore.studies.lifelong import run_store

    store = run_store(args.run_dir)
    session = EditSession(store, args.alias, device="cpu")
    edits = store.list_edits(session.base.id, "active")[: args.edits]
    dataset = getattr(args, "dataset", None)
    records = read_records(dataset, args.n) if dataset else []  # as the run scores them: superseded ones too
    return store, session, edits, records


def open_band_run(args: argparse.Namespace) -> tuple[Any, Any, list, list, list[list[int]] | None]:
    """open_run's five: (store, session, edits, records) of a log whose every edit is a band edit
    (SystemExit otherwise), and its held-out rows (--heldout-tokens of them)."""
    from factstore.studies.lifelong import heldout_rows

    store, session, edits, records = open_run(args)
    if not edits or not all(e.band for e in edits):
        raise SystemExit("every edit of the log must be a band edit (registered with --band)")
    return store, session, edits, records, heldout_rows(session, store, args.heldout_tokens)


def applier(deltas: dict[int, Any]) -> Any:
    """A function that adds DELTAS ({layer: dW (out, in)}) to a model's down-projections."""
    from factstore.rome.edit import add_delta

    def apply(model: Any) -> None:
        for layer, delta in deltas.items():
            add_delta(model, layer, delta)

    return apply


def add_control_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--control FILE (WHAT it holds) and --control-n: records whose subjects no edit names."""
    parser.add_argument("--control", required=True, help=f"a CounterFact file: {what}")
    parser.add_argument("--control-n", type=int, default=200)


def unnamed_records(store: Any, session: Any, path: str, n: int) -> list:
    """Of the first N records of PATH, those whose subject no edit of the run names (any status)."""
    from factstore.datasets import read_records

    named = {e.subject for e in store.list_edits(session.base.id, "all")}
    return [r for r in read_records(path, n) if r.request.subject not in named]


class BandLog:
    """A band run's log opened for recompiles: open_band_run's session, edits, records and
    held-out rows, with the log's registered (weight, alpha), rho, its stored asks by layer
    (weights/band.collect) and the edit whose C each layer's solve reads."""

    def __init__(self, args: argparse.Namespace) -> None:
        from factstore import arch
        from factstore.weights import band
        from factstore.weights.replay import edit_vectors, soft_settings

        _, self.session, self.edits, self.records, self.heldout = open_band_run(args)
        self.weight, self.alpha = band.settings(self.edits, soft_settings("band"))
        self.rho = band.names_weight(self.edits[-1])
        with self.session.base_weights():
            self.asks, self.last = band.collect(
                self.edits, edit_vectors, lambda n: (arch.down_proj_weight(self.session.model, n), None)
            )
        self.layers = sorted(self.asks)

    def held(self, layer: int, rho: float | None = None) -> Any:
        """C + rho N (m, m) float64 of LAYER, rho as registered unless given."""
        cov = self.last[layer].covariance_id
        return self.session.statistics.band_matrix(cov, layer, self.rho if rho is None else rho).double()

    def deltas(self, held: dict[int, Any] | None = None, weight: float | None = None) -> dict[int, Any]:
        """{layer: dW (d, m)} of every layer's soft solve over the stored asks, holding each to
        HELD[layer] (default C + rho N as registered) at WEIGHT (default the registered one)."""
        from factstore.weights import band

        w = self.weight if weight is None else weight
        return {
            n: band.layer_delta(self.asks[n], self.held(n) if held is None else held[n], (w, self.alpha))
            for n in self.layers
        }

    def names(self, layer: int) -> Any:
        """rho N (m, m) float64 of LAYER at the registered rho: what the held matrix adds to C."""
        return self.held(layer) - self.held(layer, 0.0)
