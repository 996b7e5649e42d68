"""Audio loading: resampling keeps pitch and length, 2 s / 1 s clips, bad media raises MediaError."""

from fractions import Fraction

import av
import numpy as np
import pytest

from videoadapt.processors.audio import clip_audio, clip_start_times, load_audio
from videoadapt.processors.errors import MediaError
from videoadapt.processors.synthetic import SyntheticVideoSpec, ToneSpec, write_synthetic_video
from videoadapt.processors.synthetic_audio import write_tone_audio


SR = 16000


def small_video(path, seconds: float, tones=(), sample_rate: int = 48000):
    """A tiny 64x48 video at 10 fps (the picture does not matter here) with a stereo AAC track of `tones`."""
    spec = SyntheticVideoSpec(
        width=64,
        height=48,
        fps=10.0,
        duration=seconds,
        keyframe_interval=10,
        tones=tones,
        audio_sample_rate=sample_rate,
    )
    write_synthetic_video(path, spec)
    return path


def peak_frequency(x: np.ndarray, sample_rate: int) -> float:
    """FFT peak of a Hann-windowed signal, refined by a parabola through the log magnitudes around the peak."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(spectrum[1:].argmax()) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sample_rate / len(x)


@pytest.fixture(scope="module", params=[44100, 48000], ids=lambda r: f"aac{r}")
def tone_video(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "tone.mp4"
    return small_video(path, 10.0, (ToneSpec(440.0, 0.0, 10.0),), request.param), request.param


def test_440hz_survives_resampling(tone_video):
    path, source_rate = tone_video
    waveform, meta = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    window = waveform[SR : 9 * SR]  # 8 s -> 0.125 Hz bins, away from the edges
    assert abs(peak_frequency(window, SR) - 440.0) <= 1.0
    assert abs(peak_frequency(window, SR) - 440.0) <= 0.01  # measured: < 1e-5 Hz off
    assert 0.45 < np.abs(window).max() < 0.55  # amplitude 0.5 in both channels, mean of channels keeps it
    assert (meta.source_sample_rate, meta.source_channels, meta.source_codec) == (source_rate, 2, "aac")


def test_length_exact_after_trimming_aac_padding(tone_video):
    path, source_rate = tone_video
    waveform, meta = load_audio(path)
    assert len(waveform) == meta.num_samples == 10 * SR and meta.duration == 10.0 and meta.source_duration == 10.0
    # What PyAV hands back raw: the 1024 priming samples are already dropped (mp4 edit list -> skip samples),
    # but the last AAC frame's padding is decoded, so the raw count is the true count rounded up to 1024.
    with av.open(str(path)) as container:
        raw = sum(frame.samples for frame in container.decode(audio=0))
    assert raw == -(-10 * source_rate // 1024) * 1024 and 0 <= raw - 10 * source_rate < 1024


def test_tone_onset_is_not_shifted_by_priming(tmp_path):
    waveform, _ = load_audio(small_video(tmp_path / "late.mp4", 3.0, (ToneSpec(1000.0, 1.5, 3.0),)))
    onset = np.flatnonzero(np.abs(waveform) > 0.25)[0] / SR
    assert abs(onset - 1.5) < 0.005


def test_time_window(tone_video):
    path, _ = tone_video
    full, _ = load_audio(path)
    part, meta = load_audio(path, start=2.5, end=4.0)
    assert meta.num_samples == 1.5 * SR and meta.start == 2.5
    np.testing.assert_array_equal(part, full[int(2.5 * SR) : 4 * SR])
    tail, _ = load_audio(path, start=9.0, end=60.0)  # `end` past the audio is clipped
    assert len(tail) == SR
    with pytest.raises(MediaError, match="past the end"):
        load_audio(path, start=10.0)
    with pytest.raises(ValueError, match="start"):
        load_audio(path, start=3.0, end=2.0)


@pytest.mark.parametrize(
    ("seconds", "clips"), [(0.5, 1), (1.5, 1), (2.0, 1), (2.5, 1), (3.0, 2), (10.0, 9), (10.5, 9)]
)
def test_clip_counts_and_contents(seconds, clips):
    waveform = np.random.default_rng(0).standard_normal(int(seconds * SR)).astype(np.float32)
    out = clip_audio(waveform)
    starts = clip_start_times(len(waveform))
    assert out.shape == (clips, 2 * SR) and out.dtype == np.float32
    np.testing.assert_array_equal(starts, np.arange(clips, dtype=float))
    for clip, start in zip(out, starts):
        piece = waveform[int(start * SR) : int(start * SR) + 2 * SR]
        np.testing.assert_array_equal(clip[: len(piece)], piece)
        assert not clip[len(piece) :].any()  # zero padding only when the waveform is shorter than a clip


def test_clip_other_geometry():
    waveform = np.arange(100, dtype=np.float32)
    out = clip_audio(waveform, sample_rate=10, clip_seconds=3.0, stride_seconds=2.0)  # 30-sample clips, stride 20
    assert out.shape == (4, 30) and out[-1, 0] == 60 and out[-1, -1] == 89
    with pytest.raises(ValueError, match="1-D"):
        clip_audio(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError):
        clip_audio(np.zeros(0, np.float32))


def test_separate_wav_file(tmp_path):
    path = write_tone_audio(tmp_path / "tone.wav", [ToneSpec(440.0, 0.0, 3.0)], duration=3.0, sample_rate=22050)
    waveform, meta = load_audio(path)
    assert (meta.source_codec, meta.source_sample_rate, meta.source_channels) == ("pcm_s16le", 22050, 1)
    assert len(waveform) == 3 * SR and abs(peak_frequency(waveform[SR // 2 : -SR // 2], SR) - 440.0) <= 1.0
    assert clip_audio(waveform).shape == (2, 2 * SR)


@pytest.mark.parametrize("suffix", [".flac", ".m4a", ".mp3"])
def test_other_audio_formats(tmp_path, suffix):
    path = write_tone_audio(tmp_path / f"tone{suffix}", [ToneSpec(440.0, 0.0, 2.0)], 2.0, 44100, channels=2)
    waveform, meta = load_audio(path)
    assert meta.source_channels == 2 and len(waveform) == 2 * SR
    assert abs(peak_frequency(waveform[SR // 4 : -SR // 4], SR) - 440.0) <= 1.0


def test_tone_in_second_half_only_in_matching_clips(tmp_path):
    waveform, _ = load_audio(small_video(tmp_path / "half.mp4", 10.0, (ToneSpec(1000.0, 5.0, 10.0),)))
    clips = clip_audio(waveform)
    rms = np.sqrt((clips**2).mean(axis=1))  # (K,)
    starts = clip_start_times(len(waveform))
    assert len(clips) == 9
    assert (rms[starts + 2 <= 5.0] < 0.01).all()  # clips 0..3 end before the tone starts
    np.testing.assert_allclose(rms[starts >= 5.0], 0.5 / np.sqrt(2), atol=0.01)  # clips 5..8 are all tone
    assert 0.1 < rms[4] < 0.3  # clip 4 (4 s - 6 s) is half tone: 0.5 / 2 = 0.25 in RMS terms


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="no such file") as info:
        load_audio(tmp_path / "nope.mp4")
    assert info.value.path == str(tmp_path / "nope.mp4") and isinstance(info.value, ValueError)


def test_text_file_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is a text file, not a video\n" * 20)
    with pytest.raises(MediaError, match="not a media file") as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_truncated_mp4(tmp_path):
    full = small_video(tmp_path / "full.mp4", 3.0, (ToneSpec(440.0, 0.0, 3.0),))
    data = full.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as info:
        load_audio(tmp_path / "half.mp4")
    assert info.value.path == str(tmp_path / "half.mp4")


def test_video_without_audio(tmp_path):
    path = small_video(tmp_path / "silent.mp4", 1.0)
    with pytest.raises(MediaError, match="no audio stream") as info:
        load_audio(path)
    assert str(path) in str(info.value) and "separate file" in info.value.reason


# ------------------------------------------------------------------------------ streams that start at different times


def offset_video(path, video_start: float, audio_start: float, tone: tuple[float, float], seconds: float = 3.0):
    """A Matroska file (millisecond timestamps) of 64x48 10 fps frames from `video_start` and a mono 16 kHz AAC
    track from `audio_start` (container seconds) holding a 1 kHz tone over container time `tone` = (t0, t1)."""
    from videoadapt.processors.synthetic_audio import synthesize_tones

    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=SR)
        audio.layout = "mono"
        for i in range(round(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(video_start * 1000) + 100 * i, Fraction(1, 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        wave = synthesize_tones(
            [ToneSpec(1000.0, tone[0] - audio_start, tone[1] - audio_start)], int(seconds * SR), SR
        )
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SR, round(audio_start * SR), Fraction(1, SR)
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


@pytest.mark.parametrize(("video_start", "audio_start"), [(0.0, 0.5), (0.4, 0.0)], ids=["audio-late", "audio-early"])
def test_align_to_video_counts_from_the_first_frame(tmp_path, video_start, audio_start):
    # The tone sounds at container time 1.2 s, i.e. 1.2 - video_start s into the video as `load_video` counts.
    path = offset_video(tmp_path / "offset.mkv", video_start, audio_start, tone=(1.2, 1.8))
    own, meta = load_audio(path)  # default: t = 0 is the first audio sample
    aligned, aligned_meta = load_audio(path, align_to_video=True)
    assert abs(np.flatnonzero(np.abs(own) > 0.25)[0] / SR - (1.2 - audio_start)) < 0.005
    assert abs(np.flatnonzero(np.abs(aligned) > 0.25)[0] / SR - (1.2 - video_start)) < 0.005
    assert meta.source_start == aligned_meta.source_start == pytest.approx(audio_start, abs=1e-3)
    assert (meta.origin, aligned_meta.origin) == (meta.source_start, pytest.approx(video_start))
    if audio_start > video_start:  # silence before the audio starts
        assert len(aligned) == len(own) + round((audio_start - video_start) * SR) and not aligned[: SR // 2].any()
    window, _ = load_audio(path, align_to_video=True, start=1.0, end=1.5)
    np.testing.assert_array_equal(window, aligned[SR : 3 * SR // 2])


def test_align_to_video_needs_a_video_stream(tmp_path):
    path = write_tone_audio(tmp_path / "tone.wav", [ToneSpec(440.0, 0.0, 1.0)], duration=1.0)
    with pytest.raises(MediaError, match="no video stream"):
        load_audio(path, align_to_video=True)
