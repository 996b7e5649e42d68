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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import SchedulerType

from videoadapt.callbacks import SigmaAnnealingCallback
from videoadapt.recipes.recipe_utils import (
    boolean,
    build_dataclass,
    check_sources,
    choice,
    integer,
    list_shipped,
    load_shipped,
    module_prefixes,
    number,
    optional,
    pair,
    read_yaml,
    require,
    set_trainable,
    shown,
    sources_map,
    spec,
    stage_training_arguments,
    text,
    trainable_parameter_names,
)


__all__ = ["STAGES", "ReefGeneration", "ReefRecipe", "ReefStage", "list_recipes", "load_recipe"]

STAGES = ("initial", "main")
TASKS = ("classification", "qa", "caption")
EVA_PATCH_SIZE = 14  # the EVA ViT-g/14 of InstructBLIP: (resolution / 14)^2 spatial tokens per frame
_RECIPE_FOLDER = "reef"
# the stage fields that become `ReefConfig` keyword overrides
_CONFIG_KEYS = ("num_frames", "memory_bank_length", "alpha", "num_selected_tokens", "topk_num_samples", "topk_sigma",
                "detach_memory")  # fmt: skip


# --------------------------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class ReefStage:
    """One training stage: what REEF does (config overrides), how it is optimised, what it trains."""

    init_from: str = spec(choice("base", "initial"), "the base checkpoint or the initial stage's output")
    epochs: int = spec(integer(1), "training epochs")
    learning_rate: float = spec(number(0.0, 1.0, open_low=True, open_high=True), "peak AdamW learning rate")
    batch_size: int = spec(integer(1), "global batch size: all devices and accumulation steps together")
    adam_betas: tuple[float, float] = spec(pair(number(0.0, 1.0, open_high=True)), "AdamW (beta1, beta2)")
    weight_decay: float = spec(number(0.0, 1.0), "AdamW weight decay")
    num_frames: int = spec(integer(1, 120), "frames per video (<= ReefConfig.max_num_frames = 120)")
    memory_bank_length: int = spec(integer(1), "visual/query memory bank slots")
    alpha: float = spec(number(0.0, 1.0), "RTC score balance weight (1 = MA-LMM's similarity-only merge)")
    num_selected_tokens: int | None = spec(optional(integer(1), "no filtering"), "STF tokens kept per frame")
    topk_num_samples: int = spec(integer(1), "perturbed top-K noise samples n")
    topk_sigma: float = spec(number(0.0, 10.0, open_low=True), "initial perturbed top-K noise scale")
    detach_memory: bool = spec(boolean, "store memory banks without autograd history, hard merges")
    sigma_annealing: bool = spec(boolean, "anneal sigma linearly to 0 with SigmaAnnealingCallback")
    trainable: tuple[str, ...] = spec(module_prefixes, "module prefixes whose parameters are trained")
    frozen: tuple[str, ...] = spec(module_prefixes, "module prefixes whose parameters are frozen")


@dataclass(frozen=True)
class ReefGeneration:
    """Decoding settings for evaluation (`model.generate(**inputs, **recipe.generation_kwargs())`)."""

    num_beams: int = spec(integer(1), "beam size")
    max_new_tokens: int = spec(integer(1), "longest answer/caption in tokens")
    min_new_tokens: int = spec(integer(0), "shortest answer/caption in tokens")
    repetition_penalty: float = spec(number(0.0, 100.0, open_low=True), "repetition penalty")
    length_penalty: float = spec(number(-100.0, 100.0), "beam search length penalty")
    num_return_sequences: int = spec(integer(1), "sequences returned per video (top-k classification)")


@dataclass(frozen=True)
class ReefRecipe:
    """A validated REEF recipe (see the module docstring); build it with `load_recipe`."""

    name: str = spec(text, "recipe name")
    task: str = spec(choice(*TASKS), "task")
    dataset: str = spec(text, "dataset")
    llm: str = spec(text, "the LLM of the tables")
    base_checkpoint: str = spec(text, "InstructBLIP(-Video) checkpoint the initial stage starts from")
    prompt: str = spec(text, "instruction; QA prompts hold one {} for the question")
    image_resolution: int = spec(integer(EVA_PATCH_SIZE, 4096), "frame side in pixels")
    lr_scheduler: str = spec(choice(*(s.value for s in SchedulerType)), "transformers scheduler type")
    warmup_epochs: float = spec(number(0.0, 1000.0), "linear warmup length in epochs (< each stage's epochs)")
    bf16: bool = spec(boolean, "bf16 mixed precision")
    seed: int = spec(integer(0), "random seed")
    generation: ReefGeneration = spec(None, "decoding settings")
    initial: ReefStage = spec(None, "the initial stage")
    main: ReefStage = spec(None, "the main stage")
    sources: dict[str, str] = spec(sources_map, "field -> where its value comes from")
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
        return stage_training_arguments(
            output_dir,
            s.batch_size,
            world_size,
            max_per_device_batch_size,
            overrides,
            learning_rate=s.learning_rate,
            num_train_epochs=s.epochs,
            adam_beta1=s.adam_betas[0],
            adam_beta2=s.adam_betas[1],
            weight_decay=s.weight_decay,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup_epochs / s.epochs,  # < 1: a fraction of the training steps
            bf16=self.bf16,
            seed=self.seed,
        )

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
        return trainable_parameter_names(model, s.trainable, s.frozen, f"recipe {self.name!r}, stage {stage!r}")

    def apply_freezing(self, model: nn.Module, stage: str) -> list[str]:
        """Set `requires_grad` on every parameter of `model` as `stage` says; returns the trained names."""
        return set_trainable(model, self.trainable_parameters(model, stage))


# --------------------------------------------------------------------------------------------- loading


def list_recipes() -> list[str]:
    """Names of the shipped REEF recipes (`recipes/reef/<name>.yaml`), sorted."""
    return list_shipped(_RECIPE_FOLDER)


def load_recipe(name_or_path: str | os.PathLike) -> ReefRecipe:
    """Load and validate a shipped recipe by name (see `list_recipes`) or a YAML file by path.

    Raises:
        ValueError: unknown name, missing file, bad YAML, unknown or missing keys, wrong types, out-of-range values,
            inconsistent stages or sources; the message names the file and the field.
    """
    return load_shipped(name_or_path, _RECIPE_FOLDER, "REEF", _load_file)


def _load_file(path: Path) -> ReefRecipe:
    nested = {
        "generation": lambda value, prefix: {"generation": build_dataclass(ReefGeneration, value, path, prefix)},
        "stages": lambda value, prefix: _build_stages(value, path),
    }
    recipe = build_dataclass(ReefRecipe, read_yaml(path), path, nested=nested, derived=(*STAGES, "path"))
    recipe = dataclasses.replace(recipe, path=path)
    _check_consistency(recipe, path)
    return recipe


def _build_stages(data: Any, path: Path) -> dict[str, ReefStage]:
    if not isinstance(data, dict) or set(data) != set(STAGES):
        got = sorted(data) if isinstance(data, dict) else shown(data)
        raise ValueError(f"{path}: `stages` must be a mapping with exactly the keys {list(STAGES)}, got {got}.")
    return {name: build_dataclass(ReefStage, data[name], path, prefix=f"stages.{name}.") for name in STAGES}


def _check_consistency(recipe: ReefRecipe, path: Path) -> None:
    """Rules that span fields: stage order, token budget, warmup, prompt, generation, prefix lists, sources."""

    def need(ok: bool, message: str) -> None:
        require(ok, path, message)

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
    needed = top + generation + [f"{s}.{f}" for s in STAGES for f in stage_fields]
    hint = "use a field name, 'generation.<field>', '<field>' for both stages or '<stage>.<field>'"
    check_sources(path, recipe.sources, needed, allowed, STAGES, hint)
