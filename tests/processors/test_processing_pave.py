"""PaveProcessor: placeholder counts per base family, frames, side channels (precomputed or from raw media)."""

import pytest
import torch
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

from videoadapt.modeling_pave import (
    PaveForConditionalGeneration,
    PaveLlavaNextVideoForConditionalGeneration,
    PaveVideoLlavaForConditionalGeneration,
)
from videoadapt.processors.processing_pave import PaveProcessor, collate_side_channels
from videoadapt.processors.side_channels import SideChannelFeatures
from videoadapt.processors.synthetic import random_spec, write_synthetic_video


FAMILIES = {
    "llava_onevision": PaveForConditionalGeneration,
    "llava_next_video": PaveLlavaNextVideoForConditionalGeneration,
    "video_llava": PaveVideoLlavaForConditionalGeneration,
}


def features(steps: int, dim: int = 8, seed: int = 0, positions: bool = False) -> SideChannelFeatures:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(steps, 1, 1, 3, generator=g) if positions else None
    kind = "3d" if positions else "audio"
    return SideChannelFeatures(kind, torch.randn(steps, 1, 1, dim, generator=g), torch.arange(steps) + 1.0, xyz)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    write_synthetic_video(path, random_spec(seed=0, num_frames=45, with_audio=False))
    return path


@pytest.mark.parametrize("family", list(FAMILIES))
def test_processor_output_runs_through_the_patched_model(family, tiny_checkpoints, video, tmp_path):
    checkpoint = tiny_checkpoints[family]
    model = FAMILIES[family].from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    processor = PaveProcessor.from_model(
        model, tokenizer, AutoImageProcessor.from_pretrained(checkpoint), num_frames=3
    )
    model.add_patch("audio", model.patch_config_for("audio", 8, hidden_size=16, num_attention_heads=2))
    batch = processor(
        ["<video> what color is it?", "<video> is it red?"],
        videos=[video, video],
        side_channels=[{"audio": features(3)}, {"audio": features(5, seed=1)}],
    )
    (count,) = {int(n) for n in (batch["input_ids"] == tokenizer.video_token_id).sum(-1)}
    with torch.no_grad():
        produced = model.model.get_video_features(batch["pixel_values_videos"], side_channels=batch["side_channels"])
    flat = produced.pooler_output.reshape(2, -1, produced.pooler_output.shape[-1])
    assert count == processor.video_token_count(3) == flat.shape[1]
    assert batch["pixel_values_videos"].shape[:3] == (2, 3, 3)
    assert batch["side_channels"]["audio"]["lengths"].tolist() == [3, 5]
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape

    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is PaveProcessor and (reloaded.family, reloaded.num_frames) == (family, 3)
    again = reloaded(["<video> what color is it?", "<video> is it red?"], videos=[video, video],
                     side_channels=[{"audio": features(3)}, {"audio": features(5, seed=1)}])  # fmt: skip
    assert torch.equal(again["input_ids"], batch["input_ids"])
    assert torch.equal(again["pixel_values_videos"], batch["pixel_values_videos"])


def test_raw_media_path_equals_precomputed_path(tiny_checkpoints, video, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoints["llava_onevision"])
    processor = PaveProcessor(tokenizer, num_frames=2, grid=4)
    calls = []

    def extractor(path):
        calls.append(path)
        return features(4, seed=7)

    saved = features(4, seed=7).save(tmp_path / "f.safetensors")
    from_media = processor("<video> hi", videos=[video], side_channel_extractors={"audio": extractor})
    from_file = processor("<video> hi", videos=[video], side_channels=[{"audio": saved}])
    assert calls == [video]
    for key in ("features", "lengths"):
        assert torch.equal(from_media["side_channels"]["audio"][key], from_file["side_channels"]["audio"][key])


def test_collate_pads_and_keeps_positions():
    batch = collate_side_channels([{"d": features(2, positions=True)}, {"d": features(4, seed=1, positions=True)}])
    d = batch["d"]
    assert d["features"].shape == (2, 4, 1, 1, 8) and d["positions"].shape == (2, 4, 1, 1, 3)
    assert d["lengths"].tolist() == [2, 4]
    assert torch.equal(d["features"][0, 2:], torch.zeros(2, 1, 1, 8))
    assert torch.equal(d["positions"][1], features(4, seed=1, positions=True).positions)


def test_bad_input(tiny_checkpoints, video):
    processor = PaveProcessor(AutoTokenizer.from_pretrained(tiny_checkpoints["llava_onevision"]), num_frames=2, grid=4)
    with pytest.raises(ValueError, match="exactly one '<video>'"):
        processor("no placeholder", videos=[video])
    with pytest.raises(ValueError, match="one video per text"):
        processor(["<video> a", "<video> b"], videos=[video])
    with pytest.raises(ValueError, match="same h, w, C"):
        collate_side_channels([{"a": features(2)}, {"a": features(2, dim=9)}])
    with pytest.raises(ValueError, match="some samples have 3D `positions`"):
        collate_side_channels([{"a": features(2)}, {"a": features(2, positions=True)}])
    with pytest.raises(TypeError, match="expected `SideChannelFeatures`"):
        collate_side_channels([{"a": [1, 2, 3]}])
    with pytest.raises(ValueError, match="`family` must be one of"):
        PaveProcessor(None, family="qwen2_vl")
    with pytest.raises(ValueError, match="`num_frames` must be an int >= 1"):
        PaveProcessor(None, num_frames=0)


def test_avs_sampler_option_returns_timestamps_and_saves(tiny_checkpoints, video, tmp_path):
    import json

    from videoadapt.processors.adaptive_sampling import AdaptiveSampler
    from videoadapt.processors.sampling import TimestampSampler, UniformSampler
    from videoadapt.processors.video_io import load_video, probe_video

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoints["llava_onevision"])
    processor = PaveProcessor(tokenizer, num_frames=4, grid=4, sampler="avs")
    assert processor.sampler == AdaptiveSampler(4)
    batch = processor("<video> hi", videos=[video], return_timestamps=True)
    plan = AdaptiveSampler(4).plan(probe_video(video))
    assert batch["video_timestamps"] == [plan.timestamps.tolist()]
    frames = load_video(video, lambda _: plan.frame_indices)[0]
    from_frames = processor("<video> hi", videos=[frames], return_timestamps=True)
    assert torch.equal(batch["pixel_values_videos"], from_frames["pixel_values_videos"])
    assert from_frames["video_timestamps"] == [None] and "video_timestamps" not in processor("<video> hi", [video])

    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["sampler"] == AdaptiveSampler(4).to_dict()
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.sampler == AdaptiveSampler(4)
    assert torch.equal(reloaded("<video> hi", videos=[video])["pixel_values_videos"], batch["pixel_values_videos"])

    uniform = PaveProcessor(tokenizer, num_frames=3, grid=4)  # the default is unchanged: uniform `num_frames`
    assert uniform.sampler == UniformSampler(3)
    expected = probe_video(video).frame_times[UniformSampler(3)(probe_video(video))].tolist()
    assert uniform("<video> hi", videos=[video], return_timestamps=True)["video_timestamps"] == [expected]
    chosen = PaveProcessor(tokenizer, grid=4, sampler=TimestampSampler([0.1, 0.5]))
    assert chosen("<video> hi", videos=[video])["pixel_values_videos"].shape[1] == 2
    with pytest.raises(ValueError, match=r"`sampler` must be one of \['avs', 'fps', 'timestamps', 'uniform'\]"):
        PaveProcessor(tokenizer, sampler="shots")
    with pytest.raises(TypeError, match="cannot save a processor whose `sampler` is a function"):
        PaveProcessor(tokenizer, sampler=lambda index: [0]).save_pretrained(tmp_path / "custom")
