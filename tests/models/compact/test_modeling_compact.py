"""Compact on the tiny LLaVA-OneVision checkpoint: weights, the video path against a slow per-frame reference,
placeholder scattering, token counts, images, save/load, generate, errors."""

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LlavaOnevisionForConditionalGeneration,
)
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from videoadapt.configuration.configuration_compact import CompactConfig, compact_video_tokens
from videoadapt.layers.video_compressor import SpatioTemporalAutoencoder, SpatioTemporalCompressor
from videoadapt.modeling_compact import CompactForConditionalGeneration, CompactVideoFeaturesOutput
from videoadapt.processors.processing_compact import CompactProcessor


B, T, S = 2, 8, 32  # tiny checkpoint: 32 px frames, 8 px patches -> a 4 x 4 grid of width 32; LLM width 64
VISION, TEXT = 32, 64


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints["llava_onevision"]


def load(checkpoint, grid: int | None = 8, **overrides) -> CompactForConditionalGeneration:
    """Compact with random, non-zero compressor weights (fresh residual branches start at zero)."""
    torch.manual_seed(0)
    model = CompactForConditionalGeneration.from_pretrained(checkpoint, compressor_grid=grid, **overrides)
    with torch.no_grad():
        for parameter in model.model.compressor.parameters():
            parameter.normal_(0, 0.2)
    return model.eval()


def videos(batch=B, frames=T, seed=0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, S, S, generator=torch.Generator().manual_seed(seed))


def uint8_clip(frames: int, seed: int = 0):
    return torch.randint(0, 256, (frames, 40, 48, 3), generator=torch.Generator().manual_seed(seed)).byte().numpy()


# --------------------------------------------------------------------------------------------- slow reference


def reference_grids(model, pixels: torch.Tensor) -> torch.Tensor:
    """Literally, per video and frame: the vision tower's last layer (OneVision's default selection, "full"), the
    4 x 4 patch grid resized to g x g; the frames stacked: [B, T, g, g, D]."""
    g, mode = model.config.feature_grid, model.config.compressor_resize_mode
    videos = []
    for video in pixels:
        frames = []
        for frame in video:
            hidden = model.model.vision_tower(frame[None], output_hidden_states=True).hidden_states[-1][0]  # [16, 32]
            grid = hidden.reshape(4, 4, VISION).permute(2, 0, 1)[None]  # [1, D, 4, 4]
            if g != 4 and mode == "bilinear":
                grid = F.interpolate(grid, size=(g, g), mode="bilinear", align_corners=False)
            elif g != 4:
                grid = F.adaptive_avg_pool2d(grid, (g, g))
            frames.append(grid[0].permute(1, 2, 0))  # [g, g, D]
        videos.append(torch.stack(frames))
    return torch.stack(videos)


def reference_video_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """`reference_grids`, then per video the compressor, the latent read in (t, h, w) order, the projector."""
    out = []
    for grids in reference_grids(model, pixels):
        latent = model.model.compressor(grids[None])[0]  # [t, h, w, D]
        t, h, w, _ = latent.shape
        tokens = torch.stack([latent[i, j, k] for i in range(t) for j in range(h) for k in range(w)])
        out.append(model.model.multi_modal_projector(tokens))
    return torch.stack(out)


# --------------------------------------------------------------------------------------------- weights


def test_loads_a_llava_onevision_checkpoint_with_only_the_compressor_missing(checkpoint):
    model, info = CompactForConditionalGeneration.from_pretrained(
        checkpoint, compressor_grid=8, output_loading_info=True
    )
    compressor = {f"model.compressor.{name}" for name, _ in model.model.compressor.named_parameters()}
    assert set(info["missing_keys"]) == compressor and len(compressor) == 24  # 3 blocks x 2 conv blocks x 2 convs x 2
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    base = LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint)
    state = model.state_dict()
    for name, tensor in base.state_dict().items():  # every OneVision weight arrives unchanged, under its name
        assert torch.equal(state[name], tensor), name
    assert set(state) - set(base.state_dict()) == compressor
    assert model.config.model_type == "videoadapt_compact" and model.config.feature_grid == 8
    # the fresh compressor is the SVC's own initialisation: zero residual branches, i.e. 2x2x2 average pooling twice
    x = torch.randn(2, 8, 8, 8, VISION)
    with torch.no_grad():
        expected = F.avg_pool3d(F.avg_pool3d(x.permute(0, 4, 1, 2, 3), 2), 2).permute(0, 2, 3, 4, 1)
        torch.testing.assert_close(model.model.compressor(x), expected, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------- the video path


@pytest.mark.parametrize(
    "grid, mode, frames, shape",
    [
        (8, "bilinear", 8, (2, 2, 2)),
        (8, "area", 4, (1, 2, 2)),
        (None, "bilinear", 8, (2, 1, 1)),
        (16, "area", 4, (1, 4, 4)),
    ],
)
def test_video_features_equal_a_slow_per_frame_reference(checkpoint, grid, mode, frames, shape):
    model = load(checkpoint, grid=grid, compressor_resize_mode=mode)
    pixels = videos(frames=frames)
    with torch.no_grad():
        out = model.get_video_features(pixels)
        expected = reference_video_tokens(model, pixels)
    assert isinstance(out, CompactVideoFeaturesOutput)
    n = shape[0] * shape[1] * shape[2]
    assert out.pooler_output.shape == (B, n, TEXT) and out.compressed_features.shape == (B, *shape, VISION)
    assert out.last_hidden_state.shape == (B * frames, 16, VISION)
    torch.testing.assert_close(out.pooler_output, expected, atol=1e-5, rtol=1e-4)
    assert n == compact_video_tokens(frames, model.config.feature_grid, 4) == model.num_video_tokens(frames)


def test_forward_scatters_the_tokens_into_the_placeholders_without_a_newline(checkpoint):
    model = load(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    n = model.num_video_tokens(T)  # 2 * 2 * 2 = 8
    ids = tokenizer(["what color is it?" + "<video>" * n + " the circle", "<video>" * n + " is it red?"], padding=True,
                    return_tensors="pt").input_ids  # fmt: skip
    assert ((ids == tokenizer.video_token_id).sum(1) == n).all()
    pixels = videos()
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values_videos=pixels).logits
        embeds = model.get_input_embeddings()(ids)
        tokens = reference_video_tokens(model, pixels)  # [B, n, D], scattered row by row, no image_newline
        embeds[ids == tokenizer.video_token_id] = tokens.reshape(-1, TEXT)
        expected = model.lm_head(model.model.language_model(inputs_embeds=embeds).last_hidden_state)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match="Video features and video tokens do not match"):  # OneVision's + 1
            extra = torch.cat([ids, torch.full((B, 1), tokenizer.video_token_id)], 1)
            model(input_ids=extra, pixel_values_videos=pixels)


def test_video_tokens_get_no_image_newline_and_every_other_module_learns(checkpoint):
    model = load(checkpoint).train()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(["<video>" * model.num_video_tokens(T) + " a red circle"] * B, return_tensors="pt").input_ids
    model(input_ids=ids, pixel_values_videos=videos(), labels=ids).loss.backward()
    # OneVision reads hidden_states[-1] of SigLIP, before its post_layernorm: as unused as the newline
    unused = {
        "model.image_newline",
        "model.vision_tower.post_layernorm.weight",
        "model.vision_tower.post_layernorm.bias",
    }
    for name, parameter in model.named_parameters():
        if name in unused:
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("frames, grid", [(4, 4), (8, 8), (12, 8), (4, 16), (16, 16)])
def test_processor_config_and_model_agree_on_the_token_count(checkpoint, frames, grid):
    model = load(checkpoint, grid=grid)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    processor = CompactProcessor.from_model(model, tokenizer, num_frames=frames)
    inputs = processor(["<video> what is it?"], videos=[uint8_clip(frames)])
    count = (frames // 4) * (grid // 4) ** 2
    assert (inputs["input_ids"] == tokenizer.video_token_id).sum().item() == count
    assert processor.video_token_count(frames) == model.config.num_video_tokens(frames) == count
    with torch.no_grad():
        assert model.get_video_features(inputs["pixel_values_videos"]).pooler_output.shape == (1, count, TEXT)
        assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape


def test_images_keep_llava_onevision_behaviour(checkpoint):
    model = load(checkpoint)
    base = LlavaOnevisionForConditionalGeneration.from_pretrained(checkpoint).eval()
    config = base.config
    patches = image_size_to_num_patches([S, S], config.image_grid_pinpoints, config.vision_config.image_size)
    pixels = torch.randn(1, patches, 3, S, S, generator=torch.Generator().manual_seed(3))
    sizes = torch.tensor([[S, S]])
    with torch.no_grad():
        count = sum(len(f) for f in base.model.get_image_features(pixels, sizes).pooler_output)
        ids = torch.tensor([[config.image_token_id] * count + [10, 11, 12]])
        expected = base(input_ids=ids, pixel_values=pixels, image_sizes=sizes).logits
        assert torch.equal(model(input_ids=ids, pixel_values=pixels, image_sizes=sizes).logits, expected)


def test_compressor_inputs_and_loading_a_pretrained_compressor(checkpoint):
    model = load(checkpoint)
    pixels = videos(frames=4)
    with torch.no_grad():
        grids = model.model.get_compressor_inputs(pixels)  # what compressor pre-training should cache
        torch.testing.assert_close(grids, reference_grids(model, pixels), atol=1e-5, rtol=1e-4)
    assert grids.shape == (B, 4, 8, 8, VISION)
    torch.manual_seed(1)
    autoencoder = SpatioTemporalAutoencoder(**model.config.compressor_kwargs())
    with torch.no_grad():
        for parameter in autoencoder.parameters():
            parameter.normal_(0, 0.2)
    model.load_compressor(autoencoder)
    for name, tensor in autoencoder.encoder.state_dict().items():
        assert torch.equal(model.model.compressor.state_dict()[name], tensor), name
    with torch.no_grad():
        expected = model.model.multi_modal_projector(autoencoder.encoder(grids).flatten(1, 3))
        torch.testing.assert_close(model.get_video_features(pixels).pooler_output, expected, atol=1e-5, rtol=1e-4)
    kwargs = model.config.compressor_kwargs()
    with pytest.raises(ValueError, match=r"does not match this model's: dim=64 \(model: 32\)"):
        model.load_compressor(SpatioTemporalAutoencoder(**{**kwargs, "dim": 64}))
    with pytest.raises(ValueError, match=r"shortcut='conv' \(model: 'pool'\), norm_groups=4 \(model: 0\)"):
        model.load_compressor(SpatioTemporalCompressor(**kwargs, shortcut="conv", norm_groups=4))
    with pytest.raises(
        TypeError, match="must be a SpatioTemporalCompressor or a SpatioTemporalAutoencoder, got Linear"
    ):
        model.load_compressor(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------- save, load, generate


def test_generate_greedy_and_beams_and_a_bit_exact_save_load_round_trip(checkpoint, tmp_path):
    model = load(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    processor = CompactProcessor.from_model(model, tokenizer, num_frames=4)
    inputs = processor(["<video> what color is it?", "<video> is it red?"], videos=[uint8_clip(4), uint8_clip(4, 1)])
    assert (inputs["input_ids"] == tokenizer.video_token_id).sum(1).tolist() == [4, 4]  # 1 x 2 x 2 per video
    greedy = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    # greedy = argmax of a full forward pass (video included) at every step
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        for _ in range(4):
            logits = model(
                input_ids=ids, attention_mask=mask, pixel_values_videos=inputs["pixel_values_videos"]
            ).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    assert torch.equal(greedy, ids)
    beams = model.generate(**inputs, num_beams=3, num_return_sequences=2, max_new_tokens=4, do_sample=False)
    assert beams.shape == (4, inputs["input_ids"].shape[1] + 4)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is CompactForConditionalGeneration and loaded.config.compressor_grid == 8
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    assert torch.equal(loaded.generate(**inputs, max_new_tokens=4, do_sample=False), greedy)
    kwargs = dict(num_beams=3, num_return_sequences=2, max_new_tokens=4, do_sample=False)
    assert torch.equal(loaded.generate(**inputs, **kwargs), beams)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded_processor) is CompactProcessor
    assert torch.equal(loaded_processor(["<video> is it red?"], videos=[uint8_clip(4)])["input_ids"],
                       processor(["<video> is it red?"], videos=[uint8_clip(4)])["input_ids"])  # fmt: skip


# --------------------------------------------------------------------------------------------- errors


def test_config_errors():
    with pytest.raises(
        ValueError, match=r"`num_frames` must be a multiple of the compression factor 4, got 30; use 28 or 32"
    ):
        CompactConfig(num_frames=30)
    with pytest.raises(
        ValueError, match=r"`compressor_grid` = 18 must be a multiple of the compression factor .* = 4"
    ):
        CompactConfig(compressor_grid=18)
    with pytest.raises(ValueError, match=r"vision grid \(compressor_grid=None\) = 27 must be a multiple"):
        CompactConfig(compressor_grid=None)  # SigLIP 384 / 14 = 27
    with pytest.raises(
        ValueError, match=r"`compressor_num_downsample` must be in \[0, compressor_num_blocks\] = \[0, 3\]"
    ):
        CompactConfig(compressor_num_downsample=4)
    with pytest.raises(ValueError, match="`compressor_temporal_kernel` must be an odd int >= 1"):
        CompactConfig(compressor_temporal_kernel=2)
    with pytest.raises(ValueError, match=r"`compressor_bottleneck_ratio` must divide the compressor width 1152"):
        CompactConfig(compressor_bottleneck_ratio=5)
    with pytest.raises(ValueError, match=r"`compressor_grid` must be an int >= 1 or None"):
        CompactConfig(compressor_grid=0)
    with pytest.raises(StrictDataclassFieldValidationError, match="num_frames"):  # @strict: not a ValueError
        CompactConfig(num_frames="32")
    with pytest.raises(StrictDataclassFieldValidationError, match="compressor_resize_mode"):
        CompactConfig(compressor_resize_mode="nearest")
    config = CompactConfig(compressor_num_downsample=3, compressor_grid=16, num_frames=64)
    assert (config.compression_factor, config.num_video_tokens()) == (8, 8 * 2 * 2)


def test_token_count_errors():
    assert compact_video_tokens(32, 16, 4) == 128
    with pytest.raises(
        ValueError, match=r"`num_frames` must be a multiple of the compression factor 4 .* got 6; sample 4 or 8"
    ):
        compact_video_tokens(6, 16, 4)
    with pytest.raises(ValueError, match=r"feature grid \(`compressor_grid`\) must be a multiple .* 4, got 14"):
        compact_video_tokens(8, 14, 4)
    with pytest.raises(ValueError, match=r"got 2; sample 4 frames instead"):  # no multiple below: one suggestion
        compact_video_tokens(2, 16, 4)
    with pytest.raises(ValueError, match="`factor` must be an int >= 1, got 0"):
        compact_video_tokens(8, 16, 0)


def test_model_errors(checkpoint):
    # overrides reach the config after it is built from the checkpoint: the model checks them again
    with pytest.raises(ValueError, match=r"`compressor_grid` = 10 must be a multiple"):
        CompactForConditionalGeneration.from_pretrained(checkpoint, compressor_grid=10)
    with pytest.raises(ValueError, match=r"vision grid \(compressor_grid=None\) = 4 must be a multiple of .* = 8"):
        CompactForConditionalGeneration.from_pretrained(checkpoint, compressor_grid=None, compressor_num_downsample=3)
    with pytest.raises(ValueError, match="`compressor_bottleneck_ratio` must divide the compressor width 32"):
        CompactForConditionalGeneration.from_pretrained(checkpoint, compressor_grid=8, compressor_bottleneck_ratio=3)
    model = load(checkpoint)
    with pytest.raises(ValueError, match=r"has T = 6 frames, .* multiple of 4 frames .* sample 4 or 8 frames"):
        model.get_video_features(videos(frames=6))
    with pytest.raises(ValueError, match=r"has T = 0 frames"):
        model.get_video_features(videos(frames=0))
    with pytest.raises(ValueError, match=r"must be \[B, T, 3, H, W\]"):
        model.get_video_features(videos()[0])
    with pytest.raises(ValueError, match=r"gave 15 tokens per frame .* 4 x 4 = 16 patch grid"):
        model.get_video_features(videos(), vision_feature_select_strategy="default")  # SigLIP has no CLS token
