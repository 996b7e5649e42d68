"""Synthetic videos: real H.264 files, exact keyframes and cuts, readable frame codes, deterministic ground truth."""

import dataclasses
import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from videoadapt.processors.synthetic import (
    CODE_HEIGHT,
    PALETTE,
    ShapeSpec,
    ShotSpec,
    SyntheticVideoSpec,
    ToneSpec,
    decode_frame_index,
    random_spec,
    write_synthetic_video,
)


COLOR_TOL = 12  # max per-channel error of a decoded flat colour after H.264 (crf 18) + yuv420p
SPEC = SyntheticVideoSpec(
    shots=(
        ShotSpec(PALETTE["red"], (ShapeSpec("circle", (255, 255, 255), 10, (30.0, 30.0), (2.0, 1.0)),)),
        ShotSpec(
            PALETTE["blue"],
            (
                ShapeSpec("square", PALETTE["yellow"], 8, (100.0, 40.0), (-3.0, 2.5)),
                ShapeSpec("triangle", (0, 0, 0), 12, (60.0, 70.0), (1.5, -2.0)),
            ),
        ),
        ShotSpec(PALETTE["green"], (ShapeSpec("diamond", PALETTE["magenta"], 14, (80.0, 50.0), (4.0, 3.0)),)),
    ),
    cut_frames=(23, 51),
    width=160,
    height=128,
    fps=24.0,
    num_frames=72,
    keyframe_interval=10,
    tones=(ToneSpec(440.0, 0.5, 2.0),),
    audio_sample_rate=44100,
    grain=3,
    seed=7,
)


def decode_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]  # [(H, W, 3)] * T


def keyframe_indices(path) -> list[int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        step = stream.time_base * stream.average_rate  # frames per pts tick
        return sorted(round(p.pts * step) for p in container.demux(stream) if p.is_keyframe and p.pts is not None)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "clip.mp4"
    return path, write_synthetic_video(path, SPEC), decode_frames(path)


def test_is_a_real_h264_mp4(video):
    path, truth, frames = video
    with av.open(str(path)) as container:
        assert container.format.name.split(",")[0] == "mov"
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (SPEC.width, SPEC.height)
        assert stream.average_rate == Fraction(24) and stream.frames == SPEC.num_frames
    assert len(frames) == SPEC.num_frames == truth["num_frames"]
    assert frames[0].shape == (SPEC.height, SPEC.width, 3)


@pytest.mark.parametrize("interval", [1, 7, 10, 25])
def test_keyframes_exactly_every_interval(tmp_path, interval):
    spec = random_spec(interval, num_frames=60, fps=25.0, width=96, height=64, num_cuts=3, with_audio=False)
    spec = dataclasses.replace(spec, keyframe_interval=interval)
    truth = write_synthetic_video(tmp_path / "k.mp4", spec)
    expected = list(range(0, 60, interval))
    assert keyframe_indices(tmp_path / "k.mp4") == expected == truth["keyframes"]


def test_keyframes_of_fixture(video):
    assert keyframe_indices(video[0]) == list(range(0, SPEC.num_frames, SPEC.keyframe_interval))


def test_audio_track_present_only_with_tones(video, tmp_path):
    with av.open(str(video[0])) as container:
        (audio,) = container.streams.audio
        assert audio.codec_context.name == "aac" and audio.sample_rate == 44100 and audio.channels == 2
    assert video[1]["audio"] == {"codec": "aac", "sample_rate": 44100, "channels": 2, "tones": [
        {"frequency": 440.0, "start": 0.5, "end": 2.0, "amplitude": 0.5}
    ]}  # fmt: skip
    silent = SyntheticVideoSpec(width=64, height=48, num_frames=5)
    assert write_synthetic_video(tmp_path / "silent.mp4", silent)["audio"] is None
    with av.open(str(tmp_path / "silent.mp4")) as container:
        assert len(container.streams.audio) == 0 and len(container.streams.video) == 1


def test_shot_colours_and_exact_cuts(video):
    _, truth, frames = video
    picture = np.stack(frames)[:, : SPEC.height - CODE_HEIGHT]  # (T, h, W, 3) without the frame-code strip
    median = np.median(picture.reshape(len(frames), -1, 3), axis=1)  # (T, 3): the background, shapes are small
    shot_of = np.array([f["shot"] for f in truth["frames"]])
    backgrounds = np.array([s.background for s in SPEC.shots])[shot_of]  # (T, 3)
    assert np.abs(median - backgrounds).max() <= COLOR_TOL + SPEC.grain
    assert np.flatnonzero(np.diff(shot_of)).tolist() == [c - 1 for c in SPEC.cut_frames]
    for cut in SPEC.cut_frames:  # the change happens between frame cut - 1 and frame cut, nowhere else
        jump = np.abs(median[cut] - median[cut - 1]).max()
        assert jump > 100 and np.abs(np.diff(median, axis=0)).max(axis=1)[cut - 1] == jump


def test_shapes_where_ground_truth_says(video):
    _, truth, frames = video
    for info, frame in zip(truth["frames"], frames):
        top = info["shapes"][-1]  # drawn last, so nothing covers its centre
        cx, cy = (round(v) for v in top["center"])
        assert np.abs(frame[cy, cx].astype(int) - top["color"]).max() <= COLOR_TOL * 2
        x0, y0, x1, y1 = top["bbox"]
        size = SPEC.shots[info["shot"]].shapes[-1].size
        assert (x1 - x0, y1 - y0) == (2 * size, 2 * size) and 0 <= x0 and x1 < SPEC.width and y1 < SPEC.height


def test_frame_code_decodes_to_index(video):
    assert [decode_frame_index(f) for f in video[2]] == list(range(SPEC.num_frames))


def test_json_ground_truth(video):
    path, truth, _ = video
    assert json.loads(path.with_suffix(".json").read_text()) == truth
    assert truth["codec"] == "h264" and (truth["width"], truth["height"], truth["fps"]) == (160, 128, 24.0)
    assert truth["cut_frames"] == [23, 51] and truth["keyframe_interval"] == 10 and truth["duration"] == 3.0
    assert [(s["start_frame"], s["end_frame"]) for s in truth["shots"]] == [(0, 23), (23, 51), (51, 72)]
    assert truth["shots"][1]["background"] == list(PALETTE["blue"])
    frames = truth["frames"]
    assert [f["index"] for f in frames] == list(range(72)) and frames[48]["timestamp"] == 2.0
    assert [f["shot"] for f in frames[22:24]] == [0, 1] and len(frames[30]["shapes"]) == 2
    # shapes move with their velocity from the shot's first frame (no bounce yet here)
    assert frames[23]["shapes"][0]["center"] == [100.0, 40.0] and frames[25]["shapes"][0]["center"] == [94.0, 45.0]
    assert frames[25]["shapes"][1]["kind"] == "triangle"


def test_same_seed_same_files(tmp_path):
    spec = random_spec(11, num_frames=40, fps=20.0, width=96, height=64, num_cuts=2, with_audio=True)
    a = write_synthetic_video(tmp_path / "a.mp4", spec)
    b = write_synthetic_video(tmp_path / "b.mp4", random_spec(11, 40, 20.0, 96, 64, 2, True))
    assert a == b and (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert all(
        np.array_equal(x, y) for x, y in zip(decode_frames(tmp_path / "a.mp4"), decode_frames(tmp_path / "b.mp4"))
    )
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()  # x264 runs single-threaded
    assert random_spec(12, 40, 20.0, 96, 64, 2, True) != spec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.mp4", "b.json", "b.mp4"]  # no temp files left


@pytest.mark.parametrize("seed", range(5))
def test_random_spec_is_varied(seed):
    spec = random_spec(seed, num_frames=90, num_cuts=4, with_audio=True)
    assert len(spec.shots) == 5 and len(spec.cut_frames) == 4 and len(spec.tones) == 2
    assert all(a.background != b.background for a, b in zip(spec.shots, spec.shots[1:]))
    assert all(shape.color != shot.background for shot in spec.shots for shape in shot.shapes)
    assert all(t.end <= spec.duration for t in spec.tones)
    assert random_spec(seed, 90, with_audio=False, num_cuts=0).tones == ()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cut_frames": (10,)},  # two shots needed
        {"shots": (ShotSpec((0, 0, 0)), ShotSpec((9, 9, 9))), "cut_frames": (0,)},
        {"shots": (ShotSpec((0, 0, 0)), ShotSpec((9, 9, 9))), "cut_frames": (30,), "num_frames": 30},
        {"width": 161},
        {"num_frames": 10, "duration": 2.0},
        {"keyframe_interval": 0},
        {"audio_channels": 3, "tones": (ToneSpec(440.0, 0.0, 1.0),)},
    ],
)
def test_spec_validation(kwargs):
    with pytest.raises(ValueError):
        SyntheticVideoSpec(**kwargs)


def test_duration_sets_num_frames():
    spec = SyntheticVideoSpec(duration=2.5, fps=30.0)
    assert spec.num_frames == 75 and spec.duration == 2.5
    with pytest.raises(ValueError, match="kind"):
        ShapeSpec("hexagon", (0, 0, 0), 5, (10.0, 10.0))
    with pytest.raises(ValueError, match="colours"):
        ShotSpec((0, 0, 300))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umask_permissions_of_a_plain_open(tmp_path, umask):
    # The temporary file that is renamed onto the target must not keep mkstemp's 0o600: shared media and feature
    # caches would be unreadable to every other user and job.
    from videoadapt.processors.atomic import atomic_write
    from videoadapt.processors.synthetic_audio import write_tone_audio

    old = os.umask(umask)
    try:
        write_tone_audio(tmp_path / "tone.wav", [ToneSpec(440.0, 0.0, 0.5)], duration=0.5)
        write_synthetic_video(
            tmp_path / "clip.mp4", dataclasses.replace(SPEC, num_frames=4, duration=None, cut_frames=(1, 2), tones=())
        )
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == expected
    for name in ("tone.wav", "clip.mp4", "clip.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name

    def fail(tmp):
        open(tmp, "w").write("partial")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(tmp_path / "never.bin", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.mp4", "plain.txt", "tone.wav"]
