"""Seek-based video decoding with PyAV: decode only what a sampler asks for.

Shape legend:
    F   frames in the video (presentation order)
    N   frames returned
    H W frame height and width
    3   RGB channels (uint8)

How it works. `probe_video` demuxes the stream once (packets only, no decoding) to learn every frame's
presentation time and where the keyframes are. `load_video` then, for each requested frame in time order,
either keeps decoding forward (when no keyframe lies between the last decoded frame and the target) or seeks
to the nearest keyframe at or before the target and decodes from there. Frames come out bit-identical to a
full decode that picks the same presentation indices, because the same decoder produces them from the same
keyframe-anchored state.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import av
import numpy as np

from videoadapt.processors.errors import MediaError
from videoadapt.processors.sampling import FpsSampler, FrameSampler, TimestampSampler, UniformSampler, VideoIndex


__all__ = ["VideoMetadata", "load_video", "open_media", "probe_video"]

_INDEX_CACHE: OrderedDict[tuple, VideoIndex] = OrderedDict()
_INDEX_CACHE_SIZE = 64


@dataclass(frozen=True)
class VideoMetadata:
    """What `load_video` returns beside the frames.

    Attributes:
        path: the file.
        fps: average frame rate of the source.
        duration: seconds, first frame's start to last frame's end.
        total_frames: frames in the source (presentation order).
        width, height: source frame size.
        frame_indices: [N] presentation indices of the returned frames, in the sampler's order.
        timestamps: [N] their start times in seconds from the first frame.
    """

    path: str
    fps: float
    duration: float
    total_frames: int
    width: int
    height: int
    frame_indices: np.ndarray
    timestamps: np.ndarray


def open_media(path: str | os.PathLike) -> av.container.InputContainer:
    """Open a media file, turning every failure into a `MediaError` that names the path and the reason."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(path, "no such file; check the path.")
    if os.path.isdir(path):
        raise MediaError(path, "is a directory, not a media file.")
    try:
        return av.open(path)
    except av.error.FFmpegError as exc:
        raise MediaError(
            path, f"not a media file PyAV can read, or truncated/corrupt ({exc.__class__.__name__}: {exc})."
        ) from exc


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(path, "has no video stream; pass a video file (audio-only files go to `load_audio`).")
    return container.streams.video[0]


def _build_index(path: str) -> VideoIndex:
    with open_media(path) as container:
        stream = _video_stream(container, path)
        pts, key = [], []
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                pts.append(packet.pts)
                key.append(packet.is_keyframe)
        except av.error.FFmpegError as exc:
            raise MediaError(path, f"corrupt or truncated video stream ({exc}).") from exc
        declared = stream.frames  # 0 when the container does not say
        if not pts:
            hint = f" although its header declares {declared}; the file is truncated" if declared else ""
            raise MediaError(path, f"the video stream has zero frames{hint}.")
        if declared and len(pts) < declared:
            raise MediaError(
                path, f"truncated: the header declares {declared} frames but only {len(pts)} are in the file."
            )
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        pts_sorted = np.asarray(pts, dtype=np.int64)[order]
        keys = np.asarray(key, dtype=bool)[order]
        if not keys.any():
            raise MediaError(path, "the video stream has no keyframe to start decoding from; the file is corrupt.")
        time_base = float(stream.time_base)
        span = (pts_sorted[-1] - pts_sorted[0]) * time_base
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else max(len(pts) - 1, 1) / max(span, 1e-9)
        last_length = (pts_sorted[-1] - pts_sorted[-2]) * time_base if len(pts) > 1 else 1.0 / fps
        return VideoIndex(
            path=path,
            pts=pts_sorted,
            keyframe_pts=pts_sorted[keys],
            time_base=time_base,
            fps=fps,
            duration=float(span + last_length),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
        )


def probe_video(path: str | os.PathLike) -> VideoIndex:
    """Demux (never decode) a video to index its frames; cached per (path, size, mtime)."""
    path = os.fspath(path)
    stat = os.stat(path) if os.path.isfile(path) else None
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns) if stat else None
    if key is not None and key in _INDEX_CACHE:
        _INDEX_CACHE.move_to_end(key)
        return _INDEX_CACHE[key]
    index = _build_index(path)
    if key is not None:
        _INDEX_CACHE[key] = index
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    return index


def _make_sampler(sampler, num_frames, fps, timestamps) -> FrameSampler:
    given = dict(sampler=sampler, num_frames=num_frames, fps=fps, timestamps=timestamps)
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) != 1:
        raise ValueError(
            f"pass exactly one of `sampler`, `num_frames`, `fps`, `timestamps`; got {chosen or 'none'}. "
            "Example: `load_video(path, num_frames=32)`."
        )
    if sampler is not None:
        if not isinstance(sampler, FrameSampler):
            raise TypeError(f"`sampler` must be callable as sampler(VideoIndex) -> indices, got {type(sampler)}.")
        return sampler
    if num_frames is not None:
        return UniformSampler(num_frames)
    if fps is not None:
        return FpsSampler(fps)
    return TimestampSampler(timestamps)


def _decode_targets(container, stream, index: VideoIndex, targets: np.ndarray, path: str) -> dict[int, np.ndarray]:
    """Decode the sorted unique presentation indices `targets`; returns index -> [H, W, 3] uint8."""
    out: dict[int, np.ndarray] = {}
    frames = None  # the live decode iterator, resumed while no keyframe lies before the next target
    last_pts = None  # pts of the last frame it produced
    for target in targets.tolist():
        target_pts = int(index.pts[target])
        keyframe_pts = int(index.keyframe_pts[np.searchsorted(index.keyframe_pts, target_pts, side="right") - 1])
        # Seek to the keyframe, or (second try, if that seek landed past the target) to the start.
        for seek_pts in (keyframe_pts, int(index.pts[0])):
            if frames is None or last_pts is None or keyframe_pts > last_pts:
                container.seek(seek_pts, stream=stream, backward=True)
                frames, last_pts = container.decode(stream), None
            frame = None
            try:
                for candidate in frames:
                    if candidate.pts is None:
                        continue
                    last_pts = candidate.pts
                    if candidate.pts >= target_pts:
                        frame = candidate
                        break
            except av.error.FFmpegError as exc:
                raise MediaError(path, f"corrupt or truncated video data near pts {target_pts} ({exc}).") from exc
            if frame is not None and frame.pts == target_pts:
                out[target] = frame.to_ndarray(format="rgb24")
                break
            frames = None
        else:
            raise MediaError(path, f"frame {target} (pts {target_pts}) could not be decoded; the file is corrupt.")
    return out


def load_video(
    path: str | os.PathLike,
    sampler: FrameSampler | None = None,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    timestamps: list[float] | None = None,
) -> tuple[np.ndarray, VideoMetadata]:
    """Decode the frames a sampler picks, seeking instead of decoding the whole video.

    Args:
        path: a video file PyAV can read.
        sampler: a `FrameSampler`; or use exactly one of the shortcuts below.
        num_frames: uniform sampling of this many frames (`UniformSampler`).
        fps: fixed-rate sampling (`FpsSampler`).
        timestamps: frames shown at these times in seconds (`TimestampSampler`).

    Returns:
        frames: [N, H, W, 3] uint8 RGB in the sampler's order; metadata: `VideoMetadata`.

    Raises:
        MediaError: missing/non-media/corrupt file, zero frames, timestamps outside the video, too many frames.
    """
    path = os.fspath(path)
    chosen = _make_sampler(sampler, num_frames, fps, timestamps)
    index = probe_video(path)
    indices = np.asarray(chosen(index), dtype=np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= index.total_frames:
        raise MediaError(path, f"the sampler returned indices outside [0, {index.total_frames}): {indices.tolist()}.")
    targets = np.unique(indices)
    with open_media(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        decoded = _decode_targets(container, stream, index, targets, path)
    frames = np.stack([decoded[i] for i in indices.tolist()])
    metadata = VideoMetadata(
        path=path,
        fps=index.fps,
        duration=index.duration,
        total_frames=index.total_frames,
        width=index.width,
        height=index.height,
        frame_indices=indices,
        timestamps=index.frame_times[indices],
    )
    return frames, metadata
