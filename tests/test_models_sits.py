"""The time-series classifiers of course_utils.models.sits: shapes, masks, L-TAE's attention, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_utils.models.sits import (
    LTAE,
    DayOfYearEncoding,
    RNNClassifier,
    TempCNN,
    TransformerClassifier,
    compact,
    count_parameters,
)

BANDS, CLASSES, T = 13, 9, 20


def _models() -> dict[str, nn.Module]:
    return {
        "tempcnn": TempCNN(BANDS, CLASSES, hidden=16, dense=32),
        "lstm": RNNClassifier(BANDS, CLASSES, hidden=16),
        "gru": RNNClassifier(BANDS, CLASSES, hidden=16, cell="gru", bidirectional=True),
        "transformer": TransformerClassifier(BANDS, CLASSES, dim=32, depth=2, heads=4),
        "ltae": LTAE(BANDS, CLASSES, dim=32, heads=4, key_dim=8, mlp=32),
    }


def _batch(batch: int = 6, lengths: tuple[int, ...] = (20, 15, 9, 20, 3, 12)) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, T, BANDS)
    doy = torch.sort(torch.randint(1, 366, (batch, T)), dim=1).values
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return x, doy, mask


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", list(_models()))
def test_output_shape_and_parameter_count(name: str) -> None:
    model = _models()[name].eval()
    x, doy, mask = _batch()
    out = model(x, doy, mask)
    assert out.shape == (6, CLASSES)
    assert torch.isfinite(out).all()
    n = count_parameters(model)
    print(f"{name}: {n} parameters")
    assert 1_000 < n < 200_000


@pytest.mark.parametrize("name", list(_models()))
def test_padding_does_not_change_the_output(name: str) -> None:
    model = _models()[name].eval()
    x, doy, mask = _batch()
    reference = model(x, doy, mask)
    noisy_x = torch.where(mask[..., None], x, 100 * torch.randn_like(x))
    noisy_doy = torch.where(mask, doy, torch.randint(1, 366, doy.shape))
    torch.testing.assert_close(model(noisy_x, noisy_doy, mask), reference)
    # ...but a real observation does change it: the mask is not hiding everything.
    changed = x.clone()
    changed[:, 0] += 3.0
    assert not torch.allclose(model(changed, doy, mask), reference)


@pytest.mark.parametrize("name", list(_models()))
def test_nan_and_inf_in_padding_never_reach_the_logits(name: str) -> None:
    """Real series mark no-data with NaN: padded NaN, +inf, -inf and absurd days give the logits of zeros."""
    model = _models()[name].eval()
    x, doy, mask = _batch()
    zeros = model(x.masked_fill(~mask[..., None], 0), doy.masked_fill(~mask, 0), mask)
    no_data = torch.tensor([float("nan"), float("inf"), float("-inf")])[torch.arange(x.numel()) % 3].view_as(x)
    garbage_days = torch.where(torch.arange(T) % 2 == 0, 10**9, -(10**9)).expand_as(doy)
    out = model(torch.where(mask[..., None], x, no_data), torch.where(mask, doy, garbage_days), mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, zeros)


def test_tempcnn_grid_ignores_nan_padding() -> None:
    model = TempCNN(BANDS, CLASSES, hidden=8, dense=16)
    x, doy, mask = _batch()
    grid = model.to_grid(torch.where(mask[..., None], x, float("nan")), doy, mask)
    torch.testing.assert_close(grid, model.to_grid(x, doy, mask))


def test_days_beyond_a_year_are_refused_or_covered_by_a_longer_grid() -> None:
    x, doy, mask = _batch(batch=1, lengths=(3,))
    two_years = torch.tensor([[30, 200, 400] + [0] * (T - 3)])
    with pytest.raises(ValueError, match=r"outside .* 1\.\.366.*max_day=400.*per year"):
        TempCNN(BANDS, CLASSES)(x, two_years, mask)  # was silently moved into the last slot of the year
    with pytest.raises(ValueError, match="count days from 1"):
        TempCNN(BANDS, CLASSES)(x, two_years - 30, mask)
    model = TempCNN(BANDS, CLASSES, hidden=8, dense=16, max_day=731).eval()
    assert model.slots == 147
    grid = model.to_grid(x, two_years, mask)[0]
    assert grid[-1].nonzero().flatten().tolist() == [5, 39, 79]  # day 400 has its own slot in the second year
    assert model(x, two_years, mask).shape == (1, CLASSES)
    # The day-of-year encoding tells day 35 of the second year (400) from day 35 of the first.
    encode = DayOfYearEncoding(32)
    assert (encode(torch.tensor([[400]])) - encode(torch.tensor([[35]]))).norm() > 1.0


@pytest.mark.parametrize("name", list(_models()))
def test_models_accept_any_length(name: str) -> None:
    model = _models()[name].eval()
    x, doy, mask = _batch()
    reference = model(x, doy, mask)
    longer = [torch.cat([t, torch.zeros_like(t[:, :7])], dim=1) for t in (x, doy, mask)]
    torch.testing.assert_close(model(*longer), reference, atol=1e-5, rtol=1e-4)


def test_gaps_in_the_middle_are_compacted() -> None:
    x, doy, mask = _batch(batch=1, lengths=(5,))
    holes = torch.tensor([[True, False, True, True, False, True, True] + [False] * (T - 7)])
    cx, cdoy, cmask = compact(torch.where(holes[..., None], x, float("nan")), doy, holes)
    assert cmask[0].tolist() == [True] * 5 + [False] * (T - 5)
    torch.testing.assert_close(cx[0, :5], x[0, holes[0]])
    assert cdoy[0, :5].tolist() == doy[0, holes[0]].tolist()
    assert (cx[0, 5:] == 0).all() and (cdoy[0, 5:] == 0).all()


def test_ltae_has_one_master_query_per_head_and_no_square_attention() -> None:
    heads, key_dim = 4, 8
    model = LTAE(BANDS, CLASSES, dim=32, heads=heads, key_dim=key_dim, mlp=32).eval()
    assert model.master_query.shape == (heads, key_dim)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    x, doy, mask = _batch()
    model(x, doy, mask)
    weights = model.last_attention
    assert weights.shape == (6, heads, T)  # one weight per date and head: no T x T matrix
    torch.testing.assert_close(weights.sum(-1), torch.ones(6, heads))
    assert (weights[~mask[:, None, :].expand_as(weights)] == 0).all()
    # The master query does not depend on the input: two different batches use the same parameter.
    assert model.master_query.requires_grad


def test_transformer_class_token_attends_only_to_real_dates() -> None:
    model = TransformerClassifier(BANDS, CLASSES, dim=32, depth=1, heads=4).eval()
    model.keep_attention(True)
    x, doy, mask = _batch()
    model(x, doy, mask)
    weights = model.blocks[0].attn.last_attention  # [B, heads, 1 + T, 1 + T]
    assert weights.shape == (6, 4, T + 1, T + 1)
    cls_to_dates = weights[:, :, 0, 1:]
    assert (cls_to_dates[~mask[:, None, :].expand_as(cls_to_dates)] == 0).all()


@pytest.mark.parametrize("name", list(_models()))
def test_every_model_reads_the_dates_not_only_their_order(name: str) -> None:
    model = _models()[name].eval()
    x, doy, mask = _batch()
    later = torch.where(mask, (doy + 20).clamp(max=366), doy)  # the same observations in the same order, later
    assert not torch.allclose(model(x, doy, mask), model(x, later, mask), atol=1e-4)


def test_day_of_year_encoding_is_smooth_and_distinct() -> None:
    encode = DayOfYearEncoding(32)
    codes = encode(torch.tensor([[100, 101, 280]]))[0]
    assert codes.shape == (3, 32)
    torch.testing.assert_close(codes.norm(dim=-1), torch.full((3,), 4.0))  # 16 (sin, cos) pairs of norm 1
    assert (codes[0] - codes[1]).norm() < (codes[0] - codes[2]).norm() / 3  # a day apart vs half a year
    with pytest.raises(ValueError, match="even"):
        DayOfYearEncoding(7)


@pytest.mark.parametrize("name", list(_models()))
def test_each_model_can_overfit_a_tiny_batch(name: str) -> None:
    model = _models()[name]
    x, doy, mask = _batch(batch=12, lengths=(20, 15, 9, 20, 3, 12) * 2)
    y = torch.arange(12) % CLASSES
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x, doy, mask), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    accuracy = (model(x, doy, mask).argmax(1) == y).float().mean()
    assert accuracy == 1.0, f"{name} reached only {accuracy:.2f} on 12 training series"


def test_bad_inputs_give_clear_errors() -> None:
    model = LTAE(BANDS, CLASSES, dim=32, heads=4).eval()
    x, doy, mask = _batch()
    with pytest.raises(ValueError, match="13"):
        model(x[..., :10], doy, mask)
    empty = mask.clone()
    empty[0] = False
    with pytest.raises(ValueError, match="no observation"):
        model(x, doy, empty)
    with pytest.raises(ValueError, match="lstm"):
        RNNClassifier(BANDS, CLASSES, cell="rnn")
    with pytest.raises(ValueError, match="divisible"):
        LTAE(BANDS, CLASSES, dim=30, heads=4)


def test_tempcnn_places_observations_on_the_revisit_grid() -> None:
    model = TempCNN(BANDS, CLASSES, hidden=8, dense=16, grid_days=5)
    assert model.slots == 74
    x = torch.zeros(1, 4, BANDS)
    x[0, :, 0] = torch.tensor([1.0, 2.0, 4.0, 9.0])
    doy = torch.tensor([[1, 12, 14, 300]])  # days 12 and 14 share the slot 10..14
    mask = torch.tensor([[True, True, True, False]])
    grid = model.to_grid(x, doy, mask)[0]  # [C + 1, slots]
    assert grid.shape == (BANDS + 1, 74)
    assert grid[0, 0] == 1.0 and grid[0, 2] == 3.0  # the two observations of slot 2 are averaged
    assert grid[-1].nonzero().flatten().tolist() == [0, 2]  # observed slots; padding (day 300) is not there
    assert grid[0, 59] == 0
