"""Frame preprocessing without torchvision: resize, center crop, rescale, normalize (PIL + numpy + torch).

Matches the PIL/numpy image processors of transformers (`SiglipImageProcessorPil`, `CLIPImageProcessorPil`,
`BlipImageProcessorPil`, `VideoLlavaImageProcessor`) for the settings of the supported base models.
"""

# Shape legend
#   T - frames of one video
#   H, W - frame height / width before preprocessing; H', W' - after resize and crop
#   C - channels (3, RGB)
#   input frames: uint8 [T, H, W, C] (as decoded by PyAV) or a list of [H, W, C] arrays / PIL images
#   output:       float32 [T, C, H', W'] (channels first, like transformers' `pixel_values`)

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from math import ceil
from typing import Any

import numpy as np
import PIL.Image
import torch


__all__ = ["FramePreprocessor"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
# PIL.Image.Resampling values
RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}

# Settings of the released checkpoints (preprocessor configs on the Hub), not the class defaults in transformers.
_CLIP = {"image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD}
_PRESETS: dict[str, dict[str, Any]] = {
    # SigLIP so400m/14 @ 384: plain 384x384 resize, no crop, mean/std 0.5
    "llava_onevision": {"size": {"height": 384, "width": 384}, "image_mean": SIGLIP_MEAN, "image_std": SIGLIP_STD},
    # CLIP ViT-L/14 @ 336: shortest edge 336, center crop 336
    "llava_next_video": {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}, **_CLIP},
    # CLIP ViT-L/14 @ 224 (LanguageBind video tower): shortest edge 224, center crop 224
    "video_llava": {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, **_CLIP},
    # BLIP-style square resize for EVA ViT-g @ 224, no crop
    "instructblip": {"size": {"height": 224, "width": 224}, **_CLIP},
    "instructblip_video": {"size": {"height": 224, "width": 224}, **_CLIP},
}
_ALIASES = {"instructblipvideo": "instructblip_video"}


def _plain_size(size: Any, default_to_square: bool = True) -> dict[str, int] | None:
    """Turns a transformers size (dict, `SizeDict`, int, None) into a plain dict without `None` values."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        return {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    try:
        return {k: v for k, v in dict(size).items() if v is not None}
    except (TypeError, ValueError):
        return size  # not dict-like: left to `_check_size` to reject with a clear message


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_size(name: str, size: Any, allow_shortest_edge: bool) -> dict[str, int]:
    forms = "{'height': int, 'width': int}" + (" or {'shortest_edge': int}" if allow_shortest_edge else "")
    if isinstance(size, Mapping):
        keys = set(size)
        ok_keys = keys == {"height", "width"} or (allow_shortest_edge and keys == {"shortest_edge"})
        if ok_keys and all(_is_int(v) and v > 0 for v in size.values()):
            return {k: int(v) for k, v in size.items()}
    example = "{'height': 384, 'width': 384}" + (" or {'shortest_edge': 336}" if allow_shortest_edge else "")
    raise ValueError(f"`{name}` must be {forms} with positive ints, got {size!r}. Pass e.g. {name}={example}.")


def _check_triple(name: str, value: Any, positive: bool) -> tuple[float, float, float]:
    values = [value] * 3 if _is_real(value) else value
    if isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 3:
        if all(_is_real(v) for v in values):
            if not positive or all(v > 0 for v in values):
                return tuple(float(v) for v in values)
    rule = "3 positive floats" if positive else "3 floats"
    raise ValueError(f"`{name}` must be a float or a sequence of {rule} (one per RGB channel), got {value!r}.")


@dataclasses.dataclass
class FramePreprocessor:
    """Settings and implementation of the per-frame pipeline resize -> center crop -> rescale -> normalize.

    Field names and semantics follow transformers' image processors. The defaults are LLaVA-OneVision's.

    Args:
        size: `{"height", "width"}` (exact resize) or `{"shortest_edge"}` (aspect-preserving; the long edge is
            `int(shortest_edge * long / short)`, i.e. truncated).
        crop_size: `{"height", "width"}` of the center crop; required when `do_center_crop`.
        resample: PIL resampling filter as int (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).
        do_resize / do_center_crop / do_rescale / do_normalize: switch each step on or off.
        rescale_factor: multiplier applied in float64 before casting to float32 (transformers' rounding).
        image_mean / image_std: per-channel normalisation in float32.
        do_convert_rgb: convert PIL inputs to RGB (alpha composited onto white). Arrays must already be RGB.
    """

    size: dict[str, int] = dataclasses.field(default_factory=lambda: {"height": 384, "width": 384})
    crop_size: dict[str, int] | None = None
    resample: int = 3
    do_resize: bool = True
    do_center_crop: bool = False
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = SIGLIP_MEAN
    image_std: tuple[float, float, float] = SIGLIP_STD
    do_convert_rgb: bool = True

    def __post_init__(self) -> None:
        for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
            setattr(self, name, bool(getattr(self, name)))
        self.size = _check_size("size", _plain_size(self.size), allow_shortest_edge=True)
        if self.crop_size is not None:
            self.crop_size = _check_size("crop_size", _plain_size(self.crop_size), allow_shortest_edge=False)
        elif self.do_center_crop:
            raise ValueError(
                "`crop_size` is None but `do_center_crop=True`. Pass crop_size={'height': h, 'width': w} "
                "or do_center_crop=False."
            )
        if not _is_int(self.resample) or self.resample not in RESAMPLE_NAMES:
            raise ValueError(
                f"`resample` must be a PIL resampling filter, one of {RESAMPLE_NAMES}, got {self.resample!r}. "
                "Pass e.g. resample=PIL.Image.Resampling.BICUBIC (3)."
            )
        self.resample = int(self.resample)
        if not _is_real(self.rescale_factor) or self.rescale_factor <= 0:
            raise ValueError(f"`rescale_factor` must be a positive float such as 1/255, got {self.rescale_factor!r}.")
        self.rescale_factor = float(self.rescale_factor)
        self.image_mean = _check_triple("image_mean", self.image_mean, positive=False)
        self.image_std = _check_triple("image_std", self.image_std, positive=True)

    # ------------------------------------------------------------------ constructors / serialisation

    @classmethod
    def for_model(cls, model: str) -> FramePreprocessor:
        """Settings of a base model's released checkpoints: one of `FramePreprocessor.presets()`."""
        key = _ALIASES.get(model, model)
        if key not in _PRESETS:
            raise ValueError(f"`model` must be one of {sorted(_PRESETS)}, got {model!r}.")
        preset = {k: dict(v) if isinstance(v, dict) else v for k, v in _PRESETS[key].items()}
        return cls(do_center_crop="crop_size" in preset, **preset)

    @staticmethod
    def presets() -> list[str]:
        """Names accepted by `for_model`."""
        return sorted(_PRESETS)

    @classmethod
    def from_image_processor(cls, image_processor: Any) -> FramePreprocessor:
        """Reads the settings off a transformers image (or video) processor instance."""
        missing = [n for n in ("size", "do_resize", "image_mean", "image_std") if not hasattr(image_processor, n)]
        if missing:
            raise TypeError(
                f"`image_processor` must be a transformers image/video processor, got {type(image_processor).__name__} "
                f"(no attribute {missing}). Pass e.g. `processor.image_processor`."
            )
        size = _plain_size(image_processor.size, bool(getattr(image_processor, "default_to_square", True)))
        resample = getattr(image_processor, "resample", None)
        mean, std = image_processor.image_mean, image_processor.image_std
        do_center_crop = bool(getattr(image_processor, "do_center_crop", False))
        return cls(
            size=size,
            crop_size=_plain_size(getattr(image_processor, "crop_size", None)) if do_center_crop else None,
            resample=2 if resample is None else resample,  # transformers' resize falls back to bilinear
            do_resize=bool(image_processor.do_resize),
            do_center_crop=do_center_crop,
            do_rescale=bool(getattr(image_processor, "do_rescale", True)),
            rescale_factor=getattr(image_processor, "rescale_factor", 1 / 255),
            do_normalize=bool(getattr(image_processor, "do_normalize", True)),
            image_mean=SIGLIP_MEAN if mean is None else mean,  # None only where normalisation is off
            image_std=SIGLIP_STD if std is None else std,
            do_convert_rgb=bool(getattr(image_processor, "do_convert_rgb", True)),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the settings."""
        out = dataclasses.asdict(self)
        out["image_mean"], out["image_std"] = list(self.image_mean), list(self.image_std)
        return out

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> FramePreprocessor:
        """Inverse of `to_dict`."""
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"Unknown FramePreprocessor keys {unknown}; allowed keys are {sorted(allowed)}.")
        return cls(**config)

    # ------------------------------------------------------------------ processing

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') of the output for an input frame of (height, width)."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        return self._resized_size(height, width) if self.do_resize else (height, width)

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        if "shortest_edge" not in self.size:
            return self.size["height"], self.size["width"]
        short, long = (width, height) if width <= height else (height, width)
        new_short = self.size["shortest_edge"]
        new_long = int(new_short * long / short)  # same float expression as transformers: truncation
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def _to_rgb_arrays(self, frames: Any) -> list[np.ndarray]:
        if isinstance(frames, np.ndarray):
            if frames.ndim != 4:
                raise ValueError(
                    f"`frames` array must have shape [T, H, W, 3], got shape {frames.shape}. "
                    "Add a frame axis with frames[None] for a single frame."
                )
            items: Sequence[Any] = list(frames)
        elif isinstance(frames, (list, tuple)):
            items = frames
        else:
            raise TypeError(
                f"`frames` must be a uint8 numpy array [T, H, W, 3] or a list of [H, W, 3] arrays / PIL images, "
                f"got {type(frames).__name__}."
            )
        if len(items) == 0:
            raise ValueError("`frames` is empty: need at least one frame.")
        arrays = []
        for i, frame in enumerate(items):
            if isinstance(frame, PIL.Image.Image):
                frame = self._pil_to_rgb(frame, i)
            elif not isinstance(frame, np.ndarray):
                raise TypeError(f"frame {i} must be a numpy array or PIL image, got {type(frame).__name__}.")
            if frame.dtype != np.uint8:
                raise TypeError(
                    f"frame {i} must have dtype uint8 (0-255 RGB as decoded by PyAV), got {frame.dtype}. "
                    "Convert with (x * 255).round().astype(np.uint8) if it is a float image in [0, 1]."
                )
            if frame.ndim != 3 or frame.shape[-1] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
                raise ValueError(
                    f"frame {i} must have shape [H, W, 3] (channels last, RGB), got {frame.shape}. "
                    "Decode frames as rgb24 or convert them to RGB first."
                )
            arrays.append(frame)
        return arrays

    def _pil_to_rgb(self, image: PIL.Image.Image, index: int) -> np.ndarray:
        if image.mode == "RGB":
            return np.asarray(image)
        if not self.do_convert_rgb:
            raise ValueError(f"frame {index} is a PIL image in mode {image.mode!r}; pass do_convert_rgb=True.")
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            # like transformers: composite transparency onto a white background
            white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
            return np.asarray(PIL.Image.alpha_composite(white, image.convert("RGBA")).convert("RGB"))
        return np.asarray(image.convert("RGB"))

    def _resize_and_crop(self, frame: np.ndarray) -> np.ndarray:
        if self.do_resize:
            height, width = self._resized_size(*frame.shape[:2])
            # uint8 -> PIL -> uint8, as transformers does for uint8 input (no float round trip)
            frame = np.asarray(PIL.Image.fromarray(frame).resize((width, height), resample=self.resample))
        if self.do_center_crop:
            frame = _center_crop(frame, self.crop_size["height"], self.crop_size["width"])
        return frame

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray | PIL.Image.Image]) -> torch.Tensor:
        """Preprocesses frames: uint8 [T, H, W, 3] (or a list of frames) -> float32 [T, 3, H', W']."""
        arrays = [self._resize_and_crop(f) for f in self._to_rgb_arrays(frames)]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"frames of different sizes give outputs of different sizes {sorted(shapes)}; use a fixed "
                "`size` ({'height', 'width'}) or `do_center_crop=True` to stack them."
            )
        video = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [T, C, H', W'] uint8
        if self.do_rescale:  # float64 multiply, then float32: transformers' rescale
            video = (video.to(torch.float64) * self.rescale_factor).to(torch.float32)
        else:
            video = video.to(torch.float32)
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32).view(1, 3, 1, 1)
            video = (video - mean) / std
        return video.contiguous()


def _center_crop(frame: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """Center crop of an [H, W, C] frame; zero-pads first when the frame is smaller (transformers' semantics).

    The crop starts at `(H - crop) // 2` (floor: odd differences drop the extra row/column at the bottom/right);
    padding puts `ceil((crop - H) / 2)` zeros on top/left.
    """
    height, width = frame.shape[:2]
    if height < crop_height or width < crop_width:
        new_h, new_w = max(height, crop_height), max(width, crop_width)
        top_pad, left_pad = ceil((new_h - height) / 2), ceil((new_w - width) / 2)
        padded = np.zeros((new_h, new_w, frame.shape[2]), dtype=frame.dtype)
        padded[top_pad : top_pad + height, left_pad : left_pad + width] = frame
        frame, height, width = padded, new_h, new_w
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return frame[top : top + crop_height, left : left + crop_width]
