"""CompactProcessor: (T/f)(g/f)^2 placeholders per video, OneVision's frame preprocessing, AVS (default) and uniform
sampling, sampler objects, frames as arrays, tensors or batches, save/load, errors."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, SiglipImageProcessorPil

from videoadapt.configuration.configuration_compact import CompactConfig
from videoadapt.processors.adaptive_sampling import AdaptiveSampler
from videoadapt.processors.errors import MediaError
from videoadapt.processors.processing_compact import CompactProcessor
from videoadapt.processors.sampling import FpsSampler, UniformSampler
from videoadapt.processors.synthetic import PALETTE, ShotSpec, SyntheticVideoSpec, write_synthetic_video
from videoadapt.processors.video_io import load_video, probe_video


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoints):
    return AutoTokenizer.from_pretrained(tiny_checkpoints["llava_onevision"])


@pytest.fixture(scope="module")
def two_shot_video(tmp_path_factory):
    """3 s at 8 fps: a red shot for 8 frames (1 s), then a blue one for 16 frames."""
    path = tmp_path_factory.mktemp("compact_videos") / "two_shots.mp4"
    spec = SyntheticVideoSpec(
        shots=(ShotSpec(PALETTE["red"]), ShotSpec(PALETTE["blue"])), cut_frames=(8,), num_frames=24, fps=8.0,
        width=64, height=48, keyframe_interval=4,
    )  # fmt: skip
    write_synthetic_video(path, spec)
    return path


def frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 40, 48, 3), dtype=np.uint8)


def tiny(tokenizer, **kwargs) -> CompactProcessor:
    """A processor for the tiny OneVision tower (32 px frames, SigLIP normalisation), grid 8 unless given."""
    settings = {"frame_preprocessor": {"size": {"height": 32, "width": 32}}, "feature_grid": 8, "num_frames": 4}
    return CompactProcessor(tokenizer, **{**settings, **kwargs})


@pytest.mark.parametrize("num_frames, grid, factor", [(4, 8, 4), (8, 8, 4), (12, 16, 4), (8, 16, 8)])
def test_each_video_expands_to_the_compressed_token_count(tokenizer, num_frames, grid, factor):
    processor = tiny(tokenizer, num_frames=num_frames, feature_grid=grid, compression_factor=factor)
    texts = ["<video> what color is it?", "is the circle red? <video>"]
    inputs = processor(texts, videos=[frames(num_frames), frames(num_frames, 1)])
    count = (num_frames // factor) * (grid // factor) ** 2
    video = tokenizer.video_token_id
    for text, row, mask in zip(texts, inputs["input_ids"], inputs["attention_mask"]):
        ids = row[mask.bool()].tolist()
        start = ids.index(video)
        assert ids[start : start + count] == [video] * count and video not in ids[start + count :]
        assert ids.count(video) == count
        rest = tokenizer.decode([i for i in ids if i != video]).strip()
        assert rest == text.replace("<video>", "").strip().replace("  ", " ")  # the text around is untouched
    assert inputs["pixel_values_videos"].shape == (2, num_frames, 3, 32, 32)
    assert processor.video_token_count(num_frames) == processor.video_token_count() == count
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values_videos"}


def test_from_model_reads_the_config_and_the_paper_default_is_128_tokens(tokenizer):
    class Model:  # the processor reads only `model.config`
        config = CompactConfig()

    processor = CompactProcessor.from_model(Model(), tokenizer)
    assert (processor.num_frames, processor.feature_grid, processor.compression_factor) == (32, 16, 4)
    assert processor.video_token_count() == 8 * 4 * 4 == Model.config.num_video_tokens()
    assert processor.frame_preprocessor["size"] == {"height": 384, "width": 384}  # the SigLIP tower's resolution
    Model.config = CompactConfig(compressor_grid=None, vision_config={"image_size": 224, "patch_size": 14})
    processor = CompactProcessor.from_model(Model(), tokenizer, num_frames=8, sampler="avs")
    assert (processor.feature_grid, processor.video_token_count(), processor.sampler) == (16, 2 * 16, "avs")


def test_frames_match_the_siglip_image_processor(tokenizer):
    reference = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)

    class Model:
        config = CompactConfig(compressor_grid=8, vision_config={"image_size": 32, "patch_size": 8})

    processor = CompactProcessor.from_model(Model(), tokenizer, image_processor=reference, num_frames=4)
    clip = frames(4)
    got = processor("<video> what is it?", videos=clip)["pixel_values_videos"][0]
    expected = reference(list(clip), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, expected.reshape(got.shape), atol=1e-5, rtol=0)


def test_video_paths_are_sampled_uniformly_or_by_avs(tokenizer, two_shot_video):
    uniform = tiny(tokenizer, num_frames=8, sampler="uniform")
    inputs = uniform("<video> what is it?", videos=str(two_shot_video))
    expected = uniform._frames(load_video(two_shot_video, sampler=UniformSampler(8))[0])
    assert torch.equal(inputs["pixel_values_videos"][0], expected)
    avs = tiny(tokenizer, num_frames=8, sampler={"type": "avs", "nms_window": 1.0})
    inputs = avs("<video> what is it?", videos=str(two_shot_video))
    plan = AdaptiveSampler(8, nms_window=1.0).plan(probe_video(two_shot_video))
    assert plan.shots.tolist() == [[0, 8], [8, 24]] and plan.allocation.tolist() == [3, 5]  # 1 each + 6 by length
    expected = avs._frames(load_video(two_shot_video, sampler=AdaptiveSampler(8, nms_window=1.0))[0])
    assert torch.equal(inputs["pixel_values_videos"][0], expected)
    assert (inputs["input_ids"] == tokenizer.video_token_id).sum() == avs.video_token_count(8) == 2 * 2 * 2
    timed = avs("<video> what is it?", videos=str(two_shot_video), return_timestamps=True)
    chosen = load_video(two_shot_video, sampler=AdaptiveSampler(8, nms_window=1.0))[1].timestamps
    assert timed["video_timestamps"] == [chosen.tolist()] and len(chosen) == 8
    assert "video_timestamps" not in inputs
    frames = load_video(two_shot_video, sampler=UniformSampler(8))[0]
    assert avs("<video> what?", videos=[frames], return_timestamps=True)["video_timestamps"] == [None]
    with pytest.raises(MediaError, match="only 24"):
        tiny(tokenizer, num_frames=28, sampler="avs")("<video> what?", videos=str(two_shot_video))


def test_avs_is_the_default_sampler_of_paths_and_arrays_are_used_as_given(tokenizer, two_shot_video):
    processor = tiny(tokenizer, num_frames=8)
    assert processor.sampler == "avs" and processor.frame_sampler == AdaptiveSampler(8)
    inputs = processor("<video> what is it?", videos=str(two_shot_video))
    expected = processor._frames(load_video(two_shot_video, sampler=AdaptiveSampler(8))[0])
    assert torch.equal(inputs["pixel_values_videos"][0], expected)
    clip = frames(8)  # frames given as an array have no timestamps: no sampler runs, every frame is used
    assert torch.equal(processor("<video> what?", videos=clip)["pixel_values_videos"][0], processor._frames(clip))

    class Model:
        config = CompactConfig()

    assert CompactProcessor.from_model(Model(), tokenizer).frame_sampler == AdaptiveSampler(32)


@pytest.mark.parametrize("sampler", [AdaptiveSampler(8, nms_window=1.0), UniformSampler(8)], ids=["avs", "uniform"])
def test_a_frame_sampler_of_num_frames_frames_is_used_and_saved(tokenizer, two_shot_video, tmp_path, sampler):
    processor = tiny(tokenizer, num_frames=8, sampler=sampler)
    assert processor.frame_sampler is sampler
    inputs = processor("<video> what is it?", videos=str(two_shot_video))
    expected = processor._frames(load_video(two_shot_video, sampler=sampler)[0])
    assert torch.equal(inputs["pixel_values_videos"][0], expected)
    processor.save_pretrained(tmp_path)
    loaded = CompactProcessor.from_pretrained(tmp_path)
    assert loaded.frame_sampler == sampler and loaded.num_frames == 8
    assert torch.equal(
        loaded("<video> what is it?", videos=str(two_shot_video))["pixel_values_videos"], inputs["pixel_values_videos"]
    )


def test_a_frame_sampler_with_another_frame_count_is_refused(tokenizer):
    with pytest.raises(
        ValueError,
        match=r"`sampler` must return exactly `num_frames` = 8 frames per video .* got AdaptiveSampler\(budget=4.* "
        r"which takes 4; pass AdaptiveSampler\(8\) or UniformSampler\(8\) .* or num_frames=4",
    ):
        tiny(tokenizer, num_frames=8, sampler=AdaptiveSampler(4))
    with pytest.raises(ValueError, match=r"got FpsSampler\(fps=1.0, max_frames=None\), which declares no frame count"):
        tiny(tokenizer, num_frames=8, sampler=FpsSampler(1.0))


def test_tensors_and_batched_arrays_are_videos(tokenizer):
    processor = tiny(tokenizer)
    clip, other = frames(4), frames(4, 1)
    expected = processor("<video> a", videos=clip)["pixel_values_videos"]
    assert torch.equal(processor("<video> a", videos=torch.from_numpy(clip))["pixel_values_videos"], expected)
    assert torch.equal(processor("<video> a", videos=[torch.from_numpy(clip)])["pixel_values_videos"], expected)
    texts = ["<video> a", "<video> b"]
    pair = processor(texts, videos=[clip, other])
    for batch in (np.stack([clip, other]), torch.from_numpy(np.stack([clip, other]))):  # [B, T, H, W, 3]
        got = processor(texts, videos=batch)
        assert all(torch.equal(got[key], pair[key]) for key in pair)
    with pytest.raises(ValueError, match="one video per text: got 1 texts and 2 videos"):
        processor("<video> a", videos=np.stack([clip, other]))
    for bad in (torch.from_numpy(clip[0]), np.zeros((1, 1, 4, 8, 8, 3), np.uint8)):
        with pytest.raises(
            ValueError,
            match=r"`videos` as one array must be \[T, H, W, 3\] frames \(one video\) or \[B, T, H, W, 3\] \(B "
            r"videos\), got a [36]-D (Tensor|ndarray) of shape",
        ):
            processor("<video> a", videos=bad)
    with pytest.raises(TypeError, match=r"`videos` must be a path, .* got int"):
        processor("<video> a", videos=3)
    with pytest.raises(TypeError, match="must have dtype uint8"):
        processor("<video> a", videos=torch.zeros(4, 8, 8, 3))


def test_save_and_load_keep_every_setting(tokenizer, tmp_path):
    processor = tiny(tokenizer, num_frames=8, sampler={"type": "avs", "nms_window": 1.0})
    processor.save_pretrained(tmp_path)
    loaded = CompactProcessor.from_pretrained(tmp_path)
    assert (loaded.num_frames, loaded.feature_grid, loaded.compression_factor) == (8, 8, 4)
    assert (
        loaded.sampler == {"type": "avs", "nms_window": 1.0}
        and loaded.frame_preprocessor == processor.frame_preprocessor
    )
    a, b = processor("<video> what?", videos=frames(8)), loaded("<video> what?", videos=frames(8))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bad_inputs(tokenizer):
    with pytest.raises(
        ValueError, match=r"`num_frames` must be a multiple of the compression factor 4 .* got 30; sample 28 or 32"
    ):
        tiny(tokenizer, num_frames=30)
    with pytest.raises(
        ValueError, match=r"feature grid \(`compressor_grid`\) must be a multiple of the compression factor 4, got 18"
    ):
        tiny(tokenizer, feature_grid=18)
    with pytest.raises(ValueError, match="`num_frames` must be an int >= 1, got 0"):
        tiny(tokenizer, num_frames=0)
    with pytest.raises(ValueError, match=r"`sampler` must be one of \['uniform', 'avs'\]"):
        tiny(tokenizer, sampler="fps")
    with pytest.raises(ValueError, match=r"must not set \['budget'\].*pass num_frames"):
        tiny(tokenizer, sampler={"type": "avs", "budget": 16})
    processor = tiny(tokenizer)
    with pytest.raises(
        ValueError, match=r"multiple of the compression factor 4 frames .* a video of 6 frames was given; pass 4 or 8"
    ):
        processor("<video> a", videos=frames(6))
    with pytest.raises(ValueError, match="one video per text"):
        processor(["<video> a", "<video> b"], videos=[frames(4)])
    with pytest.raises(ValueError, match="one video per text"):
        processor("<video> a")
    with pytest.raises(ValueError, match="exactly one '<video>', got 2"):
        processor("<video> a <video>", videos=frames(4))
    with pytest.raises(ValueError, match="same frame count"):
        processor(["<video> a", "<video> b"], videos=[frames(4), frames(8)])
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\] frames with T >= 1"):
        processor("<video> a", videos=[np.zeros((0, 8, 8, 3), dtype=np.uint8)])
    assert processor("what is moving ?")["input_ids"].shape[0] == 1  # text alone: no video, no expansion
