"""DynFocus' event task: does Dynamic Selection keep the few events that hold the answer?

Synthetic videos of `events` scenes of `frames_per_event` frames each. A scene is a tinted, noisy background with
faint grey blobs that stay put for the whole scene, so T-DPC can find the scenes. In one or two scenes (the relevant
events) four small squares sit in the four corners, each aligned to one pooled cell and of a random colour (4
colours); the question names one corner ("what color is the up square?": up, right, down, left = top-left,
top-right, bottom-right, bottom-left) and the answer is that square's colour, or "no" in a fifth of the videos, which
have no squares (so that no colour can be answered by elimination).

Why four squares and a named corner: the coarse tokens every frame gets ("rods": a content token and a text-guided
context token, each a mixture over the frame) carry the colours present but not which corner holds which. With one
square per relevant scene (the first version of this task) they carried the answer's colour, the LLM answered some
colours from them, and Dynamic Selection got no gradient to keep those events (event recall 0.62-0.88 on seeds 1-2,
single colours kept 12-35% of the time yet answered). Here the key frames' fine tokens (16 pooled cells in raster order
+ 22 prototypes) are what tells the corners apart, for every colour alike.

A tiny DynFocus (random init, built here, nothing downloaded) is trained twice with equal steps and data:
- selected: T-DPC into L = `events` event prototypes, Dynamic Selection keeps K = ceil(keep_ratio * L) of them
  (perturbed top-K in training, sigma annealed; hard top-K at inference), key frames get 38 + 2 tokens, the others 2;
- all frames: every frame is its own event and is kept (L = K = T), so every frame gets 40 tokens.
Reported: both accuracies (the answer is the label token with the highest logit of the 5) and the event recall: the
share of needle videos whose every relevant scene holds a key frame (at inference).

`bench/dynfocus_events.py` runs the full version.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from videoadapt.configuration.configuration_dynfocus import DynFocusConfig
from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
from videoadapt.recipes.reef_needle import BACKGROUND, COLORS, clip_pixels, train_label_task
from videoadapt.testing.tiny_models import build_qformer_tokenizer, build_tiny_tokenizer


__all__ = ["CORNERS", "EventSettings", "make_event_videos", "question", "run_events"]


LABELS = (*COLORS, "no")
IMAGE, PATCH, POOLED = 32, 4, 16  # 8 x 8 patches, average-pooled to 4 x 4 cells of 8 x 8 pixels
CELL = 8  # a square fills one pooled cell
# Scene tints stay close to the CLIP mean colour. InstructBLIP's post-layernorm is scale invariant, so in this tiny tower
# (no ViT layers: tokens are linear in the pixels plus a position embedding) a tint of std 25 became a full-scale random
# direction per scene, as loud as the square: Dynamic Selection then reached event recall 0.1-0.4 (seed 0, 450-900
# steps); at std 8 the scenes stay apart (blobs and texture) and recall reached 0.99 in 800 steps (seed 0).
SCENE_TINT = 8.0
# The corners the question can name -> (row, column) of the pooled cell their square fills.
CORNERS = {"up": (0, 0), "right": (0, 3), "down": (3, 3), "left": (3, 0)}


def question(corner: str) -> str:
    return f"what color is the {corner} square?"


@dataclass
class EventSettings:
    events: int = 8
    frames_per_event: int = 2
    keep_ratio: float = 0.25  # K/L: 2 of 8 events (the paper's 0.8 keeps so much that selection barely matters)
    train_videos: int = 512
    test_videos: int = 128
    steps: int = 1200
    batch_size: int = 16
    lr: float = 1e-3
    topk_num_samples: int = 500
    # Unlike REEF's needle task (sigma 1 -> 0.05), sigma starts at 0.2: with near-random early selection (sigma 1 over
    # min-max scores of 8 events) the LLM learns to answer from the coarse tokens every frame has, and the selection
    # then gets little gradient (event recall 0.1-0.2 after 900 steps, seed 0); from 0.2 it rose to 0.33 at 450 steps.
    topk_sigma: float = 0.2
    final_sigma: float = 0.05
    # > 0: first train this long with every event kept (K = L: each event's key frame gets its fine tokens), so that
    # the language side learns to read the corners before Dynamic Selection chooses (as REEF's needle task does with
    # its initial all-token stage); the all-frames model then trains `initial_steps + steps` too.
    initial_steps: int = 0
    seed: int = 0
    progress: bool = False

    @property
    def frames(self) -> int:
        return self.events * self.frames_per_event


def make_event_videos(
    count: int, settings: EventSettings, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(videos uint8 [count, T, 32, 32, 3], labels [count], relevant bool [count, events]: scenes with the squares,
    asked [count]: the index in `CORNERS` of the corner the question names)."""
    rng = np.random.default_rng(seed)
    events, per = settings.events, settings.frames_per_event
    videos = np.empty((count, events, per, IMAGE, IMAGE, 3))
    labels = rng.integers(0, len(LABELS), size=count)
    asked = rng.integers(0, len(CORNERS), size=count)
    relevant = np.zeros((count, events), dtype=bool)
    palette = np.array(list(COLORS.values()), dtype=np.float64)
    for i in range(count):
        for e in range(events):
            scene = rng.normal(BACKGROUND, SCENE_TINT, size=3)[None, None]  # a faint tint per scene
            scene = scene + rng.normal(0, 6, size=(IMAGE, IMAGE, 1))  # the scene's own texture
            for _ in range(3):  # faint grey blobs: structure that is not the answer
                y, x = rng.integers(0, IMAGE - 6, size=2)
                scene[y : y + 6, x : x + 6] += rng.choice([-35, 35])
            videos[i, e] = scene[None] + rng.normal(0, 6, size=(per, IMAGE, IMAGE, 3))  # per-frame noise
        if labels[i] == len(COLORS):
            continue
        colours = rng.integers(0, len(COLORS), size=len(CORNERS))
        colours[asked[i]] = labels[i]
        for e in rng.choice(events, size=rng.integers(1, 3), replace=False):
            for colour, (y, x) in zip(colours, CORNERS.values()):
                videos[i, e, :, y * CELL : (y + 1) * CELL, x * CELL : (x + 1) * CELL] = palette[colour]
            relevant[i, e] = True
    videos = np.clip(videos, 0, 255).astype(np.uint8).reshape(count, events * per, IMAGE, IMAGE, 3)
    return videos, labels, relevant, asked


def _model(settings: EventSettings, all_frames: bool, tokenizer) -> DynFocusForConditionalGeneration:
    width = 32
    init = width**-0.5  # as in the REEF needle task: BERT's 0.02 leaves the visual path's gradients near 1e-7
    events = settings.frames if all_frames else settings.events
    config = DynFocusConfig(
        vision_config=dict(image_size=IMAGE, patch_size=PATCH, hidden_size=width, intermediate_size=64,
                           num_hidden_layers=0, num_attention_heads=4, initializer_range=init),
        qformer_config=dict(hidden_size=width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=256, max_position_embeddings=64, pad_token_id=0, initializer_range=init),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         initializer_range=init),
        num_query_tokens=4, video_token_index=tokenizer.video_token_id, initializer_range=init,
        num_pooled_tokens=POOLED, num_events=events, event_keep_ratio=1.0 if all_frames else settings.keep_ratio,
        event_knn=max(1, settings.frames_per_event - 1), topk_num_samples=settings.topk_num_samples,
        topk_sigma=settings.topk_sigma,
    )  # fmt: skip
    torch.manual_seed(settings.seed)
    model = DynFocusForConditionalGeneration(config)
    with torch.no_grad():  # BLIP-2's init: InstructBLIP's zero query tokens only make sense for pre-trained weights
        model.query_tokens.normal_(0.0, init)
    return model


class _Task:
    """Training and evaluation on the event data: the answer is the label token with the highest logit of the 5."""

    def __init__(self, settings: EventSettings, data, tokenizer, qformer_tokenizer):
        self.settings, self.data, self.tokenizer = settings, data, tokenizer
        self.label_ids = torch.tensor(
            [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + c))[0] for c in LABELS]
        )
        self.question_ids = [tokenizer(" " + question(c)).input_ids for c in CORNERS]  # one length: one-token words
        self.qformer_ids = qformer_tokenizer([question(c) for c in CORNERS], return_tensors="pt").input_ids

    def _logits(self, model, videos: np.ndarray, asked: np.ndarray) -> tuple[torch.Tensor, dict]:
        count = model.config.num_video_tokens(videos.shape[1])
        ids = torch.tensor([[self.tokenizer.video_token_id] * count + self.question_ids[a] for a in asked])
        inputs = dict(pixel_values=clip_pixels(videos), qformer_input_ids=self.qformer_ids[torch.as_tensor(asked)])
        return model(**inputs, input_ids=ids).logits[:, -1, self.label_ids], inputs

    def train(self, model, name: str, steps: int) -> None:
        """AdamW on every parameter; sigma of the perturbed top-K annealed linearly to `final_sigma`."""
        (train_x, train_y, _, train_asked), _ = self.data
        train_label_task(model, self._logits, train_x, train_y, steps, self.settings, name, extra=train_asked)

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        """Accuracy and event recall (the share of needle videos whose every relevant scene holds a key frame, hard
        top-K), overall and per answer: a colour answered right but rarely kept is answered from the coarse tokens."""
        _, (test_x, test_y, test_relevant, test_asked) = self.data
        model.eval()
        right, kept = np.zeros(len(test_y), dtype=bool), np.zeros(len(test_y), dtype=bool)
        for start in range(0, len(test_y), 32):
            chunk = slice(start, start + 32)
            logits, inputs = self._logits(model, test_x[chunk], test_asked[chunk])
            right[chunk] = logits.argmax(-1).numpy() == test_y[chunk]
            key_scenes = model.get_video_features(**inputs).key_frames // self.settings.frames_per_event  # [b, K]
            relevant = torch.as_tensor(test_relevant[chunk])  # [b, events]
            held = torch.zeros_like(relevant).scatter_(1, key_scenes, True)
            kept[chunk] = (held | ~relevant).all(1).numpy()
        needle = test_relevant.any(1)
        return {
            "accuracy": float(right.mean()),
            "event_recall": float(kept[needle].mean()) if needle.any() else math.nan,
            "accuracy_by_answer": {  # answers present among the test videos only
                n: round(float(right[test_y == i].mean()), 3) for i, n in enumerate(LABELS) if (test_y == i).any()
            },
            "event_recall_by_answer": {
                n: round(float(kept[needle & (test_y == i)].mean()), 3)
                for i, n in enumerate(LABELS[:-1])
                if (needle & (test_y == i)).any()
            },
        }


def run_events(settings: EventSettings | None = None, all_frames: bool = True) -> dict:
    """DynFocus keeping K = ceil(keep_ratio * L) events against the same model feeding every frame at 40 tokens,
    with equal steps and data. Returns `acc_selected`, `acc_all_frames` (None without `all_frames`), `event_recall`
    and the token counts."""
    settings = settings or EventSettings()
    tokenizer, qformer_tokenizer = build_tiny_tokenizer(), build_qformer_tokenizer()
    data = (
        make_event_videos(settings.train_videos, settings, settings.seed),
        make_event_videos(settings.test_videos, settings, settings.seed + 1),
    )
    task = _Task(settings, data, tokenizer, qformer_tokenizer)
    selected = _model(settings, all_frames=False, tokenizer=tokenizer)
    if settings.initial_steps:
        keep_ratio, selected.config.event_keep_ratio = selected.config.event_keep_ratio, 1.0  # K = L: all kept
        task.train(selected, f"initial stage (all {settings.events} events kept)", settings.initial_steps)
        selected.config.event_keep_ratio = keep_ratio
    keep = selected.config.num_key_frames(settings.frames)
    task.train(selected, f"DynFocus (K={keep} of {settings.events})", settings.steps)
    ours = task.evaluate(selected)
    full_accuracy, full_tokens = None, None
    if all_frames:
        full = _model(settings, all_frames=True, tokenizer=tokenizer)
        task.train(full, "all frames at 40 tokens", settings.initial_steps + settings.steps)
        full_accuracy = task.evaluate(full)["accuracy"]
        full_tokens = full.config.num_video_tokens(settings.frames)
    return {
        "event_recall": ours["event_recall"],
        "acc_selected": ours["accuracy"],
        "event_recall_by_answer": ours["event_recall_by_answer"],
        "acc_selected_by_answer": ours["accuracy_by_answer"],
        "acc_all_frames": full_accuracy,
        "key_frames": keep,
        "events": settings.events,
        "frames": settings.frames,
        "tokens_selected": selected.config.num_video_tokens(settings.frames),
        "tokens_all_frames": full_tokens,
        "chance_event_recall": _chance_recall(settings.events, keep),
        "initial_steps": settings.initial_steps,
        "steps": settings.steps,
    }


def _chance_recall(events: int, keep: int) -> float:
    """Event recall of a uniformly random K of L, with one or two relevant events equally likely."""
    one = keep / events
    two = keep * (keep - 1) / (events * (events - 1))
    return (one + two) / 2
