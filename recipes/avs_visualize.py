"""A contact sheet of uniform vs AVS frames for one video (the Compact supplement's Figures 1-2): PIL only.

Two blocks, uniform sampling on top and Compact's adaptive video sampler (AVS) below, each made of:
    thumbnails  the sampled frames in time order, `columns` per row, captioned with their time; the outline colour
                is the shot (as AVS detected it) the frame falls in, so repeated colours show frames spent twice
                on one shot;
    timeline    the whole video: the shots as alternating grey bands with a coloured top edge (the shot colour)
                and one dark tick per sampled frame at its time.

Shape legend: B frames per sampler, H x W frame pixels, S shots.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from videoadapt.processors.adaptive_sampling import AdaptiveSampler, AvsPlan
from videoadapt.processors.video_io import load_video, probe_video
from videoadapt.recipes.visualize_utils import Box, check_frames, fit_text, save_image


__all__ = [
    "AvsSheetLayout",
    "AvsVisualization",
    "avs_contact_sheet",
    "save_avs_contact_sheet",
    "shot_color",
    "visualize_avs",
]

LEFT, TOP, RIGHT, BOTTOM = 72, 30, 12, 22  # margins: row labels, title, -, legend
GAP, BORDER, CAPTION, TIMELINE, BLOCK_GAP, MIN_WIDTH = 8, 2, 14, 14, 14, 360
BAND = ((228, 228, 228), (200, 200, 200))  # timeline shot bands, alternating
TICK = (20, 20, 20)
SHOT_COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
               (240, 50, 230), (128, 128, 0), (0, 128, 128), (170, 110, 40))  # fmt: skip
LABELS = ("uniform", "AVS")


def shot_color(shot: int) -> tuple[int, int, int]:
    """The outline / timeline colour of shot `shot` (a cycle of 10 distinct colours)."""
    return SHOT_COLORS[shot % len(SHOT_COLORS)]


@dataclass(frozen=True)
class AvsSheetLayout:
    """Pixel positions in the sheet. Boxes are (x0, y0, x1, y1) with exclusive ends (numpy slicing order)."""

    num_frames: int  # per block
    columns: int
    thumb_size: tuple[int, int]  # (w, h)

    @classmethod
    def create(
        cls, num_frames: int, frame_size: tuple[int, int], thumb_width: int = 96, columns: int | None = None
    ) -> "AvsSheetLayout":
        """Thumbnails `thumb_width` wide with the frames' aspect; `columns` per row (default min(B, 8))."""
        width, height = frame_size
        columns = min(num_frames, 8) if columns is None else columns
        return cls(num_frames, columns, (thumb_width, max(1, round(thumb_width * height / width))))

    @property
    def rows(self) -> int:
        return math.ceil(self.num_frames / self.columns)

    @property
    def row_height(self) -> int:
        return self.thumb_size[1] + 2 * BORDER + CAPTION

    @property
    def block_height(self) -> int:
        return self.rows * self.row_height + TIMELINE + BLOCK_GAP

    @property
    def strip_width(self) -> int:
        return self.columns * (self.thumb_size[0] + GAP) - GAP

    @property
    def size(self) -> tuple[int, int]:
        return max(LEFT + self.strip_width + RIGHT, MIN_WIDTH), TOP + 2 * self.block_height + BOTTOM

    def thumb_box(self, block: int, k: int) -> Box:
        """Where frame `k` of block `block` (0 uniform, 1 AVS) is pasted (inside its outline)."""
        row, col = divmod(k, self.columns)
        x0 = LEFT + col * (self.thumb_size[0] + GAP)
        y0 = TOP + block * self.block_height + row * self.row_height + BORDER
        return x0, y0, x0 + self.thumb_size[0], y0 + self.thumb_size[1]

    def timeline_box(self, block: int) -> Box:
        y0 = TOP + block * self.block_height + self.rows * self.row_height
        return LEFT, y0, LEFT + self.strip_width, y0 + TIMELINE

    def time_x(self, block: int, seconds: float, duration: float) -> int:
        """The timeline column of `seconds` in a video of `duration` seconds."""
        x0, _, x1, _ = self.timeline_box(block)
        return x0 + min(int(seconds / duration * (x1 - x0)), x1 - x0 - 1)


def _shot_of(times: np.ndarray, shot_starts: np.ndarray) -> np.ndarray:
    return np.searchsorted(shot_starts, times, side="right") - 1


def avs_contact_sheet(
    uniform_frames: np.ndarray,
    uniform_times: np.ndarray,
    avs_frames: np.ndarray,
    avs_times: np.ndarray,
    duration: float,
    shot_starts: np.ndarray | None = None,
    title: str | None = None,
    thumb_width: int = 96,
    columns: int | None = None,
) -> Image.Image:
    """The sheet for already decoded frames.

    Args:
        uniform_frames, avs_frames: uint8 [B, H, W, 3] RGB, the same B and frame size.
        uniform_times, avs_times: [B] seconds of each frame.
        duration: seconds of the video (the timeline's length).
        shot_starts: [S] ascending start times (s) of the shots, the first 0; None = one shot.
        title: text after the heading (e.g. the question).
        thumb_width: thumbnail width in pixels; columns: thumbnails per row (default min(B, 8)).
    """
    blocks = [check_frames(uniform_frames), check_frames(avs_frames)]
    times = [np.asarray(uniform_times, dtype=np.float64), np.asarray(avs_times, dtype=np.float64)]
    if blocks[0].shape != blocks[1].shape:
        raise ValueError(
            f"`uniform_frames` and `avs_frames` must have the same shape (the same budget and video), got "
            f"{blocks[0].shape} and {blocks[1].shape}."
        )
    for name, t, frames in zip(("uniform_times", "avs_times"), times, blocks):
        if t.shape != (len(frames),):
            raise ValueError(f"`{name}` must be [B] = [{len(frames)}] seconds, got shape {t.shape}.")
    if not duration > 0:
        raise ValueError(f"`duration` must be > 0 seconds, got {duration!r}.")
    starts = np.zeros(1) if shot_starts is None else np.asarray(shot_starts, dtype=np.float64)
    if starts.ndim != 1 or starts.size == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0):
        raise ValueError(f"`shot_starts` must be ascending seconds starting at 0, got {starts.tolist()}.")
    budget, height, width = blocks[0].shape[:3]
    if isinstance(columns, bool) or columns is not None and not (isinstance(columns, int) and columns >= 1):
        raise ValueError(f"`columns` must be None or an int >= 1, got {columns!r}.")
    if isinstance(thumb_width, bool) or not isinstance(thumb_width, int) or thumb_width < 8:
        raise ValueError(f"`thumb_width` must be an int >= 8 pixels, got {thumb_width!r}.")
    layout = AvsSheetLayout.create(budget, (width, height), thumb_width, columns)
    image = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(image)
    for block, (frames, t) in enumerate(zip(blocks, times)):
        shots = _shot_of(t, starts)
        for k in range(budget):
            box = layout.thumb_box(block, k)
            thumb = Image.fromarray(frames[k]).resize(layout.thumb_size, Image.Resampling.BILINEAR)
            outline = (box[0] - BORDER, box[1] - BORDER, box[2] + BORDER - 1, box[3] + BORDER - 1)
            draw.rectangle(outline, outline=shot_color(int(shots[k])), width=BORDER)
            image.paste(thumb, box[:2])
            draw.text((box[0], box[3] + BORDER), f"{t[k]:.1f}s", fill="black")
        _draw_timeline(draw, layout, block, t, starts, duration)
        draw.text((8, layout.thumb_box(block, 0)[1]), LABELS[block], fill="black")
    heading = f"uniform vs AVS, {budget} frames each, {len(starts)} shot(s) detected"
    draw.text((8, 8), fit_text(heading if title is None else f"{heading}: {title}", layout.size[0] - 16), fill="black")
    legend = "outline / band top = shot; ticks = sampled times"
    draw.text((8, layout.size[1] - BOTTOM + 6), fit_text(legend, layout.size[0] - 16), fill="black")
    return image


def _draw_timeline(draw, layout: AvsSheetLayout, block: int, times, starts, duration: float) -> None:
    x0, y0, x1, y1 = layout.timeline_box(block)
    bounds = [*(layout.time_x(block, s, duration) for s in starts), x1]
    for shot, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        draw.rectangle((a, y0, max(a, b - 1), y1 - 1), fill=BAND[shot % 2])
        draw.rectangle((a, y0, max(a, b - 1), y0 + 1), fill=shot_color(shot))
    for t in times.tolist():
        x = layout.time_x(block, t, duration)
        draw.line((x, y0 + 3, x, y1 - 1), fill=TICK)


@dataclass(frozen=True)
class AvsVisualization:
    """The sheet and what it shows: the AVS plan and the uniform frames' indices and times."""

    image: Image.Image
    plan: AvsPlan
    uniform_indices: np.ndarray
    uniform_times: np.ndarray


def visualize_avs(
    video: str | os.PathLike,
    budget: int = 8,
    detector: Any = "content",
    title: str | None = None,
    thumb_width: int = 96,
    columns: int | None = None,
) -> AvsVisualization:
    """Sample `video` uniformly and with AVS (`budget` frames each, `detector`) and draw the contact sheet."""
    sampler = AdaptiveSampler(budget, detector=detector)
    index = probe_video(video)
    plan = sampler.plan(index)
    uniform, uniform_meta = load_video(video, num_frames=budget)
    avs, _ = load_video(video, sampler=lambda _: plan.frame_indices)
    shot_starts = index.frame_times[plan.shots[:, 0]]
    image = avs_contact_sheet(
        uniform,
        uniform_meta.timestamps,
        avs,
        plan.timestamps,
        index.duration,
        shot_starts,
        title,
        thumb_width,
        columns,
    )
    return AvsVisualization(image, plan, uniform_meta.frame_indices, uniform_meta.timestamps)


def save_avs_contact_sheet(video: str | os.PathLike, path: str | os.PathLike, **kwargs: Any) -> Path:
    """`visualize_avs(video, **kwargs)` written to `path` (PNG by suffix) atomically; returns `path`."""
    return save_image(visualize_avs(video, **kwargs).image, path)
