"""Import a released official PAVE checkpoint (github dragonlzm/PAVE) into a videoadapt patch folder.

An official release holds `non_lora_trainables.bin` (a pickled dict of the fusion weights, keys
`base_model.model.model.temporal_aggregator.<...>`), a PEFT adapter whose LoRA keys use the official LLM path
(`base_model.model.model.layers.{l}.<proj>.lora_{A,B}.weight`) and optionally `config.json`. The pickle is read with
`torch.load(weights_only=True)` only. The result is a patch folder for a LLaVA-OneVision `PaveForConditionalGeneration`
with `PavePatchConfig.official(...)` (tied K/V, no attention output projection, no RoPE, vision queries).

    python -m videoadapt.pave_import OFFICIAL_DIR OUT_DIR --side-channel audio --side-channel-dim 1024 --output-dim 896
"""

import argparse
import dataclasses
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.utils import logging

from videoadapt.cli_common import positive_int, report_error
from videoadapt.configuration.configuration_pave import (
    PATCH_CONFIG_NAME,
    SIDE_CHANNELS,
    PavePatchConfig,
    PavePatchRepoConfig,
)
from videoadapt.model_cards import patch_card
from videoadapt.modeling_pave import PavePatch
from videoadapt.pave_patches import _NAME as PATCH_NAME  # the names `load_patch` accepts
from videoadapt.pave_patches import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    LORA_TARGET_MODULES,
    PATCH_WEIGHTS_NAME,
)


__all__ = ["OFFICIAL_PATCH_WEIGHTS", "PATCH_KEY_MAP", "import_official_pave", "main"]

logger = logging.get_logger(__name__)

OFFICIAL_PATCH_WEIGHTS = "non_lora_trainables.bin"
_PREFIX = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?temporal_aggregator\.")
# official key (after `temporal_aggregator.`) -> ours (relative to `PavePatch`); None: dropped (never used upstream)
PATCH_KEY_MAP = {
    r"query_input_mapping\.(weight|bias)": r"query_proj.\1",
    r"input_mapping\.(weight|bias)": r"side_proj.\1",
    r"cross_attn_layers\.(\d+)\.attn\.q_linear\.(weight|bias)": r"layers.\1.attn.q_proj.\2",
    r"cross_attn_layers\.(\d+)\.attn\.k_linear\.(weight|bias)": r"layers.\1.attn.k_proj.\2",
    r"cross_attn_layers\.(\d+)\.attn\.v_linear\.(weight|bias)": None,
    r"cross_attn_layers\.(\d+)\.ffn\.0\.(weight|bias)": r"layers.\1.ffn.norm.\2",
    r"cross_attn_layers\.(\d+)\.ffn\.1\.weight": r"layers.\1.ffn.fc1.weight",
    r"cross_attn_layers\.(\d+)\.ffn\.3\.weight": r"layers.\1.ffn.fc2.weight",
    r"output_mapping\.0\.(weight|bias)": r"output_head.fc1.\1",
    r"output_mapping\.2\.(weight|bias)": r"output_head.fc2.\1",
    r"output_norm\.(weight|bias)": r"output_head.norm.\1",
}
_LORA_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip
_OFFICIAL_LORA = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.([a-z_]+\.[a-z_]+)\.lora_([AB])\.weight$")
_OURS_LORA = "base_model.model.model.language_model.layers.{}.{}.lora_{}.weight"
# sizes read from the checkpoint: PavePatchConfig field -> (our key, axis, official key)
_SIZES = {"side_channel_dim": ("side_proj.weight", 1, "input_mapping.weight"),
          "query_dim": ("query_proj.weight", 1, "query_input_mapping.weight"),
          "output_dim": ("output_head.fc2.weight", 0, "output_mapping.2.weight"),
          "hidden_size": ("side_proj.weight", 0, "input_mapping.weight"),
          "ffn_size": ("layers.0.ffn.fc1.weight", 0, "cross_attn_layers.0.ffn.1.weight"),
          "output_mlp_size": ("output_head.fc1.weight", 0, "output_mapping.0.weight")}  # fmt: skip


def _suggest_name(name: str) -> str:
    """A patch name `load_patch` accepts, close to `name`: `avsd-0.5b` -> `avsd-0_5b`."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return name if PATCH_NAME.match(name) else f"patch_{name}"


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file, or a pickle read with `torch.load(weights_only=True)`; must be a dict of tensors."""
    if not path.is_file():
        raise ValueError(
            f"{path} not found: an official PAVE release holds `{OFFICIAL_PATCH_WEIGHTS}` + a PEFT adapter."
        )
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:  # never unpickle anything but tensors and plain containers
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path} is not a readable weights file ({exc}).") from exc
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...: all mean "refused"
        raise ValueError(
            f"{path} was refused by torch.load(weights_only=True) ({type(exc).__name__}: {exc}); only plain dicts of "
            "tensors are accepted, nothing else is unpickled."
        ) from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} must hold a dict of str -> tensor, got a {type(state).__name__}.")
    bad = [f"{k!r}: {type(v).__name__}" for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise ValueError(f"{path} must hold a dict of str -> tensor, got non-tensor entries {bad[:3]}.")
    return state


def _map_patch(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    ours, dropped, unknown = {}, [], []
    for key, tensor in state.items():
        local = _PREFIX.sub("", key) if _PREFIX.match(key) else None
        pattern = next((p for p in PATCH_KEY_MAP if local is not None and re.fullmatch(p, local)), None)
        if pattern is None:
            unknown.append(key)
        elif PATCH_KEY_MAP[pattern] is None:
            dropped.append(key)
        else:
            ours[re.sub(f"^{pattern}$", PATCH_KEY_MAP[pattern], local)] = tensor.detach().clone().contiguous()
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {sorted(unknown)[:5]} (expected `base_model.model.model.temporal_aggregator.<...>` "
            "of one PAVEModuleV5; a second patch `temporal_aggregator2` is not supported)."
        )
    return ours, sorted(dropped)


def _dim(weights: dict[str, torch.Tensor], key: str, axis: int, path: Path) -> int:
    if key not in weights or weights[key].ndim != 2:
        raise ValueError(f"{path}: missing or malformed weight for `{key}` (ours); the checkpoint is incomplete.")
    return int(weights[key].shape[axis])


def _check_arg(name: str, given, found, where: str) -> None:
    if given != found:
        raise ValueError(
            f"`{name}`={given!r} but the checkpoint has {found!r} ({where}); pass {name}={found!r} if this checkpoint "
            "is the one you meant, or import the checkpoint that matches your base model."
        )


def _map_lora(folder: Path, num_llm_layers: int | None) -> tuple[dict[str, torch.Tensor], LoraConfig, int]:
    """Official LoRA weights -> ours, and the adapter config with our target modules."""
    config_path = folder / ADAPTER_CONFIG_NAME
    if not config_path.is_file():
        raise ValueError(f"{config_path} not found: an official PAVE release holds a PEFT adapter beside the patch.")
    try:
        official = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON ({exc}).") from exc
    if not isinstance(official, dict) or official.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{config_path} must be a LoRA adapter config (peft_type LORA).")
    path = next((folder / n for n in (ADAPTER_WEIGHTS_NAME, "adapter_model.bin") if (folder / n).is_file()), None)
    state = _read_tensors(path or folder / ADAPTER_WEIGHTS_NAME)
    modules: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _OFFICIAL_LORA.match(key)
        if not match or match[2] not in _LORA_MODULES or tensor.ndim != 2:
            raise ValueError(f"{path}: unexpected LoRA key {key!r} (expected {_OFFICIAL_LORA.pattern}, 2-D).")
        modules.setdefault((int(match[1]), match[2]), {})[match[3]] = tensor.detach().clone().contiguous()
    rank = official.get("r", 8)
    for (layer, module), pair in sorted(modules.items()):
        a, b = pair.get("A"), pair.get("B")
        ranks = {a.shape[0], b.shape[1]} if a is not None and b is not None else set()
        if len(ranks) != 1 or (not official.get("rank_pattern") and ranks != {rank}):
            raise ValueError(
                f"{path}: layer {layer} {module}: lora_A {None if a is None else tuple(a.shape)} and lora_B "
                f"{None if b is None else tuple(b.shape)} are not a rank-{rank} pair (missing key or wrong shape)."
            )
    layers = sorted({layer for layer, _ in modules})
    if not modules:
        raise ValueError(f"{path} holds no LoRA tensors.")
    if num_llm_layers is not None and layers[-1] >= num_llm_layers:
        raise ValueError(f"{path}: LoRA on LLM layer {layers[-1]}, but config.json has {num_llm_layers} layers.")
    complete = set(modules) == {(i, m) for i in range(num_llm_layers or layers[-1] + 1) for m in _LORA_MODULES}
    targets = LORA_TARGET_MODULES if complete else [f"model.language_model.layers.{i}.{m}" for i, m in sorted(modules)]
    ours = {_OURS_LORA.format(i, m, x): t for (i, m), pair in modules.items() for x, t in pair.items()}
    renamed = {"rank_pattern", "alpha_pattern"}
    fields = {f.name for f in dataclasses.fields(LoraConfig)} - {"peft_type", "peft_version", "revision", "task_type",
              "base_model_name_or_path", "layers_to_transform", "layers_pattern", "inference_mode", "auto_mapping"}  # fmt: skip
    kwargs = {k: v for k, v in official.items() if k in fields}
    for name in renamed & set(kwargs):
        kwargs[name] = {re.sub(r"(^|\.)model\.layers\.", r"\1model.language_model.layers.", k): v
                        for k, v in (kwargs[name] or {}).items()}  # fmt: skip
    try:
        config = LoraConfig(**{**kwargs, "target_modules": targets})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{config_path} is not a usable LoRA config ({exc}).") from exc
    return ours, config, len(layers)


def _write_folder(out_dir: Path, write) -> None:
    """Write everything into a fresh sibling folder, then swap it in with renames (an old patch folder is replaced)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write(tmp)
        if out_dir.exists():
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old.exists():
                os.replace(old, out_dir)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def import_official_pave(
    official_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    side_channel: str,
    side_channel_dim: int,
    output_dim: int,
    num_layers: int = 2,
    side_channel_grid: list[int] | None = None,
    query_dim: int = 1152,
    num_attention_heads: int = 4,
    base_model_name_or_path: str | None = None,
    patch_name: str | None = None,
) -> Path:
    """Convert an official PAVE release folder into a patch folder at `out_dir` (written atomically); returns it.

    Sizes are read from the checkpoint and must agree with the arguments (which say what the caller expects);
    the official `v_linear` weights (never used upstream: values reuse `k_linear`) are dropped.
    """
    official_dir, out_dir = Path(official_dir), Path(out_dir)
    if side_channel == "3d":
        raise ValueError(
            "side_channel='3d': our 3D patches add a learned xyz position embedding that the official code does not "
            "have; import official 3D weights with side_channel='generic', side_channel_grid=[24, 24]."
        )
    patch = patch_name or out_dir.name  # not `name`: the size checks below loop over `name`
    if not isinstance(patch, str) or not PATCH_NAME.match(patch):
        default = " (the name of `out_dir`)" if patch_name is None else ""
        raise ValueError(
            f"`patch_name` must match {PATCH_NAME.pattern} (`load_patch` refuses other names), got {patch!r}{default}; "
            f"pass `patch_name` (`--patch-name`), e.g. {_suggest_name(str(patch))!r}."
        )
    occupied = out_dir.is_file() or out_dir.is_dir() and any(out_dir.iterdir())
    if occupied and not (out_dir / PATCH_CONFIG_NAME).is_file():
        raise ValueError(f"{out_dir} exists and is not a patch folder; pick an empty or new `out_dir`.")
    if not official_dir.is_dir():
        raise ValueError(f"{official_dir} is not a folder; pass the unzipped official release folder.")
    bin_path = official_dir / OFFICIAL_PATCH_WEIGHTS
    weights, dropped = _map_patch(_read_tensors(bin_path), bin_path)

    llm_config, llm_layers = official_dir / "config.json", None
    if llm_config.is_file():
        try:
            llm = json.loads(llm_config.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{llm_config} is not valid JSON ({exc}).") from exc
        if not isinstance(llm, dict):
            raise ValueError(f"{llm_config} must hold a JSON object, got {type(llm).__name__}.")
        if "hidden_size" in llm:
            _check_arg("output_dim", output_dim, llm["hidden_size"], f"`hidden_size` in {llm_config}")
        llm_layers = llm.get("num_hidden_layers") if isinstance(llm.get("num_hidden_layers"), int) else None
    found = {name: _dim(weights, key, axis, bin_path) for name, (key, axis, _) in _SIZES.items()}
    found["num_layers"] = 1 + max((int(k.split(".")[1]) for k in weights if k.startswith("layers.")), default=-1)
    given = dict(num_layers=num_layers, side_channel_dim=side_channel_dim, query_dim=query_dim, output_dim=output_dim)
    for name, value in given.items():
        where = _SIZES[name][2] if name in _SIZES else "cross_attn_layers.*"
        _check_arg(name, value, found[name], f"{where} in {bin_path}")
    config = PavePatchConfig.official(
        **found,
        side_channel=side_channel,
        side_channel_grid=None if side_channel_grid is None else list(side_channel_grid),
        num_attention_heads=num_attention_heads,
        base_model_type="llava_onevision",
        base_model_name_or_path=base_model_name_or_path,
        base_hidden_size=output_dim,
    )
    with torch.device("meta"):
        expected = PavePatch(config).state_dict()
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [f"{k}: {tuple(weights[k].shape)} != {tuple(expected[k].shape)}" for k in expected
             if k in weights and weights[k].shape != expected[k].shape]  # fmt: skip
    if missing or extra or wrong:
        raise ValueError(
            f"{bin_path}: missing {missing[:5]}, unexpected {extra[:5]}, wrong shapes {wrong[:5]} (ours)."
        )
    lora, lora_config, lora_layers = _map_lora(official_dir, llm_layers)
    lora_config.base_model_name_or_path = base_model_name_or_path
    card = patch_card(
        patch,
        config,
        fusion_parameters=sum(v.numel() for v in weights.values()),
        lora_parameters=sum(v.numel() for v in lora.values()),
    ) + _provenance(official_dir, dropped, lora_layers, lora_config.r)
    pointer = PavePatchRepoConfig(
        patch_name=patch, base_model_name_or_path=base_model_name_or_path, base_model_type="llava_onevision"
    )

    def write(tmp: Path) -> None:
        config.save(tmp)
        pointer.save_pretrained(tmp)
        save_file(weights, tmp / PATCH_WEIGHTS_NAME, metadata={"format": "pt"})
        lora_config.save_pretrained(str(tmp))
        save_file(lora, tmp / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / "README.md").write_text(card)

    _write_folder(out_dir, write)
    logger.info(
        f"Imported the official PAVE patch {official_dir} -> {out_dir}: {len(weights)} fusion tensors, "
        f"{len(lora)} LoRA tensors; dropped {len(dropped)} unused `v_linear` tensors."
    )
    return out_dir


def _provenance(official_dir: Path, dropped: list[str], lora_layers: int, rank: int) -> str:
    lines = "\n".join(f"  - `{k}`" for k in dropped) or "  - (none)"
    return (
        "\n## Imported from the official PAVE release\n\nConverted by `videoadapt.pave_import` from the release "
        f"folder `{official_dir.resolve().name}` (`{OFFICIAL_PATCH_WEIGHTS}` + PEFT adapter, LoRA rank {rank} on "
        f"{lora_layers} LLM layers, keys moved from `model.layers` to `model.language_model.layers`).\n\n"
        "- Official behaviour kept: values reuse the key projection, no attention output projection, no RoPE, "
        "queries from pooled pre-projector vision features.\n"
        "- The official PAVE code inserts a newline token after every row of every frame (`grid`), transformers' "
        "LLaVA-OneVision one per video: the LLM (and its LoRA) sees another token layout than in training.\n"
        f"- Dropped (never used by the official code, which computes values with `k_linear`):\n{lines}\n"
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m videoadapt.pave_import") -> int:
    """The command line (`videoadapt import-official-pave` passes its own `prog`); 0 on success, 1 on a refused
    checkpoint or argument (the message on stderr), 2 on a malformed command line (argparse)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("official_dir", help="unzipped official release (non_lora_trainables.bin + PEFT adapter)")
    parser.add_argument("out_dir", help="patch folder to write")
    parser.add_argument("--side-channel", required=True, choices=[k for k in SIDE_CHANNELS if k != "3d"],
                        help="official 3D weights: `generic` with --side-channel-grid 24 24")  # fmt: skip
    parser.add_argument("--side-channel-dim", required=True, type=positive_int, help="e.g. 1024 (ImageBind audio)")
    parser.add_argument(
        "--output-dim", required=True, type=positive_int, help="LLM hidden size: 896 (0.5B) or 3584 (7B)"
    )
    parser.add_argument("--num-layers", type=positive_int, default=2, help="3 for the Music-AVQA checkpoints")
    parser.add_argument("--side-channel-grid", type=positive_int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--query-dim", type=positive_int, default=1152)
    parser.add_argument("--num-attention-heads", type=positive_int, default=4)
    parser.add_argument(
        "--base-model",
        dest="base_model_name_or_path",
        metavar="BASE_MODEL",
        help="the transformers base, e.g. llava-hf/llava-onevision-qwen2-7b-ov-hf",
    )
    parser.add_argument("--patch-name", help="the patch's name (default: OUT_DIR's name); letters, digits, _ and -")
    args = vars(parser.parse_args(argv))
    logging.set_verbosity_info()
    try:
        import_official_pave(args.pop("official_dir"), args.pop("out_dir"), **args)
    except (ValueError, OSError) as exc:
        return report_error(prog, exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
