"""The reference attention, transformer blocks, ViT and cross-attention of course_utils.models.vit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_utils.models.vit import (
    CrossAttentionBlock,
    MultiHeadAttention,
    PatchEmbedding,
    TransformerBlock,
    ViT,
    attention_rollout,
    scaled_dot_product_attention,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_attention_equals_pytorch_reference() -> None:
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert weights.shape == (2, 3, 5, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))


def test_attention_is_a_weighted_sum_of_values() -> None:
    # One key matches the query far better than the others: the output is (almost) that key's value.
    k = torch.eye(4) * 20.0
    v = torch.arange(16.0).view(4, 4)
    out, weights = scaled_dot_product_attention(k[2:3], k, v)
    assert weights[0, 2] > 0.999
    torch.testing.assert_close(out[0], v[2], atol=1e-2, rtol=0)


def test_boolean_mask_matches_pytorch_and_ignores_masked_keys() -> None:
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 3)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[:, 4:] = False  # the last two keys are padding
    mask[0, 1] = False
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.all(weights[..., 4:] == 0) and torch.all(weights[:, 0, 1] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    changed = v.clone()
    changed[:, 4:] += 100.0  # what is behind the mask must not matter
    torch.testing.assert_close(scaled_dot_product_attention(q, k, changed, mask)[0], out)


def test_causal_mask_and_float_mask() -> None:
    q = k = v = torch.randn(1, 4, 8)
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    out, weights = scaled_dot_product_attention(q, k, v, causal)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert torch.all(weights.triu(1) == 0)
    additive = torch.zeros(4, 4).masked_fill(~causal, float("-inf"))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, additive)[0], out)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same feature size"):
        scaled_dot_product_attention(torch.randn(2, 4), torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(ValueError, match="hides every key"):
        scaled_dot_product_attention(torch.randn(2, 4), torch.randn(3, 4), torch.randn(3, 4), torch.zeros(2, 3).bool())
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, heads=4)
    with pytest.raises(ValueError, match="multiple of the patch"):
        PatchEmbedding(3, 8, patch=4)(torch.randn(1, 3, 10, 12))


def test_multi_head_attention_matches_torch_module() -> None:
    dim, heads = 16, 4
    ours = MultiHeadAttention(dim, heads).eval()
    theirs = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.to_q.weight, ours.to_k.weight, ours.to_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.to_q.bias, ours.to_k.bias, ours.to_v.bias]))
        theirs.out_proj.weight.copy_(ours.out.weight)
        theirs.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(3, 9, dim)
    expected, expected_weights = theirs(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-4)
    ours.keep_attention = True  # the written-out path gives the same output and the same weights
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.last_attention, expected_weights, atol=1e-5, rtol=1e-4)


def test_transformer_block_keeps_shape_and_is_residual() -> None:
    block = TransformerBlock(dim=16, heads=2)
    x = torch.randn(2, 5, 16)
    assert block(x).shape == x.shape
    for layer in (block.attn.out, block.mlp[-2]):  # zero the branches' last layers: the block is the identity
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    torch.testing.assert_close(block(x), x)


def test_patch_embedding_is_a_linear_map_per_patch() -> None:
    embed = PatchEmbedding(in_channels=3, dim=5, patch=4)
    image = torch.randn(2, 3, 8, 12)
    tokens = embed(image)
    assert tokens.shape == (2, 6, 5)  # a 2 x 3 grid of patches
    patch = image[:, :, 4:8, 8:12].reshape(2, -1)  # row 1, column 2 -> token 1 * 3 + 2
    expected = patch @ embed.proj.weight.reshape(5, -1).T + embed.proj.bias
    torch.testing.assert_close(tokens[:, 5], expected, atol=1e-5, rtol=1e-4)


def test_vit_forward_attention_maps_and_rollout() -> None:
    model = ViT(in_channels=12, num_classes=10, image_size=32, patch=8, dim=32, depth=2, heads=4)
    x = torch.randn(3, 12, 32, 32)
    logits = model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (3, 4, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 4, 17))
    rollout = attention_rollout(maps)
    assert rollout.shape == (3, 17, 17)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(3, 17))
    assert all(not block.attn.keep_attention for block in model.blocks)  # switched back off
    logits.sum().backward()
    assert model.embed.proj.weight.grad is not None and model.pos_embed.grad.abs().sum() > 0


def test_rollout_of_identity_attention_is_identity() -> None:
    eye = torch.eye(5).expand(1, 2, 5, 5)
    torch.testing.assert_close(attention_rollout([eye, eye, eye]), torch.eye(5).expand(1, 5, 5))


def test_cross_attention_shapes_and_it_reads_the_other_modality() -> None:
    block = CrossAttentionBlock(dim=16, heads=4, context_dim=8).eval()
    s2, s1 = torch.randn(2, 10, 16), torch.randn(2, 6, 8)
    out = block(s2, s1)
    assert out.shape == s2.shape
    assert not torch.allclose(block(s2, s1 + torch.randn_like(s1)), out)  # the context changes the output
    block.attn.keep_attention = True
    block(s2, s1)
    assert block.attn.last_attention.shape == (2, 4, 10, 6)
    # Mask out all but context token 3: every query then reads only that token's value.
    only_three = torch.zeros(10, 6, dtype=torch.bool)
    only_three[:, 3] = True
    block(s2, s1, mask=only_three)
    weights = block.attn.last_attention
    assert torch.all(weights[..., 3] == 1)
    shuffled = s1.clone()
    shuffled[:, [0, 1, 2, 4, 5]] = torch.randn(2, 5, 8)
    torch.testing.assert_close(block(s2, shuffled, mask=only_three), block(s2, s1, mask=only_three))
