from __future__ import annotations

import threading

import networkx as nx
import numpy as np
import pytest
import torch

from live_attention import flow as flow_mod
from live_attention import maps
from live_attention.core.flow import (
    DEFAULT_SCALE,
    FlowCancelled,
    attention_flow,
    attention_flow_mixed,
    default_scale,
)


def rand_attn(*shape, seed=0, peak=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * peak).softmax(-1).to(dtype)


def flow_graph_networkx(mixed: torch.Tensor, num_prefix: int = 1, scale: int | None = None):
    """The full layered graph, straight from the definition: nodes ``(l, i)`` for l = 0..L, edge
    ``(l-1, j) -> (l, i)`` with capacity ``A_l[i, j]`` (float), or ``floor(A_l[i, j] * scale)`` (int).

    Returns ``(graph, sources, sink)``: the input patch nodes and the top class token.
    """
    a = mixed.detach().double().numpy()
    num_layers, n, _ = a.shape
    g = nx.DiGraph()
    g.add_nodes_from((layer, i) for layer in range(num_layers + 1) for i in range(n))
    for layer in range(1, num_layers + 1):
        for i in range(n):
            for j in range(n):
                c = a[layer - 1, i, j]
                cap = c if scale is None else int(np.floor(c * scale))
                if cap > 0:
                    g.add_edge((layer - 1, j), (layer, i), capacity=cap)
    return g, [(0, num_prefix + p) for p in range(n - num_prefix)], (num_layers, 0)


def nx_flows(mixed, num_prefix=1, scale=None, func=nx.algorithms.flow.preflow_push):
    g, sources, sink = flow_graph_networkx(mixed, num_prefix, scale)
    return np.array([nx.maximum_flow_value(g, s, sink, flow_func=func) for s in sources]), g


CASES = [  # (layers, heads, tokens, num_prefix, kwargs)
    (2, 2, 5, 1, {}),
    (3, 2, 7, 1, {"residual": 0.2}),
    (4, 2, 10, 1, {"head_fusion": "max", "residual": 0.0}),
    (3, 2, 9, 2, {"head_fusion": "min", "discard_ratio": 0.5}),
    (4, 2, 8, 1, {"residual": 0.0, "discard_ratio": 0.8}),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_networkx_float_capacities(case):
    layers, heads, n, num_prefix, kw = CASES[case]
    attn = rand_attn(layers, heads, n, n, seed=case, peak=4.0)
    got = attention_flow(attn, num_prefix=num_prefix, **kw).double().numpy()
    mixed = maps.mixed_layers(attn, num_prefix=num_prefix, **kw)
    ref, g = nx_flows(mixed, num_prefix)
    assert got.shape == (n - num_prefix,)
    # Floored capacities: never above the real flow, short of it by < (edges in a min cut) / scale.
    assert np.all(got <= ref + 1e-9)
    assert np.all(ref - got <= g.number_of_edges() / DEFAULT_SCALE)
    assert np.allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("scale", [DEFAULT_SCALE, 1000])
def test_exact_for_floored_capacities(case, scale):
    layers, heads, n, num_prefix, kw = CASES[case]
    attn = rand_attn(layers, heads, n, n, seed=10 + case)
    got = attention_flow(attn, num_prefix=num_prefix, scale=scale, **kw).double().numpy()
    mixed = maps.mixed_layers(attn, num_prefix=num_prefix, **kw)
    ref, _ = nx_flows(mixed, num_prefix, scale=scale, func=nx.algorithms.flow.edmonds_karp)
    assert np.array_equal(np.rint(got * scale), ref)


def test_sparse_first_pass_and_fallback_agree(monkeypatch):
    attn = rand_attn(4, 2, 24, 24, seed=3, peak=2.0)
    solved: list = []
    original_flow = flow_mod._Network.flow

    def counted(self, caps):
        solved.append(self)
        return original_flow(self, caps)

    monkeypatch.setattr(flow_mod._Network, "flow", counted)
    monkeypatch.setattr(flow_mod, "_SPARSE_GIVE_UP", 10**9)
    monkeypatch.setattr(flow_mod, "_SPARSE_KS", (2,))
    full_solves = 0
    for kw in ({"residual": 0.0}, {"residual": 0.5}):
        solved.clear()
        sparse_first = attention_flow(attn, **kw)
        ref, _ = nx_flows(maps.mixed_layers(attn, **kw), scale=DEFAULT_SCALE)
        assert np.array_equal(np.rint(sparse_first.double().numpy() * DEFAULT_SCALE), ref)
        sparse = min(set(solved), key=lambda net: net.nnz)
        assert solved.count(sparse) == 23  # every patch tried on the subgraph first
        full_solves += len(solved) - 23
    assert 0 < full_solves < 46  # both the certified and the fallback path ran
    monkeypatch.setattr(flow_mod, "_SPARSE_GIVE_UP", 1)  # the subgraph is dropped after one miss
    assert torch.equal(attention_flow(attn, residual=0.5), sparse_first)
    monkeypatch.setattr(flow_mod, "_SPARSE_KS", (1, 3))  # two tiers
    assert torch.equal(attention_flow(attn, residual=0.5), sparse_first)
    monkeypatch.setattr(flow_mod, "_SPARSE_KS", ())  # no subgraph at all
    assert torch.equal(attention_flow(attn, residual=0.5), sparse_first)


def test_batch_dims():
    attn = rand_attn(2, 3, 3, 2, 6, 6, seed=5)
    got = attention_flow(attn)
    assert got.shape == (2, 3, 5) and got.dtype == torch.float32
    for b in range(2):
        for c in range(3):
            assert torch.equal(got[b, c], attention_flow(attn[b, c]))
    assert attention_flow(attn[:0]).shape == (0, 3, 5)


def test_identity_layers_carry_nothing_to_the_class_token():
    attn = rand_attn(3, 2, 6, 6, seed=6)
    # residual=1: every layer is the identity, so patch p only reaches itself at the top.
    assert torch.equal(attention_flow(attn, residual=1.0), torch.zeros(5))
    # ... and the class token alone reaches the top class token, through capacity-1 edges.
    assert torch.equal(attention_flow(attn, residual=1.0, num_prefix=0), torch.tensor([1.0, 0, 0, 0, 0, 0]))


def test_single_layer_is_one_edge():
    attn = rand_attn(1, 2, 7, 7, seed=7)
    mixed = maps.mixed_layers(attn)
    got = attention_flow(attn)
    assert torch.equal(got, torch.floor(mixed[0, 0, 1:].double() * DEFAULT_SCALE).float() / DEFAULT_SCALE)
    assert torch.allclose(got, mixed[0, 0, 1:], rtol=0, atol=1 / DEFAULT_SCALE)


def widest_path(mixed: np.ndarray, source: int) -> float:
    """The largest bottleneck of a single path from input token ``source`` to the top class token."""
    w = mixed[0][:, source]
    for a in mixed[1:]:
        w = np.minimum(w[None, :], a).max(1)
    return float(w[0])


@pytest.mark.parametrize("kw", [{}, {"residual": 0.0}, {"head_fusion": "max", "discard_ratio": 0.5}])
def test_bounds(kw):
    attn = rand_attn(4, 3, 12, 12, seed=8, peak=5.0)
    got = attention_flow(attn, **kw).double()
    mixed = maps.mixed_layers(attn, **kw).double()
    edges = int((mixed > 0).sum())
    assert torch.all(got >= 0)
    # Upper: the cut around the sink (the top class row, summing to 1) and the cut around the source.
    assert torch.all(got <= mixed[-1, 0].sum() + 1e-12)
    assert torch.all(got <= 1 + 1e-6)
    assert torch.all(got <= mixed[0][:, 1:].sum(0) + 1e-12)
    # Lower: rollout splits the flow along every path by the product of its weights; that is a
    # feasible flow, so the maximum is at least the rollout. And at least the widest single path.
    roll = maps.rollout_cls(maps.rollout(attn, **kw)).double()
    assert torch.all(got >= roll - edges / DEFAULT_SCALE - 1e-6)
    for p in range(11):
        assert got[p] >= widest_path(mixed.numpy(), 1 + p) - 1 / DEFAULT_SCALE


def test_dtypes_and_grad():
    attn = rand_attn(3, 2, 8, 8, seed=9)
    ref = attention_flow(attn)
    assert torch.equal(attention_flow(attn.double()), ref)
    assert torch.equal(attention_flow(attn.clone().requires_grad_(True)), ref)
    for dtype in (torch.float16, torch.bfloat16):
        got = attention_flow(attn.to(dtype))
        assert got.dtype == torch.float32 and got.device == attn.device
        assert torch.allclose(got, ref, atol=0.05)


def test_flow_from_mixed_or_fused_layers_equals_flow_from_attention():
    """The live path keeps only head-fused layer matrices: flow from them is the same flow."""
    attn = rand_attn(3, 2, 8, 8, seed=11)
    ref = attention_flow(attn, residual=0.3, scale=4096)
    mixed = maps.mixed_layers(attn, "mean", 0.3)
    assert torch.equal(attention_flow_mixed(mixed, scale=4096), ref)
    assert torch.equal(attention_flow_mixed(maps.mix_fused(maps.fuse_heads(attn), 0.3), scale=4096), ref)


def test_progress_and_cancel():
    attn = rand_attn(2, 3, 2, 6, 6, seed=12)
    seen = []
    attention_flow(attn, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 10) for i in range(1, 11)]

    stop = threading.Event()
    seen.clear()

    def progress(done, total):
        seen.append(done)
        if done == 3:
            stop.set()

    with pytest.raises(FlowCancelled, match="3 of 10"):
        attention_flow(attn, progress=progress, cancel=stop)
    assert seen == [1, 2, 3]
    with pytest.raises(FlowCancelled):
        attention_flow(attn, cancel=lambda: True)
    with pytest.raises(TypeError, match="cancel"):
        attention_flow(attn, cancel=True)


def test_scale_choice():
    assert DEFAULT_SCALE == 2**20 == default_scale(197)
    assert default_scale(5000) * 5001 < 2**31 and default_scale(5000) & (default_scale(5000) - 1) == 0
    attn = rand_attn(3, 2, 8, 8, seed=13)
    coarse = attention_flow(attn, scale=64)
    assert torch.equal(coarse * 64, torch.round(coarse * 64))
    assert torch.all(coarse <= attention_flow(attn) + 1e-7)
    with pytest.raises(ValueError, match="scale"):
        attention_flow(attn, scale=0)
    # Every row attends to token 0: it sends out 8 units of capacity 2**30 each, past int32.
    onehot = torch.zeros(3, 1, 8, 8)
    onehot[..., 0] = 1.0
    with pytest.raises(ValueError, match="overflow"):
        attention_flow(onehot, residual=0.0, scale=2**30)


def test_no_patches():
    assert attention_flow(rand_attn(2, 2, 3, 3), num_prefix=3).shape == (0,)


def test_bad_input():
    attn = rand_attn(2, 2, 5, 5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        attention_flow(attn.numpy())
    with pytest.raises(TypeError, match="floating"):
        attention_flow(torch.ones(2, 2, 5, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="dims"):
        attention_flow(attn[0])
    with pytest.raises(ValueError, match="square"):
        attention_flow(attn[..., :4])
    with pytest.raises(ValueError, match="at least one layer"):
        attention_flow(attn[:0])
    with pytest.raises(ValueError, match="num_prefix"):
        attention_flow(attn, num_prefix=6)
    with pytest.raises(ValueError, match="fusion"):
        attention_flow(attn, head_fusion="median")
    with pytest.raises(ValueError, match="residual"):
        attention_flow(attn, residual=1.5)
    with pytest.raises(ValueError, match="NaN"):
        attention_flow(torch.where(attn > 0.3, float("nan"), attn))
    with pytest.raises(ValueError, match="non-negative"):
        attention_flow(-attn)
