"""course_utils.models.mlp: the layers are the ones asked for, the linear model is linear, the MLP solves XOR."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_utils.models.mlp import MLP, SpectralNoise, count_parameters


def test_layer_sizes_and_parameter_count() -> None:
    model = MLP(12, 10, hidden=(128, 64))
    assert model(torch.zeros(5, 12)).shape == (5, 10)
    # (12*128 + 128) + (128*64 + 64) + (64*10 + 10)
    assert count_parameters(model) == 1664 + 8256 + 650
    assert [type(layer) for layer in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


def test_no_hidden_layer_is_a_linear_model() -> None:
    torch.manual_seed(0)
    model = MLP(12, 10, hidden=())
    assert len(model) == 1 and isinstance(model[0], nn.Linear)
    x = torch.randn(7, 12)
    expected = x @ model[0].weight.T + model[0].bias
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert torch.allclose(model(2 * x) - model(x), model(x) - model(torch.zeros(1, 12)), atol=1e-5)


def test_options_add_their_layers() -> None:
    model = MLP(4, 3, hidden=(8,), activation="gelu", dropout=0.5, batch_norm=True, augment=SpectralNoise())
    kinds = [type(layer) for layer in model]
    assert kinds == [SpectralNoise, nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout, nn.Linear]
    model.eval()
    x = torch.randn(6, 4)
    assert torch.equal(model(x), model(x))  # eval mode: no dropout, no noise, running batch-norm statistics


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "swish"}, "activation"),
        ({"dropout": 1.0}, "dropout"),
        ({"hidden": (8, 0)}, "positive"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MLP(4, 3, **kwargs)


def test_spectral_noise_only_while_training() -> None:
    torch.manual_seed(0)
    layer = SpectralNoise(gain=0.1, offset=0.1, noise=0.1)
    x = torch.randn(4000, 12)
    changed = layer(x)
    difference = changed - x
    assert not torch.equal(changed, x) and x.shape == changed.shape
    assert abs(float(difference.mean())) < 0.01  # unbiased: the augmented data keeps its mean
    # variance of x*g + o + e - x = var(g) E[x^2] + var(o) + noise^2 = 0.01/3 + 0.01/3 + 0.01
    assert float(difference.var()) == pytest.approx(0.01 / 3 + 0.01 / 3 + 0.01, rel=0.1)
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(SpectralNoise(0, 0, 0)(x), x)
    with pytest.raises(ValueError, match=">= 0"):
        SpectralNoise(noise=-0.1)


def test_hidden_layer_solves_xor_where_a_linear_model_cannot() -> None:
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).repeat(16, 1)
    y = (x[:, 0] != x[:, 1]).long()
    accuracy = {}
    for hidden in ((), (16,)):
        torch.manual_seed(0)
        model = MLP(2, 2, hidden=hidden)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        accuracy[hidden] = float((model(x).argmax(1) == y).float().mean())
    assert accuracy[(16,)] == 1.0
    assert accuracy[()] <= 0.75  # no straight line separates XOR
