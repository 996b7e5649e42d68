"""Evaluate a trained videoadapt model on one split of a manifest: generation with the recipe's settings, then metrics.

    python -m videoadapt.recipes.evaluate --recipe reef/msvd_qa --stage main model=runs/msvd_qa/model \\
        eval=data/msvd_qa.jsonl output_dir=runs/msvd_qa/eval [split=test] [batch_size=8] [num_beams=5] \\
        [max_new_tokens=10] [metrics=accuracy,em1] [key=value ...]

`--recipe` is a shipped name (`reef/msvd_qa`, `pave/scanqa`, `dynfocus/default`, `compact/stage2`, ...) or a YAML
path; the method is its folder's name unless `--method` says otherwise; `--stage` defaults to the method's last stage
(REEF: main, DynFocus: stage2). `key=value` pairs (values parsed as YAML) are:
- `model` (required): the trained model folder (`<output_dir>/model` of `videoadapt.recipes.train`), which holds the
  processor; `eval` (required): the JSONL manifest; `output_dir` (required): where the result files go;
- `features` (instead of `eval`): a folder written by `videoadapt extract` (a saved DatasetDict gives its `split`)
  whose rows carry pre-extracted features in the column `features_column` (default frame_features): REEF, DynFocus
  and Compact then read the frozen tower's `vision_features` and decode no video; PAVE reads its side channel there;
- `split` (default test), `batch_size` (rows per `generate` call, default 8), `device` (default cuda if available),
  `dtype` (float32 | bfloat16 | float16, default float32), `variant` (DynFocus), `progress` (default true);
- `metrics`: comma-separated names among accuracy, em1, bleu, cider, rouge_l, meteor. Default by task: qa and
  classification -> accuracy (+ em1 for ScanQA / SQA3D); caption and dialogue -> bleu, cider, rouge_l, meteor;
- `num_beams`, `max_new_tokens`, `generation.<field>` (any `generate` argument): over the recipe's decoding settings
  (recipes without any decode greedily, `max_new_tokens` 64);
- `config.<field>`: model config overrides (the saved model's config otherwise wins over the recipe's values);
- `card` (default false): `true` also records the scores in the model folder's card (README.md) as model-index eval
  results, under the dataset names of the evaluated rows (see `videoadapt.recipes.train.dataset_names`); results
  on other datasets stay.

Writes `<output_dir>/predictions.jsonl` (id, prediction, references; candidates when several sequences are returned)
and `<output_dir>/scores.json` (scores, counts, recipe, model, generation settings), each atomically. Runs in one
process (no `accelerate launch`): generation is batched on one device, in manifest order.

Shape legend: B rows per batch, k sequences returned per row, L prompt tokens, G generated tokens.
"""

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, set_seed
from transformers.utils import logging

from videoadapt.hub_mixin import read_card_info
from videoadapt.metrics import (
    Accuracy,
    Bleu,
    Cider,
    ExactMatchAt1,
    Meteor,
    RougeL,
    meteor_unavailable_reason,
    normalize_answer,
)
from videoadapt.processors.atomic import atomic_write
from videoadapt.recipes.manifest import load_manifest
from videoadapt.recipes.train import dataset_names, split_override
from videoadapt.recipes.training import FEATURES_COLUMN, METHODS, Method, SFTCollator, load_feature_rows, method_of


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "METRICS",
    "TASK_METRICS",
    "EvalOptions",
    "build_parser",
    "check_metrics",
    "compute_metrics",
    "default_metrics",
    "evaluate",
    "generate_predictions",
    "main",
    "parse_eval_overrides",
]

logger = logging.get_logger(__name__)

PREDICTIONS_NAME, SCORES_NAME = "predictions.jsonl", "scores.json"
DEFAULT_MAX_NEW_TOKENS = 64  # recipes without decoding settings (DynFocus, Compact)
EM1_DATASETS = ("scanqa", "sqa3d")
_CAPTION_METRICS = ("bleu", "cider", "rouge_l", "meteor")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "qa": ("accuracy",),
    "classification": ("accuracy",),
    "caption": _CAPTION_METRICS,
    "dialogue": _CAPTION_METRICS,  # free-text answers (PAVE's AVSD reports CIDEr)
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class EvalOptions:
    """The run keys of the command line (see the module docstring)."""

    model: str | None = None
    eval: str | None = None
    output_dir: str | None = None
    split: str = "test"
    batch_size: int = 8
    metrics: tuple[str, ...] | None = None
    device: str | None = None
    dtype: str = "float32"
    variant: str | None = None
    progress: bool = True
    card: bool = False
    features: str | None = None
    features_column: str = FEATURES_COLUMN


_RUN_FIELDS = {f.name for f in dataclasses.fields(EvalOptions)}
_PATH_FIELDS = ("model", "eval", "output_dir", "device", "features")
_GENERATION_SHORTCUTS = ("num_beams", "max_new_tokens")


# --------------------------------------------------------------------------------------------- metrics


def _matches(text: str, references: Sequence[str]) -> bool:
    return normalize_answer(text) in {normalize_answer(ref) for ref in references}


def _any_reference(prediction: str, references: Sequence[str]) -> str:
    """The reference the prediction matches (normalised), else the first: accuracy against any accepted answer."""
    return next((ref for ref in references if _matches(prediction, [ref])), references[0])


def _accuracy(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Normalised exact match against any reference; with k > 1 candidates per row also `accuracy_top<k>` (a row
    counts when any of its k candidates matches)."""
    predictions = [r["prediction"] for r in records]
    references = [_any_reference(r["prediction"], r["references"]) for r in records]
    scores = Accuracy().compute(predictions=predictions, references=references, normalize=True)
    k = min(len(r.get("candidates") or ()) for r in records)
    if k > 1:
        best = [
            next((c for c in r["candidates"][:k] if _matches(c, r["references"])), r["prediction"]) for r in records
        ]
        top = [_any_reference(b, r["references"]) for b, r in zip(best, records)]
        scores[f"accuracy_top{k}"] = Accuracy().compute(predictions=best, references=top, normalize=True)["accuracy"]
    return scores


def _reference_metric(metric_class: type) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, float]]:
    def compute(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        predictions, references = [r["prediction"] for r in records], [list(r["references"]) for r in records]
        metric = metric_class()
        try:
            return metric.compute(predictions=predictions, references=references)
        finally:
            getattr(metric, "close", lambda: None)()  # METEOR: stop its java child now

    return compute


# name -> (compute(records) -> {score name: value}, reason the metric cannot run or None)
METRICS: dict[str, tuple[Callable[[Sequence[Mapping[str, Any]]], dict[str, float]], Callable[[], str | None]]] = {
    "accuracy": (_accuracy, lambda: None),
    "em1": (_reference_metric(ExactMatchAt1), lambda: None),
    "bleu": (_reference_metric(Bleu), lambda: None),
    "cider": (_reference_metric(Cider), lambda: None),
    "rouge_l": (_reference_metric(RougeL), lambda: None),
    "meteor": (_reference_metric(Meteor), lambda: meteor_unavailable_reason()),
}


def default_metrics(task: str, dataset: str | None = None) -> tuple[str, ...]:
    """The metrics of a task (see `TASK_METRICS`), plus `em1` for ScanQA / SQA3D question answering."""
    if task not in TASK_METRICS:
        raise ValueError(f"`task` must be one of {sorted(TASK_METRICS)}, got {task!r}; pass `metrics=...` instead.")
    extra = ("em1",) if task == "qa" and (dataset or "").lower() in EM1_DATASETS else ()
    return TASK_METRICS[task] + extra


def check_metrics(names: Sequence[str]) -> tuple[str, ...]:
    """Known, unique metric names in the given order."""
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"`metrics` must be a non-empty list of names among {list(METRICS)}, got {list(names)}; fix "
            f"{unknown or 'the empty list'}."
        )
    return tuple(dict.fromkeys(names))


def compute_metrics(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> tuple[dict, dict]:
    """`records` (id, prediction, references[, candidates]) -> ({score name: value}, {skipped metric: reason})."""
    scores, skipped = {}, {}
    for name in check_metrics(names):
        compute, unavailable = METRICS[name]
        reason = unavailable()
        if reason is not None:
            logger.warning(f"Skipping {name}: {reason}")
            skipped[name] = reason
            continue
        scores.update({key: float(value) for key, value in compute(records).items()})
    return scores, skipped


# --------------------------------------------------------------------------------------------- the command line


def _metric_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    if isinstance(value, list | tuple) and all(isinstance(name, str) for name in value):
        return tuple(value)
    raise ValueError(f"`metrics` must be comma-separated names such as accuracy,bleu, got {value!r}.")


def parse_eval_overrides(items: Sequence[str]) -> tuple[EvalOptions, dict, dict]:
    """`key=value` items -> (run options, config overrides, generation overrides)."""
    run, config, generation = {}, {}, {}
    for item in items:
        key, value = split_override(item)
        head, dot, tail = key.partition(".")
        if dot and head == "config":
            config[tail] = value
        elif dot and head == "generation":
            generation[tail] = value
        elif key in _GENERATION_SHORTCUTS:
            generation[key] = value
        elif key == "metrics":
            run[key] = _metric_names(value)
        elif key in _RUN_FIELDS:
            run[key] = str(value) if key in _PATH_FIELDS and value is not None else value
        else:
            raise ValueError(
                f"unknown override {key!r}: use a run key ({', '.join(sorted(_RUN_FIELDS))}), num_beams, "
                "max_new_tokens, `generation.<field>` or `config.<field>`."
            )
    return EvalOptions(**run), config, generation


def _check_options(options: EvalOptions) -> None:
    if options.eval is not None and options.features is not None:
        raise ValueError(
            "pass one of `eval=<manifest.jsonl>` (decode the videos) and `features=<folder>` (rows with extracted "
            f"features), got both: eval={options.eval!r}, features={options.features!r}."
        )
    rows = "eval" if options.features is None else "features"
    missing = [name for name in ("model", rows, "output_dir") if getattr(options, name) is None]
    if missing:
        raise ValueError(
            f"pass {', '.join(f'`{m}=...`' for m in missing)}: the model folder, manifest (or `features=` folder), "
            "output folder."
        )
    if not Path(options.model).is_dir():
        raise ValueError(
            f"`model` must be a trained model folder (`<output_dir>/model` of a training run), got {options.model!r}."
        )
    batch = options.batch_size
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"`batch_size` must be an int >= 1 (rows per generate call), got {batch!r}; e.g. 8.")
    if options.dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {list(DTYPES)}, got {options.dtype!r}.")
    if options.metrics is not None:
        check_metrics(options.metrics)
    if not isinstance(options.card, bool):
        raise ValueError(f"`card` must be true or false, got {options.card!r}; e.g. card=true.")


def _check_generation(generation: dict) -> dict:
    for name in ("num_beams", "max_new_tokens", "num_return_sequences"):
        value = generation.get(name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {value!r}; e.g. {name}=4.")
    return generation


# --------------------------------------------------------------------------------------------- evaluation


def _load_recipe(spec: Method, recipe_name: str | os.PathLike, variant: str | None) -> Any:
    name = os.fspath(recipe_name)
    if not Path(name).is_file():  # a shipped name: "reef/msvd_qa" -> the reef recipe "msvd_qa"
        name = Path(name).name
    return spec.load_recipe(name, variant) if spec.name == "dynfocus" else spec.load_recipe(name)


def _generation_settings(recipe: Any, overrides: dict) -> dict:
    """The recipe's `generate` arguments (greedy, `DEFAULT_MAX_NEW_TOKENS`, for recipes without any) + overrides."""
    if hasattr(recipe, "generation_kwargs"):
        settings = dict(recipe.generation_kwargs())
    else:
        settings = {"num_beams": 1, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "do_sample": False}
    return _check_generation({**settings, **overrides})


def _saved_config_wins(spec: Method, recipe: Any, stage: str | None, model_dir: str, config: dict) -> dict:
    """Config overrides that keep the trained model's saved values for every field the recipe would override."""
    if spec.name == "pave":  # PAVE's build takes no config overrides for a model that already has its patch
        return dict(config)
    saved = AutoConfig.from_pretrained(model_dir)
    kept = {key: getattr(saved, key) for key in spec.config_overrides(recipe, stage) if hasattr(saved, key)}
    return {**kept, **config}


def _check_pave_patch(recipe: Any, model_dir: str) -> None:
    """A PAVE model folder must hold the recipe's trained patch (otherwise `build` would add a random one)."""
    saved = AutoConfig.from_pretrained(model_dir)
    patches = sorted(getattr(saved, "pave_patches", None) or {})
    if recipe.name not in patches:
        raise ValueError(
            f"`model` {model_dir!r} holds the patches {patches}, not the recipe's patch {recipe.name!r}; pass the "
            "trained model folder (`<output_dir>/model`) of this recipe."
        )


def _to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Tensors (also nested in dicts and lists) moved to `device`; floating ones cast to `dtype`."""
    if torch.is_tensor(value):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device, dtype) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_device(item, device, dtype) for item in value)
    return value


def _task_of(recipe: Any, rows: Any) -> str | None:
    """The recipe's task, else the rows' task when they all share one (None when they mix tasks)."""
    tasks = set(rows["task"])
    return getattr(recipe, "task", None) or (tasks.pop() if len(tasks) == 1 else None)


@torch.inference_mode()
def generate_predictions(
    model: Any, collator: SFTCollator, rows: Any, generation: dict, batch_size: int, progress: bool = True
) -> list[dict[str, Any]]:
    """Rows -> one record per row: {"id", "prediction", "references"} (+ "candidates" when k > 1), in row order.

    Each batch is the collator's left-padded prompts; only the generated tokens (after the L prompt tokens) are
    decoded, without special tokens, and stripped.
    """
    tokenizer, k = collator.tokenizer, int(generation.get("num_return_sequences", 1))
    parameter = next(model.parameters())
    records = []
    with tqdm(total=len(rows), desc="Evaluating", unit="row", disable=not progress) as bar:
        for start in range(0, len(rows), batch_size):
            chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
            batch = collator(chunk)
            references = batch.pop("references")
            batch = _to_device(batch, parameter.device, parameter.dtype)
            out = model.generate(**batch, **generation, pad_token_id=tokenizer.pad_token_id)  # [B * k, L + G]
            texts = [t.strip() for t in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :],
                                                                skip_special_tokens=True)]  # fmt: skip
            for i, (row, refs) in enumerate(zip(chunk, references)):
                record = {"id": row["id"], "prediction": texts[i * k], "references": list(refs)}
                if k > 1:
                    record["candidates"] = texts[i * k : (i + 1) * k]
                records.append(record)
            bar.update(len(chunk))
    return records


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    atomic_write(path, write)


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def evaluate(
    recipe_name: str | os.PathLike,
    options: EvalOptions,
    stage: str | None = None,
    method: str | None = None,
    config: dict | None = None,
    generation: dict | None = None,
) -> dict[str, Any]:
    """Generate answers for `options.split` of `options.eval` with the trained model, score them, write the files.

    Returns:
        The content of `scores.json`: "scores" (score name -> value), "skipped" (metric -> reason), "num_examples",
        "split", "task", "metrics", "recipe", "method", "stage", "model", "manifest", "generation".
    """
    spec = method_of(recipe_name, method)
    stage = spec.check_stage(stage if stage is not None or spec.stages is None else spec.stages[-1])
    recipe = _load_recipe(spec, recipe_name, options.variant)
    _check_options(options)
    generation = _generation_settings(recipe, dict(generation or {}))
    if options.features is None:
        rows, features = load_manifest(options.eval, split=options.split), None
    else:
        rows = load_feature_rows(options.features, options.split, options.features_column)
        features = options.features_column
    task = _task_of(recipe, rows)
    if options.metrics is None and task is None:
        raise ValueError(f"the {options.split} rows mix tasks {sorted(set(rows['task']))} and the recipe names none; "
                         "pass `metrics=...`.")  # fmt: skip
    metrics = options.metrics or default_metrics(task, getattr(recipe, "dataset", None))
    if spec.name == "pave":
        _check_pave_patch(recipe, options.model)
    config = _saved_config_wins(spec, recipe, stage, options.model, dict(config or {}))
    model, processor = spec.build(recipe, stage, options.model, config, {})
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device, DTYPES[options.dtype]).eval()
    collator = spec.collator(recipe, processor, train=False, features=features)
    set_seed(int(getattr(recipe, "seed", 0)))  # decoding is deterministic; this pins any sampling a user asks for
    source = options.eval or options.features
    logger.info(f"Evaluating {options.model} on {len(rows)} {options.split} rows of {source} ({spec.name}).")
    records = generate_predictions(model, collator, rows, generation, options.batch_size, options.progress)
    scores, skipped = compute_metrics(records, metrics)
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(output_dir / PREDICTIONS_NAME, records)
    summary = {
        "scores": scores, "skipped": skipped, "num_examples": len(records), "split": options.split, "task": task,
        "metrics": list(metrics), "recipe": os.fspath(recipe_name), "method": spec.name, "stage": stage,
        "model": os.path.abspath(options.model), "manifest": os.path.abspath(source), "generation": generation,
    }  # fmt: skip
    _write_json(output_dir / SCORES_NAME, summary)
    if options.card:
        _add_to_card(model, options, rows, scores)
    logger.info(f"Scores ({len(records)} rows): {json.dumps(scores)}; written to {output_dir}.")
    return summary


def _add_to_card(model: Any, options: EvalOptions, rows: Any, scores: Mapping[str, float]) -> None:
    """Record `scores` in the card of the model folder as eval results of the evaluated rows' dataset(s)."""
    dataset = "+".join(dataset_names(rows, options.eval or options.features))
    recorded = read_card_info(options.model, model.config.model_type).get("metrics") or {}
    model.card_info = {"metrics": {**recorded, dataset: {**scores, "split": options.split}}}
    path = model.save_card(options.model)
    logger.info(f"Added the {dataset} {options.split} scores to the model card {path}.")


def _help_epilog() -> str:
    """The module docstring's example (as `videoadapt eval`) and key list."""
    _, example, keys = __doc__.split("\n\n", 2)
    example = example.replace("python -m videoadapt.recipes.evaluate", "videoadapt eval")
    return f"example (or `python -m videoadapt.recipes.evaluate ...`):\n{example}\n\n{keys.split('Shape legend')[0]}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videoadapt eval",
        description="Evaluate a trained videoadapt model: batched generation with the recipe's decoding settings, "
        "then the task's metrics, written to predictions.jsonl and scores.json (one process).",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", required=True, help="shipped name (e.g. reef/msvd_qa) or YAML path")
    parser.add_argument("--stage", default=None, help="recipe stage (default: the method's last: REEF main, DynFocus "
                        "stage2)")  # fmt: skip
    parser.add_argument("--method", default=None, choices=sorted(METHODS), help="default: the recipe's folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="model=, eval= (or features=), "
                        "output_dir= (required), split=, batch_size=, metrics=, num_beams=, max_new_tokens=, card=, generation.*, "
                        "config.*")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options, config, generation = parse_eval_overrides(args.overrides)
    summary = evaluate(args.recipe, options, args.stage, args.method, config, generation)
    line = {key: summary[key] for key in ("scores", "skipped", "num_examples")}
    sys.stdout.write(json.dumps(line) + "\n")  # the command's result (logs go to stderr)
    return 0


if __name__ == "__main__":
    logging.set_verbosity_info()
    sys.exit(main())
