"""Audio side channel: a video's own audio track or a separate audio file, as 16 kHz mono clips.

`load_audio` decodes with PyAV, resamples with `av.AudioResampler` (flushed, so the tail is kept) and
downmixes to mono as the mean of the channels. `clip_audio` cuts the waveform into 2 s clips at a 1 s
stride (the PAVE / ImageBind convention).

AAC priming and padding: FFmpeg's AAC encoder prepends 1024 priming samples and pads the last frame
to 1024 samples. In mp4 the edit list makes the demuxer drop the priming samples, so decoding starts
at t = 0, but the end padding is still decoded. `load_audio` trims it by cutting the waveform to the
stream's declared duration, so an N-second track gives exactly `N * sample_rate` samples.

Time zero: by default the track's first sample. A video's streams need not start together (MPEG-TS, edited or
recorded files); `align_to_video=True` counts time from the first video frame instead, as `load_video` does.

Shape legend:
    C - audio channels
    S - audio samples
    K - clips
    L - samples per clip
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av
import numpy as np

from videoadapt.processors.errors import MediaError
from videoadapt.processors.video_io import open_media, probe_video


__all__ = ["AudioMetadata", "clip_audio", "clip_start_times", "load_audio"]

_NO_AUDIO = (
    "the file has no audio stream; give the audio as a separate file (e.g. a .wav next to the video) "
    "or leave the audio side channel out for this sample"
)


@dataclass(frozen=True)
class AudioMetadata:
    """What `load_audio` read. `duration` and `num_samples` describe the returned waveform."""

    sample_rate: int  # of the returned waveform
    num_samples: int
    duration: float  # seconds
    start: float  # time of the first returned sample, seconds from t = 0 (see `origin`)
    source_sample_rate: int
    source_channels: int
    source_codec: str
    source_duration: float | None  # the stream's declared duration, seconds (None if the container has none)
    source_start: float  # container time of the track's first sample, seconds
    origin: float  # container time of t = 0: `source_start`, or the first video frame's with `align_to_video`


def _decode(
    path: str, container: av.container.InputContainer, sample_rate: int, stop: int | None, origin: float | None
) -> tuple[np.ndarray, float]:
    """Decode the first audio stream to `[C, S]` float32 at `sample_rate`, stopping past sample `stop` counted from
    `origin` (container seconds; None: the first sample). Also returns the container time of the first sample."""
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)  # keep the channels
    chunks, total, first_time = [], 0, None
    try:
        for frame in container.decode(stream):
            if first_time is None:  # after the decoder dropped the codec's priming samples
                first_time = float(frame.time) if frame.time is not None else _stream_start(stream)
                if stop is not None and origin is not None:
                    stop = stop + round((origin - first_time) * sample_rate)  # the same instant, in track samples
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())  # (C, s)
                total += out.samples
            if stop is not None and total >= stop + sample_rate // 10:  # margin: resampler filter tail
                break
        chunks.extend(out.to_ndarray() for out in resampler.resample(None))  # flush: the last samples
    except av.FFmpegError as error:
        raise MediaError(path, f"corrupt or truncated audio stream ({error})") from error
    if not chunks:
        raise MediaError(path, "the audio stream decodes to no samples; the file is empty or corrupt")
    return np.concatenate(chunks, axis=1), first_time  # (C, S)


def _stream_start(stream: av.stream.Stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _first_frame_time(path: str) -> float:
    """Container time in seconds of the first video frame: t = 0 of `load_video`'s timestamps."""
    index = probe_video(path)
    return float(index.pts[0] * index.time_base)


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int = 16000,
    start: float | None = None,
    end: float | None = None,
    align_to_video: bool = False,
) -> tuple[np.ndarray, AudioMetadata]:
    """Load the audio of a video or audio file as a mono float32 waveform.

    Args:
        path: a video with an audio track, or an audio file (wav, flac, m4a, mp3, ...). The first audio
            stream is used; t = 0 is its first sample (see `align_to_video`).
        sample_rate: output sample rate in Hz.
        start: window start in seconds (default 0; rounded to the nearest sample); must be before the end of the audio.
        end: window end in seconds (default: end of the audio; clipped to it).
        align_to_video: count time from the first frame of the file's own video stream (the `timestamps` of
            `load_video`) instead of from the first audio sample. Streams of one file need not start together
            (MPEG-TS, edited or recorded files): audio that starts after the first frame is preceded by silence,
            audio before it is dropped. Use it for a video's own audio track.

    Returns:
        `(waveform, metadata)`: waveform `[S]` float32 in [-1, 1], the mean of the source channels.

    Raises:
        MediaError: missing file, not a media file, no audio stream (or no video stream with `align_to_video`),
            corrupt/truncated audio, `start` past the end of the audio.
    """
    path = os.fspath(path)
    if sample_rate <= 0:
        raise ValueError(f"`sample_rate` must be > 0, got {sample_rate}.")
    if (start is not None and start < 0) or (end is not None and end <= (start or 0)):
        raise ValueError(f"need 0 <= `start` < `end`, got start={start}, end={end}.")
    with open_media(path) as container:
        if not container.streams.audio:
            raise MediaError(path, _NO_AUDIO)
        origin = _first_frame_time(path) if align_to_video else None
        stream = container.streams.audio[0]
        declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        stop = None if end is None else round(end * sample_rate)
        channels, source_start = _decode(path, container, sample_rate, stop, origin)  # (C, S)
        codec, source_rate, source_channels = stream.codec_context.name, stream.sample_rate, stream.channels
    if declared is not None:  # drop the codec's end padding (AAC: up to one frame)
        if stop is None and channels.shape[1] < (declared - max(0.5, 0.02 * declared)) * sample_rate:
            decoded = channels.shape[1] / sample_rate
            raise MediaError(path, f"truncated audio: decoded {decoded:.3f} s of the declared {declared:.3f} s")
        channels = channels[:, : round(declared * sample_rate)]
    waveform = channels.mean(axis=0, dtype=np.float32)  # (S,)
    origin = source_start if origin is None else origin
    shift = round((source_start - origin) * sample_rate)  # > 0: the audio starts after t = 0
    if -shift >= waveform.shape[0]:
        raise MediaError(path, "the audio track ends before the first video frame; it holds no audio for the video")
    if shift > 0:
        waveform = np.concatenate([np.zeros(shift, dtype=np.float32), waveform])  # silence until the audio starts
    elif shift < 0:
        waveform = waveform[-shift:]  # drop the audio before t = 0
    first = 0 if start is None else round(start * sample_rate)
    if first >= waveform.shape[0]:
        length = waveform.shape[0] / sample_rate
        raise MediaError(path, f"`start`={start} s is at or past the end of the audio ({length:.3f} s)")
    waveform = np.ascontiguousarray(waveform[first:stop])
    metadata = AudioMetadata(
        sample_rate=sample_rate,
        num_samples=waveform.shape[0],
        duration=waveform.shape[0] / sample_rate,
        start=first / sample_rate,
        source_sample_rate=source_rate,
        source_channels=source_channels,
        source_codec=codec,
        source_duration=declared,
        source_start=source_start,
        origin=origin,
    )
    return waveform, metadata


def _clip_geometry(
    num_samples: int, sample_rate: int, clip_seconds: float, stride_seconds: float
) -> tuple[int, int, int]:
    """(K clips, L samples per clip, stride in samples)."""
    clip, stride = round(clip_seconds * sample_rate), round(stride_seconds * sample_rate)
    if clip <= 0 or stride <= 0:
        raise ValueError(
            f"`clip_seconds` and `stride_seconds` must give >= 1 sample, got {clip_seconds}, {stride_seconds}."
        )
    if num_samples <= 0:
        raise ValueError(f"the waveform must hold at least one sample, got {num_samples}.")
    return (num_samples - clip) // stride + 1 if num_samples >= clip else 1, clip, stride


def clip_start_times(
    num_samples: int, sample_rate: int = 16000, clip_seconds: float = 2.0, stride_seconds: float = 1.0
) -> np.ndarray:
    """Start times in seconds `[K]` of the clips `clip_audio` cuts from a waveform of `num_samples` samples."""
    k, _, stride = _clip_geometry(num_samples, sample_rate, clip_seconds, stride_seconds)
    return np.arange(k) * stride / sample_rate


def clip_audio(
    waveform: np.ndarray, sample_rate: int = 16000, clip_seconds: float = 2.0, stride_seconds: float = 1.0
) -> np.ndarray:
    """Cut a waveform `[S]` into overlapping clips `[K, L]` (L = clip_seconds * sample_rate).

    Rule, for a waveform of D seconds: clip k covers `[k * stride, k * stride + clip)` for k = 0..K-1.
    If D >= clip, K = floor((D - clip) / stride) + 1 and only full clips are kept (a tail shorter than a
    stride is dropped): with 2 s clips at 1 s stride, 10 s -> 9 clips, 10.5 s -> 9, 2 s -> 1, i.e. about
    D - 1 clips, as PAVE's ImageBind audio features. If D < clip, one clip zero-padded at the end.
    `clip_start_times` gives the start of each clip.
    """
    if waveform.ndim != 1:
        raise ValueError(f"`waveform` must be 1-D [S], got shape {tuple(waveform.shape)}.")
    k, clip, stride = _clip_geometry(waveform.shape[0], sample_rate, clip_seconds, stride_seconds)
    if waveform.shape[0] < clip:
        return np.pad(waveform, (0, clip - waveform.shape[0]))[None]  # (1, L)
    windows = np.lib.stride_tricks.sliding_window_view(waveform, clip)  # (S - L + 1, L), a view
    return np.ascontiguousarray(windows[: (k - 1) * stride + 1 : stride])  # (K, L)
