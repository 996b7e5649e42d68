"""The `videoadapt` console script.

videoadapt --version
videoadapt models            # every registered model type, its classes and Auto classes
videoadapt visualize reef MODEL_DIR VIDEO --question "..." --out picture.png [--num-frames N]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def _cmd_visualize_reef(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from videoadapt.modeling_reef import ReefForConditionalGeneration
    from videoadapt.recipes.reef_visualize import visualize_reef

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = AutoModelForImageTextToText.from_pretrained(args.model_dir).to(device)
        if not isinstance(model, ReefForConditionalGeneration):
            raise ValueError(f"{args.model_dir} holds {type(model).__name__}, not ReefForConditionalGeneration.")
        processor = AutoProcessor.from_pretrained(args.model_dir)
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
