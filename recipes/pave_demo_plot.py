"""The PAVE demo's picture: a patch's temporal-aligned cross-attention for one example, as a PIL heat map.

Rows are the video's query frames, columns the side channel's time steps (audio clips); each cell is the attention
weight from that frame's tokens to that step's tokens, averaged over heads and query tokens. A frame only attends to
its own chunk of steps (the other cells are masked, drawn grey), so the map is block-diagonal. No matplotlib: PIL
draws the cells, labels and colour bar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw


__all__ = ["attention_heatmap", "capture_attention"]

# a perceptually ordered ramp (dark blue -> teal -> yellow), interpolated linearly
_RAMP = np.array([[20, 20, 60], [40, 80, 150], [30, 150, 140], [120, 200, 80], [250, 230, 60]], dtype=np.float64)


def _color(value: float) -> tuple[int, int, int]:
    x = float(np.clip(value, 0.0, 1.0)) * (len(_RAMP) - 1)
    i = min(int(x), len(_RAMP) - 2)
    return tuple(int(round(c)) for c in _RAMP[i] * (1 - (x - i)) + _RAMP[i + 1] * (x - i))


@torch.no_grad()
def capture_attention(model, patch_name: str, batch: Mapping[str, Any], index: int = 0) -> list[np.ndarray]:
    """Per layer, the attention map [T frames, Tk steps] of example `index` of `batch` through patch `patch_name`.

    The patch's inputs are captured by a forward pre-hook during a normal forward pass, then the patch runs again
    with `return_attention=True`.
    """
    patch = model.model.patches[patch_name]
    captured = {}

    def hook(module, args, kwargs):
        captured.update(args=args, kwargs=kwargs)

    handle = patch.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model.eval()
        model(**batch)
    finally:
        handle.remove()
    _, attentions = patch(*captured["args"], **{**captured["kwargs"], "return_attention": True})
    maps = []
    for probs, key_time in attentions:  # [B, H, T, N, Cmax*Nk], [B, T, Cmax*Nk]
        weights = probs[index].float().mean(dim=(0, 2))  # (T, Cmax*Nk)
        steps = key_time[index]
        matrix = torch.zeros(weights.shape[0], int(steps.max()) + 1)
        seen = torch.zeros_like(matrix, dtype=torch.bool)
        valid = steps >= 0
        rows = torch.arange(weights.shape[0])[:, None].expand_as(steps)
        matrix.index_put_((rows[valid], steps[valid]), weights[valid], accumulate=True)
        seen[rows[valid], steps[valid]] = True
        maps.append(torch.where(seen, matrix, torch.nan).numpy())  # NaN: outside the frame's chunk
    return maps


def attention_heatmap(
    maps: Sequence[np.ndarray], row_labels: Sequence[str], col_labels: Sequence[str], title: str, cell: int = 56
) -> Image.Image:
    """One heat map per layer, side by side, with axis labels, cell values and a colour bar (0 to 1)."""
    rows, cols = maps[0].shape
    left, top, gap, bar = 92, 64, 40, 16
    panel_w = cols * cell
    width = left + len(maps) * (panel_w + gap) + 70
    height = top + rows * cell + 56
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 8), title, fill="black")
    for k, matrix in enumerate(maps):
        x0 = left + k * (panel_w + gap)
        draw.text((x0, top - 34), f"layer {k + 1}", fill="black")
        for j, label in enumerate(col_labels):
            draw.text((x0 + j * cell + 4, top - 16), label, fill="black")
        for i in range(rows):
            if k == 0:
                draw.text((8, top + i * cell + cell // 2 - 6), row_labels[i], fill="black")
            for j in range(cols):
                value = float(matrix[i, j])
                box = (x0 + j * cell, top + i * cell, x0 + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
                if np.isnan(value):  # not in this frame's chunk: masked out, not a zero weight
                    draw.rectangle(box, fill=(225, 225, 225))
                    continue
                draw.rectangle(box, fill=_color(value))
                ink = "black" if value > 0.55 else "white"
                draw.text((box[0] + 12, box[1] + cell // 2 - 6), f"{value:.2f}", fill=ink)
        draw.text((x0, top + rows * cell + 8), "side-channel time (audio clip centre)", fill="black")
    bx = width - 50
    for y in range(rows * cell):
        draw.line((bx, top + y, bx + bar, top + y), fill=_color(1 - y / max(rows * cell - 1, 1)))
    draw.text((bx - 2, top - 14), "1.0", fill="black")
    draw.text((bx - 2, top + rows * cell + 2), "0.0", fill="black")
    note = "rows: query frames (start time); grey: outside the frame's chunk of side-channel time (masked)"
    draw.text((8, top + rows * cell + 30), note, fill="black")
    return image
