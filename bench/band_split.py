"""How unevenly a band's layers could share an edit's shift (issue 25): s = k^T (C + rho N)^-1 k per layer.

    FACTSTORE_HOME=H python bench/band_split.py [--n 40] [--layers 0-8] [--weight 3000] [--rho 0.3]

One layer's soft solve dW = r k^T (w H + k k^T)^-1 (H = C + rho N) delivers s / (w + s) of its ask r
at the key k and costs ordinary text (keys of second moment C) |delivered|^2 s_C / s^2, s_C =
k^T H^-1 C H^-1 k <= s (Sherman-Morrison): about |delivered|^2 / s, whatever w. Shares of one shift
proportional to each layer's s minimise the sum; MEMIT's equal shares cost (sum 1/s)(sum s) / B^2
times that. Prints per layer the median s, s_C / s and the share delivered, and that ratio's
median and mean over the first --n records' subjects (bare-prompt keys) of counterfact_val_1000.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_val_1000.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--layers", default="0-8")
    parser.add_argument("--weight", type=float, default=3000.0)
    parser.add_argument("--rho", type=float, default=0.3)
    parser.add_argument("--dataset", default=str(DATA))
    args = parser.parse_args()
    first, _, last = args.layers.partition("-")
    layers = list(range(int(first), int(last or first) + 1))

    from factstore import api, datasets
    from factstore.editing.session import EditSession
    from factstore.rome.keys import compute_keys

    session = EditSession(api.open_store(), args.model)
    requests = [r.request for r in datasets.read_records(args.dataset, args.n)]
    hp = session.hparams(layers[-1])
    print("| layer | s (median) | s_C / s (median) | share delivered (median) |\n|---|---|---|---|")
    per_layer = []
    for layer in layers:
        cov = session.covariance(layer, hp)
        C = session.matrix(cov.id).double()
        H = session.statistics.band_matrix(cov.id, layer, args.rho).double()
        K = compute_keys(session.model, session.tokenizer, requests, layer, ["{}"]).double()  # (n, d_ff)
        Hk = torch.linalg.solve(H, K.T)  # (d_ff, n)
        s = (K.T * Hk).sum(0)  # (n,)
        s_C = (Hk * (C @ Hk)).sum(0)
        per_layer.append(s)
        print(
            f"| {layer} | {float(s.median()):,.0f} | {float((s_C / s).median()):.2f} | "
            f"{float((s / (args.weight + s)).median()):.2f} |",
            flush=True,
        )
    S = torch.stack(per_layer)  # (B, n)
    ratio = (1 / S).sum(0) * S.sum(0) / len(layers) ** 2
    print(f"\nequal shares against shares proportional to s: median {ratio.median():.2f}, mean {ratio.mean():.2f}")


if __name__ == "__main__":
    main()
