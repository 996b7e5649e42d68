"""Data for the PAVE demo: a synthetic audio-visual QA set of real mp4 files, decoded frames, cached audio features,
and the collator that turns rows into model inputs.

Every video shows a coloured background with one moving shape (distractor content, drawn independently of the
label) and plays one sine tone for its whole length. The audio question's answer is the tone's pitch class: one of
four well separated frequencies (jittered by a few percent, random loudness) named by a word. The visual questions
(background colour, shape) pre-train the base model; only the audio question is used for the patch.

Shape legend: B batch, T frames per video, H W frame size, S model image side, K audio clips, C audio channels.
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
from videoadapt.processors.synthetic import PALETTE, ShapeSpec, ShotSpec, SyntheticVideoSpec, ToneSpec
from videoadapt.processors.synthetic import write_synthetic_video
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

TONE_HZ = (300.0, 600.0, 1200.0, 2400.0)  # two octaves apart: 3 to 20 mel bins between neighbours
ANSWERS = ("one", "two", "three", "four")  # tone k (lowest first) -> answer word
AUDIO_QUESTION = "which of the four tones do you hear?"
BACKGROUNDS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
SHAPE_COLORS = ((255, 255, 255), (0, 0, 0), PALETTE["grey"], PALETTE["magenta"])
VISUAL_QUESTIONS = {"background": "what color is the background?", "shape": "what shape is in the video?"}
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class DataConfig:
    """Size of the synthetic set; the same config and seed give byte-identical files."""

    num_train: int = 160
    num_test: int = 80
    duration: float = 6.0
    fps: float = 4.0
    size: int = 64
    seed: int = 0


def _video_spec(config: DataConfig, index: int, label: int) -> tuple[SyntheticVideoSpec, dict[str, Any]]:
    """The video of sample `index`: its picture depends on (seed, index) only, its tone on the label too."""
    rng = np.random.default_rng([config.seed, index])
    background, kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))], SHAPES[rng.integers(len(SHAPES))]
    radius = round(float(rng.uniform(0.14, 0.22)) * config.size, 1)
    start = tuple(round(float(rng.uniform(radius, config.size - 1 - radius)), 1) for _ in range(2))
    velocity = tuple(round(float(v), 2) for v in rng.uniform(-3, 3, size=2))
    color = SHAPE_COLORS[rng.integers(len(SHAPE_COLORS))]
    shape = ShapeSpec(kind, color, radius, start, velocity)
    pitch = TONE_HZ[label] * float(rng.uniform(0.97, 1.03))
    tone = ToneSpec(round(pitch, 2), 0.0, config.duration, round(float(rng.uniform(0.25, 0.6)), 3))
    spec = SyntheticVideoSpec(
        shots=(ShotSpec(PALETTE[background], (shape,)),), width=config.size, height=config.size, fps=config.fps,
        duration=config.duration, keyframe_interval=max(1, round(config.fps)), tones=(tone,),
        audio_sample_rate=16000, audio_channels=1, frame_code=False, seed=config.seed,
    )  # fmt: skip
    return spec, {"background": background, "shape": kind, "tone_hz": tone.frequency}


def _write(job: tuple[str, SyntheticVideoSpec]) -> None:
    path, spec = job
    write_synthetic_video(path, spec)
    Path(path).with_suffix(".json").unlink()  # the per-frame ground truth is not needed here


def make_dataset(config: DataConfig, root: str | os.PathLike, workers: int = 2) -> list[dict[str, Any]]:
    """Write the videos under `root` and a JSONL manifest (one row per video); reuse them if the config matches.

    Labels are balanced within each split and shuffled; a row holds `video`, `split`, `label`, `answer` and the
    visible content (`background`, `shape`) for the visual pre-training questions.
    """
    root = Path(root)
    manifest, header = root / MANIFEST, {"config": asdict(config), "format": 1}
    if manifest.is_file():
        lines = manifest.read_text().splitlines()
        rows = [json.loads(line) for line in lines[1:]]
        if json.loads(lines[0]) == header and all(Path(r["video"]).is_file() for r in rows):
            return rows
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([config.seed, 10**6])
    rows, jobs = [], []
    for split, count, offset in (("train", config.num_train, 0), ("test", config.num_test, config.num_train)):
        labels = rng.permutation(np.arange(count) % len(ANSWERS))
        for i, label in enumerate(labels.tolist()):
            spec, content = _video_spec(config, offset + i, label)
            path = root / split / f"{split}_{i:04d}.mp4"
            path.parent.mkdir(exist_ok=True)
            jobs.append((str(path), spec))
            rows.append({"video": str(path.resolve()), "split": split, "label": label, "answer": ANSWERS[label],
                         **content})  # fmt: skip
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
    """Question/answer rows of one split: `task` is "audio" (the tone) or "visual" (background and shape)."""
    out = []
    for row in rows:
        if row["split"] != split:
            continue
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
        self.tokenizer, self.num_video_tokens, self.frames, self.preprocess = tokenizer, num_video_tokens, frames, preprocess
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
