"""Probabilities of target continuations, batched."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.arch import logits_at
from factstore.rome.prompts import decode, pad_right, target_ids


@torch.no_grad()
def target_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    targets: list[str],
    batch_size: int = 64,
) -> torch.Tensor:
    """(n,) mean per-token log-probability of " " + targets[i] after texts[i].

    Queries that feed the model the same tokens share one row (a prompt with several one-token
    targets is run once), and the LM head runs only where a target token is predicted.
    """
    device = arch.input_device(model)
    rows: dict[tuple[int, ...], int] = {}  # tokens fed -> row number
    wanted: list[list[tuple[int, int, int]]] = []  # per query: (row, position, target token)
    for text, target in zip(texts, targets):
        prompt, tgt = list(tokenizer(text)["input_ids"]), target_ids(tokenizer, target)
        row = rows.setdefault(tuple(prompt + tgt[:-1]), len(rows))
        wanted.append([(row, len(prompt) - 1 + j, t) for j, t in enumerate(tgt)])
    by_row: dict[int, set[tuple[int, int]]] = {}
    for row, pos, token in (w for ws in wanted for w in ws):
        by_row.setdefault(row, set()).add((pos, token))
    contexts = list(rows)
    found: dict[tuple[int, int, int], float] = {}
    for lo in range(0, len(contexts), batch_size):
        ids, mask = pad_right([list(c) for c in contexts[lo : lo + batch_size]])
        entries = sorted(
            (row, pos, token)
            for row in range(lo, min(lo + batch_size, len(contexts)))
            for pos, token in by_row.get(row, ())
        )
        at = torch.tensor([[row - lo, pos] for row, pos, _ in entries], device=device)
        logits = logits_at(model, ids.to(device), mask.to(device), at[:, 0], at[:, 1])  # (entries, V)
        tokens = torch.tensor([token for *_, token in entries], device=device)
        logp = torch.log_softmax(logits.float(), -1).gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
        found.update(zip(entries, logp))
    return torch.tensor(
        [sum(found[w] for w in ws) / len(ws) if ws else float("nan") for ws in wanted], dtype=torch.float32
    )


def target_probs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], targets: list[str]
) -> torch.Tensor:
    """(n,) geometric-mean per-token probability (the exact probability for one-token targets)."""
    return target_logprobs(model, tokenizer, texts, targets).exp()


def next_token_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """The model's most likely next token after TEXT."""
    return next_token_ids(model, tokenizer, [text])[0]


@torch.no_grad()
def next_token_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 64
) -> list[int]:
    """The model's most likely next token after each text, batched."""
    device = arch.input_device(model)
    out: list[int] = []
    for lo in range(0, len(texts), batch_size):
        rows = [list(tokenizer(t)["input_ids"]) for t in texts[lo : lo + batch_size]]
        ids, mask = pad_right(rows)
        last = torch.tensor([len(r) - 1 for r in rows])
        logits = logits_at(
            model, ids.to(device), mask.to(device), torch.arange(len(rows), device=device), last.to(device)
        )
        out.extend(logits.argmax(-1).tolist())
    return out


@torch.no_grad()
def greedy_continuation(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, max_new_tokens: int = 5
) -> str:
    device = arch.input_device(model)
    ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
    start = ids.shape[1]
    for _ in range(max_new_tokens):
        nxt = model(input_ids=ids).logits[0, -1].argmax()
        if tokenizer.eos_token_id is not None and int(nxt) == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return decode(tokenizer, ids[0, start:], skip_special_tokens=True)


def first_phrase(continuation: str) -> str:
    """The answer a continuation starts with: text up to the first punctuation or line break."""
    text = continuation.strip()
    for stop in (".", ",", ";", "\n", "!", "?", ":", "("):
        text = text.split(stop)[0]
    return " ".join(text.split()[:3]).strip()
