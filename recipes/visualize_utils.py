"""Shared pieces of the model pictures (REEF, DynFocus): input checks, patch grids, text fitting, atomic saving, and
running a model in eval mode for its features and a greedy answer. PIL and numpy only.

Shape legend: T frames, H x W frame pixels, P spatial tokens per frame (a rows x cols grid).
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from videoadapt.processors.atomic import atomic_write


__all__ = [
    "Box",
    "center",
    "check_frames",
    "check_max_new_tokens",
    "eval_mode",
    "fit_text",
    "greedy_answer",
    "grid_shape",
    "sample_array",
    "save_image",
]

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), exclusive ends (numpy slicing order)


def center(box: Box) -> tuple[int, int]:
    """The (x, y) pixel at the middle of a box."""
    return (box[0] + box[2] - 1) // 2, (box[1] + box[3] - 1) // 2


def check_frames(frames: Any) -> np.ndarray:
    """`frames` as a uint8 [T, H, W, 3] array with T >= 1; anything else raises ValueError."""
    array = np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        raise ValueError(
            f"`frames` must be uint8 [T, H, W, 3] RGB with T >= 1, got {array.dtype} {tuple(array.shape)}; "
            "pass the decoded video frames (e.g. from `load_video`)."
        )
    return array


def grid_shape(num_patches: int, grid: int | tuple[int, int] | None) -> tuple[int, int]:
    """(rows, cols) of `num_patches` tokens per frame: `grid` as given (one side or a pair), or a square."""
    if grid is None:
        side = round(num_patches**0.5)
        if side * side != num_patches:
            raise ValueError(
                f"{num_patches} spatial tokens per frame do not form a square grid; pass `patch_grid=(rows, cols)`."
            )
        return side, side
    rows, cols = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if rows * cols != num_patches:
        raise ValueError(
            f"`patch_grid` {(rows, cols)} has {rows * cols} cells but the features have {num_patches} spatial "
            "tokens per frame; pass rows and cols whose product is that count."
        )
    return rows, cols


def sample_array(tensor: torch.Tensor, sample: int) -> np.ndarray:
    """One sample of a batched tensor as numpy: float32 for floating tensors, int64 otherwise."""
    return tensor[sample].detach().to("cpu", torch.float32 if tensor.is_floating_point() else torch.long).numpy()


def fit_text(text: str, width: int) -> str:
    """`text` cut with "..." to about `width` pixels of PIL's default font (about 6 px per character)."""
    limit = max(8, width // 6)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write `image` to `path` atomically (format from the suffix), creating parent folders; a failed write leaves
    no partial file and any earlier file at `path` untouched. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, image.save)
    return path


def check_max_new_tokens(max_new_tokens: Any) -> int:
    """`max_new_tokens` as an int >= 0 (0 skips the answer); anything else raises ValueError."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"`max_new_tokens` must be an integer >= 0 (0 skips the answer), got {max_new_tokens!r}.")
    return max_new_tokens


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode inside the block; its train/eval mode is restored afterwards, even on errors."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def greedy_answer(model, tokenizer, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> str | None:
    """The model's greedy answer to `inputs` (decoded new tokens, stripped), or None when `max_new_tokens` is 0."""
    if max_new_tokens == 0:
        return None
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = generated[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()
