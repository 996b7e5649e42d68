"""Rotary embeddings: rotation properties, Qwen2-VL M-RoPE layout, official PAVE position rules, errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videoadapt.layers.rotary import (
    Rotary1D,
    Rotary3D,
    apply_rotary,
    create_rotary,
    default_mrope_section,
    grid_positions,
    positions_3d,
    query_time_positions,
    rope_frequencies,
)


def _dot_after_rotation(rope, q, k, pos_q, pos_k):
    cq, sq = rope(pos_q)
    ck, sk = rope(pos_k)
    return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum(-1)


def test_frequencies():
    inv = rope_frequencies(8, theta=100.0)
    torch.testing.assert_close(inv, torch.tensor([1.0, 100 ** (-2 / 8), 100 ** (-4 / 8), 100 ** (-6 / 8)]))
    with pytest.raises(ValueError, match="head_dim"):
        rope_frequencies(7)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(-200, 200))
def test_1d_dot_depends_only_on_position_difference(m, n, shift):
    rope = Rotary1D(16)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 16, generator=gen), torch.randn(1, 16, generator=gen)
    a = _dot_after_rotation(rope, q, k, torch.tensor([float(m)]), torch.tensor([float(n)]))
    b = _dot_after_rotation(rope, q, k, torch.tensor([float(m + shift)]), torch.tensor([float(n + shift)]))
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_3d_dot_depends_only_on_per_axis_differences():
    rope = Rotary3D(16)
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    pos_q, pos_k = torch.randint(0, 30, (5, 3), generator=gen), torch.randint(0, 30, (5, 3), generator=gen)
    shift = torch.tensor([7, -3, 11])
    a = _dot_after_rotation(rope, q, k, pos_q, pos_k)
    b = _dot_after_rotation(rope, q, k, pos_q + shift, pos_k + shift)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # moving one axis of one side changes it
    c = _dot_after_rotation(rope, q, k, pos_q + torch.tensor([0, 1, 0]), pos_k)
    assert not torch.allclose(a, c, atol=1e-3)


def test_3d_equals_1d_when_t_h_w_coincide():
    pos = torch.arange(12.0)
    cos1, sin1 = Rotary1D(32)(pos)
    cos3, sin3 = Rotary3D(32)(pos[:, None].expand(12, 3))
    torch.testing.assert_close(cos1, cos3)
    torch.testing.assert_close(sin1, sin3)


def test_3d_matches_qwen2_vl_section_split_of_the_doubled_axis():
    # Qwen2-VL: cos_t/h/w = cos of cat(f, f) per axis; the d axis is split by mrope_section * 2 and chunk i comes
    # from axis i % 3.
    head_dim, section = 128, [16, 24, 24]
    pos = torch.randint(0, 40, (2, 7, 3))
    inv = rope_frequencies(head_dim)
    per_axis = [torch.cat([pos[..., a, None] * inv] * 2, -1) for a in range(3)]  # 3 x [2, 7, 128]
    parts = torch.cat([p.cos() for p in per_axis], 0).split(section * 2, dim=-1)
    expected = torch.cat([part.view(3, 2, 7, -1)[i % 3] for i, part in enumerate(parts)], -1)
    cos, _ = Rotary3D(head_dim, mrope_section=section)(pos)
    torch.testing.assert_close(cos, expected)


def test_apply_rotary_is_a_rotation_and_broadcasts_over_heads():
    rope = Rotary1D(8)
    x = torch.randn(2, 3, 5, 8)  # [B, H, N, d]
    cos, sin = rope(torch.arange(5.0).expand(2, 5))  # [B, N, d]
    y = apply_rotary(x, cos[:, None], sin[:, None])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # position 0 is the identity
    assert apply_rotary(x.half(), cos[:, None], sin[:, None]).dtype == torch.float16


def test_mrope_section_defaults_and_validation():
    assert default_mrope_section(128) == [16, 24, 24]
    assert default_mrope_section(64) == [8, 12, 12]
    assert sum(default_mrope_section(16)) == 8
    with pytest.raises(ValueError, match="mrope_section.*sum to head_dim // 2 = 64"):
        Rotary3D(128, mrope_section=[16, 24, 25])
    with pytest.raises(ValueError, match="3 non-negative integers"):
        Rotary3D(128, mrope_section=[32, 32])
    with pytest.raises(ValueError, match="3 non-negative integers"):
        Rotary3D(128, mrope_section=[-8, 36, 36])
    with pytest.raises(ValueError, match="axis of 3"):
        Rotary3D(16)(torch.zeros(4, 2))


def test_buffers_are_not_persistent():
    assert Rotary1D(16).state_dict() == {} and Rotary3D(16).state_dict() == {}


def test_factory():
    assert create_rotary("none", 16) is None
    assert isinstance(create_rotary("1d", 16), Rotary1D)
    rope = create_rotary("3d", 128, theta=1e6, mrope_section=[32, 16, 16])
    assert isinstance(rope, Rotary3D) and rope.mrope_section == [32, 16, 16]
    with pytest.raises(ValueError, match="Unknown rotary `kind`: '2d'"):
        create_rotary("2d", 16)


def test_grid_positions_examples():
    assert grid_positions(14, 24).tolist() == [0, 2, 4, 6, 7, 9, 11, 12, 14, 16, 18, 19, 21, 23]
    assert grid_positions(2, 14).tolist() == [3, 10]
    assert grid_positions(1, 14).tolist() == [7]
    assert grid_positions(24, 24).tolist() == list(range(24))  # same size: the identity
    with pytest.raises(ValueError, match="reference_size"):
        grid_positions(3, 0)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 64), ref=st.integers(1, 96))
def test_grid_positions_follow_numpy_linspace(size, ref):
    expected = np.linspace(0, ref, 2 * size + 1, dtype=int)[1::2]
    assert grid_positions(size, ref).tolist() == expected.tolist()


@settings(max_examples=60, deadline=None)
@given(num_q=st.integers(1, 64), num_k=st.integers(1, 300))
def test_query_time_positions_follow_numpy_linspace(num_q, num_k):
    expected = np.linspace(0, num_k - 1, num_q, dtype=int)
    assert query_time_positions(num_q, num_k).tolist() == expected.tolist()


def test_query_time_positions_examples():
    assert query_time_positions(32, 32).tolist() == list(range(32))
    assert query_time_positions(4, 10).tolist() == [0, 3, 6, 9]
    assert query_time_positions(1, 10).tolist() == [0]
    with pytest.raises(ValueError, match="num_key_steps"):
        query_time_positions(4, 0)


def test_positions_3d_layout():
    pos = positions_3d(torch.tensor([0, 5]), torch.tensor([3, 10]), torch.tensor([7]))
    assert pos.tolist() == [[0, 3, 7], [0, 10, 7], [5, 3, 7], [5, 10, 7]]
