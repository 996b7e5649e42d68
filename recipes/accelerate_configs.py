"""The shipped `accelerate` config files (recipes/accelerate/*.yaml) and the FSDP layer classes of a model.

    accelerate launch --config_file $(python -m videoadapt.recipes.accelerate_configs fsdp) -m videoadapt.recipes.train

`fsdp.yaml` wraps LLaVA-OneVision's layers (PAVE, Compact) and `fsdp_instructblip.yaml` InstructBLIP-Video's (REEF,
DynFocus). `fsdp_layer_classes(model)` names the decoder and vision layer classes of any model, so a config can be
checked against it (`check_fsdp_layer_classes`) or written for it (`write_fsdp_config`). See docs/distributed.md.
"""

import os
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from torch import nn

from videoadapt.processors.atomic import atomic_write
from videoadapt.recipes.recipe_utils import list_shipped


__all__ = [
    "accelerate_config_path",
    "check_fsdp_layer_classes",
    "fsdp_layer_classes",
    "list_accelerate_configs",
    "load_accelerate_config",
    "write_fsdp_config",
]

FOLDER = "accelerate"
WRAP_KEY = "fsdp_transformer_layer_cls_to_wrap"


def list_accelerate_configs() -> list[str]:
    """Names of the shipped configs, e.g. ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp", ...]."""
    return list_shipped(FOLDER)


def accelerate_config_path(name: str) -> Path:
    """Path of a shipped config, for `accelerate launch --config_file`."""
    names = list_accelerate_configs()
    if name not in names:
        raise ValueError(f"`name` must be one of the shipped accelerate configs {names}, got {name!r}.")
    return Path(str(resources.files("videoadapt.recipes") / FOLDER / f"{name}.yaml"))


def load_accelerate_config(name_or_path: str | os.PathLike) -> ClusterConfig:
    """A shipped config (by name) or a YAML file, read with accelerate's own loader (what `accelerate launch` uses)."""
    if isinstance(name_or_path, str) and name_or_path in list_accelerate_configs():
        name_or_path = accelerate_config_path(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"`name_or_path` must be a shipped accelerate config {list_accelerate_configs()} or a YAML file, "
            f"got {os.fspath(name_or_path)!r}."
        )
    return load_config_from_file(str(path))


def _block_class(module: nn.Module, allowed: set[str] | None) -> str | None:
    """Class name of the repeated blocks of `module`: the elements of its longest `nn.ModuleList` of one class."""
    best, best_len = None, 0
    for child in module.modules():
        if not isinstance(child, nn.ModuleList) or len(child) <= best_len:
            continue
        kinds = {type(block).__name__ for block in child}
        if len(kinds) == 1 and (allowed is None or kinds <= allowed):
            best, best_len = kinds.pop(), len(child)
    return best


def fsdp_layer_classes(model: nn.Module) -> list[str]:
    """The class names FSDP should wrap: [decoder layer, vision encoder layer] of a video LLM.

    The decoder is `model.get_decoder()` and the vision tower `model.get_encoder(modality="image")` (transformers'
    lookups); in each, the layer class is the element class of its longest `nn.ModuleList` that is also one of the
    model's `_no_split_modules`. E.g. LLaVA-OneVision -> ["Qwen2DecoderLayer", "SiglipEncoderLayer"].
    """
    if not all(hasattr(model, name) for name in ("get_decoder", "get_encoder")):
        raise TypeError(
            f"`model` must be a transformers PreTrainedModel (with `get_decoder`/`get_encoder`), got "
            f"{type(model).__name__}."
        )
    no_split = getattr(model, "_no_split_modules", None)
    allowed = set(no_split) if no_split else None
    parts = {"decoder": model.get_decoder(), "vision tower": model.get_encoder(modality="image")}
    names = []
    for part, module in parts.items():
        name = None if part == "vision tower" and module is model else _block_class(module, allowed)
        if name is None:
            raise ValueError(
                f"found no {part} layers in {type(model).__name__}; pass the classes to wrap yourself with "
                f"`--{WRAP_KEY} A,B`."
            )
        names.append(name)
    return list(dict.fromkeys(names))


def _wrap_list(config: ClusterConfig | str | os.PathLike) -> list[str]:
    config = config if isinstance(config, ClusterConfig) else load_accelerate_config(config)
    value = (config.fsdp_config or {}).get(WRAP_KEY)
    if not value:
        raise ValueError(
            f"the config has no `fsdp_config.{WRAP_KEY}`; it is not an FSDP TRANSFORMER_BASED_WRAP config."
        )
    return [name.strip() for name in value.split(",") if name.strip()]


def check_fsdp_layer_classes(config: ClusterConfig | str | os.PathLike, model: nn.Module) -> list[str]:
    """Check that every class an FSDP config wraps exists in `model` (accelerate stops otherwise, after the model has
    been loaded on every GPU) and that it wraps the model's decoder and vision layers. Returns the config's classes."""
    listed = _wrap_list(config)
    present = {type(module).__name__ for module in model.modules()}
    expected = fsdp_layer_classes(model)
    missing, unwrapped = [n for n in listed if n not in present], [n for n in expected if n not in listed]
    if missing or unwrapped:
        problems = [f"names classes {type(model).__name__} does not contain: {missing}"] if missing else []
        problems += [f"leaves the model's layers {unwrapped} unwrapped"] if unwrapped else []
        raise ValueError(
            f"`{WRAP_KEY}` = {','.join(listed)} {' and '.join(problems)}. Pass `--{WRAP_KEY} {','.join(expected)}` "
            "to `accelerate launch`, or write a config with `write_fsdp_config(model, path)`."
        )
    return listed


def write_fsdp_config(
    model: nn.Module, path: str | os.PathLike, base: str | os.PathLike = "fsdp", extra_classes: Iterable[str] = ()
) -> Path:
    """Write a copy of the FSDP config `base` (shipped name or file) whose wrap list is `fsdp_layer_classes(model)`
    plus `extra_classes` (e.g. a Q-Former layer class). Returns `path`."""
    config = load_accelerate_config(base)
    if not config.fsdp_config:
        raise ValueError(f"`base` must be an FSDP config (distributed_type FSDP), got {base!r}.")
    names = list(dict.fromkeys([*fsdp_layer_classes(model), *extra_classes]))
    data = config.to_dict()
    data["fsdp_config"] = {**data["fsdp_config"], WRAP_KEY: ",".join(names)}
    atomic_write(path, lambda tmp: Path(tmp).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8"))
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    """`python -m videoadapt.recipes.accelerate_configs NAME` prints the path of a shipped config."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in list_accelerate_configs():
        sys.exit(f"usage: python -m videoadapt.recipes.accelerate_configs {{{','.join(list_accelerate_configs())}}}")
    sys.stdout.write(f"{accelerate_config_path(argv[0])}\n")


if __name__ == "__main__":
    main()
