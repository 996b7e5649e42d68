"""Folded temporal-aligned cross-attention: the query projection (and a linear output projection) folded into the few
keys and values of each chunk. An exact algebraic rewrite, used by `TemporalAlignedCrossAttention` when it is cheaper.

Shape legend:
    BT   attention batches (batch * query frames), one chunk each
    Nq   query tokens per frame
    ...  leading key axes before the heads (e.g. B, Tk, Nk)
    M    keys of one chunk (Cmax * Nk; padding slots masked)
    D    hidden size
    H    heads
    d    head dim = D / H

With s = 1 / sqrt(d), Wq_h = q_proj.weight[h*d:(h+1)*d] [d, D] and Wo_h = o_proj.weight[:, h*d:(h+1)*d] [D, d]:
    scores[n, h, m] = s (x_n Wq_h^T + bq_h) . k[h, m] = x_n . K'[h, m] + beta[h, m]
        K'[h, m] = s Wq_h^T k[h, m] (a D-vector),  beta[h, m] = s bq_h . k[h, m]
    out[n] = sum_h p[n, h] v[h] Wo_h^T + bo = P[n, (h, m)] V'[(h, m)] + bo,  V'[h, m] = Wo_h v[h, m]
(without an output projection, Wo = identity: V'[h, m] is v[h, m] in head h's own d channels, zeros elsewhere),
so a frame's scores are one matmul x [Nq, D] @ K'^T [D, H*M] and its output one matmul P [Nq, H*M] @ V' [H*M, D]
that writes the concatenated heads in place: Nq*D*H*M multiply-adds each, instead of the projections' Nq*D*D. It pays when H*M < D (PAVE audio: 4 heads x 4
one-token steps = 16 << 512), not for large chunks (3D: 576 tokens a step); `cross_attention_flops` tells which.
Exact only without query RoPE (a query rotation depends on the query's position, which a folded key cannot carry);
key RoPE is applied to k before folding.
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn


__all__ = [
    "cross_attention_flops",
    "fold_keys",
    "fold_values",
    "folded_attention",
    "folded_chunk_attention",
    "is_foldable_linear",
]

Gather = Callable[[Sequence[torch.Tensor]], tuple[list[torch.Tensor], torch.Tensor | None]]


def cross_attention_flops(
    batch: int,
    frames: int,
    query_tokens: int,
    key_steps: int,
    key_tokens: int,
    max_chunk: int,
    hidden: int,
    heads: int,
    *,
    untied_values: bool,
    output_projection: bool,
) -> dict[str, int]:
    """Analytic forward FLOPs of one `TemporalAlignedCrossAttention` call, standard and folded path.

    Matmuls only, 2 FLOPs per multiply-add: projections, folding, scores and the weighted sum (softmax, RoPE and
    gathers are ignored). Keys are projected at every padded step (batch * key_steps * key_tokens rows); each query
    frame attends to M = max_chunk * key_tokens columns. Returns {"standard": ..., "folded": ...}.
    """
    query_rows, key_rows, cols = batch * frames * query_tokens, batch * key_steps * key_tokens, max_chunk * key_tokens
    linear = 2 * hidden * hidden  # one D x D projection of one token
    key_value = key_rows * linear * (2 if untied_values else 1)
    standard = key_value + query_rows * linear * (2 if output_projection else 1) + 2 * (2 * query_rows * cols * hidden)
    folding = key_rows * linear * (2 if output_projection else 1)  # K' (and V' = Wo_h v) for every key token
    folded = key_value + folding + 2 * (2 * query_rows * heads * cols * hidden)  # x @ K'^T, P @ V'
    return {"standard": standard, "folded": folded}


def is_foldable_linear(module: nn.Module) -> bool:
    """A plain nn.Linear whose full weight is in place. Not a subclass or adapter wrapper (its forward may add to or
    quantise the weight), nor a parameter-partitioned Linear (e.g. DeepSpeed ZeRO-3, whose weight is only gathered
    when the module itself is called, and folding never calls it)."""
    return type(module) is nn.Linear and tuple(module.weight.shape) == (module.out_features, module.in_features)


def fold_keys(k: torch.Tensor, q_proj: nn.Linear, scaling: float) -> torch.Tensor:
    """k [..., H, d] (after key RoPE) -> [..., H, D + 1]: K' = s Wq_h^T k in the first D channels and beta =
    s bq_h . k in the last (0 without a query bias)."""
    heads, head_dim = k.shape[-2:]
    weight = q_proj.weight.view(heads, head_dim, -1)  # [H, d, D]
    bias = weight.new_zeros(heads, head_dim, 1) if q_proj.bias is None else q_proj.bias.view(heads, head_dim, 1)
    return torch.einsum("...he,hec->...hc", k, torch.cat((weight, bias), dim=-1) * scaling)


def fold_values(v: torch.Tensor, o_proj: nn.Module) -> torch.Tensor:
    """v [..., H, d] -> V' [..., H, D]: Wo_h v for a plain nn.Linear o_proj (its bias is added after the weighted
    sum); otherwise v placed in head h's own d channels (Wo = identity; another o_proj is applied afterwards)."""
    heads, head_dim = v.shape[-2:]
    if is_foldable_linear(o_proj):
        return torch.einsum("...he,che->...hc", v, o_proj.weight.view(-1, heads, head_dim))
    eye = torch.eye(heads, dtype=v.dtype, device=v.device)[:, :, None]  # [H, H, 1]
    return (v.unsqueeze(-2) * eye).flatten(-2)  # [..., H, H, d] -> [..., H, D]


def folded_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    output_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of raw (unprojected) queries on folded keys and values.

    Args:
        queries: x [BT, Nq, D], the layer's input queries (no projection).
        keys: [BT, H, M, D + 1] from `fold_keys` (K' and beta), gathered per chunk.
        values: V' [BT, H, M, D] from `fold_values`, gathered per chunk.
        mask: bool [BT, 1, 1, M], True = attend; masked columns get probability exactly 0. None: attend to all.
        output_bias: bo [D] or None.

    Returns:
        out [BT, Nq, D] and the probabilities [BT, H, Nq, M], in the queries' dtype (softmax in float32).
    """
    BT, H, M, D = values.shape
    Nq = queries.shape[1]
    bias = keys[..., D].reshape(BT, 1, H * M)  # beta; columns ordered (h, m)
    if mask is not None:
        blocked = ~mask.view(BT, 1, 1, M).expand(BT, 1, H, M).reshape(BT, 1, H * M)
        bias = bias.masked_fill(blocked, torch.finfo(bias.dtype).min)
    keys_t = keys[..., :D].reshape(BT, H * M, D).transpose(1, 2)  # [BT, D, H*M]
    scores = torch.baddbmm(bias, queries, keys_t)  # [BT, Nq, H*M]
    probs = torch.softmax(scores.view(BT, Nq, H, M), dim=-1, dtype=torch.float32).to(queries.dtype)
    weights, values = probs.view(BT, Nq, H * M), values.reshape(BT, H * M, D)
    out = torch.bmm(weights, values) if output_bias is None else torch.baddbmm(output_bias, weights, values)
    return out, probs.transpose(1, 2)


def folded_chunk_attention(
    queries: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_proj: nn.Linear,
    o_proj: nn.Module,
    scaling: float,
    gather: Gather,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole folded path: fold per key token, gather per chunk, attend, project out.

    Args:
        queries: x [B, Tq, Nq, D], unprojected.
        k: projected keys after key RoPE, [B, Tk, Nk, H, d]; v: projected values [B, Tk, Nk, H, d].
        q_proj: the query projection (`is_foldable_linear`). o_proj: the output projection; folded into the values
            when `is_foldable_linear`, else applied to the concatenated heads (e.g. nn.Identity).
        scaling: softmax scale.
        gather: tensors [B, Tk, Nk, H, *] -> ([B*Tq, H, M, *] per chunk, bool mask [B*Tq, 1, 1, M] or None).

    Returns:
        out [B*Tq, Nq, D] (o_proj applied) and probabilities [B*Tq, H, Nq, M].
    """
    B, Tq, Nq, D = queries.shape
    fold_output = is_foldable_linear(o_proj)
    (keys, values), mask = gather([fold_keys(k, q_proj, scaling), fold_values(v, o_proj)])
    out_bias = o_proj.bias if fold_output else None
    out, probs = folded_attention(queries.reshape(B * Tq, Nq, D), keys, values, mask, out_bias)
    return (out if fold_output else o_proj(out)), probs
