"""The REEF processor: an instruction and a video into InstructBLIP-Video-style inputs for the online model.

REEF feeds the LLM only the last step's Q-Former queries, so every video becomes exactly `num_query_tokens` video
tokens whatever its length; they are prepended to the prompt as InstructBLIP does (before BOS). The Q-Former reads
the same instruction. Frames are sampled uniformly (`num_frames`, 20 in the QA tables) from a path, or given as
[T, H, W, 3] uint8 arrays, and preprocessed like the base's BLIP image processor. The `sampler` option picks the
frames of a path instead: "uniform" (default), "avs" (Compact's adaptive sampler, budget `num_frames`), "fps", a dict
{"type": name, **arguments} or a `FrameSampler`; `return_timestamps=True` adds "video_timestamps" (pop it before
calling the model).

Shape legend: B videos, T frames, S frame side, L instruction tokens.
"""

import os
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from videoadapt.processors.adaptive_sampling import make_sampler, sampler_to_dict
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import FrameSampler
from videoadapt.processors.video_inputs import frames_array, video_list
from videoadapt.processors.video_io import load_video


__all__ = ["REEF_PROMPTS", "ReefProcessor"]

# The supplement's prompts (Tables 1-3), keyed by task and dataset.
REEF_PROMPTS = {
    "breakfast": "What type of breakfast is shown in the video?",
    "activitynet_classification": "what is the person doing in the video?",
    "qa": "Question: {} Short Answer:",
    "caption": "what does the video describe?",
}


class ReefProcessor(ProcessorMixin):
    """Tokenizers + frame preprocessing for `ReefForConditionalGeneration`.

    Args:
        tokenizer: the LLM's tokenizer, with a `video_token`.
        qformer_tokenizer: the Q-Former's (BERT) tokenizer.
        frame_preprocessor: `FramePreprocessor.to_dict()`; default: the InstructBLIP-Video preset (224, CLIP norm).
        num_frames: frames sampled uniformly from a video path.
        num_query_tokens: the model's `num_query_tokens` (video tokens per video).
        prompt_template: a `str.format` template with one `{}` for the question (e.g. `REEF_PROMPTS["qa"]`), or None.
        sampler: "uniform", "avs", "fps", a dict {"type": name, **arguments} or a `FrameSampler` (saved as its dict).
    """

    def __init__(
        self,
        tokenizer=None,
        qformer_tokenizer=None,
        frame_preprocessor: dict | None = None,
        num_frames: int = 20,
        num_query_tokens: int = 32,
        prompt_template: str | None = None,
        chat_template: str | None = None,
        sampler: Any = "uniform",
    ):
        for name, value in (("num_frames", num_frames), ("num_query_tokens", num_query_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
        if prompt_template is not None and prompt_template.count("{}") != 1:
            raise ValueError(
                f"`prompt_template` must contain exactly one '{{}}' for the question, got {prompt_template!r}."
            )
        self.num_frames, self.num_query_tokens, self.prompt_template = num_frames, num_query_tokens, prompt_template
        self.sampler = make_sampler(sampler, num_frames=num_frames)
        self.frame_preprocessor = frame_preprocessor or FramePreprocessor.for_model("instructblip_video").to_dict()
        self._frames = FramePreprocessor.from_dict(self.frame_preprocessor)
        super().__init__(tokenizer, qformer_tokenizer, chat_template=chat_template)

    @classmethod
    def from_model(cls, model, tokenizer, qformer_tokenizer, image_processor=None, **kwargs: Any) -> "ReefProcessor":
        """A processor matching `model.config` (frames, query tokens, image size) or the base's image processor."""
        config = model.config
        if image_processor is not None:
            frames = FramePreprocessor.from_image_processor(image_processor).to_dict()
        else:  # BLIP preprocessing at the vision tower's resolution
            side = config.vision_config.image_size
            frames = {
                **FramePreprocessor.for_model("instructblip_video").to_dict(),
                "size": {"height": side, "width": side},
            }
        return cls(
            tokenizer,
            qformer_tokenizer,
            frame_preprocessor=frames,
            num_frames=kwargs.pop("num_frames", config.num_frames),
            num_query_tokens=config.num_query_tokens,
            **kwargs,
        )

    def video_token_count(self, num_frames: int | None = None) -> int:
        """Video tokens the LLM receives for a video of any length: the last step's `num_query_tokens` queries."""
        return self.num_query_tokens

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
        return frames_array(video), None

    def __call__(
        self,
        text: str | list[str],
        videos: Any = None,
        return_tensors: str = "pt",
        return_timestamps: bool = False,
        **tokenizer_kwargs: Any,
    ) -> BatchFeature:
        """Questions/instructions (one per video) + videos (paths or [T, H, W, 3] uint8) -> model inputs.

        Returns input_ids/attention_mask (Q video tokens, then the prompt), qformer_input_ids/qformer_attention_mask
        (the prompt) and pixel_values [B, T, 3, S, S] when videos are given; with `return_timestamps`,
        "video_timestamps": per video the frames' times in seconds (None for frames given as arrays).
        """
        texts = [text] if isinstance(text, str) else list(text)
        prompts = [self.prompt_template.format(t) if self.prompt_template else t for t in texts]
        loaded = [self._clip(v) for v in video_list(videos)]
        clips, timestamps = [clip for clip, _ in loaded], [times for _, times in loaded]
        if clips and len(clips) != len(prompts):
            raise ValueError(f"pass one video per text: got {len(prompts)} texts and {len(clips)} videos.")
        video_ids = self.tokenizer.convert_tokens_to_ids([self.tokenizer.video_token] * self.num_query_tokens)
        encoded = self.tokenizer(prompts, **tokenizer_kwargs)
        rows = [(video_ids if clips else []) + ids for ids in encoded["input_ids"]]
        padded = self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors=return_tensors)
        qformer = self.qformer_tokenizer(prompts, padding=True, return_tensors=return_tensors)
        data = {
            "input_ids": padded["input_ids"],
            "attention_mask": padded["attention_mask"],
            "qformer_input_ids": qformer["input_ids"],
            "qformer_attention_mask": qformer["attention_mask"],
        }
        if clips:
            lengths = {len(clip) for clip in clips}
            if len(lengths) != 1:
                raise ValueError(f"videos in one batch need the same frame count, got {sorted(lengths)}.")
            data["pixel_values"] = torch.stack([self._frames(clip) for clip in clips])  # [B, T, 3, S, S]
        if return_timestamps:
            data["video_timestamps"] = timestamps
        return BatchFeature(data, tensor_type=None)
