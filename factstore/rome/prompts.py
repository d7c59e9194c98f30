"""Tokenising edit prompts and finding the subject's last token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from factstore.domain import EditRequest
from factstore.errors import InvalidEditRequest, shown


@dataclass(frozen=True)
class EncodedPrompt:
    ids: list[int]  # token ids of the filled prompt (with the tokenizer's special prefix, if any)
    subject_last: int  # index into ids of the subject's last token


def fill(template: str, prompt: str) -> str:
    """Put a prompt (which still holds the subject's "{}") into a context template's "{}"."""
    return template.replace("{}", prompt, 1)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str) -> EncodedPrompt:
    """Tokenise prompt.replace("{}", subject) and locate the subject's last token by character offsets."""
    start = prompt.index("{}")
    text = prompt.replace("{}", subject, 1)
    end = start + len(subject.rstrip())  # exclusive character end of the subject
    enc = tokenizer(text, return_offsets_mapping=True)
    for i, (lo, hi) in enumerate(enc["offset_mapping"]):
        if lo < end <= hi and hi > lo:
            if any(ch.isalnum() for ch in text[end:hi]):
                break  # the subject's last token runs on into the next word (a token such as "),"" is still the subject's)
            return EncodedPrompt(ids=list(enc["input_ids"]), subject_last=i)
    raise InvalidEditRequest(
        f"the subject {shown(subject)} does not end on a token boundary in {shown(text)}; "
        "write the prompt so that a space or punctuation follows the subject"
    )


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
    """Text of a 1-D run of token ids."""
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    if not isinstance(text, str):
        raise TypeError("decode() of a 1-D sequence of ids returns a string")
    return text


def target_ids(tokenizer: PreTrainedTokenizerBase, target: str) -> list[int]:
    """Token ids of " " + target, as a continuation of a prompt."""
    ids = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise InvalidEditRequest(f"the target {shown(target)} tokenises to nothing")
    return list(ids)


def check_token_limits(
    tokenizer: PreTrainedTokenizerBase, prompt: str, target: str | None, max_prompt: int, max_target: int
) -> None:
    """Refuse a prompt (filled with its subject) or a target longer than the caps, by tokens."""
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n_prompt > max_prompt:
        raise InvalidEditRequest(
            f"the prompt is {n_prompt} tokens long; the limit is {max_prompt} (FACTSTORE_MAX_PROMPT_TOKENS)"
        )
    if target is not None and (n_target := len(target_ids(tokenizer, target))) > max_target:
        raise InvalidEditRequest(
            f"the target is {n_target} tokens long; the limit is {max_target} (FACTSTORE_MAX_TARGET_TOKENS)"
        )


def check_fits(ids_len: int, n_target: int, max_len: int) -> None:
    if ids_len + n_target > max_len:
        raise InvalidEditRequest(
            f"prompt plus target is {ids_len + n_target} tokens, longer than the model's context of "
            f"{max_len}; shorten the prompt or the target"
        )


def pad_right(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows to (B, L) ids and a (B, L) attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def request_prompts(request: EditRequest, templates: list[str]) -> list[str]:
    """The edit prompt inside every context template (each still holding "{}" for the subject)."""
    return [fill(t, request.prompt) for t in templates]
