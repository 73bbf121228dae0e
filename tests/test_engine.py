from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from live_attention import AttentionEngine, load_model
from live_attention.core.device import cpu_has_native_bf16, resolve_precision
from live_attention.core.models import hub_checkpoint_path
from live_attention.core.preprocess import Preprocess
from live_attention.errors import UserError, WeightsError
from tests.conftest import tiny_vit


def test_fp32_logits_equal_stock_and_rows_sum_to_one():
    m = tiny_vit(layers=4, heads=4, hidden=32)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = m(x)
    eng = AttentionEngine.wrap(m, device="cpu", precision="fp32")
    out = eng.run(x)
    assert out.logits.shape == (3, 10)
    assert (out.logits - ref).abs().max().item() <= 1e-4
    assert out.attn.shape == (3, 4, 4, 17, 17)
    assert out.attn.dtype == torch.float32
    assert torch.allclose(out.attn.sum(-1), torch.ones(3, 4, 4, 17), atol=1e-5)
    assert (out.attn >= 0).all()


def test_attention_matches_multihead_attention_weights():
    """Our explicit softmax equals what nn.MultiheadAttention reports with need_weights=True."""
    m = tiny_vit()
    eng = AttentionEngine.wrap(m, device="cpu", precision="fp32")
    x = torch.randn(1, 3, 32, 32)
    out = eng.run(x)
    with torch.inference_mode():
        tokens = m._process_input(x)
        tokens = torch.cat([m.class_token.expand(1, -1, -1), tokens], 1) + m.encoder.pos_embedding
        blk = m.encoder.layers[0]
        y = blk.ln_1(tokens)
        _, w = blk.self_attention(y, y, y, need_weights=True, average_attn_weights=False)
    assert torch.allclose(out.attn[:, 0], w, atol=1e-6)


def test_vit_b_16_sized_model_fp32_matches_stock():
    m = torchvision.models.vit_b_16().eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = m(x)
    out = AttentionEngine.wrap(m, device="cpu", precision="fp32").run(x)
    assert (out.logits - ref).abs().max().item() <= 1e-4
    assert out.attn.shape == (1, 12, 12, 197, 197)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_runs_close_to_fp32(precision):
    m = tiny_vit(layers=2, hidden=32)
    x = torch.randn(2, 3, 32, 32)
    ref = AttentionEngine.wrap(tiny_vit(layers=2, hidden=32), device="cpu", precision="fp32").run(x)
    out = AttentionEngine.wrap(m, device="cpu", precision=precision).run(x)
    assert out.logits.dtype == torch.float32 and out.attn.dtype == torch.float32
    assert torch.allclose(out.attn.sum(-1), torch.ones_like(out.attn[..., 0]), atol=1e-3)
    assert (out.attn - ref.attn).abs().max().item() < 0.05
    assert (out.logits - ref.logits).abs().max().item() < 0.1


def test_auto_precision_follows_the_device():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("auto", torch.device("mps")) == "fp16"
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(UserError, match="precision"):
        resolve_precision("int8", cpu)


def test_run_rejects_bad_input():
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        eng.run(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="multiples of the patch size 8, got 36×32"):
        eng.run(torch.zeros(1, 3, 36, 32))
    out = eng.run(torch.zeros(1, 3, 64, 48))  # any multiple of the patch: position embeddings interpolated
    assert out.grid == (8, 6) and out.attn.shape[-1] == 1 + 48
    with pytest.raises(TypeError, match="floating"):
        eng.run(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Tensor"):
        eng.run(np.zeros((1, 3, 32, 32), np.float32))


def test_wrap_rejects_non_vit():
    with pytest.raises(UserError, match="not a torchvision, timm or Hugging Face ViT"):
        AttentionEngine.wrap(torch.nn.Linear(3, 3), device="cpu")


def test_preprocess_equals_the_weights_transforms():
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1
    tf = weights.transforms()
    spec = Preprocess(crop_size=224, resize_size=256, mean=tuple(tf.mean), std=tuple(tf.std))
    eng = AttentionEngine.wrap(torchvision.models.vit_b_16(), device="cpu", precision="fp32", preprocess=spec)
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    x, box = eng.preprocess_with_box(bgr)
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)
    ref = tf(rgb).unsqueeze(0)
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x, ref, atol=1e-6)
    # 480 -> 256 tall: the crop covers 420 of 480 rows, centred, and a centred 420-wide strip.
    x0, y0, x1, y1 = box
    assert abs((x1 - x0) - 420) <= 2 and abs((y1 - y0) - 420) <= 2
    assert abs((x0 + x1) / 2 - 320) <= 2 and abs((y0 + y1) / 2 - 240) <= 2


@pytest.mark.parametrize("shape", [(50, 70), (50, 70, 1), (50, 70, 4), (70, 50, 3)])
def test_preprocess_accepts_gray_bgra_any_size(shape):
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    frame = np.full(shape, 128, np.uint8)
    x = eng.preprocess(frame)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32


def test_preprocess_rejects_bad_frames():
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    with pytest.raises(TypeError, match="uint8"):
        eng.preprocess(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        eng.preprocess(np.zeros((10, 10, 2), np.uint8))


def test_topk_uses_categories():
    eng = AttentionEngine.wrap(tiny_vit(classes=3), device="cpu", precision="fp32", categories=["a", "b", "c"])
    top = eng.topk(torch.tensor([[0.0, 5.0, 1.0]]), k=5)
    assert [name for name, _ in top[0]] == ["b", "c", "a"]
    assert abs(sum(p for _, p in top[0]) - 1.0) < 1e-5


def test_random_weights_are_flagged_untrained():
    eng = load_model("vit_b_32", weights="random", device="cpu", precision="fp32")
    assert eng.untrained and eng.weights_label == "random"
    assert "UNTRAINED" in eng.describe()
    assert eng.num_layers == 12 and eng.num_heads == 12 and eng.grid == (7, 7)
    assert len(eng.categories) == 1000 and eng.categories[0] == "tench"


def test_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """The file torchvision's weights API downloads (a plain state dict) loads as it is from the cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ViT_B_32_Weights.DEFAULT
    path = hub_checkpoint_path(weights.url)
    assert path.parent == tmp_path / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.manual_seed(3)
    src = torchvision.models.vit_b_32()
    torch.save(src.state_dict(), path)
    eng = load_model("vit_b_32", weights="imagenet", device="cpu", precision="fp32")
    assert not eng.untrained and eng.weights_label == "IMAGENET1K_V1"
    assert torch.equal(eng.module.heads.head.weight, src.heads.head.weight)
    assert eng.preprocess_spec.resize_size == 256 and eng.preprocess_spec.crop_size == 224
    assert eng.weights_sha256 and len(eng.weights_sha256) == 64


def test_offline_without_cache_names_file_cache_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        load_model("vit_b_16", weights="imagenet", device="cpu")
    msg = str(info.value)
    assert "vit_b_16-c867db91.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "--weights PATH" in msg and "\n" not in msg


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("LIVE_ATTENTION_OFFLINE", raising=False)

    def fail(*_a, **_k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    with pytest.raises(WeightsError, match="download failed"):
        load_model("vit_b_16", weights="imagenet", device="cpu")
    assert not list((tmp_path / "hub" / "checkpoints").glob("*"))


def test_local_state_dict_file(tmp_path):
    torch.manual_seed(1)
    src = torchvision.models.vit_b_32()
    p = tmp_path / "mine.pth"
    torch.save({"state_dict": src.state_dict()}, p)
    eng = load_model("vit_b_32", weights=str(p), device="cpu", precision="fp32")
    assert eng.weights_label == "mine.pth" and not eng.untrained
    assert torch.equal(eng.module.conv_proj.weight, src.conv_proj.weight)


def test_wrong_architecture_names_the_mismatch(tmp_path):
    p = tmp_path / "tiny.pth"
    torch.save(tiny_vit().state_dict(), p)
    with pytest.raises(WeightsError) as info:
        load_model("vit_b_32", weights=str(p), device="cpu")
    msg = str(info.value)
    assert "do not fit vit_b_32" in msg and "shape" in msg and "--model" in msg


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model("vit_b_32", weights=str(tmp_path / "nope.pth"), device="cpu")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(WeightsError, match="not a PyTorch or safetensors checkpoint"):
        load_model("vit_b_32", weights=str(bad), device="cpu")
    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(WeightsError, match="cannot read"):
        load_model("vit_b_32", weights=str(truncated), device="cpu")
    notdict = tmp_path / "list.pth"
    torch.save([1, 2, 3], notdict)
    with pytest.raises(WeightsError, match="state dict"):
        load_model("vit_b_32", weights=str(notdict), device="cpu")


def test_unsafe_pickle_is_refused_not_executed(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "evil.pth"
    with open(p, "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(WeightsError):
        load_model("vit_b_32", weights=str(p), device="cpu")
    assert not marker.exists()


def test_unknown_model_and_device():
    with pytest.raises(UserError, match="unknown model"):
        load_model("resnet50", weights="random")
    with pytest.raises(UserError, match="device"):
        load_model("vit_b_32", weights="random", device="tpu")


def test_timm_vit_is_wrapped_and_fused_attention_handled():
    import timm  # in the test extra: CI must have it
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                          num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ref = m(x)
    eng = AttentionEngine.wrap(m, device="cpu", precision="fp32")
    assert all(not blk.attn.fused_attn for blk in m.blocks)
    out = eng.run(x)
    assert out.attn.shape == (2, 2, 3, 17, 17)
    assert (out.logits - ref).abs().max().item() <= 1e-4
    assert torch.allclose(out.attn.sum(-1), torch.ones(2, 2, 3, 17), atol=1e-5)


def test_timm_capture_failure_is_loud():
    import timm
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2).eval()
    eng = AttentionEngine.wrap(m, device="cpu", precision="fp32")
    m.blocks[1].attn.fused_attn = True  # as if a timm version ignored the switch
    with pytest.raises(RuntimeError, match="captured attention from 1 of 2"):
        eng.run(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(("content", "says"), [
    (b"", "is empty"),
    (b"not weights\n", "is not a PyTorch or safetensors checkpoint"),
    (b"<html><body>404</body></html>", "is not a PyTorch or safetensors checkpoint"),
])
@pytest.mark.parametrize("name", ["w.pth", "w.bin", "w.safetensors"])
def test_a_file_that_is_no_checkpoint_says_what_it_is_not(tmp_path, content, says, name):
    """Told from the first bytes, whatever the name (a text file was called a pickle of Python objects)."""
    from live_attention.core.weights import load_weights_file
    from live_attention.demo.model import read_checkpoint

    p = tmp_path / name
    p.write_bytes(content)
    for load in (load_weights_file, read_checkpoint):
        with pytest.raises(WeightsError) as info:
            load(p)
        assert says in str(info.value) and "\n" not in str(info.value)
