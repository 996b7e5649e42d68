"""Data for the PAVE demo: a synthetic audio-visual QA set of real mp4 files, decoded frames, cached audio features,
and the collator that turns rows into model inputs.

Every video shows a coloured background with one to four white or black circles and plays one sine tone for its
whole length. The tone is one of four well separated pitches (jittered by a few percent, random loudness), and each
pitch signals a colour: "which color does the tone signal?" has the answer only in the audio. The picture is a
distractor that a video-only model cannot use: within a split every (tone, background colour) pair occurs equally
often, so answering with the visible background colour scores exactly chance. Silent videos of the same kind carry
the video-only questions (background and circle colour) that pre-train the base model.

Shape legend: B batch, T frames per video, H W frame size, K audio clips, C audio channels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.side_channels import SideChannelFeatures, extract_side_channel_features
from videoadapt.processors.synthetic import (
    PALETTE,
    ShapeSpec,
    ShotSpec,
    SyntheticVideoSpec,
    ToneSpec,
    write_synthetic_video,
)
from videoadapt.processors.video_io import load_video


__all__ = [
    "ANSWERS",
    "AUDIO_QUESTION",
    "TONE_HZ",
    "DataConfig",
    "VideoQACollator",
    "decode_frames",
    "load_audio_features",
    "make_dataset",
    "qa_rows",
]

TONE_HZ = (300.0, 600.0, 1200.0, 2400.0)  # an octave apart
BACKGROUNDS = ("red", "green", "blue", "yellow")
ANSWERS = BACKGROUNDS  # tone k (lowest first) -> the colour it signals; the base knows these words from pre-training
AUDIO_QUESTION = "which color does the tone signal?"
SHAPE_COLORS = ("white", "black")
VISUAL_QUESTIONS = {"background": "what color is the background?", "color": "what color are the circles?"}
_RGB = {**PALETTE, "white": (255, 255, 255), "black": (0, 0, 0)}
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class DataConfig:
    """Size of the synthetic set; the same config and seed give byte-identical files."""

    num_train: int = 160
    num_test: int = 80
    num_pretrain: int = 800  # silent videos for the base's video-only pre-training
    duration: float = 6.0
    fps: float = 4.0
    size: int = 64
    seed: int = 0


def _video_spec(
    config: DataConfig, index: int, background: int | None, label: int | None
) -> tuple[SyntheticVideoSpec, dict[str, Any]]:
    """Sample `index`: its circles depend on (seed, index); its background is given (or drawn when None); a tone
    of pitch class `label` plays unless it is None (silent pre-training videos)."""
    rng = np.random.default_rng([config.seed, index])
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS))) if background is None else background]
    color = SHAPE_COLORS[rng.integers(len(SHAPE_COLORS))]
    count = int(rng.integers(1, 5))
    radius, cell = round(0.15 * config.size, 1), config.size / 2
    shapes = []
    for quadrant in rng.permutation(4)[:count].tolist():  # one circle per quadrant: they never overlap
        centre = [(quadrant % 2 + 0.5) * cell, (quadrant // 2 + 0.5) * cell]
        start = tuple(round(c + float(rng.uniform(-0.25, 0.25)) * (cell - 2 * radius), 1) for c in centre)
        shapes.append(ShapeSpec("circle", _RGB[color], radius, start))
    tones = ()
    if label is not None:
        pitch = TONE_HZ[label] * float(rng.uniform(0.97, 1.03))
        tones = (ToneSpec(round(pitch, 2), 0.0, config.duration, round(float(rng.uniform(0.25, 0.6)), 3)),)
    spec = SyntheticVideoSpec(
        shots=(ShotSpec(PALETTE[background], tuple(shapes)),), width=config.size, height=config.size, fps=config.fps,
        duration=config.duration, keyframe_interval=max(1, round(config.fps)), tones=tones,
        audio_sample_rate=16000, audio_channels=1, frame_code=False, seed=config.seed,
    )  # fmt: skip
    content = {"background": background, "color": color, "circles": count}
    if tones:
        content["tone_hz"] = tones[0].frequency
    return spec, content


def _write(job: tuple[str, SyntheticVideoSpec]) -> None:
    path, spec = job
    write_synthetic_video(path, spec)
    Path(path).with_suffix(".json").unlink()  # the per-frame ground truth is not needed here


def make_dataset(config: DataConfig, root: str | os.PathLike, workers: int = 2) -> list[dict[str, Any]]:
    """Write the videos under `root` and a JSONL manifest (one row per video); reuse them if the config matches.

    Splits `train` and `test` (with a tone) and `pretrain` (silent). In the first two every (tone, background) pair
    occurs equally often when the split size is a multiple of 16. A row holds `video`, `split`, `label`, `answer`
    (None when silent) and the visible content (`background`, `color`, `circles`).
    """
    root = Path(root)
    manifest, header = root / MANIFEST, {"config": asdict(config), "format": 7}
    if manifest.is_file():
        lines = manifest.read_text().splitlines()
        rows = [json.loads(line) for line in lines[1:]]
        if json.loads(lines[0]) == header and all(Path(r["video"]).is_file() for r in rows):
            return rows
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([config.seed, 10**6])
    rows, jobs = [], []
    splits = [("train", config.num_train), ("test", config.num_test), ("pretrain", config.num_pretrain)]
    offset = 0
    for split, count in splits:
        n = len(ANSWERS)
        pairs = [(i % n, i // n % len(BACKGROUNDS)) for i in rng.permutation(count).tolist()]  # (tone, background)
        for i, (label, background) in enumerate(pairs):
            if split == "pretrain":
                label = background = None
            spec, content = _video_spec(config, offset + i, background, label)
            path = root / split / f"{split}_{i:04d}.mp4"
            path.parent.mkdir(exist_ok=True)
            jobs.append((str(path), spec))
            answer = None if label is None else ANSWERS[label]
            rows.append({"video": str(path.resolve()), "split": split, "label": label, "answer": answer, **content})
        offset += count
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write, jobs, chunksize=8))
    else:
        for job in jobs:
            _write(job)
    lines = [json.dumps(header), *(json.dumps(row) for row in rows)]
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, manifest)
    return rows


def qa_rows(rows: Sequence[Mapping[str, Any]], split: str, task: str) -> list[dict[str, Any]]:
    """Question/answer rows of one split: `task` is "audio" (the tone) or "visual" (background and circle colour)."""
    out = []
    for row in (r for r in rows if r["split"] == split):
        if task == "audio":
            out.append({"video": row["video"], "question": AUDIO_QUESTION, "answer": row["answer"]})
        else:
            out += [{"video": row["video"], "question": q, "answer": row[k]} for k, q in VISUAL_QUESTIONS.items()]
    return out


def decode_frames(rows: Sequence[Mapping[str, Any]], num_frames: int) -> dict[str, np.ndarray]:
    """Video path -> uint8 frames [T, H, W, 3], `num_frames` uniformly sampled (seek-based decoding)."""
    return {row["video"]: load_video(row["video"], num_frames=num_frames)[0] for row in rows}


def load_audio_features(rows: Sequence[Mapping[str, Any]], extractor: Any, cache_dir: str | os.PathLike):
    """Video path -> audio features [K, 1, 1, C], extracted offline into `cache_dir` (cached, with a progress bar)."""
    videos = [row["video"] for row in rows]
    files = extract_side_channel_features(extractor, videos, cache_dir)
    return {video: SideChannelFeatures.load(path).features for video, path in zip(videos, files)}


class VideoQACollator:
    """Rows {video, question, answer} -> model inputs: the prompt with one `<video>` expanded to the model's count.

    Training (`train=True`): right-padded `input_ids` = prompt + answer + eos, `labels` = -100 on the prompt and
    padding. Evaluation: left-padded prompts only (for `generate`), plus `answers`, which the caller pops.
    `side_channels` (name -> {video path -> features [K, 1, 1, C]}) become `side_channels={name: {"features":
    [B, K, 1, 1, C], "lengths": [B]}}`.
    """

    def __init__(
        self,
        tokenizer: Any,
        num_video_tokens: int,
        frames: Mapping[str, np.ndarray],
        preprocess: FramePreprocessor,
        side_channels: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        train: bool = True,
    ):
        self.tokenizer, self.num_video_tokens, self.frames, self.preprocess = (
            tokenizer,
            num_video_tokens,
            frames,
            preprocess,
        )
        self.side_channels, self.train = dict(side_channels or {}), train
        self.video_token = tokenizer.video_token if hasattr(tokenizer, "video_token") else "<video>"

    def prompt_ids(self, question: str) -> list[int]:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).rstrip(" ")
        text = text.replace(self.video_token, self.video_token * self.num_video_tokens, 1)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, prompt_ids: list[int], answer: str) -> list[int]:
        """The answer's tokens as they follow the prompt (a leading space unless the prompt ends in whitespace)."""
        last = self.tokenizer.decode(prompt_ids[-1:])
        text = answer if last[-1:].isspace() else " " + answer
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        prompts = [self.prompt_ids(row["question"]) for row in rows]
        pad = self.tokenizer.pad_token_id
        if self.train:
            answers = [self.answer_ids(p, row["answer"]) for p, row in zip(prompts, rows)]
            seqs = [p + a for p, a in zip(prompts, answers)]
            width = max(map(len, seqs))
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            labels = torch.tensor([[-100] * len(p) + a + [-100] * (width - len(p) - len(a))
                                   for p, a in zip(prompts, answers)])  # fmt: skip
            batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        else:
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            batch = {"input_ids": ids, "attention_mask": mask, "answers": [row["answer"] for row in rows]}
        batch["pixel_values_videos"] = torch.stack([self.preprocess(self.frames[row["video"]]) for row in rows])
        if self.side_channels:
            batch["side_channels"] = {name: _stack_side([table[row["video"]] for row in rows])
                                      for name, table in self.side_channels.items()}  # fmt: skip
        return batch


def _stack_side(features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero-pad [K_i, h, w, C] along K into [B, K, h, w, C] with lengths [B]."""
    lengths = torch.tensor([len(f) for f in features])
    out = features[0].new_zeros(len(features), int(lengths.max()), *features[0].shape[1:])
    for i, f in enumerate(features):
        out[i, : len(f)] = f
    return {"features": out, "lengths": lengths}
