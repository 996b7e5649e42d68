"""Factorised 2D + 1D conv blocks: literal shift-and-sum references, strides, shortcuts, init, parameters, errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from videoadapt.layers.factorized_conv import ConvBlock, FactorizedConv3d, ResidualBlock, conv_block_num_parameters


def literal_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: tuple[int, int, int]
) -> torch.Tensor:
    """Zero-padded 'same' cross-correlation [B, C, T, H, W] with weight [O, C, kt, kh, kw], as a sum of shifted
    copies: out[b, o, p] = bias[o] + sum over offsets u and channels c of W[o, c, u] * x_pad[b, c, p * s + u]."""
    kt, kh, kw = weight.shape[2:]
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, kt // 2, kt // 2))
    size = [(n - 1) // s + 1 for n, s in zip(x.shape[2:], stride)]  # (n + 2 (k // 2) - k) // s + 1 for odd k
    out = bias[None, :, None, None, None].expand(x.shape[0], -1, *size).clone()
    for a in range(kt):
        for b in range(kh):
            for c in range(kw):
                window = xp[:, :, a :: stride[0], b :: stride[1], c :: stride[2]][
                    :, :, : size[0], : size[1], : size[2]
                ]
                out += torch.einsum("oi,bithw->bothw", weight[:, :, a, b, c], window)
    return out


def literal_factorized(conv: FactorizedConv3d, x: torch.Tensor, stride: int) -> torch.Tensor:
    """2D conv on every frame (strided in H, W), then 1D conv at every position (strided in T)."""
    spatial = literal_conv(x, conv.spatial.weight, conv.spatial.bias, (1, stride, stride))
    return literal_conv(spatial, conv.temporal.weight, conv.temporal.bias, (stride, 1, 1))


def literal_block(block: ConvBlock, x: torch.Tensor, stride: int, upsample: bool) -> torch.Tensor:
    if upsample:
        x = x.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    y = literal_factorized(block.conv, x, stride)
    if isinstance(block.norm, nn.GroupNorm):
        g = block.norm.num_groups
        grouped = y.reshape(y.shape[0], g, -1)
        mean, var = grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)
        y = ((grouped - mean) / torch.sqrt(var + block.norm.eps)).reshape(y.shape)
        y = y * block.norm.weight[:, None, None, None] + block.norm.bias[:, None, None, None]
    return y * torch.sigmoid(y)


def literal_shortcut(block: ResidualBlock, x: torch.Tensor, kind: str) -> torch.Tensor:
    B, C, T, H, W = x.shape
    if block.resample == "none":
        return x
    if block.resample == "down" and kind == "pool":
        return x.reshape(B, C, T // 2, 2, H // 2, 2, W // 2, 2).mean((3, 5, 7))
    if block.resample == "down":  # strided 1x1x1 conv: every other position, then a per-position linear map
        conv = block.shortcut
        return (
            torch.einsum("oi,bithw->bothw", conv.weight[:, :, 0, 0, 0], x[:, :, ::2, ::2, ::2])
            + conv.bias[None, :, None, None, None]
        )
    up = x.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    if kind == "pool":
        return up
    conv = block.shortcut[1]
    return torch.einsum("oi,bithw->bothw", conv.weight[:, :, 0, 0, 0], up) + conv.bias[None, :, None, None, None]


def literal_residual(block: ResidualBlock, x: torch.Tensor, kind: str) -> torch.Tensor:
    stride = 2 if block.resample == "down" else 1
    h = literal_block(block.block1, x, stride, block.resample == "up")
    return literal_shortcut(block, x, kind) + literal_block(block.block2, h, 1, False)


def randomize(module: nn.Module) -> nn.Module:
    """Non-trivial values everywhere (biases and norm affines included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    return module


@pytest.mark.parametrize(
    "stride, kernels, size",
    [
        (1, (3, 3), (5, 6, 7)),
        (2, (3, 3), (6, 8, 4)),
        (2, (5, 1), (8, 4, 6)),
        (1, (1, 5), (7, 3, 5)),
        (2, (3, 3), (5, 7, 3)),
    ],
)
def test_factorized_conv_matches_literal_reference(stride, kernels, size):
    torch.manual_seed(0)
    conv = randomize(FactorizedConv3d(6, 3, 5, spatial_kernel=kernels[0], temporal_kernel=kernels[1], stride=stride))
    x = torch.randn(2, 6, *size)
    with torch.no_grad():
        got, ref = conv(x), literal_factorized(conv, x, stride)
    assert got.shape == (2, 5, *[(n - 1) // stride + 1 for n in size])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_factorized_conv_is_2d_per_frame_then_1d_per_position():
    """Independent reference with torch's own 2D and 1D convolutions, one frame / one position at a time."""
    torch.manual_seed(1)
    conv = randomize(FactorizedConv3d(4, 2, 4, stride=2))
    x = torch.randn(1, 4, 6, 6, 4)
    sw, sb = conv.spatial.weight[:, :, 0], conv.spatial.bias  # [2, 4, 3, 3]
    tw, tb = conv.temporal.weight[..., 0, 0], conv.temporal.bias  # [4, 2, 3]
    frames = torch.stack([F.conv2d(x[:, :, t], sw, sb, stride=2, padding=1) for t in range(6)], 2)  # [1, 2, 6, 3, 2]
    out = torch.empty(1, 4, 3, 3, 2)
    for i in range(3):
        for j in range(2):
            out[:, :, :, i, j] = F.conv1d(frames[:, :, :, i, j], tw, tb, stride=2, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), out, atol=1e-5, rtol=1e-5)


def test_strides_are_split_between_space_and_time():
    conv = FactorizedConv3d(8, 2, 8, stride=2)
    assert conv.spatial.stride == (1, 2, 2) and conv.spatial.kernel_size == (1, 3, 3)
    assert conv.spatial.padding == (0, 1, 1)
    assert conv.temporal.stride == (2, 1, 1) and conv.temporal.kernel_size == (3, 1, 1)
    assert conv.temporal.padding == (1, 0, 0)
    seen = {}
    conv.spatial.register_forward_hook(lambda m, i, o: seen.update(spatial=tuple(o.shape)))
    out = conv(torch.randn(1, 8, 8, 8, 8))
    assert seen["spatial"] == (1, 2, 8, 4, 4)  # the 2D conv halves H and W only, to D / 4 channels
    assert out.shape == (1, 8, 4, 4, 4)  # the 1D conv halves T


@pytest.mark.parametrize("norm_groups", [0, 2])
@pytest.mark.parametrize("stride, upsample", [(1, False), (2, False), (1, True)])
def test_conv_block_matches_literal_reference(stride, upsample, norm_groups):
    torch.manual_seed(2)
    block = randomize(ConvBlock(8, bottleneck_ratio=4, stride=stride, upsample=upsample, norm_groups=norm_groups))
    x = torch.randn(2, 8, 4, 6, 2)
    with torch.no_grad():
        got, ref = block(x), literal_block(block, x, stride, upsample)
    expected = {(1, False): (4, 6, 2), (2, False): (2, 3, 1), (1, True): (8, 12, 4)}[(stride, upsample)]
    assert got.shape == (2, 8, *expected)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shortcut", ["pool", "conv"])
@pytest.mark.parametrize("resample, out_size", [("none", (4, 6, 2)), ("down", (2, 3, 1)), ("up", (8, 12, 4))])
def test_residual_block_matches_literal_reference(resample, out_size, shortcut):
    torch.manual_seed(3)
    block = randomize(ResidualBlock(8, resample, bottleneck_ratio=2, shortcut=shortcut))
    x = torch.randn(2, 8, 4, 6, 2)
    with torch.no_grad():
        got, ref = block(x), literal_residual(block, x, shortcut)
    assert got.shape == (2, 8, *out_size)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("resample", ["none", "down", "up"])
def test_zero_init_block_is_its_shortcut(resample):
    torch.manual_seed(4)
    block = ResidualBlock(8, resample, zero_init=True)
    x = torch.randn(1, 8, 4, 4, 4)
    with torch.no_grad():
        out = block(x)
        assert torch.equal(out, block.shortcut(x))
        torch.testing.assert_close(out, literal_shortcut(block, x, "pool"), atol=1e-6, rtol=0)
    assert block.block2.conv.temporal.weight.abs().sum() == 0
    assert block.block1.conv.temporal.weight.abs().sum() > 0  # only the branch's last conv starts at zero
    plain = ResidualBlock(8, resample, zero_init=False)
    assert plain.block2.conv.temporal.weight.abs().sum() > 0


@pytest.mark.parametrize("shortcut", ["pool", "conv"])
@pytest.mark.parametrize("resample", ["none", "down", "up"])
def test_gradients_reach_every_parameter(resample, shortcut):
    torch.manual_seed(5)
    block = ResidualBlock(8, resample, shortcut=shortcut, norm_groups=2)
    block(torch.randn(2, 8, 4, 4, 4)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dim, ratio, k, kt", [(16, 4, 3, 3), (12, 3, 5, 1), (1408, 4, 3, 3), (8, 1, 1, 3)])
def test_parameter_count_formula(dim, ratio, k, kt):
    hidden = dim // ratio
    expected = dim * hidden * k * k + hidden + hidden * dim * kt + dim  # 2D conv (+ bias), 1D conv (+ bias)
    with torch.device("meta"):
        block = ConvBlock(dim, ratio, k, kt)
        down_pool = ResidualBlock(dim, "down", ratio, k, kt, shortcut="pool")
        down_conv = ResidualBlock(dim, "down", ratio, k, kt, shortcut="conv")
        up_conv = ResidualBlock(dim, "up", ratio, k, kt, shortcut="conv")
    assert conv_block_num_parameters(dim, ratio, k, kt) == expected
    assert sum(p.numel() for p in block.parameters()) == expected
    assert sum(p.numel() for p in down_pool.parameters()) == 2 * expected
    assert sum(p.numel() for p in down_conv.parameters()) == 2 * expected + dim * dim + dim
    assert sum(p.numel() for p in up_conv.parameters()) == 2 * expected + dim * dim + dim
    if dim == 1408:
        assert expected == 5_949_152  # 3 d^2 + d / 4 + d


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: FactorizedConv3d(4, 2, 4, spatial_kernel=2), r"`spatial_kernel` must be an odd integer >= 1 .*got 2"),
        (
            lambda: FactorizedConv3d(4, 2, 4, temporal_kernel=0),
            r"`temporal_kernel` must be an odd integer >= 1 .*got 0",
        ),
        (lambda: FactorizedConv3d(4, 2, 4, stride=3), r"`stride` must be 1 or 2, got 3"),
        (lambda: ConvBlock(4, stride=2, upsample=True), r"either downsamples \(`stride` 2\) or upsamples"),
        (lambda: ResidualBlock(4, "sideways"), r"`resample` must be one of \['none', 'down', 'up'\], got 'sideways'"),
        (lambda: ResidualBlock(4, "down", shortcut="max"), r"`shortcut` must be one of \['pool', 'conv'\], got 'max'"),
    ],
)
def test_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()
