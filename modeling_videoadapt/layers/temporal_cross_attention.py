"""PAVE's temporal-aligned cross-attention: query frame i attends to every token of the i-th contiguous chunk of
side-channel time steps (a hard, non-overlapping partition of each sample's valid steps into Tq chunks).

Shape legend:
    B batch; Tq query frames (= number of chunks); Nq query tokens per frame
    Tk key time steps, padded (sample b holds L_b <= Tk valid steps, padding after); Nk key tokens per time step
    C key time steps in one chunk (Cmax: the largest chunk in the batch)
    D hidden size; H heads; d head dim = D / H

All samples run in one attention call of batch B * Tq: keys are gathered per chunk into [B * Tq, H, Cmax * Nk, d]
with a key-padding mask (eager, sdpa, other registered functions), or packed without padding and passed as
`cu_seq_lens_*` (flash attention varlen). There is no loop over samples and no dense [Tq * Nq, Tk * Nk] mask.

Small chunks (H * Cmax * Nk well below D, e.g. audio: one token per step) take the folded path instead
(`folded_attention.py`): q_proj (and a linear o_proj) are folded into each chunk's few keys (and values), so the
queries are never projected. Exact without query RoPE; chosen per call by an analytic FLOP model
(`fold_projections="auto"`), or forced with True / False.
"""

import math
from collections.abc import Sequence
from functools import partial
from types import SimpleNamespace

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from videoadapt.layers.folded_attention import cross_attention_flops, folded_chunk_attention, is_foldable_linear
from videoadapt.layers.rotary import apply_rotary
from videoadapt.layers.temporal_chunks import chunk_bounds, chunk_index


__all__ = ["TemporalAlignedCrossAttention", "eager_attention_forward"]

_UNSUPPORTED_IMPLEMENTATIONS = ("flex_attention", "paged|eager")


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
        fold_projections: "auto" (default): fold q_proj (and o_proj) into the chunk keys (values) when the FLOP model
            says it is cheaper, never with query RoPE or flash attention; True: always fold (bypasses the attention
            backend; query RoPE is then an error); False: never. Same results and gradients either way, up to
            float rounding. Can be changed later.
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
        fold_projections: bool | str = "auto",
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
        self.fold_projections = fold_projections
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
    def fold_projections(self) -> bool | str:
        return self._fold_projections

    @fold_projections.setter
    def fold_projections(self, value: bool | str) -> None:
        if not (isinstance(value, bool) or value == "auto"):
            raise ValueError(f"`fold_projections` must be 'auto', True or False, got {value!r}.")
        self._fold_projections = value

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
            return_attention: also return the probabilities (computed by the eager or folded path, whatever the
                backend).

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
        impl = "eager" if return_attention else self._attn_implementation
        fold = self.use_folded(
            B, Tq, Nq, Tk, Nk, max_chunk, query_rotary=query_rotary is not None, attn_implementation=impl
        )
        k_lin = self.k_proj(keys).view(B, Tk * Nk, H, d)
        v = k_lin if self.tie_value_to_key else self.v_proj(keys).view(B, Tk * Nk, H, d)
        k = k_lin if key_rotary is None else _rotate(k_lin, key_rotary)
        k, v = k.view(B, Tk, Nk, H, d), v.view(B, Tk, Nk, H, d)
        lengths = key_lengths.to(device=keys.device, dtype=torch.long)

        if fold or "flash" not in impl:
            index, valid = chunk_index(lengths, Tq, max_chunk)  # [B, Tq, Cmax]
        if fold:
            gather = partial(self._gather_chunks, index=index, valid=valid, uniform=uniform)
            out, probs = folded_chunk_attention(queries, k, v, self.q_proj, self.o_proj, self.scaling, gather)
        else:
            q = self.q_proj(queries).view(B, Tq * Nq, H, d)
            q = q if query_rotary is None else _rotate(q, query_rotary)
            q = q.reshape(B * Tq, Nq, H, d).transpose(1, 2)  # [B*Tq, H, Nq, d]
            if "flash" in impl:
                out = self._flash_attention(q, k, v, lengths, max_chunk)
            else:
                (k, v), mask = self._gather_chunks((k, v), index, valid, uniform)
                attn_fn = ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_attention_forward)
                out, probs = attn_fn(self, q, k, v, mask, dropout=0.0, scaling=self.scaling, is_causal=False)
            out = self.o_proj(out.reshape(B, Tq, Nq, D))
        out = out.reshape(B, Tq, Nq, D)
        if not return_attention:
            return out
        probs = probs.reshape(B, Tq, H, Nq, max_chunk * Nk).transpose(1, 2)  # [B, H, Tq, Nq, Cmax*Nk]
        key_time = torch.where(valid, index, -1)[..., None].expand(B, Tq, max_chunk, Nk).reshape(B, Tq, -1)
        return out, probs, key_time

    def use_folded(
        self,
        batch: int,
        frames: int,
        query_tokens: int,
        key_steps: int,
        key_tokens: int,
        max_chunk: int,
        *,
        query_rotary: bool = False,
        attn_implementation: str | None = None,
    ) -> bool:
        """Whether a call with these shapes takes the folded path: `fold_projections`, or for "auto" the cheaper path by
        `cross_attention_flops`, never with query RoPE, a q_proj that is not `is_foldable_linear` (wrapped by an
        adapter, partitioned) or flash attention (varlen path). True raises where folding would be wrong."""
        plain_query_projection = is_foldable_linear(self.q_proj)
        if self._fold_projections is True and (query_rotary or not plain_query_projection):
            reason = "`query_rotary` (query RoPE)" if query_rotary else f"this `q_proj` ({type(self.q_proj).__name__})"
            raise ValueError(
                f"`fold_projections=True` cannot be used with {reason}: folding q_proj into the keys is exact only "
                "for a plain, whole nn.Linear q_proj without query RoPE; set `fold_projections='auto'` (falls back to the "
                "standard path) or False."
            )
        impl = attn_implementation or self._attn_implementation
        if self._fold_projections != "auto" or query_rotary or not plain_query_projection or "flash" in impl:
            return self._fold_projections is True
        flops = cross_attention_flops(
            batch, frames, query_tokens, key_steps, key_tokens, max_chunk, self.hidden_size, self.num_heads,
            untied_values=not self.tie_value_to_key, output_projection=is_foldable_linear(self.o_proj),
        )  # fmt: skip
        return flops["folded"] < flops["standard"]

    @staticmethod
    def _gather_chunks(
        tensors: Sequence[torch.Tensor], index: torch.Tensor, valid: torch.Tensor, uniform: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Each [B, Tk, Nk, H, *] -> [B*Tq, H, Cmax*Nk, *] per chunk, and a bool mask [B*Tq, 1, 1, Cmax*Nk] or None."""
        B, Tq, C = index.shape
        Nk = tensors[0].shape[2]
        if uniform:  # same length everywhere, a multiple of Tq: chunks are a reshape, nothing is padded
            return [t[:, : Tq * C].reshape(B * Tq, C * Nk, *t.shape[3:]).transpose(1, 2) for t in tensors], None
        b = torch.arange(B, device=index.device)[:, None, None]
        gathered = [t[b, index].reshape(B * Tq, C * Nk, *t.shape[3:]).transpose(1, 2) for t in tensors]
        mask = valid[..., None].expand(B, Tq, C, Nk).reshape(B * Tq, 1, 1, C * Nk)
        return gathered, mask

    def _flash_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, max_chunk: int
    ) -> torch.Tensor:
        """Varlen flash attention: the valid keys, packed, are already in chunk order; chunks become sequences."""
        B, Tk, Nk, H, d = k.shape
        Tq, Nq = q.shape[0] // B, q.shape[2]
        time_valid = torch.arange(Tk, device=k.device) < lengths[:, None]  # [B, Tk]
        k, v = (t[time_valid].reshape(1, -1, H, d).transpose(1, 2) for t in (k, v))  # [1, H, sum(L)*Nk, d]
        sizes = chunk_bounds(lengths, Tq)[1]  # [B, Tq]
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
