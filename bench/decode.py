"""Seek-based decoding vs transformers' PyAV loader: 32 uniform frames of a 5-minute 640x360 30 fps H.264 video.

    python bench/decode.py [--minutes 5] [--repeats 3] [--out bench/out]

Both decoders run in this process on the same file; the figure is the ratio of their best times. The video
(keyframe every 2 s) is generated once with the synthetic generator and reused. The last line is JSON.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from transformers.video_utils import load_video as hf_load_video

from videoadapt.processors import video_io
from videoadapt.processors.synthetic import SyntheticVideoSpec, random_spec, write_synthetic_video


def make_video(out: Path, minutes: float) -> Path:
    fps, num_frames = 30, round(minutes * 60 * 30)
    path = out / f"decode_{minutes:g}min_640x360.mp4"
    if not path.exists():
        base = random_spec(seed=0, num_frames=num_frames, fps=fps, width=640, height=360, num_cuts=8, with_audio=False)
        spec = SyntheticVideoSpec(**{**base.__dict__, "keyframe_interval": 2 * fps, "frame_code": False})
        t0 = time.perf_counter()
        write_synthetic_video(path, spec)
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
    return path


def best_of(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, frames = [], None
    for _ in range(repeats):
        video_io._INDEX_CACHE.clear()  # count the demux index in every run of ours
        t0 = time.perf_counter()
        frames = fn()
        times.append(time.perf_counter() - t0)
    return min(times), frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = make_video(args.out, args.minutes)

    ours_s, ours = best_of(lambda: video_io.load_video(path, num_frames=args.num_frames)[0], args.repeats)
    theirs_s, theirs = best_of(
        lambda: hf_load_video(str(path), num_frames=args.num_frames, backend="pyav")[0], args.repeats
    )
    equal = bool(ours.shape == theirs.shape and np.array_equal(ours, theirs))
    print(f"{'decoder':<44}{'best of ' + str(args.repeats) + ' (s)':>18}")
    print(f"{'videoadapt.processors.video_io.load_video':<44}{ours_s:>18.3f}")
    print(f"{'transformers.video_utils.load_video (pyav)':<44}{theirs_s:>18.3f}")
    print(f"frames identical: {equal}")
    result = {
        "bench": "decode",
        "video": f"{args.minutes:g} min 640x360 30 fps H.264, keyframe every 2 s",
        "num_frames": args.num_frames,
        "ours_s": round(ours_s, 4),
        "transformers_s": round(theirs_s, 4),
        "speedup": round(theirs_s / ours_s, 2),
        "frames_equal": equal,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
