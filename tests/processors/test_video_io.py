"""Seek-based decoding equals a full decode at the same presentation indices; samplers; bad media."""

import json

import av
import numpy as np
import pytest
from transformers.video_utils import VideoMetadata as HFVideoMetadata
from transformers.video_utils import default_sample_indices_fn
from transformers.video_utils import load_video as hf_load_video

from videoadapt.processors.errors import MediaError
from videoadapt.processors.sampling import (
    FpsSampler,
    SegmentSampler,
    TimestampSampler,
    UniformSampler,
    VideoIndex,
)
from videoadapt.processors.synthetic import decode_frame_index, random_spec, write_synthetic_video
from videoadapt.processors.video_io import load_video, probe_video


def decode_everything(path) -> np.ndarray:
    """Slow reference: decode every frame from the start, no seeking. [F, H, W, 3] uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module", params=[(150, 25), (90, 1), (60, 1000)], ids=["gop25", "all-key", "one-key"])
def video(request, tmp_path_factory):
    num_frames, keyframe_interval = request.param
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    spec = random_spec(seed=3, num_frames=num_frames, num_cuts=2, with_audio=True, keyframe_interval=keyframe_interval)
    truth = write_synthetic_video(path, spec)
    return path, truth, decode_everything(path)


@pytest.mark.parametrize("num_frames", [1, 2, 7, 16, 32, 60])
def test_uniform_frames_equal_full_decode_and_transformers(video, num_frames):
    path, truth, every = video
    frames, meta = load_video(path, num_frames=num_frames)
    assert frames.shape == (num_frames, truth["height"], truth["width"], 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, every[meta.frame_indices])
    theirs, their_meta = hf_load_video(str(path), num_frames=num_frames, backend="pyav")
    assert np.array_equal(frames, theirs)
    expected = default_sample_indices_fn(HFVideoMetadata(total_num_frames=len(every), fps=truth["fps"]), num_frames)
    assert meta.frame_indices.tolist() == expected.tolist()
    assert [decode_frame_index(f) for f in frames] == meta.frame_indices.tolist()


def test_arbitrary_index_sets_equal_full_decode(video):
    path, _, every = video
    rng = np.random.default_rng(0)
    for _ in range(8):
        indices = rng.integers(0, len(every), size=int(rng.integers(1, 20)))  # unsorted, with repeats
        frames, meta = load_video(path, sampler=lambda index, ids=indices: ids)
        assert meta.frame_indices.tolist() == indices.tolist()
        assert np.array_equal(frames, every[indices])


def test_metadata(video):
    path, truth, every = video
    _, meta = load_video(path, num_frames=4)
    assert meta.total_frames == len(every) == truth["num_frames"]
    assert meta.fps == pytest.approx(truth["fps"])
    assert meta.duration == pytest.approx(truth["num_frames"] / truth["fps"])
    assert (meta.width, meta.height) == (truth["width"], truth["height"])
    np.testing.assert_allclose(meta.timestamps, meta.frame_indices / truth["fps"], atol=1e-6)
    index = probe_video(path)
    keyframes = np.round(index.keyframe_pts * index.time_base * truth["fps"]).astype(int)
    assert keyframes.tolist() == list(range(0, truth["num_frames"], truth["keyframe_interval"]))


def test_fps_and_timestamp_samplers_pick_the_frame_on_screen(video):
    path, truth, every = video
    fps = truth["fps"]
    frames, meta = load_video(path, fps=2)
    step = round(fps / 2)
    assert meta.frame_indices.tolist() == list(range(0, truth["num_frames"], step))
    assert np.array_equal(frames, every[meta.frame_indices])
    times = [0.0, 1.0 / fps * 2.5, 1.0, truth["num_frames"] / fps]  # 2.5 frame lengths -> frame 2; the end -> last
    frames, meta = load_video(path, timestamps=times)
    assert meta.frame_indices.tolist() == [0, 2, min(round(fps), truth["num_frames"] - 1), truth["num_frames"] - 1]
    assert np.array_equal(frames, every[meta.frame_indices])
    _, meta = load_video(path, sampler=FpsSampler(10, max_frames=5))
    assert len(meta.frame_indices) == 5 and meta.frame_indices[0] == 0


def test_fps_sampling_at_the_stream_rate_gives_every_frame_despite_float_rounding():
    # time base 1/10 s as a float: frame 3 starts at 3 * 0.1 = 0.30000000000000004 s, after t = 3 / 10 = 0.3 s
    index = VideoIndex(
        path="x.mp4", pts=np.arange(360, dtype=np.int64), keyframe_pts=np.array([0]), time_base=0.1, fps=10.0,
        duration=36.0, width=8, height=8,
    )  # fmt: skip
    assert np.array_equal(FpsSampler(10)(index), np.arange(360))
    assert np.array_equal(TimestampSampler([0.3, 0.7, 35.9])(index), [3, 7, 359])


def _index_10fps(seconds: int) -> VideoIndex:
    return VideoIndex(
        path="x.mp4", pts=np.arange(10 * seconds, dtype=np.int64), keyframe_pts=np.array([0]), time_base=0.1,
        fps=10.0, duration=float(seconds), width=8, height=8,
    )  # fmt: skip


def test_segment_sampler_runs_the_inner_sampler_on_the_segment_only():
    index = _index_10fps(3)  # frames 0..29, frame i starts at i / 10 s
    assert SegmentSampler(UniformSampler(4), 1.0, 2.0)(index).tolist() == [10, 12, 15, 17]  # floor(k * 10 / 4) + 10
    assert SegmentSampler(FpsSampler(2), 1.0, 2.0)(index).tolist() == [10, 15]  # t = 1.0, 1.5
    assert SegmentSampler(FpsSampler(1), 0.0, 99.0)(index).tolist() == [0, 10, 20]  # a segment past the end is clipped
    assert SegmentSampler(TimestampSampler([0.0, 0.25]), 2.5, 3.0)(index).tolist() == [25, 27]


def test_segment_sampler_errors():
    with pytest.raises(ValueError, match="0 <= start < end"):
        SegmentSampler(UniformSampler(2), 2.0, 1.0)
    with pytest.raises(MediaError, match="holds no frame"):
        SegmentSampler(UniformSampler(2), 5.0, 6.0)(_index_10fps(3))


def test_segment_sampler_decodes_the_frames_of_the_segment(video):
    path, truth, every = video
    fps, total = truth["fps"], truth["num_frames"]
    start, end = (total // 3) / fps, (2 * total // 3) / fps
    frames, meta = load_video(path, SegmentSampler(UniformSampler(3), start, end))
    inside = np.arange(total // 3, 2 * total // 3)
    assert meta.frame_indices.tolist() == (inside[np.arange(3) * len(inside) // 3]).tolist()
    assert np.array_equal(frames, every[meta.frame_indices])


def test_ground_truth_json_sits_next_to_the_video(video):
    path, truth, _ = video
    assert json.loads(path.with_suffix(".json").read_text()) == truth


# --------------------------------------------------------------------------------------------- argument errors


def test_exactly_one_sampling_option(video):
    path = video[0]
    with pytest.raises(ValueError, match="exactly one of `sampler`, `num_frames`, `fps`, `timestamps`"):
        load_video(path)
    with pytest.raises(ValueError, match="exactly one"):
        load_video(path, num_frames=4, fps=1)
    with pytest.raises(TypeError, match="`sampler` must be callable"):
        load_video(path, sampler="uniform")
    with pytest.raises(ValueError, match="`num_frames` must be an int >= 1, got 0"):
        UniformSampler(0)
    with pytest.raises(ValueError, match="`fps` must be a finite number > 0"):
        FpsSampler(-1)
    with pytest.raises(ValueError, match="`timestamps` must be a non-empty"):
        TimestampSampler([])


# ------------------------------------------------------------------------------------------------- bad media


@pytest.fixture(scope="module")
def good_mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.mp4"
    write_synthetic_video(path, random_spec(seed=5, num_frames=60, with_audio=False))
    return path


def _faststart_copy(src, dst):
    """Remux `src` with the index (moov) at the front, so a cut keeps the header but loses frame data."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    return dst


def _expect(path, reason, **kwargs):
    with pytest.raises(MediaError, match=reason) as info:
        load_video(path, **({"num_frames": 4} | kwargs))
    assert info.value.path == str(path) and isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.mp4", "no such file")


def test_non_media_file(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file, not a video\n" * 50)
    _expect(fake, "not a media file")


def test_truncated_file_index_at_end(good_mp4, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good_mp4.read_bytes()[: good_mp4.stat().st_size // 2])
    _expect(cut, "truncated/corrupt")


def test_truncated_file_index_at_front(good_mp4, tmp_path):
    fast = _faststart_copy(good_mp4, tmp_path / "fast.mp4")
    assert load_video(fast, num_frames=4)[0].shape[0] == 4  # the remux itself is fine
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: fast.stat().st_size * 2 // 3])
    _expect(cut, "truncated: the header declares 60 frames")


def test_zero_frames(good_mp4, tmp_path):
    fast = _faststart_copy(good_mp4, tmp_path / "fast.mp4")
    data = fast.read_bytes()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(data[: data.index(b"mdat") + 4])  # header only, no frame data
    _expect(empty, "zero frames")


def test_audio_only_file_has_no_video_stream(tmp_path):
    from videoadapt.processors.synthetic_audio import ToneSpec, write_tone_audio

    wav = tmp_path / "tone.wav"
    write_tone_audio(wav, [ToneSpec(440.0, 0.0, 1.0)], duration=1.0, sample_rate=16000)
    _expect(wav, "has no video stream")


def test_timestamps_outside_the_video(good_mp4):
    _expect(good_mp4, r"outside the video \[0, 2.000\] s", num_frames=None, timestamps=[0.5, 2.5])
    _expect(good_mp4, r"\[-0.1\] s lie outside", num_frames=None, timestamps=[-0.1])


def test_more_uniform_frames_than_the_video_has(good_mp4):
    _expect(good_mp4, "asked for 61 uniform frames but the video has only 60", num_frames=61)


# ------------------------------------------------------------------------------------- containers and rotation


def _encode_frames(
    path, fmt: str, num_frames: int = 45, rotation: int | None = None, first_pts: int = 0
) -> np.ndarray:
    """H.264 with B-frames (GOP 10) of synthetic frames carrying their index as a frame code, muxed as `fmt`; frame
    i gets pts `first_pts + i` (1/30 s).

    Returns the frames as encoded, [F, H, W, 3] uint8."""
    from videoadapt.processors.synthetic import render_frame

    spec = random_spec(seed=7, num_frames=num_frames, num_cuts=1, with_audio=False)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.codec_context.options = dict(g="10", keyint_min="10", sc_threshold="0", bframes="3", threads="1")
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(render_frame(spec, i), format="rgb24")
            frame.pts = first_pts + i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return np.stack([render_frame(spec, i) for i in range(num_frames)])


def test_mpegts_with_b_frames_and_a_late_start(tmp_path):
    # MPEG-TS: the stream starts at pts 6000 (1/90000 s), and its demuxer seeks by decode time, not to keyframes: a
    # seek to a keyframe's pts lands on a later non-key packet, where the decoder skips to the next keyframe.
    path = tmp_path / "clip.ts"
    _encode_frames(path, "mpegts")
    every = decode_everything(path)
    index = probe_video(path)
    assert index.total_frames == len(every) == 45 and index.pts[0] > 0
    rng = np.random.default_rng(0)
    for ids in [np.arange(45), np.array([0]), np.array([44, 3, 17, 17, 30]), rng.integers(0, 45, size=12)]:
        frames, meta = load_video(path, sampler=lambda _, ids=ids: ids)
        assert np.array_equal(frames, every[ids])
        assert [decode_frame_index(f) for f in frames] == ids.tolist()
    _, meta = load_video(path, num_frames=3)
    np.testing.assert_allclose(meta.timestamps, meta.frame_indices / 30, atol=1e-6)  # from the first frame


@pytest.mark.parametrize("fmt, suffix", [("matroska", "mkv"), ("mp4", "mp4")])
def test_other_containers_with_b_frames(tmp_path, fmt, suffix):
    path = tmp_path / f"clip.{suffix}"
    _encode_frames(path, fmt)
    every = decode_everything(path)
    ids = np.array([44, 0, 9, 10, 11, 29, 30, 31, 20])
    frames, _ = load_video(path, sampler=lambda _: ids)
    assert np.array_equal(frames, every[ids])


@pytest.mark.parametrize("rotation", [90, 180, -90])
def test_display_rotation_is_applied(tmp_path, rotation):
    # A portrait phone video is stored landscape with a display matrix; players (and ffmpeg) turn it upright.
    path = tmp_path / "phone.mp4"
    _encode_frames(path, "mp4", num_frames=12, rotation=rotation)
    stored = decode_everything(path)  # [F, 240, 320, 3] as coded
    frames, meta = load_video(path, num_frames=3)
    turns = rotation // 90  # np.rot90 turns counter-clockwise, as the display matrix's angle counts
    assert np.array_equal(frames, np.rot90(stored[meta.frame_indices], turns, axes=(1, 2)))
    assert meta.rotation == rotation
    assert (meta.height, meta.width) == frames.shape[1:3] == ((320, 240) if rotation % 180 else (240, 320))
    assert [decode_frame_index(np.rot90(f, -turns)) for f in frames] == meta.frame_indices.tolist()


def test_relative_path_with_a_colon(good_mp4, tmp_path, monkeypatch):
    # FFmpeg reads "cam1:" in a relative "cam1:front.mp4" as a protocol name ("Protocol not found").
    from videoadapt.processors.audio import load_audio
    from videoadapt.processors.synthetic_audio import ToneSpec, write_tone_audio

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cam1:front.mp4").write_bytes(good_mp4.read_bytes())
    write_tone_audio(tmp_path / "take:2.wav", [ToneSpec(440.0, 0.0, 1.0)], duration=1.0)
    frames, meta = load_video("cam1:front.mp4", num_frames=4)
    assert frames.shape[0] == 4 and meta.path == "cam1:front.mp4"
    assert load_audio("take:2.wav")[0].shape == (16000,)


def test_mp4_edit_list_hides_the_frames_before_its_start(tmp_path):
    # Frames at negative pts make the mp4 muxer write an edit list starting at pts 0, as a cut without re-encoding
    # does: the first 7 frames (a keyframe among them) are decoded as references but never shown.
    path = tmp_path / "cut.mp4"
    _encode_frames(path, "mp4", num_frames=40, first_pts=-7)
    every = decode_everything(path)
    assert len(every) == 33 and decode_frame_index(every[0]) == 7
    index = probe_video(path)
    assert index.total_frames == 33 and index.pts[0] == 0 and index.duration == pytest.approx(33 / 30)
    frames, meta = load_video(path, num_frames=33)
    assert np.array_equal(frames, every) and meta.timestamps[0] == 0.0
    ids = np.array([0, 1, 2, 32, 5, 3])  # 0..2 need the hidden keyframe
    frames, _ = load_video(path, sampler=lambda _: ids)
    assert [decode_frame_index(f) for f in frames] == (ids + 7).tolist()


def test_samplers_take_numpy_numbers():
    # `num_frames = np.int64(8)` (from array arithmetic) was rejected as "must be an int >= 1, got 8".
    index = _index_10fps(3)
    assert UniformSampler(np.int64(8))(index).tolist() == UniformSampler(8)(index).tolist()
    sampler = FpsSampler(np.float32(2.0), max_frames=np.int32(4))
    assert sampler(index).tolist() == FpsSampler(2.0, max_frames=4)(index).tolist()
    assert (
        type(sampler.fps) is float
        and type(sampler.max_frames) is int
        and type(UniformSampler(np.int8(3)).num_frames) is int
    )
    for bad in (True, 2.0, 0):
        with pytest.raises(ValueError, match="`num_frames` must be an int >= 1"):
            UniformSampler(bad)
    with pytest.raises(ValueError, match="`max_frames` must be None or an int >= 1"):
        FpsSampler(1.0, max_frames=True)
