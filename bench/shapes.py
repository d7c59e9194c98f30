"""Random-weight models of real shapes, for timing the engine where the real weights are not at
hand (GPT-2 XL, Llama 3 8B). The timings depend on shapes, not on what the weights know; random
weights never reach the early-stop loss, so every v* optimisation runs all its steps."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig


def gpt2_xl(scale: int = 1) -> GPT2Config:
    """GPT-2 XL: 48 layers, 1600 wide, 25 heads (scale > 1 divides depth and width, for CPU tests)."""
    return GPT2Config(
        n_layer=48 // scale, n_embd=1600 // scale, n_head=25 if scale == 1 else 5, n_positions=1024, vocab_size=50257
    )


def llama3_8b_truncated(layers: int = 8, scale: int = 1) -> LlamaConfig:
    """Llama 3 8B (4096 wide, MLP 14336, 32 heads, 8 KV heads, 128k vocabulary) cut to LAYERS blocks."""
    return LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=4096 // scale,
        intermediate_size=14336 // scale,
        num_attention_heads=32 // scale,
        num_key_value_heads=max(1, 8 // scale),
        vocab_size=max(50257, 128256 // scale),
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )


def build(config: Any, dtype: torch.dtype, device: str) -> Any:
    """The model with random weights, made directly on DEVICE in DTYPE (no float32 copy on the CPU)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
