"""Do a band-registered log's edits fail when they are registered, or later (issue 25)?

    python bench/band_hold.py --run-dir DIR [--alias smollm2] [--edits K]

DIR is the run folder of a lifelong run registered with --band. Its edits are replayed batch by
batch (a batch: the edits stored together, `metrics.batch` of them): after each batch the band
compile of the log so far is written on the base model (what the head was when the batch was
registered) and the batch's own edits are checked on their prompts (efficacy: the new target
more likely than the old); at the end, every edit is checked on the whole log's compile. The
table splits the log into held when registered / still held at the end, with the mean margin
(log-probability of the new target minus the old) and the share of each edit's shift at its
layer (v* - W k* - b on the head before its batch) that its batch's compile delivered there,
<H after - H before, shift> / |shift|^2 at the subject's last token. Prints Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def batches(edits: list) -> list[list]:  # type: ignore[type-arg]
    """EDITS (in seq order) cut into the batches they were stored in."""
    out, i = [], 0
    while i < len(edits):
        size = max(1, int(edits[i].metrics.get("batch", 1)))
        out.append(edits[i : i + size])
        i += size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--alias", default="smollm2")
    parser.add_argument("--edits", type=int, default=None, help="only the first K active edits")
    args = parser.parse_args()

    import torch

    from factstore import arch
    from factstore.editing.session import EditSession
    from factstore.release import claims
    from factstore.rome.hparams import ROMEHyperParams
    from factstore.rome.keys import subject_states
    from factstore.rome.prompts import target_ids
    from factstore.rome.scoring import target_logprobs
    from factstore.storage.store import Store
    from factstore.weights import band
    from factstore.weights.replay import edit_vectors

    store = Store(f"sqlite:///{Path(args.run_dir) / 'lifelong.db'}")
    session = EditSession(store, args.alias, device="cpu")
    edits = sorted(store.list_edits(session.base.id, "active"), key=lambda e: e.seq)[: args.edits]
    soft = band.settings(edits, (0.0, 0.0))
    model, tok = session.model, session.tokenizer

    def new_logprobs(chosen: list) -> torch.Tensor:  # type: ignore[type-arg]
        """(n,) log P(new) on each edit's own prompt."""
        return target_logprobs(model, tok, [e.prompt.format(e.subject) for e in chosen], [e.target_new for e in chosen])

    def margins(chosen: list) -> torch.Tensor:  # type: ignore[type-arg]
        """(n,) log P(new) - log P(old) on each edit's own prompt."""
        texts = [e.prompt.format(e.subject) for e in chosen]
        old = target_logprobs(model, tok, texts, [e.target_true or "" for e in chosen])
        return new_logprobs(chosen) - old

    def compile_prefix(prefix: list) -> None:  # type: ignore[type-arg]
        band.apply_band(model, prefix, edit_vectors, session.layer_covariance, soft)

    def prompt_sets(chosen: list) -> list[list[tuple[str, str]]]:  # type: ignore[type-arg]
        out = []
        for e in chosen:
            keys = session.templates(ROMEHyperParams.from_json(e.hparams)).key
            out.append(band.key_prompts(e.request(), keys, band.plain_weight(e)))
        return out

    def shifts(chosen: list) -> torch.Tensor:  # type: ignore[type-arg]
        """(n, d) v* - W k* - b on the model as it is."""
        layer = chosen[0].layer
        W, b = arch.down_proj_weight(model, layer).double(), arch.down_proj_bias(model, layer)
        K = torch.stack([edit_vectors(e)[0] for e in chosen]).double()
        V = torch.stack([edit_vectors(e)[1] for e in chosen]).double()
        return V - K @ W.T - (0.0 if b is None else b.double())

    at_registration: list[float] = []
    delivered: list[float] = []
    rises: list[float] = []  # log P(new) after the edit's batch minus before it, on its prompt
    ranks: list[tuple[int, float]] = []  # the import check's (rank of the new object's rise, largest rise)

    def templates(e) -> list[str]:  # type: ignore[no-untyped-def]
        return session.templates(ROMEHyperParams.from_json(e.hparams)).key

    with torch.no_grad(), session.base_weights():
        from factstore.rome.edit import Snapshot

        layers = sorted({a.layer for e in edits for a in e.band} | {e.layer for e in edits})
        base = Snapshot(model, layers)
        done = 0
        for batch in batches(edits):
            sets, layer = prompt_sets(batch), batch[0].layer
            want = shifts(batch)  # on the head before the batch (the state the loop left)
            before = subject_states(model, tok, sets, layer, layer)[1].double()
            rise = -new_logprobs(batch)
            next_before = [claims._next_logprobs(model, tok, e, templates(e)) for e in batch]
            base.restore()
            compile_prefix(edits[: done + len(batch)])
            got = subject_states(model, tok, sets, layer, layer)[1].double() - before
            delivered += ((got * want).sum(1) / (want * want).sum(1)).tolist()
            at_registration += margins(batch).tolist()
            rises += (rise + new_logprobs(batch)).tolist()
            for e, logp in zip(batch, next_before):
                up = claims._next_logprobs(model, tok, e, templates(e)) - logp
                first = target_ids(tok, e.target_new)[0]
                ranks.append((int((up > up[first]).sum()), float(up.max())))
            done += len(batch)
        base.restore()
        compile_prefix(edits)
        at_end = margins(edits).tolist()
        base.restore()
    n = len(edits)
    held = [m > 0 for m in at_registration]
    kept = [m > 0 for m in at_end]
    rows = {
        "held when registered, held at the end": [i for i in range(n) if held[i] and kept[i]],
        "held when registered, lost later": [i for i in range(n) if held[i] and not kept[i]],
        "failed when registered, held at the end": [i for i in range(n) if not held[i] and kept[i]],
        "failed when registered, failed at the end": [i for i in range(n) if not held[i] and not kept[i]],
    }
    print(f"{n} edits, band soft weight {soft[0]:g}, alpha {soft[1]:g}")
    print(
        "| edits | count | share | mean margin when registered | at the end | shift delivered when registered (median) |"
    )
    print("|---|---|---|---|---|---|")
    for name, which in rows.items():
        if not which:
            print(f"| {name} | 0 | 0.0 % | | | |")
            continue
        reg = sum(at_registration[i] for i in which) / len(which)
        end = sum(at_end[i] for i in which) / len(which)
        share = sorted(delivered[i] for i in which)[len(which) // 2]
        print(f"| {name} | {len(which)} | {100 * len(which) / n:.1f} % | {reg:+.2f} | {end:+.2f} | {share:.2f} |")
    for name, which in (("held", [i for i in range(n) if held[i]]), ("failed", [i for i in range(n) if not held[i]])):
        r = sorted(rises[i] for i in which)
        if r:
            q = [r[min(len(r) - 1, int(f * len(r)))] for f in (0.0, 0.01, 0.1, 0.5)]
            print(
                f"rise of log P(new) over its batch, {name} when registered: min {q[0]:+.2f}, 1 % {q[1]:+.2f}, 10 % {q[2]:+.2f}, median {q[3]:+.2f}"
            )
    vocab = len(tok)
    most = claims.CLAIM_RANK_SHARE * vocab
    refused = [i for i, (rank, top) in enumerate(ranks) if top >= claims.CLAIM_PUSH and rank >= most]
    order = sorted(r for r, _ in ranks)
    print(
        f"the import's object check (rank of the new object's rise < {most:.0f} of {vocab} where some token rose "
        f">= {claims.CLAIM_PUSH}): {len(refused)} of {n} edits would be refused; rank median {order[n // 2]}, "
        f"99 % {order[min(n - 1, int(0.99 * n))]}, max {order[-1]}"
    )
    print(f"\nefficacy when registered {100 * sum(held) / n:.1f} %, at the end {100 * sum(kept) / n:.1f} %")


if __name__ == "__main__":
    main()
