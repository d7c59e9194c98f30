"""A band log solved over all its layers at once: the damage the layers do together (issue 25, a lead).

    FACTSTORE_HOME=H python bench/joint_band.py --run-dir DIR --dataset ../shared/data/counterfact_val_1000.json \\
        --n 300 [--edits 300] [--joint-tokens 50000] [--variants registered per-layer split free free-diagonal]

Every MLP of the band writes into the same residual stream, and every layer's share of an edit
points the same way (MEMIT splits one shift R over the band), so on a token of ordinary text
the layers' spill-overs p_l(x) = dW_l k_l(x) add up coherently: the damage is E|sum_l p_l|^2,
while each layer's solve weighs only its own E|p_l|^2 (the diagonal blocks). First the script
measures that ratio on the held-out text for the compile as registered. Then it solves the
band as one matrix D = [dW_0 .. dW_L] over stacked keys kappa = [k_0; ..; k_L], with the joint
second moment CC = E[kappa kappa^T] of the corpus's first --joint-tokens tokens (+ rho N on the
diagonal blocks, as registered), weight w as registered:
  registered     the product's compile (stored C of each layer);
  per-layer      the same per-layer solves with CC's diagonal blocks (the control for CC's size);
  split          each layer's asks kept, the damage joint: D (blockdiag(K_l K_l^T) + w CC) = [R_l K_l^T];
  free           the split left to the solve, the damage joint: D (K K^T + w CC) = R K^T, R = sum_l R_l;
  free-diagonal  the split left to the solve, the damage per layer (blockdiag CC).
Each scored on the log's records with held-out perplexity. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import run_folder
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    parser.add_argument("--joint-tokens", type=int, default=50_000)
    parser.add_argument("--moment", default=None, help="a file caching the joint moment (default: in the run folder)")
    parser.add_argument("--variants", nargs="*", default=["registered", "per-layer", "split", "free", "free-diagonal"])
    parser.add_argument("--weight-scale", type=float, nargs="*", default=[1.0], help="w times these for joint rows")
    args = parser.parse_args()

    from factstore.studies.lifelong import score_variant

    log = run_folder.BandLog(args)
    session, edits, records, heldout, layers = log.session, log.edits, log.records, log.heldout, log.layers
    asks, weight, alpha, rho = log.asks, log.weight, log.alpha, log.rho
    names = {n: log.names(n) for n in layers}
    K = {n: torch.stack([k for k, _ in asks[n]], 1).double() for n in layers}  # (m, e)
    R = {n: torch.stack([r for _, r in asks[n]], 1).double() for n in layers}  # (d, e)
    print(f"{len(edits)} edits, {len(records)} records, layers {layers}, weight {weight:g}, rho {rho:g}", flush=True)

    registered = log.deltas()
    if heldout:
        coherence(session, registered, heldout)
    path = Path(args.moment or Path(args.run_dir) / f"joint-moment-{args.joint_tokens}.pt")
    CC = joint_moment(session, layers, args.joint_tokens, path)  # (L m, L m)
    m = K[layers[0]].shape[0]
    blocks = [slice(i * m, (i + 1) * m) for i in range(len(layers))]
    for i, n in enumerate(layers):  # rho N on the diagonal blocks, as each layer's solve holds it
        CC[blocks[i], blocks[i]] += names[n]
    print(f"joint moment of {args.joint_tokens} tokens: {CC.shape[0]} wide", flush=True)

    print("\n| compile | w | ES | PS | NS | perplexity | seconds |\n|---|---|---|---|---|---|---|", flush=True)
    joint = Band(layers, blocks, K, R, CC, alpha, registered)
    for variant in args.variants:
        for scale in [1.0] if variant == "registered" else args.weight_scale:
            clock = time.perf_counter()
            deltas = solve(variant, joint, weight * scale)
            s = score_variant(session, records, run_folder.applier(deltas), heldout)
            print(
                f"| {variant} | {weight * scale:g} | {s['ES']:.1f} | {s['PS']:.1f} | {s['NS']:.1f} | "
                f"{s.get('perplexity', float('nan')):.2f} | {time.perf_counter() - clock:.0f} |",
                flush=True,
            )


@dataclass
class Band:
    layers: list[int]
    blocks: list[slice]  # each layer's columns of D and rows of CC
    K: dict[int, torch.Tensor]  # layer -> the asks' keys (m, e)
    R: dict[int, torch.Tensor]  # layer -> the asks' targets (d, e)
    CC: torch.Tensor  # (L m, L m) the joint moment, rho N on the diagonal blocks
    alpha: float
    registered: dict[int, torch.Tensor]  # layer -> dW (d, m) of the product's compile


def solve(variant: str, band: Band, w: float) -> dict[int, torch.Tensor]:
    """{layer: dW (d, m)} of VARIANT (the module's docstring) at weight W."""
    from factstore.rome.update import soft_residual_delta

    layers, blocks, K, R, CC, alpha, registered = (
        band.layers,
        band.blocks,
        band.K,
        band.R,
        band.CC,
        band.alpha,
        band.registered,
    )

    if variant == "registered":
        return registered
    if variant == "per-layer":
        return {n: soft_residual_delta(R[n], K[n], CC[b, b], w, alpha) for n, b in zip(layers, blocks)}
    A = w * CC
    if variant == "free-diagonal":
        A = torch.block_diag(*[A[b, b] for b in blocks])
    if variant == "split":
        for n, b in zip(layers, blocks):
            A[b, b] += K[n] @ K[n].T
        rhs = torch.cat([K[n] @ R[n].T for n in layers], 0)  # (L m, d)
    elif variant in ("free", "free-diagonal"):
        Ks = torch.cat([K[n] for n in layers], 0)  # (L m, e): every edit reaches every layer
        A += Ks @ Ks.T
        rhs = Ks @ sum(R[n] for n in layers).T
    else:
        raise SystemExit(f"unknown variant {variant}")
    D = torch.linalg.solve(A, rhs).T  # (d, L m); A symmetric
    return {n: D[:, b].contiguous() for n, b in zip(layers, blocks)}


@torch.no_grad()
def coherence(session: Any, deltas: dict[int, torch.Tensor], rows: list[list[int]]) -> None:
    """E|sum_l p_l|^2 against sum_l E|p_l|^2 on the held-out rows, p_l = dW_l k_l(x) on the base model."""
    from factstore.rome.hooks import layers_inputs
    from factstore.rome.prompts import pad_right

    layers = sorted(deltas)
    total, apart, per = 0.0, 0.0, dict.fromkeys(layers, 0.0)
    with session.base_weights():
        for lo in range(0, len(rows), 8):
            ids, mask = pad_right(rows[lo : lo + 8])
            found = layers_inputs(session.model, layers, ids, mask)
            keep = mask.bool()
            p = [found[n][keep].double() @ deltas[n].T for n in layers]  # (t, d) each
            total += float(sum(p).pow(2).sum())
            for n, q in zip(layers, p):
                per[n] += float(q.pow(2).sum())
            apart += sum(float(q.pow(2).sum()) for q in p)
    print(
        f"spill-over on held-out text: E|sum p_l|^2 / sum E|p_l|^2 = {total / apart:.2f} (1: incoherent, {len(layers)}: aligned)"
    )
    print(
        "per layer share of sum E|p_l|^2: " + ", ".join(f"{n}: {100 * per[n] / apart:.0f} %" for n in layers),
        flush=True,
    )


@torch.no_grad()
def joint_moment(session: Any, layers: list[int], tokens: int, path: Path) -> torch.Tensor:
    """E[kappa kappa^T] (L m, L m) float64 over the first TOKENS tokens of the statistics corpus
    (the front, which C read), kappa the stacked down-projection inputs of LAYERS; cached at PATH."""
    if path.exists():
        return torch.load(path)
    from factstore.rome.covariance import text_width
    from factstore.rome.hooks import layers_inputs
    from factstore.rome.prompts import pad_right
    from factstore.weights.corpus import load_corpus, rows

    corpus = load_corpus()
    width = text_width(session.model)
    total, seen, i, clock = None, 0, 0, time.perf_counter()
    with session.base_weights():
        while seen < tokens and i < len(corpus.texts):
            batch = rows(session.tokenizer, corpus.texts[i : i + 8], width)
            i += 8
            ids, mask = pad_right(batch)
            found = layers_inputs(session.model, layers, ids, mask)
            keep = mask.bool()
            X = torch.cat([found[n][keep] for n in layers], 1).float()[: tokens - seen]  # (t, L m)
            part = (X.T @ X).double()
            total = part if total is None else total + part
            seen += X.shape[0]
            print(f"  joint moment: {seen} tokens, {time.perf_counter() - clock:.0f} s", flush=True)
    assert total is not None
    moment = total / seen
    torch.save(moment, path)
    return moment


if __name__ == "__main__":
    main()
