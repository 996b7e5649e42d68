"""Feature pre-extraction with `datasets.map` into cached Arrow files: resumable, multi-process, with a progress bar.

    encoder = FrameFeatureEncoder(SiglipVisionModel.from_pretrained(...), "llava_onevision", sampler=32)
    rows = extract_features(load_manifest("train.jsonl", split="train"), encoder, "video", "cache/features")
    rows.with_format("torch", columns=["frame_features"])[0]["frame_features"]  # [T, L, C]

Each row gets `<output_column>` (float [T, ...]), `<output_column>_length` (T) and, when the encoder gives them,
`<output_column>_timestamps` ([T] seconds) and `<output_column>_positions` (3D side channels).

Caching: the Arrow files live in `cache_dir/<key>/`; the key hashes the dataset's fingerprint (its content), the
media files' (size, mtime), the encoder's settings and weights, and the output settings. `datasets.map` writes one
file per shard (`num_proc` contiguous shards) through a temporary file renamed when the shard is complete, and loads
every shard whose file exists instead of computing it: a killed run loses only its unfinished shards (their `tmp*`
files are never read; delete them at will), and a rerun with any `num_proc` (datasets keeps the first run's shard
layout) computes only those. See docs/distributed.md.

Shape legend:
    T    time steps of one row: sampled frames, audio clips, 2 fps frames
    L    tokens per frame out of a vision tower (prefix tokens such as CLS first, then the patches)
    h w  token grid (side channels, `grid=True`)
    C    feature channels
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from datasets.fingerprint import Hasher
from transformers.utils import logging

from videoadapt.processors.atomic import atomic_write
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import FrameSampler, UniformSampler
from videoadapt.processors.side_channels import SideChannelFeatures, encode_frames, encoder_fingerprint
from videoadapt.processors.video_io import load_video


__all__ = [
    "FeatureEncoder",
    "FrameFeatureEncoder",
    "SideChannelEncoder",
    "extract_features",
    "unique_media",
    "weights_sha256",
]

logger = logging.get_logger(__name__)

FORMAT, FORMAT_VERSION = "videoadapt.features", 1
DTYPES = ("float32", "float16")


@runtime_checkable
class FeatureEncoder(Protocol):
    """What `extract_features` runs on every row. A plain function `fn(path) -> array` works too."""

    def config_dict(self) -> dict[str, Any]:
        """JSON-able settings: everything that changes the output (part of the cache key)."""

    def __call__(self, value: str, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """The row's media path and the whole row -> {"features": [T, ...], "timestamps": [T]} or an array."""


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (name, dtype, shape, bytes): changed weights never hit a stale cache."""
    digest = hashlib.sha256()
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _WeightsHash:
    """`weights_sha256(module)`, computed again only when a parameter or buffer changed since the last call (another
    tensor, or an in-place write such as `load_state_dict` or an optimizer step: its version counter moved), so an
    encoder reused after its weights changed never reads the old weights' cache entry. No module: None."""

    def __init__(self, module: torch.nn.Module | None):
        self.module, self.state, self.digest = module, None, None

    def _state(self) -> tuple | None:
        try:
            return tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape))
                         for name, t in (*self.module.named_parameters(), *self.module.named_buffers()))  # fmt: skip
        except RuntimeError:  # inference tensors have no version counter: hash every time
            return None

    def __call__(self) -> str | None:
        if self.module is None:
            return None
        state = self._state()
        if state is None or state != self.state:
            self.digest, self.state = weights_sha256(self.module), state
        return self.digest


def _check_count(name: str, value: Any, what: str, optional: bool = False) -> None:
    if not (optional and value is None) and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"`{name}` must be an int >= 1{' or None' if optional else ''} ({what}), got {value!r}.")


# ----------------------------------------------------------------------------------------------- encoders


class FrameFeatureEncoder:
    """Frame features of a vision tower for REEF, DynFocus and Compact: one video per row -> [T, L, C].

    Frames are decoded with `load_video` (seek-based), preprocessed with `FramePreprocessor` (pixel-identical to the
    base model's image processor) and run through the model (put in eval mode) under `torch.inference_mode()`.

    Args:
        model: a transformers vision model (`SiglipVisionModel`, a VLM's `vision_tower` or `vision_model`, ...).
        preprocessor: a `FramePreprocessor`, a preset name (`FramePreprocessor.presets()`) or an image processor.
        sampler: a `FrameSampler`, or an int N for `UniformSampler(N)`.
        feature_layer: `hidden_states[feature_layer]` instead of `last_hidden_state` (LLaVA's `vision_feature_layer`).
        grid: drop the prefix tokens and lay the patches out as [T, h, w, C] (`encode_frames`).
        video_method: instead, `getattr(model, video_method)(pixel_values)` on the clip as one video [1, T, 3, H, W],
            e.g. "get_compressor_inputs" of a `CompactModel` ([T, g, g, D], what SVC pre-training reads).
        batch_size: frames per forward pass (not with `video_method`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessor: FramePreprocessor | str | Any,
        sampler: FrameSampler | int = 8,
        *,
        feature_layer: int | None = None,
        grid: bool = False,
        video_method: str | None = None,
        batch_size: int = 32,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module (a transformers vision model), got {type(model)}.")
        if video_method is not None and not callable(getattr(model, video_method, None)):
            raise ValueError(f"`video_method` must name a method of {type(model).__name__}, got {video_method!r}.")
        if video_method is not None and (feature_layer is not None or grid):
            raise ValueError("`video_method` returns the model's own features: leave `feature_layer`, `grid` unset.")
        sampler = UniformSampler(sampler) if isinstance(sampler, int) and not isinstance(sampler, bool) else sampler
        if not isinstance(sampler, FrameSampler):
            raise TypeError(f"`sampler` must be a FrameSampler or an int (uniform frames), got {sampler!r}.")
        _check_count("batch_size", batch_size, "frames per forward pass")
        if isinstance(preprocessor, str):
            preprocessor = FramePreprocessor.for_model(preprocessor)
        elif not isinstance(preprocessor, FramePreprocessor):
            preprocessor = FramePreprocessor.from_image_processor(preprocessor)
        self.model, self.preprocessor, self.sampler, self.batch_size = model.eval(), preprocessor, sampler, batch_size
        self.feature_layer, self.grid, self.video_method = feature_layer, grid, video_method
        self._weights = _WeightsHash(model)

    def config_dict(self) -> dict[str, Any]:
        settings = {k: getattr(self, k) for k in ("feature_layer", "grid", "video_method")}
        return {"encoder": type(self).__name__, "model": encoder_fingerprint(self.model), "weights": self._weights(),
                "preprocessor": self.preprocessor.to_dict(), "sampler": repr(self.sampler), **settings}  # fmt: skip

    def to(self, device: str | torch.device) -> "FrameFeatureEncoder":
        self.model.to(device)
        return self

    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Preprocessed frames [T, 3, H', W'] -> float32 features [T, L, C] ([T, h, w, C] with `grid`)."""
        if self.grid:
            return encode_frames(
                self.model, pixel_values, batch_size=self.batch_size, feature_layer=self.feature_layer
            )
        first = next(self.model.parameters())
        if self.video_method is not None:
            out = getattr(self.model, self.video_method)(pixel_values[None].to(first.device, first.dtype))
            return (out if torch.is_tensor(out) else out[0])[0].float().cpu()
        chunks, hidden = [], self.feature_layer is not None
        for batch in pixel_values.split(self.batch_size):
            out = self.model(pixel_values=batch.to(first.device, first.dtype), output_hidden_states=hidden)
            chunks.append((out.hidden_states[self.feature_layer] if hidden else out.last_hidden_state).float().cpu())
        return torch.cat(chunks)  # [T, L, C]

    def __call__(self, value: str, row: Mapping[str, Any]) -> dict[str, Any]:
        frames, meta = load_video(value, self.sampler)  # [T, H, W, 3] uint8
        return {"features": self.encode(self.preprocessor(frames)), "timestamps": meta.timestamps}


# Default `media` of `SideChannelEncoder` per extractor kind: audio from the row's `side_channels["audio"]` file when
# it names one, else the video's own track; the high-frame-rate video channel samples the row's own video.
_DEFAULT_MEDIA: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "audio": lambda row: {"audio_path": a} if (a := (row.get("side_channels") or {}).get("audio")) else {},
    "video": lambda row: {},
}


class SideChannelEncoder:
    """A PAVE side-channel extractor run per row: [T, h, w, C] tokens, [T] timestamps (+ [T, h, w, 3] positions).

    Args:
        extractor: `AudioSideChannel`, `VideoSideChannel`, `MultiviewSideChannel` or `Depth3DSideChannel`
            (videoadapt.processors), called as `extractor(video_path, **media(row))`.
        media: row -> the extractor's media keyword arguments. Default for audio: `audio_path` = the row's
            `side_channels["audio"]` when present (else the video's own track); for video: none. Required for the
            multiview (`view_paths`) and 3D (`depth`, `intrinsics`, `poses`) extractors.
    """

    def __init__(self, extractor: Any, media: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None):
        if not callable(extractor) or not hasattr(extractor, "config_dict"):
            raise TypeError(f"`extractor` must be a side-channel extractor (SideChannelExtractor), got {extractor!r}.")
        kind = getattr(extractor, "kind", None)
        if media is None and kind not in _DEFAULT_MEDIA:
            raise ValueError(
                f"a {kind!r} extractor needs `media`: a function row -> keyword arguments, e.g. "
                "`media=lambda row: {'view_paths': [row['side_channels']['view1']]}`."
            )
        self.extractor, self.media = extractor, media or _DEFAULT_MEDIA[kind]
        module = getattr(extractor, "encoder", None)
        self._weights = _WeightsHash(module if isinstance(module, torch.nn.Module) else None)

    def config_dict(self) -> dict[str, Any]:
        return {"encoder": type(self).__name__, "extractor": self.extractor.config_dict(), "weights": self._weights(),
                "media": Hasher.hash(self.media)}  # fmt: skip

    def to(self, device: str | torch.device) -> "SideChannelEncoder":
        self.extractor.encoder.to(device)
        return self

    def __call__(self, value: str, row: Mapping[str, Any]) -> SideChannelFeatures:
        return self.extractor(value, **self.media(row))


class _FunctionEncoder:
    """A plain `fn(path) -> features or dict`, identified by `fingerprint` or datasets' hash of the function."""

    def __init__(self, fn: Callable[[str], Any], fingerprint: str | None):
        self.fn, self.fingerprint = fn, fingerprint

    def config_dict(self) -> dict[str, Any]:
        return {"encoder": "function", "fingerprint": self.fingerprint or Hasher.hash(self.fn)}

    def __call__(self, value: str, row: Mapping[str, Any]) -> Any:
        return self.fn(value)


# ----------------------------------------------------------------------------------------------- map function


def _as_numpy(value: Any, dtype: str) -> np.ndarray:
    """Float arrays (torch bfloat16 included) -> numpy `dtype`."""
    tensor = torch.as_tensor(value)
    return tensor.to(torch.float64 if dtype == "float64" else torch.float32).numpy().astype(dtype, copy=False)


def _output_arrays(result: Any, dtype: str, where: str) -> dict[str, Any]:
    """Encoder output -> {"features": [T, ...], "length": T, "timestamps": [T], "positions": [T, ...]} (if given)."""
    if isinstance(result, SideChannelFeatures):
        result = {"features": result.features, "timestamps": result.timestamps, "positions": result.positions}
    elif not isinstance(result, Mapping):
        result = {"features": result}
    if "features" not in result:
        raise ValueError(f"{where}: the encoder returned keys {sorted(result)}; a dict needs 'features'.")
    features = torch.as_tensor(result["features"])
    if not features.is_floating_point() or features.ndim < 1 or features.shape[0] < 1:
        shape = tuple(features.shape)
        raise ValueError(f"{where}: features must be a float array [T, ...], T >= 1, got {features.dtype} {shape}.")
    out = {"features": _as_numpy(features, dtype), "length": features.shape[0]}
    for name, cast in (("timestamps", "float64"), ("positions", "float32")):
        if result.get(name) is not None:
            out[name] = _as_numpy(result[name], cast)
            if out[name].shape[:1] != features.shape[:1]:
                raise ValueError(f"{where}: `{name}` must have T = {features.shape[0]} rows, got {out[name].shape}.")
    return out


class _ExtractRows:
    """The batched `datasets.map` function (a picklable object: it travels to the worker processes)."""

    def __init__(self, encoder: Any, column: str, output_column: str, dtype: str, devices: Sequence[Any] | None):
        self.encoder, self.column, self.output_column, self.dtype = encoder, column, output_column, dtype
        self.devices, self.placed = devices, False

    def __call__(self, batch: dict[str, list], indices: list[int], rank: int | None) -> dict[str, list]:
        if self.devices and not self.placed:  # in the worker: its rank picks the device
            self.encoder.to(self.devices[(rank or 0) % len(self.devices)])
            self.placed = True
        columns: dict[str, list] = {}
        for i, index in enumerate(indices):
            row = {name: values[i] for name, values in batch.items()}
            where = f"row {index}" + (f" (id {row['id']!r})" if "id" in row else "")
            value = row[self.column]
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where}: `{self.column}` must be a media path, got {value!r}; fix or drop the row.")
            arrays = _output_arrays(self.encoder(value, row), self.dtype, where)
            if columns and set(arrays) != set(columns):
                raise ValueError(f"{where}: the encoder returned {sorted(arrays)}, earlier rows {sorted(columns)}.")
            for name, array in arrays.items():
                columns.setdefault(name, []).append(array)
        out = self.output_column
        return {out if name == "features" else f"{out}_{name}": values for name, values in columns.items()}


# ----------------------------------------------------------------------------------------------- extraction


def _media_stats(dataset: Dataset, column: str) -> str:
    """Hash of (path, size, mtime) of every file the rows name in `column` and in `side_channels`."""
    paths = {v for v in dataset[column] if isinstance(v, str)}
    if "side_channels" in dataset.column_names:
        paths |= {v for media in dataset["side_channels"] if media for v in media.values() if isinstance(v, str)}
    stats = [[p, *((s := os.stat(p)).st_size, s.st_mtime_ns)] if os.path.exists(p) else [p] for p in sorted(paths)]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def _check_args(dataset: Dataset, encoder: Any, column: str, output_column: str, options: dict[str, Any]) -> None:
    if column not in dataset.column_names:
        raise ValueError(f"`column` must be one of the dataset's columns {dataset.column_names}, got {column!r}.")
    taken = [c for c in dataset.column_names if c == output_column or c.startswith(f"{output_column}_")]
    if taken:
        raise ValueError(
            f"the dataset already has column(s) {taken}; pass another `output_column` than {output_column!r} or drop "
            "them with `dataset.remove_columns(...)`."
        )
    if len(dataset) == 0:
        raise ValueError("`dataset` has no rows; nothing to extract.")
    _check_count("num_proc", options["num_proc"], "worker processes", optional=True)
    _check_count("batch_size", options["batch_size"], "rows per map batch")
    if options["dtype"] not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}, got {options['dtype']!r}.")
    devices = options["devices"]
    if devices is not None and (isinstance(devices, (str, torch.device)) or len(devices) == 0):
        raise ValueError(f"`devices` must be a non-empty list such as ['cuda:0', 'cuda:1'], got {devices!r}.")
    if devices is not None and not callable(getattr(encoder, "to", None)):
        raise ValueError("`devices` needs an encoder with a `.to(device)` method (FrameFeatureEncoder, ...).")
    if Path(options["cache_dir"]).exists() and not Path(options["cache_dir"]).is_dir():
        raise ValueError(f"`cache_dir` must be a folder, got the file {os.fspath(options['cache_dir'])!r}.")


def extract_features(
    dataset: Dataset | DatasetDict,
    encoder: FeatureEncoder | Callable[[str], Any],
    column: str,
    cache_dir: str | os.PathLike,
    *,
    output_column: str = "frame_features",
    num_proc: int | None = None,
    batch_size: int = 8,
    devices: Sequence[str | torch.device] | None = None,
    dtype: str = "float32",
    fingerprint: str | None = None,
    overwrite: bool = False,
) -> Dataset | DatasetDict:
    """Run `encoder` on the media path in `column` of every row and store the features next to the row.

    Args:
        dataset: rows (e.g. `load_manifest(...)`); a `DatasetDict` is processed split by split.
        encoder: a `FrameFeatureEncoder`, a `SideChannelEncoder`, any `FeatureEncoder`, or a function
            `fn(path) -> array [T, ...]` (or a dict with "features" and optional "timestamps").
        column: the column holding the media path ("video").
        cache_dir: where the Arrow files go (`cache_dir/<key>/`, with an `extraction.json` of the settings).
        output_column: name of the features column (not "features": manifests use it for feature-file paths);
            `_length`, `_timestamps`, `_positions` are appended to it for the other columns.
        num_proc: worker processes (`datasets.map`); each computes one contiguous shard, cached in its own file.
        batch_size: rows per `map` batch, also the rows held in memory before they are written.
        devices: worker r moves the encoder to `devices[r % len(devices)]` (["cuda:0", "cuda:1"]; repeat a device to
            share one GPU). Keep the model on the CPU until then: CUDA does not survive a fork.
        dtype: "float32" or "float16" storage of the features.
        fingerprint: identifies a plain function encoder (default: datasets' hash of the function).
        overwrite: recompute even if cached.

    Returns:
        The dataset with the new columns, memory-mapped from the cache files.
    """
    if isinstance(dataset, DatasetDict):
        kwargs = dict(output_column=output_column, num_proc=num_proc, batch_size=batch_size, devices=devices)
        kwargs.update(dtype=dtype, fingerprint=fingerprint, overwrite=overwrite)
        return DatasetDict({name: extract_features(split, encoder, column, cache_dir, **kwargs)
                            for name, split in dataset.items()})  # fmt: skip
    if not isinstance(dataset, Dataset):
        raise TypeError(f"`dataset` must be a datasets.Dataset or DatasetDict, got {type(dataset).__name__}.")
    if not callable(encoder):
        raise TypeError(f"`encoder` must be a FeatureEncoder or a function path -> features, got {encoder!r}.")
    encoder = encoder if isinstance(encoder, FeatureEncoder) else _FunctionEncoder(encoder, fingerprint)
    options = dict(num_proc=num_proc, batch_size=batch_size, dtype=dtype, devices=devices, cache_dir=cache_dir)
    _check_args(dataset, encoder, column, output_column, options)
    settings = dict(format=FORMAT, version=FORMAT_VERSION, dataset_fingerprint=dataset._fingerprint, column=column)
    settings.update(media=_media_stats(dataset, column), output_column=output_column, dtype=dtype)
    settings.update(encoder=encoder.config_dict())
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]
    folder = Path(cache_dir) / key
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = json.dumps({**settings, "rows": len(dataset)}, indent=2, sort_keys=True, default=str)
    atomic_write(folder / "extraction.json", lambda tmp: Path(tmp).write_text(record, encoding="utf-8"))
    logger.info(f"{output_column} of {len(dataset)} rows: cache {folder}")
    function, desc = _ExtractRows(encoder, column, output_column, dtype, devices), f"Extracting {output_column}"
    return dataset.map(
        function, batched=True, batch_size=batch_size, writer_batch_size=batch_size, with_indices=True, with_rank=True,
        num_proc=None if num_proc == 1 else num_proc,  # datasets would start a pool of one process
        cache_file_name=str(folder / f"{output_column}.arrow"), new_fingerprint=key, desc=desc,
    )  # fmt: skip


def unique_media(dataset: Dataset, column: str = "video") -> Dataset:
    """The first row of each distinct `column` value: extract once per video when many rows share one (QA pairs,
    dialogue turns), then look the features up by path."""
    if column not in dataset.column_names:
        raise ValueError(f"`column` must be one of the dataset's columns {dataset.column_names}, got {column!r}.")
    first: dict[Any, int] = {}
    for index, value in enumerate(dataset[column]):
        first.setdefault(value, index)
    return dataset.select(sorted(first.values()))
