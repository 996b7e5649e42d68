"""Model cards (README.md) of videoadapt models and PAVE patches: valid Hub metadata plus a readable body.

Metadata: `library_name: videoadapt`, `license`, `tags` (videoadapt, the method, video-text-to-text, PAVE's side
channels), `pipeline_tag`, `base_model` (Hub ids only), `datasets`, a `model-index` of eval results, and a
`videoadapt` block (model type, recipe) that later saves read back. Body: the method and its paper, the base model,
the side channels, recipe and data, metrics, intended use and limitations, how to load, the license.

The facts come from the model (config, sizes, patches) and a `card_info` dict, every key optional:

    recipe        str, or {"file", "method", "setting", "stage", "manifests"}: how the model was trained
    datasets      list[str]: the training data's names
    metrics       {dataset: {metric: value, "split": str}}; a flat {metric: value} goes under the first dataset
    license       str (default apache-2.0)
    base_model    str: the checkpoint the model was built from (only a Hub id `owner/name` enters the metadata)
    intended_use  str: replaces the default intended-use paragraph
`None` means "not known"; an empty list or dict means "none".
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData


__all__ = [
    "CARD_INFO_KEYS",
    "DEFAULT_LICENSE",
    "PAVE_CLASSES",
    "check_card_info",
    "is_hub_id",
    "method_of_model_type",
    "model_card",
    "patch_card",
    "patch_card_info",
]

CARD_INFO_KEYS = ("recipe", "datasets", "metrics", "license", "base_model", "intended_use")
RECIPE_KEYS = ("file", "method", "setting", "stage", "manifests")
DEFAULT_LICENSE = "apache-2.0"
PIPELINE_TAG = "video-text-to-text"
# The patched base's family -> the PAVE class in videoadapt.modeling_pave (a PAVE checkpoint's own type works too);
# `videoadapt.pave_hub.pave_class_for` loads them, patch cards name them.
PAVE_CLASSES = {
    "llava_onevision": "PaveForConditionalGeneration",
    "videoadapt_pave": "PaveForConditionalGeneration",
    "llava_next_video": "PaveLlavaNextVideoForConditionalGeneration",
    "videoadapt_pave_llava_next_video": "PaveLlavaNextVideoForConditionalGeneration",
    "video_llava": "PaveVideoLlavaForConditionalGeneration",
    "videoadapt_pave_video_llava": "PaveVideoLlavaForConditionalGeneration",
}
# The Hub's license ids are lowercase (`apache-2.0`, `cc-by-nc-4.0`, `llama3.1`, `openrail++`, `other`); anything else
# is a "YAML Metadata Error" on the model page.
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_UNSET = "<this folder or repo>"


@dataclass(frozen=True)
class _Method:
    title: str
    paper: str
    summary: str
    settings: tuple[str, ...]  # the config fields a card lists
    limitation: str


_METHODS = {
    "pave": _Method(
        "PAVE", "PAVE: Patching and Adapting Video Large Language Models",
        "adds lightweight patches to a pre-trained video LLM: each fuses a side channel (audio, 3D, high-frame-rate "
        "video, other views) into the visual tokens by temporal-aligned cross-attention and a zero-initialised "
        "residual, with LoRA on the LLM; the LLM sees as many tokens as before.",
        (),  # the patch table says it all
        "Every enabled patch needs its side-channel features, from the same encoder (same width) as in training.",
    ),
    "reef": _Method(
        "REEF", "REEF: Relevance-Aware and Efficient LLM Adapter for Video Understanding (arXiv 2504.05491)",
        "reads a video online, frame by frame, through the InstructBLIP Q-Former with visual and query memory banks; "
        "relevance scorers keep the answer-relevant spatial tokens (differentiable top-K) and relevance-aware "
        "temporal compression merges the memory.",
        ("num_frames", "memory_bank_length", "num_selected_tokens", "alpha", "query_memory_bank"),
        "A video may not have more frames than `max_num_frames` (the learned temporal embedding).",
    ),
    "dynfocus": _Method(
        "DynFocus", "DynFocus: Dynamic Cooperative Network Empowers LLMs with Video Understanding (arXiv 2411.12355)",
        "groups frames into event prototypes by DPC-KNN, selects the answer-relevant events by a perturbed top-K, "
        "and gives the LLM fine tokens (Cones) for the key frames and 2 coarse tokens (Rods) for every frame.",
        ("num_events", "event_keep_ratio", "num_pooled_tokens", "spatial_clusters", "max_frames"),
        "The processor samples 1 fps and keeps at most `max_frames` frames.",
    ),
    "compact": _Method(
        "Compact", "Learning Compact Video Representations for Efficient Long-form Video Understanding in Large "
        "Multimodal Models (arXiv 2602.17869)",
        "samples frames adaptively (shot boundaries, NMS, a frame budget) and compresses the visual tokens along "
        "time, height and width with a spatiotemporal convolutional autoencoder before the LLM.",
        ("num_frames", "compressor_grid", "compression_factor", "compressor_num_blocks"),
        "The frame count must be a multiple of the compression factor.",
    ),
}  # fmt: skip


def method_of_model_type(model_type: str) -> str:
    """`videoadapt_pave_video_llava` -> `pave`."""
    rest = str(model_type).removeprefix("videoadapt_")
    match = [m for m in _METHODS if rest == m or rest.startswith(m + "_")]
    if not match:
        raise ValueError(f"`model_type` must be videoadapt_<{'|'.join(_METHODS)}>[_...], got {model_type!r}.")
    return match[0]


def is_hub_id(value: Any) -> bool:
    """Whether `value` looks like a Hub repository id `owner/name` (and is no existing local path)."""
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and ".." not in value and not os.path.exists(value)


# --------------------------------------------------------------------------------------------- card_info


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"card_info[{key!r}] must be a non-empty string, got {value!r}.")
    return value


def _texts(key: str, value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"card_info[{key!r}] must be a list of strings, got {value!r}; e.g. ['msvd_qa'].")
    return [_text(key, v) for v in value]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_recipe(value: Any) -> dict:
    recipe = {"file": value} if isinstance(value, str) else value
    if not isinstance(recipe, Mapping) or set(recipe) - set(RECIPE_KEYS):
        raise ValueError(
            f"card_info['recipe'] must be a string or a dict with keys among {list(RECIPE_KEYS)}, got {value!r}; "
            "e.g. {'file': 'reef/msvd_qa.yaml', 'method': 'reef', 'setting': 'msvd_qa'}."
        )
    out = {k: _text(f"recipe.{k}", v) for k, v in recipe.items() if k != "manifests" and v is not None}
    if recipe.get("manifests") is not None:
        out["manifests"] = _texts("recipe.manifests", recipe["manifests"])
    return out


def _check_metrics(value: Any, datasets: list[str] | None) -> dict[str, dict]:
    if isinstance(value, Mapping) and any(_is_number(v) for v in value.values()):
        value = {(datasets or ["evaluation"])[0]: value}  # flat {metric: value, "split": ...}
    out = {}
    for dataset, scores in value.items() if isinstance(value, Mapping) else [(None, None)]:
        if not isinstance(dataset, str) or not isinstance(scores, Mapping) or not all(
            _is_number(v) or k == "split" and isinstance(v, str) for k, v in scores.items()
        ):  # fmt: skip
            raise ValueError(
                f"card_info['metrics'] must map dataset names to {{metric: number}} (plus an optional 'split'), got "
                f"{value!r}; e.g. {{'msvd_qa': {{'accuracy': 0.52, 'split': 'test'}}}}."
            )
        out[dataset] = {k: v if k == "split" else float(v) for k, v in scores.items()}
    return out


def check_card_info(card_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a `card_info` dict and normalise it (recipe as a dict, metrics per dataset, no `None` values)."""
    if card_info is None:
        return {}
    if not isinstance(card_info, Mapping):
        raise TypeError(f"`card_info` must be a dict with keys among {list(CARD_INFO_KEYS)}, got {card_info!r}.")
    unknown = sorted(set(card_info) - set(CARD_INFO_KEYS))
    if unknown:
        raise ValueError(
            f"`card_info` keys must be among {list(CARD_INFO_KEYS)}, got unknown {unknown}; fix or drop them."
        )
    info = {k: v for k, v in card_info.items() if v is not None}
    for key in ("license", "base_model", "intended_use"):
        if key in info:
            _text(key, info[key])
    if "license" in info and not _LICENSE_ID.match(info["license"]):
        raise ValueError(
            f"card_info['license'] must be a Hub license id (lowercase, e.g. 'apache-2.0', 'mit', 'cc-by-nc-4.0', "
            f"or 'other'; see https://huggingface.co/docs/hub/repositories-licenses), got {info['license']!r}; try "
            f"{'-'.join(info['license'].lower().split())!r}."
        )
    if "recipe" in info:
        info["recipe"] = _check_recipe(info["recipe"])
    if "datasets" in info:
        info["datasets"] = _texts("datasets", info["datasets"])
    if "metrics" in info:
        info["metrics"] = _check_metrics(info["metrics"], info.get("datasets"))
    return info


def patch_card_info(card_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """`patch_card`'s recipe (the file), datasets, metrics, license and intended-use arguments from a model's
    `card_info` (a patch is shared alone: it carries the license and use its model declares)."""
    info = check_card_info(card_info)
    recipe = info.get("recipe", {}).get("file")
    keys = ("datasets", "metrics", "license", "intended_use")
    return {"recipe": recipe, **{key: info.get(key) for key in keys}}


# --------------------------------------------------------------------------------------------- rendering


def _metadata(method: str, info: dict, tags: list[str], name: str, block: dict, **extra: Any) -> str:
    base = info.get("base_model")
    results = [
        EvalResult(task_type=PIPELINE_TAG, dataset_type=dataset, dataset_name=dataset,
                   dataset_split=scores.get("split"), metric_type=metric, metric_name=metric, metric_value=value)
        for dataset, scores in (info.get("metrics") or {}).items()
        for metric, value in scores.items()
        if metric != "split"
    ]  # fmt: skip
    data = ModelCardData(
        library_name="videoadapt",
        license=info.get("license", DEFAULT_LICENSE),
        tags=list(dict.fromkeys(["videoadapt", method, PIPELINE_TAG, *tags])),
        pipeline_tag=PIPELINE_TAG,
        base_model=base if is_hub_id(base) else None,
        datasets=info.get("datasets") or None,
        model_name=name if results else None,
        eval_results=results or None,
        videoadapt={k: v for k, v in block.items() if v is not None},
        **extra,
    )
    return f"---\n{data.to_yaml()}\n---\n\n"


def _recipe_text(recipe: dict) -> str:
    details = ", ".join(f"{k} `{recipe[k]}`" for k in ("method", "setting", "stage") if recipe.get(k))
    return (f"`{recipe['file']}`" if recipe.get("file") else "a videoadapt recipe") + (f" ({details})" * bool(details))


def _base_text(base: str | None, family: str) -> str:
    if is_hub_id(base):
        return f"[`{base}`](https://huggingface.co/{base}) (a `{family}` checkpoint)"
    if base:  # a local folder: its name only, never the path
        return f"a local `{family}` checkpoint (`{Path(base).name}`), not on the Hub"
    return f"a `{family}` checkpoint (not recorded)"


def _sections(method: _Method, info: dict, snippet: str) -> list[str]:
    """Training, evaluation, intended use, how to load and license (the model and the patch cards share them)."""
    recipe, datasets, metrics = info.get("recipe"), info.get("datasets"), info.get("metrics") or {}
    lines = [f"- Recipe: {_recipe_text(recipe)}"] if recipe else []
    if recipe and recipe.get("manifests"):
        lines.append("- Data manifests: " + ", ".join(f"`{m}`" for m in recipe["manifests"]))
    if datasets is not None:
        lines.append("- Datasets: " + (", ".join(f"`{d}`" for d in datasets) or "none"))
    rows = [
        f"| {dataset} | {scores.get('split', '-')} | {metric} | {value:.4g} |"
        for dataset, scores in metrics.items()
        for metric, value in scores.items()
        if metric != "split"
    ]
    table = "| dataset | split | metric | value |\n|---|---|---|---|\n" + "\n".join(rows)
    use = (
        f"Research on video understanding (question answering, captioning, classification) with {method.title}. "
        f"{method.limitation} The model inherits the biases and failure modes of its base model and training data, "
        "was evaluated only on the data listed above, and must not be used to make decisions about people."
    )
    license_name = info.get("license", DEFAULT_LICENSE)
    return [
        "## Training\n\n" + ("\n".join(lines) or "Not recorded: no recipe or training data were given.") + "\n",
        "## Evaluation\n\n" + (table if rows else "No results recorded yet (`videoadapt eval ... card=true`).") + "\n",
        f"## Intended use and limitations\n\n{info.get('intended_use', use)}\n",
        "## How to load\n\n```python\nimport videoadapt  # registers the videoadapt types with transformers\n"
        f"{snippet}```\n",
        f"## License\n\n`{license_name}`. The base model's own license and terms also apply to its weights.\n",
    ]


_PATCH_HEADER = "| patch | side channel | features | cross-attention | RoPE | queries | fusion params | LoRA params |"


def _patch_row(name: str, config: Any, fusion: int, lora: int, *enabled: str) -> str:
    grid = "x".join(str(s) for s in config.side_channel_grid)
    cells = [f"`{name}`", config.side_channel, f"{config.side_channel_dim}-d, {grid} per step",
             f"{config.num_layers} x {config.hidden_size} wide, {config.num_attention_heads} heads", config.rope,
             config.query_source, f"{fusion:,}", f"{lora:,}", *enabled]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _pave_patches(model: Any) -> list[tuple[str, Any, int, int, bool]]:
    """(name, config, fusion parameters, LoRA parameters, enabled) of every patch of a PAVE model."""
    named = list(model.named_parameters())
    return [
        (name, patch.config, sum(p.numel() for p in patch.parameters()),
         sum(p.numel() for n, p in named if f".{name}." in n and ".lora_" in n), name in model.active_patches)
        for name, patch in model._patch_host.patches.items()
    ]  # fmt: skip


def _patches_section(patches: list) -> str:
    if not patches:
        return "## Side channels\n\nNo PAVE patch loaded: the plain base model (add one with `add_patch`).\n"
    rows = [
        _patch_row(name, config, fusion, lora, "yes" if on else "no") for name, config, fusion, lora, on in patches
    ]
    return (f"## Side channels (PAVE patches)\n\n{_PATCH_HEADER} enabled |\n{'|---' * 9}|\n" + "\n".join(rows)
            + "\n\nEach patch is also saved alone under `patches/<name>/`.\n")  # fmt: skip


def _base_family(config: Any) -> str:
    base = [getattr(k, "model_type", "") for k in type(config).__mro__[1:] if k.__module__.startswith("transformers.")]
    return next((t for t in base if t), config.model_type)


def _parts(config: Any) -> str:
    """`vision siglip_vision_model (hidden_size 32, ...); text qwen2 (...)` from the sub-configs."""
    parts = []
    for name in ("vision", "qformer", "text"):
        sub = getattr(config, f"{name}_config", None)
        keys = ("hidden_size", "num_hidden_layers", "vocab_size")
        sizes = ", ".join(f"{k} {getattr(sub, k)}" for k in keys if hasattr(sub, k))
        parts += [f"{name} `{sub.model_type}` ({sizes})"] if sub is not None else []
    return "; ".join(parts)


def model_card(
    model: Any,
    card_info: Mapping[str, Any] | None = None,
    *,
    tags: list[str] | None = None,
    repo_id: str | None = None,
) -> str:
    """README.md text of a videoadapt model (any registered class), from its config, sizes, PAVE patches and
    `card_info` (see the module docstring); `repo_id` names the repository in the title and the snippet."""
    info, config = check_card_info(card_info), model.config
    name = method_of_model_type(config.model_type)
    method, family = _METHODS[name], _base_family(config)
    patches = _pave_patches(model) if name == "pave" else []
    setting = info.get("recipe", {}).get("setting")
    title = repo_id or f"videoadapt-{name}" + f"-{setting}" * bool(setting)
    settings = ", ".join(
        f"`{k}`={getattr(config, k)}" for k in method.settings if getattr(config, k, None) is not None
    )
    auto = "AutoModelForImageTextToText" if "ForConditionalGeneration" in type(model).__name__ else "AutoModel"
    where = repo_id or _UNSET
    snippet = (
        f'from transformers import AutoProcessor, {auto}\n\nmodel = {auto}.from_pretrained("{where}")\n'
        f'processor = AutoProcessor.from_pretrained("{where}")\n'
        + "# each enabled patch reads side_channels={name: {'features': ...}} in forward / generate\n"
        * bool(patches)
    )
    body = [
        f"# {title}\n\n{method.title} {method.summary} Paper: *{method.paper}*.\n",
        f"## Model\n\n- Method: {method.title} (`{config.model_type}`, `{type(model).__name__}`)\n"
        f"- Base model: {_base_text(info.get('base_model'), family)}\n- Parts: {_parts(config)}\n"
        f"- Parameters: {sum(p.numel() for p in model.parameters()):,}\n"
        + f"- Settings: {settings}\n" * bool(settings),
        *([_patches_section(patches)] if name == "pave" else []),
        *_sections(method, info, snippet),
    ]  # fmt: skip
    block = {"model_type": config.model_type, "recipe": info.get("recipe"), "intended_use": info.get("intended_use")}
    tags = [*(p[1].side_channel for p in patches), *(tags or [])]
    return _metadata(name, info, tags, title, block) + "\n".join(body)


def patch_card(
    name: str,
    config: Any,
    *,
    fusion_parameters: int,
    lora_parameters: int,
    recipe: str | None = None,
    datasets: list[str] | None = None,
    metrics: dict | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    intended_use: str | None = None,
) -> str:
    """README.md text of a PAVE patch folder: patch `name` (its `PavePatchConfig` and parameter counts), how it was
    trained and scored, its license (default apache-2.0) and intended use, and how to load it in one line or onto a
    loaded base."""
    info = check_card_info(
        {"recipe": recipe, "datasets": datasets, "metrics": metrics, "license": license, "intended_use": intended_use}
    )
    base, family, method = config.base_model_name_or_path, config.base_model_type or "video LLM", _METHODS["pave"]
    info.update({"base_model": base} if base else {})
    where, base_id = repo_id or _UNSET, base if is_hub_id(base) else "<base model>"
    # a base checkpoint loads as its transformers class through the Auto classes: the PAVE class has `load_patch`
    pave_class = PAVE_CLASSES.get(config.base_model_type, PAVE_CLASSES["llava_onevision"])
    snippet = (
        "from transformers import AutoModelForImageTextToText\n\n# one line: the base model with this patch enabled\n"
        f'model = AutoModelForImageTextToText.from_pretrained("{where}")\n\n'
        "# or onto a base already loaded with its PAVE class (several patches can be enabled together)\n"
        f"from videoadapt.modeling_pave import {pave_class}\n\n"
        f'model = {pave_class}.from_pretrained("{base_id}")\n'
        f'model.load_patch("{where}", name="{name}")\n'
    )
    body = [
        f"# PAVE patch `{name}`\n\nA PAVE patch that adds the `{config.side_channel}` side channel to a `{family}` "
        f"video LLM (hidden size {config.output_dim}). PAVE {method.summary} Paper: *{method.paper}*.\n",
        f"## Patch\n\n- Base model: {_base_text(base, family)}\n\n{_PATCH_HEADER}\n{'|---' * 8}|\n"
        + _patch_row(name, config, fusion_parameters, lora_parameters) + "\n",
        *_sections(method, info, snippet),
    ]  # fmt: skip
    block = {"patch": name, "side_channel": config.side_channel, "recipe": info.get("recipe")}
    relation = {"base_model_relation": "adapter"} if is_hub_id(base) else {}
    return _metadata("pave", info, [config.side_channel], repo_id or f"pave-patch-{name}", block, **relation) + (
        "\n".join(body)
    )
