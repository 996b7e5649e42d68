"""The `videoadapt` console script.

videoadapt --version
videoadapt models            # every registered model type, its classes and Auto classes
videoadapt visualize reef MODEL_DIR VIDEO --question "..." --out picture.png [--num-frames N]
videoadapt visualize dynfocus MODEL_DIR VIDEO --question "..." --out picture.png [--frame T]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import videoadapt
from videoadapt._auto import AUTO_MODEL_CLASSES, ModelRow


__all__ = ["build_parser", "main"]


def _qualname(cls: type | None) -> str:
    return "-" if cls is None else f"{cls.__module__}.{cls.__qualname__}"


def describe_rows(rows: Sequence[ModelRow]) -> list[dict[str, str]]:
    """One dict per model type: config, processor, and each Auto class with the model class it loads."""
    described = []
    for row in rows:
        entry = {"model_type": row.model_type, "AutoConfig": _qualname(row.config_class)}
        for auto_name in AUTO_MODEL_CLASSES:
            if auto_name in row.model_classes:
                entry[auto_name] = _qualname(row.model_classes[auto_name])
        entry["AutoProcessor"] = _qualname(row.processor_class)
        described.append(entry)
    return described


def _cmd_models(args: argparse.Namespace) -> int:
    rows = describe_rows(videoadapt.registered_rows())
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No model types are registered.")
        return 0
    for entry in rows:
        print(entry["model_type"])
        for key, value in entry.items():
            if key != "model_type":
                print(f"  {key:<28} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videoadapt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"videoadapt {videoadapt.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = sub.add_parser("models", help="list every registered model type and its classes")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=_cmd_models)
    importer = sub.add_parser(
        "import-official-pave",
        add_help=False,
        help="convert a released official PAVE patch into a videoadapt patch folder",
    )
    importer.add_argument("args", nargs=argparse.REMAINDER)
    importer.set_defaults(func=_cmd_import_official_pave)
    _add_visualize(sub)
    _add_redundancy(sub)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    visualize = sub.add_parser("visualize", help="draw what a model kept and merged for one video")
    methods = visualize.add_subparsers(dest="method", metavar="METHOD", required=True)
    reef = methods.add_parser(
        "reef", help="REEF: kept spatial tokens, relevance heat maps and memory merges, one column per frame"
    )
    reef.add_argument("model_dir", help="a saved REEF model folder with its processor")
    reef.add_argument("video", help="a video file (sampled uniformly)")
    reef.add_argument("--question", required=True, help="the question or instruction")
    reef.add_argument("--out", required=True, help="the picture to write (.png, .jpg, ...)")
    reef.add_argument(
        "--num-frames", type=_positive_int, default=None, help="frames to sample (default: the processor's)"
    )
    reef.add_argument("--max-new-tokens", type=int, default=20, help="answer length shown in the title; 0 skips it")
    reef.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    reef.set_defaults(func=_cmd_visualize_reef)
    dynfocus = methods.add_parser(
        "dynfocus", help="DynFocus: frames coloured by event, kept events, key frames, and one frame's S-DPC clusters"
    )
    dynfocus.add_argument("model_dir", help="a saved DynFocus model folder with its processor")
    dynfocus.add_argument("video", help="a video file (sampled as the processor does: 1 fps by default)")
    dynfocus.add_argument("--question", required=True, help="the question")
    dynfocus.add_argument("--out", required=True, help="the picture to write (.png, .jpg, ...)")
    dynfocus.add_argument(
        "--frame", type=_nonnegative_int, default=None, help="frame of the S-DPC panels (default: the first key frame)"
    )
    dynfocus.add_argument("--columns", type=_positive_int, default=None, help="frames per timeline row (default 16)")
    dynfocus.add_argument(
        "--max-new-tokens", type=int, default=20, help="answer length shown in the title; 0 skips it"
    )
    dynfocus.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    dynfocus.set_defaults(func=_cmd_visualize_dynfocus)


def _load_model_and_processor(args: argparse.Namespace, model_class: type) -> tuple[Any, Any]:
    """The model (on `args.device`, default cuda if available) and processor saved in `args.model_dir`."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForImageTextToText.from_pretrained(args.model_dir).to(device)
    if not isinstance(model, model_class):
        raise ValueError(f"{args.model_dir} holds {type(model).__name__}, not {model_class.__name__}.")
    return model, AutoProcessor.from_pretrained(args.model_dir)


def _cmd_visualize_reef(args: argparse.Namespace) -> int:
    from videoadapt.modeling_reef import ReefForConditionalGeneration
    from videoadapt.recipes.reef_visualize import visualize_reef

    try:
        model, processor = _load_model_and_processor(args, ReefForConditionalGeneration)
        result = visualize_reef(
            model, processor, args.video, args.question, args.out,
            num_frames=args.num_frames, max_new_tokens=args.max_new_tokens,
        )  # fmt: skip
    except (ValueError, OSError) as error:
        print(f"videoadapt visualize reef: error: {error}", file=sys.stderr)
        return 1
    print(f"saved {result.path}")
    if result.answer is not None:
        print(f"answer: {result.answer}")
    return 0


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _cmd_visualize_dynfocus(args: argparse.Namespace) -> int:
    from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
    from videoadapt.recipes.dynfocus_visualize import visualize_dynfocus

    try:
        model, processor = _load_model_and_processor(args, DynFocusForConditionalGeneration)
        result = visualize_dynfocus(
            model, processor, args.video, args.question, args.out,
            frame=args.frame, max_new_tokens=args.max_new_tokens, columns=args.columns,
        )  # fmt: skip
    except (ValueError, OSError) as error:
        print(f"videoadapt visualize dynfocus: error: {error}", file=sys.stderr)
        return 1
    print(f"saved {result.path}")
    key_frames = result.features.key_frames[0].tolist()
    print(f"key frames: {key_frames} of {result.features.event_assign.shape[1]}; panels: frame {result.frame}")
    if result.answer is not None:
        print(f"answer: {result.answer}")
    return 0


def _positive_number(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _add_redundancy(sub: argparse._SubParsersAction) -> None:
    redundancy = sub.add_parser(
        "redundancy", help="DynFocus Appendix A: temporal (r_d) and answer (r_a) redundancy of videos, with CLIP"
    )
    redundancy.add_argument(
        "manifest", help="JSONL, one {video, question, answer} per line; video paths relative to the manifest"
    )
    redundancy.add_argument("--clip", required=True, help="CLIP checkpoint folder or Hub id")
    redundancy.add_argument("--num-videos", type=_positive_int, default=20, help="videos to draw (default 20)")
    redundancy.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    frames = redundancy.add_mutually_exclusive_group()
    frames.add_argument("--fps", type=_positive_number, default=None, help="frames per second (default 1)")
    frames.add_argument("--num-frames", type=_positive_int, default=None, help="uniformly spaced frames instead")
    redundancy.add_argument("--max-frames", type=_positive_int, default=None, help="cap on frames with --fps")
    redundancy.add_argument("--similarity-threshold", type=float, default=0.6, help="r_d threshold (default 0.6)")
    redundancy.add_argument("--relevance-threshold", type=float, default=0.4, help="r_a threshold (default 0.4)")
    redundancy.add_argument("--batch-size", type=_positive_int, default=32, help="frames per CLIP forward pass")
    redundancy.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    redundancy.add_argument("--json", dest="json_out", default=None, help="also write the full report to this file")
    redundancy.add_argument("--no-progress", action="store_true", help="no progress bar")
    redundancy.set_defaults(func=_cmd_redundancy)


def _redundancy_table(report) -> list[str]:
    """One row per sampled video, then the means."""
    width = max([len("video"), *(len(v.video) for v in report.videos)])
    lines = [f"{'video':<{width}}  {'frames':>6}  {'questions':>9}  {'r_d':>6}  {'r_a':>6}"]
    for v in report.videos:
        lines.append(f"{v.video:<{width}}  {v.num_frames:>6}  {v.num_questions:>9}  {v.r_d:>6.3f}  {v.r_a:>6.3f}")
    mean = f"mean of {len(report.videos)} of {report.num_manifest_videos} videos"
    lines.append(f"{mean:<{width + 19}}  {report.r_d:>6.3f}  {report.r_a:>6.3f}")
    return lines


def _cmd_redundancy(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from videoadapt.processors.atomic import atomic_write
    from videoadapt.recipes.redundancy import estimate_redundancy, load_clip, read_manifest

    try:
        read_manifest(args.manifest)  # fail fast, before loading (or downloading) CLIP
        model, tokenizer, frame_preprocessor = load_clip(args.clip, args.device)
        report = estimate_redundancy(
            args.manifest, model, tokenizer, frame_preprocessor,
            num_videos=args.num_videos, seed=args.seed,
            fps=None if args.num_frames is not None else (args.fps or 1.0),
            num_frames=args.num_frames, max_frames=args.max_frames,
            similarity_threshold=args.similarity_threshold, relevance_threshold=args.relevance_threshold,
            batch_size=args.batch_size, progress=not args.no_progress,
        )  # fmt: skip
    except (ValueError, OSError) as error:
        print(f"videoadapt redundancy: error: {error}", file=sys.stderr)
        return 1
    summary = report.to_dict()
    if args.json_out:
        atomic_write(args.json_out, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    print("\n".join(_redundancy_table(report)))
    print(json.dumps(summary))
    return 0


def _cmd_import_official_pave(args: argparse.Namespace) -> int:
    from videoadapt.pave_import import main as import_main

    return import_main(args.args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["import-official-pave"]:  # its own parser takes every argument, --help included
        return _cmd_import_official_pave(argparse.Namespace(args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
