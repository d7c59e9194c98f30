"""Context prefixes and the key k*: what the edited layer sees for the subject."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.domain import EditRequest
from factstore.rome.hooks import (
    BlockStates,
    check_resumed,
    inputs_and_block_output,
    layer_inputs,
    resumable,
    resume_checked,
)
from factstore.rome.prompts import EncodedPrompt, decode, encode_prompt, pad_right, request_prompts

_STARTS = ("The", "Therefore", "Because", "I", "You")  # ROME's generation seeds
_TOP_K = 5


@torch.no_grad()
def sample_context_templates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    lengths: tuple[tuple[int, int], ...],
) -> list[str]:
    """["{}"] + sampled prefixes "<text>. {}", top-k sampled with a private seeded generator."""
    device = arch.input_device(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    templates = ["{}"]
    for n_tokens, count in lengths:
        for start in range(len(_STARTS)):
            n = len(range(start, count, len(_STARTS)))  # prefixes that begin with this word
            if n == 0:
                continue
            ids = torch.tensor([tokenizer(_STARTS[start])["input_ids"]] * n, device=device)
            ids = _sample(model, ids, n_tokens, gen)
            for row in ids:
                text = decode(tokenizer, row, skip_special_tokens=True)
                text = " ".join(text.replace("{", " ").replace("}", " ").split())
                templates.append(text + ". {}")
    return templates


def _sample(model: PreTrainedModel, ids: torch.Tensor, n_tokens: int, gen: torch.Generator) -> torch.Tensor:
    """IDS (n, t) extended by N_TOKENS top-k samples, one forward pass per token over the new
    token only (the key/value cache holds the rest; rows share a length, so no padding)."""
    out = model(input_ids=ids, use_cache=True)
    for step in range(n_tokens):
        top = out.logits[:, -1].float().cpu().topk(_TOP_K, dim=-1)
        pick = top.indices.gather(1, torch.multinomial(top.values.softmax(-1), 1, generator=gen)).to(ids.device)
        ids = torch.cat([ids, pick], dim=1)
        if step + 1 < n_tokens:
            out = model(input_ids=pick, use_cache=True, **{arch.cache_keyword(model): arch.output_cache(out)})
    return ids


@dataclass(frozen=True)
class ContextTemplates:
    """Prefixes sampled once on the base model and stored, so keys and values are reproducible."""

    key: list[str]  # averaged over for k* (ROME: "{}" + 10 of ~5 and 10 of ~10 tokens)
    value: list[str]  # rewrite prompts for v* (ROME: "{}" + 5 of ~10 tokens)


def sample_contexts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    key_lengths: tuple[tuple[int, int], ...],
    value_lengths: tuple[tuple[int, int], ...],
) -> ContextTemplates:
    return ContextTemplates(
        key=sample_context_templates(model, tokenizer, seed, key_lengths),
        value=sample_context_templates(model, tokenizer, seed + 1, value_lengths),
    )


@torch.no_grad()
def subject_inputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[tuple[str, str]],
    layer: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """(len(prompts), d_ff) float32 down-projection inputs at the subject's last token of each
    (prompt, subject) pair, batched."""
    device = arch.input_device(model)
    encoded = [_to_subject(encode_prompt(tokenizer, p, subject)) for p, subject in prompts]
    order = sorted(
        range(len(encoded)), key=lambda i: len(encoded[i].ids)
    )  # similar lengths share a batch: less padding
    found: list[torch.Tensor] = []
    for lo in range(0, len(order), batch_size):
        chunk = [encoded[i] for i in order[lo : lo + batch_size]]
        ids, mask = pad_right([e.ids for e in chunk])
        inputs = layer_inputs(model, layer, ids.to(device), mask.to(device))  # (B, L, d_ff)
        rows = torch.arange(len(chunk), device=inputs.device)
        positions = torch.tensor([e.subject_last for e in chunk], device=inputs.device)
        found.append(inputs[rows, positions].float())
    keys = torch.cat(found)
    return keys[torch.tensor(order, device=keys.device).argsort()]  # back to the order of PROMPTS


def compute_keys(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: list[EditRequest],
    layer: int,
    templates: list[str],
) -> torch.Tensor:
    """(n, d_ff) float32: k* of each request, the mean subject key over every context template."""
    prompts = [(p, r.subject) for r in requests for p in request_prompts(r, templates)]
    keys = subject_inputs(model, tokenizer, prompts, layer)  # (n * len(templates), d_ff)
    return keys.view(len(requests), len(templates), -1).mean(1)


def compute_key(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    layer: int,
    templates: list[str],
) -> torch.Tensor:
    """k* (d_ff,) float32 of one request."""
    return compute_keys(model, tokenizer, [request], layer, templates)[0]


@torch.no_grad()
def subject_states(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_sets: list[list[tuple[str, str]]],
    key_layer: int,
    out_layer: int,
    batch_size: int = 64,
    states: BlockStates | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each set of (prompt, subject) pairs, the mean over its prompts, at the subject's last
    token, of KEY_LAYER's down-projection input and of the residual stream after block OUT_LAYER:
    (n, d_ff) and (n, d) float32 (what a compile spread over layers measures). STATES: block
    outputs kept from earlier passes over the same PROMPT_SETS (and batch size), told which
    blocks changed since: the pass runs from the lowest of those (BlockStates)."""
    keys, hidden = _subject_means(model, tokenizer, prompt_sets, [key_layer], out_layer, batch_size, states)
    return keys[key_layer], hidden


class BandWalk:
    """A band measured lowest layer first while the caller writes each layer in between: at each
    layer its keys and block TOP's output at every prompt set's subject, each pass running from
    the layer written last (BlockStates: the same bytes as a whole pass). The first output is
    block TOP's before any write (H0)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompt_sets: list[list[tuple[str, str]]],
        layers: list[int],
        top: int,
    ) -> None:
        if not layers:
            raise ValueError("a band walk needs at least one layer")
        self.model, self.tokenizer, self.prompt_sets = model, tokenizer, prompt_sets
        self.layers, self.top = layers, top
        self._states = BlockStates()

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """(j, layer, keys (n, d_ff), block TOP's output (n, d)) for each layer; the caller writes
        LAYER before it asks for the next."""
        for j, layer in enumerate(self.layers):
            keys, H = subject_states(self.model, self.tokenizer, self.prompt_sets, layer, self.top, states=self._states)
            yield j, layer, keys, H
            self._states.changed(layer)

    def top_output(self) -> torch.Tensor:
        """(n, d) float32: block TOP's output at the subjects, once the walk has finished (every
        layer written)."""
        return subject_states(self.model, self.tokenizer, self.prompt_sets, self.top, self.top, states=self._states)[1]


@torch.no_grad()
def subject_keys(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_sets: list[list[tuple[str, str]]],
    layers: list[int],
    batch_size: int = 64,
) -> dict[int, torch.Tensor]:
    """{layer: (n, d_ff) float32}: subject_states' keys for several layers from one forward pass."""
    return _subject_means(model, tokenizer, prompt_sets, layers, max(layers), batch_size)[0]


def _to_subject(encoded: EncodedPrompt) -> EncodedPrompt:
    """ENCODED without the tokens after its subject's last."""
    return replace(encoded, ids=encoded.ids[: encoded.subject_last + 1])


def _counted(pairs: list[tuple[str, str]]) -> list[tuple[tuple[str, str], int]]:
    """PAIRS without repeats, each with how often it occurs, in first-seen order."""
    counts: dict[tuple[str, str], int] = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    return list(counts.items())


def _subject_means(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_sets: list[list[tuple[str, str]]],
    key_layers: list[int],
    out_layer: int,
    batch_size: int,
    states: BlockStates | None = None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    device = arch.input_device(model)
    # (set, encoded prompt, times it occurs in the set): a repeated prompt is run once, weighted;
    # cut after the subject's last token, which no later token reaches (causal attention)
    encoded = [
        (i, _to_subject(encode_prompt(tokenizer, *pair)), float(n))
        for i, pairs in enumerate(prompt_sets)
        for pair, n in _counted(pairs)
    ]
    if not encoded:
        raise ValueError("keys of no prompts: every prompt set is empty")
    encoded.sort(key=lambda item: len(item[1].ids))  # similar lengths share a batch
    keys: dict[int, torch.Tensor] = {}
    hidden: torch.Tensor | None = None
    start = states.start(model, min(key_layers)) if states is not None else 0
    keep = min(key_layers) - 1  # the block below the lowest one observed: the next to be written
    if states is not None:
        states.block = -1  # until every chunk has kept KEEP's output (a pass stopped midway leaves none)
    for lo in range(0, len(encoded), batch_size):
        chunk = encoded[lo : lo + batch_size]
        ids, mask = pad_right([e.ids for _, e, _ in chunk])
        begin = start if resumable(model) else 0  # (a failed check turns resuming off midway)
        found, out = _pass(model, key_layers, out_layer, (ids.to(device), mask.to(device)), states, lo, (begin, keep))
        rows = torch.arange(len(chunk))
        at = torch.tensor([e.subject_last for _, e, _ in chunk])
        owner = torch.tensor([i for i, _, _ in chunk])
        times = torch.tensor([n for _, _, n in chunk], dtype=torch.float64).unsqueeze(1)
        for layer in key_layers:
            k = found[layer][rows.to(found[layer].device), at.to(found[layer].device)].double().cpu() * times
            keys.setdefault(layer, torch.zeros(len(prompt_sets), k.shape[1], dtype=torch.float64))
            keys[layer].index_add_(0, owner, k)
        h = out[rows.to(out.device), at.to(out.device)].double().cpu() * times
        hidden = torch.zeros(len(prompt_sets), h.shape[1], dtype=torch.float64) if hidden is None else hidden
        hidden.index_add_(0, owner, h)
    if hidden is None:  # unreachable (encoded is not empty); narrows the type
        raise ValueError("keys of no prompts")
    if states is not None:
        states.done(keep)
    counts = torch.tensor([len(pairs) for pairs in prompt_sets], dtype=torch.float64).unsqueeze(1)
    return {layer: (k / counts).float() for layer, k in keys.items()}, (hidden / counts).float()


def _pass(
    model: PreTrainedModel,
    key_layers: list[int],
    out_layer: int,
    batch: tuple[torch.Tensor, torch.Tensor],
    states: BlockStates | None,
    chunk: int,
    blocks: tuple[int, int],
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """inputs_and_block_output over BATCH (ids, mask); with STATES, from block BLOCKS[0] (the kept
    output of the block below it standing in for those below), keeping block BLOCKS[1]'s output."""
    ids, mask = batch
    if states is None:
        return inputs_and_block_output(model, key_layers, out_layer, ids, mask)
    start, keep = blocks
    with states.passing(model, chunk, ids, start, keep):
        found, out = inputs_and_block_output(model, key_layers, out_layer, ids, mask)
    if start > 0 and not resume_checked(model):  # once per model class: the same bytes as a whole pass?
        whole = inputs_and_block_output(model, key_layers, out_layer, ids, mask)
        if not check_resumed(model, (found, out), whole):
            return whole
    return found, out
