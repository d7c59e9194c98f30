"""Probabilities of target continuations, batched."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from factstore.rome.prompts import pad_right, target_ids


@torch.no_grad()
def target_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    targets: list[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """(n,) mean per-token log-probability of " " + targets[i] after texts[i]."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for lo in range(0, len(texts), batch_size):
        rows, spans = [], []
        for text, target in zip(texts[lo : lo + batch_size], targets[lo : lo + batch_size]):
            prompt = list(tokenizer(text)["input_ids"])
            tgt = target_ids(tokenizer, target)
            rows.append(prompt + tgt)
            spans.append((len(prompt), tgt))
        ids, mask = pad_right(rows)
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for i, (start, tgt) in enumerate(spans):
            pos = torch.arange(start - 1, start - 1 + len(tgt), device=device)
            out.append(logp[i, pos, torch.tensor(tgt, device=device)].mean())
    return torch.stack(out).cpu()


def target_probs(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], targets: list[str]) -> torch.Tensor:
    """(n,) geometric-mean per-token probability (the exact probability for one-token targets)."""
    return target_logprobs(model, tokenizer, texts, targets).exp()


@torch.no_grad()
def next_token_id(model: nn.Module, tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """The model's most likely next token after TEXT."""
    ids = torch.tensor([tokenizer(text)["input_ids"]], device=next(model.parameters()).device)
    return int(model(input_ids=ids).logits[0, -1].argmax())


@torch.no_grad()
def greedy_continuation(model: nn.Module, tokenizer: PreTrainedTokenizerBase, text: str, max_new_tokens: int = 5) -> str:
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
    start = ids.shape[1]
    for _ in range(max_new_tokens):
        nxt = model(input_ids=ids).logits[0, -1].argmax()
        if tokenizer.eos_token_id is not None and int(nxt) == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True)


def first_phrase(continuation: str) -> str:
    """The answer a continuation starts with: text up to the first punctuation or line break."""
    text = continuation.strip()
    for stop in (".", ",", ";", "\n", "!", "?", ":", "("):
        text = text.split(stop)[0]
    return " ".join(text.split()[:3]).strip()
