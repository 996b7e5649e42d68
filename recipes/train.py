"""Train a videoadapt recipe with `transformers.Trainer`, on one CPU or a cluster, with no code change.

    accelerate launch [--config_file recipes/accelerate/ddp.yaml] -m videoadapt.recipes.train \\
        --recipe reef/msvd_qa --stage main model=Salesforce/instructblip-vicuna-7b \\
        train=data/msvd_qa.jsonl output_dir=runs/msvd_qa [key=value ...]

`--recipe` is a shipped name (`reef/msvd_qa`, `dynfocus/default`, `compact/stage1`, ...) or a YAML path; the method
is its folder's name unless `--method` says otherwise. `key=value` pairs (values parsed as YAML) are:
- run keys: `model` (checkpoint to start from; default the recipe's base checkpoint), `train` / `eval` (JSONL
  manifests; `eval` turns on evaluation loss), `output_dir`, `variant` (DynFocus freezing variants),
  `features` / `eval_features` (instead of `train` / `eval`: folders written by `videoadapt extract`, whose rows
  carry pre-extracted features in the column `features_column`, default frame_features; a saved DatasetDict gives
  its train / validation split. REEF, DynFocus, Compact: the frozen tower's `vision_features`, no video is decoded,
  and a stage that trains the tower is refused; PAVE: the side channel, instead of the `side_channels` files),
  `max_per_device_batch_size` (the global batch stays the recipe's: gradient accumulation makes up the rest), `resume`
  (`true`: the last complete checkpoint in `output_dir`; or a checkpoint path; `resume_from_checkpoint` is the same
  key), `compressor` (Compact stage 1: the
  compressor pre-training output, a folder holding compressor.safetensors or that file, loaded into the base; without
  it the compressor stays untrained, with a warning);
- `config.<field>`: model config overrides (e.g. `config.num_selected_tokens=4`);
- `processor.<field>`: processor arguments (e.g. `processor.num_frames=4`);
- any `TrainingArguments` field (`max_steps=3`, `bf16=false`, `activation_checkpointing=true`, `eval_strategy=steps`,
  `save_steps=100`, `report_to=tensorboard`, `learning_rate=1e-4`, ...), applied over the recipe's values.

Checkpoints are written atomically (`VideoadaptTrainer`); a run without `resume` refuses an `output_dir` that already
holds checkpoints (an earlier run's would mix with its own). The global batch is split over the processes and, in one
process that sees several GPUs (DataParallel), over those GPUs. The final model and processor go to `<output_dir>/model`,
whose model card (README.md) names the recipe (file, method, setting, stage) and the training data (the manifest and
the dataset names of its rows, see `dataset_names`).
"""

import argparse
import dataclasses
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from videoadapt.recipes.manifest import load_manifest
from videoadapt.recipes.training import (
    FEATURES_COLUMN,
    METHODS,
    STAGING_PREFIX,
    VideoadaptTrainer,
    load_feature_rows,
    method_of,
)


__all__ = [
    "RunOptions",
    "build_parser",
    "dataset_names",
    "main",
    "parse_overrides",
    "parse_value",
    "split_override",
    "train",
]

logger = logging.get_logger(__name__)

_TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


@dataclasses.dataclass
class RunOptions:
    """The run keys of the command line (see the module docstring)."""

    train: str | None = None
    output_dir: str | None = None
    model: str | None = None
    eval: str | None = None
    variant: str | None = None
    max_per_device_batch_size: int | None = None
    resume: bool | str = False
    features: str | None = None
    eval_features: str | None = None
    features_column: str = FEATURES_COLUMN
    compressor: str | None = None


_RUN_FIELDS = {f.name for f in dataclasses.fields(RunOptions)}
_PATH_FIELDS = ("train", "eval", "output_dir", "model", "features", "eval_features", "compressor")


def parse_value(raw: str) -> Any:
    """A command-line value: YAML scalars/lists (`true`, `3`, `[4, 2]`, `{type: uniform}`), numbers YAML 1.1 leaves as
    text (`1e-4`) as floats, and yes/no/on/off kept as text (only true/false are booleans: `save_strategy=no`)."""
    if not raw:
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        return raw.strip()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def split_override(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, `parse_value(value)`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"overrides must look like key=value, got {item!r}.")
    return key, parse_value(raw)


def parse_overrides(items: Sequence[str]) -> tuple[RunOptions, dict, dict, dict]:
    """`key=value` items -> (run options, config overrides, processor overrides, TrainingArguments overrides)."""
    run, config, processor, training = {}, {}, {}, {}
    for item in items:
        key, value = split_override(item)
        head, dot, tail = key.partition(".")
        if dot and head == "config":
            config[tail] = value
        elif dot and head == "processor":
            processor[tail] = value
        elif key in _RUN_FIELDS:
            run[key] = str(value) if key in _PATH_FIELDS and value is not None else value
        elif key in _TRAINING_FIELDS:
            training[key] = value
        else:
            raise ValueError(
                f"unknown override {key!r}: use a run key ({', '.join(sorted(_RUN_FIELDS))}), `config.<field>`, "
                "`processor.<field>` or a `transformers.TrainingArguments` field."
            )
    return RunOptions(**run), config, processor, training


def _device_defaults(recipe_bf16: bool, training: dict) -> dict:
    """CPU runs (no CUDA): `use_cpu` (so that accelerate's multi-process CPU launch uses gloo), and bf16 off unless
    the command line asks for it."""
    if torch.cuda.is_available():
        return training
    out = {"use_cpu": True, **training}
    if recipe_bf16 and "bf16" not in training:
        logger.info("No CUDA device: training in float32 (the recipe's bf16 is for GPUs; pass bf16=true to force).")
        out["bf16"] = False
    return out


def dataset_names(rows: Any, manifest: str | os.PathLike) -> list[str]:
    """The datasets that manifest rows come from, in order of appearance: `meta["dataset"]`, else the `<dataset>` of
    an id `<dataset>/<split>/...` (the converters' ids); the manifest file's stem when no row says."""
    names = []
    for row_id, split, meta in zip(rows["id"], rows["split"], rows["meta"]):
        parts = str(row_id).split("/")
        if isinstance(meta, dict) and isinstance(meta.get("dataset"), str) and meta["dataset"]:
            names.append(meta["dataset"])
        elif len(parts) >= 3 and parts[1] == split and parts[0]:
            names.append(parts[0])
    return list(dict.fromkeys(names)) or [Path(manifest).stem]


def _card_info(spec: Any, recipe: Any, recipe_file: str, stage: str | None, manifest: str, rows: Any) -> dict:
    """What the trained model's card says about its training (no metrics yet: `evaluate ... card=true` adds them)."""
    setting = {"method": spec.name, "setting": getattr(recipe, "name", None), "stage": stage}
    recipe_info = {"file": recipe_file, **{k: v for k, v in setting.items() if v is not None}, "manifests": [manifest]}
    return {"recipe": recipe_info, "datasets": dataset_names(rows, manifest), "metrics": {}}


def _clean_staging(output_dir: Path) -> None:
    """Remove what a killed run left half-written (staging folders never hold a complete checkpoint)."""
    for path in output_dir.glob(f"{STAGING_PREFIX}*"):
        logger.warning(f"Removing {path}: a checkpoint that an interrupted run did not finish writing.")
        shutil.rmtree(path, ignore_errors=True)


def _check_sources(options: RunOptions) -> None:
    """Rows come from manifests (videos) or from extracted-features folders, for training and evaluation alike."""
    if options.train is not None and options.features is not None:
        raise ValueError(
            "pass one of `train=<manifest.jsonl>` (decode the videos) and `features=<folder>` (rows with extracted "
            f"features), got both: train={options.train!r}, features={options.features!r}."
        )
    if options.features is None and options.eval_features is not None:
        raise ValueError("`eval_features=` evaluates from extracted features; pass `features=` for training too.")
    if options.features is not None and options.eval is not None:
        raise ValueError(
            f"`eval={options.eval}` rows would need their videos decoded while the batches read features; pass "
            "`eval_features=<folder>` (the evaluation rows extracted like the training rows) instead."
        )
    if (options.train is None and options.features is None) or options.output_dir is None:
        raise ValueError("pass `train=<manifest.jsonl>` (or `features=<folder>`) and `output_dir=<folder>`.")


def _resume_option(options: RunOptions, training: dict) -> bool | str:
    """The checkpoint to resume from: `resume` (or `resume_from_checkpoint`, which `TrainingArguments` holds but
    `Trainer` never reads), checked before anything loads: `true`, `false` or an existing checkpoint folder."""
    resume, key = options.resume, "resume"
    if "resume_from_checkpoint" in training:
        other = training.pop("resume_from_checkpoint")
        if resume not in (False, None) and other not in (False, None) and other != resume:
            raise ValueError(f"pass one of `resume` and `resume_from_checkpoint`, got resume={resume!r} and "
                             f"resume_from_checkpoint={other!r}.")  # fmt: skip
        if resume in (False, None):
            resume, key = other, "resume_from_checkpoint"
    if resume is None or isinstance(resume, bool):
        return bool(resume)
    checkpoints = sorted(Path(options.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"))
    if not isinstance(resume, str) or not (Path(resume) / TRAINER_STATE_NAME).is_file():
        raise ValueError(
            f"`{key}` must be true (the last checkpoint in `output_dir`), false, or a checkpoint folder holding "
            f"{TRAINER_STATE_NAME}, got {resume!r}; the checkpoints in {options.output_dir!r} are "
            f"{[os.fspath(c) for c in checkpoints] or 'none'}."
        )
    return resume


def _check_fresh_output(output_dir: Path, resume: bool | str) -> None:
    """A run that does not resume must not start in a folder holding an earlier run's checkpoints: they would mix
    with its own, `save_total_limit` would rotate its new checkpoints out first (they have lower step numbers) and a
    later `resume=true` would pick the earlier run's last checkpoint."""
    if resume or not output_dir.is_dir():
        return
    earlier = sorted((p.name for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()),
                     key=lambda name: (len(name), name))  # fmt: skip
    if earlier:
        raise ValueError(
            f"`output_dir` {os.fspath(output_dir)!r} already holds the checkpoints {earlier} of an earlier run; pass "
            "`resume=true` to continue that run, or another `output_dir` (or delete them) to start a new one."
        )


def _rows(options: RunOptions) -> tuple[Any, Any]:
    """(training rows, evaluation rows or None) of the manifests or the extracted-features folders."""
    if options.features is None:
        evaluation = None if options.eval is None else load_manifest(options.eval, split="validation")
        return load_manifest(options.train, split="train"), evaluation
    column = options.features_column
    evaluation = None
    if options.eval_features is not None:
        evaluation = load_feature_rows(options.eval_features, "validation", column)
    return load_feature_rows(options.features, "train", column), evaluation


def _training_arguments(
    spec: Any, recipe: Any, stage: str | None, output_dir: Path, max_per_device: int | None, overrides: dict
) -> TrainingArguments:
    """The stage's `TrainingArguments`, its global batch split over every device that takes a share of it: the
    `WORLD_SIZE` processes and, in a single process that sees several GPUs, the `n_gpu` replicas that Trainer's
    `DataParallel` feeds one per-device batch each (otherwise the global batch would be n_gpu times the recipe's)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))

    def arguments(devices: int) -> TrainingArguments:
        return spec.training_arguments(recipe, stage, os.fspath(output_dir), devices,
                                       max_per_device_batch_size=max_per_device, **overrides)  # fmt: skip

    args = arguments(world_size)
    if args.n_gpu > 1:
        logger.info(f"One process on {args.n_gpu} GPUs (DataParallel): the global batch is split over them too.")
        args = arguments(world_size * args.n_gpu)
    return args


def train(
    recipe_name: str | os.PathLike,
    options: RunOptions,
    stage: str | None = None,
    method: str | None = None,
    config: dict | None = None,
    processor: dict | None = None,
    training: dict | None = None,
) -> Path:
    """Run one recipe stage; returns `<output_dir>/model` (the trained model + processor)."""
    spec = method_of(recipe_name, method)
    stage = spec.check_stage(stage)
    name = os.fspath(recipe_name)
    recipe_file = Path(name).name  # the card names a YAML path by its file name
    if not Path(name).is_file():  # a shipped name: "reef/msvd_qa" -> the reef recipe "msvd_qa"
        name = Path(name).name
        recipe_file = f"{spec.name}/{name}.yaml"
    recipe = spec.load_recipe(name, options.variant) if spec.name == "dynfocus" else spec.load_recipe(name)
    _check_sources(options)
    training = dict(training or {})
    resume = _resume_option(options, training)
    _check_fresh_output(Path(options.output_dir), resume)
    features = None if options.features is None else options.features_column
    output_dir = Path(options.output_dir)
    checkpoint = options.model or recipe.base_checkpoint
    set_seed(int(training.get("seed", recipe.seed)))  # new modules start the same in every process and run
    model, proc = spec.build(recipe, stage, checkpoint, config or {}, processor or {}, compressor=options.compressor)
    trained = spec.apply_freezing(recipe, model, stage)
    if features is not None and spec.frame_features is not None:
        spec.check_features_training(model, trained, f"the {spec.name} recipe {recipe.name!r} (stage {stage})")
    train_rows, eval_rows = _rows(options)
    source = options.train or options.features
    model.card_info = _card_info(spec, recipe, recipe_file, stage, source, train_rows)
    logger.info(f"{spec.name} recipe {recipe.name!r}, stage {stage}: training {len(trained)} parameter tensors.")

    overrides = _device_defaults(bool(getattr(recipe, "bf16", False)), training)
    if eval_rows is not None:
        overrides.setdefault("eval_strategy", "epoch")
    args = _training_arguments(spec, recipe, stage, output_dir, options.max_per_device_batch_size, overrides)
    if args.should_save:
        _clean_staging(output_dir)
    trainer = VideoadaptTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=spec.collator(recipe, proc, True, features),
        callbacks=spec.callbacks(recipe, stage),
    )
    trainer.train(resume_from_checkpoint=resume or None)
    final = _save_final(trainer, proc, output_dir)
    if trainer.args.should_save:
        spec.final_artifacts(recipe, model, output_dir)
    return final


def _save_final(trainer: VideoadaptTrainer, processor: Any, output_dir: Path) -> Path:
    """`<output_dir>/model`, written to a staging folder and renamed (every process joins the save: FSDP/ZeRO-3)."""
    final, staging = output_dir / "model", output_dir / f"{STAGING_PREFIX}model"
    trainer.save_model(os.fspath(staging))
    if trainer.args.should_save:
        processor.save_pretrained(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        logger.info(f"Saved the trained model and processor to {final}.")
    trainer.accelerator.wait_for_everyone()
    return final


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videoadapt train",
        description="Train a videoadapt recipe with transformers.Trainer (launch with `accelerate launch -m "
        "videoadapt.recipes.train` for several devices).",
        epilog="example:\n" + __doc__.split("\n\n", 2)[1] + "\n\n" + __doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", required=True, help="shipped name (e.g. reef/msvd_qa) or YAML path")
    parser.add_argument("--stage", default=None, help="recipe stage (REEF: initial|main; DynFocus: stage1|stage2)")
    parser.add_argument("--method", default=None, choices=sorted(METHODS), help="default: the recipe's folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run keys, config.*, processor.*, "
                        "or TrainingArguments fields")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options, config, processor, training = parse_overrides(args.overrides)
    train(args.recipe, options, args.stage, args.method, config, processor, training)
    return 0


if __name__ == "__main__":
    logging.set_verbosity_info()
    logging.get_logger("videoadapt").setLevel(logging.INFO)  # our loggers live outside transformers' root
    sys.exit(main())
