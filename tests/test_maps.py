from __future__ import annotations

import math

import pytest
import torch

from live_attention import maps


def rand_attn(*shape, seed=0, peak=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * peak).softmax(-1)


def test_cls_attention_and_grid():
    a = rand_attn(2, 3, 4, 17, 17)
    c = maps.cls_attention(a)
    assert c.shape == (2, 3, 4, 16)
    assert torch.equal(c, a[..., 0, 1:])
    g = maps.to_grid(c)
    assert g.shape == (2, 3, 4, 4, 4)
    assert torch.equal(g[..., 1, 2], c[..., 6])
    assert maps.to_grid(torch.zeros(12), (3, 4)).shape == (3, 4)
    with pytest.raises(ValueError, match="square"):
        maps.to_grid(torch.zeros(12))


def test_query_attention():
    a = rand_attn(3, 2, 10, 10)
    q = maps.query_attention(a, 4)
    assert torch.equal(q, a[..., 5, 1:])
    with pytest.raises(ValueError, match="out of range"):
        maps.query_attention(a, 9)


def test_fuse_heads():
    a = rand_attn(2, 4, 5, 5)
    assert torch.allclose(maps.fuse_heads(a, "mean"), a.mean(1))
    assert torch.equal(maps.fuse_heads(a, "max"), a.amax(1))
    assert torch.equal(maps.fuse_heads(a, "min"), a.amin(1))
    assert torch.equal(maps.fuse_heads(a[..., 0, 1:], "max", dim=-2), a[..., 0, 1:].amax(-2))
    with pytest.raises(ValueError, match="fusion"):
        maps.fuse_heads(a, "median")


def reference_rollout(attn, fusion, residual):
    """vit-explain style loop, written independently, with explicit keepdim renormalisation."""
    out = []
    r = None
    for layer in attn:
        a = {"mean": layer.mean(0), "max": layer.amax(0), "min": layer.amin(0)}[fusion]
        a = a / a.sum(-1, keepdim=True)
        a = (1 - residual) * a + residual * torch.eye(a.shape[-1])
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
        out.append(r)
    return torch.stack(out)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_matches_reference(fusion):
    a = rand_attn(4, 3, 9, 9, seed=2)
    got = maps.rollout(a, head_fusion=fusion, cumulative=True)
    ref = reference_rollout(a, fusion, 0.5)
    assert got.shape == (4, 9, 9)
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.allclose(maps.rollout(a, head_fusion=fusion), ref[-1], atol=1e-6)
    # Products of row-stochastic matrices stay row-stochastic.
    assert torch.allclose(got.sum(-1), torch.ones(4, 9), atol=1e-5)


def test_rollout_is_batched_and_residual_one_is_identity():
    a = rand_attn(2, 5, 3, 2, 7, 7)
    r = maps.rollout(a, cumulative=True)
    assert r.shape == (2, 5, 3, 7, 7)
    assert torch.allclose(r[1, 2], maps.rollout(a[1, 2], cumulative=True))
    eye = maps.rollout(a, residual=1.0)
    assert torch.allclose(eye, torch.eye(7).expand_as(eye))


def test_rollout_of_one_layer_is_the_mixed_layer():
    a = rand_attn(1, 2, 6, 6)
    mixed = 0.5 * a[0].mean(0) + 0.5 * torch.eye(6)
    assert torch.allclose(maps.rollout(a), mixed / mixed.sum(-1, keepdim=True), atol=1e-6)


def test_discard_keeps_class_token_links_and_renormalises():
    a = rand_attn(1, 1, 6, 6, seed=5)
    mixed = maps.mixed_layers(a, residual=0.0, discard_ratio=0.5)[0]
    fused = a[0, 0]
    # Class-token row and column survive untouched (up to the renormalisation of their row).
    assert (mixed[0] > 0).all()
    assert (mixed[:, 0] > 0).all()
    pp = mixed[1:, 1:]
    n_zero = int((pp == 0).sum())
    assert n_zero == int(25 * 0.5)
    # The discarded links are the weakest patch-to-patch links.
    kept_min = fused[1:, 1:][pp > 0].min()
    dropped_max = fused[1:, 1:][pp == 0].max()
    assert dropped_max <= kept_min
    assert torch.allclose(mixed.sum(-1), torch.ones(6), atol=1e-6)


def test_entropy_bounds_and_definition():
    n = 8
    uniform = torch.full((2, 3, n, n), 1.0 / n)
    assert torch.allclose(maps.entropy(uniform), torch.ones(2, 3))
    onehot = torch.zeros(2, 3, n, n)
    onehot[..., 0] = 1.0
    assert torch.allclose(maps.entropy(onehot), torch.zeros(2, 3))
    a = rand_attn(2, 3, n, n)
    p = a[..., 0, :]
    ref = -(p * p.log()).sum(-1) / math.log(n)
    assert torch.allclose(maps.entropy(a, "cls"), ref, atol=1e-6)
    ref_all = (-(a * a.log()).sum(-1) / math.log(n)).mean(-1)
    assert torch.allclose(maps.entropy(a, "all"), ref_all, atol=1e-6)
    with pytest.raises(ValueError, match="query"):
        maps.entropy(a, "patch")


def test_entropy_in_fp16_has_no_nan():
    onehot = torch.zeros(1, 1, 4, 4, dtype=torch.float16)
    onehot[..., 1] = 1.0
    e = maps.entropy(onehot, "all")
    assert torch.isfinite(e).all() and e.dtype == torch.float32


def test_patch_entropy():
    a = rand_attn(2, 2, 5, 5)
    pe = maps.patch_entropy(a)
    assert pe.shape == (2, 2, 4)
    assert torch.allclose(pe[..., 2], maps.row_entropy(a[..., 3, :]))


def test_normalize_map():
    x = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    n = maps.normalize_map(x)
    assert torch.allclose(n[0], torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(n[1], torch.zeros(3))
    assert torch.allclose(maps.normalize_map(x, "max")[0], x[0] / 3)
    g = torch.arange(16.0).view(4, 4)
    assert maps.normalize_map(g, dims=2).max() == 1.0
    with pytest.raises(ValueError):
        maps.normalize_map(x, "zscore")


def test_bad_input():
    with pytest.raises(TypeError):
        maps.cls_attention([[1.0]])
    with pytest.raises(TypeError, match="floating"):
        maps.rollout(torch.zeros(2, 2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="square"):
        maps.entropy(torch.zeros(2, 2, 3, 4))
    with pytest.raises(ValueError, match="dims"):
        maps.rollout(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="residual"):
        maps.rollout(rand_attn(1, 1, 3, 3), residual=1.5)


def test_maps_on_engine_output_per_frame_shapes():
    from live_attention import AttentionEngine
    from tests.conftest import tiny_vit

    eng = AttentionEngine.wrap(tiny_vit(layers=3, heads=2), device="cpu", precision="bf16")
    out = eng.run(torch.randn(1, 3, 32, 32))
    assert maps.cls_attention(out.attn).shape == (1, 3, 2, 16)
    assert maps.rollout(out.attn, cumulative=True).shape == (1, 3, 17, 17)
    assert maps.entropy(out.attn).shape == (1, 3, 2)


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_cls_rollout_cumulative_equals_full_rollout(fusion):
    a = rand_attn(2, 5, 3, 9, 9, seed=7)
    full = maps.rollout_cls(maps.rollout(a, fusion, 0.4, 0.2, cumulative=True))
    fast = maps.rollout_cls_cumulative(a, fusion, 0.4, 0.2)
    assert fast.shape == (2, 5, 8)
    assert torch.allclose(fast, full, atol=1e-6)
