"""What every processor accepts as `videos`: paths, frame arrays or tensors, batches and lists of them.

Shape legend: B videos, T frames, H W frame size.
"""

import os
from typing import Any

import numpy as np
import torch


__all__ = ["frames_array", "video_list"]


def video_list(videos: Any) -> list[Any]:
    """`videos` as a list of single videos: a path or [T, H, W, 3] frames (array or tensor) is one video, a
    [B, T, H, W, 3] array or tensor is B videos, a list or tuple holds one video per item; None is no video."""
    if videos is None:
        return []
    if isinstance(videos, str | os.PathLike):
        return [videos]
    if isinstance(videos, np.ndarray | torch.Tensor):
        if videos.ndim == 4:
            return [videos]
        if videos.ndim == 5:
            return list(videos)
        raise ValueError(
            f"`videos` as one array must be [T, H, W, 3] frames (one video) or [B, T, H, W, 3] (B videos), got a "
            f"{videos.ndim}-D {type(videos).__name__} of shape {tuple(videos.shape)}; add or remove the batch axis, "
            "or pass a list of videos."
        )
    if isinstance(videos, list | tuple):
        return list(videos)
    raise TypeError(
        "`videos` must be a path, [T, H, W, 3] uint8 frames (numpy array or torch tensor), a [B, T, H, W, 3] batch "
        f"or a list of paths / frames, got {type(videos).__name__}."
    )


def frames_array(video: Any) -> np.ndarray:
    """One video given as frames (numpy array, torch tensor on any device, or nested lists) -> [T, H, W, 3]."""
    clip = video.numpy(force=True) if isinstance(video, torch.Tensor) else np.asarray(video)
    if clip.ndim != 4 or clip.shape[0] < 1 or clip.shape[-1] != 3:
        raise ValueError(f"a video must be a path or [T, H, W, 3] frames with T >= 1, got shape {clip.shape}.")
    return clip
