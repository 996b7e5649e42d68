"""DynFocus redundancy estimation (Appendix A): the share of frames that repeat their neighbour (r_d) and of frames
unrelated to the question and answer (r_a), measured with a CLIP model on a seeded random sample of a manifest's
videos.

For one video with T sampled frames, L2-normalised CLIP image embeddings f_t and the text embedding g of
"question answer" (one token sequence):

    s_t  = cos(f_t, f_t+1), t = 1..T-1      r_d = #{t : minmax(s)_t  > 0.6} / (T - 1)
    s'_t = cos(f_t, g),     t = 1..T        r_a = #{t : minmax(s')_t < 0.4} / T

`minmax` rescales one video's own scores to [0, 1]. A video with several question/answer pairs gets the mean r_a
over its pairs. The dataset figures are the means over the sampled videos.

Shape legend: T frames of one video, C=3 channels, S frame side, D embedding size, Q question/answer pairs.
"""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.utils import logging

from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import FpsSampler, UniformSampler
from videoadapt.processors.video_io import load_video


__all__ = [
    "ManifestRecord",
    "RedundancyReport",
    "VideoRedundancy",
    "estimate_redundancy",
    "irrelevance_ratio",
    "load_clip",
    "min_max_normalize",
    "read_manifest",
    "repetition_ratio",
    "sample_videos",
]

logger = logging.get_logger(__name__)

MIN_RANGE = 1e-6  # scores spanning less than this are equal up to float error: min-max is skipped
FIELDS = ("video", "question", "answer")


@dataclass(frozen=True)
class ManifestRecord:
    """One manifest line: `row` (0-based, blank lines skipped), `video` as written, `path` resolved against the
    manifest's folder, and the question and answer."""

    row: int
    video: str
    path: str
    question: str
    answer: str


@dataclass(frozen=True)
class VideoRedundancy:
    """Figures of one sampled video: r_d (NaN below 2 frames), r_a (mean over its `num_questions` pairs)."""

    video: str
    path: str
    num_frames: int
    num_questions: int
    r_d: float
    r_a: float


@dataclass(frozen=True)
class RedundancyReport:
    """Dataset figures (`r_d`, `r_a`: means over `videos`, NaN-free videos only for r_d) and the settings used."""

    r_d: float
    r_a: float
    videos: tuple[VideoRedundancy, ...]
    num_manifest_videos: int
    seed: int
    fps: float | None
    num_frames: int | None
    similarity_threshold: float
    relevance_threshold: float

    @property
    def video_ids(self) -> tuple[str, ...]:
        """The sampled videos as written in the manifest, in manifest order."""
        return tuple(v.video for v in self.videos)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        out = asdict(self)
        out["video_ids"] = list(self.video_ids)
        out["videos"] = [{k: _json_float(x) for k, x in v.items()} for v in out["videos"]]
        return {k: _json_float(x) for k, x in out.items()}


def _json_float(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


# manifest


def _text_field(item: dict, name: str, line: int, path: str) -> str:
    value = item.get(name)
    ok = isinstance(value, str) if name == "video" else isinstance(value, (str, int, float))
    if not ok or isinstance(value, bool) or (name == "video" and not value):
        raise ValueError(
            f"{path} line {line}: field `{name}` must be a {'non-empty string' if name == 'video' else 'string'}, "
            f"got {value!r}. Each line needs {{'video': ..., 'question': ..., 'answer': ...}}."
        )
    return str(value)


def read_manifest(path: str | os.PathLike) -> list[ManifestRecord]:
    """Read a JSONL manifest (one object per line with `video`, `question`, `answer`; other fields ignored).

    Relative `video` paths are resolved against the manifest's folder.

    Raises:
        FileNotFoundError: no such manifest. ValueError: bad JSON, missing or non-string fields, no records.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path!r} does not exist or is not a file; pass a JSONL manifest.")
    root = Path(path).parent
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {line_number}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(item, dict):
                raise ValueError(f"{path} line {line_number}: must be a JSON object, got {type(item).__name__}.")
            video, question, answer = (_text_field(item, name, line_number, path) for name in FIELDS)
            resolved = os.path.normpath(root / video)  # an absolute `video` stays as it is
            records.append(ManifestRecord(len(records), video, resolved, question, answer))
    if not records:
        raise ValueError(f"manifest {path} has no records; add lines like {{'video': 'a.mp4', 'question': ..., ...}}.")
    return records


def sample_videos(records: Sequence[ManifestRecord], num_videos: int, seed: int) -> list[list[ManifestRecord]]:
    """Draw `num_videos` distinct videos (by resolved path) without replacement with `np.random.default_rng(seed)`;
    returns each video's records, videos in manifest order. Fewer videos than asked: all of them, with a warning."""
    if not isinstance(num_videos, int) or isinstance(num_videos, bool) or num_videos < 1:
        raise ValueError(f"`num_videos` must be an int >= 1, got {num_videos!r}; the paper uses 20.")
    groups: dict[str, list[ManifestRecord]] = {}
    for record in records:
        groups.setdefault(record.path, []).append(record)
    videos = list(groups.values())  # first-appearance order
    if num_videos >= len(videos):
        if num_videos > len(videos):
            logger.warning(f"asked for {num_videos} videos but the manifest has {len(videos)}; using all of them.")
        return videos
    picked = np.random.default_rng(seed).choice(len(videos), size=num_videos, replace=False)
    return [videos[i] for i in sorted(picked.tolist())]


# similarity ratios


def min_max_normalize(scores: torch.Tensor, min_range: float = MIN_RANGE) -> torch.Tensor:
    """(s - min) / (max - min) over the last axis; scores spanning less than `min_range` (all equal up to float
    error, e.g. a single score) are returned unchanged, so the threshold applies to the raw cosine."""
    low, high = scores.amin(-1, keepdim=True), scores.amax(-1, keepdim=True)
    span = high - low
    return torch.where(span < min_range, scores, (scores - low) / span.clamp_min(min_range))


def repetition_ratio(image_embeds: torch.Tensor, threshold: float = 0.6) -> float:
    """r_d of one video: share of consecutive-frame cosines [T-1] above `threshold` after min-max; NaN if T < 2."""
    if image_embeds.shape[0] < 2:
        return float("nan")
    f = F.normalize(image_embeds.double(), dim=-1)  # (T, D)
    similarities = (f[:-1] * f[1:]).sum(-1)  # (T-1,)
    return (min_max_normalize(similarities) > threshold).double().mean().item()


def irrelevance_ratio(image_embeds: torch.Tensor, text_embeds: torch.Tensor, threshold: float = 0.4) -> torch.Tensor:
    """r_a of one video per text: share of frame-text cosines [T] below `threshold` after min-max; [D] -> scalar,
    [Q, D] -> [Q]."""
    f = F.normalize(image_embeds.double(), dim=-1)  # (T, D)
    g = F.normalize(text_embeds.double(), dim=-1)  # (Q, D) or (D,)
    similarities = g @ f.T  # (Q, T) or (T,)
    return (min_max_normalize(similarities) < threshold).double().mean(-1)


# CLIP encoding


def _embeddings(output: Any, method: str) -> torch.Tensor:
    """A `get_*_features` result: the tensor itself, or the projected `pooler_output` (transformers >= 5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"`model.{method}` must return a tensor or an output with `pooler_output`, got {type(output)}.")


def _device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return (parameter.device, parameter.dtype) if parameter is not None else (torch.device("cpu"), torch.float32)


def _text_max_length(model: Any, tokenizer: Any) -> int:
    """The CLIP text tower's context (77 for OpenAI CLIP): config's `max_position_embeddings`, else the tokenizer's."""
    config = getattr(getattr(model, "config", None), "text_config", None)
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else 77


def _encode_frames(model: Any, pixel_values: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[T, C, S, S] -> [T, D] image embeddings, `batch_size` frames per forward pass."""
    device, dtype = _device_dtype(model)
    chunks = [
        _embeddings(model.get_image_features(pixel_values=chunk.to(device, dtype)), "get_image_features").float()
        for chunk in pixel_values.split(batch_size)
    ]
    return torch.cat(chunks).cpu()


def _encode_texts(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Q texts -> [Q, D] text embeddings; texts longer than the text tower's context are cut at the end."""
    max_length = _text_max_length(model, tokenizer)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    if max(lengths) > max_length:
        cut = sum(n > max_length for n in lengths)
        logger.warning(f"{cut} of {len(texts)} question+answer texts exceed {max_length} tokens; their ends are cut.")
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = _device_dtype(model)[0]
    inputs = {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    return _embeddings(model.get_text_features(**inputs), "get_text_features").float().cpu()


# entry points


def _check_arguments(model, batch_size, fps, num_frames, max_frames, thresholds) -> None:
    for method in ("get_image_features", "get_text_features"):
        if not callable(getattr(model, method, None)):
            raise TypeError(
                f"`model` must have `{method}` (a CLIPModel, SiglipModel, ...), got {type(model).__name__}. "
                "Load one with `load_clip(checkpoint)`."
            )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
    if (fps is None) == (num_frames is None):
        raise ValueError(
            f"pass exactly one of `fps` and `num_frames`, got fps={fps!r}, num_frames={num_frames!r}; "
            "use fps=None to sample `num_frames` frames uniformly."
        )
    if max_frames is not None and fps is None:
        raise ValueError(f"`max_frames` caps fps sampling only, got max_frames={max_frames!r} with `num_frames`.")
    for name, value in thresholds.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must be in [0, 1] (it applies to min-max normalised cosines), got {value!r}.")


def estimate_redundancy(
    manifest: str | os.PathLike,
    model: Any,
    tokenizer: Any,
    frame_preprocessor: FramePreprocessor | Any,
    *,
    num_videos: int = 20,
    seed: int = 0,
    fps: float | None = 1.0,
    num_frames: int | None = None,
    max_frames: int | None = None,
    similarity_threshold: float = 0.6,
    relevance_threshold: float = 0.4,
    separator: str = " ",
    batch_size: int = 32,
    progress: bool = True,
) -> RedundancyReport:
    """DynFocus Appendix A: r_d and r_a averaged over `num_videos` videos drawn from `manifest` with `seed`.

    Args:
        manifest: JSONL file, one `{"video", "question", "answer"}` object per line (see `read_manifest`).
        model: a CLIP-like model with `get_image_features` / `get_text_features` (e.g. `CLIPModel`), in eval mode.
        tokenizer: its tokenizer; question and answer are joined with `separator` into one text and cut to the
            text tower's context (77 tokens for CLIP).
        frame_preprocessor: a `FramePreprocessor`, or a transformers image processor (its settings are read off).
        num_videos, seed: how many distinct videos to draw, and the seed of the draw.
        fps / num_frames: frames at `fps` per second (capped to `max_frames`, uniformly), or `num_frames` uniformly
            spaced frames (pass fps=None).
        similarity_threshold / relevance_threshold: 0.6 and 0.4 in the paper.
        batch_size: frames per image forward pass. progress: show a tqdm bar over the videos.

    Raises:
        FileNotFoundError / ValueError: bad manifest or arguments. MediaError: a video cannot be read (names it).
    """
    thresholds = dict(similarity_threshold=similarity_threshold, relevance_threshold=relevance_threshold)
    _check_arguments(model, batch_size, fps, num_frames, max_frames, thresholds)
    sampler = FpsSampler(fps, max_frames) if fps is not None else UniformSampler(num_frames)
    if not isinstance(frame_preprocessor, FramePreprocessor):
        frame_preprocessor = FramePreprocessor.from_image_processor(frame_preprocessor)
    records = read_manifest(manifest)
    groups = sample_videos(records, num_videos, seed)
    results = []
    with torch.inference_mode():
        for group in tqdm(groups, desc="redundancy", unit="video", disable=not progress):
            frames, _ = load_video(group[0].path, sampler)  # (T, H, W, 3) uint8
            image_embeds = _encode_frames(model, frame_preprocessor(frames), batch_size)  # (T, D)
            text_embeds = _encode_texts(model, tokenizer, [r.question + separator + r.answer for r in group])
            r_d = repetition_ratio(image_embeds, similarity_threshold)
            if math.isnan(r_d):
                logger.warning(f"{group[0].path}: 1 frame sampled, no r_d; raise `fps` or use `num_frames` >= 2.")
            r_a = irrelevance_ratio(image_embeds, text_embeds, relevance_threshold).mean().item()
            results.append(VideoRedundancy(group[0].video, group[0].path, len(frames), len(group), r_d, r_a))
    r_ds = [v.r_d for v in results if not math.isnan(v.r_d)]
    return RedundancyReport(
        r_d=float(np.mean(r_ds)) if r_ds else float("nan"),
        r_a=float(np.mean([v.r_a for v in results])),
        videos=tuple(results),
        num_manifest_videos=len({r.path for r in records}),
        seed=seed,
        fps=fps,
        num_frames=num_frames,
        **thresholds,
    )


def load_clip(checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, frame_preprocessor) of a CLIP-like checkpoint (folder or Hub id), the model in eval mode
    on `device` (default: cuda if available); the image processor is loaded with the PIL backend (no torchvision)."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModel.from_pretrained(checkpoint).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    image_processor = AutoImageProcessor.from_pretrained(checkpoint, backend="pil")
    return model, tokenizer, FramePreprocessor.from_image_processor(image_processor)
