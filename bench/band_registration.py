"""What a band edit's registration spends outside the v* optimisation, before and after the
passes resume from the layer written last and the soft solve changes form past in/3 edits.

    FACTSTORE_HOME=H python bench/band_registration.py [--model smollm2] [--batch 8] [--repeats 2] \\
        [--edits 100 500 1000 1500] [--dataset ../shared/data/counterfact_val_1000.json]

H holds the model (`factstore model add smollm2 starter:smollm2-135m`) and C of the band's
layers (`factstore stats compute --model smollm2`). Two tables:

1. One batch's band measurement (`weights/band.measure_asks`, the passes and the nine layer
   solves over the batch alone) on the base model: every pass run whole from the embeddings,
   against each pass resumed from the layer written last (`rome/hooks.BlockStates`). The asks must
   be the same bytes (checked). Mean of --repeats, after one unmeasured warm-up of each.
2. One layer's soft solve with the model's C at the top of its band (`rome/update`), keys and
   wanted changes random, at n edits: the n x n (Woodbury) form against the (in, in) form.
   The head solves every band layer again at each batch over every ask the log holds, so this
   is what grows with the log.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    fn()  # warm-up (and the one whole pass a first resume of the process is checked against)
    start, out = time.perf_counter(), None
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, out


def measurement(alias: str, dataset: str, batch: int, repeats: int, edits: tuple[int, ...]) -> None:
    from factstore.api import open_store
    from factstore.datasets import read_requests
    from factstore.editing.session import EditSession
    from factstore.rome import hooks
    from factstore.weights import band
    from factstore.weights.spread import spread_layers

    session = EditSession(open_store(), alias)
    hp = session.hparams()
    if hp.band < 2:
        raise SystemExit(f"{alias} has no default band; nothing to measure")
    cov = session.covariance(hp.layer, hp)
    layers = spread_layers(hp.layer, hp.band)
    held = {layer: session.statistics.band_matrix(cov.id, layer, hp.band_names_weight) for layer in layers}
    requests = read_requests(dataset, batch)
    sets = [band.key_prompts(r, session.templates(hp).key, hp.band_plain_weight) for r in requests]
    shifts = torch.randn(
        batch, session.model.config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    session._originals.add(layers)

    def write(layer: int, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        delta = band.layer_delta(rows, held[layer], (hp.band_weight, hp.band_alpha))
        band.write_layer(session.model, layer, session._base(layer)[0], delta)

    def run() -> object:
        with session.base_weights():
            return band.measure_asks(
                session.model,
                session.tokenizer,
                sets,
                hp.layer,
                shifts,
                hp.band,
                write,
                lambda layer: session._base(layer)[0],
            )

    resumed_s, resumed = _timed(run, repeats)
    start = hooks.BlockStates.start
    hooks.BlockStates.start = lambda self, model, limit: 0  # type: ignore[method-assign]
    try:
        whole_s, whole = _timed(run, repeats)
    finally:
        hooks.BlockStates.start = start  # type: ignore[method-assign]
    same = resumed == whole
    print(
        f"\n{alias}, one batch of {batch}, band of {hp.band} ending at layer {hp.layer} (asks the same bytes: {same})\n"
    )
    print("| passes | s per batch | s per edit | vs whole |")
    print("|---|---|---|---|")
    for name, s in (("whole, from the embeddings", whole_s), ("resumed from the layer written last", resumed_s)):
        print(f"| {name} | {s:.2f} | {s / batch:.2f} | {whole_s / s:.2f}x |")
    solves(held[hp.layer], hp.band_weight, session.model.config.hidden_size, edits)


def solves(C: torch.Tensor, weight: float, d: int, edits: tuple[int, ...]) -> None:
    from factstore.rome.update import soft_regulariser, soft_solve_narrow, soft_solve_wide

    A = soft_regulariser(C, weight)
    g = torch.Generator().manual_seed(0)
    print(f"\none layer's soft solve, {C.shape[0]} keys wide, {d} outputs ({torch.get_num_threads()} threads)\n")
    print("| edits | n x n form (s) | (in, in) form (s) | relative difference | used |")
    print("|---|---|---|---|---|")
    for n in edits:
        K = torch.randn(C.shape[0], n, dtype=torch.float64, generator=g) * C.diagonal().sqrt().mean()
        R = torch.randn(d, n, dtype=torch.float64, generator=g)
        narrow_s, narrow = _timed(partial(soft_solve_narrow, R, K, A), 2)
        wide_s, wide = _timed(partial(soft_solve_wide, R, K, A), 2)
        assert isinstance(narrow, torch.Tensor) and isinstance(wide, torch.Tensor)
        diff = float((narrow - wide).abs().max() / narrow.abs().max())
        used = "(in, in)" if 3 * n >= C.shape[0] else "n x n"
        print(f"| {n} | {narrow_s:.3f} | {wide_s:.3f} | {diff:.1e} | {used} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--edits", type=int, nargs="+", default=[100, 500, 1000, 1500])
    parser.add_argument("--dataset", default="../shared/data/counterfact_val_1000.json")
    args = parser.parse_args()
    measurement(args.model, args.dataset, args.batch, args.repeats, tuple(args.edits))


if __name__ == "__main__":
    main()
