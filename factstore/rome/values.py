"""The value v*: the down-projection output that makes the model say the new target.

Several requests of one layer are optimised together, as MEMIT computes its z vectors: each
request has its own delta and its own rows in one padded batch, and its own loss, so its
result equals a run on its own (Adam is elementwise; only padding changes float rounding).
A request leaves the batch when its loss is below the early-stop threshold.

Each step runs as little of the model as delta can change (LOOPS): "whole" runs the model;
"upper" only the blocks from the edit layer up (the states below are the same every step);
"suffix" also only the positions from the subject's last token on (rows are left-padded so
that those tokens line up, and every block's keys and values of the positions before come
from a cache filled once). "suffix" checks itself against the model on the first pass and
falls back to "upper" for a family whose cache or padding does not reproduce it."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.domain import EditRequest
from factstore.rome.hooks import add_per_row, capture, edit_output
from factstore.rome.hparams import ROMEHyperParams
from factstore.rome.prompts import check_fits, encode_prompt, pad_right, request_prompts, target_ids
from factstore.rome.stack import SuffixUnsupported, UpperStack, prefix_cache, record_suffix, recording

log = logging.getLogger(__name__)

RECAPTURE_FRACTION = 0.75  # re-record the upper stack once the active rows fall below this share
LOOPS = ("whole", "upper", "suffix")
SELF_CHECK_TOLERANCE = 1e-3  # max |logit difference| / max |logit| between the suffix loop and the model (float32)


@dataclass(frozen=True)
class ValueResult:
    value: torch.Tensor  # v* (d_model,) float32
    v0: torch.Tensor  # the unedited output at the subject's last token of the bare prompt
    loss: float  # final optimisation loss
    steps: int  # gradient steps taken


@dataclass(frozen=True)
class _Rows:
    """One request's rows: rewrite prompts (each followed by the target but its last token), then one essence prompt."""

    rows: list[list[int]]
    subject_pos: list[int]
    target: list[int]
    target_starts: list[int]  # per rewrite row: position whose logits predict the first target token


@dataclass(frozen=True)
class _Batch:
    ids: torch.Tensor  # (R, L) right-padded
    mask: torch.Tensor  # (R, L)
    owner: torch.Tensor  # (R,) index (into the active requests) of the request each row belongs to
    subject_pos: torch.Tensor  # (R,) subject's last token per row
    nll_rows: torch.Tensor  # (E,) one entry per (rewrite row, target token)
    nll_pos: torch.Tensor  # (E,)
    nll_token: torch.Tensor  # (E,)
    nll_owner: torch.Tensor  # (E,)
    kl_rows: torch.Tensor  # (A,) the essence row of each active request
    kl_pos: torch.Tensor  # (A,) its last token
    v0_rows: torch.Tensor  # (A,) the bare-prompt row ("{}" template) of each active request
    position_ids: torch.Tensor | None = None  # (R, L) for left-padded rows; None: right-padded, 0..L-1
    split: int = 0  # aligned batches: the column every row's subject ends in

    def to(self, device: torch.device) -> _Batch:
        return replace(
            self,
            **{
                n: getattr(self, n).to(device)
                for n in self.__dataclass_fields__
                if isinstance(getattr(self, n), torch.Tensor)
            },
        )

    def suffix(self) -> _Batch:
        """Positions relative to the split: what the suffix loop's columns are."""
        s = self.split
        return replace(self, subject_pos=self.subject_pos - s, nll_pos=self.nll_pos - s, kl_pos=self.kl_pos - s)


def _encode(
    tokenizer: PreTrainedTokenizerBase, request: EditRequest, templates: list[str], kl_prompt: str, max_len: int
) -> _Rows:
    tgt = target_ids(tokenizer, request.target_new)
    rewrite = [encode_prompt(tokenizer, p, request.subject) for p in request_prompts(request, templates)]
    essence = encode_prompt(tokenizer, kl_prompt, request.subject)
    for enc in rewrite:
        check_fits(len(enc.ids), len(tgt), max_len)
    return _Rows(
        rows=[e.ids + tgt[:-1] for e in rewrite] + [essence.ids],
        subject_pos=[e.subject_last for e in rewrite] + [essence.subject_last],
        target=tgt,
        target_starts=[len(e.ids) - 1 for e in rewrite],
    )


def _assemble(parts: list[_Rows], align: bool = False) -> _Batch:
    """One padded batch; align: left-pad each row so that every subject ends in the same column."""
    rows: list[list[int]] = []
    owner: list[int] = []
    subject_pos: list[int] = []
    nll: list[tuple[int, int, int, int]] = []  # (row, position, token, owner)
    kl_rows: list[int] = []
    kl_pos: list[int] = []
    v0_rows: list[int] = []
    for a, part in enumerate(parts):
        base = len(rows)
        v0_rows.append(base)
        for r, start in enumerate(part.target_starts):
            nll.extend((base + r, start + j, tok, a) for j, tok in enumerate(part.target))
        kl_rows.append(base + len(part.rows) - 1)
        kl_pos.append(len(part.rows[-1]) - 1)
        rows.extend(part.rows)
        subject_pos.extend(part.subject_pos)
        owner.extend([a] * len(part.rows))
    split = max(subject_pos) if align else 0
    shift = [split - p if align else 0 for p in subject_pos]  # left padding per row
    ids, mask = pad_right([[0] * k + r for k, r in zip(shift, rows)])
    for r, k in enumerate(shift):
        mask[r, :k] = 0
    n_row, n_pos, n_tok, n_own = (torch.tensor(c) for c in zip(*nll))
    offset = torch.tensor(shift)
    return _Batch(
        ids=ids,
        mask=mask,
        owner=torch.tensor(owner),
        subject_pos=torch.tensor(subject_pos) + offset,
        nll_rows=n_row,
        nll_pos=n_pos + offset[n_row],
        nll_token=n_tok,
        nll_owner=n_own,
        kl_rows=torch.tensor(kl_rows),
        kl_pos=torch.tensor(kl_pos) + offset[torch.tensor(kl_rows)],
        v0_rows=torch.tensor(v0_rows),
        position_ids=(mask.cumsum(1) - 1).clamp(min=0) if align else None,
        split=split,
    )


def _log_probs(
    model: PreTrainedModel, batch: _Batch, stack: UpperStack | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target log-probabilities (E,), whether each target token is the top-1 (E,) bool, and the
    essence log-distributions (A, V), float32."""
    rows = torch.cat([batch.nll_rows, batch.kl_rows])
    positions = torch.cat([batch.nll_pos, batch.kl_pos])
    if stack is None:
        logits = arch.logits_at(model, batch.ids, batch.mask, rows, positions)
    else:
        logits = stack.logits_at(rows, positions)
    logp = torch.log_softmax(logits.float(), dim=-1)
    n = batch.nll_rows.numel()
    tokens = batch.nll_token.to(logp.device)
    token_logp = logp[:n].gather(1, tokens.unsqueeze(1)).squeeze(1)
    return token_logp, logp[:n].argmax(dim=-1) == tokens, logp[n:]


def _per_request(values: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) mean of values (E,) over the entries of each request."""
    owner = owner.to(values.device)
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, owner, values)
    counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, owner, torch.ones_like(values))
    return sums / counts


def choose_loop(device: torch.device, requests: int) -> str:
    """suffix, except for one request on an accelerator: there a step of the suffix loop is many
    small per-block launches, and upper was faster (H200, GPT-2 XL shape: 0.78 s against 1.39 s
    per float32 edit, 0.73 against 4.42 in bfloat16; docs/benchmarks.md); batches keep suffix
    (float32 x16: 0.22 s against 0.41 per edit, half the memory)."""
    return "upper" if device.type != "cpu" and requests == 1 else "suffix"


def compute_values(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: list[EditRequest],
    templates: list[str],
    hparams: ROMEHyperParams,
    loop: str = "auto",
) -> list[ValueResult]:
    """Optimise one delta per request added to the layer's MLP output at its subject; v* = v0 + delta.
    loop: how much of the model each step runs (LOOPS; "whole" is the reference the tests compare
    to; "auto": choose_loop)."""
    device = arch.input_device(model)
    loop = choose_loop(device, len(requests)) if loop == "auto" else loop
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS} or auto")
    module = arch.down_proj(model, hparams.layer)
    parts = [_encode(tokenizer, r, templates, hparams.kl_prompt, arch.context_length(model)) for r in requests]
    results: dict[int, ValueResult] = {}
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        run = _Run(model, module, parts, hparams, device, loop)
        while run.active:
            run.segment(results)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return [results[i] for i in range(len(requests))]


class _Run:
    """The optimisation state of a batch: per-request delta, reference distribution and v0."""

    def __init__(
        self,
        model: PreTrainedModel,
        module: torch.nn.Module,
        parts: list[_Rows],
        hp: ROMEHyperParams,
        device: torch.device,
        loop: str,
    ) -> None:
        self.model, self.module, self.parts, self.hp = model, module, parts, hp
        self.device, self.loop = device, loop
        self.active = list(range(len(parts)))
        self.step = 0
        self.loss: dict[int, float] = {}
        self.top1_steps: dict[int, int] = {}  # consecutive steps with the target top-1 on every rewrite prompt
        batch, stack, kl_init, outputs = self._record()
        outputs = arch.by_token(outputs, batch.ids.shape[1])  # (R, L, d)
        at = batch.subject_pos[batch.v0_rows] + batch.split  # in the recorded pass's columns
        v0 = outputs[batch.v0_rows.to(outputs.device), at.to(outputs.device)].float()  # (n, d)
        self.v0 = [v0[i].detach() for i in range(len(parts))]
        self.kl_init = [kl_init[i] for i in range(len(parts))]  # (V,) log-probabilities with delta = 0
        self.delta = [torch.zeros_like(v, requires_grad=True) for v in self.v0]
        self.opt = torch.optim.Adam(self.delta, lr=hp.lr)
        self._pending: tuple[_Batch, UpperStack | None] | None = (batch, stack)

    def _record(self) -> tuple[_Batch, UpperStack | None, torch.Tensor, torch.Tensor]:
        """One pass without delta over the active requests: their batch (in the step loop's
        coordinates), the stack the steps run, the essence distributions (A, V) and the layer's
        outputs (in the batch's own coordinates)."""
        if self.loop == "suffix":
            found = self._record_suffix()
            if found is not None:
                return found
            self.loop = "upper"  # this family's cache does not reproduce the model: run every position
        batch = _assemble([self.parts[i] for i in self.active]).to(self.device)
        context = recording(self.model, self.hp.layer) if self.loop == "upper" else nullcontext(None)
        with torch.no_grad(), capture(self.module) as seen, context as stack:
            _, _, kl_logp = _log_probs(self.model, batch, None)
        return batch, stack, kl_logp, seen.output

    @torch.no_grad()
    def _record_suffix(self) -> tuple[_Batch, UpperStack | None, torch.Tensor, torch.Tensor] | None:
        """The suffix loop's pass: the whole aligned batch once, filling the cache; its positions
        from the split on once more, recording the blocks above the edit; the essence logits
        through that record must equal the model's on each essence prompt alone, unpadded (else
        None): that checks the cache and the left padding (position ids) of this family."""
        batch = _assemble([self.parts[i] for i in self.active], align=True).to(self.device)
        model = self.model
        if batch.position_ids is None:
            raise ValueError("an aligned batch carries its position ids")  # _assemble(align=True) sets them
        try:
            with capture(self.module) as seen:  # the layer's outputs on the whole batch, the prefix's pass
                cache = prefix_cache(model, batch.ids, batch.mask, batch.position_ids, batch.split)
        except SuffixUnsupported as exc:
            _say_once(model, "unsupported", f"its forward cannot run from a cached prefix: {exc}")
            return None
        stack = record_suffix(model, self.hp.layer, batch.ids, batch.mask, batch.position_ids, cache, batch.split)
        steps = batch.suffix()
        again = stack.logits_at(steps.kl_rows, steps.kl_pos)
        # the reference: each essence prompt alone, unpadded on the left (as the other loops see it)
        essence = [self.parts[i].rows[-1] for i in self.active]
        ids, mask = pad_right(essence)
        last = torch.tensor([len(r) - 1 for r in essence])
        reference = arch.logits_at(model, ids.to(self.device), mask.to(self.device), torch.arange(len(essence)), last)
        error = (again - reference.to(again.device)).abs().max() / reference.abs().max().clamp(min=1e-6)
        weight_dtype = arch.down_proj_param(model, self.hp.layer).dtype
        limit = max(SELF_CHECK_TOLERANCE, 4 * torch.finfo(weight_dtype).eps)
        if not bool(torch.isfinite(again).all()) or float(error) > limit:
            _say_once(
                model, "mismatch", f"its logits differ from the model's by {float(error):.2g} (limit {limit:.2g})"
            )
            return None
        return steps, stack, torch.log_softmax(reference.float(), dim=-1), seen.output

    def segment(self, results: dict[int, ValueResult]) -> None:
        """Steps on the current batch until the optimisation ends or enough requests left it."""
        if self._pending is not None:
            batch, stack = self._pending
            self._pending = None
        else:
            batch, stack, _, _ = self._record()
        rows = batch.ids.shape[0]
        while self.active:
            if self.step >= self.hp.steps:
                for i in self.active:
                    results[i] = self._result(i)
                self.active = []
                return
            self.step += 1
            losses, top1 = self._losses(batch, stack)
            values = losses.tolist()
            for j, i in enumerate(self.active):
                self.loss[i] = values[j]
                self.top1_steps[i] = self.top1_steps.get(i, 0) + 1 if top1[j] else 0
            done = {j for j, i in enumerate(self.active) if self._converged(i)}
            for j in sorted(done):
                results[self.active[j]] = self._result(self.active[j])
            keep = [j for j in range(len(self.active)) if j not in done]
            if keep:
                self.opt.zero_grad(set_to_none=True)
                losses[keep].sum().backward()
                self.opt.step()
                self._clamp([self.active[j] for j in keep])
            if done:
                self.active = [self.active[j] for j in keep]
                kept_rows = sum(len(self.parts[i].rows) for i in self.active)
                if kept_rows < RECAPTURE_FRACTION * rows:
                    return  # re-record a smaller batch
                batch = _drop(batch, keep)

    def _converged(self, i: int) -> bool:
        """Below the early-stop loss, or (MPES) top-1 for top1_patience steps after the first."""
        patience = self.hp.top1_patience
        return self.loss[i] < self.hp.early_stop_loss or (patience is not None and self.top1_steps[i] > patience)

    def _losses(self, batch: _Batch, stack: UpperStack | None) -> tuple[torch.Tensor, list[bool]]:
        """(A,) loss of each active request (target NLL + KL on the essence prompt + norm penalty)
        and whether each has its target top-1 at every target token of every rewrite prompt."""
        deltas = torch.stack([self.delta[i] for i in self.active])  # (A, d)
        with edit_output(self.module, add_per_row(deltas, batch.owner, batch.subject_pos)):
            token_logp, is_top1, kl_logp = _log_probs(self.model, batch, stack)
        n = len(self.active)
        missed = _per_request((~is_top1).float(), batch.nll_owner, n)  # share of target tokens not top-1
        nll = _per_request(-token_logp, batch.nll_owner, n)
        kl_init = torch.stack([self.kl_init[i] for i in self.active]).to(kl_logp.device)
        kl = (kl_logp.exp() * (kl_logp - kl_init)).sum(-1)  # KL(P_delta || P_0) per essence row
        v0_norm = torch.stack([self.v0[i].norm() for i in self.active]).to(nll.device)
        decay = deltas.norm(dim=1).to(nll.device) / v0_norm**2  # ROME's form: ||delta|| / ||v0||^2
        return nll + self.hp.kl_factor * kl + self.hp.weight_decay * decay, (missed == 0).tolist()

    @torch.no_grad()
    def _clamp(self, requests: list[int]) -> None:
        """Project each delta back into its ball ||delta|| <= clamp_norm_factor * ||v0||."""
        for i in requests:
            max_norm = self.hp.clamp_norm_factor * self.v0[i].norm()
            if self.delta[i].norm() > max_norm:
                self.delta[i].mul_(max_norm / self.delta[i].norm())

    def _result(self, i: int) -> ValueResult:
        return ValueResult(
            value=(self.v0[i] + self.delta[i]).detach(),
            v0=self.v0[i],
            loss=self.loss.get(i, float("inf")),
            steps=self.step,
        )


_said: set[tuple[str, str]] = set()  # (family, kind) already logged: once per process, not per batch


def _say_once(model: PreTrainedModel, kind: str, reason: str) -> None:
    """Log why this family's steps run the upper loop instead, the first time only."""
    family = type(model).__name__
    if (family, kind) not in _said:
        _said.add((family, kind))
        log.info("suffix loop off for %s, the upper loop runs instead: %s", family, reason)


def _drop(batch: _Batch, keep: list[int]) -> _Batch:
    """The same batch with only the entries of the kept requests counted (rows stay: no re-record).

    Rows of requests that left still run, with their delta fixed, but no longer add to any loss."""
    remap = torch.full((len(batch.kl_rows),), -1, dtype=torch.long)
    remap[torch.tensor(keep)] = torch.arange(len(keep))

    def moved(owners: torch.Tensor) -> torch.Tensor:
        owners = owners.cpu()
        return torch.where(owners >= 0, remap[owners.clamp(min=0)], -1)

    owner, nll_owner = moved(batch.owner), moved(batch.nll_owner)
    kept_entries = (nll_owner >= 0).nonzero().squeeze(1)
    kept = torch.tensor(keep)
    device = batch.ids.device
    return replace(
        batch,
        owner=owner.to(device),
        nll_rows=batch.nll_rows[kept_entries.to(device)],
        nll_pos=batch.nll_pos[kept_entries.to(device)],
        nll_token=batch.nll_token[kept_entries.to(device)],
        nll_owner=nll_owner[kept_entries].to(device),
        kl_rows=batch.kl_rows[kept.to(device)],
        kl_pos=batch.kl_pos[kept.to(device)],
        v0_rows=batch.v0_rows[kept.to(device)],
    )


def compute_value(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    templates: list[str],
    hparams: ROMEHyperParams,
    loop: str = "suffix",
) -> ValueResult:
    """v* for one request."""
    return compute_values(model, tokenizer, [request], templates, hparams, loop)[0]
