"""A band log's updates reshaped after the solve (issue 25, leads from PRUNE and RECT).

    FACTSTORE_HOME=H python bench/update_shape.py --run-dir DIR \\
        --dataset ../shared/data/counterfact_val_1000.json --n 1000 --svd 1:0.5 5:0.5 --rect 0.2 0.5

The log is compiled as registered (its stored asks, weight and rho); then each band layer's
update dW is changed before it is written, and the result scored on the log's records with
held-out perplexity:
  --svd K:F   its top K singular directions scaled by F (PRUNE restrains the large singular
              values of a sequence's accumulated update, arXiv 2405.16821);
  --rect P    only the share P of its entries with the largest change relative to the base
              weight kept, the rest zero (RECT, arXiv 2401.04700).
Prints a Markdown table, the as-registered compile first.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import run_folder
import torch

Shape = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (dW, W0) -> new dW, both (out, in)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    parser.add_argument("--svd", nargs="*", default=[], help="K:F, the top K singular directions scaled by F")
    parser.add_argument("--rect", type=float, nargs="*", default=[], help="share P of entries kept")
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    args = parser.parse_args()

    from heldout_damage import log_deltas

    from factstore import arch
    from factstore.studies.lifelong import score_variant

    _, session, edits, records, heldout = run_folder.open_band_run(args)
    with session.base_weights():
        deltas = {n: d for n, (d, _, _) in log_deltas(session, edits).items()}
        base = {n: arch.down_proj_weight(session.model, n).double().cpu() for n in deltas}
    shapes: list[tuple[str, Shape]] = [("as registered", lambda d, w: d)]
    for spec in args.svd:
        k, f = spec.split(":")
        shapes.append((f"top {k} singular directions x{f}", svd_scaled(int(k), float(f))))
    shapes += [(f"RECT, top {100 * p:g} % of entries", rect(p)) for p in args.rect]
    print(f"{len(edits)} edits, {len(records)} records")
    print("| update | ES | PS | NS | perplexity | norm of dW (share) | seconds |\n|---|---|---|---|---|---|---|")
    for name, shape in shapes:
        clock = time.perf_counter()
        shaped = {n: shape(d, base[n]) for n, d in deltas.items()}
        kept = sum(float(s.norm()) for s in shaped.values()) / sum(float(d.norm()) for d in deltas.values())
        s = score_variant(session, records, run_folder.applier(shaped), heldout)
        print(
            f"| {name} | {s['ES']:.1f} | {s['PS']:.1f} | {s['NS']:.1f} | {s['perplexity']:.2f} | {kept:.3f} "
            f"| {time.perf_counter() - clock:.0f} |",
            flush=True,
        )


def svd_scaled(k: int, factor: float) -> Shape:
    def shape(dW: torch.Tensor, W0: torch.Tensor) -> torch.Tensor:
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        S = S.clone()
        S[:k] *= factor
        return (U * S) @ Vh

    return shape


def rect(share: float) -> Shape:
    def shape(dW: torch.Tensor, W0: torch.Tensor) -> torch.Tensor:
        relative = (dW / W0.abs().clamp(min=1e-8)).abs().flatten()
        keep = relative >= relative.kthvalue(max(1, int((1 - share) * relative.numel()))).values
        return dW * keep.view_as(dW)

    return shape


if __name__ == "__main__":
    main()
