"""Can a v* that moves ordinary text least still make its edit? (issue 25: where a long log's damage comes from)

    FACTSTORE_HOME=H python bench/quiet_values.py --n 40 [--layer 8] [--eps 1 0.1]

A band log's held-out perplexity rise is the sum of what its edits ask, leaked onto ordinary
text's keys (docs/results.md): every layer's update adds combinations of the edits' shifts
(v* - v0) to ordinary positions. How much a shift costs ordinary text is measured by the output
Fisher F at the edit layer's MLP output: E over positions of g g^T, g the gradient, at one
position, of the log-probability of tokens sampled from the model's own predictions at that and
every later position (rows of the statistics corpus, the same text C reads). A shift's cost is
delta^T F delta; the Euclidean Adam of ROME moves every coordinate alike.

For --n CounterFact records (counterfact_val_1000.json) v* is computed as registered (Adam on
delta) and with delta = P u, P = (F/mean + eps I)^(-1/2), Adam on u (the same steps, MPES and
clamp): movement along directions ordinary text is sensitive to costs more. Each is written as
a single ROME edit at the layer (the model's C) and scored (ES / PS / NS), with the shift's size:
Euclidean, in F (relative to an isotropic shift of the same length) and the held-out NLL rise when
a tenth of it is added at every position of held-out text (text no C read). Prints one table.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_val_1000.json"


def fisher(model: Any, module: Any, rows: list[list[int]], batch: int = 4, seed: int = 0) -> torch.Tensor:
    """(d, d) mean of g g^T over the positions of ROWS, g = d/d(output at one position) of the
    summed log-probabilities of tokens sampled from the model's own next-token predictions,
    divided by its mean eigenvalue."""
    from factstore.rome.hooks import edit_output
    from factstore.rome.prompts import pad_right

    gen = torch.Generator().manual_seed(seed)
    probe: dict[str, torch.Tensor] = {}

    def add(out: torch.Tensor) -> torch.Tensor:
        probe["z"] = torch.zeros_like(out, requires_grad=True)
        return out + probe["z"]

    total: torch.Tensor | None = None
    count = 0
    for i in range(0, len(rows), batch):
        ids, mask = pad_right(rows[i : i + batch])  # (B, L) each
        with edit_output(module, add):
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, L, V)
        logp = torch.log_softmax(logits, -1)
        sampled = torch.multinomial(logp.detach().exp().view(-1, logp.shape[-1]), 1, generator=gen).view(ids.shape)
        picked = logp.gather(-1, sampled[..., None])[..., 0] * mask  # (B, L)
        (grad,) = torch.autograd.grad(picked.sum(), probe["z"])
        g = grad.view(*ids.shape, -1)[mask.bool()].double()  # (tokens, d)
        total = g.T @ g if total is None else total + g.T @ g
        count += len(g)
    if total is None:
        raise SystemExit("no rows for the Fisher")
    F = total / count
    return (F / torch.linalg.eigvalsh(F).mean()).float()


def metric(F: torch.Tensor, eps: float) -> torch.Tensor:
    """P = (F + eps I)^(-1/2) (d, d), symmetric, from F's eigenvectors; times sqrt(1 + eps), so
    that an isotropic F (all eigenvalues 1) keeps Adam's steps."""
    w, V = torch.linalg.eigh(F.double() + eps * torch.eye(len(F), dtype=torch.float64))
    return (V @ torch.diag(w.rsqrt()) @ V.T).float() * (1 + eps) ** 0.5


def preconditioned(P: torch.Tensor, plain: Any = None) -> Any:
    """values._Run (or PLAIN, the class it was) with each delta = P u and Adam on u (the
    library's loss, MPES and clamp)."""
    from factstore.rome import values

    class Run(plain or values._Run):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.u = [torch.zeros_like(v, requires_grad=True) for v in self.v0]
            self.opt = torch.optim.Adam(self.u, lr=self.hp.lr)

        def _losses(self, batch: Any, stack: Any) -> Any:
            for i in self.active:
                self.delta[i] = P @ self.u[i]
            return super()._losses(batch, stack)

        @torch.no_grad()
        def _clamp(self, requests: list[int]) -> None:
            for i in requests:
                max_norm = self.hp.clamp_norm_factor * self.v0[i].norm()
                norm = (P @ self.u[i]).norm()
                if norm > max_norm:
                    self.u[i].mul_(max_norm / norm)

        def _result(self, i: int) -> Any:
            self.delta[i] = (P @ self.u[i]).detach()
            return super()._result(i)

    return Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--source", default="starter:smollm2-135m")
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--dataset", default=str(DATA))
    parser.add_argument("--eps", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--fisher-rows", type=int, default=64)
    parser.add_argument("--heldout-tokens", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)

    from factstore import api, arch, datasets
    from factstore.analysis.metrics import aggregate, score_records
    from factstore.analysis.perplexity import token_nll
    from factstore.editing.session import EditSession
    from factstore.rome import values
    from factstore.rome.edit import Snapshot, apply_edit
    from factstore.rome.hooks import edit_output
    from factstore.rome.keys import compute_keys
    from factstore.weights import corpus

    store = api.open_store()
    if not any(m.alias == args.model for m in api.list_models(store)):
        api.add_model(store, args.model, args.source)
    session = EditSession(store, args.model)
    model, tok = session.model, session.tokenizer
    hp = session.hparams(args.layer)
    C = session.matrix(session.covariance(hp.layer, hp).id)
    module = arch.down_proj(model, hp.layer)
    text = session.stats_corpus()
    clock = time.perf_counter()
    F = fisher(model, module, corpus.rows(tok, text.texts[: args.fisher_rows], 128))
    evals = torch.linalg.eigvalsh(F.double())  # their mean is 1
    print(
        f"F from {args.fisher_rows} rows in {time.perf_counter() - clock:.0f} s; eigenvalues / mean: "
        f"max {evals[-1]:.1f}, median {evals.median():.3f}, min {evals[0]:.2e}",
        flush=True,
    )
    heldout = corpus.held_out(text, tok, args.heldout_tokens, hp.stats_tokens)
    base_nll = torch.cat(token_nll(model, heldout)).mean()
    records = datasets.read_records(args.dataset, args.n)
    requests = [r.request for r in records]
    templates = session.templates(hp)
    keys = compute_keys(model, tok, requests, hp.layer, templates.key)
    unedited = aggregate(score_records(model, tok, records))

    methods: dict[str, Any] = {"adam (as registered)": values._Run}
    for eps in args.eps:
        methods[f"P = (F + {eps:g} I)^-1/2"] = preconditioned(metric(F, eps))

    print(
        f"| v* | ES | PS | NS (unedited {unedited['NS']:.1f}) | |delta| / |v0| | delta^T F delta / |delta|^2 | "
        "NLL rise, delta/10 everywhere (nats) | steps | seconds |\n|---|---|---|---|---|---|---|---|---|"
    )
    predicted: list[float] = []  # delta^T F delta of every shift of every method, against its NLL rise
    observed: list[float] = []
    for name, run in methods.items():
        values._Run = run
        clock = time.perf_counter()
        found = []
        for i in range(0, len(requests), args.batch):
            found += values.compute_values(model, tok, requests[i : i + args.batch], templates.value, hp)
        seconds = time.perf_counter() - clock
        scores, sizes, quad, rise = [], [], [], []
        for record, key, v in zip(records, keys, found):
            delta = v.value - v.v0
            sizes.append(float(delta.norm() / v.v0.norm()))
            predicted.append(float(delta @ F @ delta))
            quad.append(predicted[-1] / float(delta.dot(delta)))
            with Snapshot(model, [hp.layer]):
                apply_edit(model, hp.layer, key, v.value, C)
                scores += score_records(model, tok, [record])
            with edit_output(module, functools.partial(lambda out, d: out + d, d=0.1 * delta)):
                rise.append(float(torch.cat(token_nll(model, heldout)).mean() - base_nll))
        s = aggregate(scores)
        n = len(found)
        observed += rise
        print(
            f"| {name} | {s['ES']:.1f} | {s['PS']:.1f} | {s['NS']:.1f} | {sum(sizes) / n:.2f} | {sum(quad) / n:.3f} | "
            f"{sum(rise) / n:.4f} | {sum(v.steps for v in found) / n:.1f} | {seconds:.0f} |",
            flush=True,
        )
    values._Run = methods["adam (as registered)"]
    pair = torch.tensor([predicted, observed])
    print(
        f"\ncorrelation of delta^T F delta with the NLL rise over all {len(observed)} shifts: {float(torch.corrcoef(pair)[0, 1]):.3f}"
    )


if __name__ == "__main__":
    main()
