"""DynFocus training recipes: the two stages of the DynFocus appendix's Table 11, with the component freezing
variants of its Table 1 as named options, loaded from YAML and validated.

A recipe holds the `DynFocusConfig` overrides (`model`), the optimiser and schedule, the paper's parts mapped to
module prefixes (`parts`), two stages ("stage1": vision-language alignment, "stage2": instruction tuning) that each
train or freeze whole parts, and `variants`: named changes of some parts' state per stage (Table 1's rows, the
official code's freezing). Each stage turns into `TrainingArguments`, a DeepSpeed config dict (metadata: DeepSpeed
need not be installed), a parameter freezing rule and Trainer callbacks. Every value names its source (`sources`).

    recipe = load_recipe("default")                       # or load_recipe("default", variant="open_open")
    model = DynFocusForConditionalGeneration.from_pretrained(base, **recipe.config_overrides())
    recipe.apply_freezing(model, "stage1")
    trainer = Trainer(model, recipe.training_arguments("stage1", "out/stage1", world_size=8), ...,
                      callbacks=recipe.callbacks("stage1"))

A parameter is trained or frozen by the longest module prefix (of the parts a stage lists) that contains it; a
parameter that no part covers is an error, so a recipe never silently trains a new module.
"""

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from videoadapt.callbacks import SigmaAnnealingCallback
from videoadapt.configuration.configuration_dynfocus import DynFocusConfig
from videoadapt.recipes.recipe_utils import (
    Invalid,
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


__all__ = [
    "STAGES",
    "DynFocusModelSettings",
    "DynFocusRecipe",
    "DynFocusStage",
    "DynFocusVariant",
    "Table1Result",
    "list_recipes",
    "load_recipe",
]

STAGES = ("stage1", "stage2")
STATES = ("trainable", "frozen")
EVA_PATCH_SIZE = 14  # the EVA ViT-g/14 of InstructBLIP
_RECIPE_FOLDER = "dynfocus"


def _int_list(value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise Invalid(f"a non-empty list of integers, got {shown(value)}")
    return list(value)


# --------------------------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class DynFocusModelSettings:
    """The `DynFocusConfig` fields a recipe sets (see `DynFocusConfig` for their meaning)."""

    num_pooled_tokens: int = spec(integer(1), "P: pooled tokens per frame (a square)")
    num_events: int = spec(integer(1), "L: event prototypes from T-DPC")
    event_keep_ratio: float = spec(number(0.0, 1.0, open_low=True), "K/L: share of the events kept")
    event_knn: int = spec(integer(1), "C: nearest neighbours of T-DPC's density")
    spatial_clusters: list[int] = spec(_int_list, "S-DPC prototypes per level")
    spatial_knn: list[int] = spec(_int_list, "nearest neighbours per S-DPC level")
    prototype_weighting: str = spec(choice("exp_score", "uniform"), "prototype member weights")
    topk_num_samples: int = spec(integer(1), "perturbed top-K noise samples n")
    topk_sigma: float = spec(number(0.0, 10.0, open_low=True), "perturbed top-K noise scale")
    rods_order: str = spec(choice("context_content", "content_context"), "order of the 2 coarse tokens")
    key_frame_rods: bool = spec(boolean, "key frames also get their 2 coarse tokens")
    max_frames: int = spec(integer(1), "longest video in frames")


@dataclass(frozen=True)
class DynFocusStage:
    """One training stage: its data (a description), how it is optimised, which parts it trains."""

    init_from: str = spec(choice("base", "stage1"), "the base checkpoint or the stage-1 output")
    data: str = spec(text, "the training data (a description)")
    epochs: int = spec(integer(1), "training epochs")
    learning_rate: float = spec(number(0.0, 1.0, open_low=True, open_high=True), "peak learning rate")
    batch_size: int = spec(integer(1), "global batch size: all devices and accumulation steps together")
    deepspeed_stage: int = spec(integer(0, 3), "DeepSpeed ZeRO stage of the paper (0: no ZeRO)")
    sigma_annealing: bool = spec(boolean, "anneal sigma linearly to 0 with SigmaAnnealingCallback")
    trainable: tuple[str, ...] = spec(module_prefixes, "parts whose parameters are trained")
    frozen: tuple[str, ...] = spec(module_prefixes, "parts whose parameters are frozen")


@dataclass(frozen=True)
class Table1Result:
    """A row's figures in the DynFocus appendix's Table 1 (video-only training data)."""

    msvd_qa_accuracy: float = spec(number(0.0, 100.0), "MSVD-QA accuracy (%)")
    msvd_qa_score: float = spec(number(0.0, 5.0), "MSVD-QA GPT score")
    vcg_bench_score: float = spec(number(0.0, 5.0), "VCG-Bench GPT score")


@dataclass(frozen=True)
class DynFocusVariant:
    """A named freezing variant: the state ("trainable"/"frozen") it gives some parts in each stage."""

    table1_row: int | None = spec(optional(integer(1, 4), "not a Table 1 row"), "the appendix Table 1 row")
    reported: Table1Result | None = spec(None, "the row's figures, or null")
    stage1: dict[str, str] = spec(None, "part -> state in stage 1")
    stage2: dict[str, str] = spec(None, "part -> state in stage 2")


@dataclass(frozen=True)
class DynFocusRecipe:
    """A validated DynFocus recipe (see the module docstring); build it with `load_recipe`."""

    name: str = spec(text, "recipe name")
    llm: str = spec(text, "the paper's LLM")
    base_checkpoint: str = spec(text, "InstructBLIP(-Video) checkpoint stage 1 starts from")
    image_resolution: int = spec(integer(EVA_PATCH_SIZE, 4096), "frame side in pixels")
    fps: float = spec(number(0.0, 1000.0, open_low=True), "frames per second sampled from a video")
    prompt: str = spec(text, "the instruction for rows without a question (stage 1's captions)")
    optimizer: str = spec(choice(*(o.value for o in OptimizerNames)), "transformers optimizer name")
    adam_betas: tuple[float, float] = spec(pair(number(0.0, 1.0, open_high=True)), "AdamW (beta1, beta2)")
    lr_scheduler: str = spec(choice(*(s.value for s in SchedulerType)), "transformers scheduler type")
    warmup_ratio: float = spec(number(0.0, 1.0, open_high=True), "linear warmup share of the training steps")
    weight_decay: float = spec(number(0.0, 1.0), "AdamW weight decay")
    bf16: bool = spec(boolean, "bf16 mixed precision")
    seed: int = spec(integer(0), "random seed")
    model: DynFocusModelSettings = spec(None, "DynFocusConfig overrides")
    parts: dict[str, tuple[str, ...]] = spec(None, "part -> module prefixes")
    default_variant: str = spec(text, "the variant the stages' part lists describe")
    variants: dict[str, DynFocusVariant] = spec(None, "named freezing variants")
    stage1: DynFocusStage = spec(None, "vision-language alignment")
    stage2: DynFocusStage = spec(None, "instruction tuning")
    sources: dict[str, str] = spec(sources_map, "field -> where its value comes from")
    variant: str = field(default="", metadata={"help": "the active variant (not a YAML key)"})
    path: Path | None = field(default=None, compare=False, metadata={"help": "the YAML file (not a YAML key)"})

    # ----------------------------------------------------------------------------------------- stages

    def stage(self, stage: str) -> DynFocusStage:
        """The `DynFocusStage` called `stage` ("stage1" or "stage2")."""
        if stage not in STAGES:
            raise ValueError(f"`stage` must be one of {list(STAGES)}, got {stage!r}.")
        return getattr(self, stage)

    def source(self, name: str) -> str:
        """Where a value comes from: `name` is a field ("fps"), "model.<field>", "variants.<name>" or
        "<stage>.<field>"."""
        head, _, tail = name.partition(".")
        if head in STAGES:
            return self.sources.get(name) or self.sources[tail]
        return self.sources[name]

    def with_variant(self, variant: str) -> "DynFocusRecipe":
        """This recipe with the parts' states of `variant` (see `variants`) in both stages; the stages' part lists
        follow the order of `parts`."""
        if variant not in self.variants:
            raise ValueError(f"`variant` must be one of {sorted(self.variants)}, got {variant!r}.")
        states = self.variants[variant]
        stages = {name: _apply_states(self.stage(name), getattr(states, name), tuple(self.parts)) for name in STAGES}
        return dataclasses.replace(self, variant=variant, **stages)

    def config_overrides(self) -> dict[str, Any]:
        """`DynFocusConfig` / `from_pretrained` keyword overrides (the same in both stages)."""
        return dataclasses.asdict(self.model)

    def processor_kwargs(self) -> dict[str, Any]:
        """`DynFocusProcessor` keyword arguments: the sampling rate and the frame cap."""
        return {"fps": self.fps, "max_frames": self.model.max_frames}

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
            stage: "stage1" or "stage2".
            output_dir: the Trainer's output folder.
            world_size: number of training processes; the global batch is split evenly between them.
            max_per_device_batch_size: the most examples one device holds at once; the per-device batch becomes the
                largest divisor of (global batch / world size) within it, and gradient accumulation makes up the rest.
            **overrides: any `TrainingArguments` field, applied last (e.g. `bf16=False`,
                `deepspeed=recipe.deepspeed_config(stage)`).
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
            optim=self.optimizer,
            adam_beta1=self.adam_betas[0],
            adam_beta2=self.adam_betas[1],
            weight_decay=self.weight_decay,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup_ratio,  # < 1: a fraction of the training steps (transformers 5's warmup ratio)
            bf16=self.bf16,
            seed=self.seed,
        )

    def deepspeed_config(self, stage: str) -> dict[str, Any] | None:
        """The paper's DeepSpeed ZeRO stage as a config dict for `TrainingArguments(deepspeed=...)` (sizes "auto",
        filled in by the Trainer), or None for stage 0 (no DeepSpeed). Building it needs no DeepSpeed install."""
        zero = self.stage(stage).deepspeed_stage
        if zero == 0:
            return None
        return {
            "zero_optimization": {"stage": zero},
            "bf16": {"enabled": "auto"},
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }

    def callbacks(self, stage: str, sigma_annealing: bool | None = None) -> list[TrainerCallback]:
        """Trainer callbacks for `stage`: linear sigma annealing of the perturbed top-K (not in DynFocus' code) when
        the stage asks for it or `sigma_annealing=True`."""
        s = self.stage(stage)
        anneal = s.sigma_annealing if sigma_annealing is None else sigma_annealing
        return [SigmaAnnealingCallback(sigma_max=self.model.topk_sigma, final_sigma=0.0)] if anneal else []

    # ----------------------------------------------------------------------------------------- freezing

    def module_rules(self, stage: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(trainable, frozen) module prefixes of `stage`, expanded from its parts."""
        s = self.stage(stage)
        trainable = tuple(prefix for part in s.trainable for prefix in self.parts[part])
        return trainable, tuple(prefix for part in s.frozen for prefix in self.parts[part])

    def trainable_parameters(self, model: nn.Module, stage: str) -> list[str]:
        """Names of the parameters of `model` that `stage` trains (the longest matching prefix decides)."""
        trainable, frozen = self.module_rules(stage)
        context = f"recipe {self.name!r} (variant {self.variant!r}), stage {stage!r}"
        return trainable_parameter_names(model, trainable, frozen, context)

    def apply_freezing(self, model: nn.Module, stage: str) -> list[str]:
        """Set `requires_grad` on every parameter of `model` as `stage` says; returns the trained names."""
        return set_trainable(model, self.trainable_parameters(model, stage))


def _apply_states(stage: DynFocusStage, states: dict[str, str], order: tuple[str, ...]) -> DynFocusStage:
    """`stage` with each part of `states` moved to its `trainable` or `frozen` list; both lists in `order`."""
    state = {**{p: "trainable" for p in stage.trainable}, **{p: "frozen" for p in stage.frozen}, **states}
    trainable = tuple(p for p in order if state[p] == "trainable")
    return dataclasses.replace(stage, trainable=trainable, frozen=tuple(p for p in order if state[p] == "frozen"))


# --------------------------------------------------------------------------------------------- loading


def list_recipes() -> list[str]:
    """Names of the shipped DynFocus recipes (`recipes/dynfocus/<name>.yaml`), sorted."""
    return list_shipped(_RECIPE_FOLDER)


def load_recipe(name_or_path: str | os.PathLike, variant: str | None = None) -> DynFocusRecipe:
    """Load and validate a shipped recipe by name (see `list_recipes`) or a YAML file by path.

    Args:
        name_or_path: a shipped name ("default") or a YAML path.
        variant: a name of the recipe's `variants` (default: its `default_variant`).

    Raises:
        ValueError: unknown name or variant, missing file, bad YAML, unknown or missing keys, wrong types,
            out-of-range values, inconsistent parts, stages, variants or sources; the message names the file and the
            field.
    """
    recipe = load_shipped(name_or_path, _RECIPE_FOLDER, "DynFocus", _load_file)
    return recipe if variant is None else recipe.with_variant(variant)


def _load_file(path: Path) -> DynFocusRecipe:
    nested = {
        "model": lambda value, prefix: {"model": build_dataclass(DynFocusModelSettings, value, path, prefix)},
        "parts": lambda value, prefix: {"parts": _build_parts(value, path)},
        "variants": lambda value, prefix: {"variants": _build_variants(value, path)},
        "stages": lambda value, prefix: _build_stages(value, path),
    }
    recipe = build_dataclass(
        DynFocusRecipe, read_yaml(path), path, nested=nested, derived=(*STAGES, "variant", "path")
    )
    recipe = dataclasses.replace(recipe, path=path)
    _check_consistency(recipe, path)
    return recipe.with_variant(recipe.default_variant)  # a no-op but for the order of the part lists


def _build_parts(data: Any, path: Path) -> dict[str, tuple[str, ...]]:
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"{path}: `parts` must be a non-empty mapping of part name -> module prefixes, got {shown(data)}."
        )
    parts, owner = {}, {}
    for part, value in data.items():
        try:
            parts[part] = module_prefixes(value)
        except Invalid as error:
            raise ValueError(f"{path}: `parts.{part}` must be {error}.") from None
        for prefix in parts[part]:
            require(
                prefix not in owner,
                path,
                f"`parts.{part}` and `parts.{owner.get(prefix)}` both list {prefix!r}; a module belongs to one part.",
            )
            owner[prefix] = part
    return parts


def _build_variants(data: Any, path: Path) -> dict[str, DynFocusVariant]:
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"{path}: `variants` must be a non-empty mapping of variant name -> settings, got {shown(data)}."
        )

    def reported(value: Any, prefix: str) -> dict[str, Any]:
        return {"reported": None if value is None else build_dataclass(Table1Result, value, path, prefix)}

    def states(stage: str) -> Callable[[Any, str], dict[str, Any]]:
        def build(value: Any, prefix: str) -> dict[str, Any]:
            if not isinstance(value, dict) or not all(isinstance(k, str) and v in STATES for k, v in value.items()):
                raise ValueError(
                    f"{path}: `{prefix.rstrip('.')}` must be a mapping of part -> 'trainable' or 'frozen', got "
                    f"{shown(value)}."
                )
            return {stage: dict(value)}

        return build

    nested = {"reported": reported, **{stage: states(stage) for stage in STAGES}}
    return {
        name: build_dataclass(DynFocusVariant, value, path, f"variants.{name}.", nested=nested)
        for name, value in data.items()
    }


def _build_stages(data: Any, path: Path) -> dict[str, DynFocusStage]:
    if not isinstance(data, dict) or set(data) != set(STAGES):
        got = sorted(data) if isinstance(data, dict) else shown(data)
        raise ValueError(f"{path}: `stages` must be a mapping with exactly the keys {list(STAGES)}, got {got}.")
    return {name: build_dataclass(DynFocusStage, data[name], path, prefix=f"stages.{name}.") for name in STAGES}


def _check_consistency(recipe: DynFocusRecipe, path: Path) -> None:
    """Rules that span fields: the model settings, stage order, part lists, variants, sources."""

    def need(ok: bool, message: str) -> None:
        require(ok, path, message)

    grid = recipe.image_resolution // EVA_PATCH_SIZE
    try:
        DynFocusConfig(
            vision_config={"image_size": grid * EVA_PATCH_SIZE, "patch_size": EVA_PATCH_SIZE},
            **recipe.config_overrides(),
        )
    except ValueError as error:
        raise ValueError(f"{path}: `model` does not make a valid DynFocusConfig: {error}") from None
    need(
        recipe.stage1.init_from == "base",
        f"`stages.stage1.init_from` must be 'base', got {recipe.stage1.init_from!r}.",
    )
    need(
        recipe.stage2.init_from == "stage1",
        f"`stages.stage2.init_from` must be 'stage1', got {recipe.stage2.init_from!r}.",
    )
    parts = set(recipe.parts)
    for name in STAGES:
        s = recipe.stage(name)
        unknown = sorted((set(s.trainable) | set(s.frozen)) - parts)
        need(not unknown, f"`stages.{name}` lists unknown part(s) {unknown}; the parts are {sorted(parts)}.")
        overlap = sorted(set(s.trainable) & set(s.frozen))
        need(not overlap, f"`stages.{name}.trainable` and `stages.{name}.frozen` both list {overlap}; keep one.")
        absent = sorted(parts - set(s.trainable) - set(s.frozen))
        need(not absent, f"`stages.{name}` puts part(s) {absent} in neither `trainable` nor `frozen`; add them.")
        need(s.trainable != (), f"`stages.{name}.trainable` must list at least one part, got [].")
    for variant_name, variant in recipe.variants.items():
        for name in STAGES:
            unknown = sorted(set(getattr(variant, name)) - parts)
            need(
                not unknown,
                f"`variants.{variant_name}.{name}` names unknown part(s) {unknown}; the parts are {sorted(parts)}.",
            )
    need(
        recipe.default_variant in recipe.variants,
        f"`default_variant` must be one of `variants` {sorted(recipe.variants)}, got {recipe.default_variant!r}.",
    )
    default = recipe.variants[recipe.default_variant]
    for variant_name, variant in recipe.variants.items():
        for name in STAGES:  # every variant sets the same parts: switching variants never leaves a part behind
            own, reference = sorted(getattr(variant, name)), sorted(getattr(default, name))
            need(
                own == reference,
                f"`variants.{variant_name}.{name}` must set the same parts as the default variant "
                f"{recipe.default_variant!r} ({reference}), got {own}.",
            )
    for name in STAGES:
        s = recipe.stage(name)
        for part, state in getattr(default, name).items():
            need(
                part in (s.trainable if state == "trainable" else s.frozen),
                f"`default_variant` {recipe.default_variant!r} makes part {part!r} {state} in {name}, but "
                f"`stages.{name}` lists it {'frozen' if state == 'trainable' else 'trainable'}; make them agree.",
            )
    _check_sources(recipe, path)


def _check_sources(recipe: DynFocusRecipe, path: Path) -> None:
    """Every key of `sources` names a field, and every field has a source."""
    nested = ("model", "variants", *STAGES, "sources", "variant", "path")
    top = [f.name for f in dataclasses.fields(DynFocusRecipe) if f.name not in nested]
    model = [f"model.{f.name}" for f in dataclasses.fields(DynFocusModelSettings)]
    variants = [f"variants.{name}" for name in recipe.variants]
    stage_fields = [f.name for f in dataclasses.fields(DynFocusStage)]
    allowed = set(top + model + variants + stage_fields) | {f"{s}.{f}" for s in STAGES for f in stage_fields}
    needed = top + model + variants + [f"{s}.{f}" for s in STAGES for f in stage_fields]
    hint = "use a field name, 'model.<field>', 'variants.<name>', '<field>' for both stages or '<stage>.<field>'"
    check_sources(path, recipe.sources, needed, allowed, STAGES, hint)
