"""Perplexity of a model on token rows: the damage check that does not depend on edited facts.

Tensors in, numbers out: no files, no store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from factstore import arch
from factstore.rome.prompts import pad_right


@torch.no_grad()
def token_nll(model: PreTrainedModel, rows: Sequence[Sequence[int]], batch_size: int = 8) -> list[torch.Tensor]:
    """Per row of ROWS (token id lists), the next-token NLL of each token after the first
    ((len - 1,) float64; the first token is context only), in the order of ROWS. Rows are run
    sorted by length so padding stays small; rows shorter than two tokens give empty tensors."""
    device = arch.input_device(model)
    order = sorted((i for i in range(len(rows)) if len(rows[i]) >= 2), key=lambda i: len(rows[i]))
    out: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64) for _ in rows]
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        ids, mask = pad_right([list(rows[i]) for i in chunk])
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()  # (B, L-1, vocab)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, L-1)
        for r, i in enumerate(chunk):
            out[i] = -logp[r, : len(rows[i]) - 1].double().cpu()
    return out


def perplexity(model: PreTrainedModel, rows: Sequence[Sequence[int]], batch_size: int = 8) -> float:
    """exp of the mean next-token NLL over every predicted token of ROWS (token id lists; the
    first token of a row is context only)."""
    nll = [t for t in token_nll(model, rows, batch_size) if len(t)]
    if not nll:
        raise ValueError("perplexity needs at least one row of two tokens")
    return math.exp(float(torch.cat(nll).sum()) / sum(len(t) for t in nll))
