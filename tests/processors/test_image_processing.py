"""FramePreprocessor against transformers' PIL/numpy image processors (no torchvision, nothing downloaded)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import (
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    LlavaNextImageProcessorPil,
    LlavaOnevisionImageProcessorPil,
    SiglipImageProcessorPil,
    VideoLlavaImageProcessor,
)

from videoadapt.processors.image_processing import FramePreprocessor


TOL = 1e-5
# (H, W): landscape, portrait with odd sizes, smaller than every target, odd crop offsets, exact target, extreme
FRAME_SIZES = [(240, 320), (321, 199), (17, 23), (225, 301), (384, 384), (100, 700), (7, 3)]


def make_reference(preset: str):
    """The base model's reference processor: class defaults + the released checkpoint's overrides."""
    if preset == "llava_onevision":
        return SiglipImageProcessorPil(size={"height": 384, "width": 384})
    if preset == "llava_next_video":
        return CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    if preset == "video_llava":
        return VideoLlavaImageProcessor()
    if preset in ("instructblip", "instructblip_video"):
        return BlipImageProcessorPil(size={"height": 224, "width": 224})
    raise KeyError(preset)


def reference_pixel_values(reference, frames) -> torch.Tensor:
    kwargs = {"return_legacy_image_output": False} if isinstance(reference, VideoLlavaImageProcessor) else {}
    if isinstance(frames, np.ndarray):
        frames, kwargs["input_data_format"] = list(frames), "channels_last"
    return reference(images=frames, return_tensors="pt", **kwargs)["pixel_values"]


def random_frames(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("size", FRAME_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("preset", FramePreprocessor.presets())
def test_matches_transformers_reference(preset, size):
    frames = random_frames((2, *size, 3), seed=size[0] * 1000 + size[1])
    ours = FramePreprocessor.for_model(preset)(frames)
    ref = reference_pixel_values(make_reference(preset), frames)
    assert ours.dtype == torch.float32 and ref.dtype == torch.float32
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= TOL
    assert ours.shape[-2:] == FramePreprocessor.for_model(preset).output_size(*size)


@pytest.mark.parametrize(
    ("preset", "expected_hw"),
    [("llava_onevision", (384, 384)), ("llava_next_video", (336, 336)), ("video_llava", (224, 224))]
    + [("instructblip", (224, 224)), ("instructblip_video", (224, 224))],
)
def test_preset_output_shape(preset, expected_hw):
    out = FramePreprocessor.for_model(preset)(random_frames((3, 90, 160, 3)))
    assert out.shape == (3, 3, *expected_hw)
    assert out.is_contiguous()


def test_onevision_matches_first_anyres_patch():
    # LlavaOnevisionImageProcessorPil's first patch is the whole image resized to `size` (the video path's frame).
    # Its class defaults carry CLIP mean/std; the released checkpoints use SigLIP's 0.5, set here as they do.
    reference = LlavaOnevisionImageProcessorPil(
        image_mean=[0.5] * 3, image_std=[0.5] * 3, image_grid_pinpoints=[[384, 384]]
    )
    frames = random_frames((2, 215, 333, 3), seed=3)
    ref = reference(images=list(frames), return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    ours = FramePreprocessor.for_model("llava_onevision")(frames)
    assert (ours - ref[:, 0]).abs().max().item() <= TOL


@pytest.mark.parametrize("preset", FramePreprocessor.presets())
def test_from_image_processor_round_trip(preset):
    assert FramePreprocessor.from_image_processor(make_reference(preset)) == FramePreprocessor.for_model(preset)


def test_from_image_processor_reads_llava_next_processor():
    reference = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    assert FramePreprocessor.from_image_processor(reference) == FramePreprocessor.for_model("llava_next_video")


def test_from_image_processor_keeps_non_default_settings():
    reference = CLIPImageProcessorPil(
        size={"shortest_edge": 50}, crop_size={"height": 40, "width": 30}, resample=PIL.Image.Resampling.BILINEAR
    )
    reference.do_normalize = False
    fp = FramePreprocessor.from_image_processor(reference)
    assert fp.resample == 2 and fp.size == {"shortest_edge": 50} and fp.crop_size == {"height": 40, "width": 30}
    frames = random_frames((2, 77, 61, 3), seed=4)
    assert (fp(frames) - reference_pixel_values(reference, frames)).abs().max().item() <= TOL


def test_from_image_processor_rejects_other_objects():
    with pytest.raises(TypeError, match="image/video processor"):
        FramePreprocessor.from_image_processor(object())


def test_center_crop_pads_when_frame_is_smaller():
    reference = CLIPImageProcessorPil(do_resize=False, crop_size={"height": 31, "width": 20})
    fp = FramePreprocessor.from_image_processor(reference)
    assert not fp.do_resize
    frames = random_frames((2, 12, 27, 3), seed=5)  # crop taller than frame, narrower than frame (odd difference)
    ours = fp(frames)
    assert ours.shape == (2, 3, 31, 20)
    assert (ours - reference_pixel_values(reference, frames)).abs().max().item() <= TOL


def test_pil_inputs_match_reference():
    frames = random_frames((3, 50, 70, 4), seed=6)
    images = [
        PIL.Image.fromarray(frames[0, ..., :3]),
        PIL.Image.fromarray(frames[1], mode="RGBA"),  # alpha composited onto white
        PIL.Image.fromarray(frames[2, ..., 0], mode="L"),
    ]
    for preset in ("llava_onevision", "video_llava"):
        ours = FramePreprocessor.for_model(preset)(images)
        assert (ours - reference_pixel_values(make_reference(preset), images)).abs().max().item() <= TOL


def test_list_of_arrays_equals_stacked_array():
    frames = random_frames((3, 45, 80, 3), seed=7)
    fp = FramePreprocessor.for_model("video_llava")
    assert torch.equal(fp(frames), fp(list(frames)))


def test_dict_round_trip():
    for preset in FramePreprocessor.presets():
        fp = FramePreprocessor.for_model(preset)
        config = json.loads(json.dumps(fp.to_dict()))
        assert FramePreprocessor.from_dict(config) == fp
        assert FramePreprocessor.from_dict(config).to_dict() == config
    custom = FramePreprocessor(size={"shortest_edge": 64}, crop_size={"height": 32, "width": 48}, do_center_crop=True)
    assert FramePreprocessor.from_dict(custom.to_dict()) == custom


def test_scalar_mean_std_expand_to_channels():
    fp = FramePreprocessor(image_mean=0.5, image_std=0.25)
    assert fp.image_mean == (0.5, 0.5, 0.5) and fp.image_std == (0.25, 0.25, 0.25)


@pytest.mark.parametrize(
    ("frames", "error", "pattern"),
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), TypeError, "dtype uint8.*got float32"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), ValueError, r"shape \[H, W, 3\].*got \(8, 8, 4\)"),
        (np.zeros((2, 3, 8, 8), dtype=np.uint8), ValueError, r"shape \[H, W, 3\].*got \(3, 8, 8\)"),
        (np.zeros((8, 8, 3), dtype=np.uint8), ValueError, r"\[T, H, W, 3\].*frames\[None\]"),
        ([], ValueError, "empty"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), TypeError, "got Tensor"),
        ([np.zeros((8, 8, 3), dtype=np.uint8), "frame.png"], TypeError, "frame 1 must be a numpy array or PIL"),
    ],
    ids=["float-dtype", "four-channels", "channels-first", "no-time-axis", "empty", "torch-tensor", "str-frame"],
)
def test_bad_frames(frames, error, pattern):
    with pytest.raises(error, match=pattern):
        FramePreprocessor.for_model("instructblip")(frames)


def test_frames_of_different_output_sizes_are_rejected():
    fp = FramePreprocessor(size={"shortest_edge": 32})
    frames = [random_frames((40, 60, 3)), random_frames((60, 40, 3))]
    with pytest.raises(ValueError, match="different sizes.*do_center_crop=True"):
        fp(frames)


def test_non_rgb_pil_without_conversion_is_rejected():
    with pytest.raises(ValueError, match="mode 'L'.*do_convert_rgb=True"):
        FramePreprocessor(do_convert_rgb=False)([PIL.Image.new("L", (8, 8))])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"size": {"height": 384}}, r"`size` must be .*'height'.*'shortest_edge'.*got \{'height': 384\}"),
        ({"size": {"shortest_edge": 0}}, r"`size` must be .*positive ints.*got \{'shortest_edge': 0\}"),
        ({"size": {"longest_edge": 336}}, r"`size` must be .*Pass e\.g\. size="),
        ({"crop_size": {"shortest_edge": 3}, "do_center_crop": True}, r"`crop_size` must be \{'height': int"),
        ({"do_center_crop": True}, r"`crop_size` is None but `do_center_crop=True`"),
        ({"resample": 7}, r"`resample` must be .*BICUBIC.*got 7"),
        ({"resample": "bicubic"}, r"`resample` must be .*got 'bicubic'"),
        ({"rescale_factor": 0}, r"`rescale_factor` must be a positive float.*got 0"),
        ({"image_mean": [0.5, 0.5]}, r"`image_mean` must be .*3 floats.*got \[0\.5, 0\.5\]"),
        ({"image_std": [0.5, 0.0, 0.5]}, r"`image_std` must be .*3 positive floats"),
        ({"do_resize": "yes"}, r"`do_resize` must be True or False, got 'yes'"),
    ],
)
def test_bad_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        FramePreprocessor(**kwargs)


def test_bad_preset_and_dict_keys():
    with pytest.raises(ValueError, match=r"`model` must be one of .*llava_onevision.*got 'llava'"):
        FramePreprocessor.for_model("llava")
    with pytest.raises(ValueError, match=r"Unknown FramePreprocessor keys \['image_processor_type'\]"):
        FramePreprocessor.from_dict({"image_processor_type": "CLIPImageProcessor"})
