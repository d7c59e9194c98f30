"""What an imported edit claims, checked on this machine (a pulled release is untrusted).

A release's manifest labels each stored (k*, v*) with a prompt, a subject and a new object.
The labels decide what a teammate sees in the log, so they are checked against the vectors:

- the key: k* recomputed here from the prompt, the subject and the stored context templates,
  on the head model the edit was computed on (the base with the earlier edits replayed in
  order), must equal the stored key (to a tolerance that covers other hardware);
- the object: an edit's update that pushes some token (CLAIM_PUSH) must raise its new
  object's first token among the most of the vocabulary on its prompt (CLAIM_RANK_SHARE), unless
  that head already answered it: vectors
  computed for another object of the same subject (a relabelled target or relation) push
  that object, not this one;
- the behaviour: the model's own answer to the prompt is taken on that head before the edit;
  the edit took when, after its update, the prompt prefers the new object over that answer.
  The edits that took must still take on the release's weights (checked where the release is
  rebuilt, lineage._check_rebuild), as a local compile requires. The manifest's `target_true`
  and `metrics` play no part.

What cannot be checked: the publisher's intent (an object close to the one the vectors push can
pass), and whether an edit that pushes its object but does not take was meant to: a model that
cannot learn a fact gives such edits honestly, so they are not refused; the release card shows
their efficacy.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.domain import LoggedEdit
from factstore.errors import CompileError, ReleaseVerificationError, shown
from factstore.progress import SILENT, Reporter
from factstore.rome.keys import compute_key, subject_states
from factstore.rome.prompts import pad_right, request_prompts, target_ids
from factstore.rome.scoring import first_phrase, greedy_continuation, target_logprobs
from factstore.weights import band
from factstore.weights.replay import apply_update, edit_vectors, solved_keys

# an edit's new object (its first token) must be among this share of the vocabulary that its update
# raises most on its prompt. Honest edits: at most 5.0 % (200 SmolLM2 band edits, 11 % of which did not
# take; bench/band_hold.py), rank 2 on the suite's trained GPT-2; a relabelled object: 99.99 % (it fell
# 8.7 nats). A quarter leaves a long log's tail room; a pushed object's rivals fall
CLAIM_RANK_SHARE = 0.25
CLAIM_PUSH = 1.0  # nats: an edit whose update raises no token's log-probability this much pushes nothing
HandleT = TypeVar("HandleT", bound=Hashable)  # how the log's edits name their C (domain.LoggedEdit)
KEY_TOLERANCE = 1e-3  # ||k here - k stored|| / ||k stored|| in float32; low precision gets 8 of its epsilons


@dataclass(frozen=True)
class Judged:
    """An imported edit as judged on its own head: the prompt's answer before it, and whether
    the edit took (its new object preferred to that answer right after its update)."""

    text: str
    target: str
    answer: str
    took: bool


def key_tolerance(model: PreTrainedModel, layer: int) -> float:
    return max(KEY_TOLERANCE, 8 * torch.finfo(arch.down_proj_param(model, layer).dtype).eps)


def check_heads(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    log: Sequence[LoggedEdit[HandleT]],
    imported: Collection[int],
    templates: Callable[[LoggedEdit[Any]], list[str]],
    covariance: Callable[[HandleT], torch.Tensor],
    progress: Reporter = SILENT,
) -> dict[int, Judged]:
    """Replay LOG in order on MODEL (its base weights; changed on return: the caller restores
    them) and judge each edit whose seq is in IMPORTED on the head it was computed on (by seq). Raises
    ReleaseVerificationError naming the first edit whose key or behaviour is not its label's."""
    todo, judged = set(imported), {}
    ordered = sorted(log, key=lambda e: e.seq)
    solved = solved_keys(model, ordered, covariance)  # C^-1 k does not depend on the weights: one solve per C
    with torch.no_grad(), progress.task("checking the imported edits against their labels", len(todo)) as advance:
        for position, edit in enumerate(ordered, start=1):
            key, value = edit_vectors(edit)
            if edit.seq in todo:
                _check_key(model, tokenizer, edit, key, templates(edit), position)
                text, answer, before = _before(model, tokenizer, edit, templates(edit))
            try:
                apply_update(model, edit.layer, key, value, solved[edit.seq], f"edit {position}")
            except CompileError as exc:  # a crafted value that no update can hold (say, past the dtype's range)
                raise ReleaseVerificationError(str(exc)) from None
            if edit.seq in todo:
                judged[edit.seq] = _judge(model, tokenizer, edit, (text, answer, before), templates(edit), position)
                advance(len(judged))
    return judged


def _check_key(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    edit: LoggedEdit[Any],
    stored: torch.Tensor,
    templates: list[str],
    position: int,
) -> None:
    here = compute_key(model, tokenizer, edit.request(), edit.layer, templates).double().cpu()
    error = float((here - stored.double()).norm() / stored.double().norm().clamp_min(1e-12))
    if not error <= key_tolerance(model, edit.layer):
        raise ReleaseVerificationError(
            f"edit {position} of the release: its key is not the key of {edit.subject[:60]!r} in its prompt "
            f"(relative difference {error:.2g}); the vectors belong to another fact than its label"
        )


def _before(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, edit: LoggedEdit[Any], templates: list[str]
) -> tuple[str, str, torch.Tensor]:
    """On the head before EDIT: its prompt's text, the model's own answer to it and the mean
    next-token log-probabilities (V,) after its prompt in each context template."""
    text = edit.prompt.replace("{}", edit.subject, 1)
    answer = first_phrase(greedy_continuation(model, tokenizer, text))
    return text, answer, _next_logprobs(model, tokenizer, edit, templates)


def _next_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, edit: LoggedEdit[Any], templates: list[str]
) -> torch.Tensor:
    """(V,) next-token log-probabilities after EDIT's prompt, averaged over its context
    templates (the prompts its value was optimised on carry such prefixes)."""
    rows = [
        list(tokenizer(p.replace("{}", edit.subject, 1))["input_ids"])
        for p in request_prompts(edit.request(), templates)
    ]
    ids, mask = pad_right(rows)
    device = arch.input_device(model)
    last = torch.tensor([len(r) - 1 for r in rows], device=device)
    logits = arch.logits_at(model, ids.to(device), mask.to(device), torch.arange(len(rows), device=device), last)
    return torch.log_softmax(logits.float(), -1).mean(0).cpu()


def _judge(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    edit: LoggedEdit[Any],
    before: tuple[str, str, torch.Tensor],
    templates: list[str],
    position: int,
) -> Judged:
    """After the edit's update: did it take (its new object beats the answer before it)? The
    edit must also push its own new object: its first token among the CLAIM_RANK_SHARE of tokens whose
    log-probability after the prompt (in its context templates) the update raised most, unless
    the head already answered it or the edit pushes no token at all (by less than CLAIM_PUSH:
    an optimisation that failed, which claims nothing). Vectors computed for another object
    push that one instead."""
    text, answer, logp = before
    judgeable = bool(answer) and answer.strip().lower() != edit.target_new.strip().lower()
    if judgeable:
        rises = _next_logprobs(model, tokenizer, edit, templates) - logp  # (V,)
        first = target_ids(tokenizer, edit.target_new)[0]
        rank = int((rises > rises[first]).sum())
        if float(rises.max()) >= CLAIM_PUSH and rank >= CLAIM_RANK_SHARE * rises.numel():
            raise ReleaseVerificationError(
                f"edit {position} of the release does not push its own new object {shown(edit.target_new)}: "
                f"{rank} of {rises.numel()} tokens rose more after it on its prompt ({float(rises[first]):+.1f} "
                "nats); the vectors belong to another fact than its label"
            )
    took = judgeable and _prefers(model, tokenizer, [(text, edit.target_new, answer)])[0]
    return Judged(text, edit.target_new, answer, took)


def _prefers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, queries: list[tuple[str, str, str]]
) -> list[bool]:
    """For each (text, new, old): the new object's mean log-probability beats the old one's."""
    if not queries:
        return []
    texts = [t for t, _, _ in queries for _ in (0, 1)]
    targets = [x for _, new, old in queries for x in (new, old)]
    logp = target_logprobs(model, tokenizer, texts, targets).view(-1, 2)
    return (logp[:, 0] > logp[:, 1]).tolist()


def still_taking(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, judged: dict[int, Judged]
) -> dict[int, bool]:
    """Edit seq -> its new object still beats its answer on MODEL, for the edits that took."""
    took = {i: j for i, j in judged.items() if j.took}
    prefers = _prefers(model, tokenizer, [(j.text, j.target, j.answer) for j in took.values()])
    return dict(zip(took, prefers))


# a band edit's upper keys were measured with its whole batch's lower asks written (weights/band.py),
# and after edits a log may have retracted since: 1.4 % median, 3.8 % max on 1,000 SmolLM2 edits
# (batch 8), where two subjects' keys differ by 83 % or more (docs/results.md, bench/band_drift.py)
BAND_KEY_TOLERANCE = 0.1


@dataclass(frozen=True, slots=True)
class BandCompile(Generic[HandleT]):
    """How a log registered over bands compiles: C of a layer as an edit's compile reads it, and
    the soft solve's (weight, alpha)."""

    covariance: band.LayerCovariance[HandleT]
    soft: tuple[float, float]


@dataclass(frozen=True, slots=True)
class _BandLayers(Generic[HandleT]):
    """MODEL's band layers, rewritten from their base weights (BASE) as band compiles of asks."""

    model: PreTrainedModel
    base: dict[int, tuple[torch.Tensor, torch.Tensor | None]]
    solve: BandCompile[HandleT]

    def write(
        self,
        layer: int,
        rows: list[tuple[torch.Tensor, torch.Tensor]] | None,
        owner: LoggedEdit[HandleT] | None,
        edits: Sequence[LoggedEdit[HandleT]],
    ) -> None:
        """LAYER as the compile of ROWS (the asks of EDITS) with C of OWNER's spec (the edit asking
        last); no rows: its base weights."""
        soft = band.layer_soft(self.solve.soft, layer, band.tops(edits))
        delta = band.layer_delta(rows, self.solve.covariance(owner, layer), soft) if rows and owner else None
        band.write_layer(self.model, layer, self.base[layer][0], delta)


def check_band_heads(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    log: Sequence[LoggedEdit[HandleT]],
    imported: Collection[int],
    templates: Callable[[LoggedEdit[Any]], list[str]],
    solve: BandCompile[HandleT],
    progress: Reporter = SILENT,
) -> dict[int, Judged]:
    """check_heads for a log registered over bands: the head of each edit is the band compile of
    the edits before it. Every key a band compile reads (the edit's key at each layer of its
    band) must be its subject's, measured as registration measured it: on that head, with the
    edit's own asks of the layers below written. Registration measures a batch together, so
    batch-mates' lower asks moved the upper keys a little: those get BAND_KEY_TOLERANCE, the
    lowest layer's key (which no ask of the same band reaches) the strict one. k* is not read
    by a band compile and not checked (it moves most: up to 7.5 % on SmolLM2).
    MODEL holds the base weights; changed on return (the caller restores them)."""
    todo, judged = set(imported), {}
    ordered = sorted(log, key=lambda e: e.seq)
    layers = {e.layer for e in ordered} | {a.layer for e in ordered for a in e.band}
    holding: list[int | None] = [None]  # the model holds the compile of ordered[:holding[0]]
    base = {layer: (arch.down_proj_weight(model, layer).clone(), arch.down_proj_bias(model, layer)) for layer in layers}
    written = _BandLayers(model, base, solve)

    def compile_prefix(count: int) -> band.Asks:
        asks, last = band.collect(ordered[:count], edit_vectors, base.__getitem__)
        if holding[0] != count:  # the judge of the edit before left this very compile in place
            for layer in base:
                written.write(layer, asks.get(layer), last.get(layer), ordered[:count])
            holding[0] = count
        return asks

    with torch.no_grad(), progress.task("checking the imported edits against their labels", len(todo)) as advance:
        for position, edit in enumerate(ordered, start=1):
            if edit.seq not in todo:
                continue
            earlier = compile_prefix(position - 1)
            text, answer, before = _before(model, tokenizer, edit, templates(edit))
            if not edit.band:  # a band compile reads no k*: every key it reads is checked below
                _check_key(model, tokenizer, edit, edit_vectors(edit)[0], templates(edit), position)
            _check_band_keys(written, tokenizer, ordered[:position], templates(edit), earlier)
            holding[0] = None  # its own asks are written on the layers below: not a compile of any prefix
            compile_prefix(position)
            judged[edit.seq] = _judge(model, tokenizer, edit, (text, answer, before), templates(edit), position)
            advance(len(judged))
    return judged


def _check_band_keys(
    written: _BandLayers[HandleT],
    tokenizer: PreTrainedTokenizerBase,
    prefix: Sequence[LoggedEdit[HandleT]],
    templates: list[str],
    earlier: band.Asks,
) -> None:
    """The keys of PREFIX's last edit (band.key_prompts on the model as its registration saw it)
    against its stored ones; each of its asks is written as it goes."""
    model, edit, position = written.model, prefix[-1], len(prefix)
    prompts = [band.key_prompts(edit.request(), templates, band.plain_weight(edit))]
    for j, ask in enumerate(edit.band):
        here = subject_states(model, tokenizer, prompts, ask.layer, ask.layer)[0][0].double()
        stored = band.vector(ask.key).double()
        error = float((here - stored).norm() / stored.norm().clamp_min(1e-12))
        if not error <= (key_tolerance(model, ask.layer) if j == 0 else BAND_KEY_TOLERANCE):
            raise ReleaseVerificationError(
                f"edit {position} of the release: its key of layer {ask.layer} is not the key of {edit.subject[:60]!r} "
                f"in its prompt (relative difference {error:.2g}); the vectors belong to another fact than its label"
            )
        rows = [*earlier.get(ask.layer, []), (band.vector(ask.key), band.vector(ask.target))]
        written.write(ask.layer, rows, edit, prefix)
