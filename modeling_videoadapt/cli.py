"""The `videoadapt` console script.

videoadapt --version
videoadapt models            # every registered model type, its classes and Auto classes
videoadapt train --recipe reef/msvd_qa --stage main model=... train=data.jsonl output_dir=runs/msvd_qa
videoadapt eval --recipe reef/msvd_qa model=runs/msvd_qa/model eval=data.jsonl output_dir=runs/msvd_qa/eval
videoadapt extract data.jsonl --model llava-ov/ --output features/ [--num-proc 4] [--cache-dir cache/]
videoadapt ask MODEL_OR_PATCH_DIR VIDEO "question" [--side-channel audio=features.safetensors]
videoadapt visualize reef MODEL_DIR VIDEO --question "..." --out picture.png [--num-frames N]
videoadapt visualize dynfocus MODEL_DIR VIDEO --question "..." --out picture.png [--frame T]
videoadapt redundancy data.jsonl --clip openai/clip-vit-base-patch32
videoadapt import-official-pave OFFICIAL_DIR OUT_DIR --side-channel audio --side-channel-dim 1024 --output-dim 896
videoadapt export-remote-code MODEL_DIR OUT_DIR [--overwrite]   # loads with trust_remote_code=True, no videoadapt

`videoadapt COMMAND --help` explains each command's arguments, with an example.
"""

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import videoadapt
from videoadapt._auto import AUTO_MODEL_CLASSES, ModelRow
from videoadapt.cli_common import (
    example_parser,
    fail,
    integer_at_least,
    positive_int,
    positive_number,
    progress_logging,
)
from videoadapt.cli_extract import add_extract


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
    parser = argparse.ArgumentParser(
        prog="videoadapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"videoadapt {videoadapt.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = example_parser(sub, "models", "list every registered model type and its classes",
                             "example:\n  videoadapt models --json > models.json")  # fmt: skip
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=_cmd_models)
    for name, summary in _FORWARDED_HELP.items():  # these parse their own arguments (see `main`)
        forwarded = sub.add_parser(name, add_help=False, help=summary)
        forwarded.add_argument("args", nargs=argparse.REMAINDER)
    add_extract(sub)
    _add_ask(sub)
    _add_visualize(sub)
    _add_redundancy(sub)
    _add_export_remote_code(sub)
    return parser


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    visualize = example_parser(
        sub, "visualize", "draw what a model kept and merged for one video",
        "examples:\n  videoadapt visualize reef runs/msvd_qa/model clip.mp4 --question 'what is he doing?' "
        "--out reef.png"
        "\n  videoadapt visualize dynfocus runs/dynfocus/model clip.mp4 --question 'what happens?' --out dynfocus.png",
    )  # fmt: skip
    methods = visualize.add_subparsers(dest="method", metavar="METHOD", required=True)
    reef = example_parser(
        methods, "reef", "REEF: kept spatial tokens, relevance heat maps and memory merges, one column per frame",
        "example:\n  videoadapt visualize reef runs/msvd_qa/model clip.mp4 --question 'what is the man doing?' "
        "--out reef.png --num-frames 8",
    )  # fmt: skip
    reef.add_argument("model_dir", help="a saved REEF model folder with its processor")
    reef.add_argument("video", help="a video file (sampled uniformly)")
    reef.add_argument("--question", required=True, help="the question or instruction")
    reef.add_argument("--out", required=True, help="the picture to write (.png, .jpg, ...)")
    reef.add_argument(
        "--num-frames", type=positive_int, default=None, help="frames to sample (default: the processor's)"
    )
    reef.add_argument(
        "--max-new-tokens", type=_nonnegative_int, default=20, help="answer length shown in the title; 0 skips it"
    )
    reef.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    reef.set_defaults(func=_cmd_visualize_reef)
    dynfocus = example_parser(
        methods, "dynfocus",
        "DynFocus: frames coloured by event, kept events, key frames, and one frame's S-DPC clusters",
        "example:\n  videoadapt visualize dynfocus runs/dynfocus/model clip.mp4 --question 'what happens first?' "
        "--out dynfocus.png --frame 3",
    )  # fmt: skip
    dynfocus.add_argument("model_dir", help="a saved DynFocus model folder with its processor")
    dynfocus.add_argument("video", help="a video file (sampled as the processor does: 1 fps by default)")
    dynfocus.add_argument("--question", required=True, help="the question")
    dynfocus.add_argument("--out", required=True, help="the picture to write (.png, .jpg, ...)")
    dynfocus.add_argument(
        "--frame", type=_nonnegative_int, default=None, help="frame of the S-DPC panels (default: the first key frame)"
    )
    dynfocus.add_argument("--columns", type=positive_int, default=None, help="frames per timeline row (default 16)")
    dynfocus.add_argument(
        "--max-new-tokens", type=_nonnegative_int, default=20, help="answer length shown in the title; 0 skips it"
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
        return fail("visualize reef", error)
    print(f"saved {result.path}")
    if result.answer is not None:
        print(f"answer: {result.answer}")
    return 0


def _nonnegative_int(text: str) -> int:
    return integer_at_least(text, 0)


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
        return fail("visualize dynfocus", error)
    print(f"saved {result.path}")
    key_frames = result.features.key_frames[0].tolist()
    print(f"key frames: {key_frames} of {result.features.event_assign.shape[1]}; panels: frame {result.frame}")
    if result.answer is not None:
        print(f"answer: {result.answer}")
    return 0


def _add_redundancy(sub: argparse._SubParsersAction) -> None:
    redundancy = example_parser(
        sub, "redundancy", "DynFocus Appendix A: temporal (r_d) and answer (r_a) redundancy of videos, with CLIP",
        "example:\n  videoadapt redundancy data/msvd_qa.jsonl --clip openai/clip-vit-base-patch32 --num-videos 50 "
        "--json redundancy.json",
    )  # fmt: skip
    redundancy.add_argument(
        "manifest", help="JSONL, one {video, question, answer} per line; video paths relative to the manifest"
    )
    redundancy.add_argument("--clip", required=True, help="CLIP checkpoint folder or Hub id")
    redundancy.add_argument("--num-videos", type=positive_int, default=20, help="videos to draw (default 20)")
    redundancy.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    frames = redundancy.add_mutually_exclusive_group()
    frames.add_argument("--fps", type=positive_number, default=None, help="frames per second (default 1)")
    frames.add_argument("--num-frames", type=positive_int, default=None, help="uniformly spaced frames instead")
    redundancy.add_argument("--max-frames", type=positive_int, default=None, help="cap on frames with --fps")
    redundancy.add_argument("--similarity-threshold", type=float, default=0.6, help="r_d threshold (default 0.6)")
    redundancy.add_argument("--relevance-threshold", type=float, default=0.4, help="r_a threshold (default 0.4)")
    redundancy.add_argument("--batch-size", type=positive_int, default=32, help="frames per CLIP forward pass")
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
        return fail("redundancy", error)
    summary = report.to_dict()
    if args.json_out:
        atomic_write(args.json_out, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    print("\n".join(_redundancy_table(report)))
    print(json.dumps(summary))
    return 0


# --------------------------------------------------------------------------------------------- forwarded commands

_IMPORT_EXAMPLE = """
example (a released ImageBind-audio patch of LLaVA-OneVision-7B):
  videoadapt import-official-pave pave_avsd_7b/ patches/avsd --side-channel audio --side-channel-dim 1024 \\
      --output-dim 3584 --base-model llava-hf/llava-onevision-qwen2-7b-ov-hf"""

_TRAIN_EXAMPLE = """
example (a tiny CPU run; `accelerate launch -m videoadapt.recipes.train ...` for several devices):
  videoadapt train --recipe compact/stage1 model=tiny-llava-ov/ train=data.jsonl output_dir=runs/compact \\
      max_steps=10 processor.num_frames=4 config.num_frames=4"""

_FORWARDED_HELP = {
    "train": "train a recipe with transformers.Trainer (`videoadapt train --help`)",
    "eval": "evaluate a trained model on a manifest: predictions.jsonl + scores.json",
    "import-official-pave": "convert a released official PAVE patch into a videoadapt patch folder",
}


def _cmd_train(argv: Sequence[str]) -> int:
    from videoadapt.recipes.train import build_parser as train_parser
    from videoadapt.recipes.train import parse_overrides, train

    parser = train_parser()
    parser.epilog = f"{parser.epilog.rstrip()}\n{_TRAIN_EXAMPLE}"
    args = parser.parse_args(argv)
    with progress_logging():
        try:
            options, config, processor, training = parse_overrides(args.overrides)
            final = train(args.recipe, options, args.stage, args.method, config, processor, training)
        except (ValueError, OSError) as error:
            return fail("train", error)
    print(f"saved the trained model and processor to {final}")
    return 0


def _cmd_eval(argv: Sequence[str]) -> int:
    from videoadapt.recipes.evaluate import main as evaluate_main

    with progress_logging():
        try:
            return evaluate_main(argv)
        except (ValueError, OSError) as error:
            return fail("eval", error)


def _cmd_import_official_pave(argv: Sequence[str]) -> int:
    from videoadapt.pave_import import main as import_main

    try:
        return import_main(argv, prog="videoadapt import-official-pave")
    except SystemExit:
        if "-h" in argv or "--help" in argv:
            print(_IMPORT_EXAMPLE)
        raise


_FORWARDED: dict[str, Callable[[Sequence[str]], int]] = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "import-official-pave": _cmd_import_official_pave,
}


# --------------------------------------------------------------------------------------------- ask

_ASK_EXAMPLE = """\
The answer streams to stdout token by token (greedy decoding); with --num-beams > 1 it is printed at the end.

examples:
  videoadapt ask runs/msvd_qa/model clip.mp4 "what is the man doing?"
  videoadapt ask patches/avsd clip.mp4 "what can you hear?" --base llava-ov-7b/ \\
      --side-channel audio=features/clip_audio.safetensors"""


def _add_ask(sub: argparse._SubParsersAction) -> None:
    ask = example_parser(sub, "ask", "answer a question about a video with a trained model or a PAVE patch",
                          _ASK_EXAMPLE)  # fmt: skip
    ask.add_argument("model", help="a trained videoadapt model folder (with its processor) or a PAVE patch folder")
    ask.add_argument("video", help="the video file")
    ask.add_argument("question", help="the question or instruction")
    ask.add_argument("--base", default=None, help="a patch's base model folder (default: the base named in "
                     "patch_config.json; needed offline)")  # fmt: skip
    ask.add_argument(
        "--side-channel", action="append", default=[], metavar="NAME=FILE",
        help="features of a PAVE patch (NAME: patch name or side-channel kind; FILE: a SideChannelFeatures.save file)",
    )  # fmt: skip
    ask.add_argument("--max-new-tokens", type=positive_int, default=64, help="longest answer (default 64)")
    ask.add_argument("--num-beams", type=positive_int, default=1, help="beam size (default 1: greedy, streamed)")
    ask.add_argument("--num-frames", type=positive_int, default=None, help="frames per video when a patch's base "
                     "has no saved processor (default 32)")  # fmt: skip
    ask.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ask.set_defaults(func=_cmd_ask)


def _side_channel_files(items: Sequence[str]) -> dict[str, str]:
    files = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"`--side-channel` must look like NAME=FILE (e.g. audio=clip.safetensors), got {item!r}.")
        if name in files:
            raise ValueError(
                f"`--side-channel` names {name!r} twice ({files[name]!r} and {path!r}); pass one file per patch."
            )
        files[name] = path
    return files


def _cmd_ask(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transformers import TextStreamer

    from videoadapt.recipes.ask import answer, load_for_ask, prepare_inputs

    try:
        if not Path(args.video).is_file():
            raise ValueError(f"`video` must be an existing video file, got {args.video!r}.")
        files = _side_channel_files(args.side_channel)
        loaded = load_for_ask(args.model, base=args.base, num_frames=args.num_frames, device=args.device)
        inputs = prepare_inputs(loaded, args.video, args.question, files)
        tokenizer = loaded.processor.tokenizer
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if args.num_beams == 1 else None
        text = answer(loaded, inputs, args.max_new_tokens, args.num_beams, streamer)
    except (ValueError, OSError) as error:
        return fail("ask", error)
    if streamer is None:
        print(text)
    return 0


# --------------------------------------------------------------------------------------------- export-remote-code

_EXPORT_EXAMPLE = """\
OUT_DIR holds the weights, configs, tokenizers (and PAVE's patches/) plus the videoadapt code as flat modules, and
loads where videoadapt is not installed:
  AutoModelForImageTextToText.from_pretrained(OUT_DIR, trust_remote_code=True)
  AutoProcessor.from_pretrained(OUT_DIR, trust_remote_code=True)

example (then upload OUT_DIR as a Hub model repository):
  videoadapt export-remote-code runs/msvd_qa/model exports/reef-msvd-qa"""


def _add_export_remote_code(sub: argparse._SubParsersAction) -> None:
    export = example_parser(sub, "export-remote-code", "write a saved videoadapt model as a folder that loads with "
                             "trust_remote_code=True without videoadapt", _EXPORT_EXAMPLE)  # fmt: skip
    export.add_argument("model_dir", metavar="MODEL_DIR", help="a videoadapt model folder written by save_pretrained "
                        "(with its processor)")  # fmt: skip
    export.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (new or empty unless --overwrite)")
    export.add_argument("--overwrite", action="store_true", help="replace whatever OUT_DIR holds")
    export.set_defaults(func=_cmd_export_remote_code)


def _cmd_export_remote_code(args: argparse.Namespace) -> int:
    from videoadapt.remote_code import export_remote_code

    try:
        out_dir = export_remote_code(args.model_dir, args.out_dir, overwrite=args.overwrite)
    except (ValueError, OSError) as error:
        return fail("export-remote-code", error)
    print(f"wrote {out_dir}: load it with trust_remote_code=True (videoadapt not needed)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in _FORWARDED:  # their own parsers take every argument, --help included
        return _FORWARDED[argv[0]](argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
