"""Training and evaluating from pre-extracted features: what a method's `vision_features` are, the encoder that
extracts exactly them, reading rows saved by `videoadapt extract`, and PAVE side channels from extracted columns.

Shape legend: T frames, (L_v, C) or (g, g, D) one frame's features, (T', h, w, C) a side channel.
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, load_from_disk

from videoadapt.processors.sampling import TIME_TOLERANCE, SegmentSampler
from videoadapt.processors.side_channels import SideChannelFeatures
from videoadapt.processors.video_io import load_video
from videoadapt.recipes.extract import FrameFeatureEncoder, _WeightsHash


__all__ = [
    "FEATURES_COLUMN",
    "FrameFeatures",
    "MethodFrameEncoder",
    "load_feature_rows",
    "side_channel_of_segment",
    "side_channels_from_columns",
]

FEATURES_COLUMN = "frame_features"  # `extract_features`' default output column


def _row_name(row: Mapping[str, Any]) -> str:
    return f"row {row.get('id')!r}"


def _float_tensor(value: Any) -> torch.Tensor:
    """An Arrow value (numpy array, tensor or nested lists) -> float32 tensor."""
    return torch.as_tensor(np.asarray(value, dtype=np.float32))


@dataclass(frozen=True)
class FrameFeatures:
    """What a method's `vision_features` are: the output of a frozen part of its model, computed per frame.

    tower: the module the features replace (`vision_model`, `model.vision_tower`); it must stay frozen.
    applied: modules inside `tower` that the model still applies to the features (trainable: REEF's recipes train
        `vision_model.post_layernorm`, so the features are taken before it).
    video_method: "<module>.<method>" run on a whole clip [1, T, 3, H, W] (Compact: the compressor's inputs);
        None: `tower`'s last hidden state before its final layer norm (`hidden_states[-1]`).
    """

    tower: str
    applied: tuple[str, ...] = ()
    video_method: str | None = None


class MethodFrameEncoder(FrameFeatureEncoder):
    """`FrameFeatureEncoder` that samples a row's segment (`timestamps` [start, end)) as `SFTCollator` decodes it,
    and keys its cache on the weights of `fingerprint` (the frozen tower) rather than of the whole `model`."""

    def __init__(self, model: torch.nn.Module, *args: Any, fingerprint: torch.nn.Module, **kwargs: Any):
        super().__init__(model, *args, **kwargs)
        self.fingerprint, self._weights = fingerprint, _WeightsHash(fingerprint)

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "segments": "row timestamps"}

    def __call__(self, value: str, row: Mapping[str, Any]) -> dict[str, Any]:
        sampler = self.sampler
        if row.get("timestamps"):
            start, end = row["timestamps"]
            sampler = SegmentSampler(self.sampler, float(start), float(end))
        frames, meta = load_video(value, sampler)  # [T, H, W, 3] uint8
        return {"features": self.encode(self.preprocessor(frames)), "timestamps": meta.timestamps}


def load_feature_rows(path: str | os.PathLike, split: str, column: str = FEATURES_COLUMN) -> Dataset:
    """Rows saved by `videoadapt extract` (`save_to_disk`): a DatasetDict's `split`, or a Dataset's rows of `split`
    (by their `split` column; all its rows when it has none), with `column` read as numpy arrays (the other columns
    as saved). Rows of another split only are refused: training or scoring on them would pass silently."""
    if not Path(path).is_dir():
        raise ValueError(
            f"features must be a folder written by `videoadapt extract --output` (or `Dataset.save_to_disk`), got "
            f"{os.fspath(path)!r}."
        )
    rows = load_from_disk(os.fspath(path))
    if isinstance(rows, DatasetDict):
        if split not in rows:
            raise ValueError(f"{os.fspath(path)} holds the splits {sorted(rows)}, not {split!r}; extract that split.")
        rows = rows[split]
    elif "split" in rows.column_names:  # one saved Dataset (`videoadapt extract --split ...`): its rows of `split`
        splits = rows["split"]
        present = sorted({name for name in splits if name is not None})
        if split not in present:
            raise ValueError(
                f"the rows of {os.fspath(path)} are of the split(s) {present} (their `split` column), not {split!r}; "
                f"extract the {split!r} rows (`videoadapt extract --split {split}`), or read a split they hold "
                "(`split=` of `videoadapt eval`)."
            )
        if len(present) > 1:
            rows = rows.select([i for i, name in enumerate(splits) if name == split])
    missing = [name for name in (column, f"{column}_length") if name not in rows.column_names]
    if missing:
        raise ValueError(
            f"the rows of {os.fspath(path)} have no column(s) {missing} (columns: {rows.column_names}); extract the "
            "features (`videoadapt extract`, `extract_features`) or name their column with `features_column=`."
        )
    return rows.with_format("numpy", columns=[column], output_all_columns=True)


def side_channel_of_segment(channel: SideChannelFeatures, row: Mapping[str, Any], name: str) -> SideChannelFeatures:
    """The steps of a row's side channel inside its `timestamps` segment [start, end) (the channel as is for rows
    without one), so that it spans the frames the collator decodes from that segment: PAVE aligns the side channel
    to the frames by position along the clip, not by time, so a whole-video channel would be stretched over the
    segment's frames."""
    if not row.get("timestamps"):
        return channel
    start, end = (float(t) for t in row["timestamps"])
    times = channel.timestamps
    keep = (times >= start - TIME_TOLERANCE) & (times < end - TIME_TOLERANCE)
    if not bool(keep.any()):
        raise ValueError(
            f"{_row_name(row)}: side channel {name!r} has no step in the row's segment `timestamps` = [{start}, {end}) "
            f"s (its {len(times)} steps are at {[round(float(t), 3) for t in times[:8]]} s ...); extract it from the "
            "row's video, or fix the row's `timestamps`."
        )
    positions = None if channel.positions is None else channel.positions[keep]
    return SideChannelFeatures(channel.kind, channel.features[keep], times[keep], positions)


def side_channels_from_columns(rows: Sequence[Mapping[str, Any]], column: str, kind: str, name: str) -> dict:
    """PAVE's processor argument from the rows' extracted columns: {"side_channels": [{name: SideChannelFeatures}]}."""
    features = []
    for row in rows:
        missing = [c for c in (column, f"{column}_timestamps") if row.get(c) is None]
        if missing:
            raise ValueError(
                f"{_row_name(row)} has no {missing}: PAVE's side channel {name!r} ({kind}) comes from the columns of "
                "`extract_features(rows, SideChannelEncoder(...), 'video', cache, output_column=...)`; extract them "
                "or name their column with `features_column=`."
            )
        positions = row.get(f"{column}_positions")
        channel = SideChannelFeatures(
            kind, _float_tensor(row[column]), torch.as_tensor(np.asarray(row[f"{column}_timestamps"], np.float64)),
            None if positions is None else _float_tensor(positions),
        )  # fmt: skip
        features.append({name: side_channel_of_segment(channel, row, name)})
    return {"side_channels": features}
