"""PAVE side channels from raw media: audio, high-frame-rate video and extra camera views, plus an offline cache.

Each extractor turns one video (and its side media) into a `SideChannelFeatures`, running a frozen, pluggable
transformers encoder under `torch.no_grad()` in eval mode. The 3D (RGB-D + poses) extractor lives in
`side_channel_3d.py`. `extract_side_channel_features` runs an extractor over many videos into one safetensors
file per video, named by a hash of the inputs and the extractor's settings, skipping files already there.

Shape legend:
    T     side-channel time steps (blocks): audio clips, 2 fps frames, or frames x views (time-major)
    h w   tokens per step (a grid; 1 x 1 for audio)
    C     channels of the encoder's output
    N     frames or clips in one encoder batch
    L     tokens out of a vision encoder (prefix tokens such as CLS, then h * w patches)
    S     samples per audio clip
    V     extra camera views
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.utils import logging

from videoadapt.processors.atomic import atomic_write
from videoadapt.processors.audio import clip_audio, clip_start_times, load_audio
from videoadapt.processors.errors import MediaError
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import FpsSampler, UniformSampler
from videoadapt.processors.video_io import load_video, probe_video


__all__ = [
    "SIDE_CHANNEL_KINDS",
    "AudioSideChannel",
    "MultiviewSideChannel",
    "SideChannelExtractor",
    "SideChannelFeatures",
    "VideoSideChannel",
    "encode_frames",
    "encoder_fingerprint",
    "extract_side_channel_features",
    "side_channel_cache_key",
]

logger = logging.get_logger(__name__)

SIDE_CHANNEL_KINDS = ("audio", "video", "multiview", "3d", "generic")
_FORMAT, _FORMAT_VERSION = "videoadapt.side_channel", 1


@dataclass
class SideChannelFeatures:
    """Side-channel tokens of one video, in time order, as the PAVE patch consumes them.

    Attributes:
        kind: one of `SIDE_CHANNEL_KINDS`.
        features: [T, h, w, C] float tokens, T time steps (blocks) of h x w tokens.
        timestamps: [T] float64 centre time of each block in the source video, seconds.
        positions: [T, h, w, 3] xyz world coordinates of each token (3D only), else None.
    """

    kind: str
    features: torch.Tensor
    timestamps: torch.Tensor
    positions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in SIDE_CHANNEL_KINDS:
            raise ValueError(f"`kind` must be one of {SIDE_CHANNEL_KINDS}, got {self.kind!r}.")
        if not torch.is_tensor(self.features) or self.features.ndim != 4 or not self.features.is_floating_point():
            got = tuple(self.features.shape) if torch.is_tensor(self.features) else type(self.features).__name__
            raise ValueError(f"`features` must be a float tensor [T, h, w, C], got {got}.")
        self.timestamps = torch.as_tensor(self.timestamps, dtype=torch.float64)
        if self.timestamps.shape != self.features.shape[:1]:
            raise ValueError(
                f"`timestamps` must be [T] = {self.features.shape[:1]}, got {tuple(self.timestamps.shape)}."
            )
        if self.positions is not None and self.positions.shape != (*self.features.shape[:3], 3):
            expected = (*self.features.shape[:3], 3)
            raise ValueError(f"`positions` must be [T, h, w, 3] = {expected}, got {tuple(self.positions.shape)}.")

    def save(self, path: str | os.PathLike, extra_metadata: Mapping[str, Any] | None = None) -> Path:
        """Write one safetensors file atomically (temp file + `os.replace`); metadata JSON goes in the header."""
        path = Path(path)
        tensors = {"features": self.features, "timestamps": self.timestamps}
        if self.positions is not None:
            tensors["positions"] = self.positions
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        header = {"version": _FORMAT_VERSION, "kind": self.kind, **(extra_metadata or {})}
        metadata = {_FORMAT: json.dumps(header, default=str)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SideChannelFeatures:
        """Read a file written by `save`; raises `MediaError` for a missing, corrupt or foreign file."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise MediaError(path, "no such side-channel feature file; extract it first.")
        try:
            with safe_open(path, framework="pt") as handle:
                header = json.loads((handle.metadata() or {}).get(_FORMAT, "null"))
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except (SafetensorError, OSError, json.JSONDecodeError) as exc:
            raise MediaError(path, f"not a readable safetensors file ({exc}).") from exc
        if not isinstance(header, dict) or header.get("version") != _FORMAT_VERSION:
            raise MediaError(path, f"not a side-channel feature file of format version {_FORMAT_VERSION}.")
        missing = [name for name in ("features", "timestamps") if name not in tensors]
        if missing or "kind" not in header:
            raise MediaError(path, f"damaged side-channel feature file: no {missing or 'kind'}; extract it again.")
        try:
            return cls(header["kind"], tensors["features"], tensors["timestamps"], tensors.get("positions"))
        except ValueError as exc:
            raise MediaError(path, f"damaged side-channel feature file: {exc} Extract it again.") from exc


class SideChannelExtractor(Protocol):
    """What `extract_side_channel_features` needs from an extractor."""

    kind: str

    def __call__(self, video_path: str | os.PathLike, **media: Any) -> SideChannelFeatures: ...

    def config_dict(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _inference(module: Any) -> Iterator[None]:
    """`torch.no_grad()` with the module in eval mode; its training flag is restored afterwards."""
    training = bool(getattr(module, "training", False))
    if training:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if training:
            module.train()


def _device_dtype(module: Any) -> tuple[torch.device, torch.dtype]:
    params = module.parameters() if isinstance(module, torch.nn.Module) else iter(())
    first = next(params, None)
    return (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)


def _to_device(inputs: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Tensors to `device`; floating tensors also to `dtype`."""
    return {
        k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
        for k, v in inputs.items()
    }


def encoder_fingerprint(encoder: Any) -> dict[str, Any]:
    """Identifies an encoder for cache keys: class, `name_or_path` and a hash of its config (not its weights)."""
    config = getattr(encoder, "config", None)
    config_json = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else None
    return {
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "config_sha256": hashlib.sha256(config_json.encode()).hexdigest() if config_json else None,
    }


def _patch_grid(tokens: torch.Tensor, image_size: tuple[int, int], patch_size: Any) -> torch.Tensor:
    """[N, L, C] encoder tokens -> [N, h, w, C] patch grid, dropping the L - h*w prefix tokens (CLS, registers)."""
    n, length, channels = tokens.shape
    if patch_size is not None:
        ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        h, w = image_size[0] // ph, image_size[1] // pw
        max_prefix = 16  # CLS and register tokens
    else:  # no config: a square grid, with or without one CLS token
        h = w = math.isqrt(length) if math.isqrt(length) ** 2 == length else math.isqrt(max(length - 1, 0))
        max_prefix = 1
    if h * w == 0 or not 0 <= length - h * w <= max_prefix:
        raise ValueError(
            f"cannot lay {length} encoder tokens out as a patch grid for {image_size[0]}x{image_size[1]} images "
            f"(patch size {patch_size}); give the encoder a `config.patch_size` or check the preprocessor's size."
        )
    return tokens[:, length - h * w :].reshape(n, h, w, channels)  # (N, h, w, C)


def encode_frames(
    encoder: Callable[..., Any], pixel_values: torch.Tensor, *, batch_size: int, feature_layer: int | None = None
) -> torch.Tensor:
    """Encode preprocessed frames [N, 3, H', W'] with a vision encoder into float32 patch grids [N, h, w, C].

    The encoder is called as `encoder(pixel_values=...)`; its `last_hidden_state` is used, or
    `hidden_states[feature_layer]` when `feature_layer` is given (e.g. a LLaVA config's `vision_feature_layer`).
    Prefix tokens (CLIP's CLS) are dropped; the grid comes from `encoder.config.patch_size` when there is one.
    """
    device, dtype = _device_dtype(encoder)
    extra = {} if feature_layer is None else {"output_hidden_states": True}
    chunks = []
    with _inference(encoder):
        for batch in pixel_values.split(batch_size):
            out = encoder(pixel_values=batch.to(device, dtype), **extra)
            tokens = out if torch.is_tensor(out) else (out.hidden_states[feature_layer] if extra else out[0])
            chunks.append(tokens.float().cpu())  # (N, L, C)
    patch_size = getattr(getattr(encoder, "config", None), "patch_size", None)
    return _patch_grid(torch.cat(chunks), tuple(pixel_values.shape[-2:]), patch_size)


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
    return batch_size


# ----------------------------------------------------------------------------------------------- audio


def _pool_masked_mean(outputs: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
    """Mean over time of `last_hidden_state` [N, L, C], only over positions that hold real (unpadded) audio."""
    hidden = outputs.last_hidden_state
    mask = inputs.get("attention_mask")  # (N, frames) over the feature extractor's frames, or None
    if mask is None:
        return hidden.mean(1)
    steps = torch.arange(hidden.shape[1], device=mask.device) * mask.shape[1] // hidden.shape[1]
    keep = mask[:, steps].to(hidden.dtype)[..., None]  # (N, L, 1): encoder step -> its first input frame
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)


_AUDIO_POOLING: dict[str, Callable[[Any, Mapping[str, Any]], torch.Tensor]] = {
    "audio_embeds": lambda outputs, inputs: outputs.audio_embeds,
    "pooler_output": lambda outputs, inputs: outputs.pooler_output,
    "mean": _pool_masked_mean,
}
# encoder class -> (pooling rule, extra feature-extractor kwargs); the class's MRO is searched by name
_AUDIO_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "ClapAudioModelWithProjection": ("audio_embeds", {}),  # projected CLAP embedding (not L2-normalised)
    "ClapAudioModel": ("pooler_output", {}),
    "ASTModel": ("pooler_output", {}),  # mean of the CLS and distillation tokens
    "WhisperEncoder": ("mean", {"return_attention_mask": True}),  # masked mean: the 30 s padding is left out
}


class AudioSideChannel:
    """Audio of a video (its own track or `audio_path=`) as one embedding per 2 s clip at 1 s stride: [K, 1, 1, C].

    The waveform is read mono at the feature extractor's `sampling_rate` (16 kHz for AST and Whisper, 48 kHz
    for CLAP checkpoints), cut to the video's duration, clipped with `clip_audio`, featurised, encoded, pooled.
    The video's own track is aligned to its first frame (`load_audio(align_to_video=True)`); a separate
    `audio_path` file is taken to start with the video.

    Args:
        encoder: a transformers audio model (see `_AUDIO_FAMILIES`), or any model with `pooling=` given.
        feature_extractor: the encoder's transformers feature extractor.
        batch_size: clips per encoder call.
        pooling: override the family's rule: "audio_embeds", "pooler_output" or "mean".
        clip_seconds / stride_seconds: clip length and stride (PAVE: 2 s and 1 s).
    """

    kind = "audio"

    def __init__(
        self,
        encoder: torch.nn.Module,
        feature_extractor: Any,
        batch_size: int = 16,
        *,
        pooling: str | None = None,
        clip_seconds: float = 2.0,
        stride_seconds: float = 1.0,
    ):
        family = next(
            (_AUDIO_FAMILIES[c.__name__] for c in type(encoder).__mro__ if c.__name__ in _AUDIO_FAMILIES), None
        )
        if pooling is None and family is None:
            raise ValueError(
                f"no pooling rule for {type(encoder).__name__}; known encoders are {sorted(_AUDIO_FAMILIES)} "
                f"(for an encoder-decoder model pass `model.get_encoder()`), or pass `pooling=` one of "
                f"{sorted(_AUDIO_POOLING)}."
            )
        if pooling is not None and pooling not in _AUDIO_POOLING:
            raise ValueError(f"`pooling` must be one of {sorted(_AUDIO_POOLING)}, got {pooling!r}.")
        self.pooling = pooling or family[0]
        self.extractor_kwargs = dict(family[1]) if family else {}
        self.encoder, self.feature_extractor = encoder, feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.batch_size = _check_batch_size(batch_size)
        self.clip_seconds, self.stride_seconds = float(clip_seconds), float(stride_seconds)

    def config_dict(self) -> dict[str, Any]:
        fe_json = self.feature_extractor.to_json_string()
        return {
            "kind": self.kind,
            "extractor": type(self).__name__,
            "encoder": encoder_fingerprint(self.encoder),
            "feature_extractor_sha256": hashlib.sha256(fe_json.encode()).hexdigest(),
            "pooling": self.pooling,
            "sample_rate": self.sample_rate,
            "clip_seconds": self.clip_seconds,
            "stride_seconds": self.stride_seconds,
        }

    def encode(self, clips: np.ndarray) -> torch.Tensor:
        """Waveform clips [K, S] at `sample_rate` -> float32 embeddings [K, C]."""
        device, dtype = _device_dtype(self.encoder)
        pool, embeds = _AUDIO_POOLING[self.pooling], []
        with _inference(self.encoder):
            for start in range(0, len(clips), self.batch_size):
                batch = list(clips[start : start + self.batch_size])
                inputs = self.feature_extractor(
                    batch, sampling_rate=self.sample_rate, return_tensors="pt", **self.extractor_kwargs
                )
                inputs = _to_device(inputs, device, dtype)
                outputs = self.encoder(**{k: v for k, v in inputs.items() if k != "attention_mask"})
                embeds.append(pool(outputs, inputs).float().cpu())  # (N, C)
        return torch.cat(embeds)

    def __call__(
        self, video_path: str | os.PathLike, *, audio_path: str | os.PathLike | None = None
    ) -> SideChannelFeatures:
        video_duration = probe_video(video_path).duration
        source = os.fspath(audio_path if audio_path is not None else video_path)
        # the video's own track: t = 0 is the first frame, whenever the audio stream starts; a separate file is
        # taken to start with the video
        waveform, meta = load_audio(
            source, sample_rate=self.sample_rate, end=video_duration, align_to_video=audio_path is None
        )
        if meta.duration < video_duration - self.stride_seconds - 1e-6:
            raise MediaError(
                source,
                f"the audio lasts {meta.duration:.3f} s but the video {os.fspath(video_path)} lasts "
                f"{video_duration:.3f} s; the audio must cover the video up to one clip stride "
                f"({self.stride_seconds:g} s). Pass the matching audio file.",
            )
        clips = clip_audio(waveform, self.sample_rate, self.clip_seconds, self.stride_seconds)  # (K, S)
        starts = clip_start_times(len(waveform), self.sample_rate, self.clip_seconds, self.stride_seconds)
        features = self.encode(clips)[:, None, None, :]  # (K, 1, 1, C)
        return SideChannelFeatures(self.kind, features, torch.from_numpy(starts + self.clip_seconds / 2))


# ----------------------------------------------------------------------------------------------- video


class _FrameExtractor:
    """Shared by the vision side channels: a vision encoder, its frame preprocessor, batching, cache settings."""

    kind = "generic"

    def __init__(
        self, encoder: Callable[..., Any], preprocessor: FramePreprocessor, batch_size: int, feature_layer: int | None
    ):
        self.encoder, self.preprocessor, self.feature_layer = encoder, preprocessor, feature_layer
        self.batch_size = _check_batch_size(batch_size)

    def _settings(self) -> dict[str, Any]:
        return {}

    def config_dict(self) -> dict[str, Any]:
        """Everything that changes the output (for cache keys); `batch_size` is left out."""
        return {
            "kind": self.kind,
            "extractor": type(self).__name__,
            "encoder": encoder_fingerprint(self.encoder),
            "preprocessor": self.preprocessor.to_dict(),
            "feature_layer": self.feature_layer,
            **self._settings(),
        }

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB frames [N, H, W, 3] -> float32 patch grids [N, h, w, C]."""
        pixel_values = self.preprocessor(frames)  # (N, 3, H', W')
        return encode_frames(self.encoder, pixel_values, batch_size=self.batch_size, feature_layer=self.feature_layer)


class VideoSideChannel(_FrameExtractor):
    """High-frame-rate frames (2 fps) encoded by a vision model and average-pooled to a small grid: [T, 2, 2, C].

    Frames are decoded `batch_size` at a time (seek-based), so long videos never sit in memory at once.
    `timestamps` are the start times of the sampled frames. `feature_layer`: see `encode_frames`.
    """

    kind = "video"

    def __init__(
        self,
        encoder: torch.nn.Module,
        preprocessor: FramePreprocessor,
        fps: float = 2.0,
        pool: tuple[int, int] = (2, 2),
        batch_size: int = 32,
        *,
        feature_layer: int | None = None,
    ):
        super().__init__(encoder, preprocessor, batch_size, feature_layer)
        self.sampler = FpsSampler(fps)
        self.pool = tuple(int(p) for p in pool)
        if len(self.pool) != 2 or min(self.pool) < 1:
            raise ValueError(f"`pool` must be two ints >= 1 (grid height, width), got {pool!r}.")

    def _settings(self) -> dict[str, Any]:
        return {"fps": self.sampler.fps, "pool": list(self.pool)}

    def __call__(self, video_path: str | os.PathLike) -> SideChannelFeatures:
        index = probe_video(video_path)
        times = index.frame_times[self.sampler(index)]  # (T,)
        pooled = []
        for start in range(0, len(times), self.batch_size):
            frames, _ = load_video(video_path, timestamps=times[start : start + self.batch_size].tolist())
            grid = self.encode(frames).permute(0, 3, 1, 2)  # (N, C, h, w)
            pooled.append(F.adaptive_avg_pool2d(grid, self.pool).permute(0, 2, 3, 1))  # (N, 2, 2, C)
        return SideChannelFeatures(self.kind, torch.cat(pooled), torch.from_numpy(times))


class MultiviewSideChannel(_FrameExtractor):
    """Extra synchronised camera views (`view_paths=`), sampled at the main video's `num_frames` uniform frame times.

    Output [num_frames * V, h, w, C], time-major: view v of frame i sits at index i * V + v. With
    `spatial_pool_stride=s` each grid is resized bilinearly to ceil(h / s) x ceil(w / s), as LLaVA-OneVision pools.
    """

    kind = "multiview"

    def __init__(
        self,
        vision_tower: Callable[..., Any],
        preprocessor: FramePreprocessor,
        num_frames: int = 32,
        batch_size: int = 32,
        *,
        feature_layer: int | None = None,
        spatial_pool_stride: int | None = None,
    ):
        super().__init__(vision_tower, preprocessor, batch_size, feature_layer)
        self.sampler = UniformSampler(num_frames)
        if spatial_pool_stride is not None and (not isinstance(spatial_pool_stride, int) or spatial_pool_stride < 1):
            raise ValueError(f"`spatial_pool_stride` must be None or an int >= 1, got {spatial_pool_stride!r}.")
        self.spatial_pool_stride = spatial_pool_stride

    def _settings(self) -> dict[str, Any]:
        return {"num_frames": self.sampler.num_frames, "spatial_pool_stride": self.spatial_pool_stride}

    def _encode_view(self, view: str, times: np.ndarray) -> torch.Tensor:
        frames, _ = load_video(view, timestamps=times.tolist())
        grid = self.encode(frames)  # (N, h, w, C)
        if self.spatial_pool_stride is None:
            return grid
        size = [math.ceil(s / self.spatial_pool_stride) for s in grid.shape[1:3]]
        return F.interpolate(grid.permute(0, 3, 1, 2), size=size, mode="bilinear").permute(0, 2, 3, 1)

    def __call__(
        self, video_path: str | os.PathLike, *, view_paths: Sequence[str | os.PathLike]
    ) -> SideChannelFeatures:
        if isinstance(view_paths, (str, os.PathLike)) or not view_paths:
            raise ValueError(f"`view_paths` must be a non-empty list of video files, got {view_paths!r}.")
        main = probe_video(video_path)
        times = main.frame_times[self.sampler(main)]  # (N,)
        grids = []
        for view in map(os.fspath, view_paths):
            duration = probe_video(view).duration
            if duration < main.duration - 1.0 / main.fps - 1e-6:  # a view may end up to one frame early
                raise MediaError(
                    view,
                    f"this view lasts {duration:.3f} s but the main video {os.fspath(video_path)} lasts "
                    f"{main.duration:.3f} s; extra views must cover the main video. Pass the full view.",
                )
            grids.append(self._encode_view(view, times))
        features = torch.stack(grids, dim=1).flatten(0, 1)  # (N, V, h, w, C) -> (N * V, h, w, C)
        return SideChannelFeatures(self.kind, features, torch.from_numpy(np.repeat(times, len(grids))))


# ----------------------------------------------------------------------------------------------- offline cache


def _fingerprint(value: Any) -> Any:
    """JSON-able identity of a media argument: files by (absolute path, size, mtime), arrays by content hash."""
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        stat = os.stat(value)
        return [os.path.abspath(value), stat.st_size, stat.st_mtime_ns]
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"shape": list(data.shape), "dtype": str(data.dtype), "sha256": hashlib.sha256(data.data).hexdigest()}
    if isinstance(value, (list, tuple)):
        return [_fingerprint(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _fingerprint(v) for k, v in value.items()}
    return value if isinstance(value, (int, float, bool, type(None))) else str(value)


def side_channel_cache_key(
    extractor_config: Mapping[str, Any], video_path: str | os.PathLike, media: Mapping[str, Any] | None = None
) -> str:
    """Hex SHA-256 of (absolute path, size, mtime of the video; the media arguments; the extractor's config)."""
    if not os.path.isfile(video_path):
        raise MediaError(video_path, "no such file; check the path.")
    key = {"video": _fingerprint(video_path), "media": _fingerprint(dict(media or {})), "extractor": extractor_config}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def extract_side_channel_features(
    extractor: SideChannelExtractor,
    video_paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    *,
    media_kwargs: list[dict[str, Any]] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Extract side-channel features for many videos into `cache_dir`, one safetensors file per video.

    A file is named `<cache key>.safetensors` (see `side_channel_cache_key`) and written atomically, so an
    interrupted run leaves only finished files and a rerun picks up where it stopped. Existing files are skipped
    unless `overwrite`. `media_kwargs[i]` are passed to `extractor(video_paths[i], **media_kwargs[i])`.

    Returns:
        The feature file of each video, in the order of `video_paths`.
    """
    video_paths = list(video_paths)
    media_kwargs = [{} for _ in video_paths] if media_kwargs is None else list(media_kwargs)
    if len(media_kwargs) != len(video_paths):
        raise ValueError(
            f"`media_kwargs` must hold one dict per video: got {len(media_kwargs)} for {len(video_paths)} videos."
        )
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    config = extractor.config_dict()
    paths, extracted = [], 0
    for video, media in logging.tqdm(
        list(zip(video_paths, media_kwargs)), desc=f"{extractor.kind} side channel", unit="video"
    ):
        target = cache_dir / f"{side_channel_cache_key(config, video, media)}.safetensors"
        if target.exists() and not overwrite:
            logger.debug(f"cached: {video} -> {target}")
        else:
            features = extractor(video, **media)
            features.save(target, extra_metadata={"source": os.path.abspath(video), "extractor": config})
            extracted += 1
        paths.append(target)
    logger.info(
        f"{extractor.kind} side channel: {extracted} extracted, {len(paths) - extracted} cached in {cache_dir}"
    )
    return paths
