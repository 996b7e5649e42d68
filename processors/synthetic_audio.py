"""Synthetic audio: sine tones over time intervals, silence elsewhere, written with PyAV.

Used by `videoadapt.processors.synthetic` for the audio track of synthetic videos and on its own
for standalone audio files (tests, demo, benchmarks).

Shape legend:
    C - audio channels
    S - audio samples
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from videoadapt.processors.atomic import atomic_write


__all__ = ["AUDIO_FORMATS", "ToneSpec", "synthesize_tones", "write_tone_audio"]

# suffix -> (container format, codec); `write_tone_audio` picks by the file's suffix.
AUDIO_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("wav", "pcm_s16le"),
    ".flac": ("flac", "flac"),
    ".m4a": ("mp4", "aac"),
    ".mp3": ("mp3", "libmp3lame"),
}

_RAMP_SECONDS = 0.005  # short linear fade in/out so tone edges do not click


@dataclass(frozen=True)
class ToneSpec:
    """A sine tone of `frequency` Hz from `start` to `end` seconds (amplitude in [0, 1], full scale = 1)."""

    frequency: float
    start: float
    end: float
    amplitude: float = 0.5

    def __post_init__(self):
        if not self.frequency > 0:
            raise ValueError(f"`frequency` must be > 0 Hz, got {self.frequency}.")
        if not 0 <= self.start < self.end:
            raise ValueError(
                f"`start` and `end` must satisfy 0 <= start < end, got start={self.start}, end={self.end}."
            )
        if not 0 < self.amplitude <= 1:
            raise ValueError(f"`amplitude` must be in (0, 1], got {self.amplitude}.")


def synthesize_tones(tones: Sequence[ToneSpec], num_samples: int, sample_rate: int, channels: int = 1) -> np.ndarray:
    """Sum of the tones, identical in every channel, float32 `[C, S]`; overlapping tones add (clipped to [-1, 1])."""
    mono = np.zeros(num_samples, dtype=np.float64)  # (S,)
    ramp = max(1, round(_RAMP_SECONDS * sample_rate))
    for tone in tones:
        s0, s1 = round(tone.start * sample_rate), min(round(tone.end * sample_rate), num_samples)
        if s1 <= s0:
            continue
        idx = np.arange(s0, s1)
        envelope = np.minimum(1.0, np.minimum(idx - s0 + 1, s1 - idx) / ramp)
        mono[s0:s1] += tone.amplitude * envelope * np.sin(2 * np.pi * tone.frequency * idx / sample_rate)
    mono = np.clip(mono, -1.0, 1.0).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(mono, (channels, num_samples)))  # (C, S)


def _layout(channels: int) -> str:
    if channels not in (1, 2):
        raise ValueError(f"`channels` must be 1 (mono) or 2 (stereo), got {channels}.")
    return "mono" if channels == 1 else "stereo"


class _ToneTrack:
    """Feeds a `[C, S]` waveform to an audio stream of an open output container, chunk by chunk."""

    def __init__(self, container: av.container.OutputContainer, codec: str, waveform: np.ndarray, sample_rate: int):
        self.container, self.waveform, self.sample_rate = container, waveform, sample_rate
        self.stream = container.add_stream(codec, rate=sample_rate)
        self.stream.layout = _layout(waveform.shape[0])
        self.written = 0

    def write_until(self, sample: int) -> None:
        """Encode and mux the samples `[written, sample)`; PyAV re-chunks them to the codec's frame size."""
        sample = min(sample, self.waveform.shape[1])
        if sample <= self.written:
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(self.waveform[:, self.written : sample]),
            format="fltp",
            layout=self.stream.layout.name,
        )
        frame.sample_rate, frame.pts = self.sample_rate, self.written
        self.container.mux(self.stream.encode(frame))
        self.written = sample

    def close(self) -> None:
        self.write_until(self.waveform.shape[1])
        self.container.mux(self.stream.encode(None))  # flush the encoder


def write_tone_audio(
    path: str | os.PathLike,
    tones: Sequence[ToneSpec],
    duration: float,
    sample_rate: int = 16000,
    channels: int = 1,
) -> Path:
    """Write a standalone audio file of `duration` seconds holding `tones` (silence elsewhere).

    Args:
        path: output file; its suffix picks the format (see `AUDIO_FORMATS`: .wav, .flac, .m4a, .mp3).
        tones: the tones to synthesise.
        duration: length in seconds (rounded to whole samples).
        sample_rate: samples per second.
        channels: 1 (mono) or 2 (stereo, same signal in both channels).

    Returns:
        The path written. The file is written to a temporary name in the same folder, then renamed.
    """
    path = Path(path)
    if path.suffix.lower() not in AUDIO_FORMATS:
        raise ValueError(f"`path` must end in one of {sorted(AUDIO_FORMATS)}, got {path.name!r}.")
    if not duration > 0:
        raise ValueError(f"`duration` must be > 0 seconds, got {duration}.")
    fmt, codec = AUDIO_FORMATS[path.suffix.lower()]
    waveform = synthesize_tones(tones, round(duration * sample_rate), sample_rate, channels)

    def write(tmp: str) -> None:
        with av.open(tmp, "w", format=fmt) as container:
            track = _ToneTrack(container, codec, waveform, sample_rate)
            for end in range(sample_rate, waveform.shape[1] + sample_rate, sample_rate):  # 1 s chunks
                track.write_until(end)
            track.close()

    atomic_write(path, write)
    return path
