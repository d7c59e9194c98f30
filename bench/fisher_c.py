"""A band log solved against key statistics weighted by how much each token's loss feels the layer (issue 25, a lead).

    FACTSTORE_HOME=H python bench/fisher_c.py --run-dir DIR --dataset ../shared/data/counterfact_val_1000.json \\
        --n 400 --edits 400 [--tokens 50000] [--scales 1 1.5]

Each band layer's solve holds its update dW to C = E[k k^T] over ordinary text: every token's
key counts alike. What the held-out perplexity feels is dW k_x weighed by how much the loss at
and after token x depends on the layer's output there. Second order with a shared output metric
(K-FAC's factorisation) that is E[f_x k_x k_x^T] / E[f_x], f_x = |dL/do_x|^2 the squared gradient
of the corpus's next-token loss with respect to the layer's down-projection output o_x at x.
This measures that weighted moment F (and C of the same tokens) on the first --tokens tokens of
C's corpus, one forward and backward per batch, and compiles the log's stored asks holding each
layer to C + rho N as registered, to C_T + rho N (the control, C of the same tokens), and to
F + rho N, at the registered weight times each of --scales. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import run_folder
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--scales", type=float, nargs="*", default=[1.0, 1.5])
    args = parser.parse_args()

    from factstore.studies.lifelong import score_variant

    log = run_folder.BandLog(args)
    C_T, F = weighted_moments(
        log.session, log.layers, args.tokens, Path(args.run_dir) / f"fisher-moments-{args.tokens}.pt"
    )
    for n in log.layers:
        print(f"  layer {n}: tr F / tr C_T = {float(F[n].trace() / C_T[n].trace()):.3f}")
    variants = [("C + rho N, as registered", None, [1.0])]
    variants += [("C of the same tokens + rho N", {n: C_T[n] + log.names(n) for n in log.layers}, args.scales)]
    variants += [("F + rho N", {n: F[n] + log.names(n) for n in log.layers}, args.scales)]
    print(f"{len(log.edits)} edits, {len(log.records)} records, weight {log.weight:g}, rho {log.rho:g}")
    print("\n| held matrix | w | ES | PS | NS | perplexity | seconds |\n|---|---|---|---|---|---|---|", flush=True)
    for name, matrix, scales in variants:
        for scale in scales:
            clock = time.perf_counter()
            w = log.weight * scale
            s = score_variant(log.session, log.records, run_folder.applier(log.deltas(matrix, w)), log.heldout)
            print(
                f"| {name} | {w:g} | {s['ES']:.1f} | {s['PS']:.1f} | {s['NS']:.1f} | "
                f"{s.get('perplexity', float('nan')):.2f} | {time.perf_counter() - clock:.0f} |",
                flush=True,
            )


def weighted_moments(
    session: Any, layers: list[int], tokens: int, path: Path
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """({layer: C_T}, {layer: F}) (m, m) float64 over the first TOKENS tokens of C's corpus:
    E[k k^T], and E[f k k^T] / E[f] with f = |dL/do|^2 at each token; cached at PATH."""
    if path.exists():
        return torch.load(path)
    from factstore import arch
    from factstore.rome.covariance import text_width
    from factstore.rome.prompts import pad_right
    from factstore.weights.corpus import load_corpus, rows

    corpus, model = load_corpus(), session.model
    width = text_width(model)
    sums = {n: torch.zeros(0) for n in layers}
    fsums = {n: torch.zeros(0) for n in layers}
    fmass = dict.fromkeys(layers, 0.0)
    seen, i, clock = 0, 0, time.perf_counter()
    with session.base_weights():
        for p in model.parameters():
            p.requires_grad_(False)
        while seen < tokens and i < len(corpus.texts):
            ids, mask = pad_right(rows(session.tokenizer, corpus.texts[i : i + 8], width))
            i += 8
            keys: dict[int, torch.Tensor] = {}
            outs: dict[int, torch.Tensor] = {}
            handles = [arch.down_proj(model, n).register_forward_hook(_keep(n, keys, outs)) for n in layers]
            try:
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none"
                )
                (nll * mask[:, 1:].flatten()).sum().backward()
            finally:
                for h in handles:
                    h.remove()
            keep = mask.bool()
            for n in layers:
                k = keys[n][keep].double()  # (t, m)
                grad = outs[n].grad
                assert grad is not None
                f = grad[keep].double().pow(2).sum(1)  # (t,)
                part, fpart = k.T @ k, (k * f[:, None]).T @ k
                sums[n] = part if sums[n].numel() == 0 else sums[n] + part
                fsums[n] = fpart if fsums[n].numel() == 0 else fsums[n] + fpart
                fmass[n] += float(f.sum())
            seen += int(keep.sum())
            print(f"  moments: {seen} tokens, {time.perf_counter() - clock:.0f} s", flush=True)
    result = ({n: sums[n] / seen for n in layers}, {n: fsums[n] / fmass[n] for n in layers})
    torch.save(result, path)
    return result


def _keep(layer: int, keys: dict[int, torch.Tensor], outs: dict[int, torch.Tensor]) -> Any:
    """A forward hook: the down-projection's input, and its output as a leaf whose gradient is kept."""

    def hook(module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        keys[layer] = inputs[0].detach()
        leaf = output.detach().requires_grad_(True)
        outs[layer] = leaf
        return leaf

    return hook


if __name__ == "__main__":
    main()
