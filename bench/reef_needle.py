"""REEF's needle task: spatial top-K at 25% of the tokens vs all tokens, and whether the top-K finds the needle.

    python bench/reef_needle.py [--steps 1600] [--initial-steps 1600] [--train-videos 512] [--test-videos 128] [--seed 0] [--width 32]

Synthetic 20-frame videos (noisy grey frames with faint distractors); a small coloured square aligned to one of the
16 patch cells appears in only 2-3 frames at random positions, and the question asks for its colour (4 colours, or "no" in a fifth of the videos, which have no square). A
tiny REEF (random init, nothing downloaded) is trained twice with equal steps and data: keeping 4 of 16 spatial
tokens (25%) and keeping all. Bar: `acc_topk25` within 5 points of `acc_all_tokens`, and the needle's cell among the
kept tokens in >= 90% of needle frames at inference (`needle_recall`). The last line is JSON.
"""

import argparse
import json
import time

import torch

from videoadapt.recipes.reef_needle import NeedleSettings, run_needle


def main(argv: list[str] | None = None) -> dict:
    defaults = NeedleSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--train-videos", type=int, default=defaults.train_videos)
    parser.add_argument("--test-videos", type=int, default=defaults.test_videos)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--topk-samples", type=int, default=defaults.topk_num_samples)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--width", type=int, default=defaults.width, help="channels of the tiny vision tower and Q-Former"
    )
    parser.add_argument("--initial-steps", type=int, default=defaults.initial_steps,
                        help="first train the all-token model this long and start REEF from it (REEF's initial stage)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = NeedleSettings(
        steps=args.steps, train_videos=args.train_videos, test_videos=args.test_videos, batch_size=args.batch_size,
        topk_num_samples=args.topk_samples, seed=args.seed, initial_steps=args.initial_steps, width=args.width,
    )  # fmt: skip
    start = time.perf_counter()
    result = run_needle(settings)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"REEF needle task, {settings.frames} frames, {args.steps} steps, torch {torch.__version__}")
    print(f"{'variant':<28}{'accuracy':>10}")
    print(f"{'top-K 25% of the tokens':<28}{result['acc_topk25']:>10.3f}")
    print(f"{'all tokens':<28}{result['acc_all_tokens']:>10.3f}")
    print(f"needle recall of the spatial top-K: {result['needle_recall']:.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
