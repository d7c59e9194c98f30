"""Where each supported architecture keeps the parts ROME touches.

One row per `config.model_type`. Weight orientation is declared, never guessed from
shapes: GPT-2's Conv1D stores its weight as (in, out), torch Linear as (out, in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from factstore.errors import InvalidEditRequest, UnknownArchitecture


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # dotted path of the ModuleList of transformer blocks
    down_proj: str  # MLP down-projection, relative to a block
    mlp: str  # whole MLP, relative to a block
    attn: str  # attention, relative to a block
    embedding: str  # token embedding
    final_norm: str
    head: str  # LM head
    fan_in_fan_out: bool  # True where the weight is stored (in, out)


_LLAMA_LIKE = ArchSpec(
    layers="model.layers",
    down_proj="mlp.down_proj",
    mlp="mlp",
    attn="self_attn",
    embedding="model.embed_tokens",
    final_norm="model.norm",
    head="lm_head",
    fan_in_fan_out=False,
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        layers="transformer.h",
        down_proj="mlp.c_proj",
        mlp="mlp",
        attn="attn",
        embedding="transformer.wte",
        final_norm="transformer.ln_f",
        head="lm_head",
        fan_in_fan_out=True,
    ),
    "gptj": ArchSpec(
        layers="transformer.h",
        down_proj="mlp.fc_out",
        mlp="mlp",
        attn="attn",
        embedding="transformer.wte",
        final_norm="transformer.ln_f",
        head="lm_head",
        fan_in_fan_out=False,
    ),
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers",
        down_proj="mlp.dense_4h_to_h",
        mlp="mlp",
        attn="attention",
        embedding="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        head="embed_out",
        fan_in_fan_out=False,
    ),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,  # Gemma3ForCausalLM (text-only checkpoints such as gemma-3-270m)
}


def spec_for(model_type: str) -> ArchSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitecture(
            f"architecture {model_type!r} is not supported; supported model types: {supported}"
        ) from None


def model_spec(model: PreTrainedModel) -> ArchSpec:
    return spec_for(model.config.model_type)


def get_module(root: nn.Module, dotted: str) -> Any:
    """The submodule at a dotted path ("model.layers.3.mlp"); numbers index ModuleLists."""
    module: Any = root
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def num_layers(model: PreTrainedModel) -> int:
    return len(get_module(model, model_spec(model).layers))


def config_num_layers(config: Any) -> int:
    """The number of blocks, read off a config (no weights needed)."""
    return int(config.get_text_config().num_hidden_layers)


def check_layer(model: PreTrainedModel, layer: int) -> None:
    check_layer_count(num_layers(model), layer)


def check_layer_count(n: int, layer: int) -> None:
    if not 0 <= layer < n:
        raise InvalidEditRequest(f"layer {layer} is outside the model: it has layers 0 to {n - 1}")


def layer_path(model: PreTrainedModel, layer: int, part: str = "") -> str:
    """Full dotted name of a block (or of a part of it, e.g. spec.down_proj)."""
    base = f"{model_spec(model).layers}.{layer}"
    return f"{base}.{part}" if part else base


def down_proj_name(model: PreTrainedModel, layer: int) -> str:
    return layer_path(model, layer, model_spec(model).down_proj)


def down_proj(model: PreTrainedModel, layer: int) -> nn.Module:
    check_layer(model, layer)
    return get_module(model, down_proj_name(model, layer))


def weight_param(module: nn.Module) -> torch.Tensor:
    """A module's weight parameter, as stored (to mypy, nn.Module attributes are Tensor | Module)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise UnknownArchitecture(f"{type(module).__name__} has no weight tensor")
    return weight


def down_proj_param(model: PreTrainedModel, layer: int) -> torch.Tensor:
    """A layer's down-projection weight parameter in its stored orientation (write with .data.copy_)."""
    return weight_param(down_proj(model, layer))


def weight_out_in(module: nn.Module, fan_in_fan_out: bool) -> torch.Tensor:
    """The weight as an (out, in) view, whatever the storage orientation."""
    weight = weight_param(module)
    return weight.T if fan_in_fan_out else weight


def down_proj_weight(model: PreTrainedModel, layer: int) -> torch.Tensor:
    """(d_model, d_ff) detached view of a layer's down-projection weight (write through rome.edit.add_delta)."""
    return weight_out_in(down_proj(model, layer), model_spec(model).fan_in_fan_out).detach()


def down_proj_bias(model: PreTrainedModel, layer: int) -> torch.Tensor | None:
    bias = getattr(down_proj(model, layer), "bias", None)
    return None if bias is None else bias.detach()


def context_length(model: PreTrainedModel) -> int:
    return config_context_length(model.config)


def config_context_length(config: Any) -> int:
    """The longest sequence a model takes, read off its config (no weights needed)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def logits_at(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """(n, V) logits at (rows[i], positions[i]) only.

    Running the LM head on a few positions instead of every one is most of the cost saved
    when optimising v* on models with large vocabularies (SmolLM2: 49k tokens).
    """
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, d), final norm applied
    logits = model.get_output_embeddings()(hidden[rows, positions])
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma squashes logits; keep parity with the model's own forward
        logits = torch.tanh(logits / cap) * cap
    return logits
