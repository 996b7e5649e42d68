"""Compact configuration: LLaVA-OneVision's fields plus the spatiotemporal video compressor's (SVC).

The Compact model ("Learning Compact Video Representations...", Amazon AGI) runs the vision tower on every frame,
resizes each frame's patch grid to `compressor_grid` x `compressor_grid` (16 x 16 = ViT-G/14 at 224 px in the paper),
compresses the video by `2 ** compressor_num_downsample` (4) along time, height and width, and projects the result
with OneVision's 2-layer MLP into the LLM. A video of T frames becomes (T/f) * (g/f)^2 tokens (`compact_video_tokens`;
8 * 4 * 4 = 128 for 32 frames at g = 16). Defaults follow the supplement: 3 residual blocks of which the first 2
downsample, bottleneck ratio 4 (the 2D convolution outputs d/4 channels), 32 frames. See docs/fidelity.md.

Shape legend: T frames, g feature grid side (after resizing), f compression factor.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig

from videoadapt.configuration.base_checkpoint import FromBaseCheckpointMixin


__all__ = ["CompactConfig", "compact_video_tokens", "multiples_near"]


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")


def multiples_near(value: int, factor: int) -> str:
    """The multiples of `factor` around `value`, for error messages: "28 or 32", or "4" below the first one."""
    lower, upper = value // factor * factor, (value // factor + 1) * factor
    return f"{lower} or {upper}" if lower >= factor else f"{upper}"


def compact_video_tokens(num_frames: int, grid: int, factor: int) -> int:
    """Video tokens the LLM receives for `num_frames` frames of a `grid` x `grid` feature map: (T/f) * (g/f)^2.

    Raises:
        ValueError: an argument is not a positive int, or `num_frames` / `grid` is not a multiple of `factor` (the
            compressor downsamples T, H and W by `factor` with stride-2 convolutions and takes no remainder).
    """
    for name, value in (("num_frames", num_frames), ("grid", grid), ("factor", factor)):
        _check_positive_int(name, value)
    if num_frames % factor:
        raise ValueError(
            f"`num_frames` must be a multiple of the compression factor {factor} (allowed: {factor}, {2 * factor}, "
            f"...), got {num_frames}; sample {multiples_near(num_frames, factor)} frames instead."
        )
    if grid % factor:
        raise ValueError(
            f"the feature grid (`compressor_grid`) must be a multiple of the compression factor {factor}, got "
            f"{grid}; set `compressor_grid` to a multiple of {factor} (16 in the paper)."
        )
    return (num_frames // factor) * (grid // factor) ** 2


@strict
class CompactConfig(FromBaseCheckpointMixin, LlavaOnevisionConfig):
    """LLaVA-OneVision parts with Compact's spatiotemporal video compressor (`model_type="videoadapt_compact"`).

    Args (beyond `LlavaOnevisionConfig`'s):
        num_frames: frames the processor samples per video (32 in the paper, for training and inference). The model
            accepts any multiple of the compression factor.
        compressor_grid: side g of the square grid each frame's vision features are resized to before compression
            (16 = ViT-G/14 at 224 px, the paper's); None keeps the vision tower's own grid (image_size // patch_size).
        compressor_resize_mode: how the grid is resized: "bilinear" (`F.interpolate`, as OneVision pools its video
            features) or "area" (adaptive average pooling).
        compressor_num_blocks: residual blocks of the compressor (3).
        compressor_num_downsample: how many of the first blocks downsample T, H and W by 2 (2: a 4 x 4 x 4 compressor).
        compressor_bottleneck_ratio: the spatial 2D convolution outputs d / ratio channels (4), the temporal 1D
            convolution maps them back to d.
        compressor_spatial_kernel / compressor_temporal_kernel: kernel sizes of the 2D and 1D convolutions (3).
    """

    model_type = "videoadapt_compact"

    num_frames: int = 32
    compressor_grid: int | None = 16
    compressor_resize_mode: Literal["bilinear", "area"] = "bilinear"
    compressor_num_blocks: int = 3
    compressor_num_downsample: int = 2
    compressor_bottleneck_ratio: int = 4
    compressor_spatial_kernel: int = 3
    compressor_temporal_kernel: int = 3

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_compact()

    # ------------------------------------------------------------------------------------------ derived sizes

    @property
    def compression_factor(self) -> int:
        """f = 2 ** compressor_num_downsample, the same along T, H and W."""
        return 2**self.compressor_num_downsample

    @property
    def vision_grid(self) -> int:
        """Side of the vision tower's patch grid: image_size // patch_size (27 for SigLIP at 384 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def feature_grid(self) -> int:
        """Side g of the grid the compressor reads: `compressor_grid`, or the vision grid when that is None."""
        return self.vision_grid if self.compressor_grid is None else self.compressor_grid

    @property
    def compressor_dim(self) -> int:
        """Channels d the compressor reads and writes: the vision width times the number of selected layers."""
        layers = 1 if isinstance(self.vision_feature_layer, int) else len(self.vision_feature_layer)
        return self.vision_config.hidden_size * layers

    def compressor_kwargs(self) -> dict[str, int]:
        """Keyword arguments of `SpatioTemporalCompressor` (also of the decoder / autoencoder of pre-training)."""
        return {
            "dim": self.compressor_dim,
            "num_blocks": self.compressor_num_blocks,
            "num_downsample": self.compressor_num_downsample,
            "bottleneck_ratio": self.compressor_bottleneck_ratio,
            "spatial_kernel": self.compressor_spatial_kernel,
            "temporal_kernel": self.compressor_temporal_kernel,
        }

    def num_video_tokens(self, num_frames: int | None = None) -> int:
        """Tokens the LLM receives for a video of `num_frames` (default `self.num_frames`) frames."""
        frames = self.num_frames if num_frames is None else num_frames
        return compact_video_tokens(frames, self.feature_grid, self.compression_factor)

    # ------------------------------------------------------------------------------------------ checks

    def check_compact(self) -> None:
        """Range checks of the compressor fields against each other and the vision tower.

        Run when the config is built and again when a model is built, since `from_pretrained(ckpt, **overrides)`
        applies keyword overrides only after building the config from the checkpoint's values.
        """

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        for name in ("compressor_num_blocks", "compressor_bottleneck_ratio", "num_frames"):
            need(getattr(self, name) >= 1, f"`{name}` must be >= 1, got {getattr(self, name)}.")
        blocks, down = self.compressor_num_blocks, self.compressor_num_downsample
        need(
            0 <= down <= blocks,
            f"`compressor_num_downsample` must be in [0, compressor_num_blocks] = [0, {blocks}] (the first blocks "
            f"downsample), got {down}; lower it or add blocks.",
        )
        for name in ("compressor_spatial_kernel", "compressor_temporal_kernel"):
            kernel = getattr(self, name)
            need(
                kernel >= 1 and kernel % 2 == 1,
                f"`{name}` must be an odd int >= 1 (same padding), got {kernel}; use 3 as in the paper.",
            )
        need(
            self.compressor_grid is None or self.compressor_grid >= 1,
            f"`compressor_grid` must be an int >= 1 or None (the vision tower's grid), got {self.compressor_grid}.",
        )
        factor, dim, ratio = self.compression_factor, self.compressor_dim, self.compressor_bottleneck_ratio
        need(
            dim % ratio == 0,
            f"`compressor_bottleneck_ratio` must divide the compressor width {dim} (vision hidden size x selected "
            f"layers), got {ratio}; use a divisor such as 4.",
        )
        if self.feature_grid % factor:
            source = (
                "`compressor_grid`" if self.compressor_grid is not None else "the vision grid (compressor_grid=None)"
            )
            raise ValueError(
                f"{source} = {self.feature_grid} must be a multiple of the compression factor "
                f"2 ** compressor_num_downsample = {factor}; set `compressor_grid` to a multiple of {factor} "
                "(16 in the paper) or lower `compressor_num_downsample`."
            )
        if self.num_frames % factor:
            raise ValueError(
                f"`num_frames` must be a multiple of the compression factor {factor}, got {self.num_frames}; use "
                f"{multiples_near(self.num_frames, factor)} (32 in the paper)."
            )
