"""The value v*: the down-projection output that makes the model say the new target."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from factstore import arch
from factstore.domain import EditRequest
from factstore.rome.hooks import add_at_positions, capture, edit_output
from factstore.rome.hparams import ROMEHyperParams
from factstore.rome.prompts import check_fits, encode_prompt, pad_right, request_prompts, target_ids


@dataclass(frozen=True)
class ValueResult:
    value: torch.Tensor  # v* (d_model,) float32
    v0: torch.Tensor  # the unedited output at the subject's last token of the bare prompt
    loss: float  # final optimisation loss
    steps: int  # gradient steps taken


@dataclass(frozen=True)
class _Batch:
    ids: torch.Tensor  # (B, L) right-padded
    mask: torch.Tensor  # (B, L)
    subject_pos: torch.Tensor  # (B,) subject's last token per row
    n_rewrite: int  # rows [0, n_rewrite) are rewrite prompts, the rest essence prompts
    target_pos: torch.Tensor  # (n_rewrite, T) positions whose logits predict the target tokens
    target: torch.Tensor  # (T,) target token ids
    kl_pos: torch.Tensor  # (n_kl,) last token of each essence prompt

    def to(self, device: torch.device) -> _Batch:
        return replace(
            self, ids=self.ids.to(device), mask=self.mask.to(device), subject_pos=self.subject_pos.to(device),
            target_pos=self.target_pos.to(device), target=self.target.to(device), kl_pos=self.kl_pos.to(device),
        )


def _build_batch(
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    templates: list[str],
    kl_prompt: str,
    max_len: int,
) -> _Batch:
    tgt = target_ids(tokenizer, request.target_new)
    rewrite = [encode_prompt(tokenizer, p, request.subject) for p in request_prompts(request, templates)]
    essence = [encode_prompt(tokenizer, kl_prompt, request.subject)]
    for enc in rewrite:
        check_fits(len(enc.ids), len(tgt), max_len)
    rows = [e.ids + tgt[:-1] for e in rewrite] + [e.ids for e in essence]
    ids, mask = pad_right(rows)
    offsets = torch.arange(len(tgt))
    return _Batch(
        ids=ids,
        mask=mask,
        subject_pos=torch.tensor([e.subject_last for e in rewrite + essence]),
        n_rewrite=len(rewrite),
        target_pos=torch.stack([len(e.ids) - 1 + offsets for e in rewrite]),
        target=torch.tensor(tgt),
        kl_pos=torch.tensor([len(e.ids) - 1 for e in essence]),
    )


def _forward(model: PreTrainedModel, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean target NLL over rewrite rows, and the essence log-distributions (n_kl, V)."""
    n_rows, n_tgt = batch.target_pos.shape
    rows = torch.arange(n_rows, device=batch.ids.device).repeat_interleave(n_tgt)
    kl_rows = torch.arange(n_rows, batch.ids.shape[0], device=batch.ids.device)
    logits = arch.logits_at(
        model,
        batch.ids,
        batch.mask,
        torch.cat([rows, kl_rows]),
        torch.cat([batch.target_pos.reshape(-1), batch.kl_pos]),
    )
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp[torch.arange(rows.numel(), device=logp.device), batch.target.repeat(n_rows)].mean()
    return nll, logp[rows.numel() :]


def compute_value(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    templates: list[str],
    hparams: ROMEHyperParams,
) -> ValueResult:
    """Optimise delta added to the layer's MLP output at the subject; v* = v0 + delta."""
    device = next(model.parameters()).device
    module = arch.down_proj(model, hparams.layer)
    batch = _build_batch(tokenizer, request, templates, hparams.kl_prompt, arch.context_length(model))
    batch = batch.to(device)

    with torch.no_grad(), capture(module) as seen:
        kl_init = _forward(model, batch)[1]
    v0 = seen.output[0, batch.subject_pos[0]].float()

    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hparams.lr)
    max_norm = hparams.clamp_norm_factor * v0.norm()
    loss_value, steps = float("inf"), 0
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with edit_output(module, add_at_positions(delta, batch.subject_pos)):
            for step in range(1, hparams.steps + 1):
                steps = step
                nll, kl_logp = _forward(model, batch)
                kl = torch.nn.functional.kl_div(kl_init, kl_logp, log_target=True, reduction="batchmean")
                decay = delta.norm() / v0.norm() ** 2  # ROME's form: ||delta|| / ||v0||^2
                loss = nll + hparams.kl_factor * kl + hparams.weight_decay * decay
                loss_value = loss.item()
                if loss_value < hparams.early_stop_loss:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():  # project back into the ball ||delta|| <= max_norm
                    if delta.norm() > max_norm:
                        delta.mul_(max_norm / delta.norm())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return ValueResult(value=(v0 + delta).detach(), v0=v0.detach(), loss=loss_value, steps=steps)
