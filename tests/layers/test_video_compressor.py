"""SVC encoder/decoder/autoencoder: shapes, block order, literal composition, init, parameter counts, loss, errors."""

import pytest
import torch
import torch.nn.functional as F

from videoadapt.layers.video_compressor import (
    SpatioTemporalAutoencoder,
    SpatioTemporalCompressor,
    SpatioTemporalDecoder,
    reconstruction_loss,
    token_cosine,
)


def literal_conv(x, weight, bias, stride):
    """'Same' zero-padded cross-correlation [B, C, T, H, W] as a sum of shifted copies (see test_factorized_conv)."""
    kt, kh, kw = weight.shape[2:]
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, kt // 2, kt // 2))
    size = [(n - 1) // s + 1 for n, s in zip(x.shape[2:], stride)]
    out = bias[None, :, None, None, None].expand(x.shape[0], -1, *size).clone()
    for a in range(kt):
        for b in range(kh):
            for c in range(kw):
                window = xp[:, :, a :: stride[0], b :: stride[1], c :: stride[2]][
                    :, :, : size[0], : size[1], : size[2]
                ]
                out += torch.einsum("oi,bithw->bothw", weight[:, :, a, b, c], window)
    return out


def literal_conv_block(block, x, stride):
    conv = block.conv
    y = literal_conv(x, conv.spatial.weight, conv.spatial.bias, (1, stride, stride))
    y = literal_conv(y, conv.temporal.weight, conv.temporal.bias, (stride, 1, 1))
    return y * torch.sigmoid(y)


def repeat2(x):
    return x.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)


def literal_stack(stack, x, kinds):
    """Channels-last [B, T, H, W, D] through residual blocks of the given kinds ("down" / "up" / "none")."""
    h = x.permute(0, 4, 1, 2, 3)
    for block, kind in zip(stack.blocks, kinds, strict=True):
        B, C, T, H, W = h.shape
        if kind == "down":
            skip, branch = (
                h.reshape(B, C, T // 2, 2, H // 2, 2, W // 2, 2).mean((3, 5, 7)),
                literal_conv_block(block.block1, h, 2),
            )
        elif kind == "up":
            skip, branch = repeat2(h), literal_conv_block(block.block1, repeat2(h), 1)
        else:
            skip, branch = h, literal_conv_block(block.block1, h, 1)
        h = skip + literal_conv_block(block.block2, branch, 1)
    return h.permute(0, 2, 3, 4, 1)


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.2)
    return module


def test_shapes_and_factor():
    torch.manual_seed(0)
    model = SpatioTemporalAutoencoder(16)
    x = torch.randn(2, 8, 12, 4, 16)
    reconstruction, latent = model(x)
    assert model.factor == model.encoder.factor == model.decoder.factor == 4
    assert latent.shape == (2, 2, 3, 1, 16) and reconstruction.shape == (2, 8, 12, 4, 16)
    assert model.decoder(torch.randn(3, 1, 2, 5, 16)).shape == (3, 4, 8, 20, 16)
    paper = SpatioTemporalCompressor(8)
    assert paper(torch.zeros(1, 32, 16, 16, 8)).shape == (1, 8, 4, 4, 8)  # 8192 -> 128 tokens
    for num_downsample, factor in [(0, 1), (1, 2), (3, 8)]:
        enc = SpatioTemporalCompressor(8, num_blocks=3, num_downsample=num_downsample)
        dec = SpatioTemporalDecoder(8, num_blocks=3, num_downsample=num_downsample)
        z = enc(torch.zeros(1, 8, 8, 16, 8))
        assert enc.factor == factor and z.shape == (1, 8 // factor, 8 // factor, 16 // factor, 8)
        assert dec(z).shape == (1, 8, 8, 16, 8)


def test_block_order_mirrors_the_encoder():
    model = SpatioTemporalAutoencoder(8, num_blocks=4, num_downsample=2)
    assert [b.resample for b in model.encoder.blocks] == ["down", "down", "none", "none"]
    assert [b.resample for b in model.decoder.blocks] == ["none", "none", "up", "up"]
    assert model.encoder.blocks[0].block1.conv.spatial.stride == (1, 2, 2)
    assert model.encoder.blocks[0].block1.conv.temporal.stride == (2, 1, 1)
    assert model.encoder.blocks[0].block2.conv.spatial.stride == (1, 1, 1)  # only the first conv block strides
    assert model.init_kwargs == {
        "dim": 8, "num_blocks": 4, "num_downsample": 2, "bottleneck_ratio": 4, "spatial_kernel": 3,
        "temporal_kernel": 3, "shortcut": "pool", "norm_groups": 0, "zero_init_residual": True,
    }  # fmt: skip


def test_autoencoder_matches_literal_composition():
    torch.manual_seed(1)
    model = randomize(SpatioTemporalAutoencoder(8, bottleneck_ratio=2))
    x = torch.randn(2, 8, 4, 8, 8)
    with torch.no_grad():
        reconstruction, latent = model(x)
        ref_latent = literal_stack(model.encoder, x, ["down", "down", "none"])
        ref_reconstruction = literal_stack(model.decoder, ref_latent, ["none", "up", "up"])
    torch.testing.assert_close(latent, ref_latent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reconstruction, ref_reconstruction, atol=1e-5, rtol=1e-5)


def test_zero_init_is_average_pooling_then_nearest_upsampling():
    torch.manual_seed(2)
    model = SpatioTemporalAutoencoder(8)
    x = torch.randn(2, 8, 8, 4, 8)
    with torch.no_grad():
        reconstruction, latent = model(x)
    pooled = x.reshape(2, 2, 4, 2, 4, 1, 4, 8).mean((2, 4, 6))  # 4 x 4 x 4 block means
    torch.testing.assert_close(latent, pooled, atol=1e-6, rtol=0)
    expected = pooled.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)
    torch.testing.assert_close(reconstruction, expected, atol=1e-6, rtol=0)
    randomize(model)
    model.encoder.reset_parameters()
    model.decoder.reset_parameters()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], expected, atol=1e-6, rtol=0)  # reset_parameters restores it
    plain = SpatioTemporalAutoencoder(8, zero_init_residual=False)
    with torch.no_grad():
        assert not torch.allclose(plain(x)[1], pooled, atol=1e-3)


def test_parameter_counts_at_paper_width():
    d = 1408
    conv_block = d * (d // 4) * 9 + d // 4 + (d // 4) * d * 3 + d  # 2D 3x3 conv to d/4, 1D k=3 conv back to d
    with torch.device("meta"):
        model = SpatioTemporalAutoencoder(d)
        projected = SpatioTemporalAutoencoder(d, shortcut="conv")
        grouped = SpatioTemporalCompressor(d, norm_groups=32)
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert encoder == 3 * 2 * conv_block == 35_694_912
    assert sum(p.numel() for p in model.parameters()) == 2 * encoder == 71_389_824
    assert sum(p.numel() for p in projected.encoder.parameters()) == encoder + 2 * (d * d + d)  # two 1x1x1 convs
    assert sum(p.numel() for p in grouped.parameters()) == encoder + 6 * 2 * d  # GroupNorm affine per conv block


@pytest.mark.parametrize("kwargs", [{}, {"shortcut": "conv", "norm_groups": 4, "temporal_kernel": 1}])
def test_gradients_reach_every_parameter(kwargs):
    torch.manual_seed(3)
    model = SpatioTemporalAutoencoder(8, zero_init_residual=False, **kwargs)
    x = torch.randn(2, 4, 8, 4, 8)
    reconstruction, _ = model(x)
    reconstruction_loss(reconstruction, x).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_reconstruction_loss_matches_literal_formula():
    torch.manual_seed(4)
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    tokens_a, tokens_b = a.reshape(-1, 5), b.reshape(-1, 5)
    cosines = [float(u @ v / (u.norm() * v.norm())) for u, v in zip(tokens_a, tokens_b)]
    mse = sum(float(((u - v) ** 2).sum()) for u, v in zip(tokens_a, tokens_b)) / a.numel()
    one_minus_cos = sum(1 - c for c in cosines) / len(cosines)
    assert reconstruction_loss(a, b).item() == pytest.approx(mse + one_minus_cos, rel=1e-5)
    assert reconstruction_loss(a, b, 2.0, 0.5).item() == pytest.approx(2 * mse + 0.5 * one_minus_cos, rel=1e-5)
    assert reconstruction_loss(a, b, 0.0, 1.0).item() == pytest.approx(one_minus_cos, rel=1e-5)
    torch.testing.assert_close(token_cosine(a, b), torch.tensor(cosines).reshape(2, 3, 4))
    assert reconstruction_loss(b, b).item() == pytest.approx(0.0, abs=1e-6)
    assert reconstruction_loss(3 * b, b, mse_weight=0.0).item() == pytest.approx(0.0, abs=1e-6)  # scale-free term


@pytest.mark.parametrize(
    "shape, message",
    [
        (
            (1, 6, 8, 8, 8),
            r"`x` has T = 6, which is not divisible by the compressor's factor 4 \(2 \*\* num_downsample\); "
            r"resize or pad T to a multiple of 4 \(e.g. 8\)",
        ),
        ((1, 8, 14, 8, 8), r"`x` has H = 14, which is not divisible by the compressor's factor 4 .*\(e.g. 16\)"),
        ((1, 8, 8, 3, 8), r"`x` has W = 3, which is not divisible by the compressor's factor 4 .*\(e.g. 4\)"),
        ((1, 8, 8, 8, 6), r"`x` must be \[B, T, H, W, D\] with D = 8 \(the `dim`\), got shape \[1, 8, 8, 8, 6\]"),
        ((8, 8, 8, 8), r"`x` must be \[B, T, H, W, D\] with D = 8 \(the `dim`\), got shape \[8, 8, 8, 8\]"),
    ],
)
def test_bad_input_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        SpatioTemporalCompressor(8)(torch.zeros(shape))


def test_decoder_and_loss_input_errors():
    with pytest.raises(
        ValueError, match=r"`z` must be \[B, T, H, W, D\] with D = 8 \(the `dim`\), got shape \[1, 2, 2, 2, 4\]"
    ):
        SpatioTemporalDecoder(8)(torch.zeros(1, 2, 2, 2, 4))
    with pytest.raises(
        ValueError, match=r"`reconstruction` and `target` must have the same shape, got \[2, 3\] and \[3, 3\]"
    ):
        reconstruction_loss(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"loss weights must be >= 0, got `mse_weight` -1.0"):
        reconstruction_loss(torch.zeros(2, 3), torch.zeros(2, 3), mse_weight=-1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"dim": 10},
            r"`dim` \(10\) must be divisible by `bottleneck_ratio` \(4\): the 2D conv outputs dim / "
            r"bottleneck_ratio channels; pick a ratio that divides 10",
        ),
        ({"dim": 0}, r"`dim` must be an integer >= 1 \(the feature channels D\), got 0"),
        ({"num_blocks": 0}, r"`num_blocks` must be an integer >= 1 \(residual blocks\), got 0"),
        ({"num_downsample": 4}, r"`num_downsample` must be in \[0, num_blocks\] = \[0, 3\] .*got 4; lower it"),
        ({"num_downsample": -1}, r"`num_downsample` must be in \[0, num_blocks\] = \[0, 3\] .*got -1"),
        ({"bottleneck_ratio": 0}, r"`bottleneck_ratio` must be an integer >= 1"),
        ({"spatial_kernel": 4}, r"`spatial_kernel` must be an odd integer >= 1 .*got 4"),
        ({"temporal_kernel": 2}, r"`temporal_kernel` must be an odd integer >= 1 .*got 2"),
        ({"shortcut": "max"}, r"`shortcut` must be one of \['pool', 'conv'\], got 'max'"),
        ({"norm_groups": 3}, r"`norm_groups` \(3\) must divide `dim` \(8\) for GroupNorm"),
        ({"norm_groups": -1}, r"`norm_groups` must be an integer >= 0"),
    ],
)
@pytest.mark.parametrize("cls", [SpatioTemporalCompressor, SpatioTemporalDecoder, SpatioTemporalAutoencoder])
def test_argument_errors(cls, kwargs, message):
    kwargs = {"dim": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
