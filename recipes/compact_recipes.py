"""Compact MLLM training recipes: the three stages of the Compact supplement (section 1.4), one YAML each.

stage1 aligns the compressed video tokens with the LLM (MLP projector only, lr 1e-3); stage2 learns new visual
knowledge (LLM + projector, lr 1e-5); sft fine-tunes on the SFT mixture (LLM + projector, lr 1e-5). AdamW, global
batch 512, 32 frames throughout; the vision encoder and the compressor stay frozen. The compressor comes pre-trained
(its own recipe, `compact/compressor_pretrain.yaml`, named by stage 1's `compressor_from` and checked to build the
same compressor) into stage 1: `videoadapt train --recipe compact/stage1 compressor=<pre-training output> ...`;
later stages start from the previous stage's output, which carries it. Every value names its source (`sources`: the
supplement, or "ours" where it is silent).

    recipe = load_recipe("stage1")
    model = CompactForConditionalGeneration.from_pretrained(base, **recipe.config_overrides())
    recipe.load_pretrained_compressor(model, recipe.read_pretrained_compressor("runs/svc"), "runs/svc", fresh=True)
    recipe.apply_freezing(model)
    trainer = Trainer(model, recipe.training_arguments("out/stage1", world_size=8, max_per_device_batch_size=4), ...)

A parameter is trained or frozen by the longest entry of `trainable` / `frozen` (module prefixes) that contains it;
a parameter that no entry covers is an error, so a recipe never silently trains a new module.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames
from transformers.utils import logging

from videoadapt.configuration.configuration_compact import CompactConfig
from videoadapt.layers.video_compressor import SpatioTemporalAutoencoder, SpatioTemporalCompressor
from videoadapt.recipes.compact_pretrain import (
    COMPRESSOR_FILE,
    CompressorRecipe,
    list_compressor_recipes,
    load_autoencoder,
    load_compressor_recipe,
)
from videoadapt.recipes.recipe_utils import (
    boolean,
    build_dataclass,
    check_sources,
    choice,
    integer,
    list_shipped,
    module_prefixes,
    number,
    optional,
    pair,
    read_yaml,
    require,
    set_trainable,
    sources_map,
    spec,
    stage_training_arguments,
    text,
    trainable_parameter_names,
)


__all__ = ["STAGES", "CompactModelSettings", "CompactRecipe", "list_recipes", "load_recipe"]

logger = logging.get_logger(__name__)

STAGES = ("stage1", "stage2", "sft")
# where each stage may start: the base (with the pre-trained compressor) or an earlier stage's output; SFT after
# stage 1 is the supplement's ablation schedule ("trained only during stage 1 and the SFT stage")
_INIT_FROM = {"stage1": ("base",), "stage2": ("stage1",), "sft": ("stage2", "stage1")}
_RECIPE_FOLDER = "compact"


@dataclass(frozen=True)
class CompactModelSettings:
    """The `CompactConfig` fields a recipe sets (see `CompactConfig` for their meaning)."""

    num_frames: int = spec(integer(1), "frames per video, a multiple of the compression factor")
    compressor_grid: int | None = spec(optional(integer(1), "the vision tower's own grid"), "feature grid side g")
    compressor_resize_mode: str = spec(choice("bilinear", "area"), "how the vision grid is resized to g x g")
    compressor_num_blocks: int = spec(integer(1), "residual blocks of the compressor")
    compressor_num_downsample: int = spec(integer(0), "downsampling blocks: factor 2 ** n along T, H and W")
    compressor_bottleneck_ratio: int = spec(integer(1), "the 2D convolution outputs d / ratio channels")
    compressor_spatial_kernel: int = spec(integer(1), "2D convolution kernel")
    compressor_temporal_kernel: int = spec(integer(1), "1D temporal convolution kernel")


@dataclass(frozen=True)
class CompactRecipe:
    """A validated Compact MLLM stage recipe (see the module docstring); build it with `load_recipe`."""

    name: str = spec(text, "recipe name")
    stage: str = spec(choice(*STAGES), "which MLLM stage")
    init_from: str = spec(choice("base", *STAGES), "the base checkpoint or an earlier stage's output")
    compressor_from: str | None = spec(
        optional(text, "the compressor comes with `init_from`"), "where the pre-trained compressor comes from"
    )
    base_checkpoint: str = spec(text, "LLaVA-OneVision checkpoint (vision tower, projector, LLM)")
    llm: str = spec(text, "the paper's LLM")
    data: str = spec(text, "the training data (a description)")
    sampler: str = spec(choice("uniform", "avs"), "frame sampler of the processor (avs: the adaptive sampler)")
    epochs: int = spec(integer(1), "training epochs")
    learning_rate: float = spec(number(0.0, 1.0, open_low=True, open_high=True), "peak learning rate")
    batch_size: int = spec(integer(1), "global batch size: all devices and accumulation steps together")
    optimizer: str = spec(choice(*(o.value for o in OptimizerNames)), "transformers optimizer name")
    adam_betas: tuple[float, float] = spec(pair(number(0.0, 1.0, open_high=True)), "AdamW (beta1, beta2)")
    weight_decay: float = spec(number(0.0, 1.0), "AdamW weight decay")
    lr_scheduler: str = spec(choice(*(s.value for s in SchedulerType)), "transformers scheduler type")
    warmup_ratio: float = spec(number(0.0, 1.0, open_high=True), "linear warmup share of the training steps")
    bf16: bool = spec(boolean, "bf16 mixed precision")
    seed: int = spec(integer(0), "random seed")
    model: CompactModelSettings = spec(None, "CompactConfig overrides")
    trainable: tuple[str, ...] = spec(module_prefixes, "module prefixes whose parameters are trained")
    frozen: tuple[str, ...] = spec(module_prefixes, "module prefixes whose parameters are frozen")
    sources: dict[str, str] = spec(sources_map, "field -> where its value comes from")
    path: Path | None = field(default=None, compare=False, metadata={"help": "the YAML file (not a YAML key)"})

    def source(self, name: str) -> str:
        """Where a value comes from: `name` is a field ("learning_rate") or "model.<field>"."""
        return self.sources[name]

    def config_overrides(self) -> dict[str, Any]:
        """`CompactConfig` / `from_pretrained` keyword overrides."""
        return dataclasses.asdict(self.model)

    def processor_kwargs(self) -> dict[str, Any]:
        """`CompactProcessor` (or `.from_model`) keyword arguments: frames per video and the sampler."""
        return {"num_frames": self.model.num_frames, "sampler": self.sampler}

    def training_arguments(
        self,
        output_dir: str | os.PathLike,
        world_size: int = 1,
        max_per_device_batch_size: int | None = None,
        **overrides: Any,
    ) -> TrainingArguments:
        """`TrainingArguments` for this stage, keeping the recipe's global batch size exact.

        Args:
            output_dir: the Trainer's output folder.
            world_size: number of training processes; the global batch is split evenly between them.
            max_per_device_batch_size: the most examples one device holds at once; the per-device batch becomes the
                largest divisor of (global batch / world size) within it, and gradient accumulation makes up the rest.
            **overrides: any `TrainingArguments` field, applied last (e.g. `bf16=False`, `use_cpu=True`).
        """
        return stage_training_arguments(
            output_dir,
            self.batch_size,
            world_size,
            max_per_device_batch_size,
            overrides,
            learning_rate=self.learning_rate,
            num_train_epochs=self.epochs,
            optim=self.optimizer,
            adam_beta1=self.adam_betas[0],
            adam_beta2=self.adam_betas[1],
            weight_decay=self.weight_decay,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup_ratio,  # < 1: a fraction of the training steps (transformers 5's warmup ratio)
            bf16=self.bf16,
            seed=self.seed,
        )

    def trainable_parameters(self, model: nn.Module) -> list[str]:
        """Names of the parameters of `model` this stage trains (the longest matching prefix decides)."""
        return trainable_parameter_names(model, self.trainable, self.frozen, f"recipe {self.name!r}")

    def apply_freezing(self, model: nn.Module) -> list[str]:
        """Set `requires_grad` on every parameter of `model` as this stage says; returns the trained names."""
        return set_trainable(model, self.trainable_parameters(model))

    def compressor_recipe(self) -> CompressorRecipe | None:
        """The compressor pre-training recipe `compressor_from` names; None when the compressor comes with
        `init_from` (an earlier stage's output)."""
        return None if self.compressor_from is None else _compressor_recipe(self.compressor_from, self.path)

    def read_pretrained_compressor(self, compressor: str | os.PathLike | None) -> SpatioTemporalAutoencoder | None:
        """The compressor pre-training output `compressor` (a folder holding compressor.safetensors, or that file:
        `pretrain_compressor(..., output_path=...)`), read before the model loads; None for None.

        Raises:
            ValueError: this stage starts from an earlier stage's output (`compressor_from` is null), or the file is
                missing or not an SVC autoencoder file; the message names `compressor=` and the fix.
        """
        if compressor is None:
            return None
        if self.compressor_from is None:
            raise ValueError(
                f"`compressor={os.fspath(compressor)}` loads the pre-trained compressor into a base checkpoint (a "
                f"recipe with `compressor_from`, e.g. stage1), but recipe {self.name!r} (init_from "
                f"{self.init_from!r}) starts from the earlier stage's output, which carries the compressor; drop "
                "`compressor=`."
            )
        if not Path(compressor).exists():
            raise ValueError(
                f"`compressor` must be the compressor pre-training output (a folder holding {COMPRESSOR_FILE}, or "
                f"the safetensors file `pretrain_compressor(..., output_path=...)` wrote), got "
                f"{os.fspath(compressor)!r}, which does not exist; pre-train it first (recipe "
                f"{self.compressor_from!r}, `videoadapt.recipes.compact_pretrain`), or drop `compressor=` to train on "
                "an untrained compressor (average pooling)."
            )
        try:
            return load_autoencoder(compressor)
        except ValueError as error:
            raise ValueError(f"`compressor={os.fspath(compressor)}`: {error}") from None

    def load_pretrained_compressor(
        self,
        model: nn.Module,
        pretrained: SpatioTemporalAutoencoder | None,
        compressor: str | os.PathLike | None,
        fresh: bool,
        where: str = "the checkpoint",
    ) -> None:
        """Copy `pretrained` (`read_pretrained_compressor(compressor)`) into `model.model.compressor`.

        Without one, a `fresh` compressor (the checkpoint had none: a LLaVA-OneVision base) stays untrained, which
        is logged as a warning: it is then exactly f x f x f average pooling, not the supplement's pre-trained SVC.

        Raises:
            ValueError: its architecture (the width first) differs from the model's; the message names
                `compressor=`, `where` (the checkpoint) and the differing values.
        """
        if pretrained is None:
            if fresh:
                logger.warning(self._untrained_message(where, model.config.compression_factor))
            return
        try:
            model.load_compressor(pretrained)
        except ValueError as error:
            raise ValueError(
                f"`compressor={os.fspath(compressor)}` does not fit the model built from {where}: {error}"
            ) from None
        replaced = "" if fresh else " (replacing the checkpoint's own)"
        logger.info(f"Loaded the pre-trained compressor {os.fspath(compressor)} into the model{replaced}.")

    def _untrained_message(self, where: str, factor: int) -> str:
        if self.compressor_from is None:
            fix = (
                f"start recipe {self.name!r} from the {self.init_from} output (`model=<{self.init_from} output "
                "folder>/model`), which carries the pre-trained compressor"
            )
        else:
            fix = (
                f"pass `compressor=<folder>`, the output of the compressor pre-training (recipe "
                f"{self.compressor_from!r}, `videoadapt.recipes.compact_pretrain.pretrain_compressor`)"
            )
        frozen = f", and recipe {self.name!r} keeps it frozen" if "model.compressor" in self.frozen else ""
        return (
            f"The Compact compressor is untrained: {where} has none, so it is {factor} x {factor} x {factor} average "
            f"pooling, not the pre-trained compressor of the supplement (section 1.4){frozen}; {fix}."
        )


# --------------------------------------------------------------------------------------------- loading


def list_recipes() -> list[str]:
    """Names of the shipped MLLM stage recipes (`recipes/compact/<stage>.yaml`), in training order."""
    shipped = set(list_shipped(_RECIPE_FOLDER))
    return [name for name in STAGES if name in shipped]


def load_recipe(name_or_path: str | os.PathLike) -> CompactRecipe:
    """Load and validate a shipped stage recipe by name ("stage1", "stage2", "sft") or a YAML file by path.

    Raises:
        ValueError: unknown name, missing file, bad YAML, unknown or missing keys, wrong types, out-of-range values,
            inconsistent stage order, freezing lists, model settings or sources; the message names the file and the
            field.
    """
    names = list_recipes()
    if isinstance(name_or_path, str) and name_or_path in names:
        with resources.as_file(resources.files("videoadapt.recipes") / _RECIPE_FOLDER / f"{name_or_path}.yaml") as p:
            return _load_file(Path(p))
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"`name_or_path` must be a shipped Compact MLLM stage recipe ({', '.join(names)}) or a YAML file, got "
            f"{os.fspath(name_or_path)!r}."
        )
    return _load_file(path)


def _load_file(path: Path) -> CompactRecipe:
    nested = {"model": lambda value, prefix: {"model": build_dataclass(CompactModelSettings, value, path, prefix)}}
    recipe = build_dataclass(CompactRecipe, read_yaml(path), path, nested=nested)
    recipe = dataclasses.replace(recipe, path=path)
    _check_consistency(recipe, path)
    return recipe


def _check_consistency(recipe: CompactRecipe, path: Path) -> None:
    """Rules that span fields: stage order, compressor origin, model settings, freezing lists, sources."""

    def need(ok: bool, message: str) -> None:
        require(ok, path, message)

    allowed = _INIT_FROM[recipe.stage]
    need(
        recipe.init_from in allowed,
        f"`init_from` must be one of {list(allowed)} for stage {recipe.stage!r}, got {recipe.init_from!r}.",
    )
    from_base = recipe.init_from == "base"
    need(
        (recipe.compressor_from is not None) == from_base,
        "`compressor_from` must name the pre-trained compressor when `init_from` is 'base' (a LLaVA-OneVision "
        "checkpoint has none) and be null otherwise (the earlier stage's output carries it), got "
        f"{recipe.compressor_from!r} with init_from {recipe.init_from!r}.",
    )
    try:
        config = CompactConfig(**recipe.config_overrides())  # LLaVA-OneVision's default SigLIP 384 px / patch 14 tower
    except ValueError as error:
        raise ValueError(f"{path}: `model` does not make a valid CompactConfig: {error}") from None
    if recipe.compressor_from is not None:
        _check_compressor_chain(recipe.compressor_from, recipe.compressor_recipe(), config, path)
    overlap = sorted(set(recipe.trainable) & set(recipe.frozen))
    need(not overlap, f"`trainable` and `frozen` both list {overlap}; keep one.")
    need(recipe.trainable != (), "`trainable` must list at least one module, got [].")
    top = [f.name for f in dataclasses.fields(CompactRecipe) if f.name not in ("model", "sources", "path")]
    names = top + [f"model.{f.name}" for f in dataclasses.fields(CompactModelSettings)]
    check_sources(path, recipe.sources, names, names, (), "use a field name or 'model.<field>'")


def _compressor_recipe(name: str, path: Path | None) -> CompressorRecipe:
    """The compressor recipe `compressor_from` names: a shipped one, or a YAML file (relative: to `path`'s folder)."""
    names = list_compressor_recipes()
    if name in names:
        return load_compressor_recipe(name)
    file = Path(name) if path is None else path.parent / name
    if not file.is_file():
        raise ValueError(
            f"{path}: `compressor_from` must be a shipped compressor recipe ({', '.join(names)}) or a compressor "
            f"recipe YAML file, got {name!r}; a relative path is read from the stage recipe's folder."
        )
    return load_compressor_recipe(file)


def _check_compressor_chain(name: str, pretrain: CompressorRecipe, config: CompactConfig, path: Path) -> None:
    """The compressor recipe builds the compressor this stage's model builds (what `load_compressor` will check)."""
    with torch.device("meta"):  # no memory, no RNG
        built = SpatioTemporalCompressor(**config.compressor_kwargs()).init_kwargs
    given = pretrain.compressor.kwargs()
    differ = [
        f"{k}={given.get(k)!r} (model: {v!r})"
        for k, v in built.items()
        if k != "zero_init_residual" and given.get(k) != v  # the initialisation does not matter to loaded weights
    ]
    require(
        not differ,
        path,
        f"`compressor_from` names the compressor recipe {name!r} ({pretrain.path}), whose compressor does not fit "
        f"this recipe's model: {', '.join(differ)}; the model's compressor follows `model.compressor_*` at the "
        f"base's vision width (LLaVA-OneVision's SigLIP: {config.compressor_dim}), so set the compressor recipe's "
        "`compressor` fields to the model's values.",
    )
