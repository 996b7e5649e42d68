"""Merging adjacent memory slots (MA-LMM, REEF): pair scores, hard and expected size-weighted merges.

MA-LMM (`ma_lmm_compress`) merges, for every token position n independently, the adjacent pair of slots whose
tokens at n are most similar (cosine). REEF (`relevance_compress`) scores adjacent pairs by

    s_t = alpha * cos(p_t, p_{t+1}) + (1 - alpha) * ((1 - r_t) + (1 - r_{t+1})) / 2,

so that similar *and* irrelevant slots merge first; alpha = 1 in mode "position" is MA-LMM bit for bit. Slot t*+1
merges into slot t* = argmax_t s_t (first maximum on ties): features and relevance become the size-weighted
average of the two, sizes add, and every other slot is copied unchanged and keeps its order.

Modes:
    "position"  one pair per (sample, token position), as MA-LMM: right when token n is the same thing in every slot
                (all ViT patches, Q-Former queries). Relevance is per token, [B, T, N] ([B, T] is broadcast).
    "frame"     one pair per sample: the cosine of the flattened slots [N * C] and one relevance per slot, [B, T]
                ([B, T, N] is averaged over N for the score). Right for REEF's top-K filtered tokens: token n of
                two frames is then the n-th kept patch in raster order, not the same location, so a per-n timeline
                means nothing. The pair is merged token by token in that order; each slot stays a contiguous run of
                frames, and the flattened cosine measures exactly what this token-by-token average loses.

Shape legend:
    B    batch
    T    slots in the bank (frames before merging)
    N    tokens per slot
    C    channels
"""

from typing import Literal

import torch
import torch.nn.functional as F


__all__ = [
    "MergeMode",
    "adjacent_cosine",
    "expected_merge",
    "expected_merge_bank",
    "ma_lmm_compress",
    "merge_adjacent",
    "merge_bank",
    "merge_scores",
    "relevance_compress",
]

MergeMode = Literal["position", "frame"]
_MODES = ("position", "frame")


# ---------------------------------------------------------------------------------------------------------------------
# checks


def _check_bank(bank: torch.Tensor, sizes: torch.Tensor) -> None:
    if bank.dim() != 4:
        raise ValueError(f"`bank` must be [B, T, N, C], got shape {list(bank.shape)}.")
    if tuple(sizes.shape) != tuple(bank.shape[:3]):
        raise ValueError(
            f"`sizes` must be [B, T, N] = {list(bank.shape[:3])} (frames merged into each slot and token), "
            f"got {list(sizes.shape)}."
        )
    if bank.shape[1] < 2:
        raise ValueError(f"`bank` needs T >= 2 slots to merge a pair, got T = {bank.shape[1]}.")


def _check_alpha_mode(alpha: float, mode: str) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1] (the weight of the cosine term), got {alpha}.")
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}.")


def _check_relevance(relevance: torch.Tensor, bank: torch.Tensor) -> None:
    if tuple(relevance.shape) not in (tuple(bank.shape[:3]), tuple(bank.shape[:2])):
        raise ValueError(
            f"`relevance` must be [B, T, N] = {list(bank.shape[:3])} or [B, T] = {list(bank.shape[:2])}, "
            f"got {list(relevance.shape)}."
        )


# ---------------------------------------------------------------------------------------------------------------------
# functional


def adjacent_cosine(bank: torch.Tensor, mode: MergeMode = "position") -> torch.Tensor:
    """Cosine of adjacent slots of bank [B, T, N, C]: [B, T-1, N] per position, or [B, T-1] of flattened slots."""
    if mode == "frame":
        flat = bank.flatten(2)  # [B, T, N*C]
        return F.cosine_similarity(flat[:, :-1], flat[:, 1:], dim=-1)
    return F.cosine_similarity(bank[:, :-1], bank[:, 1:], dim=-1)


def merge_scores(bank: torch.Tensor, relevance: torch.Tensor, alpha: float, mode: MergeMode) -> torch.Tensor:
    """REEF's pair scores alpha * cos + (1 - alpha) * mean irrelevance: [B, T-1, N] ("position") or [B, T-1]."""
    if mode == "frame" and relevance.dim() == 3:
        relevance = relevance.mean(-1)  # [B, T]
    elif mode == "position" and relevance.dim() == 2:
        relevance = relevance[..., None]  # [B, T, 1], broadcast over N
    irrelevance = 1 - relevance
    mean_irrelevance = (irrelevance[:, :-1] + irrelevance[:, 1:]) / 2
    return alpha * adjacent_cosine(bank, mode) + (1 - alpha) * mean_irrelevance


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x.gather(1, index), with `index` [B, T', *S] broadcast over the trailing feature axes of x."""
    trailing = x.shape[index.dim() :]
    index = index.reshape(*index.shape, *([1] * len(trailing))).expand(*index.shape, *trailing)
    return x.gather(1, index)


def merge_adjacent(x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge slot index+1 into slot index by weighted average along axis 1; other slots are copied unchanged.

    Args:
        x: [B, T, *S, *F] values (S: the axes of `weights` after T; F: feature axes, may be empty).
        weights: [B, T, *S] sizes, > 0.
        index: long [B, *S] in [0, T-2], the first slot of the pair to merge.

    Returns:
        (x [B, T-1, *S, *F], weights [B, T-1, *S]); the merged slot holds (w_i x_i + w_j x_j) / (w_i + w_j) and
        weight w_i + w_j.
    """
    T, feature_axes = weights.shape[1], (1,) * (x.dim() - weights.dim())
    idx = index.unsqueeze(1)  # [B, 1, *S]
    slot = torch.arange(T - 1, device=index.device).view(1, T - 1, *([1] * (weights.dim() - 2)))
    before, is_dst = slot < idx, slot == idx  # [B, T-1, *S]; slots after the pair shift down by one
    w_dst, w_src = weights.gather(1, idx), weights.gather(1, idx + 1)  # [B, 1, *S]
    total = w_dst + w_src
    wd, ws, wt = (w.view(*w.shape, *feature_axes) for w in (w_dst, w_src, total))
    merged = ((_take(x, idx) * wd + _take(x, idx + 1) * ws) / wt).to(x.dtype)  # [B, 1, *S, *F]
    before_x, is_dst_x = (m.view(*m.shape, *feature_axes) for m in (before, is_dst))
    out_x = torch.where(is_dst_x, merged, torch.where(before_x, x[:, :-1], x[:, 1:]))
    out_w = torch.where(is_dst, total, torch.where(before, weights[:, :-1], weights[:, 1:]))
    return out_x, out_w


def expected_merge(
    x: torch.Tensor, weights: torch.Tensor, probabilities: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`merge_adjacent` in expectation over the pair: differentiable in `probabilities`, exact for one-hot ones.

    New slot j = (sum_{t>j} p_t) x_j + p_j merge(x_j, x_j+1) + (sum_{t<j} p_t) x_j+1 (and likewise for weights).

    Args:
        x: [B, T, *S, *F] values; weights: [B, T, *S] sizes > 0.
        probabilities: [B, T-1, *S] pair probabilities (summing to 1 over axis 1), e.g. perturbed top-1 indicators.
    """
    feature_axes = (1,) * (x.dim() - weights.dim())
    left, right = weights[:, :-1], weights[:, 1:]
    total = left + right
    merged = x[:, :-1] * left.view(*left.shape, *feature_axes) + x[:, 1:] * right.view(*right.shape, *feature_axes)
    merged = merged / total.view(*total.shape, *feature_axes)
    after = probabilities.flip(1).cumsum(1).flip(1)  # sum_{t >= j} p_t
    keep = torch.cat([after[:, 1:], torch.zeros_like(after[:, :1])], 1)  # sum_{t > j} p_t
    shift = torch.cat([torch.zeros_like(probabilities[:, :1]), probabilities.cumsum(1)[:, :-1]], 1)  # sum_{t < j}

    def mix(values: torch.Tensor, pair: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        k, p, s = (v.view(*v.shape, *axes) for v in (keep, probabilities, shift))
        return k * values[:, :-1] + p * pair + s * values[:, 1:]

    return mix(x, merged.to(x.dtype), feature_axes), mix(weights, total, ())


def expected_merge_bank(
    bank: torch.Tensor, sizes: torch.Tensor, relevance: torch.Tensor, probabilities: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_merge_bank` in expectation over pair probabilities [B, T-1] (whole slots) or [B, T-1, N]."""
    N = bank.shape[2]
    token_probabilities = probabilities[..., None].expand(-1, -1, N) if probabilities.dim() == 2 else probabilities
    if relevance.dim() == 2 and probabilities.dim() == 3:
        relevance = relevance[..., None].expand(-1, -1, N)
    if relevance.dim() == 2:
        relevance, _ = expected_merge(relevance, sizes.sum(-1), probabilities)
    else:
        relevance, _ = expected_merge(relevance, sizes, token_probabilities)
    bank, sizes = expected_merge(bank, sizes, token_probabilities)
    return bank, sizes, relevance


def merge_bank(
    bank: torch.Tensor, sizes: torch.Tensor, relevance: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the pair at `index` ([B]: whole slots, or [B, N]) in bank, sizes and relevance ([B, T] or [B, T, N])."""
    N = bank.shape[2]
    token_index = index[:, None].expand(-1, N) if index.dim() == 1 else index  # [B, N]
    if relevance.dim() == 2 and index.dim() == 2:
        relevance = relevance[..., None].expand(-1, -1, N)  # per-slot relevance under per-position merges
    if relevance.dim() == 2:
        relevance, _ = merge_adjacent(relevance, sizes.sum(-1), index)  # slot weight = its total token count
    else:
        relevance, _ = merge_adjacent(relevance, sizes, token_index)
    bank, sizes = merge_adjacent(bank, sizes, token_index)
    return bank, sizes, relevance


def ma_lmm_compress(bank: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MA-LMM's compression: per token position, merge the most similar adjacent pair of slots.

    bank [B, T, N, C], sizes [B, T, N] (frames per slot and token) -> (bank [B, T-1, N, C], sizes [B, T-1, N]).
    """
    _check_bank(bank, sizes)
    index = adjacent_cosine(bank, "position").argmax(dim=1)  # [B, N]
    return merge_adjacent(bank, sizes, index)


def relevance_compress(
    bank: torch.Tensor, sizes: torch.Tensor, relevance: torch.Tensor, alpha: float, mode: MergeMode = "frame"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """REEF's relevance-aware temporal compression: one merge of the adjacent pair with the highest score.

    Args:
        bank: [B, T, N, C] slot features.
        sizes: [B, T, N] frames merged into each slot and token.
        relevance: [B, T, N] or [B, T] relevance in [0, 1] of each slot.
        alpha: weight of the cosine term in [0, 1]; 1 ignores relevance.
        mode: "frame" (one pair per sample, REEF's default) or "position" (one pair per token, MA-LMM).

    Returns:
        bank [B, T-1, N, C], sizes [B, T-1, N], and the relevance with T-1 slots: same shape as given, except
        [B, T-1, N] for [B, T] in mode "position". A merged slot's relevance is the size-weighted average of the two.
    """
    _check_bank(bank, sizes)
    _check_alpha_mode(alpha, mode)
    _check_relevance(relevance, bank)
    index = merge_scores(bank, relevance, alpha, mode).argmax(dim=1)  # [B, N] or [B]
    return merge_bank(bank, sizes, relevance, index)
