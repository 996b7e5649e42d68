"""Frame samplers: which presentation frames of a video to decode.

A sampler sees a `VideoIndex` (every frame's presentation time, read by demuxing alone, no decoding) and
returns frame indices into presentation order. Index i is the i-th frame a full decode would output, so a
sampler's choice means the same frame whatever decoder serves it.

Rules (see docs/fidelity.md):
- uniform N:      i_k = floor(k * F / N), k = 0..N-1, F = total frames (transformers' `default_sample_indices_fn`).
- fixed fps r:    t_k = k / r for every t_k < duration; frame shown at t_k.
- timestamps t_k: the frame shown at t_k, i.e. the last frame whose start time <= t_k; t_k must lie in [0, duration].
"Start time <= t" allows 1 us of float rounding (`TIME_TOLERANCE`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

from videoadapt.processors.errors import MediaError


__all__ = [
    "FpsSampler",
    "FrameSampler",
    "SegmentSampler",
    "TimestampSampler",
    "UniformSampler",
    "VideoIndex",
    "frames_shown_at",
]


@dataclass(frozen=True)
class VideoIndex:
    """What demuxing a video stream tells us, without decoding it.

    Attributes:
        path: the file.
        pts: [F] int64 presentation timestamps of the frames, sorted (stream time base units).
        keyframe_pts: [K] int64 presentation timestamps of the keyframes (seek points), sorted.
        time_base: seconds per pts unit.
        fps: average frame rate of the stream.
        duration: seconds from the first frame's start to the last frame's end.
        width, height: coded frame size.
        keyframe_dts: [K] int64 decode timestamps of the keyframes, in the order of `keyframe_pts` (their pts where
            the container gives no dts); None: unknown. Demuxers that seek by decode time (MPEG-TS) need these.
    """

    path: str
    pts: np.ndarray
    keyframe_pts: np.ndarray
    time_base: float
    fps: float
    duration: float
    width: int
    height: int
    keyframe_dts: np.ndarray | None = None

    @property
    def total_frames(self) -> int:
        return len(self.pts)

    @property
    def frame_times(self) -> np.ndarray:
        """[F] float64 start time of each frame in seconds, the first frame at 0."""
        return (self.pts - self.pts[0]) * self.time_base


@runtime_checkable
class FrameSampler(Protocol):
    """Anything that maps a `VideoIndex` to presentation-frame indices (int64 [N], any order, repeats allowed)."""

    def __call__(self, index: VideoIndex) -> np.ndarray: ...


# Frame start times are pts * time_base in floats: 3 * 0.1 = 0.30000000000000004 > 3 / 10. A frame that starts within
# this many seconds after t counts as shown at t, so t = k / fps never lands on the frame before.
TIME_TOLERANCE = 1e-6


def frames_shown_at(index: VideoIndex, times: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time: the last frame whose start time is <= t (+ `TIME_TOLERANCE`)."""
    idx = np.searchsorted(index.frame_times, np.asarray(times, dtype=np.float64) + TIME_TOLERANCE, side="right") - 1
    return np.clip(idx, 0, index.total_frames - 1).astype(np.int64)


def _is_count(value) -> bool:
    """An int >= 1 (numpy ints included, bools not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) and value >= 1


@dataclass(frozen=True)
class UniformSampler:
    """`num_frames` frames spread evenly: i_k = floor(k * F / N) (transformers' uniform rule)."""

    num_frames: int

    def __post_init__(self):
        if not _is_count(self.num_frames):
            raise ValueError(f"`num_frames` must be an int >= 1, got {self.num_frames!r}.")
        object.__setattr__(self, "num_frames", int(self.num_frames))  # numpy ints too

    def __call__(self, index: VideoIndex) -> np.ndarray:
        total = index.total_frames
        if self.num_frames > total:
            raise MediaError(
                index.path,
                f"asked for {self.num_frames} uniform frames but the video has only {total}; "
                f"pass `num_frames` <= {total} or sample by `fps`.",
            )
        return np.arange(self.num_frames, dtype=np.int64) * total // self.num_frames


@dataclass(frozen=True)
class FpsSampler:
    """The frames shown at t = 0, 1/fps, 2/fps, ... (every t < duration); at most `max_frames`, then uniform."""

    fps: float
    max_frames: int | None = None

    def __post_init__(self):
        fps = self.fps
        if not isinstance(fps, numbers.Real) or isinstance(fps, bool) or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"`fps` must be a finite number > 0, got {self.fps!r}.")
        if self.max_frames is not None and not _is_count(self.max_frames):
            raise ValueError(f"`max_frames` must be None or an int >= 1, got {self.max_frames!r}.")
        object.__setattr__(self, "fps", fps.item() if isinstance(fps, np.generic) else fps)  # numpy numbers too
        object.__setattr__(self, "max_frames", None if self.max_frames is None else int(self.max_frames))

    def __call__(self, index: VideoIndex) -> np.ndarray:
        count = max(1, math.ceil(index.duration * self.fps - 1e-9))
        times = np.arange(count, dtype=np.float64) / self.fps
        if self.max_frames is not None and count > self.max_frames:
            times = times[np.arange(self.max_frames, dtype=np.int64) * count // self.max_frames]
        return frames_shown_at(index, times)


@dataclass(frozen=True)
class TimestampSampler:
    """The frames shown at explicit `timestamps` (seconds from the first frame), each within [0, duration]."""

    timestamps: Sequence[float]

    def __post_init__(self):
        times = np.asarray(self.timestamps, dtype=np.float64)
        if times.ndim != 1 or times.size == 0 or not np.isfinite(times).all():
            raise ValueError(
                f"`timestamps` must be a non-empty 1D sequence of finite seconds, got {self.timestamps!r}."
            )

    def __call__(self, index: VideoIndex) -> np.ndarray:
        times = np.asarray(self.timestamps, dtype=np.float64)
        outside = times[(times < 0) | (times > index.duration)]
        if outside.size:
            raise MediaError(
                index.path,
                f"requested timestamps {outside.tolist()} s lie outside the video [0, {index.duration:.3f}] s; "
                "pass timestamps within the video's duration.",
            )
        return frames_shown_at(index, times)


@dataclass(frozen=True)
class SegmentSampler:
    """Another sampler run on the segment [start, end) seconds of a video only (a manifest row's `timestamps`).

    The inner sampler sees a `VideoIndex` of the frames that start inside the segment, its times re-based to the
    first of them (which starts less than one frame after `start`), so "uniform 8" picks 8 frames spread over the
    segment and "fps 1" one per second of it.
    """

    inner: FrameSampler
    start: float
    end: float

    def __post_init__(self):
        if not (math.isfinite(self.start) and math.isfinite(self.end) and 0 <= self.start < self.end):
            raise ValueError(
                f"a segment needs 0 <= start < end in seconds, got start={self.start!r}, end={self.end!r}; "
                "fix the row's `timestamps`."
            )

    def __call__(self, index: VideoIndex) -> np.ndarray:
        times = index.frame_times
        inside = np.flatnonzero((times >= self.start - TIME_TOLERANCE) & (times < self.end - TIME_TOLERANCE))
        if inside.size == 0:
            raise MediaError(
                index.path,
                f"the segment [{self.start}, {self.end}) s holds no frame of this {index.duration:.3f} s video; "
                "pass timestamps within the video.",
            )
        first, last = int(inside[0]), int(inside[-1])
        end = min(self.end, index.duration) - times[first]
        sub = replace(index, pts=index.pts[first : last + 1], duration=float(end))
        return np.asarray(self.inner(sub), dtype=np.int64) + first
