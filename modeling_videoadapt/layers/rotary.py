"""Rotary position embeddings (RoPE), 1D (time) and 3D (Qwen2-VL M-RoPE over t, h, w), rotate_half convention.

Shape legend:
    N   tokens (flattened sequence)
    d   head dim (even); d/2 frequency pairs
    ... any leading axes (batch, ...)

Convention (rotate_half, as Llama / Qwen2): the feature axis is split into halves [x1, x2]; a token at angle a is
rotated as x * cos(a) + rotate_half(x) * sin(a), with rotate_half(x) = [-x2, x1] and cos/sin = [cos(f), cos(f)].

Position helpers reproduce PAVE's official position rules (see docs/fidelity.md):
    query_time_positions: query frame t positions = np.linspace(0, T_k - 1, T_q, dtype=int)
    grid_positions:       coarse grid inside a finer one = odd entries of np.linspace(0, ref, 2 * size + 1, dtype=int)
"""

import torch
from torch import nn


__all__ = [
    "Rotary1D",
    "Rotary3D",
    "apply_rotary",
    "create_rotary",
    "default_mrope_section",
    "grid_positions",
    "positions_3d",
    "query_time_positions",
    "rope_frequencies",
    "rotate_half",
]


# ---------------------------------------------------------------------------------------------------------------------
# functional


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d) for i < d/2: float32 [head_dim // 2]."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"`head_dim` must be a positive even number for rotary embeddings, got {head_dim}.")
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [..., N, d] by angles given as `cos`, `sin` [..., N, d].

    Plain broadcasting: for x [B, H, N, d] and cos [B, N, d] pass `cos[:, None]`; for x [B, N, H, d] pass
    `cos[:, :, None]`. The result has x's dtype.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def _cos_sin(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.cat((freqs, freqs), dim=-1)  # [..., N, d/2] -> [..., N, d]
    return emb.cos(), emb.sin()


def default_mrope_section(head_dim: int) -> list[int]:
    """(t, h, w) frequency-pair split in the proportions 1/4, 3/8, 3/8 ([16, 24, 24] for head_dim 128)."""
    pairs = head_dim // 2
    t = pairs // 4
    h = (pairs - t) // 2
    return [t, h, pairs - t - h]


# ---------------------------------------------------------------------------------------------------------------------
# modules


class Rotary1D(nn.Module):
    """1D RoPE over one (temporal) index per token.

    Args:
        head_dim: rotated feature size d (even).
        theta: frequency base.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("inv_freq", rope_frequencies(head_dim, theta), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [..., N] (int or float) -> (cos, sin), float32 [..., N, d]."""
        freqs = positions[..., None].float() * self.inv_freq  # [..., N, d/2]
        return _cos_sin(freqs)


class Rotary3D(nn.Module):
    """Multimodal RoPE (Qwen2-VL M-RoPE): the d/2 frequency pairs are split into t, h and w parts.

    Pair j takes its angle from the t position if j < s_t, from h if j < s_t + s_h, else from w; cos/sin repeat
    the d/2 angles twice (rotate_half layout), the same as Qwen2-VL's `mrope_section` split of the doubled axis.

    Args:
        head_dim: rotated feature size d (even).
        theta: frequency base.
        mrope_section: pairs per axis (t, h, w), summing to d/2. Default: `default_mrope_section(head_dim)`.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, mrope_section: list[int] | None = None) -> None:
        super().__init__()
        section = list(mrope_section) if mrope_section is not None else default_mrope_section(head_dim)
        if len(section) != 3 or any(int(s) != s or s < 0 for s in section):
            raise ValueError(f"`mrope_section` must be 3 non-negative integers (t, h, w), got {mrope_section}.")
        if sum(section) != head_dim // 2:
            raise ValueError(
                f"`mrope_section` must sum to head_dim // 2 = {head_dim // 2} frequency pairs, got {section} "
                f"(sum {sum(section)}); e.g. use {default_mrope_section(head_dim)}."
            )
        self.head_dim = head_dim
        self.mrope_section = [int(s) for s in section]
        self.register_buffer("inv_freq", rope_frequencies(head_dim, theta), persistent=False)
        axis = torch.repeat_interleave(torch.arange(3), torch.tensor(self.mrope_section))  # [d/2]: 0=t, 1=h, 2=w
        self.register_buffer("pair_axis", axis, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [..., N, 3] (t, h, w) -> (cos, sin), float32 [..., N, d]."""
        if positions.shape[-1] != 3:
            raise ValueError(f"`positions` must end in an axis of 3 (t, h, w), got shape {tuple(positions.shape)}.")
        # pick per pair the coordinate of its axis: [..., N, 3] -> [..., N, d/2]
        pos = positions.float().index_select(-1, self.pair_axis)
        return _cos_sin(pos * self.inv_freq)


def create_rotary(kind: str, head_dim: int, theta: float = 10000.0, mrope_section: list[int] | None = None):
    """RoPE module for `kind` "none" (returns None), "1d" (`Rotary1D`) or "3d" (`Rotary3D`)."""
    if kind == "none":
        return None
    if kind == "1d":
        return Rotary1D(head_dim, theta)
    if kind == "3d":
        return Rotary3D(head_dim, theta, mrope_section)
    raise ValueError(f"Unknown rotary `kind`: {kind!r}; expected one of 'none', '1d', '3d'.")


# ---------------------------------------------------------------------------------------------------------------------
# position rules of the official PAVE code


def _numpy_linspace_int(stop: float, num: int) -> torch.Tensor:
    """`np.linspace(0, stop, num, dtype=int)`: float64 `i * (stop / (num - 1))`, exact last entry, truncated."""
    if num == 1:
        return torch.zeros(1, dtype=torch.long)
    y = torch.arange(num, dtype=torch.float64) * (stop / (num - 1))
    y[-1] = stop
    return y.long()  # truncation toward zero, as numpy's astype(int)


def query_time_positions(num_query_frames: int, num_key_steps: int) -> torch.Tensor:
    """Time index of each query frame on the key time axis: `np.linspace(0, T_k - 1, T_q, dtype=int)`, long [T_q].

    Key time positions are plainly 0..T_k-1, so query frame i sits on the key step it is aligned with.
    """
    if num_query_frames < 1 or num_key_steps < 1:
        raise ValueError(
            f"`num_query_frames` and `num_key_steps` must be >= 1, got {num_query_frames} and {num_key_steps}."
        )
    return _numpy_linspace_int(float(num_key_steps - 1), num_query_frames)


def grid_positions(size: int, reference_size: int) -> torch.Tensor:
    """Positions of a `size`-cell axis laid over a `reference_size`-cell axis, long [size].

    Official rule: the odd entries (cell midpoints) of `np.linspace(0, reference_size, 2 * size + 1, dtype=int)`.
    Examples: 14 inside 24 -> [0, 2, 4, 6, 7, 9, 11, 12, 14, 16, 18, 19, 21, 23]; 2 inside 14 -> [3, 10];
    1 inside 14 -> [7]. With size == reference_size the midpoints are k + 0.5, so it gives 0..size-1 (identity).
    """
    if size < 1 or reference_size < 1:
        raise ValueError(f"`size` and `reference_size` must be >= 1, got {size} and {reference_size}.")
    return _numpy_linspace_int(float(reference_size), 2 * size + 1)[1::2]


def positions_3d(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(t, h, w) of every token of a T x H x W grid in row-major (t, h, w) order: long [T * H * W, 3]."""
    grid = torch.meshgrid(t.long(), h.long(), w.long(), indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)
