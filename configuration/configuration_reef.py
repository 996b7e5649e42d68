"""REEF configuration: InstructBLIP-Video's fields plus the online adapter's (memory banks, relevance, top-K).

Defaults follow the REEF supplement's QA setting (Table 2, MSVD): 20 frames, memory bank length 10, score balance
weight alpha 0.7, 100 of 256 spatial tokens kept, perturbed top-K with n = 500 samples and sigma 0.05 (annealed to 0
by `SigmaAnnealingCallback`, as the reference code does). See docs/fidelity.md for the choices the sources leave open.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import InstructBlipVideoConfig, PreTrainedConfig

from videoadapt.configuration.base_checkpoint import FromBaseCheckpointMixin


__all__ = ["ReefConfig"]


def _width(config: dict | PreTrainedConfig | None, key: str, default: int | None) -> int | None:
    """`key` of a sub-config given as a dict, a config object, or None (the class default)."""
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


@strict
class ReefConfig(FromBaseCheckpointMixin, InstructBlipVideoConfig):
    """InstructBLIP-Video with REEF's online adapter (`model_type="videoadapt_reef"`).

    Args (beyond `InstructBlipVideoConfig`'s):
        num_frames: frames sampled per video (the tables' "frame length").
        max_num_frames: size of the learned temporal position embedding (MA-LMM's `image_pe`, 120 there); a video
            may not have more frames than this.
        memory_bank_length: slots of the visual and query memory banks; one merge per step keeps them bounded.
        alpha: score balance weight in s_t = alpha * cos(p_t, p_t+1) + (1 - alpha) * mean irrelevance; 1 gives
            MA-LMM's similarity-only rule.
        num_selected_tokens: spatial tokens kept per frame by Spatial Token Filtering (100/121/144 of 256 in the
            tables); `None` keeps all (no filtering, MA-LMM).
        keep_cls_token: the vision CLS token bypasses the filter and is always kept (MA-LMM feeds all 257 tokens).
        topk_num_samples: noisy samples n of the perturbed top-K (training only).
        topk_sigma: initial noise scale sigma of the perturbed top-K.
        relevance_hidden_size: width of the relevance scorers' local representation (default: vision width / 2).
        merge_granularity: "position" merges each token position on its own (MA-LMM), "frame" merges one pair of
            whole slots per step, "auto" = "position" without filtering and "frame" with it (filtered tokens at the
            same index of two frames are different image locations).
        query_memory_bank: keep past Q-Former states as extra keys/values in every self-attention layer.
        detach_memory: store banks without autograd history (MA-LMM). False (default) lets the relevance scorers
            learn from every frame, through the soft top-K and the soft merges, in training.
    """

    model_type = "videoadapt_reef"

    num_frames: int = 20
    max_num_frames: int = 120
    memory_bank_length: int = 10
    alpha: int | float = 0.7
    num_selected_tokens: int | None = 100
    keep_cls_token: bool = True
    topk_num_samples: int = 500
    topk_sigma: int | float = 0.05
    relevance_hidden_size: int | None = None
    merge_granularity: Literal["auto", "position", "frame"] = "auto"
    query_memory_bank: bool = True
    detach_memory: bool = False

    def __post_init__(self, **kwargs):
        vision_width = _width(self.vision_config, "hidden_size", 1408)
        qformer_width = _width(self.qformer_config, "encoder_hidden_size", None)
        if qformer_width is not None and qformer_width != vision_width:
            raise ValueError(
                f"`qformer_config.encoder_hidden_size` ({qformer_width}) must equal `vision_config.hidden_size` "
                f"({vision_width}): the Q-Former cross-attends to the vision features. Set both to the same width."
            )
        super().__post_init__(**kwargs)
        self.check_ranges()

    @property
    def num_patches(self) -> int:
        """Spatial tokens per frame (without CLS): (image_size / patch_size)^2."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @property
    def resolved_merge_granularity(self) -> str:
        if self.merge_granularity != "auto":
            return self.merge_granularity
        return "position" if self.num_selected_tokens is None else "frame"

    def check_token_budget(self) -> None:
        """`num_selected_tokens` must not exceed the spatial tokens per frame (checked when a model is built, since
        `from_pretrained` applies keyword overrides only after building the config from the checkpoint's values)."""
        k = self.num_selected_tokens
        if k is not None and not 1 <= k <= self.num_patches:
            raise ValueError(
                f"`num_selected_tokens` must be in [1, {self.num_patches}] (the spatial tokens per frame, "
                f"(image_size / patch_size)^2), got {k}; lower it or pass None to keep all tokens."
            )

    def check_ranges(self) -> None:
        """Raise `ValueError` for values out of range. Also run when a model is built: `from_pretrained` applies
        keyword overrides after `__post_init__`."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.num_frames >= 1, f"`num_frames` must be >= 1, got {self.num_frames}.")
        need(
            self.max_num_frames >= self.num_frames,
            f"`max_num_frames` ({self.max_num_frames}) must be >= `num_frames` ({self.num_frames}); raise it.",
        )
        need(self.memory_bank_length >= 1, f"`memory_bank_length` must be >= 1, got {self.memory_bank_length}.")
        need(0.0 <= self.alpha <= 1.0, f"`alpha` must be in [0, 1], got {self.alpha}.")
        if self.num_selected_tokens is not None:  # the upper bound (the token count): `check_token_budget`
            need(
                self.num_selected_tokens >= 1,
                f"`num_selected_tokens` must be >= 1 or None, got {self.num_selected_tokens}.",
            )
        need(self.topk_num_samples >= 1, f"`topk_num_samples` must be >= 1, got {self.topk_num_samples}.")
        need(
            self.topk_sigma > 0,
            f"`topk_sigma` must be > 0 (the perturbation scale), got {self.topk_sigma}; "
            "to turn the noise off at inference use `model.eval()`, which switches to hard top-K.",
        )
        if self.relevance_hidden_size is not None:
            need(
                self.relevance_hidden_size >= 1,
                f"`relevance_hidden_size` must be >= 1, got {self.relevance_hidden_size}.",
            )
