"""`videos` in every processor: paths, frame arrays or tensors, [B, T, H, W, 3] batches and lists are the same."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from videoadapt.processors.processing_dynfocus import DynFocusProcessor
from videoadapt.processors.processing_reef import ReefProcessor
from videoadapt.processors.video_inputs import frames_array, video_list


def clips(batch: int = 2, frames: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, frames, 40, 48, 3), dtype=np.uint8)


def test_video_list_splits_batches_and_keeps_single_videos():
    batch = clips()
    assert video_list(None) == [] and video_list("a.mp4") == ["a.mp4"]
    assert [v.shape for v in video_list(batch)] == [(3, 40, 48, 3)] * 2
    assert len(video_list(batch[0])) == 1 and len(video_list(torch.from_numpy(batch))) == 2
    assert video_list((batch[0], "b.mp4"))[1] == "b.mp4"
    with pytest.raises(
        ValueError, match=r"one array must be \[T, H, W, 3\] .* got a 3-D ndarray of shape \(3, 40, 48\)"
    ):
        video_list(batch[0, ..., 0])
    with pytest.raises(TypeError, match="`videos` must be a path, .* got int"):
        video_list(3)


def test_frames_array_takes_tensors_and_refuses_other_shapes():
    video = clips()[0]
    assert np.array_equal(frames_array(torch.from_numpy(video)), video)
    assert np.array_equal(frames_array(video.tolist()), video)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\] frames with T >= 1, got shape \(0, 40, 48, 3\)"):
        frames_array(video[:0])
    with pytest.raises(ValueError, match=r"got shape \(3, 3, 40, 48\)"):
        frames_array(video.transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def tokenizers(tiny_checkpoints):
    checkpoint = tiny_checkpoints["instructblip_video"]
    return AutoTokenizer.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer")


@pytest.mark.parametrize("make", [ReefProcessor, DynFocusProcessor])
def test_reef_and_dynfocus_take_tensors_and_batches(make, tokenizers):
    processor = make(*tokenizers)
    token = processor.tokenizer.video_token
    texts = [f"{token} a", f"{token} b"] if make is DynFocusProcessor else ["a", "b"]
    batch = clips()
    expected = processor(texts, videos=list(batch))["pixel_values"]
    for videos in (batch, torch.from_numpy(batch), [torch.from_numpy(v) for v in batch]):
        assert torch.equal(processor(texts, videos=videos)["pixel_values"], expected)
    one = processor(texts[:1], videos=torch.from_numpy(batch[0]))["pixel_values"]  # one video, not T of them
    assert torch.equal(one, expected[:1])
