"""Online memory banks of MA-LMM and REEF: merge the best adjacent pair of slots by size-weighted average.

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
    "MemoryBank",
    "QueryMemoryBank",
    "VisualMemoryBank",
    "adjacent_cosine",
    "expected_merge",
    "ma_lmm_compress",
    "merge_adjacent",
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


def _expected_merge_bank(
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


def _merge_bank(
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
    return _merge_bank(bank, sizes, relevance, index)


# ---------------------------------------------------------------------------------------------------------------------
# containers


class MemoryBank:
    """Online bank of detached per-step token states, merged down to `max_length` slots (one merge per append).

    Attributes: `features` [B, T, N, C], `sizes` float32 [B, T, N], `relevance` ([B, T] in mode "frame",
    [B, T, N] in mode "position"), all None when empty, and `merge_history`: one entry per append, None when no merge
    happened, else the merged pair's first slot ([B] in mode "frame", [B, N] in mode "position").

    Args:
        max_length: slots kept, >= 1.
        alpha: weight of the cosine term of the merge score in [0, 1]; 1 is MA-LMM's rule.
        mode: "position" or "frame" (see the module docstring).
        detach: store states and relevance without autograd history (MA-LMM); False keeps it, so that a training
            loss reaches what produced them (the bank then holds the graph of the steps it stores).
        record_history: keep `merge_history` (one small tensor per step: over thousands of steps these fragment the
            CPU heap between large temporaries; long online loops turn it off and use `compress`'s return value).
    """

    def __init__(
        self,
        max_length: int,
        alpha: float = 1.0,
        mode: MergeMode = "position",
        detach: bool = True,
        record_history: bool = True,
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(
                f"`max_length` must be an int >= 1 (the slots the bank keeps), got {max_length!r}; a model without a "
                "memory bank (memory_bank_length = 0) should not create one."
            )
        _check_alpha_mode(alpha, mode)
        self.max_length, self.alpha, self.mode, self.detach = max_length, alpha, mode, detach
        self.record_history = record_history
        self.reset()

    def reset(self) -> None:
        """Empty the bank (call between videos)."""
        self.features: torch.Tensor | None = None
        self.sizes: torch.Tensor | None = None
        self.relevance: torch.Tensor | None = None
        self.merge_history: list[torch.Tensor | None] = []

    def __len__(self) -> int:
        return 0 if self.features is None else self.features.shape[1]

    def _step_relevance(self, relevance: torch.Tensor | None, states: torch.Tensor) -> torch.Tensor:
        """One step's relevance in the stored layout: [B, 1] ("frame") or [B, 1, N] ("position")."""
        B, N = states.shape[:2]
        if relevance is None:
            relevance = torch.ones(B, device=states.device)
        elif tuple(relevance.shape) not in ((B,), (B, N)):
            raise ValueError(f"`relevance` must be [B, N] = {[B, N]} or [B] = {[B]}, got {list(relevance.shape)}.")
        relevance = relevance.detach() if self.detach else relevance
        if self.mode == "frame":
            return (relevance.mean(-1) if relevance.dim() == 2 else relevance)[:, None]
        return (relevance[:, None].expand(B, N) if relevance.dim() == 1 else relevance)[:, None]

    def append(
        self,
        states: torch.Tensor,
        relevance: torch.Tensor | None = None,
        merge_index: torch.Tensor | None = None,
        compress: bool = True,
    ) -> None:
        """Store one step's states (detached if `detach`) with size 1, then merge once if the bank holds more than
        `max_length` (unless `compress=False`: the caller then calls `compress` with its own pair choice).

        Args:
            states: [B, N, C].
            relevance: [B, N] or [B] relevance in [0, 1] of the step; None means 1 (equal relevance everywhere,
                which selects the same pairs as the cosine rule).
            merge_index: long [B] ("frame") or [B, N] ("position") to force the pair to merge (e.g. merge a query
                bank where the visual bank merged), used only if this append triggers a merge; None uses the bank's
                own score.
        """
        if states.dim() != 3:
            raise ValueError(f"`states` must be [B, N, C], got shape {list(states.shape)}.")
        expected = None if self.features is None else [self.features.shape[0], *self.features.shape[2:]]
        if expected is not None and list(states.shape) != expected:
            raise ValueError(
                f"`states` must be [B, N, C] = {expected} like the states already in the bank, got "
                f"{list(states.shape)}; call `reset()` between videos."
            )
        B, N, _ = states.shape
        if merge_index is not None and tuple(merge_index.shape) != ((B,) if self.mode == "frame" else (B, N)):
            raise ValueError(
                f"`merge_index` must be [B] in mode 'frame' or [B, N] in mode 'position' ({self.mode!r} here, "
                f"B = {B}, N = {N}), got {list(merge_index.shape)}."
            )
        sizes = torch.ones(B, 1, N, device=states.device)  # float32 counts: exact in any bank dtype
        step = ((states.detach() if self.detach else states)[:, None], sizes, self._step_relevance(relevance, states))
        if self.features is None:
            self.features, self.sizes, self.relevance = step
        else:
            old = (self.features, self.sizes, self.relevance)
            self.features, self.sizes, self.relevance = (torch.cat([a, b], dim=1) for a, b in zip(old, step))
        if self.record_history:
            self.merge_history.append(None)  # replaced by the merge below, if any
        if len(self) > self.max_length and compress:
            self.compress(merge_index)

    def compress(
        self, merge_index: torch.Tensor | None = None, probabilities: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Merge one adjacent pair now: `merge_index` (long [B] or [B, N]), or in expectation over `probabilities`
        (float [B, T-1] in mode "frame", [B, T-1, N] in mode "position"), or the bank's own best-scoring pair.

        Returns the chosen index (the most probable pair when soft), which also replaces this step's `merge_history`
        entry.
        """
        if len(self) < 2:
            raise ValueError(f"`compress` needs at least 2 slots, the bank holds {len(self)}.")
        if probabilities is not None:
            expected = (
                self.features.shape[0],
                len(self) - 1,
                *(() if self.mode == "frame" else self.features.shape[2:3]),
            )
            if tuple(probabilities.shape) != expected:
                raise ValueError(f"`probabilities` must be {list(expected)}, got {list(probabilities.shape)}.")
            merged = _expected_merge_bank(self.features, self.sizes, self.relevance, probabilities)
            merge_index = probabilities.argmax(dim=1)
        else:
            if merge_index is None:
                merge_index = merge_scores(self.features, self.relevance, self.alpha, self.mode).argmax(dim=1)
            merged = _merge_bank(self.features, self.sizes, self.relevance, merge_index)
        self.features, self.sizes, self.relevance = merged
        if self.record_history and self.merge_history:
            self.merge_history[-1] = merge_index
        return merge_index


class VisualMemoryBank(MemoryBank):
    """REEF's visual memory bank: frame features (after the temporal embedding and token filtering).

    Defaults: alpha 0.7 (the supplement's most common value) and mode "frame" (for top-K filtered tokens).
    """

    def __init__(
        self,
        max_length: int,
        alpha: float = 0.7,
        mode: MergeMode = "frame",
        detach: bool = True,
        record_history: bool = True,
    ) -> None:
        super().__init__(max_length, alpha, mode, detach, record_history)

    def context(self, current: torch.Tensor) -> torch.Tensor:
        """Cross-attention memory: the bank then the current frame [B, N, C] (gradients kept) -> [B, (T+1)*N, C]."""
        if self.features is None:
            return current
        return torch.cat([self.features.to(current.dtype), current[:, None]], dim=1).flatten(1, 2)


class QueryMemoryBank(MemoryBank):
    """Past hidden states of one Q-Former self-attention layer (queries, plus text tokens if present).

    Defaults to MA-LMM's plain cosine rule (alpha 1, mode "position"); pass alpha < 1 and relevance for REEF's rule.
    """

    def keys_values_source(self) -> torch.Tensor | None:
        """The bank flattened slot-major to [B, T*N, C], to be projected by the layer's key and value; None if empty."""
        return None if self.features is None else self.features.flatten(1, 2)

    def tile_attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Tile the current step's mask [..., N] over the bank and the current step -> [..., (T+1)*N], as MA-LMM.

        Every stored step is assumed to have had the same mask (the same text at every step of a video).
        """
        return torch.cat([mask] * (len(self) + 1), dim=-1)
