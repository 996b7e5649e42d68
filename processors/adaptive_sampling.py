"""Compact's adaptive video sampler (AVS): shot boundaries found at 10 fps turned into a frame budget.

The supplement (section 1.2) fixes the detector (TransNet V2), its input rate (10 fps) and the non-maximum
suppression window (3 s); the rest is ours (docs/fidelity.md):
1. Analysis frames: the frames shown at t = k / `analysis_fps` (`frames_shown_at`: 1 us tolerance for rounded
   stream times; every frame when the video is slower), decoded with PyAV straight to the detector's size (swscale
   bicubic, as ffmpeg's `-s 48x27` does).
2. Cuts: the detector's candidates, then 1D NMS with a centred `nms_window` (kept cuts are >= window / 2 apart).
   A cut at analysis frame i starts a shot at the source frame that analysis frame i shows.
3. Budget B (32): needs B <= F (else `MediaError`, as uniform sampling). When there are more shots than frames
   (S > B), only the B - 1 strongest cuts are kept (ties: earlier), which merges the weakest cuts' shots -> B shots.
   Every shot gets one frame; the other B - S go in proportion to shot length in frames, by largest remainder
   (ties: longer shot, then earlier), never more than a shot's frames (the excess is shared again the same way).
   A single shot therefore gets all B frames.
4. Inside a shot [a, a + n) with k frames: a + floor((j + 1/2) n / k), j = 0..k-1 (centred, so never the frame at
   a cut). Frames come out in time order, all distinct.

`AdaptiveSampler` is a `FrameSampler`: `load_video(path, sampler=AdaptiveSampler(32))` decodes the chosen frames and
`metadata.timestamps` holds their times; `AdaptiveSampler.plan(probe_video(path))` returns every intermediate step.
`make_sampler` / `sampler_to_dict` turn processor options ("uniform", "fps", "avs", or a dict) into samplers and back.

Shape legend:
    F   frames of the video (presentation order)
    T   analysis frames
    h w analysis frame size (the detector's `frame_size`)
    C   cuts
    S   shots
    B   frame budget (frames returned)
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from videoadapt.processors.errors import MediaError
from videoadapt.processors.sampling import (
    FpsSampler,
    FrameSampler,
    TimestampSampler,
    UniformSampler,
    VideoIndex,
    frames_shown_at,
)
from videoadapt.processors.shot_detection import CutCandidates, ShotDetector, make_detector, non_maximum_suppression
from videoadapt.processors.video_io import open_media


__all__ = [
    "DEFAULT_BUDGET",
    "SAMPLERS",
    "AdaptiveSampler",
    "AvsPlan",
    "allocate_budget",
    "analysis_indices",
    "decode_analysis_frames",
    "make_sampler",
    "sampler_to_dict",
    "shots_from_cuts",
    "spread_in_shot",
    "strongest_cuts",
]

DEFAULT_BUDGET = 32  # frames per video (the supplement's 32-frame input)


def analysis_indices(index: VideoIndex, fps: float) -> np.ndarray:
    """[T] unique ascending presentation indices of the frames shown at t = k / fps, k = 0.. (t < duration).

    "Shown at t" is `frames_shown_at`'s rule: a frame that starts within `TIME_TOLERANCE` (1 us) after t counts, so
    that float rounding of the stream's times (3 * 0.1 s stored as 0.30000000000000004) does not skip frames when the
    video runs at `fps`. The same frames as `FpsSampler(fps)`, each once."""
    count = max(1, math.ceil(index.duration * fps - 1e-9))
    times = np.arange(count, dtype=np.float64) / fps
    return np.unique(frames_shown_at(index, times))


def decode_analysis_frames(index: VideoIndex, fps: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The frames shown at t = k / fps (`analysis_indices`), decoded at `size` = (width, height).

    Returns:
        frames [T, h, w, 3] uint8 RGB, and their presentation indices [T] int64 (unique, ascending).
    """
    indices = analysis_indices(index, fps)
    wanted = {int(index.pts[i]): k for k, i in enumerate(indices.tolist())}
    width, height = size
    frames = np.empty((len(indices), height, width, 3), dtype=np.uint8)
    reformatter = VideoReformatter()  # one swscale context for every frame (3x faster than frame.to_ndarray(...))
    found = 0
    with open_media(index.path) as container:
        if not container.streams.video:
            raise MediaError(index.path, "has no video stream; pass a video file.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                k = wanted.get(frame.pts)
                if k is None:
                    continue
                small = reformatter.reformat(frame, width, height, "rgb24", interpolation="BICUBIC")
                frames[k] = small.to_ndarray()
                found += 1
                if found == len(indices):
                    break
        except av.error.FFmpegError as exc:
            raise MediaError(index.path, f"corrupt or truncated video data ({exc}).") from exc
    if found != len(indices):
        raise MediaError(
            index.path, f"only {found} of {len(indices)} analysis frames could be decoded; it is corrupt."
        )
    return frames, indices


def shots_from_cuts(starts: np.ndarray, total_frames: int) -> np.ndarray:
    """Shot ranges [S, 2] (start, stop) of frames [0, F) cut at the ascending frame indices `starts` [S - 1]."""
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size and (starts[0] <= 0 or starts[-1] >= total_frames or np.any(np.diff(starts) <= 0)):
        raise ValueError(f"cut frames must be ascending in (0, {total_frames}), got {starts.tolist()}.")
    bounds = np.concatenate([[0], starts, [total_frames]])
    return np.stack([bounds[:-1], bounds[1:]], axis=1)


def strongest_cuts(scores: np.ndarray, count: int) -> np.ndarray:
    """Positions (ascending) of the `count` highest `scores` [C]; ties go to the earlier cut."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    return np.sort(order[: max(count, 0)]).astype(np.int64)


def allocate_budget(lengths: Sequence[int], budget: int) -> np.ndarray:
    """Frames per shot [S] for shots of `lengths` [S] frames: one each, the rest by length (see module docstring).

    Needs S <= budget <= sum(lengths). Exact integer arithmetic: shot s's share of the `left` frames among the
    shots with room is left * n_s / D (D = their total length); its floor is given, then the largest remainders.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or lengths.size == 0 or lengths.min() < 1:
        raise ValueError(f"`lengths` must be a non-empty 1D list of frame counts >= 1, got {lengths.tolist()}.")
    total = int(lengths.sum())
    if not len(lengths) <= budget <= total:
        raise ValueError(
            f"`budget` must be in [S, F] = [{len(lengths)}, {total}] (shots, frames), got {budget}; merge shots or "
            "lower the budget."
        )
    alloc = np.ones(len(lengths), dtype=np.int64)
    while (left := budget - int(alloc.sum())) > 0:
        room = lengths - alloc
        weights = np.where(room > 0, lengths, 0)
        denominator = int(weights.sum())
        full = (room > 0) & (left * weights >= room * denominator)  # share >= room: the shot fills up
        if full.any():
            alloc[full] = lengths[full]
            continue
        base, remainder = np.divmod(left * weights, denominator)
        alloc += base
        extra = left - int(base.sum())
        order = np.lexsort((np.arange(len(lengths)), -lengths, -remainder))
        alloc[[i for i in order.tolist() if room[i] > 0][:extra]] += 1
    return alloc


def spread_in_shot(start: int, length: int, count: int) -> np.ndarray:
    """`count` distinct frames of the shot [start, start + length): start + floor((j + 1/2) * length / count)."""
    if not 1 <= count <= length:
        raise ValueError(f"`count` must be in [1, length] = [1, {length}], got {count}.")
    j = np.arange(count, dtype=np.int64)
    return start + (2 * j + 1) * length // (2 * count)


@dataclass(frozen=True)
class AvsPlan:
    """Every step of one AVS decision.

    Attributes:
        analysis_indices: [T] presentation indices of the analysis frames.
        analysis_times: [T] their start times (s).
        candidates: the detector's cuts before NMS (analysis-frame indices, scores).
        cuts: the cuts after NMS.
        shots: [S, 2] source-frame ranges (start, stop) the budget was spread over (after the S > B merge).
        allocation: [S] frames given to each shot.
        frame_indices: [B] chosen presentation indices, ascending.
        timestamps: [B] their start times (s).
    """

    analysis_indices: np.ndarray
    analysis_times: np.ndarray
    candidates: CutCandidates
    cuts: CutCandidates
    shots: np.ndarray
    allocation: np.ndarray
    frame_indices: np.ndarray
    timestamps: np.ndarray

    @property
    def cut_times(self) -> np.ndarray:
        """[C] times (s) of the cuts after NMS: the start of the first analysis frame of each new shot."""
        return self.analysis_times[self.cuts.frames]

    @property
    def merged(self) -> bool:
        """Whether there were more shots than frames, so that the weakest cuts were dropped."""
        return len(self.shots) < len(self.cuts) + 1


@dataclass(frozen=True)
class AdaptiveSampler:
    """Compact's AVS as a `FrameSampler`: `budget` frames spread over the shots a detector finds.

    Args:
        budget: frames to return (B); the video needs at least that many frames.
        detector: "content" (default, no dependency), "transnetv2" (extra `[avs]`), a dict {"type": name, **args}
            or a `ShotDetector`.
        analysis_fps: rate of the frames the detector sees (10 in the paper).
        nms_window: seconds of the centred NMS window (3 in the paper).
    """

    budget: int = DEFAULT_BUDGET
    detector: Any = field(default="content", compare=False)
    analysis_fps: float = 10.0
    nms_window: float = 3.0
    _detector: ShotDetector = field(init=False, repr=False)  # the resolved detector: equality goes by it

    def __post_init__(self):
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(f"`budget` must be an int >= 1 (frames per video), got {self.budget!r}.")
        if (
            not isinstance(self.analysis_fps, (int, float))
            or not math.isfinite(self.analysis_fps)
            or self.analysis_fps <= 0
        ):
            raise ValueError(
                f"`analysis_fps` must be a finite rate > 0 (frames per second), got {self.analysis_fps!r}."
            )
        if not isinstance(self.nms_window, (int, float)) or not math.isfinite(self.nms_window) or self.nms_window < 0:
            raise ValueError(f"`nms_window` must be a finite number of seconds >= 0, got {self.nms_window!r}.")
        object.__setattr__(self, "_detector", make_detector(self.detector))

    def __call__(self, index: VideoIndex) -> np.ndarray:
        """[B] presentation indices, ascending."""
        return self.plan(index).frame_indices

    def plan(self, index: VideoIndex) -> AvsPlan:
        """Decode the analysis frames of `index`'s video, detect shots and spread the budget over them."""
        self._check_budget(index)
        frames, indices = decode_analysis_frames(index, self.analysis_fps, self._detector.frame_size)
        return self.plan_from_frames(frames, indices, index)

    def plan_from_frames(self, frames: np.ndarray, analysis_indices: np.ndarray, index: VideoIndex) -> AvsPlan:
        """The plan for already decoded analysis frames [T, h, w, 3] showing presentation indices [T] of `index`."""
        self._check_budget(index)
        analysis_indices = np.asarray(analysis_indices, dtype=np.int64)
        if analysis_indices.shape != (len(frames),) or np.any(np.diff(analysis_indices) <= 0):
            raise ValueError(
                f"`analysis_indices` must be [T] = [{len(frames)}] ascending frame indices, got {analysis_indices}."
            )
        times = index.frame_times[analysis_indices]
        candidates = self._detector.detect(frames, times)
        cuts = candidates.select(non_maximum_suppression(times[candidates.frames], candidates.scores, self.nms_window))
        kept = cuts if len(cuts) < self.budget else cuts.select(strongest_cuts(cuts.scores, self.budget - 1))
        shots = shots_from_cuts(analysis_indices[kept.frames], index.total_frames)
        allocation = allocate_budget(shots[:, 1] - shots[:, 0], self.budget)
        chosen = np.concatenate([spread_in_shot(a, b - a, k) for (a, b), k in zip(shots.tolist(), allocation)])
        return AvsPlan(
            analysis_indices=analysis_indices,
            analysis_times=times,
            candidates=candidates,
            cuts=cuts,
            shots=shots,
            allocation=allocation,
            frame_indices=chosen,
            timestamps=index.frame_times[chosen],
        )

    def _check_budget(self, index: VideoIndex) -> None:
        if self.budget > index.total_frames:
            raise MediaError(
                index.path,
                f"asked for {self.budget} AVS frames but the video has only {index.total_frames}; pass `budget` <= "
                f"{index.total_frames} or sample by `fps`.",
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able spec that `make_sampler` turns back into an equal sampler."""
        return {
            "type": "avs",
            "budget": self.budget,
            "detector": self._detector.to_dict(),
            "analysis_fps": self.analysis_fps,
            "nms_window": self.nms_window,
        }


# processor options <-> samplers

SAMPLERS: dict[str, type] = {
    "uniform": UniformSampler,
    "fps": FpsSampler,
    "timestamps": TimestampSampler,
    "avs": AdaptiveSampler,
}


def make_sampler(
    spec: str | dict | FrameSampler,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
) -> FrameSampler:
    """A sampler from a processor's `sampler` option.

    Args:
        spec: a name in `SAMPLERS`, a dict {"type": name, **arguments}, or any `FrameSampler` (returned as is).
        num_frames: default `num_frames` of "uniform" and `budget` of "avs".
        fps, max_frames: defaults of "fps"; "avs" without `num_frames` takes min(32, max_frames) frames.
    """
    if isinstance(spec, FrameSampler):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or spec.get("type") not in SAMPLERS:
        raise ValueError(
            f"`sampler` must be one of {sorted(SAMPLERS)}, a dict {{'type': name, ...}} or a `FrameSampler`, got "
            f"{spec!r}; e.g. `sampler='avs'`."
        )
    budget = num_frames if num_frames is not None else min(DEFAULT_BUDGET, max_frames or DEFAULT_BUDGET)
    defaults = {
        "uniform": {"num_frames": num_frames},
        "fps": {"fps": fps, "max_frames": max_frames},
        "timestamps": {},
        "avs": {"budget": budget},
    }[spec["type"]]
    arguments = {k: v for k, v in defaults.items() if v is not None} | {k: v for k, v in spec.items() if k != "type"}
    try:
        return SAMPLERS[spec["type"]](**arguments)
    except TypeError as exc:  # missing or unknown arguments
        raise ValueError(
            f"`sampler` {spec!r} cannot build {SAMPLERS[spec['type']].__name__} ({exc}); give its arguments in a "
            "dict, e.g. {'type': 'uniform', 'num_frames': 8}."
        ) from exc


def sampler_to_dict(sampler: FrameSampler) -> dict[str, Any]:
    """The JSON-able spec of a sampler (`make_sampler` inverts it); TypeError for samplers it cannot describe."""
    if hasattr(sampler, "to_dict"):
        return sampler.to_dict()
    for name, cls in SAMPLERS.items():
        if type(sampler) is cls:
            return {"type": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(sampler).items()}}
    raise TypeError(
        f"cannot save a processor whose `sampler` is a {type(sampler).__name__}: pass the sampler as a name or a dict "
        f"({sorted(SAMPLERS)}), or give the sampler a `to_dict()` that `make_sampler` can read back."
    )
