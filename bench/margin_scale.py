"""Each edit asked for what it needs: a band log's asks scaled to one margin (issue 25, a lead).

    FACTSTORE_HOME=H python bench/margin_scale.py --run-dir DIR \\
        --dataset ../shared/data/counterfact_val_1000.json --n 1000 --margins 1 2 3 --max-scales 1 2

MPES stops an edit's v* two steps after its new object leads, but on the whole log's compile
most edits lead by far more than they need to (and a few do not lead at all), while the held-out
damage grows with the total asked of the band. Here the log is compiled as registered (its
stored asks, weight and rho), each edit's margin m1 = log P(new) - log P(true) on its own prompt
is read on that compile (m0 on the base model), and every ask of the edit (all its layers) is
scaled by s = clip((M - m0) / (m1 - m0), --min-scale, S): the scale that would bring its margin
to M if the margin were linear in the asks. The scaled log is compiled again (and, with
--passes 2, rescaled from its own margins once more) and scored on the log's records with
held-out perplexity. Prints a Markdown table; S = 1 only shrinks, S > 1 also lifts the edits
that fall short.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import run_folder
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    parser.add_argument("--margins", type=float, nargs="+", default=[2.0], help="target margins M (nats)")
    parser.add_argument("--max-scales", type=float, nargs="+", default=[1.0], help="largest scale S")
    parser.add_argument("--min-scale", type=float, default=0.2)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--heldout-tokens", type=int, default=20_000)
    args = parser.parse_args()

    from factstore.studies.lifelong import score_variant

    _, session, edits, records, heldout = run_folder.open_band_run(args)
    solver = Solver(session, edits)
    with session.base_weights():
        m0 = margins(session, edits)
    ones = torch.ones(len(edits), dtype=torch.float64)
    print(f"{len(edits)} edits, {len(records)} records")
    print("| M | S | pass | edits held (own prompt) | mean scale | ES | PS | NS | perplexity | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    clock = time.perf_counter()
    m1 = solver.margins_at(ones)
    row(None, None, 0, m1, ones, score_variant(session, records, solver.applier(ones), heldout), clock)
    for margin in args.margins:
        for top in args.max_scales:
            scales, m = ones, m1
            for p in range(1, args.passes + 1):
                clock = time.perf_counter()
                # margin linear in the edit's scale: m(s) = m0 + s (m(1) - m0), read from this pass's point
                slope = (m - m0) / scales
                want = torch.where(slope > 1e-3, (margin - m0) / slope.clamp(min=1e-3), torch.full_like(m0, top))
                scales = want.clamp(args.min_scale, top)
                m = solver.margins_at(scales)
                scores = score_variant(session, records, solver.applier(scales), heldout)
                row(margin, top, p, m, scales, scores, clock)


def row(
    margin: float | None, top: float | None, p: int, m: torch.Tensor, scales: torch.Tensor, s: dict, clock: float
) -> None:
    cells = [
        "as registered" if margin is None else f"{margin:g}",
        "" if top is None else f"{top:g}",
        str(p),
        f"{100 * float((m > 0).double().mean()):.1f} %",
        f"{float(scales.mean()):.3f}",
        f"{s['ES']:.1f}",
        f"{s['PS']:.1f}",
        f"{s['NS']:.1f}",
        f"{s['perplexity']:.2f}",
        f"{time.perf_counter() - clock:.0f}",
    ]
    print("| " + " | ".join(cells) + " |", flush=True)


class Solver:
    """The log's band compile with each edit's asks scaled: SCALES (edits,) float64."""

    def __init__(self, session: Any, edits: list) -> None:
        from factstore.weights import band
        from factstore.weights.replay import soft_settings

        self.session, self.edits = session, edits
        self.soft, self.top = band.settings(edits, soft_settings("band")), band.tops(edits)
        rho = band.names_weight(edits[-1])
        rows: dict[int, list[tuple[int, torch.Tensor, torch.Tensor]]] = defaultdict(list)
        last: dict[int, Any] = {}
        for i, edit in enumerate(edits):
            for ask in edit.band:
                rows[ask.layer].append((i, band.vector(ask.key), band.vector(ask.target)))
                last[ask.layer] = edit
        self.rows = dict(rows)
        self.held = {
            layer: session.statistics.band_matrix(last[layer].covariance_id, layer, rho).double() for layer in rows
        }

    def deltas(self, scales: torch.Tensor) -> dict[int, torch.Tensor]:
        from factstore.weights import band

        return {
            layer: band.layer_delta(
                [(k, float(scales[i]) * r) for i, k, r in rows],
                self.held[layer],
                band.layer_soft(self.soft, layer, self.top),
            )
            for layer, rows in sorted(self.rows.items())
        }

    def applier(self, scales: torch.Tensor) -> Any:
        return run_folder.applier(self.deltas(scales))

    def margins_at(self, scales: torch.Tensor) -> torch.Tensor:
        from factstore.studies.lifelong import weights_restored

        session = self.session
        with weights_restored(session.model), session.base_weights():
            self.applier(scales)(session.model)
            return margins(session, self.edits)


def margins(session: Any, edits: list) -> torch.Tensor:
    """(edits,) float64: log P(new) - log P(true) of each edit on its own prompt (mean per token)."""
    from factstore.rome.scoring import target_logprobs

    texts = [e.prompt.replace("{}", e.subject, 1) for e in edits]
    new = target_logprobs(session.model, session.tokenizer, texts, [e.target_new for e in edits])
    true = target_logprobs(session.model, session.tokenizer, texts, [e.target_true or "" for e in edits])
    return (new - true).double()


if __name__ == "__main__":
    main()
