"""Causal tracing (ROME section 2): where in the network a fact is recalled.

Run the prompt clean; run it again with Gaussian noise added to the subject's token
embeddings (the model loses the fact); then, one (token, layer) at a time, put back the
clean value of a hidden state in the corrupted run and see how much of the clean answer's
probability returns. Three kinds of state: the residual stream after each block ("hidden"),
and the MLP and attention outputs, each restored over a window of layers around the one
named.

Tensors in, tensors out: no files, no plots (factstore.studies.figures draws them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.domain import TracedFact
from factstore.errors import InvalidEditRequest
from factstore.options import KINDS, TraceSettings
from factstore.rome.prompts import decode, encode_prompt, target_ids

# rows of the averaged summary, as in the paper's figure
CATEGORIES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


@dataclass
class TraceResult:
    tokens: list[str]  # the prompt's tokens, decoded one by one
    subject: tuple[int, int]  # first and last subject token (inclusive)
    answer: str  # the clean answer's first token, decoded
    answer_id: int
    clean_prob: float
    corrupted_prob: float
    noise: float
    settings: TraceSettings
    scores: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # kind -> (T, L) P(answer) with (token, layer) restored

    @property
    def peak_mlp_layer(self) -> int:
        return int(self.scores["mlp"][self.subject[1]].argmax())

    def to_json(self) -> dict:
        return {
            "tokens": self.tokens,
            "subject": list(self.subject),
            "answer": self.answer,
            "answer_id": self.answer_id,
            "clean_prob": self.clean_prob,
            "corrupted_prob": self.corrupted_prob,
            "noise": self.noise,
            "samples": self.settings.samples,
            "window": self.settings.window,
            "seed": self.settings.seed,
            "peak_mlp_layer": self.peak_mlp_layer if "mlp" in self.scores else None,
            "scores": {k: v.tolist() for k, v in self.scores.items()},
        }


def subject_span(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str) -> tuple[list[int], int, int]:
    """Token ids of the filled prompt and the first and last token index of the subject."""
    encoded = encode_prompt(tokenizer, prompt, subject)
    start = prompt.index("{}")
    offsets = tokenizer(prompt.replace("{}", subject, 1), return_offsets_mapping=True)["offset_mapping"]
    first = next(i for i, (lo, hi) in enumerate(offsets) if hi > start and hi > lo)
    return encoded.ids, first, encoded.subject_last


def subject_noise_std(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, subjects: Sequence[str]) -> float:
    """Std of the input embeddings of the subjects' tokens (the paper's reference for the noise)."""
    ids = [i for s in subjects for i in tokenizer(s, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.tensor(ids, device=arch.input_device(model)))
    return float(emb.float().std())


def _state_modules(model: PreTrainedModel, kind: str) -> list[nn.Module]:
    spec = arch.model_spec(model)
    part = {"hidden": "", "mlp": spec.mlp, "attn": spec.attn}[kind]
    return [arch.get_module(model, arch.layer_path(model, i, part)) for i in range(arch.num_layers(model))]


def window_layers(layer: int, n_layers: int, kind: str, window: int) -> range:
    """Layers restored together for one cell of a map (ROME's window, centred on the layer)."""
    if kind == "hidden":
        return range(layer, layer + 1)
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def _first(output: Any) -> torch.Tensor:
    """A module's main output: the tensor itself, or the first item of a tuple (attention)."""
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


@contextmanager
def _noised(model: PreTrainedModel, noise: torch.Tensor, first: int, last: int) -> Iterator[None]:
    """Add noise (samples, n_subject, d) to the subject's embeddings; row r gets draw r % samples."""
    samples = noise.shape[0]

    def hook(_mod: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        rows = torch.arange(out.shape[0], device=out.device) % samples
        out[:, first : last + 1] += noise[rows].to(out.dtype)
        return out

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _restored(
    modules: dict[str, list[nn.Module]],
    clean: dict[str, list[torch.Tensor]],
    plan: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[None]:
    """plan: (kind, layer) -> (rows, positions); put the clean state back at output[rows, positions]."""

    def make(
        state: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
    ) -> Callable[[nn.Module, tuple, Any], Any]:
        def hook(_mod: nn.Module, _args: tuple, output: object) -> object:
            hidden = _first(output).clone()
            shaped = arch.by_token(hidden, state.shape[0])  # (B, T, d), also for OPT's (B * T, d)
            shaped[rows, positions] = state[positions].to(hidden.dtype)
            return _replace_first(output, hidden)

        return hook

    with ExitStack() as stack:
        for (kind, layer), (rows, positions) in plan.items():
            handle = modules[kind][layer].register_forward_hook(make(clean[kind][layer], rows, positions))
            stack.callback(handle.remove)
        yield


def _answer_prob(model: PreTrainedModel, ids: torch.Tensor, answer_id: int) -> torch.Tensor:
    """(B,) P(answer) at the last position of each row."""
    rows = torch.arange(ids.shape[0], device=ids.device)
    last = torch.full_like(rows, ids.shape[1] - 1)
    logits = arch.logits_at(model, ids, torch.ones_like(ids), rows, last)
    return torch.softmax(logits.float(), -1)[:, answer_id]


Cell = tuple[str, int, int]  # (kind, layer, token) of one hidden state


class Tracer:
    """One fact: its clean states and its noise draws, ready to score any set of restorations."""

    @torch.no_grad()
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        fact: TracedFact,
        settings: TraceSettings = TraceSettings(),
        noise_std: float | None = None,
        stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.model, self.settings = model, settings
        self.stop = stop  # called before every batch of passes; raises to end the trace there
        device = arch.input_device(model)
        prompt, subject, target = fact.prompt, fact.subject, fact.target
        ids_list, self.first, self.last = subject_span(tokenizer, prompt, subject)
        self.ids = torch.tensor([ids_list], device=device)
        self.tokens = [decode(tokenizer, [i]) for i in ids_list]
        self.n_layers = arch.num_layers(model)
        self.noise = settings.noise_factor * (noise_std or subject_noise_std(model, tokenizer, [subject]))
        self.modules = {kind: _state_modules(model, kind) for kind in KINDS}
        self.clean, logits = self._clean_run()
        self.answer_id = target_ids(tokenizer, target)[0] if target else int(logits.argmax())
        self.answer = decode(tokenizer, [self.answer_id])
        self.clean_prob = float(torch.softmax(logits.float(), -1)[self.answer_id])
        gen = torch.Generator().manual_seed(settings.seed)
        d = arch.weight_param(model.get_input_embeddings()).shape[1]
        self.draws = (torch.randn(settings.samples, self.last - self.first + 1, d, generator=gen) * self.noise).to(
            device
        )

    def _clean_run(self) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
        """Every state of the clean run, kind -> per layer (T, d), and the logits at the last token."""
        T = self.ids.shape[1]
        clean: dict[str, list[torch.Tensor]] = {k: [torch.empty(0)] * self.n_layers for k in KINDS}
        with ExitStack() as stack:
            for kind, mods in self.modules.items():
                for layer, module in enumerate(mods):

                    def keep(_m: nn.Module, _a: tuple, out: Any, kind: str = kind, layer: int = layer) -> None:
                        clean[kind][layer] = arch.by_token(_first(out), T)[0].detach().clone()

                    stack.callback(module.register_forward_hook(keep).remove)
            device = self.ids.device
            logits = arch.logits_at(
                self.model,
                self.ids,
                torch.ones_like(self.ids),
                torch.tensor([0], device=device),
                torch.tensor([T - 1], device=device),
            )
        return clean, logits[0]

    @torch.no_grad()
    def restored(self, groups: Sequence[Sequence[Cell]]) -> torch.Tensor:
        """(len(groups),) mean P(answer) over the noise draws, with each group's cells restored together.

        An empty group is the plain corrupted run. Groups are batched settings.batch_rows rows at a time.
        """
        S = self.settings.samples
        per_batch = max(1, self.settings.batch_rows // S)
        out = torch.empty(len(groups))
        with _noised(self.model, self.draws, self.first, self.last):
            for lo in range(0, len(groups), per_batch):
                self.stop()
                chunk = groups[lo : lo + per_batch]
                rows: dict[tuple[str, int], list[int]] = {}
                positions: dict[tuple[str, int], list[int]] = {}
                for g, cells in enumerate(chunk):
                    for kind, layer, token in cells:
                        rows.setdefault((kind, layer), []).extend(range(g * S, (g + 1) * S))
                        positions.setdefault((kind, layer), []).extend([token] * S)
                device = self.ids.device
                plan = {
                    k: (torch.tensor(rows[k], device=device), torch.tensor(positions[k], device=device)) for k in rows
                }
                with _restored(self.modules, self.clean, plan):
                    probs = _answer_prob(self.model, self.ids.repeat(len(chunk) * S, 1), self.answer_id)
                out[lo : lo + len(chunk)] = probs.view(len(chunk), S).mean(1).cpu()
        return out

    def restoration_map(self, kind: str) -> torch.Tensor:
        """(T, L): P(answer) with the state of (token, layer) restored (over a window for mlp/attn)."""
        T, L = self.ids.shape[1], self.n_layers
        groups = [
            [(kind, w, t) for w in window_layers(layer, L, kind, self.settings.window)]
            for t in range(T)
            for layer in range(L)
        ]
        return self.restored(groups).view(T, L)


def trace(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fact: TracedFact,
    settings: TraceSettings = TraceSettings(),
    noise_std: float | None = None,
    stop: Callable[[], None] = lambda: None,
) -> TraceResult:
    """The maps of settings.kinds for FACT (its target None: the model's own top answer).

    noise_std: the embedding std the noise is scaled from (a dataset's subjects); default:
    this subject's own token embeddings. stop: called between batches of passes (a job's
    cancel and time checks); what it raises ends the trace.
    """
    tracer = Tracer(model, tokenizer, fact, settings, noise_std, stop)
    corrupted = float(tracer.restored([[]])[0])
    scores = {kind: tracer.restoration_map(kind) for kind in settings.kinds}
    return TraceResult(
        tracer.tokens,
        (tracer.first, tracer.last),
        tracer.answer,
        tracer.answer_id,
        tracer.clean_prob,
        corrupted,
        tracer.noise,
        settings,
        scores,
    )


# averaging over many facts -------------------------------------------------------------------


def token_categories(n_tokens: int, first: int, last: int) -> list[list[int]]:
    """Token indices of each of CATEGORIES for one prompt (a category may be empty)."""
    return [
        [first],
        list(range(first + 1, last)),
        [last],
        [last + 1] if last + 1 < n_tokens - 1 else [],
        list(range(last + 2, n_tokens - 1)),
        [n_tokens - 1],
    ]


def summarise(result: TraceResult) -> dict[str, torch.Tensor]:
    """kind -> (len(CATEGORIES), L) mean indirect effect (restored - corrupted) per category; NaN where empty."""
    first, last = result.subject
    groups = token_categories(len(result.tokens), first, last)
    out = {}
    for kind, scores in result.scores.items():
        effect = scores - result.corrupted_prob
        rows = [effect[g].mean(0) if g else torch.full((effect.shape[1],), float("nan")) for g in groups]
        out[kind] = torch.stack(rows)
    return out


def average(summaries: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean over facts, ignoring categories a fact does not have."""
    if not summaries:
        raise InvalidEditRequest("no fact to average: the model knew none of the facts traced")
    return {kind: torch.nanmean(torch.stack([s[kind] for s in summaries]), 0) for kind in summaries[0]}


def peak_layer(averaged: dict[str, torch.Tensor]) -> int:
    """The layer where the MLP's average indirect effect at the last subject token peaks."""
    return int(averaged["mlp"][CATEGORIES.index("last subject token")].argmax())
