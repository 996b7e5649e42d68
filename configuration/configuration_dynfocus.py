"""DynFocus configuration: InstructBLIP-Video's fields plus the dynamic event prototypes and the dual-granularity
encoder (Cones: fine tokens for key frames; Rods: 2 coarse tokens for every frame).

Defaults follow the paper and its appendix (C.1): P = 16 pooled tokens per frame, L = 25 event prototypes, K/L = 0.8,
I = 22 spatial prototypes (two S-DPC levels, 16 then 6), J = 2 coarse tokens, perturbed top-K with n = 500. Where the
released code differs (k-means over 80 frames, keep ratio 0.45, uniform prototype weights, sigma 0.1, rods order
[content, context], no rods on key frames in mixed sequences) the config exposes the code's choice as an option.
See docs/fidelity.md.
"""

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import InstructBlipVideoConfig

from videoadapt.configuration.base_checkpoint import FromBaseCheckpointMixin


__all__ = ["DynFocusConfig", "dynfocus_video_tokens"]


def dynfocus_video_tokens(
    num_frames: int, num_events: int, event_keep_ratio: float, fine_tokens_per_key_frame: int, key_frame_rods: bool
) -> int:
    """Video tokens DynFocus gives the LLM for `num_frames` frames: 2 per frame, plus the fine tokens of
    K = ceil(K/L * min(L, T)) key frames (minus their 2 coarse ones without `key_frame_rods`)."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least 1 frame, got {num_frames}.")
    key = max(1, math.ceil(event_keep_ratio * min(num_events, num_frames) - 1e-9))
    return 2 * num_frames - (0 if key_frame_rods else 2 * key) + fine_tokens_per_key_frame * key


@strict
class DynFocusConfig(FromBaseCheckpointMixin, InstructBlipVideoConfig):
    """InstructBLIP-Video parts with DynFocus' DPE and CCE (`model_type="videoadapt_dynfocus"`).

    Args (beyond `InstructBlipVideoConfig`'s):
        num_pooled_tokens: P, tokens per frame after average pooling the patch grid (a square, 16 = 4 x 4).
        num_events: L, event prototypes from T-DPC (fewer when the video has fewer frames).
        event_keep_ratio: K/L, share of the events kept by Dynamic Selection; K = ceil(ratio * min(L, T)).
        event_knn: C, nearest neighbours of T-DPC's density (hand-set in the paper).
        spatial_clusters: S-DPC prototypes per level (256 -> 16 -> 6, I = 22).
        spatial_knn: nearest neighbours per S-DPC level.
        prototype_weighting: "exp_score" weights members by exp(rho * delta) (appendix B.3), "uniform" as the code.
        event_scorer: Dynamic Selection's U. "mlp": the appendix's d -> d/2 -> d/4 -> 1 (4.96 M parameters at d = 2816);
            "predictor_lg": the official PredictorLG, an input block LayerNorm -> Linear(d, d) -> GELU whose second
            half is averaged over the video's events, before the same MLP (12.90 M, appendix Table 3's 12.91).
        topk_num_samples / topk_sigma: the perturbed top-K of Dynamic Selection (training only).
        rods_order: "context_content" (the paper's Avg(E) || Avg(G)) or "content_context" (the code).
        key_frame_rods: key frames get their 2 coarse tokens too (paper's O_t: 40 tokens); False drops them (the
            code's mixed-sequence behaviour: 38).
        max_frames: longest video the model accepts (the processor samples 1 fps and caps to this many frames).
    """

    model_type = "videoadapt_dynfocus"

    num_pooled_tokens: int = 16
    num_events: int = 25
    event_keep_ratio: int | float = 0.8
    event_knn: int = 5
    spatial_clusters: list | None = None
    spatial_knn: list | None = None
    prototype_weighting: Literal["exp_score", "uniform"] = "exp_score"
    event_scorer: Literal["mlp", "predictor_lg"] = "mlp"
    topk_num_samples: int = 500
    topk_sigma: int | float = 0.1
    rods_order: Literal["context_content", "content_context"] = "context_content"
    key_frame_rods: bool = True
    max_frames: int = 2000

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.spatial_clusters is None:
            self.spatial_clusters = [16, 6]
        if self.spatial_knn is None:
            self.spatial_knn = [8, 3]
        self.check_ranges()

    # ------------------------------------------------------------------------------------------ token budget

    @property
    def num_spatial_prototypes(self) -> int:
        """I: spatial prototypes per frame (16 + 6 = 22)."""
        return sum(self.spatial_clusters)

    @property
    def fine_tokens_per_key_frame(self) -> int:
        """Cones: P event-prototype tokens + I spatial prototypes (16 + 22 = 38)."""
        return self.num_pooled_tokens + self.num_spatial_prototypes

    def num_key_frames(self, num_frames: int) -> int:
        """K for a video of `num_frames` frames: ceil(K/L * min(L, T))."""
        return max(1, math.ceil(self.event_keep_ratio * min(self.num_events, num_frames) - 1e-9))

    def num_video_tokens(self, num_frames: int) -> int:
        """Tokens the LLM receives for a `num_frames`-frame video (see `dynfocus_video_tokens`)."""
        return dynfocus_video_tokens(**self.token_budget(), num_frames=num_frames)

    def token_budget(self) -> dict:
        """What the processor needs to count video tokens."""
        return {
            "num_events": self.num_events,
            "event_keep_ratio": float(self.event_keep_ratio),
            "fine_tokens_per_key_frame": self.fine_tokens_per_key_frame,
            "key_frame_rods": self.key_frame_rods,
        }

    def check_ranges(self) -> None:
        """Raise `ValueError` for values out of range. Also run when a model is built: `from_pretrained` applies
        keyword overrides after `__post_init__`."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        side = math.isqrt(self.num_pooled_tokens)
        grid = self.vision_config.image_size // self.vision_config.patch_size
        need(
            side * side == self.num_pooled_tokens and side >= 1 and grid % side == 0,
            f"`num_pooled_tokens` must be a square s*s whose side divides the patch grid ({grid}), got "
            f"{self.num_pooled_tokens}; e.g. 16 for a 16 x 16 grid.",
        )
        need(self.num_events >= 1, f"`num_events` (L) must be >= 1, got {self.num_events}.")
        need(
            0 < self.event_keep_ratio <= 1, f"`event_keep_ratio` (K/L) must be in (0, 1], got {self.event_keep_ratio}."
        )
        need(self.event_knn >= 1, f"`event_knn` must be >= 1, got {self.event_knn}.")
        levels, knn = list(self.spatial_clusters), list(self.spatial_knn)
        need(
            len(levels) == len(knn) >= 1 and all(isinstance(v, int) and v >= 1 for v in levels + knn),
            f"`spatial_clusters` and `spatial_knn` must be equally long lists of ints >= 1, got {levels} and {knn}.",
        )
        need(
            all(a > b for a, b in zip(levels, levels[1:])) and levels[0] <= grid * grid,
            f"`spatial_clusters` must decrease and start at most at the {grid * grid} patches, got {levels}.",
        )
        need(self.topk_num_samples >= 1, f"`topk_num_samples` must be >= 1, got {self.topk_num_samples}.")
        need(
            self.topk_sigma > 0, f"`topk_sigma` must be > 0, got {self.topk_sigma}; use `model.eval()` for hard top-K."
        )
        need(self.max_frames >= 1, f"`max_frames` must be >= 1, got {self.max_frames}.")
