"""The PAVE processor: text with `<video>` placeholders, video frames, and side channels into model inputs.

A PAVE model sees exactly as many video tokens as its base, so the placeholder count is the base family's:
LLaVA-OneVision T * ceil(g/2)^2 + 1 (one newline per video), LLaVA-NeXT-Video T * (g / stride)^2, Video-LLaVA
T * (g^2 + 1), with g = image_size // patch_size.

Side channels come in two ways: precomputed (`SideChannelFeatures`, a saved features file, or a [Tk, h, w, C]
tensor) or from raw media through an extractor (`side_channel_extractors={name: extractor}`, called on the
sample's video path). Either way they are padded along time into {"features": [B, Tk, h, w, C], "lengths": [B]}
(+ "positions" [B, Tk, h, w, 3] for 3D), the layout `Pave*ForConditionalGeneration` takes as `side_channels`.

Frames of a video path come from the `sampler` option: "uniform" (`num_frames`, the default), "avs" (Compact's
adaptive sampler, `num_frames` as its budget), "fps", a dict {"type": name, **arguments} or a `FrameSampler`.
`return_timestamps=True` adds "video_timestamps" (seconds of each frame; None for videos given as frames): pop it
before calling the model.

Shape legend: B videos, T frames, S frame side, Tk side-channel steps, h w tokens per step, C channels.
"""

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from videoadapt.processors.adaptive_sampling import make_sampler, sampler_to_dict
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import FrameSampler
from videoadapt.processors.side_channels import SideChannelFeatures
from videoadapt.processors.video_inputs import frames_array, video_list
from videoadapt.processors.video_io import load_video


__all__ = ["PaveProcessor", "collate_side_channels", "num_video_tokens"]

FAMILIES = ("llava_onevision", "llava_next_video", "video_llava")


def num_video_tokens(family: str, num_frames: int, grid: int, pool_stride: int = 2) -> int:
    """Video placeholder count of a base family for `num_frames` frames of g x g patches."""
    per_frame = {
        "llava_onevision": math.ceil(grid / 2) ** 2,
        "llava_next_video": (grid // pool_stride) ** 2,
        "video_llava": grid * grid + 1,
    }
    if family not in per_frame:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}.")
    return num_frames * per_frame[family] + (1 if family == "llava_onevision" else 0)


def _as_features(value: Any, name: str) -> SideChannelFeatures | torch.Tensor:
    if isinstance(value, SideChannelFeatures | torch.Tensor):
        return value
    if isinstance(value, str | os.PathLike):
        return SideChannelFeatures.load(value)
    raise TypeError(
        f"side channel {name!r}: expected `SideChannelFeatures`, a saved features file or a [Tk, h, w, C] tensor, "
        f"got {type(value).__name__}."
    )


def collate_side_channels(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
    """Per-sample {name: features} -> {name: {"features": [B, Tk, h, w, C], "lengths": [B], "positions"?}}."""
    names = list(samples[0]) if samples else []
    for i, sample in enumerate(samples):
        if list(sample) != names:
            raise ValueError(f"sample {i} has side channels {sorted(sample)}, sample 0 has {sorted(names)}.")
    batch = {}
    for name in names:
        items = [_as_features(sample[name], name) for sample in samples]
        features = [f.features if isinstance(f, SideChannelFeatures) else f for f in items]
        positions = [f.positions if isinstance(f, SideChannelFeatures) else None for f in items]
        shapes = {tuple(f.shape[1:]) for f in features}
        if len(shapes) != 1 or any(f.ndim != 4 for f in features):
            raise ValueError(f"side channel {name!r}: every sample must be [Tk, h, w, C] with the same h, w, C, got "
                             f"{[tuple(f.shape) for f in features]}.")  # fmt: skip
        lengths = torch.tensor([f.shape[0] for f in features])
        padded = features[0].new_zeros(len(features), int(lengths.max()), *features[0].shape[1:])
        for i, f in enumerate(features):
            padded[i, : f.shape[0]] = f
        entry = {"features": padded, "lengths": lengths}
        if any(p is not None for p in positions):
            if any(p is None for p in positions):
                raise ValueError(f"side channel {name!r}: some samples have 3D `positions` and some do not.")
            entry["positions"] = padded.new_zeros(*padded.shape[:-1], 3)
            for i, p in enumerate(positions):
                entry["positions"][i, : p.shape[0]] = p
        batch[name] = entry
    return batch


class PaveProcessor(ProcessorMixin):
    """Tokenizer + frame preprocessing + side channels for `Pave*ForConditionalGeneration`.

    Args:
        tokenizer: the base model's tokenizer (with a `video_token`).
        family: the base family (`llava_onevision`, `llava_next_video`, `video_llava`).
        frame_preprocessor: `FramePreprocessor.to_dict()` of the base's image processor settings.
        num_frames: frames sampled from a video path (the budget of "uniform" and "avs").
        grid: patches per side of the vision tower (image_size // patch_size).
        pool_stride: LLaVA-NeXT-Video's spatial pooling stride.
        sampler: "uniform", "avs", "fps", a dict {"type": name, **arguments} or a `FrameSampler` (saved as its dict).
    """

    def __init__(
        self,
        tokenizer=None,
        family: str = "llava_onevision",
        frame_preprocessor: dict | None = None,
        num_frames: int = 32,
        grid: int = 27,
        pool_stride: int = 2,
        chat_template: str | None = None,
        sampler: Any = "uniform",
    ):
        num_video_tokens(family, 1, grid, pool_stride)  # validates the family
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"`num_frames` must be an int >= 1, got {num_frames!r}.")
        self.sampler = make_sampler(sampler, num_frames=num_frames)
        self.family, self.num_frames, self.grid, self.pool_stride = family, num_frames, grid, pool_stride
        self.frame_preprocessor = frame_preprocessor or FramePreprocessor.for_model(family).to_dict()
        self._frames = FramePreprocessor.from_dict(self.frame_preprocessor)
        super().__init__(tokenizer, chat_template=chat_template)

    @classmethod
    def from_model(cls, model, tokenizer, image_processor=None, **kwargs: Any) -> "PaveProcessor":
        """A processor sized for `model` (its family and vision grid), preprocessing like `image_processor`."""
        config = model.config
        vision = config.vision_config
        frames = FramePreprocessor.from_image_processor(image_processor) if image_processor else None
        return cls(
            tokenizer,
            family=model.base_model_type,
            frame_preprocessor=frames.to_dict() if frames else None,
            grid=vision.image_size // vision.patch_size,
            pool_stride=getattr(config, "spatial_pool_stride", 2),
            **kwargs,
        )

    def video_token_count(self, num_frames: int) -> int:
        return num_video_tokens(self.family, num_frames, self.grid, self.pool_stride)

    @property
    def frame_sampler(self) -> FrameSampler:
        """The `FrameSampler` that picks the frames of a video path."""
        return self.sampler

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"sampler": sampler_to_dict(self.sampler)}

    def _frames_of(self, video: Any) -> tuple[np.ndarray, list[float] | None]:
        """Frames and their timestamps (None for frames given as an array)."""
        if isinstance(video, str | os.PathLike):
            frames, metadata = load_video(video, self.sampler)
            return frames, metadata.timestamps.tolist()
        return frames_array(video), None

    def __call__(
        self,
        text: str | list[str],
        videos: Any = None,
        side_channels: Sequence[Mapping[str, Any]] | None = None,
        side_channel_extractors: Mapping[str, Any] | None = None,
        return_tensors: str = "pt",
        return_timestamps: bool = False,
        **tokenizer_kwargs: Any,
    ) -> BatchFeature:
        """Text (one `<video>` per sample) + videos (paths or [T, H, W, 3] uint8 frames) + side channels.

        `side_channels[i]` maps patch names to precomputed features for sample i; names in
        `side_channel_extractors` are computed from sample i's video path instead. `return_timestamps` adds
        "video_timestamps": per video, the sampled frames' times in seconds (None for frames given as arrays).
        """
        texts = [text] if isinstance(text, str) else list(text)
        videos = video_list(videos)
        video_token = self.tokenizer.video_token
        if videos and len(videos) != len(texts) or not videos and any(video_token in t for t in texts):
            raise ValueError(f"pass one video per text: got {len(texts)} texts and {len(videos)} videos.")
        frames, timestamps = zip(*[self._frames_of(v) for v in videos]) if videos else ((), ())
        expanded = [] if frames else texts
        for t, clip in zip(texts, frames):
            if t.count(video_token) != 1:
                raise ValueError(f"each text needs exactly one {video_token!r}, got {t.count(video_token)} in {t!r}.")
            expanded.append(t.replace(video_token, video_token * self.video_token_count(len(clip))))
        data = dict(self.tokenizer(expanded, return_tensors=return_tensors, padding=True, **tokenizer_kwargs))
        if frames:
            lengths = {len(clip) for clip in frames}
            if len(lengths) != 1:
                raise ValueError(f"videos in one batch need the same frame count, got {sorted(lengths)}.")
            data["pixel_values_videos"] = torch.stack([self._frames(clip) for clip in frames])  # (B, T, 3, S, S)
        per_sample = [dict(s) for s in side_channels] if side_channels is not None else [{} for _ in texts]
        if len(per_sample) != len(texts):
            raise ValueError(f"`side_channels` needs one entry per text: {len(per_sample)} for {len(texts)}.")
        for name, extractor in (side_channel_extractors or {}).items():
            for sample, video in zip(per_sample, videos):
                if not isinstance(video, str | os.PathLike):
                    raise ValueError(f"side channel {name!r} from raw media needs video paths, got frames.")
                sample[name] = extractor(video)
        if any(per_sample):
            data["side_channels"] = collate_side_channels(per_sample)
        if return_timestamps:
            data["video_timestamps"] = list(timestamps)
        return BatchFeature(data, tensor_type=None)
