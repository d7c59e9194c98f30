"""Never-edited subjects' keys held in each band layer's solve, and the names moment (issue 25).

    FACTSTORE_HOME=H python bench/neighbour_keys.py --run-dir DIR \\
        --dataset ../shared/data/counterfact_val_1000.json --n 1000 \\
        --control ../shared/data/counterfact_500.json --control-n 200 --neighbour-n 300 --betas 0 1 10 \
        [--rhos 0 0.1 0.3]

A band log's soft solve holds each layer's update to w C (C: keys of ordinary text). Under a long
log, facts no edit names move too (the control of bench/retraction_control.py rises with the
log): their subjects' keys are not ordinary text. Here each layer's solve also holds the keys
of --neighbour-n subjects no edit names (records of --control after the first --control-n, their
own prompt, measured on the base model) with weight BETA each, as if each were an edit asking
for no change: A = w C + BETA K_n K_n^T. Scored on the log's records (with held-out perplexity)
and on the first --control-n records of --control whose subjects neither an edit nor a neighbour
names. --weights: other band weights w; --rhos: each beta also with A = w (C + RHO N) + BETA K_n K_n^T, N the names moment of
C's file (band_names_weight, rome/names.py); without --rhos, the log's own rho. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import run_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    run_folder.add_control_arguments(parser, "the control records (the first --control-n), then the neighbours")
    parser.add_argument("--neighbour-n", type=int, default=300)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 1.0, 10.0])
    parser.add_argument(
        "--corpus-names",
        type=int,
        default=0,
        help="N > 0: the neighbours are the first N distinct names of the statistics corpus (rome/names.py), "
        "each alone at the start of a sequence, instead of CounterFact subjects",
    )
    parser.add_argument("--weights", type=float, nargs="+", default=None, help="band weights w (default: the log's)")
    parser.add_argument(
        "--rhos", type=float, nargs="+", default=None, help="band_names_weight values (default: the log's)"
    )
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    args = parser.parse_args()

    from factstore import arch
    from factstore.rome.keys import subject_keys
    from factstore.studies.lifelong import score_variant
    from factstore.weights import band
    from factstore.weights.replay import edit_vectors, soft_settings

    store, session, edits, records, heldout = run_folder.open_band_run(args)
    logged_weight, alpha = band.settings(edits, soft_settings("band"))
    others = run_folder.unnamed_records(store, session, args.control, args.control_n + args.neighbour_n)
    control, neighbours = others[: args.control_n], others[args.control_n :]
    neighbour_subjects = {n.request.subject for n in neighbours}
    control = [r for r in control if r.request.subject not in neighbour_subjects]
    asks, last = band.collect(edits, edit_vectors, lambda n: (arch.down_proj_weight(session.model, n), None))
    layers = sorted(asks)
    keys = {}
    sets = [[(r.request.prompt, r.request.subject)] for r in neighbours]
    if args.corpus_names:
        sets = [
            [("{}", name)]
            for name in corpus_names(session, args.corpus_names, {r.request.subject for r in records + control})
        ]
    if sets and any(args.betas):
        with session.base_weights():
            keys = {n: k.double() for n, k in subject_keys(session.model, session.tokenizer, sets, layers).items()}
    print(f"{len(edits)} edits, {len(records)} records, {len(control)} control, {len(sets)} neighbour keys")
    print("| w | rho | beta | log ES | log PS | log NS | perplexity | control ES | control PS | control NS | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    logged, top = band.names_weight(edits[-1]), band.tops(edits)

    def solve(weight: float, rho: float, beta: float) -> dict[int, Any]:
        """{layer: dW (out, in)} of each band layer's solve with the names moment at RHO and the neighbours' keys at BETA."""
        deltas = {}
        for layer, rows in sorted(asks.items()):
            C = session.statistics.band_matrix(last[layer].covariance_id, layer, rho).double()
            held = (
                C + (beta / weight) * keys[layer].T @ keys[layer] if beta else C
            )  # w C' = w (C + rho N) + beta K_n K_n^T
            deltas[layer] = band.layer_delta(rows, held, band.layer_soft((weight, alpha), layer, top))
        return deltas

    grid = [(w, r, b) for w in (args.weights or [logged_weight]) for r in (args.rhos or [logged]) for b in args.betas]
    for weight, rho, beta in grid:
        clock = time.perf_counter()
        deltas = solve(weight, rho, beta)  # once for both groups of records
        log = score_variant(session, records, run_folder.applier(deltas), heldout)
        ctl = score_variant(session, control, run_folder.applier(deltas), None)
        cells = [log["ES"], log["PS"], log["NS"], log["perplexity"], ctl["ES"], ctl["PS"], ctl["NS"]]
        print(
            f"| {weight:g} | {rho:g} | {beta:g} | "
            + " | ".join(f"{c:.2f}" if i == 3 else f"{c:.1f}" for i, c in enumerate(cells)),
            f"| {time.perf_counter() - clock:.0f} |",
            flush=True,
        )


def corpus_names(session: Any, n: int, taken: set[str]) -> list[str]:
    """The first N distinct names of the session's statistics corpus that are not in TAKEN."""
    from factstore.rome.names import name_spans

    found: dict[str, None] = {}
    for text in session.stats_corpus().texts:
        for start, end in name_spans(text):
            if text[start:end] not in taken:
                found.setdefault(text[start:end])
            if len(found) == n:
                return list(found)
    return list(found)


if __name__ == "__main__":
    main()
