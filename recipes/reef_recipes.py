"""REEF training recipes: one YAML per column of the REEF supplement's Tables 1-3, loaded and validated.

A recipe holds the task, dataset, prompt and generation settings, and two stages: "initial" (the MA-LMM-equivalent
adapter: no spatial filtering, alpha 1, detached memory) and "main" (STF + RTC at the table's alpha and K). Each stage
turns into `ReefConfig` keyword overrides, `TrainingArguments`, a parameter freezing rule and Trainer callbacks. Every
value names its source (`sources`: the supplement, MA-LMM's code, or "ours").

    recipe = load_recipe("msvd_qa")
    model = ReefForConditionalGeneration.from_pretrained(base, **recipe.config_overrides("initial"))
    recipe.apply_freezing(model, "initial")
    trainer = Trainer(model, recipe.training_arguments("initial", "out/initial", world_size=8), ...,
                      callbacks=recipe.callbacks("initial"))

A parameter is trained or frozen by the longest entry of the stage's `trainable` / `frozen` module prefixes that
contains it; a parameter that no entry covers is an error, so a recipe never silently trains a new module.
"""

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from torch import nn
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import SchedulerType

from videoadapt.callbacks import SigmaAnnealingCallback


__all__ = ["STAGES", "ReefGeneration", "ReefRecipe", "ReefStage", "list_recipes", "load_recipe"]

STAGES = ("initial", "main")
TASKS = ("classification", "qa", "caption")
EVA_PATCH_SIZE = 14  # the EVA ViT-g/14 of InstructBLIP: (resolution / 14)^2 spatial tokens per frame
_RECIPE_FOLDER = "reef"
# the stage fields that become `ReefConfig` keyword overrides
_CONFIG_KEYS = ("num_frames", "memory_bank_length", "alpha", "num_selected_tokens", "topk_num_samples", "topk_sigma",
                "detach_memory")  # fmt: skip


# --------------------------------------------------------------------------------------------- value checks


class _Invalid(Exception):
    """A value broke its field's rule; the message completes "`field` must be ...". Internal to the loader."""


Check = Callable[[Any], Any]


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _integer(low: int, high: int | None = None) -> Check:
    def check(value: Any) -> int:
        rule = f"an integer in [{low}, {'inf' if high is None else high}]"
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(f"{rule}, got {_shown(value)}")
        if value < low or (high is not None and value > high):
            raise _Invalid(f"{rule}, got {value}")
        return value

    return check


def _number(low: float, high: float, open_low: bool = False, open_high: bool = False) -> Check:
    rule = f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"

    def check(value: Any) -> float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            raise _Invalid(
                f"{rule}, got the string {value!r}; write floats with a dot and a signed exponent, e.g. 1.0e-4"
            )
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Invalid(f"{rule}, got {_shown(value)}")
        below = value <= low if open_low else value < low
        above = value >= high if open_high else value > high
        if below or above or math.isnan(value):
            raise _Invalid(f"{rule}, got {value}")
        return float(value)

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"true or false, got {_shown(value)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"a non-empty string, got {_shown(value)}")
    return value


def _choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise _Invalid(f"one of {list(options)}, got {_shown(value)}")
        return value

    return check


def _optional(check: Check, meaning: str) -> Check:
    def optional(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except _Invalid as error:
            raise _Invalid(f"null ({meaning}) or {error}") from None

    return optional


def _pair(check: Check) -> Check:
    def pair(value: Any) -> tuple:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise _Invalid(f"a list of two numbers, e.g. [0.9, 0.999], got {_shown(value)}")
        try:
            return tuple(check(v) for v in value)
        except _Invalid as error:
            raise _Invalid(f"a list of two numbers whose items are each {error}") from None

    return pair


def _prefixes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _Invalid(f"a list of module names (parameter name prefixes), got {_shown(value)}")
    if len(set(value)) != len(value):
        raise _Invalid(f"a list without repeated names, got {value}")
    return tuple(value)


def _sources(value: Any) -> dict[str, str]:
    valid = isinstance(value, dict) and all(isinstance(v, str) and v.strip() for v in value.values())
    if not valid or not all(isinstance(k, str) for k in value):
        raise _Invalid(f"a mapping of field name -> non-empty source text, got {_shown(value)}")
    return dict(value)


def _spec(check: Check | None, doc: str) -> Any:
    return field(metadata={"check": check, "help": doc})


# --------------------------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class ReefStage:
    """One training stage: what REEF does (config overrides), how it is optimised, what it trains."""

    init_from: str = _spec(_choice("base", "initial"), "the base checkpoint or the initial stage's output")
    epochs: int = _spec(_integer(1), "training epochs")
    learning_rate: float = _spec(_number(0.0, 1.0, open_low=True, open_high=True), "peak AdamW learning rate")
    batch_size: int = _spec(_integer(1), "global batch size: all devices and accumulation steps together")
    adam_betas: tuple[float, float] = _spec(_pair(_number(0.0, 1.0, open_high=True)), "AdamW (beta1, beta2)")
    weight_decay: float = _spec(_number(0.0, 1.0), "AdamW weight decay")
    num_frames: int = _spec(_integer(1, 120), "frames per video (<= ReefConfig.max_num_frames = 120)")
    memory_bank_length: int = _spec(_integer(1), "visual/query memory bank slots")
    alpha: float = _spec(_number(0.0, 1.0), "RTC score balance weight (1 = MA-LMM's similarity-only merge)")
    num_selected_tokens: int | None = _spec(_optional(_integer(1), "no filtering"), "STF tokens kept per frame")
    topk_num_samples: int = _spec(_integer(1), "perturbed top-K noise samples n")
    topk_sigma: float = _spec(_number(0.0, 10.0, open_low=True), "initial perturbed top-K noise scale")
    detach_memory: bool = _spec(_boolean, "store memory banks without autograd history, hard merges")
    sigma_annealing: bool = _spec(_boolean, "anneal sigma linearly to 0 with SigmaAnnealingCallback")
    trainable: tuple[str, ...] = _spec(_prefixes, "module prefixes whose parameters are trained")
    frozen: tuple[str, ...] = _spec(_prefixes, "module prefixes whose parameters are frozen")


@dataclass(frozen=True)
class ReefGeneration:
    """Decoding settings for evaluation (`model.generate(**inputs, **recipe.generation_kwargs())`)."""

    num_beams: int = _spec(_integer(1), "beam size")
    max_new_tokens: int = _spec(_integer(1), "longest answer/caption in tokens")
    min_new_tokens: int = _spec(_integer(0), "shortest answer/caption in tokens")
    repetition_penalty: float = _spec(_number(0.0, 100.0, open_low=True), "repetition penalty")
    length_penalty: float = _spec(_number(-100.0, 100.0), "beam search length penalty")
    num_return_sequences: int = _spec(_integer(1), "sequences returned per video (top-k classification)")


@dataclass(frozen=True)
class ReefRecipe:
    """A validated REEF recipe (see the module docstring); build it with `load_recipe`."""

    name: str = _spec(_text, "recipe name")
    task: str = _spec(_choice(*TASKS), "task")
    dataset: str = _spec(_text, "dataset")
    llm: str = _spec(_text, "the LLM of the tables")
    base_checkpoint: str = _spec(_text, "InstructBLIP(-Video) checkpoint the initial stage starts from")
    prompt: str = _spec(_text, "instruction; QA prompts hold one {} for the question")
    image_resolution: int = _spec(_integer(EVA_PATCH_SIZE, 4096), "frame side in pixels")
    lr_scheduler: str = _spec(_choice(*(s.value for s in SchedulerType)), "transformers scheduler type")
    warmup_epochs: float = _spec(_number(0.0, 1000.0), "linear warmup length in epochs (< each stage's epochs)")
    bf16: bool = _spec(_boolean, "bf16 mixed precision")
    seed: int = _spec(_integer(0), "random seed")
    generation: ReefGeneration = _spec(None, "decoding settings")
    initial: ReefStage = _spec(None, "the initial stage")
    main: ReefStage = _spec(None, "the main stage")
    sources: dict[str, str] = _spec(_sources, "field -> where its value comes from")
    path: Path | None = field(default=None, compare=False, metadata={"help": "the YAML file (not a YAML key)"})

    # ----------------------------------------------------------------------------------------- stages

    def stage(self, stage: str) -> ReefStage:
        """The `ReefStage` called `stage` ("initial" or "main")."""
        if stage not in STAGES:
            raise ValueError(f"`stage` must be one of {list(STAGES)}, got {stage!r}.")
        return getattr(self, stage)

    def source(self, name: str) -> str:
        """Where a value comes from: `name` is a field ("prompt"), "generation.<field>" or "<stage>.<field>"."""
        head, _, tail = name.partition(".")
        if head in STAGES:
            return self.sources.get(name) or self.sources[tail]
        return self.sources[name]

    def config_overrides(self, stage: str) -> dict[str, Any]:
        """`ReefConfig` / `from_pretrained` keyword overrides for `stage`."""
        s = self.stage(stage)
        return {key: getattr(s, key) for key in _CONFIG_KEYS}

    def processor_kwargs(self, stage: str) -> dict[str, Any]:
        """`ReefProcessor` keyword arguments: frames per video, and the prompt template for QA."""
        return {
            "num_frames": self.stage(stage).num_frames,
            "prompt_template": self.prompt if self.task == "qa" else None,
        }

    def training_arguments(
        self,
        stage: str,
        output_dir: str | os.PathLike,
        world_size: int = 1,
        max_per_device_batch_size: int | None = None,
        **overrides: Any,
    ) -> TrainingArguments:
        """`TrainingArguments` for `stage`, keeping the table's global batch size exact.

        Args:
            stage: "initial" or "main".
            output_dir: the Trainer's output folder.
            world_size: number of training processes; the global batch is split evenly between them.
            max_per_device_batch_size: the most examples one device holds at once; the per-device batch becomes the
                largest divisor of (global batch / world size) within it, and gradient accumulation makes up the rest.
            **overrides: any `TrainingArguments` field, applied last (e.g. `bf16=False`, `use_cpu=True`).
        """
        s = self.stage(stage)
        per_device, accumulation = _split_batch(s.batch_size, world_size, max_per_device_batch_size)
        kwargs = dict(
            output_dir=os.fspath(output_dir),
            learning_rate=s.learning_rate,
            num_train_epochs=s.epochs,
            per_device_train_batch_size=per_device,
            per_device_eval_batch_size=per_device,
            gradient_accumulation_steps=accumulation,
            adam_beta1=s.adam_betas[0],
            adam_beta2=s.adam_betas[1],
            weight_decay=s.weight_decay,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup_epochs / s.epochs,  # < 1: a fraction of the training steps
            bf16=self.bf16,
            seed=self.seed,
            report_to="none",
            remove_unused_columns=False,  # video datasets carry paths and instructions the collator needs
        )
        kwargs.update(overrides)
        return TrainingArguments(**kwargs)

    def generation_kwargs(self) -> dict[str, Any]:
        """`generate` keyword arguments (deterministic beam search)."""
        return {**dataclasses.asdict(self.generation), "do_sample": False}

    def callbacks(self, stage: str) -> list[TrainerCallback]:
        """Trainer callbacks for `stage`: the sigma annealing of the perturbed top-K where the stage asks for it."""
        s = self.stage(stage)
        return [SigmaAnnealingCallback(sigma_max=s.topk_sigma, final_sigma=0.0)] if s.sigma_annealing else []

    # ----------------------------------------------------------------------------------------- freezing

    def trainable_parameters(self, model: nn.Module, stage: str) -> list[str]:
        """Names of the parameters of `model` that `stage` trains (the longest matching prefix decides)."""
        s = self.stage(stage)
        rules = sorted([(p, True) for p in s.trainable] + [(p, False) for p in s.frozen], key=lambda r: -len(r[0]))
        trained, uncovered = [], []
        for name, _ in model.named_parameters():
            decision = next(
                (train for prefix, train in rules if name == prefix or name.startswith(prefix + ".")), None
            )
            if decision is None:
                uncovered.append(name)
            elif decision:
                trained.append(name)
        if uncovered:
            raise ValueError(
                f"recipe {self.name!r}, stage {stage!r}: no `trainable` or `frozen` entry covers the parameters "
                f"{uncovered[:5]}{' ...' if len(uncovered) > 5 else ''}; add their module to one of the two lists."
            )
        return trained

    def apply_freezing(self, model: nn.Module, stage: str) -> list[str]:
        """Set `requires_grad` on every parameter of `model` as `stage` says; returns the trained names."""
        trained = set(self.trainable_parameters(model, stage))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trained)
        return sorted(trained)


def _split_batch(global_batch: int, world_size: int, max_per_device: int | None) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) with per_device * accumulation * world_size = global_batch."""
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"`world_size` must be an integer >= 1, got {world_size!r}.")
    if global_batch % world_size:
        raise ValueError(
            f"the recipe's global batch size {global_batch} must split evenly over `world_size` = {world_size} "
            f"processes; use a world size that divides {global_batch}."
        )
    per_rank = global_batch // world_size
    if max_per_device is None:
        return per_rank, 1
    if not isinstance(max_per_device, int) or isinstance(max_per_device, bool) or max_per_device < 1:
        raise ValueError(f"`max_per_device_batch_size` must be an integer >= 1 or None, got {max_per_device!r}.")
    per_device = max(d for d in range(1, min(per_rank, max_per_device) + 1) if per_rank % d == 0)
    return per_device, per_rank // per_device


# --------------------------------------------------------------------------------------------- loading


def _recipe_folder() -> Any:
    return resources.files("videoadapt.recipes") / _RECIPE_FOLDER


def list_recipes() -> list[str]:
    """Names of the shipped REEF recipes (`recipes/reef/<name>.yaml`), sorted."""
    return sorted(entry.name[: -len(".yaml")] for entry in _recipe_folder().iterdir() if entry.name.endswith(".yaml"))


def load_recipe(name_or_path: str | os.PathLike) -> ReefRecipe:
    """Load and validate a shipped recipe by name (see `list_recipes`) or a YAML file by path.

    Raises:
        ValueError: unknown name, missing file, bad YAML, unknown or missing keys, wrong types, out-of-range values,
            inconsistent stages or sources; the message names the file and the field.
    """
    names = list_recipes()
    if isinstance(name_or_path, str) and name_or_path in names:
        resource = _recipe_folder() / f"{name_or_path}.yaml"
        with resources.as_file(resource) as path:
            return _load_file(Path(path))
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"`name_or_path` must be a shipped REEF recipe ({', '.join(names)}) or a YAML file, got {name_or_path!r}."
        )
    return _load_file(path)


_NESTED = {"generation": ReefGeneration, "stages": ReefStage}


def _load_file(path: Path) -> ReefRecipe:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error}).") from None
    recipe = _build(ReefRecipe, data, path, prefix="", nested=_NESTED)
    recipe = dataclasses.replace(recipe, path=path)
    _check_consistency(recipe, path)
    return recipe


def _build(cls: type, data: Any, path: Path, prefix: str, nested: Mapping[str, type] | None = None) -> Any:
    """`cls(**data)` with every key checked: no unknown or missing keys, each value passes its field's check."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {where} must be a mapping of keys to values, got {_shown(data)}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}
    keys = (set(fields) - {"initial", "main"}) | ({"stages"} if cls is ReefRecipe else set())
    unknown, missing = sorted(set(data) - keys), sorted(keys - set(data))
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {[prefix + k for k in unknown]} in {where}; allowed: {sorted(keys)}."
        )
    if missing:
        raise ValueError(f"{path}: missing key(s) {[prefix + k for k in missing]} in {where}; add them.")
    values = {}
    for key, value in data.items():
        if key == "stages":
            values.update(_build_stages(value, path))
        elif key in (nested or {}):
            values[key] = _build(nested[key], value, path, prefix=f"{key}.")
        else:
            try:
                values[key] = fields[key].metadata["check"](value)
            except _Invalid as error:
                raise ValueError(f"{path}: `{prefix}{key}` must be {error}.") from None
    return cls(**values)


def _build_stages(data: Any, path: Path) -> dict[str, ReefStage]:
    if not isinstance(data, dict) or set(data) != set(STAGES):
        got = sorted(data) if isinstance(data, dict) else _shown(data)
        raise ValueError(f"{path}: `stages` must be a mapping with exactly the keys {list(STAGES)}, got {got}.")
    return {name: _build(ReefStage, data[name], path, prefix=f"stages.{name}.") for name in STAGES}


def _check_consistency(recipe: ReefRecipe, path: Path) -> None:
    """Rules that span fields: stage order, token budget, warmup, prompt, generation, prefix lists, sources."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"{path}: {message}")

    need(
        recipe.initial.init_from == "base",
        f"`stages.initial.init_from` must be 'base', got {recipe.initial.init_from!r}.",
    )
    need(
        recipe.main.init_from == "initial",
        f"`stages.main.init_from` must be 'initial', got {recipe.main.init_from!r}.",
    )
    tokens = (recipe.image_resolution // EVA_PATCH_SIZE) ** 2
    for name in STAGES:
        s = recipe.stage(name)
        k = s.num_selected_tokens
        need(
            k is None or k <= tokens,
            f"`stages.{name}.num_selected_tokens` must be in [1, {tokens}] (the spatial tokens per frame at "
            f"`image_resolution` {recipe.image_resolution} with patch {EVA_PATCH_SIZE}) or null, got {k}; lower it.",
        )
        need(
            recipe.warmup_epochs < s.epochs,
            f"`warmup_epochs` must be < `stages.{name}.epochs` = {s.epochs}, got {recipe.warmup_epochs}; shorten it.",
        )
        overlap = sorted(set(s.trainable) & set(s.frozen))
        need(not overlap, f"`stages.{name}.trainable` and `stages.{name}.frozen` both list {overlap}; keep one.")
        need(s.trainable != (), f"`stages.{name}.trainable` must list at least one module, got [].")
    holes = recipe.prompt.count("{}")
    need(
        holes == (1 if recipe.task == "qa" else 0),
        f"`prompt` must hold exactly {'one' if recipe.task == 'qa' else 'no'} '{{}}' (the question) for task "
        f"{recipe.task!r}, got {recipe.prompt!r}.",
    )
    g = recipe.generation
    need(
        g.min_new_tokens <= g.max_new_tokens,
        f"`generation.min_new_tokens` ({g.min_new_tokens}) must be <= `generation.max_new_tokens` ({g.max_new_tokens}).",
    )
    need(
        g.num_return_sequences <= g.num_beams,
        f"`generation.num_return_sequences` ({g.num_return_sequences}) must be <= `generation.num_beams` "
        f"({g.num_beams}).",
    )
    _check_sources(recipe, path)


def _check_sources(recipe: ReefRecipe, path: Path) -> None:
    """Every key of `sources` names a field, and every field has a source."""
    nested = ("generation", "initial", "main", "sources", "path")
    top = [f.name for f in dataclasses.fields(ReefRecipe) if f.name not in nested]
    generation = [f"generation.{f.name}" for f in dataclasses.fields(ReefGeneration)]
    stage_fields = [f.name for f in dataclasses.fields(ReefStage)]
    allowed = set(top) | set(generation) | set(stage_fields) | {f"{s}.{f}" for s in STAGES for f in stage_fields}
    unknown = sorted(set(recipe.sources) - allowed)
    if unknown:
        raise ValueError(
            f"{path}: `sources` names unknown field(s) {unknown}; use a field name, 'generation.<field>', '<field>' "
            "for both stages or '<stage>.<field>'."
        )
    needed = top + generation + [f"{s}.{f}" for s in STAGES for f in stage_fields]
    missing = [name for name in needed if not _has_source(recipe.sources, name)]
    if missing:
        raise ValueError(
            f"{path}: `sources` gives no source for {missing}; say where each value comes from (or 'ours')."
        )


def _has_source(sources: Mapping[str, str], name: str) -> bool:
    head, _, tail = name.partition(".")
    return name in sources or (head in STAGES and tail in sources)
