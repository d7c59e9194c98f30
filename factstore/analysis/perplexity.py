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
def perplexity(model: PreTrainedModel, rows: Sequence[Sequence[int]], batch_size: int = 8) -> float:
    """exp of the mean next-token NLL over every predicted token of ROWS (token id lists; the
    first token of a row is context only). Rows are sorted by length so padding stays small."""
    device = arch.input_device(model)
    ordered = sorted((list(r) for r in rows if len(r) >= 2), key=len)
    if not ordered:
        raise ValueError("perplexity needs at least one row of two tokens")
    nll, count = 0.0, 0
    for lo in range(0, len(ordered), batch_size):
        ids, mask = pad_right(ordered[lo : lo + batch_size])
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()  # (B, L-1, vocab)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, L-1)
        keep = mask[:, 1:].bool().to(logp.device)
        nll -= float(logp[keep].double().sum())
        count += int(keep.sum())
    return math.exp(nll / count)
