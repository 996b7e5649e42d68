"""Merging one adjacent pair of memory slots: pair scores, and the hard or soft (expected) size-weighted merge.

A memory bank x [B, M, K, C] holds M slots of K tokens with sizes [B, M, K] (how many frames each token stands
for). Merging pair j replaces slots j and j+1 by their size-weighted average (sizes add) and shifts later slots
left, leaving M - 1 slots. Per position (MA-LMM), each of the K token positions chooses its own pair; per frame,
one pair for the whole slot.

The soft merge is the expectation of the hard merge under pair probabilities w [B, M-1, K] (sum 1 over the pair
axis): new slot j = (sum_{t>j} w_t) x_j + w_j merge(x_j, x_j+1) + (sum_{t<j} w_t) x_j+1, differentiable in w. With
one-hot w it equals the hard merge.

Shape legend:
    B   batch       M   slots        K   tokens per slot       C   channels
"""

import torch
from torch import nn


__all__ = ["merge_adjacent", "pair_scores"]

GRANULARITIES = ("position", "frame")


def pair_scores(
    bank: torch.Tensor, relevance: torch.Tensor | None = None, alpha: float = 1.0, granularity: str = "position"
) -> torch.Tensor:
    """s_t = alpha * cos(x_t, x_t+1) + (1 - alpha) * ((1 - r_t) + (1 - r_t+1)) / 2 for the M - 1 adjacent pairs.

    Args:
        bank: [B, M, K, C].
        relevance: [B, M, K] in [0, 1] (needed when alpha < 1).
        alpha: weight of the similarity term, in [0, 1]; alpha = 1 is MA-LMM's similarity-only rule.
        granularity: "position" (cosine per token position -> [B, M-1, K]) or "frame" (cosine of the slots' mean
            tokens, relevance averaged over the slot -> [B, M-1]).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"`granularity` must be one of {GRANULARITIES}, got {granularity!r}.")
    if bank.ndim != 4 or bank.shape[1] < 2:
        raise ValueError(f"`bank` must be [B, M, K, C] with M >= 2 slots, got {tuple(bank.shape)}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    slots = bank if granularity == "position" else bank.mean(2)
    similarity = nn.functional.cosine_similarity(slots[:, :-1], slots[:, 1:], dim=-1)
    if alpha == 1.0:
        return similarity
    if relevance is None or relevance.shape != bank.shape[:3]:
        got = None if relevance is None else tuple(relevance.shape)
        raise ValueError(f"`relevance` must be [B, M, K] = {tuple(bank.shape[:3])} when alpha < 1, got {got}.")
    irrelevance = 1 - (relevance if granularity == "position" else relevance.mean(2))
    return alpha * similarity + (1 - alpha) * (irrelevance[:, :-1] + irrelevance[:, 1:]) / 2


def merge_adjacent(
    bank: torch.Tensor, sizes: torch.Tensor, choice: torch.Tensor, *carried: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Merge one adjacent pair per sample (per position): returns (bank [B, M-1, K, C], sizes, *carried).

    Args:
        bank: [B, M, K, C].
        sizes: [B, M, K] > 0, frames per token; the merged sizes add.
        choice: long pair index [B] (frame) or [B, K] (position) for a hard merge, or float pair probabilities
            [B, M-1, K] for the soft (expected) merge.
        carried: extra [B, M, K] per-token values (e.g. relevance) merged like the features.
    """
    B, M, K = sizes.shape
    if bank.shape[:3] != (B, M, K) or any(c.shape != sizes.shape for c in carried):
        raise ValueError(
            f"`bank` [B, M, K, C] and `sizes`/carried [B, M, K] must agree, got {tuple(bank.shape)}, "
            f"{tuple(sizes.shape)} and {[tuple(c.shape) for c in carried]}."
        )
    left_size, right_size = sizes[:, :-1], sizes[:, 1:]
    total = left_size + right_size

    def merged(x: torch.Tensor) -> torch.Tensor:
        a, b, t = (s if x.ndim == 3 else s[..., None] for s in (left_size, right_size, total))
        return (a * x[:, :-1] + b * x[:, 1:]) / t

    if choice.is_floating_point():
        if choice.shape != (B, M - 1, K):
            raise ValueError(f"soft `choice` must be [B, M-1, K] = {(B, M - 1, K)}, got {tuple(choice.shape)}.")
        after = choice.flip(1).cumsum(1).flip(1)  # sum_{t >= j} w_t
        keep = torch.cat([after[:, 1:], torch.zeros_like(after[:, :1])], 1)  # sum_{t > j} w_t
        shift = torch.cat([torch.zeros_like(choice[:, :1]), choice.cumsum(1)[:, :-1]], 1)  # sum_{t < j} w_t

        def mix(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            k, w, s = (v if x.ndim == 3 else v[..., None] for v in (keep, choice, shift))
            return k * x[:, :-1] + w * m + s * x[:, 1:]

        return (mix(bank, merged(bank)), mix(sizes, total), *(mix(c, merged(c)) for c in carried))

    index = choice if choice.ndim == 2 else choice[:, None].expand(B, K)
    if index.shape != (B, K) or bool(((index < 0) | (index > M - 2)).any()):
        raise ValueError(f"hard `choice` must be [B] or [B, K] = {(B, K)} with values in [0, {M - 2}].")
    slot = torch.arange(M - 1, device=bank.device)[None, :, None]  # [1, M-1, 1]
    before, at = slot < index[:, None], slot == index[:, None]  # [B, M-1, K]

    def pick(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        b, a = (v if x.ndim == 3 else v[..., None] for v in (before, at))
        return torch.where(b, x[:, :-1], torch.where(a, m, x[:, 1:]))

    return (pick(bank, merged(bank)), pick(sizes, total), *(pick(c, merged(c)) for c in carried))
