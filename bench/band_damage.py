"""Where a band log's damage to held-out text comes from (issue 25): by layer and by edit.

    FACTSTORE_HOME=H python bench/band_damage.py --run-dir DIR --dataset ../shared/data/counterfact_val_1000.json \\
        [--n 1000] [--edits N] [--drop 0.02 0.05 0.1] [--layer-records 200] [--heldout-tokens 20000]

DIR is a run folder of `factstore eval --mode lifelong --band B` (its store holds the edits'
per-layer vectors). The log is compiled as registered (weights/band.py) on the base model, then:
- by layer: the same compile with one layer of the band put back to the base weights (held-out
  perplexity, and ES/PS/NS on the first --layer-records records);
- by edit: each edit's share of the damage estimated from the solve, summed over the band,
  d_i = sum_l |r_i|^2 x_i^T C_l x_i with x_i = A_l^-1 k_i, A_l = w (C_l + alpha I) + K_l K_l^T
  (its rank-one part of dW_l measured on C_l, cross terms left out), and the log compiled
  without the top share of edits by d_i (--drop), every record scored;
- by weight: the same stored vectors compiled with the soft weight of some layers multiplied
  (--scaled "8:3" "0-2:3": layers and factor), every record scored;
- by alpha: compiled with ENCORE's alpha I in every layer's solve (--alphas 0.1 1: A = w (C +
  alpha mean(diag C) I)), with the weight times --alpha-scale F if given, every record scored.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import run_folder

TABLE = "\n| compile | ES | PS | NS | held-out perplexity | seconds |\n|---|---|---|---|---|---|"


@dataclass
class Run:
    """The opened run folder and what every row needs: its session, log, records, held-out text."""

    session: Any
    edits: list[Any]
    records: list[Any]
    heldout: Any
    soft: tuple[float, float]
    layers: list[int]

    def compile(self, model: Any, kept: list[Any] | None = None) -> None:
        from factstore.weights import band
        from factstore.weights.replay import edit_vectors

        band.apply_band(
            model, self.edits if kept is None else kept, edit_vectors, self.session.layer_covariance, self.soft
        )

    def row(self, name: str, apply: Callable[[Any], None], scored: list[Any]) -> None:
        from factstore.analysis.perplexity import perplexity
        from factstore.rome.edit import Snapshot
        from factstore.studies.lifelong import score_variant

        clock = time.perf_counter()
        if scored:
            s = score_variant(self.session, scored, apply, self.heldout)
            cells = " | ".join(f"{s[k]:.1f}" for k in ("ES", "PS", "NS"))
            ppl = s["perplexity"]
        else:
            with Snapshot(self.session.model, self.layers), self.session.base_weights():
                apply(self.session.model)
                ppl = perplexity(self.session.model, self.heldout)
            cells = " |  | "
        print(f"| {name} | {cells} | {ppl:.2f} | {time.perf_counter() - clock:.0f} |", flush=True)


def by_layer(run: Run, records: list[Any]) -> None:
    """The compile with one layer of the band put back to the base weights, per layer."""
    from factstore.rome.edit import Snapshot

    for layer in run.layers:

        def without(model: Any, layer: int = layer) -> None:
            base = Snapshot(model, [layer])
            run.compile(model)
            base.restore()

        run.row(f"layer {layer} left at the base", without, records)


def edit_damage(run: Run, asks: dict[int, Any], last: dict[int, Any]) -> Any:
    """(n,) each edit's estimated share of the damage, summed over the band."""
    import torch

    from factstore.rome.update import soft_regulariser

    damage = torch.zeros(len(run.edits), dtype=torch.float64)
    index = {id(e): i for i, e in enumerate(run.edits)}
    ordered = sorted(run.edits, key=lambda e: e.seq)
    for layer, rows in sorted(asks.items()):
        owners = [index[id(e)] for e in ordered if any(a.layer == layer for a in e.band)]
        C = run.session.layer_covariance(last[layer], layer).double()
        K = torch.stack([k for k, _ in rows], dim=1).double()  # (d_ff, n)
        R = torch.stack([r for _, r in rows], dim=1).double()  # (d, n)
        X = torch.linalg.solve(soft_regulariser(C, *run.soft) + K @ K.T, K)  # (d_ff, n): dW = R X^T exactly
        damage[torch.tensor(owners)] += (R * R).sum(0) * (X * (C @ X)).sum(0)
    return damage


def by_edit(run: Run, damage: Any, drop: list[float]) -> None:
    """The top shares of the damage, and the log compiled without its most damaging edits."""
    import torch

    order = torch.argsort(damage, descending=True)
    total = float(damage.sum()) or 1.0
    n = len(run.edits)
    shares = ", ".join(
        f"{p:.0%} of edits: {float(damage[order[: max(1, int(p * n))]].sum()) / total:.0%}"
        for p in (0.01, 0.02, 0.05, 0.1, 0.2)
    )
    print(f"\nshare of the estimated damage in the top edits: {shares}", flush=True)
    print(TABLE)
    run.row("band as registered (all records)", run.compile, run.records)
    for share in drop:
        dropped = {int(i) for i in order[: int(share * n)]}
        kept = [e for i, e in enumerate(run.edits) if i not in dropped]
        run.row(
            f"without the {len(dropped)} edits of most damage ({share:.0%})",
            lambda m, k=kept: run.compile(m, k),
            run.records,
        )


def by_weight(
    run: Run, asks: dict[int, Any], last: dict[int, Any], scaled: list[str], alphas: list[float], factors: list[float]
) -> None:
    """The same stored asks solved with other settings: some layers' weight scaled, or alpha I added."""
    from factstore.rome.edit import add_delta
    from factstore.weights import band

    top = band.tops(run.edits)

    def solve(model: Any, weight_of: Callable[[int], float], alpha: float) -> None:
        for layer, rows in sorted(asks.items()):
            C = run.session.layer_covariance(last[layer], layer)
            soft = band.layer_soft((weight_of(layer), alpha), layer, top)  # a log's top weight kept
            add_delta(model, layer, band.layer_delta(rows, C, soft))

    print(TABLE)
    for spec in scaled:
        span, factor = spec.split(":")
        low, _, high = span.partition("-")
        chosen = set(range(int(low), int(high or low) + 1))
        weight_of = lambda layer, c=chosen, f=float(factor): run.soft[0] * (f if layer in c else 1.0)  # noqa: E731
        run.row(
            f"weight x{factor} on layers {sorted(chosen)}", lambda m, w=weight_of: solve(m, w, run.soft[1]), run.records
        )
    for alpha in alphas:
        for f in factors:
            run.row(
                f"alpha {alpha:g}, weight x{f:g}",
                lambda m, a=alpha, f=f: solve(m, lambda _: run.soft[0] * f, a),
                run.records,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    parser.add_argument("--drop", type=float, nargs="*", default=[0.02, 0.05, 0.1])
    parser.add_argument("--layer-records", type=int, default=200, help="records scored per layer row (0: none)")
    parser.add_argument("--skip-layers", action="store_true", help="no by-layer rows")
    parser.add_argument("--skip-edits", action="store_true", help="no by-edit rows")
    parser.add_argument("--scaled", nargs="*", default=[], help='"A-B:F": the weight of layers A..B times F')
    parser.add_argument(
        "--alphas", type=float, nargs="*", default=[], help="ENCORE's alpha, a share of C's mean variance"
    )
    parser.add_argument(
        "--alpha-scale", type=float, nargs="*", default=[1.0], help="the weight's factors for those rows"
    )
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    args = parser.parse_args()

    from factstore import arch
    from factstore.weights import band
    from factstore.weights.replay import edit_vectors, soft_settings

    _, session, edits, records, heldout = run_folder.open_band_run(args)
    if not heldout:
        raise SystemExit("no held-out text: give --heldout-tokens > 0")
    soft = band.settings(edits, soft_settings("band"))
    layers = sorted({a.layer for e in edits for a in e.band})
    run = Run(session, edits, records, heldout, soft, layers)
    print(f"{len(edits)} active edits, {len(records)} records, band layers {layers}, soft {soft}", flush=True)

    print(TABLE)
    run.row("unedited", lambda m: None, records[: args.layer_records])
    run.row("band as registered", run.compile, records[: args.layer_records])
    if not args.skip_layers:
        by_layer(run, records[: args.layer_records])
    asks, last = band.collect(edits, edit_vectors, lambda n: (arch.down_proj_weight(session.model, n), None))
    if not args.skip_edits:
        by_edit(run, edit_damage(run, asks, last), args.drop)
    by_weight(run, asks, last, args.scaled, args.alphas, args.alpha_scale)


if __name__ == "__main__":
    main()
