"""Online memory banks of MA-LMM and REEF: per-step token states, merged down to a fixed number of slots.

One merge per append keeps a bank at `max_length` slots; the merge rules (MA-LMM's per-position cosine rule, REEF's
relevance-aware rule, and the expected merge used in training) live in `memory_merge.py`.

Shape legend:
    B    batch
    T    slots in the bank (frames before merging)
    N    tokens per slot
    C    channels
"""

import torch

from videoadapt.layers.memory_merge import (
    MergeMode,
    _check_alpha_mode,
    expected_merge_bank,
    merge_bank,
    merge_scores,
)


__all__ = ["MemoryBank", "QueryMemoryBank", "VisualMemoryBank"]


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
            merged = expected_merge_bank(self.features, self.sizes, self.relevance, probabilities)
            merge_index = probabilities.argmax(dim=1)
        else:
            if merge_index is None:
                merge_index = merge_scores(self.features, self.relevance, self.alpha, self.mode).argmax(dim=1)
            merged = merge_bank(self.features, self.sizes, self.relevance, merge_index)
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
