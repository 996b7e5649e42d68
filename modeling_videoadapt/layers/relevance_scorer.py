"""REEF's relevance scorer: two FC layers with a local/global split, min-max normalised to [0, 1].

Layer 1 maps every token of a set to a local representation; the global representation is the mean of the local
ones over the valid tokens of the same set, concatenated to each local one; layer 2 gives one unnormalised score per
token; min-max normalisation over the set (eps 1e-5, as STTS and Cordonnier et al.) gives scores in [0, 1]. A set is
whatever the caller scores together: the spatial tokens of one frame (spatial relevance) or the frames of a clip
(temporal relevance, one pooled token per frame).

Shape legend:
    B    batch (one set per row)
    N    tokens of one set
    D    input channels
    H    hidden channels of layer 1
"""

import torch
from torch import nn


__all__ = ["RelevanceScorer", "min_max_normalize"]


def _check_mask(mask: torch.Tensor | None, shape: tuple[int, ...], name: str = "mask") -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise TypeError(
            f"`{name}` must be a bool tensor (True = valid token), got dtype {mask.dtype}; use `mask.bool()`."
        )
    if tuple(mask.shape) != shape:
        raise ValueError(f"`{name}` must have shape {list(shape)} (one flag per token), got {list(mask.shape)}.")


def min_max_normalize(scores: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """(s - min) / (max - min + eps) over the last axis, using only valid entries.

    Args:
        scores: [..., N] unnormalised scores.
        mask: bool [..., N], True on valid entries; invalid entries get 0 and take no part in the min and max. A row
            with no valid entry is all 0.
        eps: added to the range, so a constant row maps to 0 and the maximum to range / (range + eps) < 1.

    Returns:
        [..., N] scores in [0, 1].
    """
    _check_mask(mask, tuple(scores.shape))
    if mask is None:
        low, high = scores.amin(-1, keepdim=True), scores.amax(-1, keepdim=True)
        return (scores - low) / (high - low + eps)
    low = scores.masked_fill(~mask, float("inf")).amin(-1, keepdim=True)  # [..., 1]
    high = scores.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
    any_valid = mask.any(-1, keepdim=True)
    zero = scores.new_zeros(())
    low, high = torch.where(any_valid, low, zero), torch.where(any_valid, high, zero)  # finite, also for empty rows
    return ((scores - low) / (high - low + eps)).masked_fill(~mask, 0.0)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over N of x [B, N, H] using valid tokens only -> [B, 1, H] (0 for a set without valid tokens)."""
    if mask is None:
        return x.mean(1, keepdim=True)
    weight = mask.to(x.dtype)[..., None]  # [B, N, 1]
    return (x * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1.0)


class RelevanceScorer(nn.Module):
    """Per-token relevance in [0, 1] from local features and the mean of the set (REEF's relevance scorer).

    Layer 1 is LayerNorm -> Linear(D, H) -> GELU (the first block of STTS's `PredictorLG`); layer 2 is
    Linear(2H, 1) on [local, global].

    Args:
        dim: D, channels of the input tokens.
        hidden: H, channels of the local representation; default max(1, D // 2), so [local, global] has about D
            channels as in `PredictorLG`.
        eps: eps of the min-max normalisation.
    """

    def __init__(self, dim: int, hidden: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = max(1, dim // 2) if hidden is None else hidden
        if dim < 1:
            raise ValueError(f"`dim` must be >= 1 (the token channels), got {dim}.")
        if hidden < 1:
            raise ValueError(f"`hidden` must be >= 1 (the local representation channels), got {hidden}.")
        self.dim, self.hidden, self.eps = dim, hidden, eps
        self.local = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU())  # layer 1
        self.score = nn.Linear(2 * hidden, 1)  # layer 2

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, return_raw: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Score every token of every set.

        Args:
            tokens: [B, N, D].
            mask: bool [B, N], True on valid tokens; the global mean and the min-max use valid tokens only, and
                invalid tokens score 0.
            return_raw: also return the unnormalised scores (0 on invalid tokens).

        Returns:
            scores [B, N] in [0, 1], or (scores, raw) [B, N] each when `return_raw`.
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.dim:
            raise ValueError(
                f"`tokens` must be [B, N, D] with D = {self.dim} (the scorer's `dim`), got shape {list(tokens.shape)}."
            )
        _check_mask(mask, tuple(tokens.shape[:2]))
        local = self.local(tokens)  # [B, N, H]
        glob = _masked_mean(local, mask).expand_as(local)  # [B, N, H]
        raw = self.score(torch.cat([local, glob], dim=-1)).squeeze(-1)  # [B, N]
        scores = min_max_normalize(raw, mask, self.eps)
        if not return_raw:
            return scores
        return scores, raw if mask is None else raw.masked_fill(~mask, 0.0)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, eps={self.eps}"
