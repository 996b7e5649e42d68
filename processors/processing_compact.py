"""The Compact processor: text with one `<video>` per sample and videos into `CompactForConditionalGeneration` inputs.

The `<video>` placeholder expands to exactly the tokens the compressor produces for the video's T frames:
(T/f) * (g/f)^2 with g the feature grid and f the compression factor (`compact_video_tokens`; 128 for the paper's 32
frames, g = 16, f = 4). No `image_newline` token follows a Compact video. Frames come from a path (Compact's adaptive
video sampler AVS by default, a budget of `num_frames`; `sampler="uniform"` spreads them evenly) or as [T, H, W, 3]
uint8 frames (a numpy array or a torch tensor; a [B, T, H, W, 3] one holds B videos), used as given, and are
preprocessed like the base's (SigLIP) image processor. T must be a multiple of f: the compressor takes no remainder,
and the processor raises rather than dropping or repeating frames.

Shape legend: B videos, T frames, S frame side.
"""

import os
from typing import Any, Literal

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from videoadapt.configuration.configuration_compact import compact_video_tokens, multiples_near
from videoadapt.processors.adaptive_sampling import make_sampler, sampler_to_dict
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import FrameSampler
from videoadapt.processors.video_inputs import frames_array, video_list
from videoadapt.processors.video_io import load_video


__all__ = ["COMPACT_SAMPLERS", "CompactProcessor"]

# samplers that return exactly `num_frames` frames (any other would break the T % f rule for some videos)
COMPACT_SAMPLERS = ("uniform", "avs")
_COUNT_FIELDS = ("num_frames", "budget")  # where a sampler object declares its frame count (uniform, AVS)


def _declared_frames(sampler: FrameSampler) -> int | None:
    """The frame count a sampler object declares (`num_frames`, AVS's `budget`), None when it declares none."""
    for name in _COUNT_FIELDS:
        count = getattr(sampler, name, None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
    return None


class CompactProcessor(ProcessorMixin):
    """Tokenizer + frame sampling and preprocessing + the exact video-token count for Compact.

    Args:
        tokenizer: the LLM's tokenizer, with a `video_token`.
        frame_preprocessor: `FramePreprocessor.to_dict()`; default the LLaVA-OneVision preset (SigLIP, 384 px).
        num_frames: frames sampled from a video path (32 in the paper); a multiple of `compression_factor`.
        feature_grid: side g of the grid the compressor reads (`CompactConfig.feature_grid`, 16 in the paper).
        compression_factor: f, the compressor's downsampling of T, H and W (`CompactConfig.compression_factor`, 4).
        sampler: how frames are sampled from a path: "avs" (default: Compact's adaptive video sampler, shot
            boundaries and a budget of `num_frames` frames, `AdaptiveSampler`) or "uniform" (`num_frames` evenly
            spread); a dict {"type": "avs", **arguments} with the sampler's other arguments (e.g. "detector",
            "nms_window"); or a `FrameSampler` object that declares `num_frames` frames (`AdaptiveSampler(n)`,
            `UniformSampler(n)`, or any sampler with an int `num_frames` / `budget` equal to `num_frames`), saved as
            its dict. The frame count is always `num_frames`. Frames given as arrays are used as they are (no
            sampler runs: they carry no timestamps to sample from).
    """

    def __init__(
        self,
        tokenizer=None,
        frame_preprocessor: dict | None = None,
        num_frames: int = 32,
        feature_grid: int = 16,
        compression_factor: int = 4,
        sampler: Literal["uniform", "avs"] | dict | FrameSampler = "avs",
        chat_template: str | None = None,
    ):
        compact_video_tokens(num_frames, feature_grid, compression_factor)  # validates all three
        self.num_frames, self.feature_grid, self.compression_factor = num_frames, feature_grid, compression_factor
        self.sampler = sampler
        self._frame_sampler = self._build_sampler(sampler)
        self.frame_preprocessor = frame_preprocessor or FramePreprocessor.for_model("llava_onevision").to_dict()
        self._frames = FramePreprocessor.from_dict(self.frame_preprocessor)
        super().__init__(tokenizer, chat_template=chat_template)

    @classmethod
    def from_model(cls, model, tokenizer, image_processor=None, **kwargs: Any) -> "CompactProcessor":
        """A processor matching `model.config` (frames, feature grid, factor, image size) or the base's image
        processor. Keyword arguments (e.g. `num_frames`, `sampler="avs"`) override."""
        config = model.config
        if image_processor is not None:
            frames = FramePreprocessor.from_image_processor(image_processor).to_dict()
        else:  # the OneVision (SigLIP) preprocessing at the vision tower's resolution
            side = config.vision_config.image_size
            frames = {
                **FramePreprocessor.for_model("llava_onevision").to_dict(),
                "size": {"height": side, "width": side},
            }
        kwargs.setdefault("num_frames", config.num_frames)
        return cls(
            tokenizer,
            frame_preprocessor=frames,
            feature_grid=config.feature_grid,
            compression_factor=config.compression_factor,
            **kwargs,
        )

    @property
    def frame_sampler(self) -> FrameSampler:
        """The `FrameSampler` that picks the frames of a video path (`sampler` holds the saved option)."""
        return self._frame_sampler

    def to_dict(self) -> dict[str, Any]:
        """The processor's settings; a sampler object is saved as its dict, without the frame count (`num_frames`)."""
        option = self.sampler
        if not isinstance(option, str | dict):
            option = {k: v for k, v in sampler_to_dict(option).items() if k not in _COUNT_FIELDS}
        return super().to_dict() | {"sampler": option}

    def _build_sampler(self, sampler: str | dict | FrameSampler) -> FrameSampler:
        """The `FrameSampler` of a `sampler` option, returning exactly `num_frames` frames."""
        if not isinstance(sampler, str | dict) and isinstance(sampler, FrameSampler):
            count, n = _declared_frames(sampler), self.num_frames
            if count != n:
                declared = "declares no frame count" if count is None else f"takes {count}"
                raise ValueError(
                    f"`sampler` must return exactly `num_frames` = {n} frames per video (the video-token count and "
                    f"the compressor's T % {self.compression_factor} rule depend on it), got {sampler!r}, which "
                    f"{declared}; pass AdaptiveSampler({n}) or UniformSampler({n}) (or a name: 'avs', 'uniform')"
                    + ("." if count is None else f", or num_frames={count}.")
                )
            return sampler
        kind = sampler.get("type") if isinstance(sampler, dict) else sampler
        if kind not in COMPACT_SAMPLERS:
            raise ValueError(
                f"`sampler` must be one of {list(COMPACT_SAMPLERS)}, a dict {{'type': one of them, ...}} or a "
                f"`FrameSampler` of `num_frames` frames, got {sampler!r}; Compact needs exactly `num_frames` frames "
                "per video (e.g. sampler='avs')."
            )
        fixed = sorted({"num_frames", "budget"} & set(sampler)) if isinstance(sampler, dict) else []
        if fixed:
            raise ValueError(
                f"`sampler` must not set {fixed}: the frame count is the processor's `num_frames` "
                f"({self.num_frames}); pass num_frames=... instead."
            )
        return make_sampler(sampler, num_frames=self.num_frames)

    def video_token_count(self, num_frames: int | None = None) -> int:
        """Tokens a `num_frames`-frame video (default `self.num_frames`) expands to: (T/f) * (g/f)^2."""
        frames = self.num_frames if num_frames is None else num_frames
        return compact_video_tokens(frames, self.feature_grid, self.compression_factor)

    def _clip(self, video: Any) -> tuple[np.ndarray, list[float] | None]:
        """[T, H, W, 3] uint8 frames of a path (sampled) or an array, T a multiple of the compression factor, and
        their timestamps in seconds (None for an array)."""
        f, times = self.compression_factor, None
        if isinstance(video, str | os.PathLike):
            clip, metadata = load_video(video, self._frame_sampler)
            times = metadata.timestamps.tolist()
            where = f"the {self.sampler} sampler returned {len(clip)} frames of {os.fspath(video)!r}"
        else:
            clip = frames_array(video)
            where = f"a video of {len(clip)} frames was given"
        if len(clip) % f:
            raise ValueError(
                f"Compact needs a multiple of the compression factor {f} frames per video (the compressor divides T, "
                f"H and W by {f}), but {where}; pass {multiples_near(len(clip), f)} frames (drop or repeat frames, or "
                f"give the path and let the processor sample `num_frames` = {self.num_frames})."
            )
        return clip, times

    def __call__(
        self,
        text: str | list[str],
        videos: Any = None,
        return_tensors: str = "pt",
        return_timestamps: bool = False,
        **tokenizer_kwargs: Any,
    ) -> BatchFeature:
        """Texts with one `<video>` each + videos -> model inputs.

        `videos`: one video (a path, or [T, H, W, 3] uint8 frames as a numpy array or torch tensor), a [B, T, H, W, 3]
        array or tensor (B videos), or a list of paths / frames; one video per text.

        Returns input_ids / attention_mask (each `<video>` expanded to `video_token_count(T)` tokens) and, with
        videos, pixel_values_videos [B, T, 3, S, S]; with `return_timestamps`, "video_timestamps": per video the
        sampled frames' times in seconds (None for frames given as arrays; pop it before calling the model).
        """
        texts = [text] if isinstance(text, str) else list(text)
        videos = video_list(videos)
        token = self.tokenizer.video_token
        if (videos and len(videos) != len(texts)) or (not videos and any(token in t for t in texts)):
            raise ValueError(f"pass one video per text: got {len(texts)} texts and {len(videos)} videos.")
        loaded = [self._clip(v) for v in videos]
        clips, timestamps = [clip for clip, _ in loaded], [times for _, times in loaded]
        if len({len(c) for c in clips}) > 1:
            raise ValueError(f"videos in one batch need the same frame count, got {sorted({len(c) for c in clips})}.")
        expanded = [] if clips else texts
        for t, clip in zip(texts, clips):
            if t.count(token) != 1:
                raise ValueError(f"each text needs exactly one {token!r}, got {t.count(token)} in {t!r}.")
            expanded.append(t.replace(token, token * self.video_token_count(len(clip))))
        data = dict(self.tokenizer(expanded, return_tensors=return_tensors, padding=True, **tokenizer_kwargs))
        if clips:
            data["pixel_values_videos"] = torch.stack([self._frames(clip) for clip in clips])  # [B, T, 3, S, S]
        if return_timestamps:
            data["video_timestamps"] = timestamps
        return BatchFeature(data, tensor_type=None)
