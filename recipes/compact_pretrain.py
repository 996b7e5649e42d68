"""Compact's compressor pre-training: train the SVC autoencoder to reconstruct cached, frozen vision features.

The supplement (section 1.4) pre-trains the compressor on the stage-2 data for one epoch with AdamW, learning rate
2e-5 and batch size 512, the vision encoder frozen; it does not give the loss. Ours: MSE + (1 - cosine) per token
(`videoadapt.layers.video_compressor.reconstruction_loss`). The recipe YAML (`recipes/compact/compressor_pretrain.yaml`)
holds those values, each with its source.

Features come in as an iterable of [T, H, W, D] tensors (a [N, T, H, W, D] tensor works too): what the Compact
model's compressor reads (`CompactModel.get_compressor_inputs`: the frozen vision tower's grids, resized to g x g),
computed once and cached (the encoder is frozen, so nothing of it is needed here). The shipped recipe's width D is
the stage recipes' base's (LLaVA-OneVision's SigLIP, 1152), so that its output loads into stage 1.

    recipe = load_compressor_recipe("compressor_pretrain")
    model = recipe.build_model()
    pretrain_compressor(model, features, recipe.training, micro_batch_size=16, output_path="runs/svc")
    model = load_autoencoder("runs/svc")  # runs/svc/compressor.safetensors
    # then: videoadapt train --recipe compact/stage1 compressor=runs/svc model=... train=... output_dir=...

Shape legend: N clips, T frames, H x W token grid, D feature channels.
"""

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.utils import logging

from videoadapt.layers.video_compressor import SpatioTemporalAutoencoder, reconstruction_loss
from videoadapt.recipes.recipe_utils import (
    Invalid,
    boolean,
    build_dataclass,
    check_sources,
    choice,
    integer,
    list_shipped,
    number,
    optional,
    pair,
    read_yaml,
    require,
    sources_map,
    spec,
    text,
)


__all__ = [
    "COMPRESSOR_FILE",
    "CompressorArchitecture",
    "CompressorRecipe",
    "PretrainSettings",
    "list_compressor_recipes",
    "load_autoencoder",
    "load_compressor_recipe",
    "pretrain_compressor",
    "save_autoencoder",
]

logger = logging.get_logger(__name__)

FORMAT = "videoadapt_svc_autoencoder"  # safetensors metadata "format"
COMPRESSOR_FILE = "compressor.safetensors"  # the file's name inside a pre-training output folder
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
_RECIPE_FOLDER = "compact"


def _spec(default: Any, check: Any, doc: str) -> Any:
    """A field with a default (for use from Python) whose YAML value must pass `check`."""
    return field(default=default, metadata={"check": check, "help": doc})


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise Invalid(f"a non-empty list of names, got {value!r}")
    return tuple(value)


# --------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CompressorArchitecture:
    """`SpatioTemporalAutoencoder` constructor arguments."""

    dim: int = _spec(1152, integer(1), "feature channels D (the vision tower's hidden size; SigLIP's 1152)")
    num_blocks: int = _spec(3, integer(1), "residual blocks")
    num_downsample: int = _spec(2, integer(0), "downsampling blocks (factor 2 ** num_downsample per axis)")
    bottleneck_ratio: int = _spec(4, integer(1), "the 2D conv outputs dim / bottleneck_ratio channels")
    spatial_kernel: int = _spec(3, integer(1), "k x k of the 2D convs (odd)")
    temporal_kernel: int = _spec(3, integer(1), "k_t of the 1D convs (odd)")
    shortcut: str = _spec("pool", choice("pool", "conv"), "shortcut of resampling blocks")
    norm_groups: int = _spec(0, integer(0), "GroupNorm groups before each SiLU (0 = none)")
    zero_init_residual: bool = _spec(True, boolean, "residual branches start at zero")

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PretrainSettings:
    """How `pretrain_compressor` optimises (AdamW)."""

    epochs: int = _spec(1, integer(1), "passes over the features")
    batch_size: int = _spec(512, integer(1), "clips per optimiser step (global)")
    learning_rate: float = _spec(2e-5, number(0.0, 1.0, open_low=True), "AdamW learning rate")
    adam_betas: tuple[float, float] = _spec((0.9, 0.999), pair(number(0.0, 1.0, open_high=True)), "AdamW betas")
    weight_decay: float = _spec(0.0, number(0.0, 1.0), "AdamW weight decay")
    lr_scheduler: str = _spec("constant", choice(*SCHEDULERS), "transformers scheduler type")
    warmup_steps: int = _spec(0, integer(0), "linear warmup steps")
    max_grad_norm: float | None = _spec(1.0, optional(number(0.0, 1e6, open_low=True), "no clipping"), "clip norm")
    mse_weight: float = _spec(1.0, number(0.0, 1e6), "weight of the MSE term")
    cosine_weight: float = _spec(1.0, number(0.0, 1e6), "weight of the (1 - cosine) term")
    seed: int = _spec(42, integer(0), "random seed (initialisation)")


@dataclass(frozen=True)
class CompressorRecipe:
    """A validated compressor pre-training recipe; build it with `load_compressor_recipe`."""

    name: str = spec(text, "recipe name")
    vision_encoder: str = spec(text, "the frozen vision tower whose features are reconstructed")
    vision_encoder_frozen: bool = spec(boolean, "the vision tower is frozen (features may be cached)")
    datasets: tuple[str, ...] = spec(_names, "training data (the stage-2 mixture)")
    num_samples: int = spec(integer(1), "clips in one epoch")
    num_frames: int = spec(integer(1), "frames per clip T")
    grid: int = spec(integer(1), "H = W, the token grid of a frame")
    compressor: CompressorArchitecture = spec(None, "SVC architecture")
    training: PretrainSettings = spec(None, "optimisation")
    sources: dict[str, str] = spec(sources_map, "field -> where its value comes from")
    path: Path | None = field(default=None, compare=False, metadata={"help": "the YAML file (not a YAML key)"})

    def build_model(self) -> SpatioTemporalAutoencoder:
        """A freshly initialised autoencoder (seeded with `training.seed`)."""
        torch.manual_seed(self.training.seed)
        return SpatioTemporalAutoencoder(**self.compressor.kwargs())

    def latent_tokens(self) -> int:
        """Tokens per clip after compression: (T / f) * (grid / f)^2."""
        f = 2**self.compressor.num_downsample
        return (self.num_frames // f) * (self.grid // f) ** 2


def list_compressor_recipes() -> list[str]:
    """Names of the shipped compressor recipes (`recipes/compact/compressor_*.yaml`; the folder also holds the
    MLLM stage recipes), sorted."""
    return [name for name in list_shipped(_RECIPE_FOLDER) if name.startswith("compressor")]


def load_compressor_recipe(name_or_path: str | os.PathLike = "compressor_pretrain") -> CompressorRecipe:
    """Load and validate a shipped compressor recipe (see `list_compressor_recipes`) or a YAML file by path.

    Raises:
        ValueError: unknown name or file, bad YAML, unknown/missing keys, wrong values, sizes the compressor
            cannot divide, a missing source; the message names the file and the field.
    """
    names = list_compressor_recipes()
    if isinstance(name_or_path, str) and name_or_path in names:
        with resources.as_file(resources.files("videoadapt.recipes") / _RECIPE_FOLDER / f"{name_or_path}.yaml") as p:
            return _load_file(Path(p))
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"`name_or_path` must be a shipped compressor recipe ({', '.join(names)}) or a YAML file, got "
            f"{os.fspath(name_or_path)!r}."
        )
    return _load_file(path)


def _load_file(path: Path) -> CompressorRecipe:
    nested = {
        "compressor": lambda v, p: {"compressor": build_dataclass(CompressorArchitecture, v, path, p)},
        "training": lambda v, p: {"training": build_dataclass(PretrainSettings, v, path, p)},
    }
    recipe = build_dataclass(CompressorRecipe, read_yaml(path), path, nested=nested)
    recipe = dataclasses.replace(recipe, path=path)
    f = 2**recipe.compressor.num_downsample
    for name in ("num_frames", "grid"):
        value = getattr(recipe, name)
        require(value % f == 0, path, f"`{name}` ({value}) must be a multiple of the compressor's factor {f}.")
    try:
        with torch.device("meta"):  # checks the architecture without memory or touching the global RNG
            SpatioTemporalAutoencoder(**recipe.compressor.kwargs())
    except ValueError as error:
        raise ValueError(f"{path}: `compressor`: {error}") from None
    sections = {"compressor": CompressorArchitecture, "training": PretrainSettings}
    top = [f.name for f in dataclasses.fields(CompressorRecipe) if f.name not in (*sections, "sources", "path")]
    needed = top + [f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)]
    check_sources(path, recipe.sources, needed, needed, (), "use a field name or '<section>.<field>'")
    return recipe


# --------------------------------------------------------------------------------------------- saving


def _autoencoder_file(path: str | os.PathLike) -> Path:
    """`path`, or `path / COMPRESSOR_FILE` when `path` is a folder (a pre-training output folder)."""
    path = Path(path)
    return path / COMPRESSOR_FILE if path.is_dir() else path


def save_autoencoder(model: SpatioTemporalAutoencoder, path: str | os.PathLike) -> Path:
    """Write encoder + decoder weights and the constructor arguments to one safetensors file, atomically; returns it.

    `path` is the file, or an existing folder (the file is then `<folder>/compressor.safetensors`). The file is
    written next to its place under a temporary name and moved there with `os.replace`, so a reader never sees a
    half-written file. Keys are the state-dict names ("encoder.blocks.0...", "decoder.blocks.0...").
    """
    path = _autoencoder_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().to("cpu").contiguous() for name, value in model.state_dict().items()}
    metadata = {"format": FORMAT, "init_kwargs": json.dumps(model.init_kwargs, sort_keys=True)}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_autoencoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> SpatioTemporalAutoencoder:
    """The autoencoder saved by `save_autoencoder` (architecture from the file's metadata, weights loaded strictly);
    `path` is the file or the folder holding it as `compressor.safetensors`."""
    path = _autoencoder_file(path)
    if not path.is_file():
        raise ValueError(
            f"`path` must be a folder holding {COMPRESSOR_FILE} or a safetensors file written by `save_autoencoder` "
            f"(`pretrain_compressor(..., output_path=...)`), got {str(path)!r}, which does not exist."
        )
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an SVC autoencoder file (metadata format {metadata.get('format')!r}, expected "
            f"{FORMAT!r}); write it with `save_autoencoder`."
        )
    with torch.device("meta"):
        model = SpatioTemporalAutoencoder(**json.loads(metadata["init_kwargs"]))
    model.load_state_dict(load_file(path, device=str(device)), strict=True, assign=True)
    return model


# --------------------------------------------------------------------------------------------- training


def _batches(features: Iterable[torch.Tensor], size: int) -> Iterable[list[torch.Tensor]]:
    """Consecutive lists of `size` clips (the last one may be shorter)."""
    batch = []
    for clip in features:
        batch.append(clip)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _total_steps(features: Iterable[torch.Tensor], settings: PretrainSettings, max_steps: int | None) -> int | None:
    per_epoch = math.ceil(len(features) / settings.batch_size) if hasattr(features, "__len__") else None
    total = None if per_epoch is None else per_epoch * settings.epochs
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    if total is None and settings.lr_scheduler not in ("constant", "constant_with_warmup"):
        raise ValueError(
            f"`lr_scheduler` {settings.lr_scheduler!r} needs the number of steps, but `features` has no length; "
            "pass `max_steps` or a sized collection (list, tensor, dataset)."
        )
    return total


def _stack(clips: list[torch.Tensor], dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    shapes = {tuple(c.shape) for c in clips}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4 or next(iter(shapes))[-1] != dim:
        raise ValueError(
            f"`features` must yield [T, H, W, D] tensors with D = {dim} (the model's `dim`) and one shape per batch, "
            f"got shapes {sorted(shapes)}; resize the cached features to one grid and frame count."
        )
    return torch.stack(clips).to(device=device, dtype=dtype)


def pretrain_compressor(
    model: SpatioTemporalAutoencoder,
    features: Iterable[torch.Tensor],
    settings: PretrainSettings | None = None,
    micro_batch_size: int | None = None,
    max_steps: int | None = None,
    output_path: str | os.PathLike | None = None,
    on_step: Callable[[int, float], None] | None = None,
    logging_steps: int = 50,
    progress: bool = True,
) -> SpatioTemporalAutoencoder:
    """Train `model` to reconstruct `features` with AdamW; returns it (trained in place).

    Args:
        model: the autoencoder (its device and dtype are used for the data).
        features: [T, H, W, D] clips of cached frozen vision features (a [N, T, H, W, D] tensor, a list, a
            generator...); T, H and W must be multiples of the model's factor. A one-shot iterator allows one epoch.
        settings: the optimisation (default `PretrainSettings()`, the paper's values).
        micro_batch_size: clips per forward pass; gradients are accumulated up to `settings.batch_size` clips.
            Default: the whole batch at once.
        max_steps: stop after this many optimiser steps (default: the epochs).
        output_path: save encoder + decoder there at the end (`save_autoencoder`, atomic): a file, or an existing
            folder that then holds `compressor.safetensors` (what `videoadapt train ... compressor=` reads).
        on_step: called with (step, loss) after every optimiser step; the loss is the batch mean.
        logging_steps: log the loss every this many steps.
        progress: show a tqdm bar over the optimiser steps.
    """
    settings = settings or PretrainSettings()
    micro = settings.batch_size if micro_batch_size is None else micro_batch_size
    if not isinstance(micro, int) or isinstance(micro, bool) or not 1 <= micro <= settings.batch_size:
        raise ValueError(
            f"`micro_batch_size` must be in [1, batch_size] = [1, {settings.batch_size}], got {micro_batch_size!r}."
        )
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"`max_steps` must be >= 1 or None (all epochs), got {max_steps}.")
    if settings.epochs > 1 and iter(features) is features:
        raise ValueError(
            f"`features` is a one-shot iterator but `epochs` is {settings.epochs}; pass a re-iterable collection."
        )
    total = _total_steps(features, settings, max_steps)
    parameter = next(model.parameters())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, betas=settings.adam_betas, weight_decay=settings.weight_decay
    )
    scheduler = get_scheduler(settings.lr_scheduler, optimizer, settings.warmup_steps, total)
    count = sum(p.numel() for p in model.parameters())
    logger.info(
        f"compressor pre-training: {count:,} parameters, {total or 'unknown'} steps, batch {settings.batch_size}"
    )
    model.train()
    step = 0
    with tqdm(total=total, desc="compressor pretraining", unit="step", disable=not progress) as bar:
        for _ in range(settings.epochs):
            for batch in _batches(features, settings.batch_size):
                loss = _accumulate(model, batch, micro, settings, parameter)
                if settings.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if on_step is not None:
                    on_step(step, loss)
                if step % logging_steps == 0:
                    logger.info(f"step {step}: loss {loss:.5f}")
                if max_steps is not None and step >= max_steps:
                    break
            if max_steps is not None and step >= max_steps:
                break
    model.eval()
    if output_path is not None:
        logger.info(f"saved the compressor to {save_autoencoder(model, output_path)}")
    return model


def _accumulate(
    model: SpatioTemporalAutoencoder,
    batch: list[torch.Tensor],
    micro: int,
    settings: PretrainSettings,
    parameter: torch.Tensor,
) -> float:
    """Forward/backward `batch` in chunks of `micro` clips; gradients end as the batch-mean loss's. Returns it."""
    total = 0.0
    for start in range(0, len(batch), micro):
        chunk = batch[start : start + micro]
        x = _stack(chunk, model.encoder.dim, parameter.device, parameter.dtype)
        reconstruction, _ = model(x)
        loss = reconstruction_loss(reconstruction, x, settings.mse_weight, settings.cosine_weight)
        (loss * (len(chunk) / len(batch))).backward()
        total += loss.item() * len(chunk) / len(batch)
    return total
