"""Compact's spatiotemporal video compressor (SVC): a factorised-conv autoencoder over vision-token grids.

The encoder is `num_blocks` residual blocks (`layers.factorized_conv.ResidualBlock`); the first `num_downsample`
halve T, H and W, so the grid shrinks by f = 2 ** num_downsample along each axis (4 x 4 x 4 = 64x fewer tokens by
default: 32 x 16 x 16 -> 8 x 4 x 4). The decoder mirrors it: the same blocks in reverse order, upsampling blocks
(nearest x2 then conv, VQGAN-style) where the encoder downsampled. The latent keeps the feature width D. The
supplement says nothing of input/output projections or normalisation; neither is used by default.

Features are channels-last in and out (the token layout of a vision tower); the blocks run channels-first.

Shape legend:
    B        batch (videos)
    T        frames
    H, W     token grid of a frame
    D        channels (vision hidden size, 1408 for EVA ViT-g/14)
    f        factor = 2 ** num_downsample, the same for T, H and W
    t, h, w  latent grid = T / f, H / f, W / f
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from videoadapt.layers.factorized_conv import SHORTCUTS, ResidualBlock, Shortcut, check_kernel


__all__ = [
    "SpatioTemporalAutoencoder",
    "SpatioTemporalCompressor",
    "SpatioTemporalDecoder",
    "reconstruction_loss",
    "token_cosine",
]


def _check_int(value: Any, name: str, low: int, meaning: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low} ({meaning}), got {value!r}.")


def _check_arguments(
    dim: int,
    num_blocks: int,
    num_downsample: int,
    bottleneck_ratio: int,
    spatial_kernel: int,
    temporal_kernel: int,
    shortcut: str,
    norm_groups: int,
) -> None:
    _check_int(dim, "dim", 1, "the feature channels D")
    _check_int(num_blocks, "num_blocks", 1, "residual blocks")
    _check_int(bottleneck_ratio, "bottleneck_ratio", 1, "the spatial conv outputs dim / bottleneck_ratio channels")
    _check_int(norm_groups, "norm_groups", 0, "GroupNorm groups, 0 = no normalisation")
    if (
        not isinstance(num_downsample, int)
        or isinstance(num_downsample, bool)
        or not 0 <= num_downsample <= num_blocks
    ):
        raise ValueError(
            f"`num_downsample` must be in [0, num_blocks] = [0, {num_blocks}] (the first blocks downsample), "
            f"got {num_downsample!r}; lower it or add blocks."
        )
    if dim % bottleneck_ratio:
        raise ValueError(
            f"`dim` ({dim}) must be divisible by `bottleneck_ratio` ({bottleneck_ratio}): the 2D conv outputs "
            f"dim / bottleneck_ratio channels; pick a ratio that divides {dim}."
        )
    check_kernel(spatial_kernel, "spatial_kernel")
    check_kernel(temporal_kernel, "temporal_kernel")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"`shortcut` must be one of {list(SHORTCUTS)}, got {shortcut!r}.")
    if norm_groups and dim % norm_groups:
        raise ValueError(
            f"`norm_groups` ({norm_groups}) must divide `dim` ({dim}) for GroupNorm; use a divisor of {dim} or 0."
        )


def _check_features(x: torch.Tensor, dim: int, name: str) -> None:
    if x.dim() != 5 or x.shape[-1] != dim:
        raise ValueError(f"`{name}` must be [B, T, H, W, D] with D = {dim} (the `dim`), got shape {list(x.shape)}.")


class _Stack(nn.Module):
    """Shared constructor, argument record and channels-last wrapper of the encoder and the decoder."""

    upsampling = False

    def __init__(
        self,
        dim: int,
        num_blocks: int = 3,
        num_downsample: int = 2,
        bottleneck_ratio: int = 4,
        spatial_kernel: int = 3,
        temporal_kernel: int = 3,
        shortcut: Shortcut = "pool",
        norm_groups: int = 0,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        _check_arguments(
            dim, num_blocks, num_downsample, bottleneck_ratio, spatial_kernel, temporal_kernel, shortcut, norm_groups
        )
        self.init_kwargs = dict(
            dim=dim, num_blocks=num_blocks, num_downsample=num_downsample, bottleneck_ratio=bottleneck_ratio,
            spatial_kernel=spatial_kernel, temporal_kernel=temporal_kernel, shortcut=shortcut,
            norm_groups=norm_groups, zero_init_residual=bool(zero_init_residual),
        )  # fmt: skip
        self.dim, self.factor = dim, 2**num_downsample
        resample = ["down" if i < num_downsample else "none" for i in range(num_blocks)]
        if self.upsampling:  # mirror: reversed order, upsampling where the encoder downsampled
            resample = ["up" if r == "down" else r for r in reversed(resample)]
        block = dict(
            bottleneck_ratio=bottleneck_ratio, spatial_kernel=spatial_kernel, temporal_kernel=temporal_kernel,
            shortcut=shortcut, norm_groups=norm_groups, zero_init=zero_init_residual,
        )  # fmt: skip
        self.blocks = nn.Sequential(*(ResidualBlock(dim, r, **block) for r in resample))

    def reset_parameters(self) -> None:
        """Re-run the initialisation (zero residual branches when `zero_init_residual`)."""
        for block in self.blocks:
            block.reset_parameters()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last [B, T, H, W, D] through the blocks, channels-last out."""
        return self.blocks(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, factor={self.factor}"


class SpatioTemporalCompressor(_Stack):
    """SVC encoder: [B, T, H, W, D] -> [B, T/f, H/f, W/f, D], f = 2 ** num_downsample (4: 64x fewer tokens).

    Args:
        dim: D, the feature channels (kept in the latent).
        num_blocks: residual blocks (3 in the paper).
        num_downsample: how many of the first blocks halve T, H and W (2 in the paper).
        bottleneck_ratio: r; each 2D conv outputs D / r channels (4 in the paper).
        spatial_kernel: k x k of the 2D convs (odd; 3, ours).
        temporal_kernel: k_t of the 1D convs (odd; 3, ours).
        shortcut: downsampling shortcut: "pool" (2 x 2 x 2 average pooling, no parameters; ours) or "conv" (strided
            1x1x1 conv).
        norm_groups: GroupNorm groups before each SiLU; 0 = none (the supplement's conv + SiLU).
        zero_init_residual: start every block's last temporal conv at zero, so that at initialisation the
            compressor is 2 x 2 x 2 average pooling repeated (with "pool" shortcuts).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compress features [B, T, H, W, D] -> [B, T/f, H/f, W/f, D]; T, H and W must be multiples of f."""
        _check_features(x, self.dim, "x")
        f = self.factor
        for axis, size in zip("THW", x.shape[1:4]):
            if size % f:
                raise ValueError(
                    f"`x` has {axis} = {size}, which is not divisible by the compressor's factor {f} "
                    f"(2 ** num_downsample); resize or pad {axis} to a multiple of {f} (e.g. {-(-size // f) * f})."
                )
        return self._run(x)


class SpatioTemporalDecoder(_Stack):
    """SVC decoder, the encoder's mirror: [B, t, h, w, D] -> [B, t*f, h*f, w*f, D].

    Same arguments as `SpatioTemporalCompressor`; upsampling blocks repeat every position 2 x 2 x 2 times (nearest
    neighbour) before their first conv block, and their "pool" shortcut is that same repetition.
    """

    upsampling = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents [B, t, h, w, D] -> [B, t*f, h*f, w*f, D]."""
        _check_features(z, self.dim, "z")
        return self._run(z)


class SpatioTemporalAutoencoder(nn.Module):
    """Encoder + mirrored decoder for reconstruction pre-training; same arguments as `SpatioTemporalCompressor`."""

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__()
        self.encoder = SpatioTemporalCompressor(dim, **kwargs)
        self.decoder = SpatioTemporalDecoder(dim, **kwargs)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """The constructor arguments (all of them, defaults included)."""
        return dict(self.encoder.init_kwargs)

    @property
    def factor(self) -> int:
        return self.encoder.factor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, H, W, D] -> (reconstruction [B, T, H, W, D], latent [B, T/f, H/f, W/f, D])."""
        latent = self.encoder(x)
        return self.decoder(latent), latent


def token_cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every token pair over the last axis: [..., D], [..., D] -> [...]."""
    return F.cosine_similarity(a, b, dim=-1, eps=eps)


def reconstruction_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, mse_weight: float = 1.0, cosine_weight: float = 1.0
) -> torch.Tensor:
    """mse_weight * mean((x_hat - x)^2) + cosine_weight * mean over tokens of (1 - cos(x_hat, x)) (ours).

    The MSE keeps the feature scale, the cosine term the direction that the LLM projector and the cosine metric
    see. Both are means (over elements and over tokens), so the value does not depend on the grid size.

    Args:
        reconstruction: [..., D].
        target: [..., D], same shape.
        mse_weight: weight of the element-wise MSE (>= 0).
        cosine_weight: weight of the mean (1 - cosine) per token (>= 0).

    Returns:
        the scalar loss.
    """
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"`reconstruction` and `target` must have the same shape, got {list(reconstruction.shape)} and "
            f"{list(target.shape)}."
        )
    if mse_weight < 0 or cosine_weight < 0:
        raise ValueError(
            f"loss weights must be >= 0, got `mse_weight` {mse_weight} and `cosine_weight` {cosine_weight}."
        )
    mse = F.mse_loss(reconstruction, target)
    return mse_weight * mse + cosine_weight * (1.0 - token_cosine(reconstruction, target)).mean()
