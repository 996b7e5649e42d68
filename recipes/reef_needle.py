"""REEF's needle task: does Spatial Token Filtering keep the few tokens that decide the answer?

Synthetic videos of `frames` frames: a noisy grey background with faint distractor blobs, and a small coloured
square (the needle) aligned to one patch cell, visible in only 2-3 frames at random positions. The question asks for
the needle's colour (4 colours, or "no" when the video has no square: 5 labels). A tiny REEF (random init, built here, nothing downloaded) is trained on it twice with
equal steps and data: keeping 25% of the spatial tokens, and keeping all of them. Reported: both accuracies (the
answer is the label token with the highest logit among the 5) and the needle recall of the spatial top-K (the share
of needle frames whose needle cell is among the kept tokens, at inference).

`bench/reef_needle.py` runs the full version; the test suite runs a short one.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from videoadapt.callbacks import perturbed_topk_modules
from videoadapt.configuration.configuration_reef import ReefConfig
from videoadapt.modeling_reef import ReefForConditionalGeneration
from videoadapt.testing.tiny_models import build_qformer_tokenizer, build_tiny_tokenizer


__all__ = [
    "BACKGROUND",
    "COLORS",
    "NeedleSettings",
    "clip_pixels",
    "make_needle_videos",
    "run_needle",
    "train_label_task",
]

logger = logging.get_logger(__name__)

COLORS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230), "yellow": (235, 220, 30)}
# The background is the CLIP normaliser's mean colour, so that after normalisation it carries no colour. With grey 128
# it points along the blue channel (128/255 = 0.50 > the blue mean 0.41), and InstructBLIP's post-layernorm is scale
# invariant: a blue needle's token then looks like the background's (at init the scorer ranked blue needles last in 3 of
# 4 seeds), the top-K never kept one, and since it only learns from what it keeps, blue was never learned (recall
# 0.0-0.06 after 800 steps, seeds 0-1, also with pastel colours brighter than the background; the other colours
# 0.95-1.0). With this background every colour reaches recall 1.0 within 200 steps (seed 0).
BACKGROUND = (123, 117, 104)
# A fifth answer, "no" (no square in the video), so that no colour can be answered by elimination: without it a
# model may learn three colours and answer the fourth when it finds none, and never needs to keep that needle.
LABELS = (*COLORS, "no")
IMAGE, PATCH = 32, 8  # 4 x 4 = 16 spatial tokens per frame
QUESTION = "what color is the square?"


@dataclass
class NeedleSettings:
    frames: int = 20
    train_videos: int = 512
    test_videos: int = 128
    # REEF's initial stage (its recipes train the MA-LMM-equivalent adapter first, see docs/fidelity.md): the all-token
    # model trains this long, REEF starts from it, and the all-token model continues for `steps` more (equal steps).
    # From scratch (0) a needle colour the language side cannot read yet costs loss when kept, so the scorer learns to
    # drop it and it is never learned (recall 0.0-0.34 for one colour in 4 of 6 runs, docs/benchmarks.md); 400 steps
    # were too few to learn every colour first. With 1600, seeds 0-1 reached accuracy 1.0, recall 1.0 / 0.98.
    initial_steps: int = 1600
    steps: int = 1600
    batch_size: int = 16
    lr: float = 1e-3
    keep_fraction: float = 0.25
    memory_bank_length: int = 10
    alpha: float = 0.7
    topk_num_samples: int = 500
    # A from-scratch scorer over 16 tokens needs exploration: with min-max scores in [0, 1], sigma = 0.05 almost never
    # lets a low-ranked needle into a noisy top-K, so it gets no gradient. sigma starts at 1 and anneals linearly to 0.
    topk_sigma: float = 1.0
    final_sigma: float = 0.05  # annealing floor: the estimator's variance grows as 1 / sigma
    init_std: float | None = None  # None: 1 / sqrt(width)
    vision_layers: int = 0  # patch embedding only: a token carries its own patch and nothing else
    # channels of the vision tower and Q-Former. 64 made the all-token model read every colour on seed 0 (at 32 it
    # never learned blue there) but REEF worse: recall 0.69-0.75 and accuracy 0.80-0.84 on seeds 0-2 (benchmarks.md)
    width: int = 32
    seed: int = 0
    progress: bool = False


def make_needle_videos(count: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(videos uint8 [count, frames, 32, 32, 3], labels [count], needle cell per frame [count, frames], -1 if none)."""
    rng = np.random.default_rng(seed)
    grid = IMAGE // PATCH
    videos = rng.normal(BACKGROUND, 20, size=(count, frames, IMAGE, IMAGE, 3))
    blobs = rng.integers(0, IMAGE - 4, size=(count, frames, 2))
    for i in range(count):  # faint grey distractors: structure that is not the answer
        for t in range(frames):
            y, x = blobs[i, t]
            videos[i, t, y : y + 4, x : x + 4] += rng.choice([-40, 40])
    labels = rng.integers(0, len(LABELS), size=count)  # label len(COLORS): no needle
    cells = np.full((count, frames), -1)
    colors = np.array(list(COLORS.values()), dtype=np.float64)
    for i in range(count):
        if labels[i] == len(COLORS):
            continue
        shown = rng.choice(frames, size=rng.integers(2, 4), replace=False)
        for t in shown:
            cell = rng.integers(0, grid * grid)
            y, x = divmod(int(cell), grid)
            videos[i, t, y * PATCH : (y + 1) * PATCH, x * PATCH : (x + 1) * PATCH] = colors[labels[i]]
            cells[i, t] = cell
    return np.clip(videos, 0, 255).astype(np.uint8), labels, cells


def _model(
    settings: NeedleSettings, keep: int | None, tokenizer, alpha: float, detach: bool
) -> ReefForConditionalGeneration:
    width = settings.width
    # std 1/sqrt(width) (Xavier-like) instead of BERT's 0.02, which is made for widths near 768: at width 32 a chain of
    # 0.02-initialised layers leaves the visual path's gradients near 1e-7 and training sits on long plateaus
    init = settings.init_std if settings.init_std else width**-0.5
    config = ReefConfig(
        vision_config=dict(image_size=IMAGE, patch_size=PATCH, hidden_size=width, intermediate_size=64,
                           num_hidden_layers=settings.vision_layers, num_attention_heads=4, initializer_range=init),
        qformer_config=dict(hidden_size=width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=256, max_position_embeddings=64, pad_token_id=0, initializer_range=init),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, initializer_range=init),
        num_query_tokens=4, video_token_index=tokenizer.video_token_id, initializer_range=init, num_frames=settings.frames,
        max_num_frames=max(settings.frames, 20), memory_bank_length=settings.memory_bank_length,
        alpha=alpha, num_selected_tokens=keep, keep_cls_token=False, detach_memory=detach,
        topk_num_samples=settings.topk_num_samples, topk_sigma=settings.topk_sigma,
    )  # fmt: skip
    torch.manual_seed(settings.seed)
    model = ReefForConditionalGeneration(config)
    with torch.no_grad():  # BLIP-2's init: InstructBLIP's zero query tokens only make sense for pre-trained weights
        model.query_tokens.normal_(0.0, config.qformer_config.initializer_range)
    return model


def clip_pixels(videos: np.ndarray) -> torch.Tensor:
    """uint8 videos [B, T, S, S, 3] -> CLIP-normalised float pixels [B, T, 3, S, S]."""
    x = torch.from_numpy(videos).float().div(255).permute(0, 1, 4, 2, 3)  # [B, T, 3, S, S]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    return (x - mean) / std


def train_label_task(
    model,
    logits_fn,
    videos: np.ndarray,
    labels: np.ndarray,
    steps: int,
    settings,
    name: str,
    extra: np.ndarray | None = None,
) -> None:
    """The synthetic tasks' training loop: AdamW (lr `settings.lr`, no weight decay) on cross-entropy over the answer
    logits `logits_fn(model, videos)[0]` of random batches of `settings.batch_size`; the sigma of every perturbed
    top-K decays linearly from its `sigma_max` over `steps`, floored at `settings.final_sigma` (as
    SigmaAnnealingCallback). Batches are drawn from a generator seeded with `settings.seed`. With `extra` (one
    value per video, e.g. which question it asks), `logits_fn(model, videos, extra)` gets the batch's values."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    topk_modules = perturbed_topk_modules(model)
    model.train()
    for step in tqdm(range(steps), desc=name, disable=not settings.progress):
        for module in topk_modules:
            module.sigma = max(settings.final_sigma, module.sigma_max * (1 - step / steps))
        rows = torch.randint(0, len(labels), (settings.batch_size,), generator=generator).numpy()
        logits, _ = logits_fn(model, videos[rows]) if extra is None else logits_fn(model, videos[rows], extra[rows])
        loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels[rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            logger.info(f"{name} step {step}: loss {loss.item():.3f}")


class _Task:
    """Training and evaluation on the needle data: the answer is the label token with the highest logit of the 5."""

    def __init__(self, settings: NeedleSettings, data, tokenizer, qformer_tokenizer):
        self.settings, self.data = settings, data
        self.label_ids = torch.tensor(
            [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + c))[0] for c in LABELS]
        )
        self.ids = torch.tensor([[tokenizer.video_token_id] * 4 + tokenizer(" " + QUESTION).input_ids])
        self.qformer_ids = qformer_tokenizer([QUESTION], return_tensors="pt").input_ids

    def _logits(self, model, videos: np.ndarray) -> tuple[torch.Tensor, dict]:
        batch = len(videos)
        inputs = dict(pixel_values=clip_pixels(videos), qformer_input_ids=self.qformer_ids.expand(batch, -1))
        return model(**inputs, input_ids=self.ids.expand(batch, -1)).logits[:, -1, self.label_ids], inputs

    def train(self, model, steps: int, name: str) -> None:
        """AdamW on every parameter; sigma of every perturbed top-K annealed linearly to 0 over the stage."""
        (train_x, train_y, _), _ = self.data
        train_label_task(model, self._logits, train_x, train_y, steps, self.settings, name)

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        """Accuracy, and the share of needle frames whose needle cell is among the kept tokens (hard top-K)."""
        _, (test_x, test_y, test_cells) = self.data
        model.eval()
        right = np.zeros(len(test_y), dtype=bool)  # per video
        hits = np.zeros(test_cells.shape, dtype=bool)  # per frame: its needle cell was kept
        selects = False  # the all-token model keeps every token and reports no selection
        for start in range(0, len(test_y), 32):
            chunk = slice(start, start + 32)
            logits, inputs = self._logits(model, test_x[chunk])
            right[chunk] = logits.argmax(-1).numpy() == test_y[chunk]
            selected = model.get_video_features(**inputs).selected_indices
            if selected is not None:
                selects = True
                cells = torch.as_tensor(test_cells[chunk])  # [b, T], -1 where the frame has no needle
                hits[chunk] = ((selected == cells[..., None]).any(-1) & (cells >= 0)).numpy()
        present = test_cells >= 0
        answers = [(name, test_y == i) for i, name in enumerate(LABELS) if (test_y == i).any()]
        return {
            "accuracy": float(right.mean()),
            "needle_recall": float(hits.sum() / present.sum()) if selects and present.any() else math.nan,
            "accuracy_by_answer": {name: round(float(right[rows].mean()), 4) for name, rows in answers},
            "needle_recall_by_answer": {
                name: round(float(hits[rows].sum() / present[rows].sum()), 4)
                for name, rows in answers
                if selects and present[rows].any()
            },
        }


def run_needle(settings: NeedleSettings | None = None, all_tokens: bool = True) -> dict:
    """REEF keeping `keep_fraction` of the tokens (alpha 0.7, perturbed top-K, sigma annealed) against the
    MA-LMM-equivalent model keeping all tokens (alpha 1), with equal steps and data.

    With `initial_steps` > 0 (the default), both start from an all-token model trained that long (REEF's initial
    stage), so each trains `initial_steps + steps` in all.
    """
    settings = settings or NeedleSettings()
    tokenizer, qformer_tokenizer = build_tiny_tokenizer(), build_qformer_tokenizer()
    data = (
        make_needle_videos(settings.train_videos, settings.frames, settings.seed),
        make_needle_videos(settings.test_videos, settings.frames, settings.seed + 1),
    )
    task = _Task(settings, data, tokenizer, qformer_tokenizer)
    keep = max(1, round(settings.keep_fraction * (IMAGE // PATCH) ** 2))
    initial = _model(settings, None, tokenizer, alpha=1.0, detach=True)  # MA-LMM: detached banks, hard merges
    reef = _model(settings, keep, tokenizer, alpha=settings.alpha, detach=False)
    if settings.initial_steps:
        task.train(initial, settings.initial_steps, "initial stage (all tokens)")
        reef.load_state_dict(initial.state_dict())
    task.train(reef, settings.steps, f"REEF (top-{keep})")
    topk = task.evaluate(reef)
    full = None
    if all_tokens:
        task.train(initial, settings.steps, "all tokens")
        full = task.evaluate(initial)
    return {
        "acc_topk25": topk["accuracy"],
        "acc_all_tokens": full["accuracy"] if full else None,
        "needle_recall": topk["needle_recall"],
        "acc_topk25_by_answer": topk["accuracy_by_answer"],
        "needle_recall_by_answer": topk["needle_recall_by_answer"],
        "kept_tokens": keep,
        "initial_steps": settings.initial_steps,
        "steps": settings.steps,
    }
