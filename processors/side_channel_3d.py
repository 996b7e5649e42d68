"""PAVE 3D side channel: RGB frames encoded by a vision tower, plus the world position of every patch token.

Inputs per video: the RGB video, depth maps ([T, H_d, W_d] float metres, z-depth, pixel-aligned with the RGB
frames at any resolution), pinhole intrinsics of the RGB frames ([3, 3] or [T, 3, 3], OpenCV convention: pixel
(u, v) has its centre at integer coordinates) and camera-to-world poses [T, 4, 4]. T is either the number of
frames in the video (the sampled frames are picked out) or `num_frames` (already one per sampled frame).

Back-projection rule (ours; LLaVA-3D's exact rule is not in the sources): each patch token sits on the ray
through its patch centre in the preprocessed frame; its depth is the mean of the valid depth pixels (finite,
> 0) whose centres fall inside the patch's footprint, or the frame's median valid depth when the patch has
none (e.g. crop padding or sensor holes). Intrinsics are mapped to the preprocessed geometry: for a resize by
(W'/W, H'/H) followed by a centre crop at offset (left, top),
    fx' = fx * W'/W,   cx' = (cx + 0.5) * W'/W - 0.5 - left   (same for y, skew scales like fx).
The learned 3D position embedding that uses `positions` belongs to the PAVE patch, not here.

Shape legend:
    T      sampled frames (`num_frames`)
    h w    patch grid of the vision tower;  C channels
    H W    decoded RGB frame size;  H' W' preprocessed size;  H_d W_d depth map size
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from videoadapt.processors.errors import MediaError
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import UniformSampler
from videoadapt.processors.side_channels import SideChannelFeatures, _FrameExtractor
from videoadapt.processors.video_io import load_video, probe_video


__all__ = ["Depth3DSideChannel", "backproject_patches", "preprocessed_intrinsics"]

ArrayLike = np.ndarray | torch.Tensor | str | os.PathLike


def _crop_geometry(preprocessor: FramePreprocessor, height: int, width: int) -> tuple[float, float, int, int]:
    """(scale_y, scale_x, top, left): resized = original * scale; preprocessed = resized shifted by (-top, -left)."""
    resized_h, resized_w = preprocessor._resized_size(height, width) if preprocessor.do_resize else (height, width)
    top = left = 0
    if preprocessor.do_center_crop:  # crop offsets, negative where the crop pads (image_processing._center_crop)
        crop_h, crop_w = preprocessor.crop_size["height"], preprocessor.crop_size["width"]
        top = (resized_h - crop_h) // 2 if resized_h >= crop_h else -math.ceil((crop_h - resized_h) / 2)
        left = (resized_w - crop_w) // 2 if resized_w >= crop_w else -math.ceil((crop_w - resized_w) / 2)
    return resized_h / height, resized_w / width, top, left


def preprocessed_intrinsics(
    intrinsics: np.ndarray, frame_size: tuple[int, int], preprocessor: FramePreprocessor
) -> np.ndarray:
    """Intrinsics [..., 3, 3] of (H, W) frames -> intrinsics of the same frames after `preprocessor` (resize, crop)."""
    scale_y, scale_x, top, left = _crop_geometry(preprocessor, *frame_size)
    affine = np.array(  # pixel-centre coordinates: u' = (u + 0.5) * scale - 0.5 - offset
        [[scale_x, 0.0, 0.5 * scale_x - 0.5 - left], [0.0, scale_y, 0.5 * scale_y - 0.5 - top], [0.0, 0.0, 1.0]]
    )
    return affine @ np.asarray(intrinsics, dtype=np.float64)


def backproject_patches(
    depth: np.ndarray,
    intrinsics: np.ndarray,
    poses: np.ndarray,
    frame_size: tuple[int, int],
    preprocessor: FramePreprocessor,
    grid: tuple[int, int],
    patch_size: tuple[int, int],
) -> np.ndarray:
    """World xyz [T, h, w, 3] of each patch token (the rule in the module docstring).

    Args:
        depth: [T, H_d, W_d] z-depth in metres, pixel-aligned with the (H, W) RGB frames; <= 0 or non-finite = missing.
        intrinsics: [T, 3, 3] of the (H, W) RGB frames.  poses: [T, 4, 4] camera-to-world.
        frame_size: (H, W) of the decoded RGB frames.  grid: (h, w) tokens.  patch_size: (p_h, p_w) in H' W' pixels.
    """
    (t, depth_h, depth_w), (h, w), (patch_h, patch_w) = depth.shape, grid, patch_size
    scale_y, scale_x, top, left = _crop_geometry(preprocessor, *frame_size)
    # patch row / column under each depth pixel centre (out of range: outside the preprocessed frame)
    rows = np.floor(((np.arange(depth_h) + 0.5) * frame_size[0] / depth_h * scale_y - top) / patch_h).astype(np.int64)
    cols = np.floor(((np.arange(depth_w) + 0.5) * frame_size[1] / depth_w * scale_x - left) / patch_w).astype(np.int64)
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]  # (H_d, W_d)
    valid = np.isfinite(depth) & (depth > 0)  # (T, H_d, W_d)
    cell = np.arange(t)[:, None, None] * (h * w) + (rows[:, None] * w + cols[None, :])[None]  # (T, H_d, W_d)
    used = valid & inside[None]
    sums = np.bincount(cell[used], weights=depth[used], minlength=t * h * w).reshape(t, h, w)
    counts = np.bincount(cell[used], minlength=t * h * w).reshape(t, h, w)
    fallback = np.array([np.median(d[v]) for d, v in zip(depth, valid)])  # (T,) median valid depth per frame
    z = np.where(counts > 0, sums / np.maximum(counts, 1), fallback[:, None, None])  # (T, h, w)
    v, u = np.meshgrid((np.arange(h) + 0.5) * patch_h - 0.5, (np.arange(w) + 0.5) * patch_w - 0.5, indexing="ij")
    pixels = np.stack([u, v, np.ones_like(u)], axis=-1)  # (h, w, 3) patch centres, pixel-centre coordinates
    inverse = np.linalg.inv(preprocessed_intrinsics(intrinsics, frame_size, preprocessor))  # (T, 3, 3)
    camera = np.einsum("tij,hwj->thwi", inverse, pixels) * z[..., None]  # (T, h, w, 3), ray z = 1 scaled by depth
    return np.einsum("tij,thwj->thwi", poses[:, :3, :3], camera) + poses[:, None, None, :3, 3]


def _load(value: ArrayLike, name: str) -> tuple[np.ndarray, str | None]:
    """An array argument or a .npy (memory-mapped) / .npz (key `name` or its only array) / .txt file.

    Returns the array in its stored dtype (frames are picked before converting) and the path (None for arrays).
    """
    path = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if path is None:
        if torch.is_tensor(value):
            value = value.detach().cpu()
            value = value.float() if value.dtype == torch.bfloat16 else value
        array = np.asarray(value)
    elif not os.path.isfile(path):
        raise MediaError(path, f"`{name}` file not found; check the path.")
    else:
        try:
            array = np.loadtxt(path) if path.endswith(".txt") else np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise MediaError(path, f"cannot read `{name}` ({exc}); save it with numpy.save (.npy) or .npz.") from exc
        if isinstance(array, np.lib.npyio.NpzFile):
            keys = array.files
            if name not in keys and len(keys) != 1:
                raise MediaError(path, f"the .npz holds {keys}; name the `{name}` array {name!r} or store only it.")
            array = array[name if name in keys else keys[0]]
    if not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
        raise _fail(path, f"`{name}` must hold numbers, got dtype {array.dtype}; pass a float array.")
    return array, path


def _fail(path: str | None, message: str) -> Exception:
    """Bad media (a file) -> MediaError naming it; a bad array argument -> ValueError."""
    return MediaError(path, message) if path is not None else ValueError(message)


def _per_frame(
    array: np.ndarray, path: str | None, name: str, shape: str, total: int, indices: np.ndarray
) -> np.ndarray:
    """Picks the sampled frames out of a per-video-frame array (or takes a per-sampled-frame array as it is)."""
    if len(array) == total:
        return array[indices]
    if len(array) == len(indices):
        return array
    raise _fail(
        path,
        f"`{name}` must be {shape} with T = {total} (one per video frame) or T = {len(indices)} (one per sampled "
        f"frame, `num_frames`), got shape {tuple(array.shape)}. Pass one entry per frame of the video.",
    )


class Depth3DSideChannel(_FrameExtractor):
    """RGB-D frames with camera poses -> patch features [T, h, w, C] and their world positions [T, h, w, 3].

    `num_frames` frames are sampled uniformly (as the base model's own frames), encoded by `vision_tower`
    (`encode_frames`: `last_hidden_state` or `hidden_states[feature_layer]`, CLS dropped), and each patch token
    is back-projected with the depth, the intrinsics mapped through the preprocessor and the pose.
    """

    kind = "3d"

    def __init__(
        self,
        vision_tower: Callable[..., Any],
        preprocessor: FramePreprocessor,
        num_frames: int = 32,
        batch_size: int = 32,
        *,
        feature_layer: int | None = None,
    ):
        super().__init__(vision_tower, preprocessor, batch_size, feature_layer)
        self.sampler = UniformSampler(num_frames)

    def _settings(self) -> dict[str, Any]:
        rule = "patch-centre ray; mean valid depth over the patch footprint, else the frame's median depth"
        return {"num_frames": self.sampler.num_frames, "backprojection": rule}

    def _inputs(self, video_path: str, depth: ArrayLike, intrinsics: ArrayLike, poses: ArrayLike):
        """Validated depth [T, H_d, W_d], intrinsics [T, 3, 3] and poses [T, 4, 4] of the sampled frames."""
        index = probe_video(video_path)
        indices, total = self.sampler(index), index.total_frames
        depth, depth_path = _load(depth, "depth")
        if depth.ndim != 3 or min(depth.shape) == 0:
            raise _fail(
                depth_path,
                f"`depth` must be [T, H, W] float metres, got shape {depth.shape}. Stack one depth map per frame, "
                "e.g. np.save(path, np.stack(maps).astype(np.float32)).",
            )
        depth = np.asarray(_per_frame(depth, depth_path, "depth", "[T, H, W]", total, indices), dtype=np.float64)
        if (depth < 0).any():
            raise _fail(depth_path, "`depth` has negative values; pass z-depth in metres (0 = missing).")
        if not (np.isfinite(depth) & (depth > 0)).reshape(len(depth), -1).any(axis=1).all():
            raise _fail(depth_path, "`depth`: a sampled frame has no valid depth (all <= 0 or non-finite).")
        intrinsics, k_path = _load(intrinsics, "intrinsics")
        if intrinsics.shape[-2:] != (3, 3) or intrinsics.ndim not in (2, 3):
            raise _fail(
                k_path,
                f"`intrinsics` must be [3, 3] or [T, 3, 3], got shape {intrinsics.shape}. Pass K = [[fx, 0, cx], "
                "[0, fy, cy], [0, 0, 1]] of the RGB frames (of a 4x4 homogeneous K, its top-left 3x3).",
            )
        intrinsics = np.broadcast_to(intrinsics, (total, 3, 3)) if intrinsics.ndim == 2 else intrinsics
        intrinsics = np.asarray(_per_frame(intrinsics, k_path, "intrinsics", "[T, 3, 3]", total, indices), np.float64)
        if not np.isfinite(intrinsics).all() or (intrinsics[:, [0, 1], [0, 1]] <= 0).any():
            raise _fail(k_path, "`intrinsics` must be finite with fx, fy > 0; check the calibration.")
        if not np.allclose(intrinsics[:, 2], [0.0, 0.0, 1.0]):
            raise _fail(k_path, "`intrinsics` must have last row [0, 0, 1] (a pinhole camera matrix K).")
        poses, pose_path = _load(poses, "poses")
        if poses.ndim != 3 or poses.shape[1:] != (4, 4):
            raise _fail(
                pose_path,
                f"`poses` must be [T, 4, 4] camera-to-world matrices, got shape {poses.shape}. Stack one 4x4 "
                "matrix per frame (append the row [0, 0, 0, 1] to 3x4 poses).",
            )
        poses = np.asarray(_per_frame(poses, pose_path, "poses", "[T, 4, 4]", total, indices), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(poses).reshape(len(poses), -1).all(axis=1))
        if bad.size:
            raise _fail(pose_path, f"`poses` of sampled frames {bad.tolist()} are not finite; drop those frames.")
        if not np.allclose(poses[:, 3], [0.0, 0.0, 0.0, 1.0]):
            raise _fail(pose_path, "`poses` must have last row [0, 0, 0, 1] (rigid camera-to-world transforms).")
        return depth, intrinsics, poses

    def __call__(
        self, video_path: str | os.PathLike, *, depth: ArrayLike, intrinsics: ArrayLike, poses: ArrayLike
    ) -> SideChannelFeatures:
        video_path = os.fspath(video_path)
        depth, intrinsics, poses = self._inputs(video_path, depth, intrinsics, poses)
        frames, meta = load_video(video_path, sampler=self.sampler)  # the frames `_inputs` picked
        grid = self.encode(frames)  # (T, h, w, C)
        (height, width), (h, w) = frames.shape[1:3], grid.shape[1:3]
        patch = getattr(getattr(self.encoder, "config", None), "patch_size", None)
        if patch is None:  # no config: the grid tiles the preprocessed frame
            out_h, out_w = self.preprocessor.output_size(height, width)
            patch = (out_h // h, out_w // w)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        positions = backproject_patches(depth, intrinsics, poses, (height, width), self.preprocessor, (h, w), patch)
        return SideChannelFeatures(
            self.kind, grid, torch.from_numpy(meta.timestamps), torch.from_numpy(positions).float()
        )
