"""Models and training for the PAVE demo: the embedded base and audio encoder, Trainer runs, greedy evaluation.

The default base is a tiny LLaVA-OneVision (random init, built offline) that `pretrain_base` teaches video-only
QA about the visible content, so that it is a small "pre-trained video LLM". The audio encoder is a tiny random
Whisper encoder (see `build_audio_encoder` for why its init is wider than Whisper's default).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoTokenizer,
    ClapAudioModelWithProjection,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    WhisperConfig,
    WhisperFeatureExtractor,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import cached_file, logging

from videoadapt.metrics import Accuracy
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.recipes.pave_demo_data import VideoQACollator
from videoadapt.testing.tiny_models import build_tiny_tokenizer, num_video_tokens


__all__ = [
    "BaseSizes",
    "TrainConfig",
    "build_base_checkpoint",
    "build_audio_encoder",
    "evaluate_accuracy",
    "generate_answers",
    "load_audio_encoder",
    "make_collator",
    "pretrain_base",
    "train",
]

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """One Trainer run. `patch_learning_rate` applies to PAVE patch (fusion) weights; everything else trainable (the
    LoRA, or the whole model in pre-training) uses `learning_rate`. `scheduler`: a transformers scheduler name, after
    `warmup_steps` of linear warm-up."""

    steps: int
    batch_size: int
    learning_rate: float
    patch_learning_rate: float | None = None
    warmup_steps: int = 0
    seed: int = 0
    scheduler: str = "cosine"


# ------------------------------------------------------------------------------------------- base and encoder


def make_collator(base: str | os.PathLike, frames, side_channels=None, train: bool = True, num_frames: int = 4):
    """A `VideoQACollator` for `base`: its tokenizer and chat template, its video-token count, its image processor."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.chat_template is None:  # llava-hf checkpoints keep it beside the processor
        for name in ("chat_template.jinja", "chat_template.json"):
            path = cached_file(str(base), name, _raise_exceptions_for_missing_entries=False)
            if path:
                text = Path(path).read_text()
                tokenizer.chat_template = json.loads(text)["chat_template"] if name.endswith(".json") else text
                break
    config = AutoConfig.from_pretrained(base)
    if config.model_type != "llava_onevision":
        raise ValueError(f"the demo runs on a LLaVA-OneVision checkpoint, got a `{config.model_type}` one at {base}.")
    count = num_video_tokens(config, num_frames)
    preprocess = FramePreprocessor.from_image_processor(AutoImageProcessor.from_pretrained(base))
    return VideoQACollator(tokenizer, count, frames, preprocess, side_channels, train)


@dataclass(frozen=True)
class BaseSizes:
    """The embedded base: SigLIP vision tower + Qwen2 LLM, LLaVA-OneVision wiring, random init. The defaults give
    4 x 4 patches per frame, pooled to 2 x 2 video tokens, and a 64-wide, 2-layer LLM (133k parameters)."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    text_hidden: int = 64
    layers: int = 2
    heads: int = 4


def build_base_checkpoint(out: Path, sizes: BaseSizes, seed: int = 0) -> Path:
    """A random LLaVA-OneVision of `sizes` with the tiny test tokenizer, its image processor, saved to `out`."""
    tokenizer = build_tiny_tokenizer()
    side, layers = sizes.image_size, dict(num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads)
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=side, patch_size=sizes.patch_size,
                           hidden_size=sizes.vision_hidden, intermediate_size=2 * sizes.vision_hidden,
                           vision_use_head=False, **layers),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=sizes.text_hidden,
                         intermediate_size=2 * sizes.text_hidden, num_key_value_heads=sizes.heads // 2,
                         max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **layers),
        image_token_index=tokenizer.image_token_id, video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=[[side, side]],
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    square = {"height": side, "width": side}
    LlavaOnevisionImageProcessorPil(size=square, image_grid_pinpoints=[[side, side]], image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3).save_pretrained(out)  # fmt: skip
    return out


def pretrain_base(
    out: Path, rows: Sequence[Mapping[str, Any]], frames, config: TrainConfig, num_frames: int, sizes: BaseSizes
) -> Path:
    """Build a random LLaVA-OneVision and train all of it on video-only QA (`rows`); save it to `out`."""
    init = build_base_checkpoint(out.parent / f".{out.name}_init", sizes, seed=config.seed)
    torch.manual_seed(config.seed)
    model = AutoModelForImageTextToText.from_pretrained(init)
    collator = make_collator(init, frames, num_frames=num_frames)
    train(model, rows, collator, config, out.parent / f".{out.name}_trainer", name="base pre-training")
    model.save_pretrained(out)
    for name in os.listdir(init):  # tokenizer, image processor, chat template
        if not (out / name).exists() and name != "model.safetensors":
            shutil.copy(init / name, out / name)
    shutil.rmtree(init)
    return out


def build_audio_encoder(out: Path, seed: int = 0) -> Path:
    """A tiny random Whisper encoder for 2 s clips (80 mel bins, 200 frames) and its feature extractor, saved to `out`.

    Whisper's default init (std 0.02) leaves a random encoder dominated by its fixed sinusoidal positions, so its
    mean-pooled outputs for different tones have cosine similarity ~0.9995; with std 0.1 the spectrogram
    dominates and the four pitches separate (class centroids' cosine 0.6 to 0.8, between-class spread ~5 times the
    within-class spread, nearest-centroid accuracy 100%).
    """
    config = WhisperConfig(
        num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
        max_source_positions=100, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64,
        pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0, init_std=0.1,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = WhisperEncoder(config).eval()
    encoder.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, chunk_length=2).save_pretrained(out)
    return out


def load_audio_encoder(path: str | os.PathLike) -> tuple[torch.nn.Module, Any]:
    """(encoder, feature extractor) from a folder or Hub id: a saved `WhisperEncoder` (the demo's), the encoder of a
    full Whisper checkpoint, a CLAP checkpoint's audio tower with its projection, or an AST model."""
    config = AutoConfig.from_pretrained(path)
    if "WhisperEncoder" in (config.architectures or []):
        model = WhisperEncoder.from_pretrained(path)
    elif config.model_type == "clap":
        model = ClapAudioModelWithProjection.from_pretrained(path)
    else:
        model = AutoModel.from_pretrained(path)
        model = model.get_encoder() if config.is_encoder_decoder else model
    return model.eval(), AutoFeatureExtractor.from_pretrained(path)


# ----------------------------------------------------------------------------------------------------- training


class _LogLosses(TrainerCallback):
    """Trainer's logs through our logger (Trainer's own printer and progress bar are removed)."""

    def __init__(self, name: str):
        self.name = name

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            logger.info(f"  {self.name}: step {state.global_step:>4}/{state.max_steps}  loss {logs['loss']:.4f}")


def train(
    model: PreTrainedModel,
    rows: Sequence[Mapping[str, Any]],
    collator: VideoQACollator,
    config: TrainConfig,
    output_dir: Path,
    name: str,
) -> float:
    """Train the parameters of `model` that require grad with `transformers.Trainer`; returns the seconds taken."""
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=config.steps, per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate, warmup_steps=config.warmup_steps, lr_scheduler_type=config.scheduler,
        weight_decay=0.0, logging_steps=max(1, config.steps // 5), save_strategy="no", report_to="none",
        use_cpu=not torch.cuda.is_available(), seed=config.seed, data_seed=config.seed, remove_unused_columns=False,
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True,
    )  # fmt: skip
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    patch_lr = config.patch_learning_rate or config.learning_rate
    groups = [
        {"params": [p for n, p in trainable if ".patches." not in f".{n}"], "lr": config.learning_rate},
        {"params": [p for n, p in trainable if ".patches." in f".{n}"], "lr": patch_lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(list(rows)),
                      data_collator=collator, callbacks=[_LogLosses(name)], optimizers=(optimizer, None))  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    trainer.train()
    shutil.rmtree(output_dir, ignore_errors=True)
    model.eval()
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def generate_answers(model, rows: Sequence[Mapping[str, Any]], collator: VideoQACollator, batch_size: int = 40):
    """Greedy `generate` for every row: the decoded answers (stripped), in order."""
    model.eval()
    device = next(model.parameters()).device
    tokenizer, answers = collator.tokenizer, []
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        batch.pop("answers")
        batch = {k: _to(v, device) for k, v in batch.items()}
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1] :]
        answers += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def evaluate_accuracy(model, rows, collator, batch_size: int = 40) -> tuple[float, list[str]]:
    """Exact-match accuracy of the greedy answers (the shipped `Accuracy` metric) and the answers."""
    predictions = generate_answers(model, rows, collator, batch_size)
    references = [row["answer"] for row in rows]
    return Accuracy().compute(predictions=predictions, references=references)["accuracy"], predictions


def _to(value, device):
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to(v, device) for k, v in value.items()}
    return value
