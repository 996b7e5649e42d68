"""The DynFocus processor: text with one `<video>` per sample, videos sampled at 1 fps, the Q-Former's instruction.

The `<video>` placeholder expands to exactly the tokens DynFocus produces for the video's T frames: 2 per frame plus
P + I = 38 per key frame, K = ceil(K/L * min(L, T)) key frames (`dynfocus_video_tokens`). Videos in one batch must
have the same number of frames (the model selects the same K for each). The `sampler` option replaces the 1 fps grid:
"fps" (default), "avs" (Compact's adaptive sampler, min(32, max_frames) frames), a dict {"type": name, **arguments}
(e.g. {"type": "uniform", "num_frames": 16}) or a `FrameSampler`; `return_timestamps=True` adds "video_timestamps" (pop it before
calling the model).

Shape legend: B videos, T frames, S frame side.
"""

import os
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from videoadapt.configuration.configuration_dynfocus import dynfocus_video_tokens
from videoadapt.processors.adaptive_sampling import make_sampler, sampler_to_dict
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import FpsSampler, FrameSampler
from videoadapt.processors.video_inputs import frames_array, video_list
from videoadapt.processors.video_io import load_video


__all__ = ["DynFocusProcessor"]


class DynFocusProcessor(ProcessorMixin):
    """Tokenizers + 1 fps frame sampling + the exact video-token count for `DynFocusForConditionalGeneration`.

    Args:
        tokenizer: the LLM's tokenizer, with a `video_token`.
        qformer_tokenizer: the Q-Former's tokenizer (the question conditions the coarse context tokens).
        frame_preprocessor: `FramePreprocessor.to_dict()`; default the InstructBLIP-Video preset (224, CLIP norm).
        fps: sampling rate of video paths (1 fps in the paper).
        max_frames: at most this many frames (uniform over the fps grid, or over a frame array, beyond it).
        token_budget: `DynFocusConfig.token_budget()` (events, keep ratio, fine tokens per key frame, key-frame rods).
        sampler: "fps", "avs", a dict {"type": name, **arguments} or a `FrameSampler` (saved as its dict).
    """

    def __init__(
        self,
        tokenizer=None,
        qformer_tokenizer=None,
        frame_preprocessor: dict | None = None,
        fps: float = 1.0,
        max_frames: int = 2000,
        token_budget: dict | None = None,
        chat_template: str | None = None,
        sampler: Any = "fps",
    ):
        FpsSampler(fps, max_frames)  # validates both
        self.sampler = make_sampler(sampler, fps=fps, max_frames=max_frames)
        count = getattr(self.sampler, "budget", getattr(self.sampler, "num_frames", None))
        if count is not None and count > max_frames:
            raise ValueError(
                f"`sampler` takes {count} frames but `max_frames` is {max_frames}; lower its budget or raise `max_frames`."
            )
        self.fps, self.max_frames = fps, max_frames
        self.token_budget = dict(token_budget or {"num_events": 25, "event_keep_ratio": 0.8,
                                                  "fine_tokens_per_key_frame": 38, "key_frame_rods": True})  # fmt: skip
        dynfocus_video_tokens(num_frames=1, **self.token_budget)  # validates the budget's keys
        self.frame_preprocessor = frame_preprocessor or FramePreprocessor.for_model("instructblip_video").to_dict()
        self._frames = FramePreprocessor.from_dict(self.frame_preprocessor)
        super().__init__(tokenizer, qformer_tokenizer, chat_template=chat_template)

    @classmethod
    def from_model(
        cls, model, tokenizer, qformer_tokenizer, image_processor=None, **kwargs: Any
    ) -> "DynFocusProcessor":
        """A processor matching `model.config` (token budget, max frames, image size) or the base's image processor."""
        config = model.config
        if image_processor is not None:
            frames = FramePreprocessor.from_image_processor(image_processor).to_dict()
        else:
            side = config.vision_config.image_size
            frames = {
                **FramePreprocessor.for_model("instructblip_video").to_dict(),
                "size": {"height": side, "width": side},
            }
        kwargs.setdefault("max_frames", config.max_frames)
        return cls(
            tokenizer, qformer_tokenizer, frame_preprocessor=frames, token_budget=config.token_budget(), **kwargs
        )

    def video_token_count(self, num_frames: int) -> int:
        return dynfocus_video_tokens(num_frames=num_frames, **self.token_budget)

    @property
    def frame_sampler(self) -> FrameSampler:
        """The `FrameSampler` that picks the frames of a video path."""
        return self.sampler

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"sampler": sampler_to_dict(self.sampler)}

    def _clip(self, video: Any) -> tuple[np.ndarray, list[float] | None]:
        """Frames and their timestamps (None for frames given as an array)."""
        if isinstance(video, str | os.PathLike):
            frames, metadata = load_video(video, self.sampler)
            return frames, metadata.timestamps.tolist()
        clip = frames_array(video)
        count = len(clip)
        if count > self.max_frames:  # uniform over the array, as `FpsSampler` caps a path's 1 fps grid
            clip = clip[np.arange(self.max_frames, dtype=np.int64) * count // self.max_frames]
        return clip, None

    def __call__(self, text: str | list[str], videos: Any = None, questions: str | list[str] | None = None,
                 return_tensors: str = "pt", return_timestamps: bool = False,
                 **tokenizer_kwargs: Any) -> BatchFeature:  # fmt: skip
        """Texts with one `<video>` each + videos (paths or [T, H, W, 3] uint8) -> model inputs.

        `questions` (default: the texts without the placeholder) go to the Q-Former. `return_timestamps` adds
        "video_timestamps": per video the frames' times in seconds (None for frames given as arrays).
        """
        texts = [text] if isinstance(text, str) else list(text)
        loaded = [self._clip(v) for v in video_list(videos)]
        clips, timestamps = [clip for clip, _ in loaded], [times for _, times in loaded]
        token = self.tokenizer.video_token
        if (clips and len(clips) != len(texts)) or (not clips and any(token in t for t in texts)):
            raise ValueError(f"pass one video per text: got {len(texts)} texts and {len(clips)} videos.")
        if len({len(c) for c in clips}) > 1:
            raise ValueError(f"videos in one batch need the same frame count, got {sorted({len(c) for c in clips})}.")
        expanded = [] if clips else texts
        for t, clip in zip(texts, clips):
            if t.count(token) != 1:
                raise ValueError(f"each text needs exactly one {token!r}, got {t.count(token)} in {t!r}.")
            expanded.append(t.replace(token, token * self.video_token_count(len(clip))))
        questions = [t.replace(token, "").strip() for t in texts] if questions is None else questions
        questions = [questions] if isinstance(questions, str) else list(questions)
        if len(questions) != len(texts):
            raise ValueError(
                f"pass one question per text (the Q-Former's instruction for that video): got {len(texts)} texts and "
                f"{len(questions)} questions; or leave `questions` out to use the texts without the placeholder."
            )
        data = dict(self.tokenizer(expanded, return_tensors=return_tensors, padding=True, **tokenizer_kwargs))
        qformer = self.qformer_tokenizer(questions, padding=True, return_tensors=return_tensors)
        data["qformer_input_ids"], data["qformer_attention_mask"] = qformer["input_ids"], qformer["attention_mask"]
        if clips:
            data["pixel_values"] = torch.stack([self._frames(clip) for clip in clips])  # [B, T, 3, S, S]
        if return_timestamps:
            data["video_timestamps"] = timestamps
        return BatchFeature(data, tensor_type=None)
