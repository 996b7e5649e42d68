"""The temporal partition of PAVE's cross-attention: each sample's valid side-channel steps split into Tq contiguous
chunks (floor/ceil sizes, larger chunks first), and linear upsampling along time for side channels shorter than Tq.

Shape legend: B batch, Tq chunks (query frames), T/Tk time steps (padded), N tokens per step, D channels,
Cmax the largest chunk in the batch.
"""

import torch


__all__ = ["chunk_bounds", "chunk_index", "chunk_sizes", "upsample_time"]


def chunk_sizes(num_keys: int, num_chunks: int) -> list[int]:
    """Sizes of `num_chunks` contiguous chunks covering `num_keys` steps: floor or ceil, larger chunks first.

    Example: 45 keys into 32 chunks -> 13 chunks of 2, then 19 of 1. Requires num_keys >= num_chunks.
    """
    if num_chunks < 1:
        raise ValueError(f"`num_chunks` must be >= 1, got {num_chunks}.")
    if num_keys < num_chunks:
        raise ValueError(
            f"`num_keys` ({num_keys}) must be >= `num_chunks` ({num_chunks}) so that every chunk holds a key; "
            "upsample the key time axis first (`upsample_time`)."
        )
    base, extra = divmod(num_keys, num_chunks)
    return [base + 1] * extra + [base] * (num_chunks - extra)


def chunk_bounds(lengths: torch.Tensor, num_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First key step and size of every chunk (the `chunk_sizes` rule per sample): long [B, Tq] each."""
    base, extra = (lengths // num_chunks)[:, None], (lengths % num_chunks)[:, None]  # [B, 1]
    i = torch.arange(num_chunks, device=lengths.device)  # [Tq]
    return i * base + torch.minimum(i, extra), base + (i < extra).long()


def chunk_index(
    key_lengths: torch.Tensor, num_chunks: int, max_chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key time step of every chunk slot, per sample: the `chunk_sizes` rule applied to each sample's own length.

    Args:
        key_lengths: long [B], valid key steps per sample (each >= num_chunks).
        num_chunks: Tq.
        max_chunk: Cmax; computed from `key_lengths` (one host sync) when None.

    Returns:
        index: long [B, Tq, Cmax], key step of slot c of chunk i (padding slots repeat the chunk's first step).
        valid: bool [B, Tq, Cmax], False on padding slots.
    """
    lengths = key_lengths.long()
    if max_chunk is None:
        max_chunk = -(-int(lengths.max()) // num_chunks)
    start, size = chunk_bounds(lengths, num_chunks)  # [B, Tq]
    slot = torch.arange(max_chunk, device=lengths.device)  # [Cmax]
    valid = slot < size[..., None]  # [B, Tq, Cmax]
    index = start[..., None] + torch.where(valid, slot, 0)
    return index, valid


def upsample_time(x: torch.Tensor, lengths: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly upsample (align_corners=True) every sample shorter than `target` steps to exactly `target` steps.

    Matches `nn.Upsample(scale_factor=(target / L, 1, 1), mode="trilinear", align_corners=True)` on the sample's
    [1, D, L, h, w] features. Samples with L >= target are left as they are (padding included); new padding is zero.
    x [B, T, N, D] padded along T, lengths long [B] -> (x_new [B, max(T, target), N, D], max(lengths, target) [B]).
    """
    B, T = x.shape[:2]
    lengths = lengths.to(device=x.device, dtype=torch.long)
    up = lengths < target  # [B]
    if not bool(up.any()):
        return x, lengths
    t_out = max(T, target)
    j = torch.arange(t_out, device=x.device)  # [T_out]
    # source coordinate j * (L - 1) / (target - 1), in float32 like torch's kernel
    scale = (lengths - 1).float() / max(target - 1, 1)  # [B]
    src = scale[:, None] * j.float()  # [B, T_out]
    i0 = src.floor().long().clamp(0, T - 1)
    i1 = torch.minimum(i0 + 1, (lengths - 1)[:, None]).clamp(0, T - 1)
    w = src - i0.float()
    up = up[:, None]  # [B, 1]
    copy = j.clamp(max=T - 1).expand(B, t_out)  # samples left as they are copy their own rows
    i0, i1 = torch.where(up, i0, copy), torch.where(up, i1, copy)
    w = torch.where(up, w, 0.0)[..., None, None]  # [B, T_out, 1, 1]
    keep = torch.where(up, j < target, j < T)[..., None, None]  # rows that hold data
    b = torch.arange(B, device=x.device)[:, None]
    x0, x1 = x[b, i0].float(), x[b, i1].float()  # [B, T_out, N, D]
    out = (x0 * (1.0 - w) + x1 * w).to(x.dtype)
    return torch.where(keep, out, torch.zeros((), dtype=x.dtype, device=x.device)), torch.clamp(lengths, min=target)
