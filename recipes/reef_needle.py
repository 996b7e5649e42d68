"""REEF's needle task: does Spatial Token Filtering keep the few tokens that decide the answer?

Synthetic videos of `frames` frames: a noisy grey background with faint distractor blobs, and a small coloured
square (the needle) aligned to one patch cell, visible in only 2-3 frames at random positions. The question asks for
the needle's colour (4 labels). A tiny REEF (random init, built here, nothing downloaded) is trained on it twice with
equal steps and data: keeping 25% of the spatial tokens, and keeping all of them. Reported: both accuracies (the
answer is the label token with the highest logit among the 4) and the needle recall of the spatial top-K (the share
of needle frames whose needle cell is among the kept tokens, at inference).

`bench/reef_needle.py` runs the full version; the test suite runs a short one.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from transformers.utils import logging

from videoadapt.configuration.configuration_reef import ReefConfig
from videoadapt.modeling_reef import ReefForConditionalGeneration
from videoadapt.testing.tiny_models import build_qformer_tokenizer, build_tiny_tokenizer


__all__ = ["NeedleSettings", "make_needle_videos", "run_needle"]

logger = logging.get_logger(__name__)

COLORS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230), "yellow": (235, 220, 30)}
IMAGE, PATCH = 32, 8  # 4 x 4 = 16 spatial tokens per frame
QUESTION = "what color is the square?"


@dataclass
class NeedleSettings:
    frames: int = 20
    train_videos: int = 256
    test_videos: int = 128
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    keep_fraction: float = 0.25
    memory_bank_length: int = 10
    alpha: float = 0.7
    topk_num_samples: int = 100
    topk_sigma: float = 0.05
    vision_layers: int = 0  # patch embedding only: a token carries its own patch and nothing else
    seed: int = 0


def make_needle_videos(count: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(videos uint8 [count, frames, 32, 32, 3], labels [count], needle cell per frame [count, frames], -1 if none)."""
    rng = np.random.default_rng(seed)
    grid = IMAGE // PATCH
    videos = rng.normal(128, 20, size=(count, frames, IMAGE, IMAGE, 3))
    blobs = rng.integers(0, IMAGE - 4, size=(count, frames, 2))
    for i in range(count):  # faint grey distractors: structure that is not the answer
        for t in range(frames):
            y, x = blobs[i, t]
            videos[i, t, y : y + 4, x : x + 4] += rng.choice([-40, 40])
    labels = rng.integers(0, len(COLORS), size=count)
    cells = np.full((count, frames), -1)
    palette = np.array(list(COLORS.values()), dtype=np.float64)
    for i in range(count):
        shown = rng.choice(frames, size=rng.integers(2, 4), replace=False)
        for t in shown:
            cell = rng.integers(0, grid * grid)
            y, x = divmod(int(cell), grid)
            videos[i, t, y * PATCH : (y + 1) * PATCH, x * PATCH : (x + 1) * PATCH] = palette[labels[i]]
            cells[i, t] = cell
    return np.clip(videos, 0, 255).astype(np.uint8), labels, cells


def _model(settings: NeedleSettings, keep: int | None, tokenizer) -> ReefForConditionalGeneration:
    width = 32
    config = ReefConfig(
        vision_config=dict(image_size=IMAGE, patch_size=PATCH, hidden_size=width, intermediate_size=64,
                           num_hidden_layers=settings.vision_layers, num_attention_heads=4, initializer_range=0.02),
        qformer_config=dict(hidden_size=width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=256, max_position_embeddings=64, pad_token_id=0),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        num_query_tokens=4, video_token_index=tokenizer.video_token_id, num_frames=settings.frames,
        max_num_frames=max(settings.frames, 20), memory_bank_length=settings.memory_bank_length,
        alpha=settings.alpha, num_selected_tokens=keep, keep_cls_token=False,
        topk_num_samples=settings.topk_num_samples, topk_sigma=settings.topk_sigma,
    )  # fmt: skip
    torch.manual_seed(settings.seed)
    return ReefForConditionalGeneration(config)


def _pixels(videos: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(videos).float().div(255).permute(0, 1, 4, 2, 3)  # [B, T, 3, S, S]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    return (x - mean) / std


def _train_and_evaluate(settings: NeedleSettings, keep: int | None, data, tokenizer, qformer_tokenizer) -> dict:
    (train_x, train_y, _), (test_x, test_y, test_cells) = data
    model = _model(settings, keep, tokenizer)
    label_ids = torch.tensor([tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + c))[0] for c in COLORS])
    prompt = tokenizer(" " + QUESTION).input_ids
    ids = torch.tensor([[tokenizer.video_token_id] * 4 + prompt])
    q = qformer_tokenizer([QUESTION], return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    topk_modules = [m for m in model.modules() if hasattr(m, "sigma_max")]
    model.train()
    for step in range(settings.steps):
        for module in topk_modules:  # linear annealing of sigma to 0, as the reference code
            module.sigma = module.sigma_max * (1 - step / settings.steps)
        rows = torch.randint(0, len(train_y), (settings.batch_size,), generator=generator)
        batch = len(rows)
        logits = model(
            pixel_values=_pixels(train_x[rows.numpy()]), qformer_input_ids=q.input_ids.expand(batch, -1),
            input_ids=ids.expand(batch, -1),
        ).logits[:, -1, label_ids]  # fmt: skip
        loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(train_y[rows.numpy()]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            logger.info(f"keep={keep} step {step}: loss {loss.item():.3f}")
    model.eval()
    correct, hits, needle_frames = 0, 0, 0
    with torch.no_grad():
        for start in range(0, len(test_y), 32):
            chunk = slice(start, start + 32)
            pixels = _pixels(test_x[chunk])
            batch = len(pixels)
            inputs = dict(pixel_values=pixels, qformer_input_ids=q.input_ids.expand(batch, -1))
            features = model.get_video_features(**inputs)
            logits = model(**inputs, input_ids=ids.expand(batch, -1)).logits[:, -1, label_ids]
            correct += int((logits.argmax(-1).numpy() == test_y[chunk]).sum())
            if features.selected_indices is not None:
                cells = torch.as_tensor(test_cells[chunk])  # [b, T]
                present = cells >= 0
                kept = (features.selected_indices == cells[..., None]).any(-1)
                hits += int(kept[present].sum())
                needle_frames += int(present.sum())
    return {"accuracy": correct / len(test_y), "needle_recall": hits / needle_frames if needle_frames else math.nan}


def run_needle(settings: NeedleSettings | None = None) -> dict:
    """Train REEF keeping `keep_fraction` of the tokens and keeping all; return accuracies and needle recall."""
    settings = settings or NeedleSettings()
    tokenizer, qformer_tokenizer = build_tiny_tokenizer(), build_qformer_tokenizer()
    data = (
        make_needle_videos(settings.train_videos, settings.frames, settings.seed),
        make_needle_videos(settings.test_videos, settings.frames, settings.seed + 1),
    )
    keep = max(1, round(settings.keep_fraction * (IMAGE // PATCH) ** 2))
    topk = _train_and_evaluate(settings, keep, data, tokenizer, qformer_tokenizer)
    full = _train_and_evaluate(settings, None, data, tokenizer, qformer_tokenizer)
    return {
        "acc_topk25": topk["accuracy"],
        "acc_all_tokens": full["accuracy"],
        "needle_recall": topk["needle_recall"],
        "kept_tokens": keep,
        "steps": settings.steps,
    }
