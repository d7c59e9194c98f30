"""Where each supported architecture keeps the parts ROME touches.

One row per `config.model_type`. Weight orientation is declared, never guessed from
shapes: GPT-2's Conv1D stores its weight as (in, out), torch Linear as (out, in).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from factstore.errors import InvalidEditRequest, UnknownArchitecture, shown


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # dotted path of the ModuleList of transformer blocks
    down_proj: str  # MLP down-projection (the matrix ROME rewrites), relative to a block
    mlp: str  # the module whose output is the MLP's contribution, relative to a block
    attn: str  # attention, relative to a block
    embedding: str  # token embedding
    final: tuple[str, ...]  # modules applied, in order, between the last block and the LM head
    fan_in_fan_out: bool = False  # True where the weight is stored (in, out) (GPT-2's Conv1D)
    # a norm applied to the MLP's output before it joins the residual stream, relative to a block
    post_mlp: str | None = None


def _decoder(prefix: str, final: str = "norm") -> ArchSpec:
    """The layout most decoder families share: PREFIX.layers[i].mlp.down_proj, .self_attn."""
    return ArchSpec(
        f"{prefix}.layers", "mlp.down_proj", "mlp", "self_attn", f"{prefix}.embed_tokens", (f"{prefix}.{final}",)
    )


_LLAMA_LIKE = _decoder("model")
_GPT2_LIKE = ArchSpec(
    "transformer.h", "mlp.c_proj", "mlp", "attn", "transformer.wte", ("transformer.ln_f",), fan_in_fan_out=True
)
_BLOOM_LIKE = ArchSpec(
    "transformer.h", "mlp.dense_4h_to_h", "mlp", "self_attention", "transformer.word_embeddings", ("transformer.ln_f",)
)

# Families whose MLP output projection is a plain Linear or Conv1D (a mixture of experts has
# no single matrix to rewrite, and is not listed). Every row is exercised by tests/test_architectures.py.
ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": _GPT2_LIKE,
    "gpt_bigcode": replace(_GPT2_LIKE, fan_in_fan_out=False),  # GPT-2's names, torch Linear weights
    "gptj": ArchSpec("transformer.h", "mlp.fc_out", "mlp", "attn", "transformer.wte", ("transformer.ln_f",)),
    "codegen": ArchSpec("transformer.h", "mlp.fc_out", "mlp", "attn", "transformer.wte", ("transformer.ln_f",)),
    "gpt_neox": ArchSpec(
        "gpt_neox.layers", "mlp.dense_4h_to_h", "mlp", "attention", "gpt_neox.embed_in", ("gpt_neox.final_layer_norm",)
    ),
    "falcon": _BLOOM_LIKE,
    "bloom": _BLOOM_LIKE,
    # OPT's MLP is fc1/fc2 on the block itself: fc2's output is the MLP's contribution
    "opt": ArchSpec(
        "model.decoder.layers",
        "fc2",
        "fc2",
        "self_attn",
        "model.decoder.embed_tokens",
        ("model.decoder.final_layer_norm", "model.decoder.project_out"),
    ),
    "phi": ArchSpec("model.layers", "mlp.fc2", "mlp", "self_attn", "model.embed_tokens", ("model.final_layernorm",)),
    "persimmon": ArchSpec(
        "model.layers", "mlp.dense_4h_to_h", "mlp", "self_attn", "model.embed_tokens", ("model.final_layernorm",)
    ),
    "starcoder2": replace(_LLAMA_LIKE, down_proj="mlp.c_proj"),
    **{
        name: _LLAMA_LIKE
        for name in (
            "llama",
            "mistral",
            "ministral",
            "qwen2",
            "qwen3",
            "phi3",
            "gemma",
            "olmo",
            "granite",
            "stablelm",
            "cohere",
            "glm",
            "helium",
            "smollm3",
            "nemotron",
        )
    },
    **{
        name: replace(_LLAMA_LIKE, post_mlp="post_feedforward_layernorm")
        for name in ("gemma2", "gemma3_text", "olmo2", "olmo3", "exaone4")
    },
    "glm4": replace(_LLAMA_LIKE, post_mlp="post_mlp_layernorm"),
}


def spec_for(model_type: str) -> ArchSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitecture(
            f"architecture {shown(model_type)} is not supported; supported model types: {supported}"
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


def config_size(config: Any) -> tuple[str, int, int]:
    """(model_type, blocks, model width): what a model's row of default settings is keyed by."""
    return str(config.model_type), config_num_layers(config), int(config.get_text_config().hidden_size)


def check_layer(model: PreTrainedModel, layer: int) -> None:
    check_layer_count(num_layers(model), layer)


def check_layer_count(n: int, layer: int) -> None:
    if not 0 <= layer < n:
        raise InvalidEditRequest(f"layer {layer} is outside the model: it has layers 0 to {n - 1}")


def layer_path(model: PreTrainedModel, layer: int, part: str = "") -> str:
    """Full dotted name of a block (or of a part of it, e.g. spec.down_proj)."""
    base = f"{model_spec(model).layers}.{layer}"
    return f"{base}.{part}" if part else base


def config_down_proj_name(config: Any, layer: int) -> str:
    """A layer's down-projection name, read off a config (no weights needed)."""
    spec = spec_for(config.model_type)
    return f"{spec.layers}.{layer}.{spec.down_proj}"


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


def mlp_join(model: PreTrainedModel, layer: int) -> tuple[float, nn.Module | None]:
    """How LAYER's MLP output joins the residual stream: (the factor on it, Granite's residual
    multiplier or 1; the norm applied to it first, or None)."""
    spec = model_spec(model)
    norm = get_module(model, layer_path(model, layer, spec.post_mlp)) if spec.post_mlp else None
    return float(getattr(model.config, "residual_multiplier", None) or 1.0), norm


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


def blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks, in order."""
    found = get_module(model, model_spec(model).layers)
    if not isinstance(found, nn.ModuleList):
        raise UnknownArchitecture(f"{model_spec(model).layers} of {type(model).__name__} is not a list of blocks")
    return found


def final_modules(model: PreTrainedModel) -> list[nn.Module]:
    """What runs between the last block and the LM head (final norm; OPT's optional projection)."""
    found = []
    for path in model_spec(model).final:
        module = get_module(model, path) if _has_path(model, path) else None
        if module is not None:
            found.append(module)
    return found


def _has_path(root: nn.Module, dotted: str) -> bool:
    try:
        get_module(root, dotted)
    except (AttributeError, IndexError):
        return False
    return True


def by_token(states: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L, d) view of a module's input or output for sequences of LENGTH tokens: OPT's MLP
    works on (B * L, d), every other family on (B, L, d)."""
    return states.view(-1, length, states.shape[-1])


def input_device(model: PreTrainedModel) -> torch.device:
    """Where token ids must go: the input embedding's device (with a device map, not necessarily
    the first parameter's)."""
    embed = getattr(model, "get_input_embeddings", None)
    found = embed() if callable(embed) else None
    return weight_param(found).device if isinstance(found, nn.Module) else next(model.parameters()).device


def head_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """(n, V) logits from (n, d) final hidden states (after the final norm)."""
    head = model.get_output_embeddings()
    logits = head(hidden.to(weight_param(head).device))
    # what families do to logits after the head, as their own forward does
    if scale := getattr(model.config, "logit_scale", None):  # Cohere multiplies
        logits = logits * scale
    if scaling := getattr(model.config, "logits_scaling", None):  # Granite divides
        logits = logits / scaling
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma squashes logits; keep parity with the model's own forward
        logits = torch.tanh(logits / cap) * cap
    return logits


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
    hidden = model.base_model(
        input_ids=ids, attention_mask=mask, use_cache=False
    ).last_hidden_state  # (B, L, d), final norm applied
    return head_logits(model, hidden[rows.to(hidden.device), positions.to(hidden.device)])


def cache_keyword(model: PreTrainedModel) -> str:
    """The keyword a base model's forward takes its key/value cache by: transformers 5 renamed
    past_key_values to cache in a minor release; the package's range admits both."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The key/value cache a base model's forward returned, under either name (cache_keyword)."""
    cache = getattr(output, "cache", None)
    return output.past_key_values if cache is None else cache
