"""Attention and a small Vision Transformer, written out so each step can be read (notebook 03).

The pieces, in the order the notebook builds them:

* :func:`scaled_dot_product_attention`: ``softmax(Q K^T / sqrt(d) + mask) V``, returning the weights too;
  it gives the same output as ``torch.nn.functional.scaled_dot_product_attention``.
* :class:`MultiHeadAttention`: learned projections to queries, keys and values, split into heads,
  attention per head, heads concatenated and projected back. Self-attention when called with one token
  sequence, cross-attention when ``context`` (another sequence, e.g. another sensor's tokens) is given.
* :class:`TransformerBlock`: pre-norm attention and MLP, each wrapped in a residual connection.
* :class:`PatchEmbedding`: an image cut into ``p x p`` patches, each projected to a token (a strided convolution).
* :class:`ViT`: patch embedding, a class token, learned position embeddings, blocks, a linear head.
* :func:`attention_rollout`: what the class token looks at through all blocks (Abnar & Zuidema, 2020).
* :class:`CrossAttentionBlock`: tokens of one modality attend to the tokens of another (co-attention).

Tensors are ``[batch, tokens, dim]`` throughout; attention weights are ``[batch, heads, queries, keys]``.
Masks follow PyTorch's convention for boolean masks: ``True`` means "may attend", ``False`` "ignore".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and weights: ``A = softmax(q k^T / sqrt(d) + mask)``, output ``A v``.

    Args:
        q: queries ``[..., Lq, d]``.
        k: keys ``[..., Lk, d]``.
        v: values ``[..., Lk, dv]``.
        mask: boolean, broadcastable to ``[..., Lq, Lk]``; ``False`` keys get zero weight.
            A float mask is added to the scores instead.

    Returns:
        ``(output [..., Lq, dv], weights [..., Lq, Lk])``; each row of the weights sums to 1.

    Raises:
        ValueError: when the feature sizes of ``q`` and ``k`` differ, or a boolean mask leaves a query
            with no key to attend to (its weights would be undefined).
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys need the same feature size, got {q.shape[-1]} and {k.shape[-1]}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        if mask.dtype == torch.bool:
            if not mask.any(dim=-1).all():
                raise ValueError("the mask hides every key from some query; keep at least one True per row")
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention with learned query, key, value and output projections.

    ``forward(x)`` is self-attention (queries, keys and values all from ``x``); ``forward(x, context)`` is
    cross-attention (queries from ``x``, keys and values from ``context``). The weights of the last call are
    kept in ``last_attention`` when ``keep_attention`` is set, for attention maps.

    Args:
        dim: token size (of ``x``, and of the output).
        heads: number of heads; ``dim`` must be divisible by it.
        context_dim: token size of ``context`` (default ``dim``).
        qkv_bias: biases in the query, key and value projections.
        dropout: dropout on the attention weights (training only).
    """

    def __init__(
        self, dim: int, heads: int = 4, context_dim: int | None = None, qkv_bias: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}; pick dim = heads * head size")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None

    def _split(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L, dim]`` -> ``[B, heads, L, head_dim]``."""
        batch, length, _ = tokens.shape
        return tokens.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x [B, Lq, dim]`` (and ``context [B, Lk, context_dim]``) -> ``[B, Lq, dim]``.

        ``mask`` (boolean, ``True`` = may attend) broadcasts to ``[B, heads, Lq, Lk]``.
        """
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        if self.keep_attention:
            mixed, weights = scaled_dot_product_attention(q, k, v, mask)
            self.last_attention = weights.detach()
            if self.training and self.dropout:
                mixed = F.dropout(weights, self.dropout) @ v
        else:  # PyTorch's fused kernel: the same result, faster and lighter on memory
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout * self.training)
        batch, _, length, _ = mixed.shape
        return self.out(mixed.transpose(1, 2).reshape(batch, length, self.dim))


class MLP(nn.Sequential):
    """The transformer's per-token feed-forward network: Linear, GELU, Linear (hidden size ``ratio * dim``)."""

    def __init__(self, dim: int, ratio: float = 4.0, dropout: float = 0.0) -> None:
        hidden = int(dim * ratio)
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )


class TransformerBlock(nn.Module):
    """A pre-norm transformer encoder block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadAttention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class PatchEmbedding(nn.Module):
    """Cut ``[B, C, H, W]`` into ``patch x patch`` squares and project each to a ``dim`` token.

    A convolution with kernel = stride = ``patch`` does exactly that: one linear map per patch, no overlap.
    Output ``[B, (H / patch) * (W / patch), dim]``, patches in row-major order.
    """

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.patch or width % self.patch:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch}; crop or pad it"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """A small Vision Transformer for image classification (Dosovitskiy et al., 2021).

    Patch tokens plus a learned class token, learned position embeddings, ``depth`` pre-norm blocks, a final
    LayerNorm and a linear head on the class token.

    Args:
        in_channels: image bands (12 for Sentinel-2).
        num_classes: outputs of the head.
        image_size: height = width of the input.
        patch: patch size; ``image_size`` must be a multiple of it.
        dim, depth, heads, mlp_ratio, dropout: size of the transformer.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 64,
        patch: int = 8,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size={image_size} is not a multiple of patch={patch}")
        self.grid = image_size // patch
        self.embed = PatchEmbedding(in_channels, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid**2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_weights)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All output tokens ``[B, 1 + grid^2, dim]`` (class token first), after the final norm."""
        tokens = self.embed(x)
        if tokens.shape[1] != self.grid**2:
            raise ValueError(f"expected a {self.grid * self.embed.patch}-pixel square image, got {tuple(x.shape[-2:])}")
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x)[:, 0])

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The attention weights of every block for ``x``: a list of ``[B, heads, 1 + N, 1 + N]``."""
        was_training = self.training
        self.eval()
        for block in self.blocks:
            block.attn.keep_attention = True
        try:
            self.tokens(x)
            return [block.attn.last_attention for block in self.blocks]
        finally:
            for block in self.blocks:
                block.attn.keep_attention, block.attn.last_attention = False, None
            self.train(was_training)


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights and zero biases, the usual ViT initialisation."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def attention_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token draws on each input token.

    Per block, average the heads, add the identity for the residual connection and renormalise the rows;
    multiply the blocks' matrices from the first to the last.

    Args:
        attentions: per block ``[B, heads, L, L]`` (as from :meth:`ViT.attention_maps`).

    Returns:
        ``[B, L, L]``, rows summing to 1. Row 0 of a ViT's rollout is what the class token looks at.
    """
    if not attentions:
        raise ValueError("no attention maps given")
    rollout = None
    for weights in attentions:
        mixed = weights.mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], device=mixed.device, dtype=mixed.dtype)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


class CrossAttentionBlock(nn.Module):
    """Tokens of one modality attend to another's: ``x + Attn(LN(x), LN(context))``, then ``x + MLP(LN(x))``.

    With Sentinel-2 tokens as ``x`` and Sentinel-1 tokens as ``context``, each optical patch gathers the
    radar information it needs (for example where a cloud hides the ground). The output has ``x``'s tokens.
    """

    def __init__(
        self, dim: int, heads: int = 4, context_dim: int | None = None, mlp_ratio: float = 2.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(dim, eps=1e-6)
        self.norm_context = nn.LayerNorm(context_dim or dim, eps=1e-6)
        self.attn = MultiHeadAttention(dim, heads, context_dim=context_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_x(x), self.norm_context(context), mask=mask)
        return x + self.mlp(self.norm2(x))
