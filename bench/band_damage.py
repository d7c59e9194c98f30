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
  (--scaled "8:3" "0-2:3": layers and factor), every record scored.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time

import run_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    parser.add_argument("--drop", type=float, nargs="*", default=[0.02, 0.05, 0.1])
    parser.add_argument("--layer-records", type=int, default=200, help="records scored per layer row (0: none)")
    parser.add_argument("--skip-layers", action="store_true", help="no by-layer rows")
    parser.add_argument("--scaled", nargs="*", default=[], help='"A-B:F": the weight of layers A..B times F')
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    args = parser.parse_args()

    import torch

    from factstore import arch
    from factstore.analysis.perplexity import perplexity
    from factstore.rome.edit import Snapshot, add_delta
    from factstore.rome.update import soft_regulariser
    from factstore.studies.lifelong import heldout_rows, score_variant
    from factstore.weights import band
    from factstore.weights.replay import edit_vectors, soft_settings

    store, session, edits, records = run_folder.open_run(args)
    heldout = heldout_rows(session, store, args.heldout_tokens)
    if not heldout:
        raise SystemExit("no held-out text: give --heldout-tokens > 0")
    if not all(e.band for e in edits):
        raise SystemExit("every edit of the log must be a band edit (registered with --band)")
    soft = band.settings(edits, soft_settings("band"))
    layers = sorted({a.layer for e in edits for a in e.band})
    print(f"{len(edits)} active edits, {len(records)} records, band layers {layers}, soft {soft}", flush=True)

    def compile_all(model, kept=edits):  # type: ignore[no-untyped-def]
        band.apply_band(model, kept, edit_vectors, session.layer_covariance, soft)

    def row(name: str, apply, scored) -> None:  # type: ignore[no-untyped-def]
        clock = time.perf_counter()
        if scored:
            s = score_variant(session, scored, apply, heldout)
            cells = " | ".join(f"{s[k]:.1f}" for k in ("ES", "PS", "NS"))
            ppl = s["perplexity"]
        else:
            with Snapshot(session.model, layers), session.base_weights():
                apply(session.model)
                ppl = perplexity(session.model, heldout)
            cells = " |  | "
        print(f"| {name} | {cells} | {ppl:.2f} | {time.perf_counter() - clock:.0f} |", flush=True)

    print("\n| compile | ES | PS | NS | held-out perplexity | seconds |\n|---|---|---|---|---|---|")
    row("unedited", lambda m: None, records[: args.layer_records])
    row("band as registered", compile_all, records[: args.layer_records])
    for layer in [] if args.skip_layers else layers:

        def without(model, layer=layer):  # type: ignore[no-untyped-def]
            base = Snapshot(model, [layer])
            compile_all(model)
            base.restore()

        row(f"layer {layer} left at the base", without, records[: args.layer_records])

    # each edit's estimated share of the damage, summed over the band
    damage = torch.zeros(len(edits), dtype=torch.float64)
    asks, last = band.collect(edits, edit_vectors, lambda n: (arch.down_proj_weight(session.model, n), None))
    index = {id(e): i for i, e in enumerate(edits)}
    owners = {
        n: [index[id(e)] for e in sorted(edits, key=lambda e: e.seq) if any(a.layer == n for a in e.band)] for n in asks
    }
    for layer, rows in sorted(asks.items()):
        C = session.layer_covariance(last[layer], layer).double()
        K = torch.stack([k for k, _ in rows], dim=1).double()  # (d_ff, n)
        R = torch.stack([r for _, r in rows], dim=1).double()  # (d, n)
        X = torch.linalg.solve(soft_regulariser(C, *soft) + K @ K.T, K)  # (d_ff, n): dW = R X^T exactly
        per = (R * R).sum(0) * (X * (C @ X)).sum(0)  # (n,)
        damage[torch.tensor(owners[layer])] += per
    order = torch.argsort(damage, descending=True)
    total = float(damage.sum()) or 1.0
    print(
        "\nshare of the estimated damage in the top edits: "
        + ", ".join(
            f"{p:.0%} of edits: {float(damage[order[: max(1, int(p * len(edits)))]].sum()) / total:.0%}"
            for p in (0.01, 0.02, 0.05, 0.1, 0.2)
        ),
        flush=True,
    )
    print("\n| compile | ES | PS | NS | held-out perplexity | seconds |\n|---|---|---|---|---|---|")
    row("band as registered (all records)", compile_all, records)
    for share in args.drop:
        dropped = {int(i) for i in order[: int(share * len(edits))]}
        kept = [e for i, e in enumerate(edits) if i not in dropped]
        row(
            f"without the {len(dropped)} edits of most damage ({share:.0%})",
            lambda m, k=kept: compile_all(m, k),
            records,
        )

    print("\n| compile | ES | PS | NS | held-out perplexity | seconds |\n|---|---|---|---|---|---|")
    for spec in args.scaled:
        span, factor = spec.split(":")
        low, _, high = span.partition("-")
        chosen = set(range(int(low), int(high or low) + 1))

        def scaled(model, chosen=chosen, factor=float(factor)):  # type: ignore[no-untyped-def]
            for layer, rows in sorted(asks.items()):
                weight = soft[0] * (factor if layer in chosen else 1.0)
                C = session.layer_covariance(last[layer], layer)
                add_delta(model, layer, band.layer_delta(rows, C, (weight, soft[1])))

        row(f"weight x{factor} on layers {sorted(chosen)}", scaled, records)


if __name__ == "__main__":
    main()
