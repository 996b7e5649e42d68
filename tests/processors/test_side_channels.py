"""PAVE side channels from real media files and tiny random encoders (nothing is downloaded)."""

import av
import numpy as np
import pytest
import torch
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    ClapAudioConfig,
    ClapAudioModelWithProjection,
    ClapFeatureExtractor,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    WhisperConfig,
    WhisperFeatureExtractor,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from videoadapt.processors.audio import clip_audio, load_audio
from videoadapt.processors.errors import MediaError
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.side_channel_3d import Depth3DSideChannel, backproject_patches, preprocessed_intrinsics
from videoadapt.processors.side_channels import (
    AudioSideChannel,
    MultiviewSideChannel,
    SideChannelFeatures,
    VideoSideChannel,
    extract_side_channel_features,
    side_channel_cache_key,
)
from videoadapt.processors.synthetic import (
    PALETTE,
    ShapeSpec,
    ShotSpec,
    SyntheticVideoSpec,
    ToneSpec,
    write_synthetic_video,
)
from videoadapt.processors.synthetic_audio import write_tone_audio
from videoadapt.processors.video_io import load_video


TONES = (ToneSpec(440.0, 0.5, 4.0), ToneSpec(1000.0, 3.0, 9.5))
SQUARE32 = FramePreprocessor(size={"height": 32, "width": 32})
# 64x48 -> shortest edge 40 gives 53x40 (int(40 * 64 / 48) = 53) -> centre crop 32x32 at left 10, top 4
RESIZE_CROP = FramePreprocessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True)


def make_video(path, seconds, fps=10.0, tones=(), background="grey", seed=0):
    """A 64x48 synthetic video with one moving square (frames differ over time) and an optional AAC tone track."""
    shape = ShapeSpec("square", PALETTE["yellow"], 6.0, (20.0, 16.0), (2.0, 1.0))
    spec = SyntheticVideoSpec(
        shots=(ShotSpec(PALETTE[background], (shape,)),),
        width=64,
        height=48,
        fps=fps,
        duration=seconds,
        keyframe_interval=int(fps),
        tones=tones,
        seed=seed,
    )
    write_synthetic_video(path, spec)
    return path


def vision_model(kind: str):
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if kind == "clip":
        return CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, **sizes)).eval()
    return SiglipVisionModel(SiglipVisionConfig(image_size=32, patch_size=8, **sizes)).eval()


def audio_family(kind: str):
    """(encoder, feature extractor, hand pooling of one clip's outputs) for a tiny encoder of each family."""
    torch.manual_seed(0)
    if kind == "clap":  # 48 kHz like the CLAP checkpoints; 2 s -> 201 mel frames <= spec_size * (64 // 16) = 256
        config = ClapAudioConfig(
            num_mel_bins=16, spec_size=64, window_size=4, depths=[1, 1], num_attention_heads=[2, 2],
            patch_embeds_hidden_size=16, hidden_size=32, projection_dim=24,
        )  # fmt: skip
        fe = ClapFeatureExtractor(feature_size=16, sampling_rate=48000, max_length_s=2, truncation="rand_trunc")
        return ClapAudioModelWithProjection(config).eval(), fe, lambda out: out.audio_embeds[0]
    if kind == "ast":  # 2 s at 16 kHz -> 198 fbank frames, padded to max_length 208
        config = ASTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=16,
            frequency_stride=16, time_stride=16, max_length=208, num_mel_bins=32,
        )  # fmt: skip
        fe = ASTFeatureExtractor(num_mel_bins=32, max_length=208)
        return ASTModel(config).eval(), fe, lambda out: out.pooler_output[0]
    # Whisper: 4 s windows (400 mel frames -> 200 positions); a 2 s clip fills the first 100 positions
    config = WhisperConfig(
        num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=200,
    )  # fmt: skip
    fe = WhisperFeatureExtractor(feature_size=16, chunk_length=4)
    return WhisperEncoder(config).eval(), fe, lambda out: out.last_hidden_state[0, :100].mean(0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("side_channels")
    return {
        "av10": make_video(root / "av10.mp4", 10.0, tones=TONES),
        "silent10": make_video(root / "silent10.mp4", 10.0),
        "hfr5": make_video(root / "hfr5.mp4", 5.0, fps=30.0),
        "main4": make_video(root / "main4.mp4", 4.0, background="grey"),
        "view_red": make_video(root / "view_red.mp4", 4.0, background="red", seed=1),
        "view_blue": make_video(root / "view_blue.mp4", 4.0, background="blue", seed=2),
        "view_short": make_video(root / "view_short.mp4", 3.0, background="green"),
        "rgb12": make_video(root / "rgb12.mp4", 1.2),
        "wav10": write_tone_audio(root / "a10.wav", TONES, 10.0),
        "wav12": write_tone_audio(root / "a12.wav", TONES, 12.0),
        "wav_short": write_tone_audio(root / "a8.wav", TONES, 8.5),
        "root": root,
    }


# ------------------------------------------------------------------------------------------------ audio


@pytest.mark.parametrize("kind", ["clap", "ast", "whisper"])
def test_audio_clips_match_hand_encoding(media, kind):
    encoder, fe, pool = audio_family(kind)
    out = AudioSideChannel(encoder, fe, batch_size=4)(media["av10"])
    channels = {"clap": 24, "ast": 32, "whisper": 32}[kind]
    assert out.kind == "audio" and out.features.shape == (9, 1, 1, channels) and out.positions is None
    assert out.timestamps.dtype == torch.float64 and out.timestamps.tolist() == [float(k) for k in range(1, 10)]
    sr = fe.sampling_rate
    waveform, _ = load_audio(media["av10"], sample_rate=sr)
    for k in (0, 4, 8):
        inputs = fe([waveform[k * sr : (k + 2) * sr]], sampling_rate=sr, return_tensors="pt")
        inputs.pop("attention_mask", None)
        with torch.no_grad():
            expected = pool(encoder(**inputs))
        torch.testing.assert_close(out.features[k, 0, 0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.features[0], out.features[8])  # tones differ between the clips


def test_audio_from_separate_file_and_coverage(media):
    encoder, fe, _ = audio_family("ast")
    extractor = AudioSideChannel(encoder, fe)
    same = extractor(media["silent10"], audio_path=media["wav10"])
    longer = extractor(media["silent10"], audio_path=media["wav12"])  # cut to the video's 10 s
    assert same.features.shape == longer.features.shape == (9, 1, 1, 32)
    torch.testing.assert_close(same.features, longer.features)
    with pytest.raises(MediaError) as info:
        extractor(media["silent10"], audio_path=media["wav_short"])
    assert info.value.path == str(media["wav_short"]) and "8.500 s" in str(info.value)
    assert "10.000 s" in str(info.value) and str(media["silent10"]) in str(info.value)


def test_audio_of_the_own_track_is_aligned_to_the_first_frame(tmp_path):
    # Matroska file whose audio stream starts 0.6 s after its first frame (ms timestamps): a 1 kHz tone at video time
    # 2.0-4.0 s must land in the clips around 2-4 s, not 0.6 s earlier.
    from fractions import Fraction

    from videoadapt.processors.synthetic_audio import synthesize_tones

    path, sr = tmp_path / "late_audio.mkv", 16000
    with av.open(str(path), "w", format="matroska") as container:
        video, audio = container.add_stream("libx264", rate=10), container.add_stream("aac", rate=sr)
        video.width, video.height, video.pix_fmt, audio.layout = 64, 48, "yuv420p", "mono"
        for i in range(50):  # 5 s
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 4 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = 100 * i, Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        wave = synthesize_tones([ToneSpec(1000.0, 1.4, 3.4)], int(4.4 * sr), sr)  # audio time = video time - 0.6
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sr, int(0.6 * sr), Fraction(1, sr)
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    encoder, fe, _ = audio_family("ast")
    extractor = AudioSideChannel(encoder, fe)
    out = extractor(path)
    aligned, meta = load_audio(path, align_to_video=True, end=5.0)
    assert meta.origin == 0.0 and meta.source_start == pytest.approx(0.6, abs=1e-3) and not aligned[: sr // 2].any()
    assert out.features.shape == (4, 1, 1, 32)  # 5 s -> clips at 0, 1, 2, 3 s
    torch.testing.assert_close(out.features[:, 0, 0], extractor.encode(clip_audio(aligned)), atol=1e-5, rtol=1e-5)
    unaligned, _ = load_audio(path, end=5.0)
    assert not torch.allclose(out.features[:3, 0, 0], extractor.encode(clip_audio(unaligned)), atol=1e-3)  # 4.4 s


def test_audio_missing_track_and_unknown_encoder(media):
    encoder, fe, _ = audio_family("ast")
    with pytest.raises(MediaError, match="no audio stream") as info:
        AudioSideChannel(encoder, fe)(media["silent10"])
    assert info.value.path == str(media["silent10"])
    with pytest.raises(ValueError, match="pooling"):
        AudioSideChannel(torch.nn.Linear(2, 2), fe)
    assert AudioSideChannel(encoder, fe, pooling="mean").pooling == "mean"


# ------------------------------------------------------------------------------------------------ video


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_high_frame_rate_matches_slow_reference(media, kind):
    encoder = vision_model(kind)
    out = VideoSideChannel(encoder, SQUARE32, fps=2.0, pool=(2, 2), batch_size=4)(media["hfr5"])
    assert out.kind == "video" and out.features.shape == (10, 2, 2, 32)
    torch.testing.assert_close(out.timestamps, torch.arange(10, dtype=torch.float64) * 0.5)
    with av.open(str(media["hfr5"])) as container:  # slow reference: decode every frame
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(frames) == 150
    with torch.no_grad():
        tokens = encoder(pixel_values=SQUARE32(frames[::15])).last_hidden_state  # frames at 0, 0.5, ... 4.5 s
    grid = tokens[:, -16:].reshape(10, 4, 4, 32)  # CLIP: CLS first, dropped
    quadrants = [[grid[:, r : r + 2, c : c + 2].mean(dim=(1, 2)) for c in (0, 2)] for r in (0, 2)]
    expected = torch.stack([torch.stack(row, dim=1) for row in quadrants], dim=1)  # (10, 2, 2, 32)
    torch.testing.assert_close(out.features, expected, atol=1e-5, rtol=1e-5)


def test_multiview_time_major(media):
    encoder = vision_model("siglip")
    views = [media["view_red"], media["view_blue"]]
    out = MultiviewSideChannel(encoder, SQUARE32, num_frames=4, batch_size=3)(media["main4"], view_paths=views)
    assert out.kind == "multiview" and out.features.shape == (8, 4, 4, 32)
    times = [0.0, 1.0, 2.0, 3.0]  # uniform 4 of 40 frames: indices 0, 10, 20, 30
    assert out.timestamps.tolist() == [t for t in times for _ in views]
    reference = []  # (view, frame) -> grid, encoded one view at a time
    for view in views:
        with av.open(str(view)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])[::10]
        with torch.no_grad():
            reference.append(encoder(pixel_values=SQUARE32(frames)).last_hidden_state.reshape(4, 4, 4, 32))
    reference = torch.stack(reference, dim=1).reshape(8, -1)  # row i * V + v
    distances = torch.cdist(out.features.reshape(8, -1), reference)
    assert distances.argmin(dim=1).tolist() == list(range(8))  # each token grid is its own (frame, view)
    torch.testing.assert_close(out.features.reshape(8, -1), reference, atol=1e-5, rtol=1e-5)
    pooled = MultiviewSideChannel(encoder, SQUARE32, num_frames=4, spatial_pool_stride=2)
    assert pooled(media["main4"], view_paths=views).features.shape == (8, 2, 2, 32)


def test_vision_tower_as_plain_callable_and_feature_layer(media):
    encoder = vision_model("siglip")
    views = [media["view_red"]]
    out = MultiviewSideChannel(encoder, SQUARE32, num_frames=4)(media["main4"], view_paths=views)
    tower = lambda pixel_values: encoder(pixel_values=pixel_values).last_hidden_state  # noqa: E731 (no config)
    plain = MultiviewSideChannel(tower, SQUARE32, num_frames=4)(media["main4"], view_paths=views)
    torch.testing.assert_close(plain.features, out.features)  # 16 tokens -> 4x4 grid without a config
    layer = MultiviewSideChannel(encoder, SQUARE32, num_frames=4, feature_layer=-1)(media["main4"], view_paths=views)
    frames, _ = load_video(media["view_red"], num_frames=4)
    with torch.no_grad():
        hidden = encoder(pixel_values=SQUARE32(frames), output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(layer.features, hidden.reshape(4, 4, 4, 32), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(layer.features, out.features, atol=1e-2)  # before SigLIP's post-layernorm


def test_multiview_view_must_cover_main_video(media):
    extractor = MultiviewSideChannel(vision_model("siglip"), SQUARE32, num_frames=4)
    with pytest.raises(MediaError) as info:
        extractor(media["main4"], view_paths=[media["view_red"], media["view_short"]])
    assert info.value.path == str(media["view_short"])
    assert "3.000 s" in str(info.value) and "4.000 s" in str(info.value)
    with pytest.raises(ValueError, match="view_paths"):
        extractor(media["main4"], view_paths=[])


# ------------------------------------------------------------------------------------------------ 3D

K = np.array([[50.0, 0.0, 31.5], [0.0, 45.0, 23.5], [0.0, 0.0, 1.0]])


def pinhole_points(z: float) -> np.ndarray:
    """[4, 4, 3] camera points of the 8 px patch centres of RESIZE_CROP on 64x48 frames, on the plane at depth z."""
    centre = (np.arange(4) + 0.5) * 8  # in the 32x32 crop (edge coordinates)
    u = (centre + 10) * 64 / 53 - 0.5  # back through the crop (left 10) and the resize 64 -> 53
    v = (centre + 4) * 48 / 40 - 0.5  # top 4, 48 -> 40
    x, y = (u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1]
    return np.stack(np.broadcast_arrays(x[None, :], y[:, None], np.full((4, 4), z)), axis=-1)


def test_intrinsics_follow_resize_and_crop():
    scaled = preprocessed_intrinsics(K, (48, 64), RESIZE_CROP)
    assert scaled[0, 0] == pytest.approx(50 * 53 / 64) and scaled[1, 1] == pytest.approx(45 * 40 / 48)
    # principal point: (c + 0.5) * scale - 0.5 - crop offset
    assert scaled[0, 2] == pytest.approx(32 * 53 / 64 - 0.5 - 10)
    assert scaled[1, 2] == pytest.approx(24 * 40 / 48 - 0.5 - 4)


@pytest.mark.parametrize("depth_size", [(48, 64), (24, 32)])
def test_backprojection_plane_and_pose(depth_size):
    depth = np.full((2, *depth_size), 2.5)
    identity = np.stack([np.eye(4)] * 2)
    args = ((48, 64), RESIZE_CROP, (4, 4), (8, 8))
    points = backproject_patches(depth, np.stack([K, K]), identity, *args)
    np.testing.assert_allclose(points, np.stack([pinhole_points(2.5)] * 2), atol=1e-9)
    angle = 0.7
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    pose[:3, 3] = [1.0, -2.0, 3.0]
    moved = backproject_patches(depth, np.stack([K, K]), np.stack([np.eye(4), pose]), *args)
    np.testing.assert_allclose(moved[0], points[0], atol=1e-9)
    np.testing.assert_allclose(moved[1], points[1] @ pose[:3, :3].T + pose[:3, 3], atol=1e-9)


def test_backprojection_depth_is_the_patch_footprint_mean():
    depth = np.where(np.arange(64) < 32, 1.0, 3.0)[None, None, :].repeat(48, axis=1)  # step at u = 32
    depth[0, :, 45:50] = 0.0  # a hole under patch column 3: missing depth is left out of the mean
    depth[0, :, 12:22] = 0.0  # no valid pixel under patch column 0 -> the frame's median depth (3.0)
    points = backproject_patches(depth, K[None], np.eye(4)[None], (48, 64), RESIZE_CROP, (4, 4), (8, 8))
    # patch column 2 covers x' in [16, 24) -> x in [31.40, 41.06) of the original: pixels 31 (1.0) and 32..40 (3.0)
    np.testing.assert_allclose(points[0, :, :, 2], [[3.0, 1.0, (1.0 + 9 * 3.0) / 10, 3.0]] * 4)


def test_depth3d_extractor(media, tmp_path):
    encoder = vision_model("siglip")
    extractor = Depth3DSideChannel(encoder, RESIZE_CROP, num_frames=4, batch_size=3)
    depth = (1.0 + 0.1 * np.arange(12))[:, None, None] * np.ones((12, 48, 64))  # one plane per video frame
    poses = np.stack([np.eye(4)] * 12)
    out = extractor(media["rgb12"], depth=depth, intrinsics=K, poses=poses)
    assert out.kind == "3d" and out.features.shape == (4, 4, 4, 32) and out.positions.shape == (4, 4, 4, 3)
    torch.testing.assert_close(out.timestamps, torch.tensor([0.0, 0.3, 0.6, 0.9], dtype=torch.float64))
    for i, frame in enumerate([0, 3, 6, 9]):
        np.testing.assert_allclose(out.positions[i].numpy(), pinhole_points(1.0 + 0.1 * frame), rtol=1e-6)
    with av.open(str(media["rgb12"])) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])[[0, 3, 6, 9]]
    with torch.no_grad():
        expected = encoder(pixel_values=RESIZE_CROP(decoded)).last_hidden_state.reshape(4, 4, 4, 32)
    torch.testing.assert_close(out.features, expected, atol=1e-5, rtol=1e-5)
    np.save(tmp_path / "depth.npy", depth[[0, 3, 6, 9]].astype(np.float32))  # one map per sampled frame
    np.savez(tmp_path / "depth.npz", depth=depth, other=np.zeros(3))
    for source in (tmp_path / "depth.npy", tmp_path / "depth.npz", torch.from_numpy(depth)):
        again = extractor(media["rgb12"], depth=source, intrinsics=np.stack([K] * 12), poses=torch.from_numpy(poses))
        torch.testing.assert_close(again.positions, out.positions)


def test_depth3d_validation(media, tmp_path):
    extractor = Depth3DSideChannel(vision_model("siglip"), RESIZE_CROP, num_frames=4)
    depth, poses = np.ones((12, 48, 64)), np.stack([np.eye(4)] * 12)

    def call(**overrides):
        return extractor(media["rgb12"], **{"depth": depth, "intrinsics": K, "poses": poses, **overrides})

    with pytest.raises(ValueError, match=r"`depth` must be \[T, H, W\].*\(48, 64\)"):
        call(depth=np.ones((48, 64)))
    with pytest.raises(ValueError, match=r"`depth`.*T = 12 .*T = 4 .*\(5, 48, 64\)"):
        call(depth=np.ones((5, 48, 64)))
    with pytest.raises(ValueError, match=r"`intrinsics` must be \[3, 3\] or \[T, 3, 3\].*\(3, 4\)"):
        call(intrinsics=np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"`poses` must be \[T, 4, 4\].*\(12, 3, 4\)"):
        call(poses=poses[:, :3])
    bad = poses.copy()
    bad[3, 0, 3] = np.inf  # frame 3 is the 2nd sampled frame
    with pytest.raises(ValueError, match=r"`poses` of sampled frames \[1\] are not finite"):
        call(poses=bad)
    bad_unsampled = poses.copy()
    bad_unsampled[4, 0, 3] = np.nan  # not sampled: ignored
    assert call(poses=bad_unsampled).positions.isfinite().all()
    np.save(tmp_path / "flat.npy", np.ones((48, 64)))
    with pytest.raises(MediaError, match=r"`depth` must be \[T, H, W\]") as info:
        call(depth=tmp_path / "flat.npy")
    assert info.value.path == str(tmp_path / "flat.npy")
    with pytest.raises(MediaError, match="not found"):
        call(depth=tmp_path / "missing.npy")


# ------------------------------------------------------------------------------------------------ files, cache


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    features = SideChannelFeatures(
        "3d", torch.randn(3, 2, 2, 5), torch.tensor([0.1, 1 / 3, 2.0], dtype=torch.float64), torch.randn(3, 2, 2, 3)
    )
    loaded = SideChannelFeatures.load(features.save(tmp_path / "f.safetensors"))
    assert loaded.kind == "3d" and loaded.timestamps.dtype == torch.float64
    for name in ("features", "timestamps", "positions"):
        assert torch.equal(getattr(loaded, name), getattr(features, name))
    half = SideChannelFeatures("audio", torch.randn(4, 1, 1, 8).to(torch.bfloat16), torch.arange(4.0) + 1)
    loaded = SideChannelFeatures.load(half.save(tmp_path / "h.safetensors"))
    assert loaded.positions is None and torch.equal(loaded.features, half.features)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors", "h.safetensors"]  # no temp files left
    with pytest.raises(MediaError):
        SideChannelFeatures.load(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="positions"):
        SideChannelFeatures("3d", torch.zeros(2, 2, 2, 4), torch.zeros(2), torch.zeros(2, 2, 2, 2))


def test_damaged_feature_files_raise_media_error_with_the_path(tmp_path):
    import json

    from safetensors.torch import save_file

    header = {"videoadapt.side_channel": json.dumps({"version": 1, "kind": "audio"})}
    damaged = {
        "no_features": {"timestamps": torch.zeros(3, dtype=torch.float64)},
        "bad_timestamps": {"features": torch.zeros(3, 1, 1, 4), "timestamps": torch.zeros(2, dtype=torch.float64)},
    }
    for name, tensors in damaged.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, path, metadata=header)
        with pytest.raises(MediaError, match="damaged side-channel feature file") as info:
            SideChannelFeatures.load(path)
        assert info.value.path == str(path)


def test_cache_skips_existing_and_keys_on_config(media, tmp_path):
    encoder = vision_model("siglip")
    calls = []
    encoder.register_forward_hook(lambda *args: calls.append(1))
    videos = [media["main4"], media["view_red"]]
    paths = extract_side_channel_features(VideoSideChannel(encoder, SQUARE32), videos, tmp_path)
    assert len(paths) == 2 and all(p.exists() for p in paths) and len(calls) == 2
    direct = VideoSideChannel(encoder, SQUARE32)(media["main4"])
    assert torch.equal(SideChannelFeatures.load(paths[0]).features, direct.features)
    calls.clear()
    assert extract_side_channel_features(VideoSideChannel(encoder, SQUARE32), videos, tmp_path) == paths
    assert calls == []  # all cached
    other = extract_side_channel_features(VideoSideChannel(encoder, SQUARE32, pool=(1, 1)), videos, tmp_path)
    assert set(other).isdisjoint(paths) and len(calls) == 2
    calls.clear()
    extract_side_channel_features(VideoSideChannel(encoder, SQUARE32), videos[:1], tmp_path, overwrite=True)
    assert len(calls) == 1
    assert sorted(tmp_path.iterdir()) == sorted([*paths, *other])


def test_cache_interrupted_run_leaves_only_finished_files(media, tmp_path):
    encoder, fe, _ = audio_family("ast")
    extractor = AudioSideChannel(encoder, fe)
    videos = [media["silent10"], media["silent10"]]
    media_kwargs = [{"audio_path": media["wav10"]}, {"audio_path": media["wav_short"]}]  # the 2nd one fails
    with pytest.raises(MediaError):
        extract_side_channel_features(extractor, videos, tmp_path, media_kwargs=media_kwargs)
    config = extractor.config_dict()
    done = tmp_path / f"{side_channel_cache_key(config, videos[0], media_kwargs[0])}.safetensors"
    assert list(tmp_path.iterdir()) == [done]
    assert side_channel_cache_key(config, videos[0], media_kwargs[0]) != side_channel_cache_key(config, videos[0])
    with pytest.raises(ValueError, match="one dict per video"):
        extract_side_channel_features(extractor, videos, tmp_path, media_kwargs=media_kwargs[:1])
