"""Factorised (2D spatial + 1D temporal) convolutions and the residual blocks of Compact's video compressor (SVC).

A conv block (Compact supplement, section 1.3) is a 2D spatial convolution from D to D / r channels (the bottleneck,
r = `bottleneck_ratio`, 4 in the paper), then a 1D temporal convolution from D / r back to D, then SiLU. A residual
block is two conv blocks plus a shortcut. A downsampling block strides the first conv block by 2 in T, H and W (the
2D conv strides H and W, the 1D conv strides T); an upsampling block (the decoder's mirror) first repeats every
position 2 x 2 x 2 times (nearest neighbour, as VQGAN's upsampling), then runs its first conv block.

Both convolutions are `nn.Conv3d`s with a (1, k, k) and a (k_t, 1, 1) kernel: the same arithmetic as a 2D conv on
every frame and a 1D conv at every spatial position, in a single kernel launch each.

Shape legend (channels-first inside this file, as torch convolutions):
    B    batch
    D    channels (the vision features' hidden size)
    D/r  bottleneck channels
    T    frames
    H, W token grid of a frame
"""

from typing import Literal

import torch
from torch import nn


__all__ = ["ConvBlock", "FactorizedConv3d", "ResidualBlock", "check_kernel", "conv_block_num_parameters"]

Resample = Literal["none", "down", "up"]
Shortcut = Literal["pool", "conv"]
RESAMPLES = ("none", "down", "up")
SHORTCUTS = ("pool", "conv")


def check_kernel(value: int, name: str) -> None:
    """Raise ValueError unless `value` is an odd int >= 1 (odd kernels keep "same" padding symmetric)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value % 2 == 0:
        raise ValueError(
            f"`{name}` must be an odd integer >= 1 (so that 'same' padding is symmetric), got {value!r}; "
            "use 1, 3, 5, ..."
        )


def conv_block_num_parameters(dim: int, bottleneck_ratio: int, spatial_kernel: int, temporal_kernel: int) -> int:
    """Weights and biases of one `ConvBlock` without normalisation: D^2 (k^2 + k_t) / r + D / r + D."""
    hidden = dim // bottleneck_ratio
    return dim * hidden * spatial_kernel**2 + hidden + hidden * dim * temporal_kernel + dim


class FactorizedConv3d(nn.Module):
    """2D spatial conv (in_dim -> hidden, k x k) then 1D temporal conv (hidden -> out_dim, k_t), "same" padding.

    Args:
        in_dim: input channels.
        hidden_dim: channels between the two convolutions (the bottleneck).
        out_dim: output channels.
        spatial_kernel: k, odd.
        temporal_kernel: k_t, odd.
        stride: 1, or 2 to halve T (in the temporal conv) and H, W (in the spatial conv); even sizes come out exactly
            halved.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        spatial_kernel: int = 3,
        temporal_kernel: int = 3,
        stride: int = 1,
    ) -> None:
        super().__init__()
        check_kernel(spatial_kernel, "spatial_kernel")
        check_kernel(temporal_kernel, "temporal_kernel")
        if stride not in (1, 2):
            raise ValueError(f"`stride` must be 1 or 2, got {stride!r}.")
        k, kt = spatial_kernel, temporal_kernel
        self.spatial = nn.Conv3d(
            in_dim, hidden_dim, (1, k, k), stride=(1, stride, stride), padding=(0, k // 2, k // 2)
        )
        self.temporal = nn.Conv3d(hidden_dim, out_dim, (kt, 1, 1), stride=(stride, 1, 1), padding=(kt // 2, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D_in, T, H, W] -> [B, D_out, T/s, H/s, W/s]."""
        return self.temporal(self.spatial(x))


class ConvBlock(nn.Module):
    """[nearest x2 upsample] -> factorised conv (D -> D/r -> D) -> [GroupNorm] -> SiLU.

    Args:
        dim: D, channels in and out.
        bottleneck_ratio: r; the spatial conv outputs D / r channels.
        spatial_kernel: k of the 2D conv (odd).
        temporal_kernel: k_t of the 1D conv (odd).
        stride: 2 to downsample T, H and W by 2 (the first block of a downsampling residual block).
        upsample: repeat every position 2 x 2 x 2 times before the convolution (the first block of an upsampling
            residual block).
        norm_groups: 0 for no normalisation (the supplement's conv + SiLU), else GroupNorm with that many groups
            before the SiLU (VQGAN-style).
    """

    def __init__(
        self,
        dim: int,
        bottleneck_ratio: int = 4,
        spatial_kernel: int = 3,
        temporal_kernel: int = 3,
        stride: int = 1,
        upsample: bool = False,
        norm_groups: int = 0,
    ) -> None:
        super().__init__()
        if stride != 1 and upsample:
            raise ValueError(f"a conv block either downsamples (`stride` 2) or upsamples, got stride {stride} too.")
        self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest") if upsample else nn.Identity()
        self.conv = FactorizedConv3d(dim, dim // bottleneck_ratio, dim, spatial_kernel, temporal_kernel, stride)
        self.norm = nn.GroupNorm(norm_groups, dim) if norm_groups else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, T, H, W] -> [B, D, T', H', W'] (halved for stride 2, doubled with upsample)."""
        return self.act(self.norm(self.conv(self.upsample(x))))


def _shortcut(dim: int, resample: Resample, shortcut: Shortcut) -> nn.Module:
    """Identity, or the parameter-free (pool) / projected (conv) path that resamples like the residual branch."""
    if resample == "none":
        return nn.Identity()
    if shortcut == "pool":
        return nn.AvgPool3d(2) if resample == "down" else nn.Upsample(scale_factor=2.0, mode="nearest")
    if resample == "down":
        return nn.Conv3d(dim, dim, 1, stride=2)  # ResNet's strided 1x1x1 projection
    return nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv3d(dim, dim, 1))


class ResidualBlock(nn.Module):
    """x -> shortcut(x) + ConvBlock_2(ConvBlock_1(x)); the first conv block resamples.

    Args:
        dim: D, channels in and out.
        resample: "none", "down" (first conv block strides 2 in T, H, W) or "up" (first conv block starts with a
            nearest-neighbour x2 upsample in T, H, W).
        bottleneck_ratio: r of both conv blocks.
        spatial_kernel: k of the 2D convs (odd).
        temporal_kernel: k_t of the 1D convs (odd).
        shortcut: how a resampling block's shortcut changes the size: "pool" = 2 x 2 x 2 average pooling / nearest
            upsampling (no parameters), "conv" = strided 1x1x1 conv / nearest upsampling + 1x1x1 conv.
        norm_groups: GroupNorm groups in each conv block (0 = none).
        zero_init: start the second conv block's temporal conv at zero, so the block starts as its shortcut.
    """

    def __init__(
        self,
        dim: int,
        resample: Resample = "none",
        bottleneck_ratio: int = 4,
        spatial_kernel: int = 3,
        temporal_kernel: int = 3,
        shortcut: Shortcut = "pool",
        norm_groups: int = 0,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        if resample not in RESAMPLES:
            raise ValueError(f"`resample` must be one of {list(RESAMPLES)}, got {resample!r}.")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"`shortcut` must be one of {list(SHORTCUTS)}, got {shortcut!r}.")
        conv = dict(
            bottleneck_ratio=bottleneck_ratio,
            spatial_kernel=spatial_kernel,
            temporal_kernel=temporal_kernel,
            norm_groups=norm_groups,
        )
        self.resample, self.zero_init = resample, zero_init
        self.block1 = ConvBlock(dim, stride=2 if resample == "down" else 1, upsample=resample == "up", **conv)
        self.block2 = ConvBlock(dim, **conv)
        self.shortcut = _shortcut(dim, resample, shortcut)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default conv init everywhere; the second temporal conv at zero when `zero_init`."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.GroupNorm)):
                module.reset_parameters()
        if self.zero_init:
            nn.init.zeros_(self.block2.conv.temporal.weight)
            nn.init.zeros_(self.block2.conv.temporal.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, T, H, W] -> [B, D, T', H', W'] (halved for "down", doubled for "up")."""
        return self.shortcut(x) + self.block2(self.block1(x))

    def extra_repr(self) -> str:
        return f"resample={self.resample!r}, zero_init={self.zero_init}"
