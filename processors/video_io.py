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

Seeking goes to the keyframe's pts; when the demuxer lands anywhere but on a keyframe at or before it (MPEG-TS
searches by decode time), to its dts, then to the first keyframe, so frames never come from a decoder that started
mid-GOP. Frames an mp4 edit list hides (a cut made without re-encoding) are seek points, not frames. Rotation: frames
come out as players show them, turned by the stream's display matrix (portrait phone videos are stored landscape
with a 90 or 270 degree rotation); `VideoMetadata.width/height` are those of the returned frames.
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
        width, height: size of the returned frames (the source's display size: its rotation applied).
        frame_indices: [N] presentation indices of the returned frames, in the sampler's order.
        timestamps: [N] their start times in seconds from the first frame.
        rotation: degrees counter-clockwise the source's display matrix turns its coded frames (0, 90, 180, -90);
            the returned frames are already turned.
    """

    path: str
    fps: float
    duration: float
    total_frames: int
    width: int
    height: int
    frame_indices: np.ndarray
    timestamps: np.ndarray
    rotation: int = 0


def open_media(path: str | os.PathLike) -> av.container.InputContainer:
    """Open a media file, turning every failure into a `MediaError` that names the path and the reason."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(path, "no such file; check the path.")
    if os.path.isdir(path):
        raise MediaError(path, "is a directory, not a media file.")
    try:  # absolute, so FFmpeg never reads a relative name's "cam1:" prefix as a protocol ("cam1:front.mp4")
        return av.open(os.path.abspath(path))
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
        pts, dts, key, shown = [], [], [], []
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                pts.append(packet.pts)
                dts.append(packet.pts if packet.dts is None else packet.dts)
                key.append(packet.is_keyframe)
                # An edit list (mp4 cut without re-encoding) hides the frames before its start: they are decoded,
                # as references, but never output. They are seek points, not frames.
                shown.append(not packet.is_discard)
        except av.error.FFmpegError as exc:
            raise MediaError(path, f"corrupt or truncated video stream ({exc}).") from exc
        declared = stream.frames  # 0 when the container does not say
        if not any(shown):
            hint = f" although its header declares {declared}; the file is truncated" if declared else ""
            raise MediaError(path, f"the video stream has zero frames{hint}.")
        if declared and len(pts) < declared:
            raise MediaError(
                path, f"truncated: the header declares {declared} frames but only {len(pts)} are in the file."
            )
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        all_pts = np.asarray(pts, dtype=np.int64)[order]
        keys, frames = np.asarray(key, dtype=bool)[order], np.asarray(shown, dtype=bool)[order]
        if not keys.any():
            raise MediaError(path, "the video stream has no keyframe to start decoding from; the file is corrupt.")
        pts_sorted = all_pts[frames]
        time_base = float(stream.time_base)
        span = (pts_sorted[-1] - pts_sorted[0]) * time_base
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else max(len(pts_sorted) - 1, 1) / max(span, 1e-9)
        last_length = (pts_sorted[-1] - pts_sorted[-2]) * time_base if len(pts_sorted) > 1 else 1.0 / fps
        return VideoIndex(
            path=path,
            pts=pts_sorted,
            keyframe_pts=all_pts[keys],
            time_base=time_base,
            fps=fps,
            duration=float(span + last_length),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            keyframe_dts=np.asarray(dts, dtype=np.int64)[order][keys],
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


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns of the frame's display matrix (0..3; flips are not applied)."""
    return round((frame.rotation or 0) / 90) % 4


class _Decoder:
    """Frames in presentation order from a seek point on; `last_pts` is the pts of the last frame it produced."""

    def __init__(self, container, stream, seek_ts: int, keyframe_pts: int):
        container.seek(seek_ts, stream=stream, backward=True)
        self.packets = container.demux(stream)
        self.first = next((p for p in self.packets if p.size), None)
        # A good seek lands on a keyframe at or before the one we want; demuxers that search by a timestamp other
        # than pts, or not by keyframes (MPEG-TS), may land elsewhere, where the decoder would drop frames.
        landed = self.first is not None and self.first.is_keyframe
        self.ok = landed and (self.first.pts is None or self.first.pts <= keyframe_pts)
        self.frames, self.last_pts = self._frames(), None

    def _frames(self):
        yield from self.first.decode()
        for packet in self.packets:  # the last (empty) packet flushes the decoder
            yield from packet.decode()

    def frame_at(self, target_pts: int) -> av.VideoFrame | None:
        """Decodes up to the first frame at or after `target_pts`; returns it if it is the one at `target_pts`."""
        for frame in self.frames:
            if frame.pts is None:
                continue
            self.last_pts = frame.pts
            if frame.pts >= target_pts:
                return frame if frame.pts == target_pts else None
        return None


def _decode_targets(
    container, stream, index: VideoIndex, targets: np.ndarray, path: str
) -> tuple[dict[int, np.ndarray], int]:
    """Decode the sorted unique presentation indices `targets`; returns (index -> upright [H, W, 3] uint8, rotation
    in degrees counter-clockwise)."""
    out: dict[int, np.ndarray] = {}
    turns = 0
    keyframe_dts = index.keyframe_pts if index.keyframe_dts is None else index.keyframe_dts
    decoder = None  # the live decoder, resumed while no keyframe lies between its last frame and the next target
    try:
        for target in targets.tolist():
            target_pts = int(index.pts[target])
            k = max(int(np.searchsorted(index.keyframe_pts, target_pts, side="right")) - 1, 0)
            keyframe_pts = int(index.keyframe_pts[k])
            frame = None
            if decoder is not None and decoder.last_pts is not None and keyframe_pts <= decoder.last_pts:
                frame = decoder.frame_at(target_pts)
            # Seek to the keyframe by its pts, else by its dts, else to the first keyframe (by pts, then dts).
            seeks = (keyframe_pts, int(keyframe_dts[k]), int(index.keyframe_pts[0]), int(keyframe_dts[0]))
            for seek_ts in dict.fromkeys(seeks) if frame is None else ():
                decoder = _Decoder(container, stream, seek_ts, keyframe_pts)
                frame = decoder.frame_at(target_pts) if decoder.ok else None
                if frame is not None:
                    break
            if frame is None:
                raise MediaError(path, f"frame {target} (pts {target_pts}) could not be decoded; the file is corrupt.")
            turns = _quarter_turns(frame)
            out[target] = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), turns))  # (H, W, 3)
    except av.error.FFmpegError as exc:
        raise MediaError(path, f"corrupt or truncated video data ({exc}).") from exc
    return out, (0, 90, 180, -90)[turns]


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
        decoded, rotation = _decode_targets(container, stream, index, targets, path)
    frames = np.stack([decoded[i] for i in indices.tolist()])
    metadata = VideoMetadata(
        path=path,
        fps=index.fps,
        duration=index.duration,
        total_frames=index.total_frames,
        width=frames.shape[2],
        height=frames.shape[1],
        frame_indices=indices,
        timestamps=index.frame_times[indices],
        rotation=rotation,
    )
    return frames, metadata
