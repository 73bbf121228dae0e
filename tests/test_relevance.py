"""Class-specific relevance (Chefer, Gur & Wolf, ICCV 2021): the rule, the engine API, every family."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from live_attention.core import maps
from live_attention.core.engine import AttentionEngine
from live_attention.core.models import load_model
from live_attention.core.step import process_frames
from live_attention.datatypes import Frame, MapSettings
from live_attention.errors import UserError
from tests.conftest import tiny_vit


def vit(seed: int = 0, **kw) -> torch.nn.Module:
    """A tiny random ViT whose classifier is not all zeros (torchvision initialises it to zero: every
    logit equal, every gradient zero)."""
    m = tiny_vit(seed=seed, **kw)
    torch.nn.init.normal_(m.heads.head.weight, std=0.5, generator=torch.Generator().manual_seed(seed))
    return m


def rand_attn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2).softmax(-1)


def reference_rule(attn: torch.Tensor, grads: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """The rule as the paper writes it, with whole matrices: R = I; R <- R + mean_h((grad*A)+) R."""
    b, L, _, n, _ = attn.shape
    out = []
    for i in range(b):
        r = torch.eye(n, dtype=torch.float64)
        for layer in range(L):
            abar = (grads[i, layer].double() * attn[i, layer].double()).clamp(min=0).mean(0)
            r = r + abar @ r
        out.append(r[0, num_prefix:])
    return torch.stack(out).float()


@pytest.mark.parametrize("num_prefix", [1, 3])
def test_the_rule_equals_the_papers_matrix_form(num_prefix):
    attn = rand_attn(2, 4, 3, 11, 11, seed=1)
    grads = torch.randn(2, 4, 3, 11, 11, generator=torch.Generator().manual_seed(2))
    got = maps.chefer_relevance(attn, grads, num_prefix)
    assert got.shape == (2, 11 - num_prefix) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference_rule(attn, grads, num_prefix), atol=1e-5, rtol=1e-5)
    # Layer by layer (as the engine hands them over) gives the same.
    per_layer = maps.chefer_relevance(list(attn.unbind(1)), list(grads.unbind(1)), num_prefix)
    torch.testing.assert_close(per_layer, got)


def test_torchvision_relevance_equals_an_independent_autograd_reference():
    """The reference runs the stock torchvision model with each block's attention written out here
    (per-head softmax weights kept with retain_grad) and backpropagates the target logit itself."""
    m = vit(layers=3, heads=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    eng = AttentionEngine.wrap(m, device="cpu", precision="fp32")
    logits, rel = eng.relevance(x, targets=[3, 7])
    assert rel.shape == (2, 16) and rel.dtype == torch.float32

    ref_model = vit(layers=3, heads=2)
    kept: list[torch.Tensor] = []

    def attention(mha):
        def forward(q_in, k_in, v_in, need_weights=False, **_kw):
            b, n, e = q_in.shape
            h = mha.num_heads
            w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
            b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
            q = (q_in @ w_q.T + b_q).view(b, n, h, -1).transpose(1, 2)
            k = (k_in @ w_k.T + b_k).view(b, n, h, -1).transpose(1, 2)
            v = (v_in @ w_v.T + b_v).view(b, n, h, -1).transpose(1, 2)
            a = torch.softmax(q @ k.transpose(-1, -2) / (e // h) ** 0.5, dim=-1)
            a.retain_grad()
            kept.append(a)
            out = (a @ v).transpose(1, 2).reshape(b, n, e) @ mha.out_proj.weight.T + mha.out_proj.bias
            return out, None
        return forward

    for blk in ref_model.encoder.layers:
        blk.self_attention.forward = attention(blk.self_attention)
    out = ref_model(x)
    torch.testing.assert_close(out.detach(), logits, atol=1e-4, rtol=1e-4)
    out.gather(1, torch.tensor([[3], [7]])).sum().backward()
    attn = torch.stack([a.detach() for a in kept], 1)
    grads = torch.stack([a.grad for a in kept], 1)
    torch.testing.assert_close(rel, reference_rule(attn, grads, 1), atol=1e-5, rtol=1e-4)


def test_targets_none_one_or_one_per_image():
    eng = AttentionEngine.wrap(vit(), device="cpu", precision="fp32")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    logits, top = eng.relevance(x)
    out = eng.explain(x)
    assert torch.equal(out.targets, logits.argmax(-1))
    _, same = eng.relevance(x, int(logits.argmax(-1)[0]))
    torch.testing.assert_close(same[0], top[0])
    _, each = eng.relevance(x, [1, 2, 3])
    _, one = eng.relevance(x[1:2], 2)
    torch.testing.assert_close(each[1:2], one, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(each[1], eng.relevance(x[1:2], 5)[1][0])  # another class, another map
    with pytest.raises(ValueError, match="out of range"):
        eng.relevance(x, 10)
    with pytest.raises(ValueError, match="one per image"):
        eng.relevance(x, [1, 2])


def test_timm_models_with_register_and_distillation_tokens():
    for name, prefix in (("vit_small_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)):
        kw = dict(img_size=32, patch_size=8, depth=2, num_classes=5)
        if name.startswith("vit"):
            kw.update(reg_tokens=4, class_token=True, embed_dim=32, num_heads=2)
            prefix = 5
        m = timm.create_model(name, pretrained=False, **kw).eval()
        eng = AttentionEngine.wrap(m, device="cpu", precision="fp32")
        assert eng.num_prefix == prefix
        logits, rel = eng.relevance(torch.randn(2, 3, 32, 32), targets=1)
        assert rel.shape == (2, 16) and torch.isfinite(rel).all() and (rel >= 0).all()


def test_low_precision_models_give_fp32_relevance():
    eng = AttentionEngine.wrap(vit(), device="cpu", precision="bf16")
    logits, rel = eng.relevance(torch.randn(1, 3, 32, 32))
    assert rel.dtype == torch.float32 and torch.isfinite(rel).all()


def test_a_model_without_a_classifier_says_so():
    m = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                          embed_dim=32, num_heads=2, num_classes=0).eval()
    eng = AttentionEngine.wrap(m, device="cpu", precision="fp32")
    with pytest.raises(UserError, match="no classifier"):
        eng.relevance(torch.randn(1, 3, 32, 32))


def test_no_gradients_on_the_live_path_unless_the_relevance_view_is_on(monkeypatch):
    eng = AttentionEngine.wrap(vit(), device="cpu", precision="fp32")
    calls = []
    orig = eng.explain
    monkeypatch.setattr(eng, "explain", lambda *a, **k: calls.append(1) or orig(*a, **k))
    frame = Frame(np.full((40, 40, 3), 90, np.uint8), 0, 0, "t")
    with torch.inference_mode(False), torch.no_grad():
        (off,) = process_frames(eng, [frame], MapSettings())
        assert not calls and off.relevance is None and off.target is None
        (on,) = process_frames(eng, [frame], MapSettings(relevance=True, target=4))
    assert calls and on.relevance.shape == (16,) and on.target == 4
    assert on.target_label == "class 4" and 0.0 <= on.target_p <= 1.0


def test_target_names_and_indices_and_a_one_line_error_listing_the_classes():
    eng = load_model("demo", device="cpu")
    assert eng.class_index("square") == eng.categories.index("square")
    assert eng.class_index("tri") == eng.categories.index("triangle")  # an unambiguous prefix
    assert eng.class_index("2") == 2 and eng.class_index(None) is None
    with pytest.raises(UserError) as info:
        eng.class_index("not a class")
    msg = str(info.value)
    assert "circle, square, triangle, cross" in msg and "0..3" in msg and "\n" not in msg
    with pytest.raises(UserError, match="0..3"):
        eng.class_index("7")
