"""A picture of DynFocus' events, key frames and spatial prototypes for one video: PIL only.

Top, a timeline (wrapped into rows of `columns` frames):
    frames   a thumbnail per sampled frame; the key frames (the centres of the events Dynamic Selection kept, which
             get the fine "Cones" tokens) outlined;
    events   under each thumbnail a bar in its T-DPC event's colour: full colour for the kept events, faded for the
             dropped ones; the event number under the first frame of each run of frames.
Below, as the appendix's Figure 3: one chosen frame (default: the first key frame) and the same frame with every patch
coloured by its finest S-DPC cluster, with lines between patches of different clusters.
The patch grid covers the whole frame, as the BLIP image processor resizes (never crops) frames to the vision tower's
square input.

Shape legend: B videos, T frames, H x W frame pixels, L events, K key frames, N patches per frame (a rows x cols
grid, CLS excluded).
"""

import colorsys
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers.utils import logging

from videoadapt.modeling_dynfocus import DynFocusVideoFeaturesOutput
from videoadapt.processors.video_io import load_video
from videoadapt.recipes.visualize_utils import (
    Box,
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
    "DynFocusPictureLayout",
    "DynFocusVisualization",
    "cluster_color",
    "dynfocus_picture",
    "event_color",
    "faded",
    "save_dynfocus_picture",
    "visualize_dynfocus",
]

logger = logging.get_logger(__name__)

LEFT, TOP, RIGHT, BOTTOM = 64, 48, 12, 40  # margins: row labels, title + column labels, -, legend
GAP, BAR_GAP, BAR, ROW_GAP = 6, 4, 12, 30  # between thumbnails; thumbnail to event bar; bar height; after a row
PANEL_HEAD, PANEL_GAP, MIN_WIDTH = 16, 16, 480
OUTLINE = 3  # key-frame outline width, drawn around the thumbnail (inside the gaps)
KEY_OUTLINE, BOUNDARY, UNASSIGNED = (0, 0, 0), (20, 20, 20), (200, 200, 200)
FADE, OVERLAY = 0.35, 0.6  # dropped events keep 35% of their colour; clusters cover 60% of the patch pixels
_GOLDEN = (math.sqrt(5) - 1) / 2  # hue step between consecutive ids: neighbours get distant hues


def _hue_color(index: int, offset: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((index * _GOLDEN + offset) % 1.0, saturation, value)
    return round(255 * r), round(255 * g), round(255 * b)


def event_color(event: int) -> tuple[int, int, int]:
    """The colour of T-DPC event `event` (grey for -1, a frame in no event)."""
    return UNASSIGNED if event < 0 else _hue_color(event, 0.0, 0.7, 0.9)


def cluster_color(cluster: int) -> tuple[int, int, int]:
    """The colour of S-DPC cluster `cluster` (grey for -1, a patch in no cluster)."""
    return UNASSIGNED if cluster < 0 else _hue_color(cluster, 0.3, 0.85, 0.95)


def faded(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """`color` mixed with white, keeping FADE of it: the bars of dropped events."""
    return tuple(round(FADE * c + (1 - FADE) * 255) for c in color)


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class DynFocusPictureLayout:
    """Pixel positions in the picture. Boxes are (x0, y0, x1, y1) with exclusive ends (numpy slicing order)."""

    num_frames: int
    columns: int  # frames per timeline row
    grid: tuple[int, int]  # patch rows, patch cols
    thumb_size: tuple[int, int]  # (w, h) of a timeline thumbnail
    cell: int  # pixels per patch cell side in the panels

    @classmethod
    def create(
        cls, num_frames: int, grid: tuple[int, int], columns: int | None = None, thumb: int = 64, panel: int = 192
    ) -> "DynFocusPictureLayout":
        """Thumbnails `thumb` pixels on their long side (the patch grid's aspect); panels about `panel` pixels on
        their long side, rounded down to whole patch cells (>= 3 px each). `columns` defaults to min(T, 16)."""
        columns = min(num_frames, 16) if columns is None else min(columns, num_frames)
        rows, cols = grid
        size = (max(1, thumb * cols // max(grid)), max(1, thumb * rows // max(grid)))
        return cls(num_frames, columns, grid, size, max(3, panel // max(grid)))

    @property
    def num_rows(self) -> int:
        """Timeline rows."""
        return -(-self.num_frames // self.columns)

    @property
    def _row_height(self) -> int:
        return self.thumb_size[1] + BAR_GAP + BAR + ROW_GAP

    @property
    def panel_size(self) -> tuple[int, int]:
        return self.cell * self.grid[1], self.cell * self.grid[0]  # (w, h)

    @property
    def _panel_top(self) -> int:
        return TOP + self.num_rows * self._row_height + PANEL_HEAD

    @property
    def size(self) -> tuple[int, int]:
        w, _ = self.thumb_size
        timeline = LEFT + self.columns * w + (self.columns - 1) * GAP + RIGHT
        panels = LEFT + 2 * self.panel_size[0] + PANEL_GAP + RIGHT
        return max(timeline, panels, MIN_WIDTH), self._panel_top + self.panel_size[1] + BOTTOM

    def frame_box(self, t: int) -> Box:
        """Frame `t`'s thumbnail."""
        row, col = divmod(t, self.columns)
        w, h = self.thumb_size
        x0, y0 = LEFT + col * (w + GAP), TOP + row * self._row_height
        return x0, y0, x0 + w, y0 + h

    def event_box(self, t: int) -> Box:
        """The event bar under frame `t`'s thumbnail."""
        x0, _, x1, y1 = self.frame_box(t)
        return x0, y1 + BAR_GAP, x1, y1 + BAR_GAP + BAR

    def frame_panel_box(self) -> Box:
        """The chosen frame, large."""
        w, h = self.panel_size
        return LEFT, self._panel_top, LEFT + w, self._panel_top + h

    def cluster_panel_box(self) -> Box:
        """The chosen frame with its patches coloured by S-DPC cluster."""
        w, h = self.panel_size
        x0 = LEFT + w + PANEL_GAP
        return x0, self._panel_top, x0 + w, self._panel_top + h

    def patch_box(self, box: Box, index: int) -> Box:
        """The cell of patch `index` (row-major on the patch grid) inside a panel box."""
        row, col = divmod(index, self.grid[1])
        x0, y0 = box[0] + col * self.cell, box[1] + row * self.cell
        return x0, y0, x0 + self.cell, y0 + self.cell


# --------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _SampleMaps:
    events: np.ndarray  # long [T], event of each frame (-1: none)
    kept: np.ndarray  # bool [T], the frame's event was kept
    key_frames: np.ndarray  # long [K]
    clusters: np.ndarray  # long [T, N], finest S-DPC cluster of each patch (-1: none)


def _sample_maps(features: DynFocusVideoFeaturesOutput, sample: int) -> _SampleMaps:
    """The maps of one video of the batch, checked against each other."""
    for name in ("event_assign", "key_frames", "spatial_assign"):
        if getattr(features, name) is None:
            raise ValueError(f"`features.{name}` is None; pass the output of DynFocus' `get_video_features`.")
    batch = features.event_assign.shape[0]
    if not 0 <= sample < batch:
        raise ValueError(f"`sample` must be in [0, {batch - 1}] (the batch size is {batch}), got {sample}.")
    events = sample_array(features.event_assign, sample)  # [T]
    keys = sample_array(features.key_frames, sample)  # [K]
    clusters = sample_array(features.spatial_assign, sample)  # [T, N]
    frames = len(events)
    if clusters.ndim != 2 or len(clusters) != frames:
        raise ValueError(
            f"`features.spatial_assign[{sample}]` must be [T = {frames}, N] (the event_assign frames), got shape "
            f"{clusters.shape}."
        )
    if keys.ndim != 1 or not ((keys >= 0) & (keys < frames)).all():
        raise ValueError(
            f"`features.key_frames[{sample}]` must be frame indices in [0, {frames}), got {keys.tolist()}."
        )
    kept = np.isin(events, events[keys]) & (events >= 0)  # a key frame is the centre of its kept event
    return _SampleMaps(events, kept, keys, clusters)


# --------------------------------------------------------------------------------------------- drawing


def _resized(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR), np.float64)


def _cluster_overlay(frame: np.ndarray, clusters: np.ndarray, layout: DynFocusPictureLayout) -> Image.Image:
    """The frame at panel size with each patch mixed with its cluster's colour, lines between different clusters."""
    pixels = _resized(frame, layout.panel_size)  # [h, w, 3]
    colors = np.array([cluster_color(int(c)) for c in clusters], np.float64).reshape(*layout.grid, 3)
    cover = np.repeat(np.repeat(colors, layout.cell, 0), layout.cell, 1)  # [h, w, 3]
    mixed = (OVERLAY * cover + (1 - OVERLAY) * pixels).round()
    cells = clusters.reshape(layout.grid)
    c = layout.cell
    for row, col in zip(*np.nonzero(cells[:, 1:] != cells[:, :-1])):  # vertical line: first column of the right cell
        mixed[row * c : (row + 1) * c, (col + 1) * c] = BOUNDARY
    for row, col in zip(*np.nonzero(cells[1:] != cells[:-1])):  # horizontal line: first row of the lower cell
        mixed[(row + 1) * c, col * c : (col + 1) * c] = BOUNDARY
    return Image.fromarray(mixed.astype(np.uint8))


def _draw_text(
    draw: ImageDraw.ImageDraw, layout: DynFocusPictureLayout, maps: _SampleMaps, frame: int, title: str | None
) -> None:
    width, height = layout.size
    num_events = len(np.unique(maps.events[maps.events >= 0]))
    kept = len(np.unique(maps.events[maps.kept]))
    heading = f"DynFocus: {kept} of {num_events} events kept, key frames t = {', '.join(map(str, maps.key_frames))}"
    draw.text((8, 6), fit_text(heading if title is None else f"{heading}; {title}", width - 16), fill="black")
    for t in range(layout.num_frames):
        x0, y0, _, _ = layout.frame_box(t)
        draw.text((x0, y0 - OUTLINE - 13), f"t={t}", fill="black")
        if t == 0 or maps.events[t] != maps.events[t - 1] or layout.frame_box(t)[0] == LEFT:
            draw.text((x0, layout.event_box(t)[3] + 2), f"e{maps.events[t]}", fill="black")
    for row in range(layout.num_rows):
        t = row * layout.columns
        draw.text((8, layout.frame_box(t)[1]), "frames", fill="black")
        draw.text((8, layout.event_box(t)[1]), "events", fill="black")
    patches = maps.clusters.shape[1]
    clusters = len(np.unique(maps.clusters[frame][maps.clusters[frame] >= 0]))
    is_key = "key frame" if frame in maps.key_frames else "not a key frame"
    panels = (
        (layout.frame_panel_box(), f"frame t={frame} ({is_key})"),
        (layout.cluster_panel_box(), f"S-DPC: {patches} patches -> {clusters} clusters"),
    )
    for box, label in panels:
        draw.text((box[0], box[1] - PANEL_HEAD + 2), fit_text(label, box[2] - box[0]), fill="black")
    legends = (
        "bars: T-DPC event colour, full = kept, faded = dropped; outline = key frame",
        "right: patches coloured by their finest S-DPC cluster (appendix Figure 3)",
    )
    for line, legend in enumerate(legends):
        draw.text((8, height - BOTTOM + 6 + 14 * line), fit_text(legend, width - 16), fill="black")


def dynfocus_picture(
    frames: Any,
    features: DynFocusVideoFeaturesOutput,
    sample: int = 0,
    frame: int | None = None,
    patch_grid: int | tuple[int, int] | None = None,
    *,
    columns: int | None = None,
    thumb: int = 64,
    panel: int = 192,
    title: str | None = None,
) -> Image.Image:
    """Draw DynFocus' events, kept events, key frames and one frame's S-DPC clusters for one video of a batch.

    Args:
        frames: uint8 [T, H, W, 3], the video's frames as sampled for the model.
        features: `DynFocusForConditionalGeneration.get_video_features` output (any batch size).
        sample: which video of the batch.
        frame: the frame of the S-DPC panels; default the first key frame.
        patch_grid: (rows, cols) of the patches, or one side; default: square, sqrt(N).
        columns: frames per timeline row; default min(T, 16).
        thumb: timeline thumbnail size in pixels (long side).
        panel: panel size in pixels (long side, rounded down to whole patch cells).
        title: text after the heading (e.g. the question and the answer).

    Returns:
        An RGB `PIL.Image` of `DynFocusPictureLayout.create(T, grid, columns, thumb, panel).size`.
    """
    frames = check_frames(frames)
    maps = _sample_maps(features, sample)
    if frames.shape[0] != len(maps.events):
        raise ValueError(
            f"`frames` has {frames.shape[0]} frames but the features have {len(maps.events)}; pass the frames the "
            "model read."
        )
    frame = int(maps.key_frames.min()) if frame is None else frame
    if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < len(frames):
        raise ValueError(f"`frame` must be a frame index in [0, {len(frames) - 1}], got {frame!r}.")
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise ValueError(f"`columns` must be an integer >= 1 (frames per timeline row), got {columns!r}.")
    grid = grid_shape(maps.clusters.shape[1], patch_grid)
    layout = DynFocusPictureLayout.create(len(frames), grid, columns, thumb, panel)
    image = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(image)
    for t in range(layout.num_frames):
        box = layout.frame_box(t)
        image.paste(Image.fromarray(_resized(frames[t], layout.thumb_size).astype(np.uint8)), box[:2])
        if t in maps.key_frames:
            draw.rectangle(
                (box[0] - OUTLINE, box[1] - OUTLINE, box[2] + OUTLINE - 1, box[3] + OUTLINE - 1),
                outline=KEY_OUTLINE,
                width=OUTLINE,
            )
        color = event_color(int(maps.events[t]))
        x0, y0, x1, y1 = layout.event_box(t)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=color if maps.kept[t] else faded(color))
    image.paste(
        Image.fromarray(_resized(frames[frame], layout.panel_size).astype(np.uint8)), layout.frame_panel_box()[:2]
    )
    image.paste(_cluster_overlay(frames[frame], maps.clusters[frame], layout), layout.cluster_panel_box()[:2])
    _draw_text(draw, layout, maps, frame, title)
    return image


def save_dynfocus_picture(
    frames: Any, features: DynFocusVideoFeaturesOutput, path: str | os.PathLike, **kwargs: Any
) -> Path:
    """`dynfocus_picture(frames, features, **kwargs)` written to `path` atomically (format from the suffix); a failed
    write leaves no partial file and any earlier file at `path` untouched. Returns `path`."""
    return save_image(dynfocus_picture(frames, features, **kwargs), path)


# --------------------------------------------------------------------------------------------- end to end


@dataclass
class DynFocusVisualization:
    """What `visualize_dynfocus` produced: the picture's path, the model's answer (or None), the raw features and
    the frame of the S-DPC panels."""

    path: Path
    answer: str | None
    features: DynFocusVideoFeaturesOutput
    frame: int


@torch.no_grad()
def visualize_dynfocus(
    model,
    processor,
    video: Any,
    question: str,
    path: str | os.PathLike,
    *,
    frame: int | None = None,
    max_new_tokens: int = 20,
    columns: int | None = None,
    thumb: int = 64,
) -> DynFocusVisualization:
    """Run a DynFocus model in eval mode on one video and save the picture of its events, key frames and clusters.

    Args:
        model: a `DynFocusForConditionalGeneration`.
        processor: its `DynFocusProcessor`.
        video: a video path (sampled by the processor: 1 fps by default, capped to its `max_frames`) or uint8
            [T, H, W, 3] frames (the first `max_frames` are used).
        question: the question; the prompt is "<video>\\n{question}", and the Q-Former reads the question.
        path: where to write the picture (PNG, JPEG, ... from the suffix).
        frame: the frame of the S-DPC panels; default the first key frame.
        max_new_tokens: answer length for the title; 0 skips generation.
        columns: frames per timeline row (default min(T, 16)).
        thumb: timeline thumbnail size in pixels.

    Returns:
        A `DynFocusVisualization`; the model's train/eval mode is restored afterwards.
    """
    check_max_new_tokens(max_new_tokens)
    if isinstance(video, str | os.PathLike):
        frames = load_video(video, processor.sampler)[0]
    else:
        frames = check_frames(video)[: processor.max_frames]
    prompt = f"{processor.tokenizer.video_token}\n{question}"
    inputs = processor(prompt, videos=frames, questions=question)
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with eval_mode(model):
        features = model.get_video_features(
            inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
        )
        answer = greedy_answer(model, processor.tokenizer, inputs, max_new_tokens)
    if frame is None:
        frame = int(features.key_frames[0].min())
    title = f"Q: {question}" + ("" if answer is None else f"  A: {answer}")
    saved = save_dynfocus_picture(frames, features, path, frame=frame, columns=columns, thumb=thumb, title=title)
    logger.info(f"Saved the DynFocus picture of {len(frames)} frames to {saved}.")
    return DynFocusVisualization(saved, answer, features, frame)
