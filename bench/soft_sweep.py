"""Sweep the soft compile's settings over a finished lifelong run's log (issue 25).

    python bench/soft_sweep.py --run-dir DIR --dataset ../shared/data/counterfact_val_1000.json \\
        [--n 1000] [--weights 1e3 5e3 2e4] [--alphas 0] [--null-spaces 0.03:0.1] [--bands 5] [--band-weights 1e4] \
        [--heldout-tokens 20000] [--json OUT]

DIR is a run folder of `factstore eval --mode lifelong` (its store holds the registered edits).
Each (weight, alpha) compiles the whole log in soft mode on the base model and scores every
record (ES, PS, NS on the records registered so far) and the held-out perplexity; the joint
(exact) compile and the unedited model are the first rows. --bands B (with --band-weights W)
adds MEMIT's band form: each edit's shift spread over the edit layer and the B-1 below it,
keys and remaining shift measured again after each layer (forward passes at compile time),
every layer a soft solve. --stored-band-weights W compiles a log registered with --band from
its stored per-layer vectors (the band mode, weights/band.py) with soft weight W instead of
the one it was registered with. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import run_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    parser.add_argument("--weights", type=float, nargs="+", default=[1e3, 5e3, 2e4])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0])
    parser.add_argument(
        "--null-spaces",
        nargs="*",
        default=[],
        metavar="T:L2",
        help="AlphaEdit's soft form: null space of C below T x its largest eigenvalue, ridge L2 (e.g. 0.03:0.1)",
    )
    parser.add_argument("--bands", type=int, nargs="*", default=[])
    parser.add_argument("--band-weights", type=float, nargs="+", default=[1e4])
    parser.add_argument(
        "--linear-bands",
        type=int,
        nargs="*",
        default=[],
        help="the linear band: equal shares at keys measured once on the base, no forward pass between layers",
    )
    parser.add_argument(
        "--stored-band-weights",
        type=float,
        nargs="*",
        default=[],
        help="a band-registered log compiled from its stored per-layer vectors with these soft weights",
    )
    parser.add_argument("--skip-single", action="store_true", help="only the band rows (and unedited)")
    parser.add_argument(
        "--skip-unedited", action="store_true", help="no unedited row (the run's own state.json has it)"
    )
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from factstore.rome.edit import add_delta
    from factstore.studies.lifelong import band_inputs, heldout_rows, score_variant
    from factstore.weights.band import apply_band
    from factstore.weights.replay import apply_joint, edit_vectors
    from factstore.weights.spread import SpreadSettings, apply_spread, band_deltas, band_keys
    from factstore.weights.stats import MatrixCache

    store, session, edits, records = run_folder.open_run(args)
    heldout = heldout_rows(session, store, args.heldout_tokens) if args.heldout_tokens else None
    covariance = MatrixCache(store.get_covariance)
    variants: list[tuple[str, object]] = [] if args.skip_unedited else [("unedited", lambda m: None)]
    if not args.skip_single:
        variants += [("joint (exact)", lambda m: apply_joint(m, edits, covariance))]
        variants += [
            (f"soft w={w:g} a={a:g}", lambda m, w=w, a=a: apply_joint(m, edits, covariance, soft=(w, a)))
            for w in args.weights
            for a in args.alphas
        ]
    for spec in args.null_spaces:
        t, l2 = (float(x) for x in spec.split(":"))
        variants += [
            (
                f"soft null space t={t:g} l2={l2:g}",
                lambda m, t=t, l2=l2: apply_joint(m, edits, covariance, soft_null=(t, l2)),
            )
        ]
    if args.bands:
        inputs = band_inputs(session, edits, max(args.bands))
        variants += [
            (
                f"band {b} soft w={w:g} a={a:g}",
                lambda m, b=b, w=w, a=a: apply_spread(
                    m, edits, covariance, edit_vectors, inputs, lambda _: 0.0, SpreadSettings(soft=(w, a), band=b)
                ),
            )
            for b in args.bands
            for w in args.band_weights
            for a in args.alphas
        ]
    variants += [
        (
            f"stored band w={w:g} a={a:g}",
            lambda m, w=w, a=a: apply_band(m, edits, edit_vectors, session.layer_covariance, (w, a)),
        )
        for w in args.stored_band_weights
        for a in args.alphas
    ]
    if args.linear_bands:
        inputs = band_inputs(session, edits, max(args.linear_bands))
        with session.base_weights():
            lower = band_keys(session.model, edits, inputs, max(args.linear_bands))

        def linear(model, b, w, a):  # type: ignore[no-untyped-def]
            def cov(e, layer):  # type: ignore[no-untyped-def]
                return covariance(e.covariance_id) if layer == e.layer else inputs.covariance(e, layer)

            deltas = band_deltas(model, edits, edit_vectors, lambda e: lower[e.id], cov, (w, a), b)
            for layer, delta in deltas.items():
                add_delta(model, layer, delta)

        variants += [
            (f"linear band {b} w={w:g} a={a:g}", lambda m, b=b, w=w, a=a: linear(m, b, w, a))
            for b in args.linear_bands
            for w in args.band_weights
            for a in args.alphas
        ]
    rows = []
    print(f"{len(edits)} active edits, {len(records)} records, layer(s) {sorted({e.layer for e in edits})}")
    print("| compile | ES | PS | NS | S | EM | held-out perplexity | seconds |\n|---|---|---|---|---|---|---|---|")
    for name, apply in variants:
        clock = time.perf_counter()
        scores = score_variant(session, records, apply, heldout)  # type: ignore[arg-type]
        seconds = time.perf_counter() - clock
        rows.append({"compile": name, **{k: v for k, v in scores.items() if k != "records"}, "seconds": seconds})
        cells = [f"{scores.get(k, float('nan')):.1f}" for k in ("ES", "PS", "NS", "S", "EM")]
        ppl = scores.get("perplexity")
        print(f"| {name} | {' | '.join(cells)} | {'' if ppl is None else f'{ppl:.2f}'} | {seconds:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
