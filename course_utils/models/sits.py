"""Classifiers for satellite image time series (SITS), one label per parcel (notebook 06).

Every model here is called the same way, as ``model(x, doy, mask)``:

* ``x``: float ``[B, T, C]``, one spectrum of ``C`` bands per observation;
* ``doy``: int ``[B, T]``, the day of each observation, counted from 1 (1..366 within a year, more for a
  series over several years; any value where ``mask`` is False);
* ``mask``: bool ``[B, T]``, True for a real observation, False for padding;

and returns class scores (logits) ``[B, num_classes]``. Padded steps never change the output: whatever
``x`` and ``doy`` hold where ``mask`` is False, NaN and infinities included (how real series mark no-data),
the logits are the same: padding is replaced by zeros before any arithmetic (the tests check it).

The four families, from the oldest idea to the lightest attention:

* :class:`TempCNN`: 1D convolutions over time with no pooling between layers, then a dense layer on the
  flattened features (Pelletier et al., 2019). Convolutions need evenly spaced steps, so the observations
  are first placed on the regular 5-day grid of the satellite's revisit, empty slots marked as such.
* :class:`RNNClassifier`: an LSTM (or GRU) reads the observations in date order, each with the encoding of its
  day of year; its last hidden state summarises the season (Rußwurm & Körner, 2017).
* :class:`TransformerClassifier`: a class token plus one token per observation, with a sinusoidal encoding
  of the *day of year* instead of the position, through the pre-norm blocks of notebook 03
  (Vaswani et al., 2017; Rußwurm & Körner, 2020). Attention costs ``T x T`` per head and block.
* :class:`LTAE`: the lightweight temporal attention encoder (Sainte Fare Garnot & Landrieu, 2020): one
  learned *master query* per head compares itself with a key per date; the softmax weights average
  the date embeddings. Attention costs ``T`` per head: no ``T x T`` matrix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from course_utils.models.vit import TransformerBlock


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_inputs(x: torch.Tensor, doy: torch.Tensor, mask: torch.Tensor, channels: int) -> None:
    if x.ndim != 3 or x.shape[-1] != channels:
        raise ValueError(f"x must be [batch, time, {channels}], got {list(x.shape)}")
    if doy.shape != x.shape[:2] or mask.shape != x.shape[:2]:
        raise ValueError(f"doy {list(doy.shape)} and mask {list(mask.shape)} must both be {list(x.shape[:2])}")
    if not mask.any(dim=1).all():
        raise ValueError("a series in the batch has no observation (mask all False); drop it or keep one date")


def _zero_padding(x: torch.Tensor, doy: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``doy`` with zeros where ``mask`` is False, so that no padded value (NaN * 0 is NaN) is computed on."""
    return x.masked_fill(~mask[..., None], 0), doy.masked_fill(~mask, 0)


def compact(x: torch.Tensor, doy: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Move the real observations of each series to the front (in order) and zero everything else.

    The course's Datasets already pad at the end; this also handles gaps in the middle of a series.
    Returns ``(x, doy, mask)`` of the same shapes.
    """
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    mask = torch.gather(mask, 1, order)
    x, doy = _zero_padding(torch.gather(x, 1, order[..., None].expand_as(x)), torch.gather(doy, 1, order), mask)
    return x, doy, mask


class DayOfYearEncoding(nn.Module):
    """Sinusoidal encoding of the day of year: what a position encoding is for irregular dates.

    ``PE(d)[2i] = sin(d / tau^(2i/D))`` and ``PE(d)[2i+1] = cos(d / tau^(2i/D))`` for ``i < D/2``. Nearby days
    get similar vectors; ``tau`` sets the longest period (``2 pi tau`` days, about 17 years for the default), so
    any day number works, and the days of a series over several years (beyond 366) get codes of their own.
    """

    def __init__(self, dim: int, tau: float = 1000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim={dim} must be even (sine and cosine pairs)")
        frequencies = tau ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, doy: torch.Tensor) -> torch.Tensor:
        """``doy [B, T]`` -> ``[B, T, dim]``."""
        angles = doy.float()[..., None] * self.frequencies
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class TempCNN(nn.Module):
    """Temporal CNN (Pelletier et al., 2019): ``layers`` x (Conv1d, BatchNorm, ReLU, Dropout), flatten, dense.

    A convolution assumes evenly spaced steps, and Sentinel-2 dates are only *nearly* even: each orbit
    revisits every 5 days, but clouds and gaps remove dates, and parcels differ in which ones they have.
    So the observations are first placed on the regular grid of the revisit (``grid_days``): slot
    ``(doy - 1) // grid_days`` of ``ceil(max_day / grid_days)`` slots gets the spectrum, plus a channel that
    says "observed here"; empty slots and padding stay zero (observations sharing a slot are averaged).
    Convolutions keep the length (``same`` padding) and there is no pooling between them, so every slot
    keeps its own features until the dense layer, which weighs each date of the season separately.

    The grid covers days ``1..max_day``: one year by default; raise ``max_day`` for a series over several
    years (e.g. 731 for two). A day outside the grid is refused, never moved into another slot.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 64,
        layers: int = 3,
        kernel_size: int = 5,
        dense: int = 128,
        dropout: float = 0.2,
        grid_days: int = 5,
        max_day: int = 366,
    ) -> None:
        super().__init__()
        self.in_channels, self.grid_days, self.max_day = in_channels, grid_days, max_day
        self.slots = math.ceil(max_day / grid_days)
        self.convs = nn.ModuleList()
        channels = in_channels + 1
        for _ in range(layers):
            self.convs.append(
                nn.Sequential(
                    nn.Conv1d(channels, hidden, kernel_size, padding=kernel_size // 2),
                    nn.BatchNorm1d(hidden),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                )
            )
            channels = hidden
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(hidden * self.slots, dense),
            nn.BatchNorm1d(dense),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dense, num_classes),
        )

    def to_grid(self, x: torch.Tensor, doy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, C + 1, slots]``: the mean spectrum per slot of the regular grid and an "observed" channel.

        Raises:
            ValueError: when an observation's day lies outside ``1..max_day``.
        """
        x, doy = _zero_padding(x, doy, mask)
        outside = mask & ((doy < 1) | (doy > self.max_day))
        if outside.any():
            days = doy[outside]
            raise ValueError(
                f"days {int(days.min())}..{int(days.max())} are outside TempCNN's grid of days 1..{self.max_day}: "
                f"count days from 1; for a series over several years build TempCNN(..., max_day="
                f"{max(int(days.max()), self.max_day)}), or split it per year (or pass days modulo 365)."
            )
        slot = torch.where(mask, (doy - 1) // self.grid_days, 0)  # padding goes to slot 0 with weight 0
        weight = mask.to(x.dtype)[..., None]
        values = torch.cat([x, weight], dim=-1)  # [B, T, C + 1], zero where padded
        grid = x.new_zeros(len(x), self.slots, values.shape[-1])
        grid.scatter_add_(1, slot[..., None].expand_as(values), values)
        count = grid[..., -1:].clamp(min=1)
        grid = torch.cat([grid[..., :-1] / count, (grid[..., -1:] > 0).to(x.dtype)], dim=-1)
        return grid.transpose(1, 2)

    def forward(self, x: torch.Tensor, doy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, doy, mask, self.in_channels)
        features = self.to_grid(x, doy, mask)
        for conv in self.convs:
            features = conv(features)
        return self.head(features)


class RNNClassifier(nn.Module):
    """An LSTM or GRU over the observations in date order; the last hidden state feeds a linear head.

    Each step's input is the spectrum projected to ``hidden`` plus the sinusoidal encoding of its day of year
    (:class:`DayOfYearEncoding`, as for the attention models), so the state knows *when* each date was seen,
    not only in which order, through a LayerNorm (which keeps a bright unflagged cloud from saturating the
    gates); ``hidden`` must be even. Padding is skipped with ``pack_padded_sequence``: the
    recurrence stops at each series' last real date.
    With ``bidirectional=True`` the last states of both directions are concatenated.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 64,
        layers: int = 2,
        cell: str = "lstm",
        bidirectional: bool = False,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell)
        if rnn_class is None:
            raise ValueError(f"cell={cell!r} must be 'lstm' or 'gru'")
        self.in_channels, self.bidirectional = in_channels, bidirectional
        self.embed = nn.Linear(in_channels, hidden)
        self.doy_encoding = DayOfYearEncoding(hidden)
        self.norm_in = nn.LayerNorm(hidden)
        self.rnn = rnn_class(
            hidden, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )  # fmt: skip
        out = hidden * (2 if bidirectional else 1)
        self.head = nn.Sequential(nn.LayerNorm(out), nn.Dropout(dropout), nn.Linear(out, num_classes))

    def forward(self, x: torch.Tensor, doy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, doy, mask, self.in_channels)
        x, doy, mask = compact(x, doy, mask)
        steps = self.norm_in(self.embed(x) + self.doy_encoding(doy))
        lengths = mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(steps, lengths, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        hidden = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
        last = torch.cat([hidden[-2], hidden[-1]], dim=-1) if self.bidirectional else hidden[-1]
        return self.head(last)


class TransformerClassifier(nn.Module):
    """A transformer encoder with a class token and day-of-year encoding (notebook 03's blocks).

    Tokens: a learned class token, then one per observation: ``Linear(spectrum) + PE(doy)``. Padded
    observations are hidden from every query by the attention mask. The class token's output, after a
    LayerNorm, goes to a linear head. Call ``keep_attention(True)`` to keep each block's weights
    ``[B, heads, 1 + T, 1 + T]`` in ``block.attn.last_attention``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.embed = nn.Linear(in_channels, dim)
        self.doy_encoding = DayOfYearEncoding(dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def keep_attention(self, keep: bool = True) -> None:
        """Keep (or stop keeping) the attention weights of every block for plotting."""
        for block in self.blocks:
            block.attn.keep_attention = keep

    def forward(self, x: torch.Tensor, doy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, doy, mask, self.in_channels)
        x, doy = _zero_padding(x, doy, mask)
        tokens = self.embed(x) + self.doy_encoding(doy)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        valid = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # the class token is always there
        attend = valid[:, None, None, :]  # [B, 1, 1, 1 + T]: every query may attend to the real tokens only
        for block in self.blocks:
            tokens = block(tokens, mask=attend)
        return self.head(self.norm(tokens[:, 0]))


class LTAE(nn.Module):
    """Lightweight Temporal Attention Encoder (Sainte Fare Garnot & Landrieu, 2020), as a classifier.

    1. Each observation's spectrum goes through a small MLP (the role of the pixel-set encoder that feeds
       the L-TAE in the original), then ``e_t = LayerNorm(MLP(x_t) + PE(doy_t))`` of size ``dim``.
    2. Keys ``k_t^h = W_k^h e_t`` of size ``key_dim`` per head ``h``; **one learned master query** ``q^h``
       per head (a parameter, not computed from the input).
    3. Weights ``a_t^h = softmax_t(q^h . k_t^h / sqrt(key_dim))`` over the real dates only: ``[B, heads, T]``.
    4. Values are the embeddings themselves, split into ``heads`` groups of ``dim / heads`` channels; head
       ``h`` returns ``sum_t a_t^h e_t^(h)`` and the heads are concatenated back to ``dim`` channels.
    5. An MLP and a linear head give the class scores.

    The weights of the last call are in ``last_attention`` (``[B, heads, T]``) for plotting.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dim: int = 128,
        heads: int = 16,
        key_dim: int = 8,
        mlp: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.in_channels, self.heads, self.key_dim = in_channels, heads, key_dim
        self.embed = nn.Sequential(nn.Linear(in_channels, dim), nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, dim))
        self.doy_encoding = DayOfYearEncoding(dim)
        self.norm_in = nn.LayerNorm(dim)
        self.to_keys = nn.Linear(dim, heads * key_dim)
        self.master_query = nn.Parameter(torch.randn(heads, key_dim) * key_dim**-0.5)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.BatchNorm1d(mlp), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(mlp, num_classes)
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, doy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, doy, mask, self.in_channels)
        batch, steps, _ = x.shape
        x, doy = _zero_padding(x, doy, mask)
        embedded = self.norm_in(self.embed(x) + self.doy_encoding(doy))  # [B, T, dim]
        keys = self.to_keys(embedded).view(batch, steps, self.heads, self.key_dim)
        scores = torch.einsum("bthk,hk->bht", keys, self.master_query) / math.sqrt(self.key_dim)
        weights = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=-1)  # [B, heads, T]
        self.last_attention = weights.detach()
        values = embedded.view(batch, steps, self.heads, -1)  # [B, T, heads, dim / heads]
        pooled = torch.einsum("bht,bthc->bhc", weights, values).reshape(batch, -1)
        return self.head(self.mlp(pooled))
