"""PAVE training recipes: one YAML per setting of the PAVE paper (audio, 3D, enhanced video, multi-view), validated.

A recipe holds the task, the base checkpoint and its sizes, the side channel (what the features are, how many
tokens per second or per frame), the patch (`PavePatchConfig` settings), the LoRA on the LLM, the optimiser and
schedule, the prompt and the decoding settings. Only the patch and its own LoRA adapter train; everything else is
frozen (the model's `train_patch`). Every value names its source (`sources`: the paper, the official code, or "ours").

    recipe = load_recipe("avsd")
    model = PaveForConditionalGeneration.from_pretrained(recipe.base_checkpoint)
    recipe.add_patch(model)                 # patch `avsd` + its LoRA, sized for `model`
    recipe.apply_freezing(model)            # only that patch and its LoRA train
    trainer = Trainer(model, recipe.training_arguments("out/avsd", world_size=2), ...)

When `patch_learning_rate` differs from `learning_rate`, give the Trainer an optimizer over
`recipe.optimizer_groups(model)`: `torch.optim.AdamW(groups, betas=recipe.adam_betas)`.
"""

import dataclasses
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import LoraConfig
from torch import nn
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import get_parameter_names
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from videoadapt.configuration.configuration_pave import PavePatchConfig
from videoadapt.pave_patches import PavePatchesMixin
from videoadapt.recipes.recipe_utils import (
    Invalid,
    boolean,
    build_dataclass,
    check_sources,
    choice,
    integer,
    list_shipped,
    load_shipped,
    number,
    optional,
    pair,
    read_yaml,
    require,
    shown,
    sources_map,
    spec,
    stage_training_arguments,
    text,
)


__all__ = [
    "LORA_TARGETS",
    "PaveGeneration",
    "PaveLoraSettings",
    "PavePatchSettings",
    "PaveRecipe",
    "PaveSideChannel",
    "list_recipes",
    "load_recipe",
]

TASKS = ("qa", "dialogue", "classification")
BASE_MODEL_TYPES = ("llava_onevision", "llava_next_video", "video_llava")
SIDE_CHANNEL_KINDS = ("audio", "video", "3d", "multiview")
_TIMED_KINDS = ("audio", "video")  # steps follow time (a rate); the others follow the sampled frames
# the projections LoRA may wrap, by their parent module in every LLM decoder layer
LORA_TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}  # fmt: skip
PROMPT_FIELDS = ("question", "options")
_RECIPE_FOLDER = "pave"
# Trainer's rule for parameters without weight decay (`Trainer.get_decay_parameter_names`)
_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def _lora_targets(value: Any) -> tuple[str, ...]:
    """A non-empty list of distinct names from `LORA_TARGETS`; returned as a tuple."""
    if not isinstance(value, list) or not value or not all(v in LORA_TARGETS for v in value):
        raise Invalid(f"a non-empty list of names from {list(LORA_TARGETS)}, got {shown(value)}")
    if len(set(value)) != len(value):
        raise Invalid(f"a list without repeated names, got {value}")
    return tuple(value)


# --------------------------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class PaveSideChannel:
    """What the side-channel features are: kind, encoder, channels, tokens per step, steps per second or per frame."""

    kind: str = spec(choice(*SIDE_CHANNEL_KINDS), "`PavePatchConfig.side_channel`")
    encoder: str = spec(text, "the encoder the features come from (a description)")
    feature_dim: int = spec(integer(1), "channels C of the pre-extracted features")
    grid: tuple[int, int] = spec(pair(integer(1)), "(h, w) tokens per time step")
    steps_per_second: float | None = spec(
        optional(number(0.0, 1000.0, open_low=True), "steps follow the frames"), "time steps per second (audio, video)"
    )
    frames_per_video: int | None = spec(
        optional(integer(1), "steps follow time"), "time steps per view: frames sampled uniformly (3d, multiview)"
    )
    num_views: int = spec(integer(1), "synchronised views per time step, time-major (multiview)")
    clip_seconds: float | None = spec(
        optional(number(0.0, 1000.0, open_low=True), "not audio"), "audio clip length (stride 1 / steps_per_second)"
    )
    spatial_pool_stride: int | None = spec(
        optional(integer(1), "not multiview"), "multiview: the vision grid is pooled to ceil(g / stride)"
    )

    @property
    def tokens_per_step(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class PavePatchSettings:
    """The `PavePatchConfig` fields a recipe sets (see `PavePatchConfig` for their meaning)."""

    hidden_size: int = spec(integer(1), "cross-attention width")
    num_attention_heads: int = spec(integer(1), "attention heads")
    num_layers: int = spec(integer(1), "cross-attention layers")
    ffn_size: int = spec(integer(1), "hidden width of the FFN after each attention")
    output_mlp_size: int = spec(integer(1), "hidden width of the output MLP")
    rope: str = spec(choice("none", "1d", "3d"), "rotary embedding of queries and keys")
    rope_theta: float = spec(number(0.0, 1.0e9, open_low=True), "RoPE base")
    query_source: str = spec(choice("projected", "vision"), "queries: projected video tokens or vision features")
    tie_value_to_key: bool = spec(boolean, "values reuse the key projection (official code)")
    attention_output_projection: bool = spec(boolean, "an output projection after attention")


@dataclass(frozen=True)
class PaveLoraSettings:
    """The LoRA adapter on the LLM that trains with the patch."""

    r: int = spec(integer(1), "rank")
    alpha: int = spec(integer(1), "scaling numerator (scale = alpha / r)")
    dropout: float = spec(number(0.0, 1.0, open_high=True), "dropout on the LoRA input")
    target_modules: tuple[str, ...] = spec(_lora_targets, "projections wrapped in every LLM decoder layer")


@dataclass(frozen=True)
class PaveGeneration:
    """Decoding settings for evaluation (`model.generate(**inputs, **recipe.generation_kwargs())`)."""

    num_beams: int = spec(integer(1), "beam size (1: greedy)")
    max_new_tokens: int = spec(integer(1), "longest answer in tokens")


@dataclass(frozen=True)
class PaveRecipe:
    """A validated PAVE recipe (see the module docstring); build it with `load_recipe`."""

    name: str = spec(text, "recipe name; also the default patch name")
    task: str = spec(choice(*TASKS), "task")
    dataset: str = spec(text, "training dataset")
    base_checkpoint: str = spec(text, "the transformers checkpoint of the base video LLM")
    base_model_type: str = spec(choice(*BASE_MODEL_TYPES), "the base's transformers family")
    base_hidden_size: int = spec(integer(1), "the base LLM's hidden size (the patch output width)")
    base_vision_hidden_size: int = spec(integer(1), "the base vision tower's hidden size (`vision` queries)")
    num_frames: int = spec(integer(1), "video frames sampled uniformly per sample")
    prompt: str = spec(text, "the text after the video: {question} (optional for classification), {options}")
    epochs: int = spec(integer(1), "training epochs")
    learning_rate: float = spec(number(0.0, 1.0, open_low=True, open_high=True), "peak learning rate (LoRA)")
    patch_learning_rate: float | None = spec(
        optional(number(0.0, 1.0, open_low=True, open_high=True), "the patch trains at `learning_rate`"),
        "peak learning rate of the patch's fusion weights",
    )
    batch_size: int = spec(integer(1), "global batch size: all devices and accumulation steps together")
    optimizer: str = spec(choice(*(o.value for o in OptimizerNames)), "transformers optimizer name")
    adam_betas: tuple[float, float] = spec(pair(number(0.0, 1.0, open_high=True)), "AdamW (beta1, beta2)")
    weight_decay: float = spec(number(0.0, 1.0), "AdamW weight decay")
    max_grad_norm: float = spec(number(0.0, 1.0e6, open_low=True), "gradient clipping norm")
    lr_scheduler: str = spec(choice(*(s.value for s in SchedulerType)), "transformers scheduler type")
    warmup_ratio: float = spec(number(0.0, 1.0, open_high=True), "linear warmup share of the training steps")
    bf16: bool = spec(boolean, "bf16 mixed precision")
    seed: int = spec(integer(0), "random seed")
    side_channel: PaveSideChannel = spec(None, "the side-channel features")
    patch: PavePatchSettings = spec(None, "PavePatchConfig settings")
    lora: PaveLoraSettings = spec(None, "the LoRA on the LLM")
    generation: PaveGeneration = spec(None, "decoding settings")
    sources: dict[str, str] = spec(sources_map, "field -> where its value comes from")
    path: Path | None = field(default=None, compare=False, metadata={"help": "the YAML file (not a YAML key)"})

    def source(self, name: str) -> str:
        """Where a value comes from: `name` is a field ("epochs") or "<section>.<field>" ("lora.r")."""
        if name not in self.sources:
            raise ValueError(
                f"`name` must be a field of the recipe such as 'epochs' or 'lora.r' (one of {sorted(self.sources)}), "
                f"got {name!r}."
            )
        return self.sources[name]

    # ----------------------------------------------------------------------------------------- the patch

    def patch_config(self, side_channel_dim: int | None = None, model: nn.Module | None = None) -> PavePatchConfig:
        """The recipe's `PavePatchConfig`.

        Args:
            side_channel_dim: channels of the features you feed, when another encoder than the recipe's makes them
                (default: `side_channel.feature_dim`).
            model: a PAVE model to size the patch for (its `patch_config_for`: query/output widths and base
                identity); without one, the patch is sized for `base_checkpoint` from the recipe's base sizes.
        """
        dim = self.side_channel.feature_dim if side_channel_dim is None else side_channel_dim
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(
                f"`side_channel_dim` must be an integer >= 1 (the channels of your features) or None (the recipe's "
                f"{self.side_channel.feature_dim}), got {dim!r}."
            )
        settings = {**dataclasses.asdict(self.patch), "side_channel_grid": list(self.side_channel.grid)}
        if model is not None:
            return _pave_model(model).patch_config_for(self.side_channel.kind, dim, **settings)
        vision = self.patch.query_source == "vision"
        return PavePatchConfig(
            side_channel=self.side_channel.kind,
            side_channel_dim=dim,
            query_dim=self.base_vision_hidden_size if vision else self.base_hidden_size,
            output_dim=self.base_hidden_size,
            base_model_type=self.base_model_type,
            base_model_name_or_path=self.base_checkpoint,
            base_hidden_size=self.base_hidden_size,
            **settings,
        )

    def lora_config(self) -> LoraConfig:
        """The peft `LoraConfig`: the listed projections of every LLM decoder layer (never the vision tower)."""
        return LoraConfig(
            r=self.lora.r,
            lora_alpha=self.lora.alpha,
            lora_dropout=self.lora.dropout,
            target_modules=_lora_regex(self.lora.target_modules),
            bias="none",
        )

    def add_patch(self, model: nn.Module, name: str | None = None, side_channel_dim: int | None = None) -> nn.Module:
        """Add the recipe's patch (sized for `model`) and its LoRA to `model` as `name` (default: the recipe's name)."""
        model = _pave_model(model)
        config = self.patch_config(side_channel_dim, model=model)
        return model.add_patch(name or self.name, config, self.lora_config())

    # ----------------------------------------------------------------------------------------- data and decoding

    def processor_kwargs(self) -> dict[str, Any]:
        """`PaveProcessor` (or `.from_model`) keyword arguments: frames per video, sampled uniformly."""
        return {"num_frames": self.num_frames, "sampler": "uniform"}

    def side_channel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the matching extractor (`AudioSideChannel`, `VideoSideChannel`, `Depth3DSideChannel`,
        `MultiviewSideChannel`) that make features at the recipe's rate and grid."""
        s = self.side_channel
        by_kind = {
            "audio": lambda: {"clip_seconds": s.clip_seconds, "stride_seconds": 1.0 / s.steps_per_second},
            "video": lambda: {"fps": s.steps_per_second, "pool": tuple(s.grid)},
            "3d": lambda: {"num_frames": s.frames_per_video},
            "multiview": lambda: {"num_frames": s.frames_per_video, "spatial_pool_stride": s.spatial_pool_stride},
        }
        return by_kind[s.kind]()

    def format_prompt(self, question: str | None = None, options: Sequence[str] | None = None) -> str:
        """The prompt of one sample (the text after the video). `question` fills {question}; `options` (multiple
        choice) fill {options} as lines "A.<option>", "B.<option>", ...; each is required exactly when the template
        holds its field."""
        fields = _prompt_fields(self.prompt)
        for name, value in (("question", question), ("options", options)):
            if (name in fields) != (value is not None):
                rule = "given" if name in fields else f"None (the prompt of {self.name!r} has no {{{name}}})"
                raise ValueError(f"`{name}` must be {rule} for recipe {self.name!r}, got {value!r}.")
        if options is not None:
            if isinstance(options, str) or not 1 <= len(options) <= 26:
                raise ValueError(f"`options` must be a list of 1 to 26 answer strings, got {options!r}.")
            options = "".join(f"{chr(ord('A') + i)}.{option}\n" for i, option in enumerate(options))
        return self.prompt.format(question=question, options=options)

    def generation_kwargs(self) -> dict[str, Any]:
        """`generate` keyword arguments (deterministic decoding)."""
        return {**dataclasses.asdict(self.generation), "do_sample": False}

    def callbacks(self) -> list[TrainerCallback]:
        """Trainer callbacks the recipe needs: none (PAVE has no schedule beyond the learning rate)."""
        return []

    # ----------------------------------------------------------------------------------------- training

    def training_arguments(
        self,
        output_dir: str | os.PathLike,
        world_size: int = 1,
        max_per_device_batch_size: int | None = None,
        **overrides: Any,
    ) -> TrainingArguments:
        """`TrainingArguments` for the recipe, keeping its global batch size exact.

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
            max_grad_norm=self.max_grad_norm,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup_ratio,  # < 1: a fraction of the training steps (transformers 5's warmup ratio)
            bf16=self.bf16,
            seed=self.seed,
        )

    def apply_freezing(self, model: nn.Module, patch_name: str | None = None) -> list[str]:
        """Train only patch `patch_name` (default: the recipe's name) and its LoRA, with the model's `train_patch`;
        every other parameter (other patches included) is frozen. Returns the trained parameter names, sorted."""
        model = _pave_model(model)
        name = patch_name or self.name
        if name not in model.patch_names:
            raise ValueError(
                f"`patch_name` must name a patch of the model ({model.patch_names}), got {name!r}; add it first "
                f"(`recipe.add_patch(model)`) or pass the name of the patch to train."
            )
        model.train_patch(name)
        return sorted(n for n, p in model.named_parameters() if p.requires_grad)

    def optimizer_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Parameter groups of the trainable parameters: the patch fusion weights (any `patches.` module) at
        `patch_learning_rate`, the rest (LoRA) at `learning_rate`; biases and norms without weight decay, as
        Trainer does. Groups with equal settings are merged."""
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("`model` has no trainable parameter; call `recipe.apply_freezing(model)` first.")
        decay = set(get_parameter_names(model, [nn.LayerNorm], _NO_DECAY_PATTERNS))
        patch_lr = self.patch_learning_rate or self.learning_rate
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, parameter in trainable:
            lr = patch_lr if ".patches." in f".{name}" else self.learning_rate
            groups.setdefault((lr, self.weight_decay if name in decay else 0.0), []).append(parameter)
        return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]


def _pave_model(model: Any) -> PavePatchesMixin:
    if not isinstance(model, PavePatchesMixin):
        raise TypeError(
            f"`model` must be a PAVE model (`Pave*ForConditionalGeneration`), got {type(model).__name__}; load the "
            f"base with `PaveForConditionalGeneration.from_pretrained(...)`."
        )
    return model


def _lora_regex(targets: Sequence[str]) -> str:
    """A regex on full module names: `targets` inside every LLM decoder layer, grouped by parent module."""
    parents = {}
    for target in targets:
        parents.setdefault(LORA_TARGETS[target], []).append(target)
    alternatives = "|".join(f"{parent}\\.({'|'.join(names)})" for parent, names in parents.items())
    return rf".*language_model\.layers\.\d+\.({alternatives})"


def _prompt_fields(template: str) -> list[str | None]:
    """The replacement fields of a format string ("" for a positional {}); ValueError on a malformed one."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


# --------------------------------------------------------------------------------------------- loading


def list_recipes() -> list[str]:
    """Names of the shipped PAVE recipes (`recipes/pave/<name>.yaml`), sorted."""
    return list_shipped(_RECIPE_FOLDER)


def load_recipe(name_or_path: str | os.PathLike) -> PaveRecipe:
    """Load and validate a shipped recipe by name (see `list_recipes`) or a YAML file by path.

    Raises:
        ValueError: unknown name, missing file, bad YAML, unknown or missing keys, wrong types, out-of-range values,
            an inconsistent side channel, patch, prompt or sources; the message names the file and the field.
    """
    return load_shipped(name_or_path, _RECIPE_FOLDER, "PAVE", _load_file)


_SECTIONS = {
    "side_channel": PaveSideChannel,
    "patch": PavePatchSettings,
    "lora": PaveLoraSettings,
    "generation": PaveGeneration,
}


def _load_file(path: Path) -> PaveRecipe:
    def section(key: str):
        return lambda value, prefix: {key: build_dataclass(_SECTIONS[key], value, path, prefix)}

    nested = {key: section(key) for key in _SECTIONS}
    recipe = build_dataclass(PaveRecipe, read_yaml(path), path, nested=nested)
    recipe = dataclasses.replace(recipe, path=path)
    _check_consistency(recipe, path)
    return recipe


def _check_consistency(recipe: PaveRecipe, path: Path) -> None:
    """Rules that span fields: the side channel's timing, the patch, the prompt, the sources."""
    _check_side_channel(recipe.side_channel, path)
    try:
        recipe.patch_config()
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: `patch` does not make a valid PavePatchConfig: {error}") from None
    try:
        fields = _prompt_fields(recipe.prompt)
    except ValueError as error:
        raise ValueError(f"{path}: `prompt` is not a valid template ({error}); escape braces as {{{{ }}}}.") from None
    questions = (0, 1) if recipe.task == "classification" else (1,)
    require(
        fields.count("question") in questions
        and set(fields) <= set(PROMPT_FIELDS)
        and len(fields) == len(set(fields)),
        path,
        f"`prompt` must hold {{question}} {'at most ' * (len(questions) > 1)}once for task {recipe.task!r} and may "
        f"hold {{options}} once (no other fields), got {recipe.prompt!r}.",
    )
    top = [f.name for f in dataclasses.fields(PaveRecipe) if f.name not in (*_SECTIONS, "sources", "path")]
    names = top + [f"{key}.{f.name}" for key, cls in _SECTIONS.items() for f in dataclasses.fields(cls)]
    check_sources(path, recipe.sources, names, names, (), "use a field name or '<section>.<field>'")


def _check_side_channel(s: PaveSideChannel, path: Path) -> None:
    """Timed kinds (audio, video) have a rate; the others follow the frames; audio has clips, multiview views."""
    timed, audio, multiview = s.kind in _TIMED_KINDS, s.kind == "audio", s.kind == "multiview"
    rules = [  # (field, whether it is right, what it must be)
        ("steps_per_second", (s.steps_per_second is not None) == timed, "a rate" if timed else "null"),
        ("frames_per_video", (s.frames_per_video is None) == timed, "null" if timed else "a frame count"),
        ("clip_seconds", (s.clip_seconds is not None) == audio, "a clip length" if audio else "null"),
        ("num_views", multiview or s.num_views == 1, "1"),
        ("spatial_pool_stride", (s.spatial_pool_stride is not None) == multiview, "a stride" if multiview else "null"),
    ]
    for name, ok, rule in rules:
        require(ok, path, f"`side_channel.{name}` must be {rule} for kind {s.kind!r}, got {getattr(s, name)}.")
    if audio:
        stride = 1.0 / s.steps_per_second
        require(
            s.clip_seconds >= stride,
            path,
            f"`side_channel.clip_seconds` must be >= the stride 1 / steps_per_second = {stride:g} s (the clips must "
            f"cover the audio), got {s.clip_seconds}.",
        )
        require(
            s.grid == (1, 1),
            path,
            f"`side_channel.grid` must be [1, 1] for audio (one embedding per clip), got {list(s.grid)}.",
        )
