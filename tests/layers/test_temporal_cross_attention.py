"""Temporal-aligned cross-attention: chunk rule, time upsampling, batched layer (standard and folded paths) vs a
per-sample loop reference."""

import pytest
import torch
import transformers.modeling_flash_attention_utils as fa_utils
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from videoadapt.layers import temporal_cross_attention as tca_module
from videoadapt.layers.folded_attention import cross_attention_flops
from videoadapt.layers.rotary import Rotary1D, Rotary3D, grid_positions, positions_3d, query_time_positions
from videoadapt.layers.temporal_chunks import chunk_index, chunk_sizes, upsample_time
from videoadapt.layers.temporal_cross_attention import TemporalAlignedCrossAttention


TQ, NQ, D, HEADS = 32, 4, 32, 2
HEAD_DIM = D // HEADS


# ---------------------------------------------------------------------------------------------------------------------
# chunk rule


@pytest.mark.parametrize(
    ("num_keys", "expected"),
    [(45, [2] * 13 + [1] * 19), (32, [1] * 32), (100, [4] * 4 + [3] * 28), (64, [2] * 32)],
)
def test_chunk_sizes_examples(num_keys, expected):
    assert chunk_sizes(num_keys, 32) == expected


@settings(max_examples=100, deadline=None)
@given(num_chunks=st.integers(1, 64), extra=st.integers(0, 500))
def test_chunk_sizes_properties(num_chunks, extra):
    sizes = chunk_sizes(num_chunks + extra, num_chunks)
    assert len(sizes) == num_chunks and sum(sizes) == num_chunks + extra
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
    assert sizes == [len(c) for c in torch.arange(num_chunks + extra).tensor_split(num_chunks)]


def test_chunk_sizes_errors():
    with pytest.raises(ValueError, match="`num_keys` \\(20\\) must be >= `num_chunks` \\(32\\)"):
        chunk_sizes(20, 32)
    with pytest.raises(ValueError, match="num_chunks"):
        chunk_sizes(5, 0)


def test_chunk_index_matches_chunk_sizes():
    lengths = torch.tensor([45, 32, 100, 64])
    index, valid = chunk_index(lengths, 32)
    assert index.shape == valid.shape == (4, 32, 4)
    for b, length in enumerate(lengths.tolist()):
        assert valid[b].sum(-1).tolist() == chunk_sizes(length, 32)
        assert index[b][valid[b]].tolist() == list(range(length))  # contiguous, in order, covering all


# ---------------------------------------------------------------------------------------------------------------------
# time upsampling


def _torch_upsample(sample: torch.Tensor, target: int, grid: tuple[int, int]) -> torch.Tensor:
    """[L, N, D] -> [target, N, D] through nn.Upsample on [1, D, L, h, w], as the official code does."""
    L, N, Dx = sample.shape
    up = nn.Upsample(scale_factor=(target / L, 1, 1), mode="trilinear", align_corners=True)
    out = up(sample.reshape(1, L, *grid, Dx).permute(0, 4, 1, 2, 3))
    assert out.shape[2] == target
    return out.permute(0, 2, 3, 4, 1).reshape(target, N, Dx)


def test_upsample_time_matches_torch_trilinear_per_sample():
    lengths = torch.arange(1, 32).flip(0)  # 31 .. 1, mixed in one batch
    x = torch.randn(31, 31, 6, 5)
    out, new_lengths = upsample_time(x, lengths, 32)
    assert out.shape == (31, 32, 6, 5) and new_lengths.tolist() == [32] * 31
    for b, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[b], _torch_upsample(x[b, :length], 32, (2, 3)), atol=1e-6, rtol=1e-6)


def test_upsample_time_leaves_long_samples_alone():
    x = torch.randn(3, 40, 2, 4)
    out, new_lengths = upsample_time(x, torch.tensor([40, 32, 7]), 32)
    assert out.shape == x.shape and new_lengths.tolist() == [40, 32, 32]
    assert torch.equal(out[:2], x[:2])  # untouched, padding included
    torch.testing.assert_close(out[2, :32], _torch_upsample(x[2, :7], 32, (1, 2)), atol=1e-6, rtol=1e-6)
    assert torch.equal(out[2, 32:], torch.zeros(8, 2, 4))  # new padding is zero
    same, same_lengths = upsample_time(x, torch.tensor([40, 33, 32]), 32)
    assert same is x and same_lengths.tolist() == [40, 33, 32]


def test_upsample_time_is_differentiable():
    x = torch.randn(2, 5, 1, 3, requires_grad=True)
    out, _ = upsample_time(x, torch.tensor([5, 3]), 32)
    out.sum().backward()
    assert x.grad[1, :3].abs().sum() > 0 and x.grad[1, 3:].abs().sum() == 0


# ---------------------------------------------------------------------------------------------------------------------
# the layer vs a slow per-sample reference


def _rot(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, d], cos/sin [N, d] (rotate_half), written out independently of the layer."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos[:, None] + rotated * sin[:, None]


def reference_forward(layer, queries, keys, lengths, query_rotary=None, key_rotary=None):
    """Per sample, per query frame: slice the frame's chunk of keys, softmax(q k^T / sqrt(d)) v with plain ops."""
    B, Tq, Nq, Dx = queries.shape
    Nk, H, d = keys.shape[2], layer.num_heads, layer.head_dim
    v_proj = layer.k_proj if layer.tie_value_to_key else layer.v_proj
    outs = []
    for b in range(B):
        L = int(lengths[b])
        q = layer.q_proj(queries[b]).reshape(Tq * Nq, H, d)
        k = layer.k_proj(keys[b, :L]).reshape(L * Nk, H, d)
        v = v_proj(keys[b, :L]).reshape(L, Nk, H, d)
        if query_rotary is not None:
            cos, sin = (t[min(b, t.shape[0] - 1)] for t in query_rotary)
            q = _rot(q, cos, sin)
        if key_rotary is not None:
            cos, sin = (t[min(b, t.shape[0] - 1), : L * Nk] for t in key_rotary)
            k = _rot(k, cos, sin)
        q, k = q.reshape(Tq, Nq, H, d), k.reshape(L, Nk, H, d)
        frames = []
        for i, steps in enumerate(torch.arange(L).tensor_split(Tq)):  # larger chunks first
            kc = k[steps].reshape(-1, H, d).transpose(0, 1)  # [H, C*Nk, d]
            vc = v[steps].reshape(-1, H, d).transpose(0, 1)
            qi = q[i].transpose(0, 1)  # [H, Nq, d]
            probs = torch.softmax(qi @ kc.transpose(-1, -2) / d**0.5, dim=-1)
            frames.append((probs @ vc).transpose(0, 1).reshape(Nq, Dx))
        outs.append(layer.o_proj(torch.stack(frames)))
    return torch.stack(outs)


def make_rotary(kind: str, lengths: torch.Tensor, Tk: int, Nk: int):
    """(query_rotary, key_rotary): per-sample query positions ([B, ...]) and shared key positions ([1, ...])."""
    if kind == "none":
        return None, None
    key_grid = (1, Nk)
    if kind == "1d":
        rope = Rotary1D(HEAD_DIM)
        q_pos = torch.stack([query_time_positions(TQ, int(n)).repeat_interleave(NQ) for n in lengths])
        k_pos = torch.arange(Tk).repeat_interleave(Nk)[None]
    else:
        rope = Rotary3D(HEAD_DIM)
        q_hw = grid_positions(2, key_grid[0]), grid_positions(2, key_grid[1])
        q_pos = torch.stack([positions_3d(query_time_positions(TQ, int(n)), *q_hw) for n in lengths])
        k_pos = positions_3d(torch.arange(Tk), torch.arange(key_grid[0]), torch.arange(key_grid[1]))[None]
    return rope(q_pos), rope(k_pos)


def make_inputs(Tk: int, Nk: int, seed: int = 0):
    """Batch of 3 with lengths [Tk, Tk//2+1, max(1, Tk-7)], padding after; short ones upsampled to TQ."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([Tk, Tk // 2 + 1, max(1, Tk - 7)])
    queries = torch.randn(3, TQ, NQ, D, generator=gen)
    keys = torch.randn(3, Tk, Nk, D, generator=gen)
    keys[torch.arange(Tk) >= lengths[:, None]] = 1e3  # garbage padding
    keys, lengths = upsample_time(keys, lengths, TQ)
    return queries, keys, lengths


VARIANTS = {  # name: (tie_value_to_key, output_projection)
    "untied+oproj": (False, True),
    "untied": (False, False),
    "tied+oproj": (True, True),
    "tied(official)": (True, False),
}


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("rope", ["none", "1d", "3d"])
@pytest.mark.parametrize("Nk", [3, 1])
@pytest.mark.parametrize("Tk", [1, 20, 32, 45, 64, 100])
def test_layer_matches_per_sample_reference(Tk, Nk, rope, variant, impl):
    torch.manual_seed(Tk)
    tie, oproj = VARIANTS[variant]
    layer = TemporalAlignedCrossAttention(
        D, HEADS, tie_value_to_key=tie, output_projection=oproj, attn_implementation=impl
    )
    queries, keys, lengths = make_inputs(Tk, Nk)
    q_rot, k_rot = make_rotary(rope, lengths, keys.shape[1], Nk)
    with torch.no_grad():
        out = layer(queries, keys, lengths, query_rotary=q_rot, key_rotary=k_rot)
        expected = reference_forward(layer, queries, keys, lengths, q_rot, k_rot)
    assert out.shape == (3, TQ, NQ, D)
    assert (out - expected).abs().max() < 1e-5


def test_uniform_fast_path_matches_reference():
    layer = TemporalAlignedCrossAttention(D, HEADS)
    queries, keys = torch.randn(2, TQ, NQ, D), torch.randn(2, 64, 3, D)
    lengths = torch.tensor([64, 64])
    with torch.no_grad():
        assert (layer(queries, keys, lengths) - reference_forward(layer, queries, keys, lengths)).abs().max() < 1e-5


def test_return_attention_layout():
    layer = TemporalAlignedCrossAttention(D, HEADS, attn_implementation="sdpa")
    queries, keys, lengths = make_inputs(45, 3)  # lengths [45, 32, 38]
    out, probs, key_time = layer(queries, keys, lengths, return_attention=True)
    torch.testing.assert_close(out, layer(queries, keys, lengths))
    assert probs.shape == (3, HEADS, TQ, NQ, 2 * 3) and key_time.shape == (3, TQ, 2 * 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, HEADS, TQ, NQ))
    assert key_time[0, 0].tolist() == [0, 0, 0, 1, 1, 1] and key_time[0, 31].tolist() == [44, 44, 44, -1, -1, -1]
    assert key_time[1, 5].tolist() == [5, 5, 5, -1, -1, -1]
    assert probs[0, :, 31, :, 3:].abs().max() == 0  # padding columns get no probability


def test_flash_varlen_route_matches_reference(monkeypatch):
    """The flash route (packed keys + cu_seq_lens) through transformers' real integration, with a torch kernel."""

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None, causal=False):
        assert not causal and int(cu_seqlens_k[-1]) == k.shape[0]
        out = torch.empty_like(q)
        for i in range(len(cu_seqlens_q) - 1):
            qs = q[cu_seqlens_q[i] : cu_seqlens_q[i + 1]].transpose(0, 1)
            ks, vs = (t[cu_seqlens_k[i] : cu_seqlens_k[i + 1]].transpose(0, 1) for t in (k, v))
            probs = torch.softmax(qs @ ks.transpose(-1, -2) * softmax_scale, -1)
            out[cu_seqlens_q[i] : cu_seqlens_q[i + 1]] = (probs @ vs).transpose(0, 1)
        return out

    for name in ("_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn", "_pad_fn", "_unpad_fn"):
        monkeypatch.setattr(fa_utils, name, getattr(fa_utils, name))
    for name in ("_process_flash_kwargs_fn", "_process_with_kvcache_kwargs_fn"):
        monkeypatch.setattr(fa_utils, name, getattr(fa_utils, name))
    monkeypatch.setattr(fa_utils, "_loaded_implementation", None)
    monkeypatch.setattr(fa_utils, "_lazy_imports", lambda *a, **k: (None, varlen, None, None, None))

    layer = TemporalAlignedCrossAttention(D, HEADS, attn_implementation="flash_attention_2")
    queries, keys, lengths = make_inputs(45, 3)
    q_rot, k_rot = make_rotary("1d", lengths, keys.shape[1], 3)
    with torch.no_grad():
        out = layer(queries, keys, lengths, query_rotary=q_rot, key_rotary=k_rot)
        expected = reference_forward(layer, queries, keys, lengths, q_rot, k_rot)
    assert (out - expected).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# padding, gradients, parameters


@pytest.mark.parametrize(("impl", "fold"), [("eager", False), ("sdpa", False), ("sdpa", True)])
def test_padding_does_not_change_the_output(impl, fold):
    layer = TemporalAlignedCrossAttention(D, HEADS, attn_implementation=impl, fold_projections=fold)
    queries, keys, lengths = make_inputs(45, 3)
    q_rot, k_rot = make_rotary("1d", lengths, 45, 3)
    q_rot = None if fold else q_rot  # folding needs queries without RoPE
    k_rot = tuple(t.expand(3, -1, -1).clone() for t in k_rot)
    out = layer(queries, keys, lengths, q_rot, k_rot)
    pad = torch.arange(45) >= lengths[:, None]  # [B, Tk]
    keys2 = torch.where(pad[..., None, None], torch.randn_like(keys), keys)
    k_rot2 = tuple(torch.where(pad.repeat_interleave(3, 1)[..., None], torch.randn_like(t), t) for t in k_rot)
    assert torch.equal(layer(queries, keys2, lengths, q_rot, k_rot2), out)


@pytest.mark.parametrize("tie", [False, True])
def test_gradients_reach_projections_and_inputs(tie):
    layer = TemporalAlignedCrossAttention(D, HEADS, tie_value_to_key=tie)
    queries, keys, lengths = make_inputs(45, 3)
    queries.requires_grad_(True)
    keys.requires_grad_(True)
    layer(queries, keys, lengths).square().sum().backward()
    names = {name for name, _ in layer.named_parameters()}
    assert ("v_proj.weight" in names) != tie
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert queries.grad.abs().sum() > 0
    pad = torch.arange(45) >= lengths[:, None]
    assert keys.grad[~pad].abs().sum() > 0 and keys.grad[pad].abs().sum() == 0


def test_official_configuration_parameters():
    layer = TemporalAlignedCrossAttention(512, 4, tie_value_to_key=True, output_projection=False)
    assert isinstance(layer.o_proj, nn.Identity) and not hasattr(layer, "v_proj")
    assert sorted(layer.state_dict()) == ["k_proj.bias", "k_proj.weight", "q_proj.bias", "q_proj.weight"]
    assert layer.head_dim == 128 and layer.scaling == 128**-0.5


# ---------------------------------------------------------------------------------------------------------------------
# folded path (q_proj / o_proj folded into the chunk keys / values)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("key_rope", ["none", "1d"])
@pytest.mark.parametrize("Nk", [3, 1])
@pytest.mark.parametrize("Tk", [1, 20, 32, 45, 64, 100])
def test_folded_path_matches_per_sample_reference(Tk, Nk, key_rope, variant):
    torch.manual_seed(Tk)
    tie, oproj = VARIANTS[variant]
    layer = TemporalAlignedCrossAttention(
        D, HEADS, tie_value_to_key=tie, output_projection=oproj, fold_projections=True
    )
    queries, keys, lengths = make_inputs(Tk, Nk)
    k_rot = make_rotary(key_rope, lengths, keys.shape[1], Nk)[1]  # key RoPE only: folding needs plain queries
    with torch.no_grad():
        out = layer(queries, keys, lengths, key_rotary=k_rot)
        expected = reference_forward(layer, queries, keys, lengths, None, k_rot)
    assert out.shape == (3, TQ, NQ, D)
    assert (out - expected).abs().max() < 1e-5


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_folded_probabilities_match_standard(variant, bias):
    tie, oproj = VARIANTS[variant]
    layer = TemporalAlignedCrossAttention(D, HEADS, tie_value_to_key=tie, output_projection=oproj, bias=bias)
    queries, keys, lengths = make_inputs(45, 3)  # lengths [45, 32, 38]: chunks of 1 and 2 steps, padding columns
    k_rot = make_rotary("1d", lengths, 45, 3)[1]
    results = {}
    for fold in (False, True):
        layer.fold_projections = fold
        with torch.no_grad():
            results[fold] = layer(queries, keys, lengths, key_rotary=k_rot, return_attention=True)
    (out, probs, key_time), (out_f, probs_f, key_time_f) = results[False], results[True]
    assert probs_f.shape == probs.shape == (3, HEADS, TQ, NQ, 6)
    assert torch.equal(key_time_f, key_time)
    assert (probs_f - probs).abs().max() < 1e-6 and (out_f - out).abs().max() < 1e-5
    padding = (key_time == -1)[:, None, :, None].expand_as(probs_f)  # [B, H, Tq, Nq, Cmax*Nk]
    assert padding.any() and bool((probs_f[padding] == 0).all())  # exactly zero, not just small


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_folded_gradients_match_standard(variant):
    tie, oproj = VARIANTS[variant]
    torch.manual_seed(1)
    layers = {
        fold: TemporalAlignedCrossAttention(D, HEADS, tie_value_to_key=tie, output_projection=oproj)
        for fold in (False, True)
    }
    layers[True].load_state_dict(layers[False].state_dict())
    queries, keys, lengths = make_inputs(45, 3)
    k_rot = make_rotary("1d", lengths, 45, 3)[1]
    weights = torch.randn(3, TQ, NQ, D)
    grads = {}
    for fold, layer in layers.items():
        layer.fold_projections = fold
        q, k = queries.clone().requires_grad_(True), keys.clone().requires_grad_(True)
        (layer(q, k, lengths, key_rotary=k_rot) * weights).sum().backward()
        grads[fold] = {name: p.grad for name, p in layer.named_parameters()} | {"queries": q.grad, "keys": k.grad}
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[False].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[True][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    pad = torch.arange(45) >= lengths[:, None]
    assert grads[True]["keys"][pad].abs().sum() == 0


def test_cross_attention_flops_by_hand():
    """PAVE audio (official: tied values, no o_proj) and 3D shapes; 2 FLOPs per multiply-add."""
    B, Nq, Dx, H = 8, 196, 512, 4
    rows_q = B * TQ * Nq
    audio = cross_attention_flops(B, TQ, Nq, 120, 1, 4, Dx, H, untied_values=False, output_projection=False)
    assert audio["standard"] == 2 * rows_q * Dx * Dx + 2 * (B * 120) * Dx * Dx + 2 * 2 * rows_q * 4 * Dx
    assert audio["folded"] == 2 * 2 * (B * 120) * Dx * Dx + 2 * 2 * rows_q * Dx * (H * 4)  # x @ K'^T, P @ V'
    full = cross_attention_flops(B, TQ, Nq, 32, 576, 1, Dx, H, untied_values=True, output_projection=True)
    key_rows = B * 32 * 576
    assert full["standard"] == 2 * Dx * Dx * (2 * rows_q + 2 * key_rows) + 2 * 2 * rows_q * 576 * Dx
    assert full["folded"] == 2 * Dx * Dx * 4 * key_rows + 2 * 2 * rows_q * Dx * (H * 576)


@pytest.mark.parametrize(("tie", "oproj"), [(True, False), (False, True)])
def test_auto_folds_audio_shapes_not_3d_shapes(tie, oproj):
    layer = TemporalAlignedCrossAttention(512, 4, tie_value_to_key=tie, output_projection=oproj)
    audio, three_d = (8, TQ, 196, 120, 1, 4), (8, TQ, 196, 32, 576, 1)  # B, Tq, Nq, Tk, Nk, Cmax
    assert layer.fold_projections == "auto"
    assert layer.use_folded(*audio) and not layer.use_folded(*three_d)
    assert not layer.use_folded(*audio, query_rotary=True)
    assert not layer.use_folded(*audio, attn_implementation="flash_attention_2")
    layer.fold_projections = False
    assert not layer.use_folded(*audio)
    layer.fold_projections = True
    assert layer.use_folded(*three_d)


@pytest.mark.parametrize(("Tk", "Nk", "folded"), [(45, 1, True), (32, 24, False)])
def test_auto_dispatches_forward_by_shape(monkeypatch, Tk, Nk, folded):
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return fold_fn(*args, **kwargs)

    fold_fn = tca_module.folded_chunk_attention
    monkeypatch.setattr(tca_module, "folded_chunk_attention", spy)
    layer = TemporalAlignedCrossAttention(D, HEADS)
    queries, keys, lengths = make_inputs(Tk, Nk)
    with torch.no_grad():
        out = layer(queries, keys, lengths)
        expected = reference_forward(layer, queries, keys, lengths)
    assert bool(calls) == folded and (out - expected).abs().max() < 1e-5


class _AdapterWrappedLinear(nn.Module):
    """Looks like a Linear (weight, bias of the base) but adds a low-rank delta, as adapter wrappers do."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base, self.down, self.up = base, nn.Linear(D, 2, bias=False), nn.Linear(2, D, bias=False)
        self.weight, self.bias = base.weight, base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


def test_wrapped_projections_are_never_folded():
    layer = TemporalAlignedCrossAttention(D, HEADS)
    queries, keys, lengths = make_inputs(45, 1)  # shapes that "auto" folds with plain projections
    layer.o_proj = _AdapterWrappedLinear(layer.o_proj)  # not folded: applied after the folded weighted sum
    layer.q_proj = _AdapterWrappedLinear(layer.q_proj)  # not folded at all: "auto" takes the standard path
    for fold, q_proj in (("auto", layer.q_proj), (True, layer.q_proj.base)):
        layer.q_proj, layer.fold_projections = q_proj, fold
        with torch.no_grad():
            out = layer(queries, keys, lengths)
            expected = reference_forward(layer, queries, keys, lengths)
        assert (out - expected).abs().max() < 1e-5, fold
    layer.q_proj = _AdapterWrappedLinear(layer.q_proj)
    with pytest.raises(
        ValueError, match="`fold_projections=True` cannot be used with this `q_proj` \\(_AdapterWrappedLinear\\)"
    ):
        layer(queries, keys, lengths)


def test_partitioned_query_projection_is_never_folded():
    """A ZeRO-3-like q_proj: the weight is an empty placeholder except while q_proj itself runs."""
    layer = TemporalAlignedCrossAttention(D, HEADS)
    full, empty = layer.q_proj.weight.data, torch.empty(0)
    layer.q_proj.weight.data = empty
    layer.q_proj.register_forward_pre_hook(lambda module, args: setattr(module.weight, "data", full))
    layer.q_proj.register_forward_hook(lambda module, args, out: setattr(module.weight, "data", empty))
    queries, keys, lengths = make_inputs(45, 1)  # shapes that "auto" folds with a whole q_proj
    with torch.no_grad():
        out = layer(queries, keys, lengths)
        expected = reference_forward(layer, queries, keys, lengths)
    assert (out - expected).abs().max() < 1e-5
    layer.fold_projections = True
    with pytest.raises(ValueError, match="cannot be used with this `q_proj` \\(Linear\\).*plain, whole nn.Linear"):
        layer(queries, keys, lengths)


def test_fold_projections_errors():
    with pytest.raises(ValueError, match="`fold_projections` must be 'auto', True or False, got 'yes'"):
        TemporalAlignedCrossAttention(D, HEADS, fold_projections="yes")
    layer = TemporalAlignedCrossAttention(D, HEADS)
    with pytest.raises(ValueError, match="`fold_projections` must be 'auto', True or False, got 1"):
        layer.fold_projections = 1
    layer.fold_projections = True
    queries, keys, lengths = make_inputs(45, 1)
    q_rot = make_rotary("1d", lengths, 45, 1)[0]
    with pytest.raises(ValueError, match="`fold_projections=True` cannot be used with `query_rotary`.*'auto'"):
        layer(queries, keys, lengths, query_rotary=q_rot)


# ---------------------------------------------------------------------------------------------------------------------
# errors


def test_short_key_lengths_error_names_argument_and_fix():
    layer = TemporalAlignedCrossAttention(D, HEADS)
    with pytest.raises(ValueError, match="`key_lengths` must be >= .* Tq = 32.*upsample_time"):
        layer(torch.randn(2, TQ, NQ, D), torch.randn(2, 40, 3, D), torch.tensor([40, 20]))
    with pytest.raises(ValueError, match="`key_lengths` must be <= keys.shape\\[1\\]"):
        layer(torch.randn(2, TQ, NQ, D), torch.randn(2, 40, 3, D), torch.tensor([41, 32]))
    with pytest.raises(ValueError, match="`key_lengths` must have shape \\[B\\]"):
        layer(torch.randn(2, TQ, NQ, D), torch.randn(2, 40, 3, D), torch.tensor([40]))


def test_shape_errors():
    layer = TemporalAlignedCrossAttention(D, HEADS)
    with pytest.raises(ValueError, match="hidden_size \\(32\\)"):
        layer(torch.randn(1, TQ, NQ, D), torch.randn(1, 32, 3, 16), torch.tensor([32]))
    with pytest.raises(ValueError, match="hidden_size \\(32\\)"):
        layer(torch.randn(1, TQ, NQ, 24), torch.randn(1, 32, 3, D), torch.tensor([32]))
    with pytest.raises(ValueError, match="`query_rotary`"):
        bad = (torch.ones(1, 5, HEAD_DIM), torch.zeros(1, 5, HEAD_DIM))
        layer(torch.randn(1, TQ, NQ, D), torch.randn(1, 32, 3, D), torch.tensor([32]), query_rotary=bad)
    with pytest.raises(ValueError, match="divisible by `num_heads`"):
        TemporalAlignedCrossAttention(30, 4)
    with pytest.raises(ValueError, match="`attn_implementation` must be one of"):
        TemporalAlignedCrossAttention(D, HEADS, attn_implementation="fast")
    with pytest.raises(ValueError, match="`attn_implementation` must be one of"):
        TemporalAlignedCrossAttention(D, HEADS).attn_implementation = "flex_attention"
