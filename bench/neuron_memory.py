"""Capacity from neurons ordinary text barely uses: one MLP neuron per edit (issue 25, a lead)

    FACTSTORE_HOME=H python bench/neuron_memory.py --n 1000 --layers 3-8 --neg-weight 300 --sub-weight 10 \
        --corpus-rows 512 --steps 400 --compensate --work DIR

Every soft solve of a long log pays in ordinary text for what it asks (docs/results.md: the
band weight's trade-off line): a fact's key k* is the down-projection input the subject already
produces, and ordinary text uses every direction of that space. This asks whether new key
directions help. Each edit gets one neuron of its own at one layer of LAYERS (round robin): the
neuron of that layer whose part of ordinary text's output is smallest (E[k_j^2] |W_down[:, j]|^2
over the statistics corpus; with --compensate, the part the layer's other neurons cannot take
over, and they take over the rest by least squares over C). Its gate and up rows are refit
(Adam on stored states) so that its activation act(g.x) (u.x) is 1 on the subject's MLP input x
(every context prefix k* averages over) and near 0 on ordinary text's MLP inputs, on earlier
edits' subjects and on its own subject's words after the first, alone; its down column becomes
the edit's shift v* - v0 (ROME's v*, computed at that layer on the base model). Nothing else is
written: the release keeps the base architecture.

Prints per layer the emptied slots' share of the layer's energy and the fitted neurons'
activations, the held-out tokens whose NLL rose most, and ES / PS / NS / held-out perplexity of
the unedited and the edited model on the N records. v* are kept in --work after every batch (a
rerun resumes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_val_1000.json"


def parse_layers(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


@torch.no_grad()
def corpus_inputs(model: Any, layers: list[int], rows: list[list[int]], batch: int = 8) -> tuple[dict, dict]:
    """{layer: (tokens, d) MLP inputs at every position of ROWS}, {layer: (d_ff,) E[k_j^2]}."""
    from factstore import arch
    from factstore.rome.hooks import _run_until_stop, _Stop
    from factstore.rome.prompts import pad_right

    spec = arch.model_spec(model)
    blocks = arch.blocks(model)
    xs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    k2: dict[int, torch.Tensor] = {}
    count = 0
    for i in range(0, len(rows), batch):
        ids, mask = pad_right(rows[i : i + batch])
        keep = mask.bool()
        handles = []
        for layer in layers:
            mlp = arch.get_module(blocks[layer], spec.mlp)
            down = arch.get_module(blocks[layer], spec.down_proj)

            def x_hook(_m: Any, args: tuple, layer: int = layer, keep: torch.Tensor = keep) -> None:
                xs[layer].append(args[0][keep].float())

            def k_hook(_m: Any, args: tuple, layer: int = layer, keep: torch.Tensor = keep) -> None:
                k = args[0][keep].float()
                k2[layer] = k2.get(layer, 0) + (k * k).sum(0)
                if layer == max(layers):
                    raise _Stop

            handles += [mlp.register_forward_pre_hook(x_hook), down.register_forward_pre_hook(k_hook)]
        _run_until_stop(model, ids, mask, handles)
        count += int(keep.sum())
    return {layer: torch.cat(v) for layer, v in xs.items()}, {layer: v / count for layer, v in k2.items()}


@torch.no_grad()
def subject_inputs(model: Any, tok: Any, pairs: list[tuple[str, str]], layers: list[int], batch: int = 32) -> dict:
    """{layer: (len(pairs), d)} MLP inputs at the subject's last token of each (prompt, subject)."""
    from factstore import arch
    from factstore.rome.hooks import _run_until_stop, _Stop
    from factstore.rome.prompts import encode_prompt, pad_right

    spec = arch.model_spec(model)
    blocks = arch.blocks(model)
    encoded = [encode_prompt(tok, p, s) for p, s in pairs]
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for i in range(0, len(encoded), batch):
        chunk = encoded[i : i + batch]
        ids, mask = pad_right([e.ids[: e.subject_last + 1] for e in chunk])
        last = torch.tensor([e.subject_last for e in chunk])
        rows = torch.arange(len(chunk))
        handles = []
        for layer in layers:

            def hook(
                _m: Any, args: tuple, layer: int = layer, rows: torch.Tensor = rows, last: torch.Tensor = last
            ) -> None:
                out[layer].append(args[0][rows, last].float())
                if layer == max(layers):
                    raise _Stop

            handles.append(arch.get_module(blocks[layer], spec.mlp).register_forward_pre_hook(hook))
        _run_until_stop(model, ids, mask, handles)
    return {layer: torch.cat(v) for layer, v in out.items()}


def hard_variants(subject: str, pool: list[str], k: int, gen: torch.Generator) -> list[str]:
    """Other subjects that end like SUBJECT: its first word swapped for K words of POOL, and its
    tail alone ("Zurich Airport" must not fire the neuron of "Istanbul Airport"). None for one word."""
    words = subject.split()
    if len(words) < 2:
        return []
    tail = " ".join(words[1:])
    others = [w for w in pool if w != words[0]]
    picks = torch.randperm(len(others), generator=gen)[:k].tolist()
    return [f"{others[i]} {tail}" for i in picks] + [tail[0].upper() + tail[1:]]


def fit_neurons(  # noqa: PLR0913
    rows: torch.Tensor,
    own: torch.Tensor,
    edit: torch.Tensor,
    mine: list[int],
    neg: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    neg_weight: float,
    sub_weight: float,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate and up rows (E, d) of E neurons, neuron e for edit MINE[e]. ROWS (P, d): subject
    prompts' inputs; OWN (P,): the edit whose subject each row holds (-1: a hard variant, no
    edit's); EDIT (P,): the edit each row was made for (its subject or its variants). Neuron e's
    activation act(g.x) (u.x) is fit to 1 on its own subject's rows (mean square), to 0 on the
    rows of edits registered before it and on its own variants (SUB_WEIGHT), and to 0 on NEG (M,
    d), ordinary text's inputs (NEG_WEIGHT): a neuron knows only the log before it."""
    index = torch.tensor(mine)
    scale = neg.pow(2).mean().sqrt()  # inputs to about unit size per coordinate
    rows, neg = rows / scale, neg / scale
    want = (own[:, None] == index[None, :]).float()  # (P, E)
    seen = (edit[:, None] < index[None, :]) | ((edit[:, None] == index[None, :]) & (own[:, None] < 0))
    weight = want / want.sum(0) + sub_weight * seen.float() / seen.float().sum(0).clamp(min=1)  # (P, E)
    centre = (want.T @ rows) / want.sum(0)[:, None]  # (E, d)
    away = centre - neg.mean(0)
    u = (centre / centre.pow(2).sum(1, keepdim=True)).clone().requires_grad_(True)  # u.centre = 1
    g = (3 * away / (away * centre).sum(1, keepdim=True)).clone().requires_grad_(True)  # g.centre = 3
    useful = (weight > 0).any(1)
    rows, want, weight = rows[useful], want[useful], weight[useful]
    opt = torch.optim.Adam([g, u], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        sample = neg[torch.randint(len(neg), (4096,), generator=gen)]
        a_rows = act(rows @ g.T) * (rows @ u.T)  # (P, E)
        a_neg = act(sample @ g.T) * (sample @ u.T)  # (4096, E)
        loss = (weight * (a_rows - want).pow(2)).sum() + neg_weight * a_neg.pow(2).mean(0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return g.detach() / scale, u.detach() / scale


def solve_neurons(  # noqa: PLR0913
    rows: torch.Tensor,
    own: torch.Tensor,
    edit: torch.Tensor,
    mine: list[int],
    neg: torch.Tensor,
    neg_weight: float,
    sub_weight: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fit_neurons' aim in closed form: u the ridge detector minimising mean (u.x - 1)^2 over the
    edit's own rows + SUB_WEIGHT mean (u.x)^2 over earlier edits' rows and its own variants +
    NEG_WEIGHT mean (u.x)^2 over NEG; the gate g = BETA u, so a = act(BETA z) z, z = u.x, is
    about z^2 off the subject (leaks square). Linear algebra only: (E, d) each."""
    d = rows.shape[1]
    S_neg = neg.double().T @ neg.double() / len(neg)  # (d, d)
    gs, us = [], []
    X = rows.double()
    for i in mine:
        mine_rows = X[own == i]
        others = X[(edit < i) | ((edit == i) & (own < 0))]
        S = mine_rows.T @ mine_rows / len(mine_rows) + neg_weight * S_neg
        if len(others):
            S = S + sub_weight * others.T @ others / len(others)
        u = torch.linalg.solve(S + 1e-6 * S.diagonal().mean() * torch.eye(d, dtype=S.dtype), mine_rows.mean(0))
        u = u / (mine_rows @ u).mean()
        us.append(u.float())
        gs.append(beta * u.float())
    return torch.stack(gs), torch.stack(us)


def compute_shifts(  # noqa: PLR0913
    session: Any,
    requests: list[Any],
    where: list[int],
    layers: list[int],
    templates: list[str],
    work: Path,
    batch: int,
    clock: float,
) -> dict[int, torch.Tensor]:
    """{edit: v* - v0 (d,)}, v* of each edit at its own layer WHERE[edit] on the base model, the log
    in order (one batch per layer at a time), kept in WORK after every batch: a rerun resumes."""
    from factstore.rome import values

    paths = {layer: work / f"values-{layer}.pt" for layer in layers}
    done: dict[int, dict[int, torch.Tensor]] = {
        layer: torch.load(path) if path.exists() else {} for layer, path in paths.items()
    }
    todo = [i for i in range(len(requests)) if i not in done[where[i]]]
    step = batch * len(layers)
    for lo in range(0, len(todo), step):
        for layer in layers:
            part = [i for i in todo[lo : lo + step] if where[i] == layer]
            if not part:
                continue
            found = values.compute_values(
                session.model, session.tokenizer, [requests[i] for i in part], templates, session.hparams(layer, band=1)
            )
            done[layer].update({i: (v.value - v.v0) for i, v in zip(part, found)})
            torch.save(done[layer], paths[layer])
        print(f"v*: {sum(map(len, done.values()))} ({time.perf_counter() - clock:.0f} s)", flush=True)
    return {i: done[where[i]][i] for i in range(len(requests))}


def choose_neurons(
    session: Any, layer: int, down: torch.Tensor, k2: torch.Tensor, count: int, compensate: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(COUNT neuron indices of LAYER, their share of the layer's energy): those whose part of
    ordinary text's output is smallest, E[k_j^2] |W_down[:, j]|^2 (K2: E[k_j^2]). COMPENSATE:
    smallest once the layer's other neurons take it over (the variance of k_j the other keys do
    not predict, 1 / (C^-1)_jj, C the layer's key statistics), and DOWN (out, d_ff) is rewritten
    so that they do (least squares over C)."""
    reach = down.float().pow(2).sum(0)  # (d_ff,): |W_down[:, j]|^2
    if not compensate:
        energy = k2 * reach
        chosen = energy.argsort()[:count]
        return chosen, energy[chosen].sum() / energy.sum()
    C = session.matrix(session.covariance(layer, session.hparams(layer, band=1)).id).double()
    energy = (1 / torch.linalg.inv(C).diagonal()).float() * reach
    chosen = energy.argsort()[:count]
    keep = torch.ones(len(energy), dtype=torch.bool)
    keep[chosen] = False
    regress = torch.linalg.solve(C[keep][:, keep], C[keep][:, chosen])  # (kept, chosen)
    down[:, keep] += (down[:, chosen].double() @ regress.T).to(down.dtype)
    return chosen, energy[chosen].sum() / energy.sum()


def report_rise(tok: Any, heldout: list[list[int]], base: torch.Tensor, edited: torch.Tensor) -> None:
    """The five held-out tokens whose NLL rose most, in context, and how concentrated the rise is."""
    order = (edited - base).argsort(descending=True)
    rise = (edited - base)[order]
    where = [(r, t) for r, row in enumerate(heldout) for t in range(1, len(row))]
    for k, at in enumerate(order[:5].tolist()):
        r, t = where[at]
        print(
            f"  +{float(rise[k]):.2f} nats at position {t}: "
            f"{tok.decode(heldout[r][max(0, t - 8) : t])!r} -> {tok.decode(heldout[r][t : t + 1])!r}"
        )
    print(
        f"held-out NLL rise: total {float(rise.sum()):.1f} nats; top 1 % of tokens {float(rise[: len(rise) // 100].sum()):.1f}, "
        f"top 10 tokens {float(rise[:10].sum()):.1f}, tokens that fell {float(rise[rise < 0].sum()):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--dataset", default=str(DATA))
    parser.add_argument("--layers", default="2-8")
    parser.add_argument("--work", required=True, help="folder for v* (a rerun resumes from it)")
    parser.add_argument("--corpus-rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--neg-weight", type=float, default=1.0)
    parser.add_argument("--sub-weight", type=float, default=1.0, help="weight of other subjects' rows")
    parser.add_argument(
        "--variants",
        type=int,
        default=0,
        help="variants of each subject with its first word swapped (its tail alone is always one)",
    )
    parser.add_argument("--variant-contexts", type=int, default=3)
    parser.add_argument("--beta", type=float, default=0.0, help="closed form (solve_neurons) with this gate scale")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--compensate", action="store_true", help="the layer's other neurons take over the chosen ones' part (C)"
    )
    parser.add_argument("--values-only", action="store_true", help="compute and keep v*, then stop")
    parser.add_argument("--heldout-tokens", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)

    from transformers.activations import ACT2FN

    from factstore import api, arch, datasets
    from factstore.analysis.metrics import aggregate, score_records
    from factstore.analysis.perplexity import token_nll
    from factstore.editing.session import EditSession
    from factstore.rome.prompts import request_prompts
    from factstore.weights import corpus

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = api.open_store()
    session = EditSession(store, args.model)
    model, tok = session.model, session.tokenizer
    layers = parse_layers(args.layers)
    act = ACT2FN[model.config.hidden_act]
    records = datasets.read_records(args.dataset, args.n)
    requests = [r.request for r in records]
    where = [layers[i % len(layers)] for i in range(len(records))]  # each edit's layer
    hp0 = session.hparams(layers[-1], band=1)
    templates = session.templates(hp0)
    text = session.stats_corpus()
    heldout = corpus.held_out(text, tok, args.heldout_tokens, hp0.stats_tokens)
    clock = time.perf_counter()

    shifts = compute_shifts(session, requests, where, layers, templates.value, work, args.batch, clock)
    gen = torch.Generator().manual_seed(0)
    pool = sorted({r.subject.split()[0] for r in requests})
    if args.values_only:
        return
    pairs, own, edit = [], [], []
    for i, r in enumerate(requests):
        for p in request_prompts(r, templates.key):
            pairs.append((p, r.subject))
            own.append(i)
            edit.append(i)
        for variant in hard_variants(r.subject, pool, args.variants, gen):
            for p in request_prompts(r, templates.key[: args.variant_contexts]):
                pairs.append((p, variant))
                own.append(-1)
                edit.append(i)
    owners, edits = torch.tensor(own), torch.tensor(edit)
    pos = subject_inputs(model, tok, pairs, layers)  # {layer: (n * per, d)}
    rows = corpus.rows(tok, text.texts[: args.corpus_rows])
    xs, k2 = corpus_inputs(model, layers, rows)
    print(
        f"states: {len(pairs)} subject prompts, {len(next(iter(xs.values())))} corpus tokens per layer "
        f"({time.perf_counter() - clock:.0f} s)",
        flush=True,
    )

    base_tokens = torch.cat(token_nll(model, heldout))
    base_nll = base_tokens.mean()
    unedited = aggregate(score_records(model, tok, records))
    blocks = arch.blocks(model)
    spec = arch.model_spec(model)
    written: list[tuple[torch.Tensor, int, torch.Tensor]] = []
    print(
        "| layer | edits | removed energy share | a on corpus: mean abs / p99 / max | a own: mean / min | a other subjects p99.9 |"
    )
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for layer in layers:
            mine = [i for i in range(len(records)) if where[i] == layer]
            if not mine:
                continue
            mlp = arch.get_module(blocks[layer], spec.mlp)
            down = arch.weight_param(arch.get_module(blocks[layer], spec.down_proj))
            chosen, share = choose_neurons(session, layer, down, k2[layer], len(mine), args.compensate)
            if args.beta:
                g, u = solve_neurons(
                    pos[layer], owners, edits, mine, xs[layer], args.neg_weight, args.sub_weight, args.beta
                )
            else:
                with torch.enable_grad():
                    g, u = fit_neurons(
                        pos[layer],
                        owners,
                        edits,
                        mine,
                        xs[layer],
                        act,
                        args.steps,
                        args.neg_weight,
                        args.sub_weight,
                        args.lr,
                    )
            a_neg = act(xs[layer] @ g.T) * (xs[layer] @ u.T)  # (M, E)
            a_pos = act(pos[layer] @ g.T) * (pos[layer] @ u.T)  # (P, E)
            a_own = torch.stack([a_pos[owners == i, e].mean() for e, i in enumerate(mine)])
            other = a_pos.masked_fill(owners[:, None] == torch.tensor(mine)[None, :], 0).abs()
            other = other.quantile(0.999) if other.numel() < 2**24 else other.max()
            for e, (i, j) in enumerate(zip(mine, chosen.tolist())):
                mlp.gate_proj.weight[j] = g[e].to(down.dtype)
                mlp.up_proj.weight[j] = u[e].to(down.dtype)
                down[:, j] = 0
                written.append((down, j, (shifts[i] / a_own[e]).to(down.dtype)))
            flat = a_neg.abs().flatten()
            print(
                f"| {layer} | {len(mine)} | {float(share):.4f} | "
                f"{float(flat.mean()):.4f} / {float(flat.kthvalue(int(0.99 * len(flat))).values):.3f} / {float(flat.max()):.2f} | "
                f"{float(a_own.mean()):.3f} / {float(a_own.min()):.3f} | {float(other):.2f} |",
                flush=True,
            )
    removed = torch.cat(token_nll(model, heldout)).mean()  # the chosen neurons silent
    with torch.no_grad():
        for down, j, column in written:
            down[:, j] = column
    edited = aggregate(score_records(model, tok, records))
    edited_tokens = torch.cat(token_nll(model, heldout))
    nll = edited_tokens.mean()
    report_rise(tok, heldout, base_tokens, edited_tokens)
    print(f"\n| {len(records)} records | ES | PS | NS | held-out perplexity ({sum(map(len, heldout))} tokens) |")
    print("|---|---|---|---|---|")
    for name, s, v in (("unedited", unedited, base_nll), ("one neuron per edit", edited, nll)):
        print(f"| {name} | {s['ES']:.1f} | {s['PS']:.1f} | {s['NS']:.1f} | {float(v.exp()):.2f} |")
    print(f"perplexity with the chosen neurons silent (removed, none written): {float(removed.exp()):.2f}")
    print(f"\n{time.perf_counter() - clock:.0f} s")


if __name__ == "__main__":
    main()
