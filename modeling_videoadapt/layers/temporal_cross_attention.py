"""PAVE's temporal-aligned cross-attention: query frame i attends to every token of the i-th contiguous chunk of
side-channel time steps (a hard, non-overlapping partition of each sample's valid steps into Tq chunks).

Shape legend:
    B    batch
    Tq   query frames (= number of chunks)
    Nq   query tokens per frame
    Tk   key time steps, padded (sample b holds L_b <= Tk valid steps, padding after)
    Nk   key tokens per time step
    C    key time steps in one chunk (Cmax: the largest chunk in the batch)
    D    hidden size
    H    heads
    d    head dim = D / H

All samples run in one attention call of batch B * Tq: keys are gathered per chunk into [B * Tq, H, Cmax * Nk, d]
with a key-padding mask (eager, sdpa, other registered functions), or packed without padding and passed as
`cu_seq_lens_*` (flash attention varlen). There is no loop over samples and no dense [Tq * Nq, Tk * Nk] mask.
"""

import math
from types import SimpleNamespace

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from videoadapt.layers.rotary import apply_rotary


__all__ = ["TemporalAlignedCrossAttention", "chunk_index", "chunk_sizes", "eager_attention_forward", "upsample_time"]

_UNSUPPORTED_IMPLEMENTATIONS = ("flex_attention", "paged|eager")


# ---------------------------------------------------------------------------------------------------------------------
# chunking and time upsampling


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


def _chunk_bounds(lengths: torch.Tensor, num_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    start, size = _chunk_bounds(lengths, num_chunks)  # [B, Tq]
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


# ---------------------------------------------------------------------------------------------------------------------
# attention


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention. q [b, H, n, d], k/v [b, H, m, d], mask bool (True = attend) or additive, broadcast to
    [b, H, n, m]. Returns (out [b, n, H, d], probabilities [b, H, n, m])."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # [b, H, n, m]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _rotate(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """RoPE on x [B, N, H, d] with (cos, sin) [B or 1, N, d]."""
    cos, sin = rotary
    return apply_rotary(x, cos[:, :, None], sin[:, :, None])


class TemporalAlignedCrossAttention(nn.Module):
    """Cross-attention in which query frame i sees only chunk i of the side channel's valid time steps.

    Args:
        hidden_size: D, for queries, keys and output.
        num_heads: H; head dim d = D / H, softmax scale 1 / sqrt(d).
        tie_value_to_key: values reuse `k_proj` (without RoPE) and there is no `v_proj`, as in the official code.
        output_projection: `o_proj` Linear(D, D); `nn.Identity()` when False (the official code has none).
        bias: bias on the projections.
        attn_implementation: "eager", "sdpa", a flash attention implementation, or another function registered in
            transformers' `AttentionInterface` (called with a boolean key-padding mask). Can be changed later.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        tie_value_to_key: bool = False,
        output_projection: bool = True,
        bias: bool = True,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads}).")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.tie_value_to_key = tie_value_to_key
        self.attn_implementation = attn_implementation
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        if not tie_value_to_key:
            self.v_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=bias) if output_projection else nn.Identity()

    @property
    def attn_implementation(self) -> str:
        return self._attn_implementation

    @attn_implementation.setter
    def attn_implementation(self, value: str) -> None:
        if value in _UNSUPPORTED_IMPLEMENTATIONS or (value != "eager" and value not in ALL_ATTENTION_FUNCTIONS):
            allowed = {"eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()} - set(_UNSUPPORTED_IMPLEMENTATIONS)
            raise ValueError(f"`attn_implementation` must be one of {sorted(allowed)}, got {value!r}.")
        self._attn_implementation = value

    @property
    def config(self) -> SimpleNamespace:  # what transformers' flash attention integration reads from the module
        return SimpleNamespace(_attn_implementation=self._attn_implementation)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        key_lengths: torch.Tensor,
        query_rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Temporal-aligned cross-attention.

        Args:
            queries: [B, Tq, Nq, D].
            keys: [B, Tk, Nk, D], padded along Tk; used as values too.
            key_lengths: long [B], valid key steps per sample, each in [Tq, Tk]. Upsample shorter side channels
                first: `keys, key_lengths = upsample_time(keys, key_lengths, Tq)`.
            query_rotary: (cos, sin) [B or 1, Tq * Nq, d] for the projected queries, or None.
            key_rotary: (cos, sin) [B or 1, Tk * Nk, d] for the projected keys (global key positions), or None.
            return_attention: also return the probabilities (computed by the eager path whatever the backend).

        Returns:
            out [B, Tq, Nq, D]; with `return_attention`, also probabilities [B, H, Tq, Nq, Cmax * Nk] and the key
            time step of each column, long [B, Tq, Cmax * Nk] (-1 on padding columns, whose probability is 0).
        """
        B, Tq, Nq, D = queries.shape
        Bk, Tk, Nk, Dk = keys.shape
        if D != self.hidden_size or Dk != self.hidden_size or Bk != B:
            raise ValueError(
                f"`queries` [B, Tq, Nq, D] and `keys` [B, Tk, Nk, D] must share B and have D = hidden_size "
                f"({self.hidden_size}); got {tuple(queries.shape)} and {tuple(keys.shape)}."
            )
        max_chunk, uniform = self._check_lengths(key_lengths, B, Tq, Tk)
        H, d = self.num_heads, self.head_dim
        self._check_rotary("query_rotary", query_rotary, Tq * Nq)
        self._check_rotary("key_rotary", key_rotary, Tk * Nk)

        q = self.q_proj(queries).view(B, Tq * Nq, H, d)
        k_lin = self.k_proj(keys).view(B, Tk * Nk, H, d)
        v = k_lin if self.tie_value_to_key else self.v_proj(keys).view(B, Tk * Nk, H, d)
        q = q if query_rotary is None else _rotate(q, query_rotary)
        k = k_lin if key_rotary is None else _rotate(k_lin, key_rotary)
        q = q.reshape(B * Tq, Nq, H, d).transpose(1, 2)  # [B*Tq, H, Nq, d]
        k, v = k.view(B, Tk, Nk, H, d), v.view(B, Tk, Nk, H, d)
        lengths = key_lengths.to(device=keys.device, dtype=torch.long)

        impl = "eager" if return_attention else self._attn_implementation
        if "flash" in impl:
            out = self._flash_attention(q, k, v, lengths, max_chunk)
        else:
            index, valid = chunk_index(lengths, Tq, max_chunk)  # [B, Tq, Cmax]
            k, v, mask = self._gather_chunks(k, v, index, valid, uniform)
            attn_fn = ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_attention_forward)
            out, probs = attn_fn(self, q, k, v, mask, dropout=0.0, scaling=self.scaling, is_causal=False)
        out = self.o_proj(out.reshape(B, Tq, Nq, D))
        if not return_attention:
            return out
        probs = probs.view(B, Tq, H, Nq, max_chunk * Nk).transpose(1, 2)  # [B, H, Tq, Nq, Cmax*Nk]
        key_time = torch.where(valid, index, -1)[..., None].expand(B, Tq, max_chunk, Nk).reshape(B, Tq, -1)
        return out, probs, key_time

    def _gather_chunks(
        self, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, uniform: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """k, v [B, Tk, Nk, H, d] -> [B*Tq, H, Cmax*Nk, d] per chunk, and a bool mask [B*Tq, 1, 1, Cmax*Nk] or None."""
        B, Tq, C = index.shape
        Nk, H, d = k.shape[2:]
        if uniform:  # same length everywhere, a multiple of Tq: chunks are a reshape, nothing is padded
            k, v = (t[:, : Tq * C].reshape(B * Tq, C * Nk, H, d).transpose(1, 2) for t in (k, v))
            return k, v, None
        b = torch.arange(B, device=k.device)[:, None, None]
        k, v = (t[b, index].view(B * Tq, C * Nk, H, d).transpose(1, 2) for t in (k, v))  # gather: [B, Tq, C, Nk, H, d]
        mask = valid[..., None].expand(B, Tq, C, Nk).reshape(B * Tq, 1, 1, C * Nk)
        return k, v, mask

    def _flash_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, max_chunk: int
    ) -> torch.Tensor:
        """Varlen flash attention: the valid keys, packed, are already in chunk order; chunks become sequences."""
        B, Tk, Nk, H, d = k.shape
        Tq, Nq = q.shape[0] // B, q.shape[2]
        time_valid = torch.arange(Tk, device=k.device) < lengths[:, None]  # [B, Tk]
        k, v = (t[time_valid].reshape(1, -1, H, d).transpose(1, 2) for t in (k, v))  # [1, H, sum(L)*Nk, d]
        sizes = _chunk_bounds(lengths, Tq)[1]  # [B, Tq]
        cu_k = nn.functional.pad((sizes * Nk).flatten().cumsum(0), (1, 0)).to(torch.int32)
        cu_q = (torch.arange(B * Tq + 1, device=q.device) * Nq).to(torch.int32)
        attn_fn = ALL_ATTENTION_FUNCTIONS.get_interface(self._attn_implementation, eager_attention_forward)
        out, _ = attn_fn(
            self, q, k, v, None, dropout=0.0, scaling=self.scaling, is_causal=False,
            cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k, max_length_q=Nq, max_length_k=max_chunk * Nk,
        )  # fmt: skip
        return out

    @staticmethod
    def _check_lengths(key_lengths: torch.Tensor, B: int, Tq: int, Tk: int) -> tuple[int, bool]:
        """Validate `key_lengths` (one host sync); return (Cmax, whether all chunks have the same size)."""
        if key_lengths.shape != (B,):
            raise ValueError(f"`key_lengths` must have shape [B] = [{B}], got {tuple(key_lengths.shape)}.")
        lengths = key_lengths.detach().cpu().long()
        if bool((lengths > Tk).any()):
            raise ValueError(f"`key_lengths` must be <= keys.shape[1] ({Tk}), got {lengths.tolist()}.")
        if bool((lengths < Tq).any()):
            raise ValueError(
                f"`key_lengths` must be >= the number of query frames Tq = {Tq} (every query frame needs a chunk of "
                f"at least one key step), got {lengths.tolist()}. Upsample short side channels first: "
                "`keys, key_lengths = upsample_time(keys, key_lengths, target=Tq)`."
            )
        longest = int(lengths.max())
        uniform = bool((lengths == longest).all()) and longest % Tq == 0
        return math.ceil(longest / Tq), uniform

    def _check_rotary(self, name: str, rotary: tuple[torch.Tensor, torch.Tensor] | None, num_tokens: int) -> None:
        if rotary is not None and tuple(rotary[0].shape[-2:]) != (num_tokens, self.head_dim):
            raise ValueError(
                f"`{name}` (cos, sin) must have shape [B or 1, {num_tokens}, {self.head_dim}] (tokens, head_dim), "
                f"got {tuple(rotary[0].shape)}."
            )
