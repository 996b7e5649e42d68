"""`make demo`: the whole offline media path on a generated video, ending in a real base model's `generate`.

    python -m videoadapt.recipes.demo --out demo_out

Writes a synthetic H.264 video with shot cuts and an audio tone, decodes 8 uniform frames by seeking,
cuts the audio into 2 s clips at 16 kHz, preprocesses the frames exactly as LLaVA-OneVision's image
processor would, runs a tiny random LLaVA-OneVision (built offline) on them, and saves a contact sheet
(PNG) of the frames it saw plus a JSON summary. (The PAVE demo replaces this once PAVE lands.)
"""

from __future__ import annotations

import argparse
import json
import logging as std_logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
from transformers.utils import logging

from videoadapt.processors.audio import clip_audio, load_audio
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.synthetic import random_spec, write_synthetic_video
from videoadapt.processors.video_io import load_video
from videoadapt.testing.tiny_models import build_tiny_checkpoint, tiny_video_inputs


__all__ = ["contact_sheet", "main", "run_demo"]

logger = logging.get_logger(__name__)


def contact_sheet(frames: np.ndarray, labels: list[str], columns: int = 4, width: int = 240) -> Image.Image:
    """Tile frames [N, H, W, 3] uint8 into one picture, each captioned with its label."""
    n, h, w, _ = frames.shape
    tile_h = round(h * width / w)
    rows = -(-n // columns)
    sheet = Image.new("RGB", (columns * width, rows * (tile_h + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (frame, label) in enumerate(zip(frames, labels)):
        x, y = (i % columns) * width, (i // columns) * (tile_h + 16)
        sheet.paste(Image.fromarray(frame).resize((width, tile_h), Image.Resampling.BILINEAR), (x, y + 16))
        draw.text((x + 4, y + 2), label, fill="black")
    return sheet


def run_demo(out: Path, num_frames: int = 8, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    video_path = out / "synthetic.mp4"
    truth = write_synthetic_video(video_path, random_spec(seed=seed, num_frames=300, num_cuts=3, with_audio=True))
    frames, meta = load_video(video_path, num_frames=num_frames)
    shots = [truth["frames"][i]["shot"] for i in meta.frame_indices.tolist()]
    labels = [f"#{i}  {t:.2f}s  shot {s}" for i, t, s in zip(meta.frame_indices, meta.timestamps, shots)]
    contact_sheet(frames, labels).save(out / "frames.png")

    waveform, audio_meta = load_audio(video_path)
    clips = clip_audio(waveform)

    checkpoint = build_tiny_checkpoint("llava_onevision", out / "tiny_llava_onevision", seed=seed)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    preprocess = FramePreprocessor.from_image_processor(AutoImageProcessor.from_pretrained(checkpoint))
    inputs = tiny_video_inputs("llava_onevision", checkpoint, num_frames=num_frames)
    inputs["pixel_values_videos"] = preprocess(frames)[None]  # (1, T, 3, S, S)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    summary = {
        "video": str(video_path),
        "duration_s": meta.duration,
        "total_frames": meta.total_frames,
        "sampled_indices": meta.frame_indices.tolist(),
        "sampled_shots": shots,
        "cut_frames": truth["cut_frames"],
        "audio_clips": list(clips.shape),
        "audio_source_rate": audio_meta.source_sample_rate,
        "pixel_values_videos": list(inputs["pixel_values_videos"].shape),
        "generated_text": answer,
        "contact_sheet": str(out / "frames.png"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    std_logging.basicConfig(level=std_logging.INFO, format="%(message)s")  # our loggers; transformers keeps its own
    summary = run_demo(args.out, args.num_frames, args.seed)
    for key, value in summary.items():
        logger.info(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
