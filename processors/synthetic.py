"""Synthetic videos with known content: real H.264 mp4 files plus a JSON of the per-frame ground truth.

Each shot is a plain background with coloured shapes moving at constant velocity (bouncing off the frame
edges); shots change with hard cuts at given frames. Optionally: an AAC track of sine tones, a static
per-shot grain texture, and a frame code (the frame index as 16 black/white cells in a strip along the
bottom edge, readable back with `decode_frame_index` despite compression). Keyframes are placed exactly
every `keyframe_interval` frames. Same spec -> byte-identical JSON and identical decoded frames.

Shape legend:
    H, W - frame height and width in pixels
    3    - RGB channels
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from videoadapt.processors.atomic import atomic_write
from videoadapt.processors.synthetic_audio import ToneSpec, _ToneTrack, synthesize_tones


__all__ = [
    "CODE_BITS",
    "CODE_HEIGHT",
    "PALETTE",
    "SHAPE_KINDS",
    "ShapeSpec",
    "ShotSpec",
    "SyntheticVideoSpec",
    "ToneSpec",
    "decode_frame_index",
    "random_spec",
    "render_frame",
    "write_synthetic_video",
]

RGB = tuple[int, int, int]
CODE_BITS = 16  # frame code: bits, most significant first, one cell of width W // CODE_BITS each
CODE_HEIGHT = 16  # frame code: height in pixels of the strip along the bottom edge
PALETTE: dict[str, RGB] = {
    "red": (210, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 70, 210),
    "yellow": (235, 210, 50),
    "magenta": (190, 60, 180),
    "cyan": (50, 200, 210),
    "orange": (245, 140, 30),
    "grey": (128, 128, 128),
}
# mask of each shape kind from offsets (dx, dy) to the centre and half-size r; the centre is the bbox centre
_MASKS = {
    "circle": lambda dx, dy, r: dx**2 + dy**2 <= r**2,
    "square": lambda dx, dy, r: (np.abs(dx) <= r) & (np.abs(dy) <= r),
    "triangle": lambda dx, dy, r: (dy <= r) & (2 * np.abs(dx) <= dy + r),  # apex up, base at the bottom
    "diamond": lambda dx, dy, r: np.abs(dx) + np.abs(dy) <= r,
}
SHAPE_KINDS = tuple(_MASKS)
_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}


def _check_color(color: RGB) -> None:
    if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
        raise ValueError(f"colours must be 3 ints in [0, 255], got {color!r}.")


@dataclass(frozen=True)
class ShapeSpec:
    """A shape: `kind` in `SHAPE_KINDS`, RGB `color`, half-size `size` px, centre `start` (x, y) at the shot's
    first frame, `velocity` (vx, vy) in px per frame; it bounces off the edges of the picture area."""

    kind: str
    color: RGB
    size: float
    start: tuple[float, float]
    velocity: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        if self.kind not in _MASKS:
            raise ValueError(f"`kind` must be one of {SHAPE_KINDS}, got {self.kind!r}.")
        for name in ("color", "start", "velocity"):  # lists -> tuples: hashable, comparable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_color(self.color)


@dataclass(frozen=True)
class ShotSpec:
    """A shot: an RGB `background` and the shapes drawn over it (in order, later shapes on top)."""

    background: RGB
    shapes: tuple[ShapeSpec, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "background", tuple(self.background))
        object.__setattr__(self, "shapes", tuple(self.shapes))
        _check_color(self.background)


@dataclass(frozen=True)
class SyntheticVideoSpec:
    """Everything that defines a synthetic video. Shot `k + 1` starts at frame `cut_frames[k]`.

    Give `num_frames` or `duration` (seconds; `num_frames = round(duration * fps)`), or neither for 300
    frames; after construction both are set. Audio (AAC) is written only when `tones` is non-empty.
    `grain` adds a static per-shot texture of uniform noise in [-grain, grain] drawn from `seed`.
    """

    shots: tuple[ShotSpec, ...] = (ShotSpec(PALETTE["grey"]),)
    cut_frames: tuple[int, ...] = ()
    width: int = 320
    height: int = 240
    fps: float = 30.0
    num_frames: int | None = None
    duration: float | None = None
    keyframe_interval: int = 30
    tones: tuple[ToneSpec, ...] = ()
    audio_sample_rate: int = 48000
    audio_channels: int = 2
    frame_code: bool = True
    grain: int = 0
    seed: int = 0
    crf: int = 18
    preset: str = "veryfast"

    def __post_init__(self):
        for name in ("shots", "cut_frames", "tones"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.fps > 0:
            raise ValueError(f"`fps` must be > 0, got {self.fps}.")
        n = self.num_frames if self.num_frames is not None else round((self.duration or 300 / self.fps) * self.fps)
        if self.duration is not None and round(self.duration * self.fps) != n:
            raise ValueError(f"`duration`={self.duration} s at {self.fps} fps disagrees with `num_frames`={n}.")
        object.__setattr__(self, "num_frames", n)
        object.__setattr__(self, "duration", n / self.fps)
        min_w, min_h = (4 * CODE_BITS, 3 * CODE_HEIGHT) if self.frame_code else (16, 16)
        max_n, cuts = 2**CODE_BITS if self.frame_code else math.inf, self.cut_frames
        sizes = [shape.size for shot in self.shots for shape in shot.shapes]
        w, h, ph = self.width, self.height, self.picture_height
        checks = [  # (is bad, message)
            (w % 2 or h % 2 or w < min_w or h < min_h, f"`width`x`height` must be even, >= {min_w}x{min_h}: {w}x{h}"),
            (not 1 <= n <= max_n, f"`num_frames` must be in [1, {max_n}], got {n}"),
            (self.keyframe_interval < 1, f"`keyframe_interval` must be >= 1, got {self.keyframe_interval}"),
            (len(self.shots) != len(cuts) + 1, f"need one more shot than cuts, got {len(self.shots)} for {cuts}"),
            (list(cuts) != sorted(set(cuts)) or not all(0 < c < n for c in cuts), f"bad `cut_frames` {cuts}"),
            (any(2 * s + 2 > min(w, ph) for s in sizes), f"shape sizes {sizes} must fit a {w}x{ph} picture"),
            (self.audio_channels not in (1, 2), f"`audio_channels` must be 1 or 2, got {self.audio_channels}"),
        ]
        for bad, message in checks:
            if bad:
                raise ValueError(message + ".")

    @property
    def picture_height(self) -> int:
        """Rows above the frame-code strip (the whole frame without a frame code)."""
        return self.height - CODE_HEIGHT if self.frame_code else self.height

    @property
    def rate(self) -> Fraction:
        return Fraction(self.fps).limit_denominator(1001)


def _bounce(p: np.ndarray, lo: float, hi: np.ndarray) -> np.ndarray:
    """Fold unbounded coordinates into [lo, hi] (elementwise, hi > lo) by mirror reflection at both ends."""
    u = (p - lo) % (2 * (hi - lo))
    return lo + np.minimum(u, 2 * (hi - lo) - u)


def _shot_of(spec: SyntheticVideoSpec, index: int) -> tuple[int, int]:
    """(shot id, first frame of that shot) for frame `index`."""
    shot = sum(c <= index for c in spec.cut_frames)
    return shot, (0, *spec.cut_frames)[shot]


def _shape_centers(spec: SyntheticVideoSpec, index: int) -> list[tuple[float, float]]:
    """Centre (x, y) of each shape of the frame's shot: start + velocity * t, bounced inside the picture."""
    shot, first = _shot_of(spec, index)
    far = np.array([spec.width - 1, spec.picture_height - 1], dtype=np.float64)  # (2,) last pixel x, y
    moved = [(s, np.add(s.start, np.multiply(s.velocity, index - first))) for s in spec.shots[shot].shapes]
    return [tuple(_bounce(p, s.size, far - s.size).tolist()) for s, p in moved]


def _grain(spec: SyntheticVideoSpec, shot: int) -> np.ndarray | None:
    if spec.grain <= 0:
        return None
    rng = np.random.default_rng([spec.seed, shot])
    return rng.integers(-spec.grain, spec.grain + 1, size=(spec.picture_height, spec.width, 3), dtype=np.int16)


def render_frame(spec: SyntheticVideoSpec, index: int, grain: np.ndarray | None = None) -> np.ndarray:
    """The RGB frame `index` as uint8 `[H, W, 3]` (before compression); `grain` as from the spec's shot."""
    shot_id, _ = _shot_of(spec, index)
    shot, ph = spec.shots[shot_id], spec.picture_height
    frame = np.empty((spec.height, spec.width, 3), dtype=np.uint8)  # (H, W, 3)
    picture = frame[:ph]
    picture[:] = shot.background
    if grain is not None:
        picture[:] = np.clip(picture + grain, 0, 255)
    for shape, (cx, cy) in zip(shot.shapes, _shape_centers(spec, index)):
        x0, x1 = max(0, math.floor(cx - shape.size)), min(spec.width, math.ceil(cx + shape.size) + 1)
        y0, y1 = max(0, math.floor(cy - shape.size)), min(ph, math.ceil(cy + shape.size) + 1)
        dx, dy = np.arange(x0, x1)[None, :] - cx, np.arange(y0, y1)[:, None] - cy  # (1, w), (h, 1)
        picture[y0:y1, x0:x1][_MASKS[shape.kind](dx, dy, shape.size)] = shape.color
    if spec.frame_code:
        cell = spec.width // CODE_BITS
        bits = (index >> np.arange(CODE_BITS - 1, -1, -1)) & 1  # (CODE_BITS,) most significant first
        row = np.zeros(spec.width, dtype=np.uint8)
        row[: cell * CODE_BITS] = np.repeat(bits * 255, cell)
        frame[ph:] = row[None, :, None]
    return frame


def decode_frame_index(frame: np.ndarray) -> int:
    """Read the frame code back from a decoded RGB frame `[H, W, 3]` (the inner part of each cell is averaged)."""
    h, w = frame.shape[:2]
    cell = w // CODE_BITS
    strip = frame[h - CODE_HEIGHT + 4 : h - 4, : cell * CODE_BITS].astype(np.float32)  # (rows, CODE_BITS * cell, 3)
    strip = strip.mean(axis=(0, 2))  # (CODE_BITS * cell,)
    cells = strip.reshape(CODE_BITS, cell)[:, cell // 4 : cell - cell // 4].mean(axis=1)  # (CODE_BITS,)
    return int(sum(int(v > 127.5) << (CODE_BITS - 1 - i) for i, v in enumerate(cells)))


def _shape_truth(shape: ShapeSpec, x: float, y: float) -> dict[str, Any]:
    r = shape.size
    box = [round(v, 4) for v in (x - r, y - r, x + r, y + r)]  # x0, y0, x1, y1
    return {"kind": shape.kind, "color": list(shape.color), "center": [round(x, 4), round(y, 4)], "bbox": box}


def _ground_truth(spec: SyntheticVideoSpec) -> dict[str, Any]:
    frames = []
    for i in range(spec.num_frames):
        shot = _shot_of(spec, i)[0]
        shapes = [_shape_truth(s, x, y) for s, (x, y) in zip(spec.shots[shot].shapes, _shape_centers(spec, i))]
        frames.append({"index": i, "timestamp": round(i / spec.fps, 4), "shot": shot, "shapes": shapes})
    bounds = zip((0, *spec.cut_frames), (*spec.cut_frames, spec.num_frames))
    shots = [
        {"id": k, "start_frame": a, "end_frame": b, **asdict(s)}
        for k, (s, (a, b)) in enumerate(zip(spec.shots, bounds))
    ]
    tones = [asdict(t) for t in spec.tones]
    audio = {"codec": "aac", "sample_rate": spec.audio_sample_rate, "channels": spec.audio_channels, "tones": tones}
    code = {"bits": CODE_BITS, "rows": [spec.picture_height, spec.height], "cell_width": spec.width // CODE_BITS}
    truth = {
        "version": 1, "codec": "h264", "width": spec.width, "height": spec.height, "fps": spec.fps,
        "num_frames": spec.num_frames, "duration": round(spec.duration, 4), "keyframe_interval": spec.keyframe_interval,
        "keyframes": list(range(0, spec.num_frames, spec.keyframe_interval)), "cut_frames": spec.cut_frames,
        "seed": spec.seed, "grain": spec.grain, "shape_kinds": SHAPE_KINDS, "shots": shots,
        "frame_code": code if spec.frame_code else None, "audio": audio if spec.tones else None, "frames": frames,
    }  # fmt: skip
    return json.loads(json.dumps(truth))  # returned dict == what the file holds (tuples -> lists)


def _x264_options(spec: SyntheticVideoSpec) -> dict[str, str]:
    """An IDR frame every `keyframe_interval` frames exactly (scene-cut keyframes off). Reproducible output:
    one thread (x264's output depends on the thread count) and no macroblock tree, whose lookahead reads
    uninitialised memory at some widths (96/160/192 px wide output varied with `MALLOC_PERTURB_`)."""
    k, crf = str(spec.keyframe_interval), str(spec.crf)
    opts = dict(g=k, keyint_min=k, sc_threshold="0", crf=crf, preset=spec.preset, threads="1")
    return opts | {"x264-params": "mbtree=0"}


def write_synthetic_video(path: str | os.PathLike, spec: SyntheticVideoSpec) -> dict[str, Any]:
    """Write `spec` as an H.264 (libx264, yuv420p) video to `path` and its ground truth to `path.with_suffix(".json")`.

    Keyframes (IDR) fall exactly on the multiples of `keyframe_interval`: `g` = `keyint_min` = the interval
    and scene-cut detection is off (`sc_threshold=0`). x264 runs single-threaded with `mbtree=0`, so the
    same spec gives a byte-identical file. Both files are written atomically (temp file + `os.replace`).

    Returns:
        The ground-truth dict, equal to the JSON file's content.
    """
    path = Path(path)
    if path.suffix.lower() not in _CONTAINERS:
        raise ValueError(f"`path` must end in one of {sorted(_CONTAINERS)}, got {path.name!r}.")
    truth = _ground_truth(spec)

    def write_video(tmp: str) -> None:
        with av.open(tmp, "w", format=_CONTAINERS[path.suffix.lower()]) as container:
            video = container.add_stream("libx264", rate=spec.rate)
            video.width, video.height, video.pix_fmt = spec.width, spec.height, "yuv420p"
            video.codec_context.options = _x264_options(spec)
            audio = None
            if spec.tones:
                sr, num_samples = spec.audio_sample_rate, round(spec.duration * spec.audio_sample_rate)
                waveform = synthesize_tones(spec.tones, num_samples, sr, spec.audio_channels)  # (C, S)
                audio = _ToneTrack(container, "aac", waveform, sr)
            grains = [_grain(spec, s) for s in range(len(spec.shots))]
            for i in range(spec.num_frames):
                frame = av.VideoFrame.from_ndarray(render_frame(spec, i, grains[_shot_of(spec, i)[0]]), format="rgb24")
                frame.pts = i
                container.mux(video.encode(frame))
                if audio is not None:  # keep the streams interleaved: audio up to the end of frame i
                    audio.write_until(round((i + 1) * spec.audio_sample_rate / spec.rate))
            container.mux(video.encode(None))
            if audio is not None:
                audio.close()

    atomic_write(path, write_video)
    text = json.dumps(truth, indent=1) + "\n"
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
    return truth


def random_spec(
    seed: int = 0,
    num_frames: int = 300,
    fps: float = 30.0,
    width: int = 320,
    height: int = 240,
    num_cuts: int = 2,
    with_audio: bool = True,
    *,
    keyframe_interval: int | None = None,
) -> SyntheticVideoSpec:
    """A varied spec drawn from `seed`: `num_cuts + 1` shots with different backgrounds and 1-3 moving shapes
    each (colours differ from the background), two tones when `with_audio`; `keyframe_interval` defaults to
    one second of frames."""
    rng = np.random.default_rng(seed)
    min_len = max(1, num_frames // (4 * (num_cuts + 1)))
    if num_cuts < 0 or num_frames < (num_cuts + 1) * min_len or num_frames <= num_cuts:
        raise ValueError(f"cannot place `num_cuts`={num_cuts} cuts in `num_frames`={num_frames} frames.")
    share = np.full(num_cuts + 1, 1 / (num_cuts + 1))
    lengths = min_len + rng.multinomial(num_frames - (num_cuts + 1) * min_len, share)  # shot lengths
    cuts = tuple(int(c) for c in np.cumsum(lengths)[:-1])
    names = list(PALETTE)
    order = rng.permutation(len(names))  # cycled, so neighbouring shots never share a background
    picture_height = height - CODE_HEIGHT
    shots = []
    for k in range(num_cuts + 1):
        background = PALETTE[names[order[k % len(names)]]]
        others = [c for c in (*PALETTE.values(), (255, 255, 255), (0, 0, 0)) if c != background]
        shapes = []
        for _ in range(int(rng.integers(1, 4))):
            size = round(float(rng.uniform(0.06, 0.12)) * min(width, picture_height), 1)
            color = others[rng.integers(len(others))]
            start = tuple(round(float(rng.uniform(size, hi - size)), 1) for hi in (width - 1, picture_height - 1))
            velocity = tuple(round(float(v), 2) for v in rng.uniform(-4, 4, size=2))
            shapes.append(ShapeSpec(str(rng.choice(SHAPE_KINDS)), color, size, start, velocity))
        shots.append(ShotSpec(background, tuple(shapes)))
    tones = ()
    if with_audio:
        duration = num_frames / fps
        freqs = rng.choice([220.0, 330.0, 440.0, 660.0, 880.0, 1000.0, 1500.0, 2000.0], size=2, replace=False)
        starts = rng.uniform(0, 0.6 * duration, size=2).tolist()
        ends = np.minimum(duration, starts + rng.uniform(0.2, 0.4, size=2) * duration).tolist()
        tones = tuple(ToneSpec(float(f), round(a, 3), round(b, 3)) for f, a, b in zip(freqs, starts, ends))
    interval = keyframe_interval if keyframe_interval is not None else max(1, round(fps))
    return SyntheticVideoSpec(
        shots=tuple(shots), cut_frames=cuts, width=width, height=height, fps=fps, num_frames=num_frames,
        keyframe_interval=interval, tones=tones, seed=seed,
    )  # fmt: skip
