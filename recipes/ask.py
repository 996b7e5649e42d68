"""`videoadapt ask`: one question about one video, answered by a saved videoadapt model or a PAVE patch.

    from videoadapt.recipes.ask import load_for_ask, prepare_inputs, answer

    loaded = load_for_ask("runs/msvd_qa/model")                  # any videoadapt model folder with its processor
    loaded = load_for_ask("patches/audio", base="llava-ov-7b/")  # a PAVE patch folder onto its base
    inputs = prepare_inputs(loaded, "clip.mp4", "what is the man doing?", {"audio": "clip_audio.safetensors"})
    text = answer(loaded, inputs, max_new_tokens=64, streamer=TextStreamer(loaded.processor.tokenizer, True))

The model type in the folder's `config.json` picks the class (the Auto classes) and the prompt format (the method's
own, as in training and evaluation); a folder with `patch_config.json` is a PAVE patch, loaded onto the base named in
it (or `base`) with `load_patch`.

Shape legend: L prompt tokens, G generated tokens.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from transformers.utils import logging

from videoadapt.configuration.configuration_pave import PATCH_CONFIG_NAME, PavePatchConfig
from videoadapt.pave_hub import pave_class_for
from videoadapt.recipes.training import METHODS, Method


__all__ = ["DEFAULT_NUM_FRAMES", "AskModel", "answer", "load_for_ask", "prepare_inputs"]

logger = logging.get_logger(__name__)

DEFAULT_NUM_FRAMES = 32  # frames of a PAVE base without a saved processor (LLaVA-OneVision's)
_METHOD_OF_MODEL_TYPE = {"videoadapt_reef": "reef", "videoadapt_dynfocus": "dynfocus", "videoadapt_compact": "compact"}


@dataclass
class AskModel:
    """A model ready to answer: the model (eval mode), its processor and its method (the prompt format)."""

    model: Any
    processor: Any
    method: Method
    source: str


class _BareQuestion:
    """What `Method.prompt` reads of a recipe, for a bare question: the question as the whole prompt."""

    prompt = "{question}"

    def format_prompt(self, question: str | None = None, options: list[str] | None = None) -> str:
        return question or ""


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def _method_of_model_type(model_type: str) -> Method:
    return METHODS["pave" if model_type.startswith("videoadapt_pave") else _METHOD_OF_MODEL_TYPE[model_type]]


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load_model_folder(folder: Path, model_type: str, device: str | None) -> AskModel:
    if not (folder / "processor_config.json").is_file():
        raise ValueError(
            f"{folder} holds a {model_type} model but no processor (processor_config.json); save the processor with "
            "the model (`processor.save_pretrained(folder)`, as `videoadapt train` does)."
        )
    model = AutoModelForImageTextToText.from_pretrained(folder).to(_device(device)).eval()
    return AskModel(model, AutoProcessor.from_pretrained(folder), _method_of_model_type(model_type), str(folder))


def _saved_pave_processor(base: str) -> bool:
    try:
        saved = json.loads((Path(base) / "processor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return saved.get("processor_class") == "PaveProcessor"


def _pave_processor(model: Any, base: str, num_frames: int | None) -> Any:
    """The base's saved PAVE processor, else one built from its tokenizer and image processor."""
    from videoadapt.processors.processing_pave import PaveProcessor

    if _saved_pave_processor(base):
        return PaveProcessor.from_pretrained(base)
    try:
        image_processor = AutoImageProcessor.from_pretrained(base)
    except (OSError, ValueError):  # none saved: the family's preset
        image_processor = None
    tokenizer = AutoTokenizer.from_pretrained(base)
    return PaveProcessor.from_model(model, tokenizer, image_processor, num_frames=num_frames or DEFAULT_NUM_FRAMES)


def _load_patch_folder(folder: Path, base: str | None, num_frames: int | None, device: str | None) -> AskModel:
    config = PavePatchConfig.load(folder)
    base = base or config.base_model_name_or_path
    if base is None:
        raise ValueError(f"the patch {folder} names no base model; pass `--base <base model folder>`.")
    family = config.base_model_type or _model_type(Path(base))
    model_class = pave_class_for(family, f"the patch {folder}")
    try:
        model = model_class.from_pretrained(base)
    except OSError as error:
        raise ValueError(
            f"cannot load the patch's base model {base!r} ({error}); offline, download it and pass `--base <folder>`."
        ) from None
    model.load_patch(folder, name=folder.name)
    model = model.to(_device(device)).eval()
    return AskModel(model, _pave_processor(model, base, num_frames), METHODS["pave"], str(folder))


def load_for_ask(
    path: str | os.PathLike, base: str | None = None, num_frames: int | None = None, device: str | None = None
) -> AskModel:
    """Load a saved videoadapt model folder (any model type, with its processor) or a PAVE patch folder.

    Args:
        path: a folder with a videoadapt `config.json` + processor, or a PAVE patch folder (`patch_config.json`).
        base: the base model folder of a patch (default: the base named in the patch config).
        num_frames: frames per video for a patch whose base has no saved processor (default `DEFAULT_NUM_FRAMES`).
        device: torch device (default cuda if available, else cpu).

    Raises:
        ValueError: `path` is neither, the base cannot be found, or the processor is missing.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(
            f"`model` must be a model folder or a PAVE patch folder, got {os.fspath(path)!r} (not found)."
        )
    if (folder / PATCH_CONFIG_NAME).is_file():
        return _load_patch_folder(folder, base, num_frames, device)
    model_type = _model_type(folder)
    if model_type is None:
        raise ValueError(
            f"{folder} is neither a model folder (config.json) nor a PAVE patch folder ({PATCH_CONFIG_NAME}); pass "
            "the `model` folder of a training run or a patch folder."
        )
    if not model_type.startswith("videoadapt_pave") and model_type not in _METHOD_OF_MODEL_TYPE:
        raise ValueError(
            f"{folder} holds a {model_type!r} model, not a videoadapt one; `ask` answers with trained videoadapt "
            "models (videoadapt_pave*, videoadapt_reef, videoadapt_dynfocus, videoadapt_compact) or PAVE patches."
        )
    return _load_model_folder(folder, model_type, device)


def _side_channel_inputs(model: Any, files: Mapping[str, str]) -> dict[str, str]:
    """{patch name or side-channel kind: file} -> {enabled patch name: file}; every enabled patch needs one."""
    host = getattr(model, "model", model)
    kinds = {name: host.patches[name].config.side_channel for name in getattr(model, "active_patches", [])}
    out = {}
    for key, file in files.items():
        names = [key] if key in kinds else [name for name, kind in kinds.items() if kind == key]
        if len(names) != 1:
            raise ValueError(
                f"`--side-channel {key}=...` names no single enabled patch; the model's patches (name: kind) are "
                f"{kinds or 'none'}. Use a patch name."
            )
        if not Path(file).is_file():
            raise ValueError(f"the side-channel features file {file!r} does not exist; extract it first.")
        out[names[0]] = str(file)
    missing = sorted(set(kinds) - set(out))
    if missing:
        raise ValueError(
            f"patch(es) {missing} need side-channel features: pass `--side-channel {missing[0]}=<features file>` "
            "(a `SideChannelFeatures.save` file; see `videoadapt.recipes.extract`)."
        )
    return out


def prepare_inputs(
    loaded: AskModel, video: str | os.PathLike, question: str, side_channels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The processor's inputs for one video and question, in the method's prompt format, on the model's device.

    `side_channels` maps an enabled PAVE patch's name (or its side-channel kind) to a saved features file.
    """
    if not Path(video).is_file():
        raise ValueError(f"`video` must be an existing video file, got {os.fspath(video)!r}.")
    if not question.strip():
        raise ValueError("`question` is empty; ask something about the video.")
    extra = {}
    if loaded.method.name == "pave":
        files = _side_channel_inputs(loaded.model, side_channels or {})
        extra = {"side_channels": [files]} if files else {}
    elif side_channels:
        raise ValueError(f"`--side-channel` is for PAVE models; {loaded.source} is a {loaded.method.name} model.")
    prompt = loaded.method.prompt(_BareQuestion(), loaded.processor, {"question": question})
    inputs = dict(loaded.processor([prompt], videos=[os.fspath(video)], **extra))
    parameter = next(loaded.model.parameters())

    def move(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: move(item) for key, item in value.items()}
        if not torch.is_tensor(value):
            return value
        return value.to(parameter.device, parameter.dtype) if value.is_floating_point() else value.to(parameter.device)

    return {key: move(value) for key, value in inputs.items()}


@torch.inference_mode()
def answer(
    loaded: AskModel, inputs: Mapping[str, Any], max_new_tokens: int = 64, num_beams: int = 1, streamer: Any = None
) -> str:
    """Deterministic decoding (greedy, or beam search with `num_beams` > 1, which cannot stream) of the new tokens.

    Returns the decoded new tokens (special tokens skipped); `streamer` (e.g. `TextStreamer(tokenizer,
    skip_prompt=True, skip_special_tokens=True)`) receives them as they come.
    """
    for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
    if streamer is not None and num_beams > 1:
        raise ValueError("beam search (`num_beams` > 1) cannot stream; pass no streamer and print the result.")
    tokenizer = loaded.processor.tokenizer
    out = loaded.model.generate(
        **inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, streamer=streamer,
    )  # [1, L + G]  # fmt: skip
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
