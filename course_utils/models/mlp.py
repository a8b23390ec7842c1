"""A small multilayer perceptron for per-pixel (or per-sample) features, as built in notebook 01.

``MLP(12, 10, hidden=(128, 128))`` maps a pixel's 12 Sentinel-2 bands to 10 class scores (logits):
``hidden=()`` gives the linear model (multinomial logistic regression) that the MLP is compared with.
Options add the regularisers notebook 01 measures: dropout after every hidden activation, batch
normalisation before it, and a :class:`SpectralNoise` layer that augments the input during training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class SpectralNoise(nn.Module):
    """Augment standardised spectra while training: a random gain and offset per sample and band, plus noise.

    ``x' = x * (1 + g) + o + e`` with ``g ~ U(-gain, gain)``, ``o ~ U(-offset, offset)`` and
    ``e ~ N(0, noise^2)``, all drawn per sample and band (in units of a band's standard deviation,
    since the input is standardised). Like dropout, it acts only in training mode: in ``eval()`` mode
    it returns its input unchanged, so validation and test see the real pixels.
    """

    def __init__(self, gain: float = 0.05, offset: float = 0.05, noise: float = 0.05) -> None:
        super().__init__()
        if min(gain, offset, noise) < 0:
            raise ValueError(f"gain, offset and noise must be >= 0, got {gain}, {offset}, {noise}.")
        self.gain, self.offset, self.noise = gain, offset, noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        gain = 1 + (torch.rand_like(x) * 2 - 1) * self.gain
        offset = (torch.rand_like(x) * 2 - 1) * self.offset
        return x * gain + offset + torch.randn_like(x) * self.noise

    def extra_repr(self) -> str:
        return f"gain={self.gain}, offset={self.offset}, noise={self.noise}"


class MLP(nn.Sequential):
    """Fully connected layers: ``in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes``.

    Each hidden layer is ``Linear -> [BatchNorm1d] -> activation -> [Dropout]``; the last layer is a plain
    ``Linear`` that outputs logits (the loss applies the softmax). ``augment`` puts a
    :class:`SpectralNoise` layer in front.

    Args:
        in_features: features per sample (e.g. 12 Sentinel-2 bands).
        num_classes: outputs (class scores, or 1 for a regression).
        hidden: widths of the hidden layers; ``()`` makes a linear model.
        activation: ``relu``, ``gelu``, ``tanh`` or ``sigmoid``.
        dropout: probability of zeroing a hidden unit while training (0: no dropout layer).
        batch_norm: add batch normalisation before each activation.
        augment: a :class:`SpectralNoise` layer for the input, or ``None``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        augment: SpectralNoise | None = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout} must be in [0, 1).")
        if in_features < 1 or num_classes < 1 or any(width < 1 for width in hidden):
            raise ValueError(f"layer sizes must be positive: {in_features}, {tuple(hidden)}, {num_classes}.")
        layers: list[nn.Module] = [augment] if augment is not None else []
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
