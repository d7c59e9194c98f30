"""Where a band log's held-out perplexity rise sits, token by token (issue 25).

    FACTSTORE_HOME=H python bench/heldout_damage.py --run-dir DIR [--edits N] [--heldout-tokens 20000]

The log's band compile (its stored asks, its registered weight and rho) against the base model
on the run's held-out text (rows of 256 tokens of the statistics corpus that no C read): the
rise of each token's next-token NLL. Prints Markdown tables: the rise by the predicted token's
position in its row, by the kind of token (starts a capitalised word or not; follows one or
not), how concentrated it is (the share of the gross rise carried by the top 1 / 5 / 10 / 25 %
of tokens), the tokens whose mean probability rose most, and each layer's dW spectrum. A rise spread evenly says the solve's C underweighs ordinary text as a whole; a rise
at the start of rows says the attention sink; one after names says other subjects.
"""

from __future__ import annotations

import argparse
from typing import Any

import run_folder
import torch

BUCKETS = ((1, 1), (2, 3), (4, 15), (16, 63), (64, 255))  # positions of the predicted token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser, dataset=False)
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    args = parser.parse_args()

    from factstore import arch
    from factstore.analysis.perplexity import token_nll
    from factstore.studies.lifelong import weights_restored

    _, session, edits, _, rows = run_folder.open_band_run(args)
    if not rows:
        raise SystemExit("the run has no held-out text")
    with weights_restored(session.model), session.base_weights():
        base, p_base = torch.cat(token_nll(session.model, rows)), mean_probs(session.model, rows)
        deltas = log_deltas(session, edits)
        top = {n: float(torch.linalg.matrix_norm(arch.down_proj_weight(session.model, n).double(), 2)) for n in deltas}
        run_folder.applier({n: dW for n, (dW, _, _) in deltas.items()})(session.model)
        edited, p_edited = torch.cat(token_nll(session.model, rows)), mean_probs(session.model, rows)
    rise = edited - base  # (tokens,) nats
    print(
        f"{len(edits)} edits, {len(rise)} held-out tokens; perplexity {base.mean().exp():.2f} -> {edited.mean().exp():.2f}"
    )
    report(rise, base, features(session.tokenizer, rows))
    gains(session.tokenizer, edits, p_edited - p_base, p_base)
    spectra(deltas, top)


def gains(tokenizer: Any, edits: list, gain: torch.Tensor, p_base: torch.Tensor) -> None:
    """The tokens whose mean probability over held-out text rose most, and the share of all
    probability gained that went to the edits' new objects (their first tokens)."""
    objects = {int(tokenizer(" " + e.target_new)["input_ids"][0]) for e in edits}
    print("\n| token | mean probability, base -> log | an edit's new object |\n|---|---|---|")
    for t in gain.topk(15).indices.tolist():
        print(
            f"| {tokenizer.decode([t])!r} | {float(p_base[t]):.5f} -> {float(p_base[t] + gain[t]):.5f} | {t in objects} |"
        )
    up = gain.clamp(min=0)
    share = float(up[sorted(objects)].sum() / up.sum())
    print(f"\nthe edits' new objects ({len(objects)} first tokens) take {100 * share:.1f} % of the probability gained")


@torch.no_grad()
def mean_probs(model: Any, rows: list[list[int]], batch: int = 8) -> torch.Tensor:
    """(vocab,) float64: the next-token distribution averaged over every predicted position."""
    from factstore.rome.prompts import pad_right

    total, count = None, 0
    for lo in range(0, len(rows), batch):
        ids, mask = pad_right(rows[lo : lo + batch])
        probs = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float().softmax(-1)
        keep = mask[:, 1:].bool()
        part = probs[keep].double().sum(0)
        total = part if total is None else total + part
        count += int(keep.sum())
    assert total is not None
    return total / count


def log_deltas(session: Any, edits: list) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{layer: (dW (out, in), the held matrix C + rho N (in, in), the asks' keys (in, n))} of the
    band compile of EDITS at their registered settings."""
    from factstore import arch
    from factstore.weights import band
    from factstore.weights.replay import edit_vectors, soft_settings

    weight, alpha = band.settings(edits, soft_settings("band"))
    rho = band.names_weight(edits[-1])
    asks, last = band.collect(edits, edit_vectors, lambda n: (arch.down_proj_weight(session.model, n), None))
    out = {}
    top = band.tops(edits)
    for layer, rows in sorted(asks.items()):
        C = session.statistics.band_matrix(last[layer].covariance_id, layer, rho).double()
        K = torch.stack([k for k, _ in rows], dim=1).double()
        out[layer] = (band.layer_delta(rows, C, band.layer_soft((weight, alpha), layer, top)), C, K)
    return out


def spectra(deltas: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], top: dict[int, float]) -> None:
    """Per layer, how much of dW's damage on ordinary text (s_i^2 v_i^T C v_i) and of what it
    delivers to the asks' keys (|s_i v_i^T K|^2) its top singular directions carry."""
    print("\n| layer | top 1: damage / delivery | top 5 | top 20 | s1(dW) / s1(W0) |\n|---|---|---|---|---|")
    for layer, (dW, C, K) in deltas.items():
        _, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        damage = S.pow(2) * torch.einsum("ij,jk,ik->i", Vh, C, Vh)  # (r,)
        delivery = S.pow(2) * (Vh @ K).pow(2).sum(1)
        cells = [
            f"{100 * float(damage[:k].sum() / damage.sum()):.0f} % / {100 * float(delivery[:k].sum() / delivery.sum()):.0f} %"
            for k in (1, 5, 20)
        ]
        print(f"| {layer} | " + " | ".join(cells) + f" | {float(S[0]) / top[layer]:.3f} |")


def features(tokenizer: Any, rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """Per predicted token (in token_nll's order): its position, whether it starts a capitalised
    word, whether the token before it does."""
    pos, cap, after = [], [], []
    for row in rows:
        caps = [tokenizer.decode([t]).lstrip()[:1].isupper() for t in row]
        pos += list(range(1, len(row)))
        cap += caps[1:]
        after += caps[:-1]
    return {"position": torch.tensor(pos), "capital": torch.tensor(cap), "after capital": torch.tensor(after)}


def report(rise: torch.Tensor, base: torch.Tensor, feats: dict[str, torch.Tensor]) -> None:
    total = float(rise.sum())
    print("\n| predicted tokens | count | base NLL | rise (nats, mean) | share of the whole rise |")
    print("|---|---|---|---|---|")
    groups = [(f"position {lo}-{hi}", (feats["position"] >= lo) & (feats["position"] <= hi)) for lo, hi in BUCKETS]
    groups += [("starts a capitalised word", feats["capital"]), ("other tokens", ~feats["capital"])]
    groups += [("after a capitalised word's token", feats["after capital"])]
    for name, mask in groups:
        n = int(mask.sum())
        if n:
            print(
                f"| {name} | {n} | {float(base[mask].mean()):.3f} | {float(rise[mask].mean()):+.4f} "
                f"| {100 * float(rise[mask].sum()) / total:.1f} % |"
            )
    ranked = rise.sort(descending=True).values
    gross = float(rise.clamp(min=0).sum())  # every token's NLL that rose, before the falls offset it
    print(
        f"\nNLL rose on {100 * float((rise > 0).double().mean()):.1f} % of tokens (gross rise {gross:.1f} nats, net {total:.1f})"
    )
    print("\n| top share of tokens | share of the gross rise |\n|---|---|")
    for share in (0.01, 0.05, 0.1, 0.25):
        k = max(1, int(share * len(ranked)))
        print(f"| {100 * share:g} % | {100 * float(ranked[:k].clamp(min=0).sum()) / gross:.1f} % |")


if __name__ == "__main__":
    main()
