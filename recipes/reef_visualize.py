"""A picture of what REEF kept and merged for one video: PIL only.

Three rows, one column per frame (step t):
    frames     the frame with the spatial tokens STF kept outlined and the dropped ones dimmed;
    relevance  the STF scorer's min-max normalised relevance of every spatial token, as a heat map;
    merges     a small grid (slot down, step across): the visual-bank slot that absorbed its right neighbour after
               step t (RTC); with per-position merges the colour is the share of positions that merged that slot.
The patch grid covers the whole frame, as the BLIP image processor resizes (never crops) frames to the vision tower's
square input.

Shape legend: T frames, H x W frame pixels, P spatial tokens per frame (a rows x cols grid, CLS excluded),
K kept tokens per frame, S memory slots drawn.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers.utils import logging

from videoadapt.modeling_reef import ReefVideoFeaturesOutput
from videoadapt.processors.video_io import load_video
from videoadapt.recipes.visualize_utils import (
    center,
    check_frames,
    check_max_new_tokens,
    eval_mode,
    fit_text,
    greedy_answer,
    grid_shape,
    sample_array,
    save_image,
)


__all__ = [
    "ReefPictureLayout",
    "ReefVisualization",
    "center",
    "heat_color",
    "merge_color",
    "reef_picture",
    "save_reef_picture",
    "visualize_reef",
]

logger = logging.get_logger(__name__)

LEFT, TOP, RIGHT, BOTTOM = 96, 44, 12, 40  # margins: row labels, title + column labels, -, legend
GAP, ROW_GAP, SLOT_HEIGHT, MIN_WIDTH = 6, 22, 10, 480
DIM = 0.3  # dropped tokens keep this share of their brightness
KEPT_OUTLINE = (46, 230, 120)
NO_MERGE = (236, 236, 236)
MERGE_LOW, MERGE_HIGH = np.array([255.0, 214.0, 196.0]), np.array([190.0, 20.0, 20.0])
# relevance ramp, dark (0) to bright (1), interpolated linearly
_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def heat_color(value: float) -> tuple[int, int, int]:
    """The relevance ramp's RGB colour for `value` in [0, 1] (clipped)."""
    x = float(np.clip(value, 0.0, 1.0)) * (len(_HEAT) - 1)
    i = min(int(x), len(_HEAT) - 2)
    return tuple(int(round(c)) for c in _HEAT[i] * (1 - (x - i)) + _HEAT[i + 1] * (x - i))


def merge_color(share: float) -> tuple[int, int, int]:
    """Grey where no position merged the slot, else light to dark red with the share of positions in (0, 1]."""
    if share <= 0:
        return NO_MERGE
    return tuple(int(round(c)) for c in MERGE_LOW * (1 - share) + MERGE_HIGH * share)


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ReefPictureLayout:
    """Pixel positions in the picture. Boxes are (x0, y0, x1, y1) with exclusive ends (numpy slicing order)."""

    num_frames: int
    grid: tuple[int, int]  # patch rows, patch cols
    num_slots: int
    cell: int  # pixels per patch cell side

    @classmethod
    def create(cls, num_frames: int, grid: tuple[int, int], num_slots: int, thumb: int = 96) -> "ReefPictureLayout":
        """Thumbnails about `thumb` pixels on their long side, rounded down to whole patch cells (>= 3 px each)."""
        return cls(num_frames, grid, num_slots, max(3, thumb // max(grid)))

    @property
    def thumb_size(self) -> tuple[int, int]:
        return self.cell * self.grid[1], self.cell * self.grid[0]  # (w, h)

    @property
    def size(self) -> tuple[int, int]:
        w, h = self.thumb_size
        width = LEFT + self.num_frames * w + (self.num_frames - 1) * GAP + RIGHT
        height = TOP + 2 * h + 2 * ROW_GAP + self.num_slots * SLOT_HEIGHT + BOTTOM
        return max(width, MIN_WIDTH), height

    def _column(self, t: int) -> int:
        return LEFT + t * (self.thumb_size[0] + GAP)

    def frame_box(self, t: int) -> tuple[int, int, int, int]:
        w, h = self.thumb_size
        return self._column(t), TOP, self._column(t) + w, TOP + h

    def relevance_box(self, t: int) -> tuple[int, int, int, int]:
        w, h = self.thumb_size
        y0 = TOP + h + ROW_GAP
        return self._column(t), y0, self._column(t) + w, y0 + h

    def patch_box(self, box: tuple[int, int, int, int], index: int) -> tuple[int, int, int, int]:
        """The cell of spatial token `index` (row-major on the patch grid) inside a frame or relevance box."""
        row, col = divmod(index, self.grid[1])
        x0, y0 = box[0] + col * self.cell, box[1] + row * self.cell
        return x0, y0, x0 + self.cell, y0 + self.cell

    def merge_box(self, step: int, slot: int) -> tuple[int, int, int, int]:
        """The merge strip's cell for `step` (column) and memory `slot` (row); its last pixel row is a gap."""
        w, h = self.thumb_size
        y0 = TOP + 2 * h + 2 * ROW_GAP + slot * SLOT_HEIGHT
        return self._column(step), y0, self._column(step) + w, y0 + SLOT_HEIGHT


# --------------------------------------------------------------------------------------------- inputs


def _sample_maps(features: ReefVideoFeaturesOutput, sample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """relevance [T, P] float, kept [T, P] bool, merged slots [T, K or 1] int for one sample of the batch."""
    if features.spatial_relevance is None:
        raise ValueError("`features.spatial_relevance` is None; pass the output of REEF's `get_video_features`.")
    batch = features.spatial_relevance.shape[0]
    if not 0 <= sample < batch:
        raise ValueError(f"`sample` must be in [0, {batch - 1}] (the batch size is {batch}), got {sample}.")
    relevance = sample_array(features.spatial_relevance, sample)  # [T, P]
    frames, patches = relevance.shape
    kept = np.ones((frames, patches), dtype=bool)  # no filtering: every token is kept
    if features.selected_indices is not None:
        indices = sample_array(features.selected_indices, sample)  # [T, K]
        if indices.ndim != 2 or indices.shape[0] != frames or not ((indices >= 0) & (indices < patches)).all():
            raise ValueError(
                f"`features.selected_indices[{sample}]` must be [T = {frames}, K] patch indices in [0, {patches}), "
                f"got shape {indices.shape} with values {np.unique(indices)[:8].tolist()}..."
            )
        kept[:] = False
        np.put_along_axis(kept, indices, True, axis=1)
    merges = np.full((frames, 1), -1, dtype=np.int64)
    if features.merged_slots is not None:
        merges = sample_array(features.merged_slots, sample).reshape(frames, -1)  # [T] -> [T, 1]; [T, K] stays
    return relevance, kept, merges


def _merge_shares(merges: np.ndarray, num_slots: int | None) -> np.ndarray:
    """[T, S]: the share of positions whose merge at step t kept slot s (-1 = no merge)."""
    slots = max(1, int(merges.max()) + 1) if num_slots is None else num_slots
    if slots < 1 or merges.max() >= slots or merges.min() < -1:
        raise ValueError(
            f"`merged_slots` must hold -1 or slots in [0, {slots - 1}] (`num_slots` = {slots}), got values in "
            f"[{merges.min()}, {merges.max()}]; raise `num_slots` (the memory bank length)."
        )
    return (merges[:, None, :] == np.arange(slots)[None, :, None]).mean(axis=2)


# --------------------------------------------------------------------------------------------- drawing


def _thumbnail(frame: np.ndarray, kept: np.ndarray, layout: ReefPictureLayout) -> Image.Image:
    """The frame resized to the thumbnail, the pixels of dropped tokens dimmed to DIM of their brightness."""
    pixels = np.asarray(Image.fromarray(frame).resize(layout.thumb_size, Image.Resampling.BILINEAR), np.float64)
    mask = np.repeat(np.repeat(kept.reshape(layout.grid), layout.cell, 0), layout.cell, 1)  # [h, w]
    dimmed = np.where(mask[..., None], pixels, (pixels * DIM).round())
    return Image.fromarray(dimmed.astype(np.uint8))


def _draw_text(draw: ImageDraw.ImageDraw, layout: ReefPictureLayout, kept: np.ndarray, title: str | None) -> None:
    width, height = layout.size
    per_frame = kept.sum(1)
    heading = f"REEF: {int(per_frame.max())} of {kept.shape[1]} spatial tokens kept per frame"
    draw.text((8, 6), fit_text(heading if title is None else f"{heading}; {title}", width - 16), fill="black")
    for t in range(layout.num_frames):
        draw.text((layout.frame_box(t)[0], TOP - 14), f"t={t}", fill="black")
    rows = (
        ("frames", layout.frame_box(0)[1]),
        ("relevance", layout.relevance_box(0)[1]),
        ("merged slot", layout.merge_box(0, 0)[1]),
    )
    for label, y in rows:
        draw.text((8, y), label, fill="black")
    for slot in (0, layout.num_slots - 1) if layout.num_slots > 1 else (0,):
        draw.text((LEFT - 16, layout.merge_box(0, slot)[1] - 1), str(slot), fill="black")
    legends = (
        "frames: kept tokens outlined, dropped ones dimmed; relevance: dark 0 -> bright 1",
        "merged slot: red where the slot absorbed its right neighbour after step t",
    )
    for line, legend in enumerate(legends):
        draw.text((8, height - BOTTOM + 6 + 14 * line), fit_text(legend, width - 16), fill="black")


def reef_picture(
    frames: Any,
    features: ReefVideoFeaturesOutput,
    sample: int = 0,
    patch_grid: int | tuple[int, int] | None = None,
    *,
    num_slots: int | None = None,
    thumb: int = 96,
    title: str | None = None,
) -> Image.Image:
    """Draw REEF's kept tokens, relevance and memory merges for one video of a batch.

    Args:
        frames: uint8 [T, H, W, 3], the video's frames as sampled for the model.
        features: `ReefForConditionalGeneration.get_video_features` output (any batch size).
        sample: which video of the batch.
        patch_grid: (rows, cols) of the spatial tokens, or one side; default: square, sqrt(P).
        num_slots: rows of the merge strip (the memory bank length); default: the highest merged slot + 1.
        thumb: thumbnail size in pixels (rounded down to whole patch cells).
        title: text after the heading (e.g. the question and the answer).

    Returns:
        An RGB `PIL.Image` of `ReefPictureLayout.create(T, grid, S, thumb).size`.
    """
    frames = check_frames(frames)
    relevance, kept, merges = _sample_maps(features, sample)
    if frames.shape[0] != relevance.shape[0]:
        raise ValueError(
            f"`frames` has {frames.shape[0]} frames but the features have {relevance.shape[0]} steps; pass the "
            "frames the model read."
        )
    grid = grid_shape(relevance.shape[1], patch_grid)
    shares = _merge_shares(merges, num_slots)  # [T, S]
    layout = ReefPictureLayout.create(frames.shape[0], grid, shares.shape[1], thumb)
    image = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(image)
    for t in range(layout.num_frames):
        box = layout.frame_box(t)
        image.paste(_thumbnail(frames[t], kept[t], layout), box[:2])
        for index in np.flatnonzero(kept[t]) if not kept[t].all() else ():  # all kept: nothing to single out
            x0, y0, x1, y1 = layout.patch_box(box, int(index))
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=KEPT_OUTLINE)
        for index, value in enumerate(relevance[t]):
            x0, y0, x1, y1 = layout.patch_box(layout.relevance_box(t), index)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=heat_color(value))
        for slot, share in enumerate(shares[t]):
            x0, y0, x1, y1 = layout.merge_box(t, slot)
            draw.rectangle((x0, y0, x1 - 1, y1 - 2), fill=merge_color(float(share)))
    _draw_text(draw, layout, kept, title)
    return image


def save_reef_picture(frames: Any, features: ReefVideoFeaturesOutput, path: str | os.PathLike, **kwargs: Any) -> Path:
    """`reef_picture(frames, features, **kwargs)` written to `path` atomically (format from the suffix); a failed
    write leaves no partial file and any earlier file at `path` untouched. Returns `path`."""
    return save_image(reef_picture(frames, features, **kwargs), path)


# --------------------------------------------------------------------------------------------- end to end


@dataclass
class ReefVisualization:
    """What `visualize_reef` produced: the picture's path, the model's answer (or None) and the raw features."""

    path: Path
    answer: str | None
    features: ReefVideoFeaturesOutput


def _video_frames(video: Any, num_frames: int) -> np.ndarray:
    if isinstance(video, str | os.PathLike):
        return load_video(video, num_frames=num_frames)[0]
    return check_frames(video)


@torch.no_grad()
def visualize_reef(
    model,
    processor,
    video: Any,
    question: str,
    path: str | os.PathLike,
    *,
    num_frames: int | None = None,
    max_new_tokens: int = 20,
    thumb: int = 96,
) -> ReefVisualization:
    """Run a REEF model in eval mode on one video and save the picture of what it kept and merged.

    Args:
        model: a `ReefForConditionalGeneration`.
        processor: its `ReefProcessor`.
        video: a video path (sampled uniformly to `num_frames`, default the processor's) or uint8 [T, H, W, 3].
        question: the instruction/question (the processor applies its prompt template).
        path: where to write the picture (PNG, JPEG, ... from the suffix).
        num_frames: frames to sample from a path.
        max_new_tokens: answer length for the title; 0 skips generation.

    Returns:
        A `ReefVisualization`; the model's train/eval mode is restored afterwards.
    """
    check_max_new_tokens(max_new_tokens)
    if num_frames is not None and not isinstance(video, str | os.PathLike):
        raise ValueError("`num_frames` applies to a video path; pass exactly the frames to show as an array instead.")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise ValueError(f"`num_frames` must be an integer >= 1, got {num_frames!r}.")
    frames = _video_frames(video, num_frames or processor.num_frames)
    inputs = processor(question, videos=frames)
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with eval_mode(model):
        features = model.get_video_features(
            inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
        )
        answer = greedy_answer(model, processor.tokenizer, inputs, max_new_tokens)
    title = f"Q: {question}" + ("" if answer is None else f"  A: {answer}")
    saved = save_reef_picture(
        frames, features, path, num_slots=model.config.memory_bank_length, thumb=thumb, title=title
    )
    logger.info(f"Saved the REEF picture of {len(frames)} frames to {saved}.")
    return ReefVisualization(saved, answer, features)
