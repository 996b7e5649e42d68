"""End to end without the internet: a generated mp4 -> seek decoding -> our preprocessing -> each tiny base model."""

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText

from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.synthetic import random_spec, write_synthetic_video
from videoadapt.processors.video_io import load_video
from videoadapt.testing.tiny_models import TINY_FAMILIES, tiny_video_inputs


NUM_FRAMES = 4


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    paths = []
    for seed in (0, 1):
        path = root / f"v{seed}.mp4"
        write_synthetic_video(path, random_spec(seed=seed, num_frames=48, num_cuts=1, with_audio=False))
        paths.append(path)
    return paths


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_generate_on_a_generated_video(family, tiny_checkpoints, videos):
    checkpoint = tiny_checkpoints[family]
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    preprocess = FramePreprocessor.from_image_processor(AutoImageProcessor.from_pretrained(checkpoint))
    inputs = tiny_video_inputs(family, checkpoint, num_frames=NUM_FRAMES)
    (pixel_key,) = [k for k in inputs if k.startswith("pixel_values")]

    logits = []
    for path in videos:
        frames, meta = load_video(path, num_frames=NUM_FRAMES)
        pixels = preprocess(frames)  # (T, 3, S, S)
        size = model.config.vision_config.image_size
        assert pixels.shape == (NUM_FRAMES, 3, size, size) and pixels.dtype == torch.float32
        inputs[pixel_key] = pixels.reshape(inputs[pixel_key].shape)
        with torch.no_grad():
            logits.append(model(**inputs).logits[:, -1])
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert generated.shape[0] == 1 and 1 <= generated.shape[1] - inputs["input_ids"].shape[1] <= 3
    assert not torch.equal(logits[0], logits[1]), "the video content must reach the language model"
