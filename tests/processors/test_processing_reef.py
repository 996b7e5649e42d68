"""ReefProcessor: Q video tokens per video whatever its length, InstructBLIP's layout, prompts, save/load, errors."""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer, BlipImageProcessorPil

from videoadapt.modeling_reef import ReefForConditionalGeneration
from videoadapt.processors.errors import MediaError
from videoadapt.processors.image_processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from videoadapt.processors.processing_reef import REEF_PROMPTS, ReefProcessor
from videoadapt.processors.synthetic import SyntheticVideoSpec, write_synthetic_video


@pytest.fixture(scope="module")
def parts(tiny_checkpoints):
    checkpoint = tiny_checkpoints["instructblip_video"]
    model = ReefForConditionalGeneration.from_pretrained(checkpoint, num_selected_tokens=4).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    qformer_tokenizer = AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer")
    return model, tokenizer, qformer_tokenizer


def frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 40, 48, 3), dtype=np.uint8)


@pytest.mark.parametrize("num_frames", [1, 3, 7])
def test_every_video_becomes_num_query_tokens_tokens_before_the_prompt(parts, num_frames):
    model, tokenizer, qformer_tokenizer = parts
    processor = ReefProcessor.from_model(model, tokenizer, qformer_tokenizer, prompt_template=REEF_PROMPTS["qa"])
    inputs = processor(["what color is it?", "is the circle red?"], videos=[frames(num_frames), frames(num_frames, 1)])
    q = model.config.num_query_tokens
    video = tokenizer.video_token_id
    for row, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
        ids = row[mask.bool()].tolist()
        assert ids[:q] == [video] * q and video not in ids[q:]  # InstructBLIP's layout: video tokens first
        assert tokenizer.decode(ids[q:]).strip().startswith("Question: ")
    assert inputs["pixel_values"].shape == (2, num_frames, 3, 32, 32)
    prompt = REEF_PROMPTS["qa"].format("what color is it?")
    assert inputs["qformer_input_ids"][0][inputs["qformer_attention_mask"][0].bool()].tolist() == (
        qformer_tokenizer(prompt).input_ids
    )
    with torch.no_grad():  # the model consumes exactly these inputs: the count matches what it produces
        assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape
    assert (
        processor.video_token_count(num_frames)
        == q
        == model.get_video_features(
            inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
        ).pooler_output.shape[1]
    )


def test_frames_match_the_blip_image_processor(parts):
    model, tokenizer, qformer_tokenizer = parts
    reference = BlipImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
    )
    processor = ReefProcessor.from_model(model, tokenizer, qformer_tokenizer, image_processor=reference)
    clip = frames(2)
    got = processor("what is it?", videos=clip)["pixel_values"][0]
    expected = reference(list(clip), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, expected.reshape(got.shape), atol=1e-5, rtol=0)


def test_video_paths_are_sampled_uniformly_and_too_short_videos_fail(parts, tmp_path):
    model, tokenizer, qformer_tokenizer = parts
    path = tmp_path / "clip.mp4"
    write_synthetic_video(path, SyntheticVideoSpec(num_frames=12, width=64, height=48, fps=6.0))
    processor = ReefProcessor.from_model(model, tokenizer, qformer_tokenizer, num_frames=5)
    assert processor("what is it?", videos=str(path))["pixel_values"].shape == (1, 5, 3, 32, 32)
    too_many = ReefProcessor.from_model(model, tokenizer, qformer_tokenizer, num_frames=20)
    with pytest.raises(MediaError, match="only 12"):
        too_many("what is it?", videos=str(path))


def test_save_and_load_with_auto_processor(parts, tmp_path):
    model, tokenizer, qformer_tokenizer = parts
    processor = ReefProcessor.from_model(
        model, tokenizer, qformer_tokenizer, num_frames=3, prompt_template=REEF_PROMPTS["qa"]
    )
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ReefProcessor
    assert (loaded.num_frames, loaded.num_query_tokens, loaded.prompt_template) == (3, 4, REEF_PROMPTS["qa"])
    a, b = processor("what?", videos=frames(3)), loaded("what?", videos=frames(3))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bad_inputs(parts):
    model, tokenizer, qformer_tokenizer = parts
    with pytest.raises(ValueError, match="`num_frames` must be an int >= 1"):
        ReefProcessor(tokenizer, qformer_tokenizer, num_frames=0)
    with pytest.raises(ValueError, match="exactly one"):
        ReefProcessor(tokenizer, qformer_tokenizer, prompt_template="no placeholder")
    processor = ReefProcessor.from_model(model, tokenizer, qformer_tokenizer)
    with pytest.raises(ValueError, match="one video per text"):
        processor(["a", "b"], videos=[frames(2)])
    with pytest.raises(ValueError, match="same frame count"):
        processor(["a", "b"], videos=[frames(2), frames(3)])
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\] frames with T >= 1"):
        processor("a", videos=[np.zeros((0, 8, 8, 3), dtype=np.uint8)])


def test_avs_sampler_option_returns_timestamps_and_saves(parts, tmp_path):
    from videoadapt.processors.adaptive_sampling import AdaptiveSampler
    from videoadapt.processors.video_io import probe_video

    model, tokenizer, qformer_tokenizer = parts
    path = tmp_path / "clip.mp4"
    write_synthetic_video(path, SyntheticVideoSpec(num_frames=40, width=64, height=48, fps=10.0))
    processor = ReefProcessor.from_model(model, tokenizer, qformer_tokenizer, num_frames=4, sampler="avs")
    assert processor.sampler == AdaptiveSampler(4)
    inputs = processor("what is it?", videos=str(path), return_timestamps=True)
    plan = AdaptiveSampler(4).plan(probe_video(path))
    assert inputs["video_timestamps"] == [plan.timestamps.tolist()] and inputs["pixel_values"].shape[1] == 4
    assert processor("what is it?", videos=frames(2), return_timestamps=True)["video_timestamps"] == [None]
    processor.save_pretrained(tmp_path / "saved")
    loaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert loaded.sampler == AdaptiveSampler(4)
    assert torch.equal(loaded("what is it?", videos=str(path))["pixel_values"], inputs["pixel_values"])
    with pytest.raises(MediaError, match="asked for 50 AVS frames but the video has only 40"):
        ReefProcessor(tokenizer, qformer_tokenizer, num_frames=50, sampler="avs")("a", videos=str(path))
