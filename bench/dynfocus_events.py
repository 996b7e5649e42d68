"""DynFocus' event task: Dynamic Selection keeping K of L events vs feeding every frame at 40 tokens.

    python bench/dynfocus_events.py [--steps 1200] [--train-videos 512] [--test-videos 128] [--keep-ratio 0.25]

Synthetic videos of 8 scenes x 2 frames (tinted noisy backgrounds with faint grey blobs); in one or two scenes four
small squares of random colours sit in the corners and the question names one corner ("what color is the up
square?"); the answer is its colour (4 colours, or "no" in a fifth of the videos, which have no squares). A tiny DynFocus (random init, nothing downloaded) is trained twice with equal steps
and data: T-DPC into L = 8 events with K = ceil(keep_ratio * L) key frames (38 + 2 tokens each, 2 for the others),
and every frame its own kept event (40 tokens per frame). Bar: `event_recall` (needle videos whose every relevant
scene holds a key frame, at inference) >= 0.9, and `acc_selected` within 5 points of `acc_all_frames`. The last
line is JSON.
"""

import argparse
import json
import time

import torch

from videoadapt.recipes.dynfocus_events import EventSettings, run_events


def main(argv: list[str] | None = None) -> dict:
    defaults = EventSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--train-videos", type=int, default=defaults.train_videos)
    parser.add_argument("--test-videos", type=int, default=defaults.test_videos)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--keep-ratio", type=float, default=defaults.keep_ratio)
    parser.add_argument("--topk-samples", type=int, default=defaults.topk_num_samples)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = EventSettings(
        steps=args.steps, train_videos=args.train_videos, test_videos=args.test_videos, batch_size=args.batch_size,
        keep_ratio=args.keep_ratio, topk_num_samples=args.topk_samples, seed=args.seed,
    )  # fmt: skip
    start = time.perf_counter()
    result = run_events(settings)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"DynFocus event task, {settings.frames} frames, {args.steps} steps, torch {torch.__version__}")
    print(f"{'variant':<44}{'tokens':>8}{'accuracy':>10}")
    selected = f"K = {result['key_frames']} of L = {result['events']} events"
    print(f"{selected:<44}{result['tokens_selected']:>8}{result['acc_selected']:>10.3f}")
    print(f"{'all frames at 40 tokens':<44}{result['tokens_all_frames']:>8}{result['acc_all_frames']:>10.3f}")
    print(f"event recall: {result['event_recall']:.3f} (random selection: {result['chance_event_recall']:.3f})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
