"""How large a band_names_weight rho holds subjects' keys as much as held CounterFact subjects do (issue 25).

    FACTSTORE_HOME=H python bench/names_weight_proxy.py --dataset ../shared/data/counterfact_val_1000.json \\
        --control ../shared/data/counterfact_500.json --layers 0 4 8 --rhos 0 0.03 0.1 0.3 1

No edit is made: linear algebra on keys of the base model. Per band layer, a soft solve
dW = R K^T (A + K K^T)^-1 over the keys K of the --n edits' subjects moves another key k by
R s(k), s(k) = K^T (A + K K^T)^-1 k: |s| for the keys of subjects no edit names (the first
--control-n records of --control) is what spills onto them, |s| of an edit's own key is how
much of its ask it gets, and E|s|^2 over ordinary text (trace with C) is what moves the
model's text. Rows: A = w C (as registered), s w C (a larger w: the line every other knob
moved on), A = w C + beta K_n K_n^T (the keys of
--neighbour-n other CounterFact subjects, bench/neighbour_keys.py), and A = w (C + rho N) with
N the names moment of the layer's C file (rome/names.py): the rho whose spill and text rows
match the held neighbours' is where a registered run should start. Prints a Markdown table.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alias", default="smollm2")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--control", required=True)
    parser.add_argument("--control-n", type=int, default=200)
    parser.add_argument("--neighbour-n", type=int, default=300)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    parser.add_argument(
        "--scales", type=float, nargs="*", default=[1.3], help="rows s w C: the line a larger w moves on"
    )
    args = parser.parse_args()

    import torch

    from factstore import api
    from factstore.datasets import read_records
    from factstore.editing.session import EditSession
    from factstore.rome.keys import subject_keys

    session = EditSession(api.open_store(), args.alias, device="cpu")
    hp = session.settings.defaults
    edited = read_records(args.dataset, args.n)
    named = {r.request.subject for r in edited}
    others = [
        r for r in read_records(args.control, args.control_n + args.neighbour_n) if r.request.subject not in named
    ]
    control, neighbours = others[: args.control_n], others[args.control_n :]
    covs = {c.layer: c for c in session.covariances(args.layers, hp)}

    def keys(records: list) -> dict[int, torch.Tensor]:
        sets = [[(r.request.prompt, r.request.subject)] for r in records]
        with session.base_weights():
            return {n: k.double() for n, k in subject_keys(session.model, session.tokenizer, sets, args.layers).items()}

    K_e, K_c, K_n = keys(edited), keys(control), keys(neighbours)
    w = hp.band_weight
    print(f"{len(edited)} edit keys, {len(control)} control, {len(neighbours)} neighbours; band weight {w:g}")
    print("| layer | A | own share | control spill | text spill |")
    print("|---|---|---|---|---|")
    for layer in args.layers:
        C = session.matrix(covs[layer].id).double()
        N = session.matrix.names(covs[layer].id).double()
        K = K_e[layer].T  # (d_ff, n)
        rows = [("w C", w * C), (f"w C + {args.beta:g} K_n K_n^T", w * C + args.beta * K_n[layer].T @ K_n[layer])]
        rows += [(f"{s:g} w C", s * w * C) for s in args.scales]
        rows += [(f"w (C + {rho:g} N)", w * (C + rho * N)) for rho in args.rhos if rho > 0]
        for name, A in rows:
            inv = torch.linalg.solve(A + K @ K.T, torch.eye(K.shape[0], dtype=K.dtype))  # (d_ff, d_ff)
            S = K.T @ inv  # (n, d_ff): s(k) = S k
            own = (S @ K).diagonal().mean()
            spill = (S @ K_c[layer].T).norm(dim=0).mean()
            text = ((S @ C) * S).sum().div(K.shape[1]).sqrt()  # sqrt(E_text |s|^2 / n)
            print(f"| {layer} | {name} | {own:.3f} | {spill:.4f} | {text:.5f} |", flush=True)


if __name__ == "__main__":
    main()
