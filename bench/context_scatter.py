"""A band log's solve told how each edit's key varies over its contexts (issue 25, a lead).

    FACTSTORE_HOME=H python bench/context_scatter.py --run-dir DIR --dataset ../shared/data/counterfact_val_1000.json \\
        --n 400 --edits 400 --betas 0 1 3 10

A band edit's key at each layer is the mean k of its subject's keys over its key prompts (its
prompt in every context template, the bare prompt weighted up: weights/band.key_prompts), and
each layer's solve maps that mean to the edit's target r. Least squares over the prompts
themselves, sum_c a_c |dW k_c - r|^2 / sum_c a_c, is the same fit plus tr(dW S dW^T), S the
edit's scatter of keys about their mean: the update is also asked to answer the same in every
context (what paraphrase prompts test) and to stay small where a subject's contexts vary (as
ordinary text does). This compiles the stored asks with beta times the edits' summed scatter
added to each layer's held matrix, A = w (C + rho N) + beta sum_i S_i + K K^T (beta 0: as
registered). The scatters are measured on the base model (the head's lower layers moved the
stored keys a little; a registered run would measure them on the head). Prints a Markdown
table of the log's records with held-out perplexity.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import run_folder
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    parser.add_argument("--betas", type=float, nargs="*", default=[0.0, 1.0, 3.0, 10.0])
    args = parser.parse_args()

    from factstore.studies.lifelong import score_variant

    log = run_folder.BandLog(args)
    session, edits, records, heldout, layers = log.session, log.edits, log.records, log.heldout, log.layers
    weight = log.weight
    with session.base_weights():
        clock = time.perf_counter()
        S = scatters(session, edits, layers)
    print(
        f"{len(edits)} edits, {len(records)} records; scatters of layers {layers} in {time.perf_counter() - clock:.0f} s"
    )
    held = {n: log.held(n) for n in layers}
    for n in layers:
        print(f"  layer {n}: tr(sum S_i) / tr(w (C + rho N)) = {float(S[n].trace() / (weight * held[n].trace())):.3g}")
    print("\n| beta | ES | PS | NS | perplexity | seconds |\n|---|---|---|---|---|---|", flush=True)
    for beta in args.betas:
        clock = time.perf_counter()
        # the soft solve holds w * M: beta S enters as (beta / w) S inside M
        deltas = log.deltas({n: held[n] + (beta / weight) * S[n] for n in layers})
        s = score_variant(session, records, run_folder.applier(deltas), heldout)
        print(
            f"| {beta:g} | {s['ES']:.1f} | {s['PS']:.1f} | {s['NS']:.1f} | {s.get('perplexity', float('nan')):.2f} "
            f"| {time.perf_counter() - clock:.0f} |",
            flush=True,
        )


@torch.no_grad()
def scatters(session: object, edits: list, layers: list[int]) -> dict[int, torch.Tensor]:
    """{layer: sum over EDITS of the weighted scatter of its key prompts' keys (m, m) float64},
    each prompt's key read alone at its subject's last token on the current model."""
    from factstore.rome.hparams import ROMEHyperParams
    from factstore.rome.keys import subject_keys
    from factstore.weights import band

    total = {n: torch.zeros(0) for n in layers}
    for lo in range(0, len(edits), 32):
        sets, groups = [], []  # one prompt per set; per edit, its sets' rows and their weights
        for edit in edits[lo : lo + 32]:
            templates = session.templates(ROMEHyperParams.from_json(edit.hparams)).key  # type: ignore[attr-defined]
            counts = Counter(band.key_prompts(edit.request(), templates, band.plain_weight(edit)))
            groups.append((list(range(len(sets), len(sets) + len(counts))), torch.tensor(list(counts.values()))))
            sets += [[pair] for pair in counts]
        keys = subject_keys(session.model, session.tokenizer, sets, layers)  # type: ignore[attr-defined]
        for n in layers:
            k = keys[n].double()  # (prompts, m)
            for rows, times in groups:
                a = times.double()[:, None] / times.sum()  # (prompts of the edit, 1), summing to 1
                kc = k[rows] - (a * k[rows]).sum(0)
                part = (a * kc).T @ kc
                total[n] = part if total[n].numel() == 0 else total[n] + part
    return total


if __name__ == "__main__":
    main()
