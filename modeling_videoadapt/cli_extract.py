"""`videoadapt extract`: frame features of a manifest's videos into cached Arrow files (see videoadapt.recipes.extract)."""

import argparse
from typing import Any

from videoadapt.cli_common import example_parser, fail, positive_int, positive_number, progress_logging


__all__ = ["add_extract"]


_EXTRACT_EXAMPLE = """\
Each row gets `frame_features` [T, L, C] (T sampled frames, L tokens per frame), `frame_features_length` and
`frame_features_timestamps`; the dataset is saved with `datasets.save_to_disk` (`datasets.load_from_disk(OUTPUT)`).
The Arrow cache makes a killed run resume: rerun the same command (see docs/distributed.md).

example (32 SigLIP frames per video of LLaVA-OneVision's tower, 4 processes on one GPU):
  videoadapt extract data/train.jsonl --model llava-hf/llava-onevision-qwen2-7b-ov-hf --output features/train \\
      --split train --num-frames 32 --num-proc 4 --device cuda:0 --cache-dir cache/siglip --unique-videos"""


def add_extract(sub: argparse._SubParsersAction) -> None:
    extract = example_parser(
        sub, "extract", "pre-extract frame features of a manifest's videos with a model's vision tower",
        _EXTRACT_EXAMPLE,
    )  # fmt: skip
    extract.add_argument("manifest", help="JSONL manifest (videoadapt.recipes.manifest); rows need `video`")
    extract.add_argument("--model", required=True, help="model folder or Hub id whose vision tower encodes the frames "
                         "(a base checkpoint or a videoadapt model)")  # fmt: skip
    extract.add_argument("--output", required=True, help="folder to write the dataset with the features to (new)")
    extract.add_argument("--split", default=None, help="one split (train, validation, test); default all")
    extract.add_argument("--cache-dir", default=None, help="Arrow cache (default: OUTPUT-cache); reruns resume")
    extract.add_argument("--num-proc", type=positive_int, default=None, help="worker processes (default 1)")
    frames = extract.add_mutually_exclusive_group()
    frames.add_argument("--num-frames", type=positive_int, default=None, help="uniform frames per video (default 32)")
    frames.add_argument("--fps", type=positive_number, default=None, help="frames per second instead")
    extract.add_argument("--max-frames", type=positive_int, default=None, help="cap on frames with --fps")
    extract.add_argument("--feature-layer", type=int, default=None, help="hidden state to keep (default: the config's "
                         "vision_feature_layer; an InstructBLIP(-Video) tower: the output before post_layernorm; "
                         "refused for REEF/DynFocus/Compact folders, whose processor decides)")  # fmt: skip
    extract.add_argument("--preprocessor", default=None, help="frame preprocessing preset (default: the model "
                         "folder's processor or image processor); one of FramePreprocessor.presets()")  # fmt: skip
    extract.add_argument("--batch-size", type=positive_int, default=8, help="rows per map batch (default 8)")
    extract.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="feature storage")
    extract.add_argument("--device", default=None, help="torch device of the tower (default: cuda:0 if available)")
    extract.add_argument("--unique-videos", action="store_true", help="one row per distinct video")
    extract.set_defaults(func=_cmd_extract)


_TOWER_ATTRIBUTES = ("video_tower", "vision_tower", "vision_model")  # Video-LLaVA, LLaVA families, InstructBLIP


def _vision_tower(model: Any) -> Any:
    """The frame encoder of a video LLM (on the model or its headless `model`)."""
    for owner in (model, getattr(model, "model", None)):
        for name in _TOWER_ATTRIBUTES:
            tower = getattr(owner, name, None) if owner is not None else None
            if tower is not None:
                return tower
    raise ValueError(f"{type(model).__name__} has no {' / '.join(_TOWER_ATTRIBUTES)}; pass a video LLM to `--model`.")


def _frame_preprocessor(args: argparse.Namespace) -> Any:
    """`--preprocessor`, else the model folder's videoadapt processor settings, else its image processor."""
    import json
    from pathlib import Path

    from transformers import AutoImageProcessor

    from videoadapt.processors.image_processing import FramePreprocessor

    if args.preprocessor is not None:
        return FramePreprocessor.for_model(args.preprocessor)
    saved = Path(args.model) / "processor_config.json"
    if saved.is_file():
        settings = json.loads(saved.read_text(encoding="utf-8")).get("frame_preprocessor")
        if settings:
            return FramePreprocessor.from_dict(settings)
    try:
        return AutoImageProcessor.from_pretrained(args.model)
    except (OSError, ValueError):
        raise ValueError(
            f"{args.model} has no image processor; pass `--preprocessor` as one of {FramePreprocessor.presets()}."
        ) from None


def _run_extract(args: argparse.Namespace) -> int:
    """Load the manifest and the tower, extract into the Arrow cache, save the dataset to `args.output`.

    A REEF, DynFocus or Compact model folder gets exactly its `vision_features` (`Method.feature_encoder`: its
    processor's frame sampler unless `--num-frames` / `--fps`, its preprocessing, a row's `timestamps` segment); an
    InstructBLIP(-Video) base gets its vision model's output before `post_layernorm`, what REEF and DynFocus read.
    """
    import os
    import shutil
    from pathlib import Path

    import torch
    from datasets import DatasetDict
    from transformers import AutoModelForImageTextToText, InstructBlipVideoVisionModel, InstructBlipVisionModel

    from videoadapt.processors.sampling import FpsSampler, UniformSampler
    from videoadapt.recipes.extract import FrameFeatureEncoder, extract_features, unique_media
    from videoadapt.recipes.manifest import load_manifest
    from videoadapt.recipes.training import METHODS

    output = Path(args.output)
    if output.exists():
        raise ValueError(f"`--output` {str(output)!r} already exists; pass a new folder (or delete it first).")
    if args.max_frames is not None and args.fps is None:
        raise ValueError("`--max-frames` caps `--fps` sampling; pass `--fps` too, or use `--num-frames`.")
    rows = load_manifest(args.manifest, split=args.split)
    splits = {"rows": rows} if args.split is not None else dict(rows)
    if args.unique_videos:
        splits = {name: unique_media(split, "video") for name, split in splits.items()}
    model = AutoModelForImageTextToText.from_pretrained(args.model)
    sampler = UniformSampler(args.num_frames or 32) if args.fps is None else FpsSampler(args.fps, args.max_frames)
    method = next((m for m in METHODS.values() if m.frame_features and isinstance(model, m.model_class())), None)
    if method is not None:  # the features its `vision_features` take, sampled and preprocessed as its processor does
        if args.feature_layer is not None or args.preprocessor is not None:
            raise ValueError(
                f"`--feature-layer` and `--preprocessor` do not apply to a {method.name} model: its processor and "
                "its `vision_features` fix the frames' preprocessing and the features; drop them."
            )
        chosen = args.num_frames is not None or args.fps is not None
        processor = method.load_processor(model, args.model)
        encoder = method.feature_encoder(model, processor, sampler if chosen else None)
    else:
        tower = _vision_tower(model)
        layer = args.feature_layer
        if layer is None and isinstance(tower, InstructBlipVisionModel | InstructBlipVideoVisionModel):
            layer = -1  # before `post_layernorm`, which REEF and DynFocus apply to their `vision_features`
        elif layer is None:
            layer = getattr(model.config, "vision_feature_layer", None)
        encoder = FrameFeatureEncoder(
            tower, _frame_preprocessor(args), sampler, feature_layer=layer if isinstance(layer, int) else None
        )
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    cache_dir = args.cache_dir or f"{os.fspath(output).rstrip(os.sep)}-cache"
    options = dict(num_proc=args.num_proc, batch_size=args.batch_size, dtype=args.dtype)
    done = {name: extract_features(split, encoder, "video", cache_dir, devices=None if device == "cpu" else [device],
                                   **options) for name, split in splits.items()}  # fmt: skip
    staging = output.with_name(f".{output.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    result = done["rows"] if args.split is not None else DatasetDict(done)
    result.save_to_disk(os.fspath(staging))
    os.replace(staging, output)
    return sum(len(split) for split in done.values())


def _cmd_extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    with progress_logging():
        try:
            rows = _run_extract(args)
        except (ValueError, OSError) as error:
            return fail("extract", error)
    print(f"wrote {rows} rows with frame features to {Path(args.output)}")
    return 0
