"""Projectors: map vision-encoder features to the language model's width.

`build_projector` is the seam later families extend (pooling, convolution and Mamba projectors); each class says
where it comes from.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class MLP2xGeluProjector(nn.Module):
    """LLaVA-1.5's `mlp2x_gelu`: linear -> GELU -> linear. Also the projector of LongLLaVA and MMJamba's images."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, act: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden_size, text_hidden_size, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


def build_projector(config, vision_hidden_size: int) -> nn.Module:
    """Build the projector named by `config.projector_type` (validated by the config)."""
    text_hidden_size = config.text_config.hidden_size
    if config.projector_type == "mlp2x_gelu":
        return MLP2xGeluProjector(
            vision_hidden_size, text_hidden_size, config.projector_hidden_act, config.multimodal_projector_bias
        )
    raise ValueError(f"Unknown projector_type '{config.projector_type}'.")
