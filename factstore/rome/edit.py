"""One ROME edit: compute (key, value) on a model without changing it; apply separately."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.domain import EditRequest
from factstore.errors import NumericalError
from factstore.rome.hparams import ROMEHyperParams
from factstore.rome.keys import ContextTemplates, compute_keys, sample_contexts
from factstore.rome.prompts import check_fits, encode_prompt, target_ids
from factstore.rome.scoring import first_phrase, greedy_continuation, target_probs
from factstore.rome.update import rank_one_delta
from factstore.rome.values import compute_values


@dataclass(frozen=True)
class EditResult:
    key: torch.Tensor  # k* (d_ff,) float32
    value: torch.Tensor  # v* (d_model,) float32
    layer: int
    module: str  # full name of the rewritten down-projection
    target_true: str  # what the model said before (given, or its greedy answer)
    prob_new_before: float
    prob_true_before: float
    prob_new_after: float
    prob_true_after: float
    loss: float  # final v* optimisation loss
    seconds: dict[str, float] = field(default_factory=dict)  # key / value / update / score


def add_delta(model: PreTrainedModel, layer: int, delta: torch.Tensor) -> None:
    """W += delta for an (out, in) delta, honouring the stored orientation; refuses non-finite results."""
    weight = arch.down_proj_param(model, layer)
    oriented = delta.T if arch.model_spec(model).fan_in_fan_out else delta
    updated = (weight.data.double() + oriented.to(weight.device)).to(weight.dtype)
    if not torch.isfinite(updated).all():  # after the cast: past the dtype's range is not finite either
        raise NumericalError(f"the update of layer {layer} produced non-finite weights; nothing was changed")
    weight.data.copy_(updated)


def rank_one_for(
    model: PreTrainedModel, layer: int, key: torch.Tensor, value: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """The (out, in) rank-one delta that makes the current layer map key to value."""
    W, b = arch.down_proj_weight(model, layer), arch.down_proj_bias(model, layer)
    device = W.device
    return rank_one_delta(W, b, key.to(device), value.to(device), C.to(device))


def apply_edit(model: PreTrainedModel, layer: int, key: torch.Tensor, value: torch.Tensor, C: torch.Tensor) -> None:
    """Rewrite the layer in place so that it maps key to value."""
    add_delta(model, layer, rank_one_for(model, layer, key, value, C))


class Snapshot:
    """The down-projection weights of some layers as they were when taken; `restore()` (or the
    end of a `with` block) writes them back bit-exactly. The one way factstore undoes a weight
    change: the head equals the base plus the log only if every change is undone exactly."""

    def __init__(self, model: PreTrainedModel, layers: Iterable[int] = ()) -> None:
        self.model = model
        self.saved: dict[int, torch.Tensor] = {}  # layer -> the parameter's data, as stored
        self.add(layers)

    def add(self, layers: Iterable[int]) -> None:
        """Also take LAYERS not taken yet, as they are now."""
        for layer in sorted(set(layers) - self.saved.keys()):
            self.saved[layer] = arch.down_proj_param(self.model, layer).detach().clone()

    @property
    def layers(self) -> list[int]:
        return list(self.saved)

    def restore(self) -> None:
        for layer, weight in self.saved.items():
            arch.down_proj_param(self.model, layer).data.copy_(weight)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def validate_request(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, request: EditRequest, layer: int
) -> None:
    """Raise InvalidEditRequest for anything compute_edit would refuse, before any heavy work."""
    arch.model_spec(model)  # unknown architectures fail here
    arch.check_layer(model, layer)
    encoded = encode_prompt(tokenizer, request.prompt, request.subject)
    check_fits(len(encoded.ids), len(target_ids(tokenizer, request.target_new)), arch.context_length(model))


def contexts_for(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, hparams: ROMEHyperParams
) -> ContextTemplates:
    return sample_contexts(
        model, tokenizer, hparams.context_seed, hparams.context_lengths, hparams.value_context_lengths
    )


def compute_edit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    hparams: ROMEHyperParams,
    C: torch.Tensor,
    templates: ContextTemplates | None = None,
) -> EditResult:
    """k*, v* and before/after probabilities for one request; the model is left unchanged."""
    return compute_edits(model, tokenizer, [request], hparams, C, templates)[0]


def compute_edits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: list[EditRequest],
    hparams: ROMEHyperParams,
    C: torch.Tensor,
    templates: ContextTemplates | None = None,
    loop: str = "auto",
) -> list[EditResult]:
    """k*, v* and before/after probabilities for requests of one layer, all computed on the
    model as it is (keys and values in one batch each); the model is left unchanged.

    Each request's "after" is measured with its own update alone. Seconds are the batch's
    per phase divided by its size. loop: how much of the model each v* step runs (values.LOOPS)."""
    layer = hparams.layer
    for request in requests:
        validate_request(model, tokenizer, request, layer)
    templates = templates or contexts_for(model, tokenizer, hparams)
    clock = time.perf_counter()
    texts = [r.text for r in requests]
    truths = [r.target_true or first_phrase(greedy_continuation(model, tokenizer, r.text)) for r in requests]
    targets = [t for r, truth in zip(requests, truths) for t in (r.target_new, truth or r.target_new)]
    before = target_probs(model, tokenizer, [t for t in texts for _ in (0, 1)], targets).view(-1, 2)
    seconds = {"score": time.perf_counter() - clock}

    clock = time.perf_counter()
    keys = compute_keys(model, tokenizer, requests, layer, templates.key)
    seconds["key"] = time.perf_counter() - clock
    clock = time.perf_counter()
    values = compute_values(model, tokenizer, requests, templates.value, hparams, loop)
    seconds["value"] = time.perf_counter() - clock

    results = []
    for i, (request, key, value) in enumerate(zip(requests, keys, values)):
        clock = time.perf_counter()
        with Snapshot(model, [layer]):
            apply_edit(model, layer, key, value.value, C)
            seconds["update"] = seconds.get("update", 0.0) + time.perf_counter() - clock
            after = target_probs(model, tokenizer, [request.text] * 2, targets[2 * i : 2 * i + 2])
        seconds["score"] += time.perf_counter() - clock
        results.append((key, value, after))
    seconds["score"] -= seconds["update"]
    per_edit = {name: s / len(requests) for name, s in seconds.items()}
    return [
        EditResult(
            key=key.cpu(),
            value=value.value.cpu(),
            layer=layer,
            module=arch.down_proj_name(model, layer),
            target_true=truth,
            prob_new_before=float(before[i, 0]),
            prob_true_before=float(before[i, 1]),
            prob_new_after=float(after[0]),
            prob_true_after=float(after[1]),
            loss=value.loss,
            seconds=dict(per_edit),
        )
        for i, ((key, value, after), truth) in enumerate(zip(results, truths))
    ]
