"""Tiny random checkpoints of the real transformers video-LLM classes, built offline for tests and demos.

Each family is one row of `_FAMILIES`: a config builder (random weights of the real transformers class,
130k-200k parameters), the base model's image processor (PIL backend, no torchvision) and the placeholder
arithmetic `num_video_tokens(config, num_frames)`. A checkpoint folder holds what `from_pretrained` needs:
`config.json`, `model.safetensors`, `generation_config.json`, the tokenizer (trained here with `tokenizers`),
`preprocessor_config.json` and, for the InstructBLIP families, a `qformer_tokenizer/` subfolder as in the
Salesforce repos. Video processors are not saved: transformers' own ones need torchvision.

Shape legend: B batch, T frames, S image side, Q Q-Former query tokens.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    BaseImageProcessor,
    BlipImageProcessorPil,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipVideoConfig,
    InstructBlipVideoForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
)
from transformers.utils import logging


__all__ = [
    "COMPLETE_MARKER",
    "TINY_FAMILIES",
    "build_all_tiny_checkpoints",
    "build_qformer_tokenizer",
    "build_tiny_checkpoint",
    "build_tiny_tokenizer",
    "is_complete_checkpoint",
    "num_video_tokens",
    "tiny_video_inputs",
    "video_placeholder",
    "video_prompt",
]

logger = logging.get_logger(__name__)

TINY_FAMILIES = ("llava_onevision", "llava_next_video", "video_llava", "instructblip_video", "instructblip")
COMPLETE_MARKER = "tiny_checkpoint.json"  # written last; its presence means the folder is complete
FORMAT_VERSION = 2  # bump when the sizes or files change, so cached folders are rebuilt

IMAGE_SIZE, PATCH_SIZE = 32, 8  # 4x4 patches per frame
NUM_QUERY_TOKENS = 4
VOCAB_SIZE, QFORMER_VOCAB_SIZE = 512, 256
LAYERS = dict(num_hidden_layers=2, num_attention_heads=4)
VISION = dict(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=32, intermediate_size=64, **LAYERS)
TEXT = dict(hidden_size=64, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=1024, **LAYERS)
QFORMER = dict(hidden_size=32, intermediate_size=64, max_position_embeddings=128, pad_token_id=0, **LAYERS)
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
MEDIA_TOKENS = {"image_token": "<image>", "video_token": "<video>"}
QFORMER_SPECIAL_TOKENS = dict(
    pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
)
GRID_PINPOINTS = [[IMAGE_SIZE * h, IMAGE_SIZE * w] for h in (1, 2) for w in (1, 2)]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'video' %}<video>{% elif block['type'] == 'image' %}<image>"
    "{% else %}{{ block['text'] }}{% endif %}{% endfor %}{% endif %}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


# tokenizers


def _corpus() -> list[str]:
    """A few hundred words of question/answer text about coloured shapes, numbers, yes and no."""
    colors, shapes = ("red", "green", "blue", "yellow", "black", "white"), ("circle", "square", "triangle", "star")
    moves = ("moves left", "moves right", "moves up", "moves down", "stays still", "spins around")
    numbers = "zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10 11 12 20 30 100"
    lines = [f"a {c} {s} {m}." for c in colors for s in shapes for m in moves]
    lines += [f"what color is the {s}? the {s} is {c}." for c in colors for s in shapes]
    lines += [f"how many {s}s are there? there are {n} {s}s." for s in shapes for n in numbers.split()[:11]]
    lines += [f"is the {s} {c}? yes. is it {m}? no." for s, c, m in zip(shapes * 2, colors, moves)]
    lines += [numbers, "user: describe the video. assistant: a sound plays while the camera looks at the scene."]
    return lines


def build_tiny_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `_corpus()`, with pad/bos/eos/unk, `<image>`, `<video>` and a chat template."""
    specials = [*SPECIAL_TOKENS.values(), *MEDIA_TOKENS.values()]
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, extra_special_tokens=MEDIA_TOKENS, chat_template=CHAT_TEMPLATE, **SPECIAL_TOKENS
    )


def _wordpiece_vocab(
    vocab_size: int,
    specials: list[str],
    normalizer: normalizers.Normalizer,
    pre_tokenizer: pre_tokenizers.PreTokenizer,
) -> dict[str, int]:
    """Specials, every corpus character (word-initial and `##` continuation), then whole words by count.

    Built here instead of by `tokenizers.trainers.WordPieceTrainer`, whose vocabulary (token set and ids)
    changes from process to process: a model trained on its ids is then not reproducible across runs.
    """
    words = Counter(
        word for line in _corpus() for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    chars = sorted({char for word in words for char in word})
    pieces = [*specials, *chars, *(f"##{char}" for char in chars)]
    if len(pieces) > vocab_size:
        raise ValueError(f"vocab_size must be >= {len(pieces)} (specials + characters), got {vocab_size}.")
    whole = sorted((word for word in words if len(word) > 1), key=lambda word: (-words[word], word))
    return {token: index for index, token in enumerate(pieces + whole[: vocab_size - len(pieces)])}


def build_qformer_tokenizer(vocab_size: int = QFORMER_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """BERT-style lower-cased WordPiece (`[CLS] text [SEP]`) for the InstructBLIP Q-Former instruction.

    The vocabulary is a pure function of `_corpus()` and `vocab_size`: the same ids in every process.
    """
    specials = list(QFORMER_SPECIAL_TOKENS.values())  # [PAD] gets id 0, the Q-Former's pad_token_id
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    vocab = _wordpiece_vocab(vocab_size, specials, normalizer, pre_tokenizer)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=QFORMER_SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(specials)
    cls, sep = QFORMER_SPECIAL_TOKENS["cls_token"], QFORMER_SPECIAL_TOKENS["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **QFORMER_SPECIAL_TOKENS)


# configs: one builder per family


def _text_config(model_type: str, tokenizer: PreTrainedTokenizerFast, **overrides) -> dict:
    ids = {name: getattr(tokenizer, f"{name}_id") for name in ("pad_token", "bos_token", "eos_token")}
    return {"model_type": model_type, "vocab_size": len(tokenizer), **TEXT, **ids, **overrides}


def _llava_onevision_config(tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    # Qwen2 with tied embeddings, as in llava-onevision-qwen2-0.5b
    return LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", **VISION, "vision_use_head": False},
        text_config=_text_config("qwen2", tokenizer, tie_word_embeddings=True),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=GRID_PINPOINTS,
    )


def _llava_next_video_config(tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    return LlavaNextVideoConfig(
        vision_config={"model_type": "clip_vision_model", **VISION},
        text_config=_text_config("llama", tokenizer),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=GRID_PINPOINTS,
    )


def _video_llava_config(tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    return VideoLlavaConfig(
        vision_config={"model_type": "clip_vision_model", **VISION},
        text_config=_text_config("llama", tokenizer),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
    )


def _blip_parts(tokenizer: PreTrainedTokenizerFast) -> dict:
    """Vision, Q-Former and LLaMA sub-configs shared by both InstructBLIP families."""
    return {
        "vision_config": {**VISION, "initializer_range": 0.02},  # the default 1e-10 gives constant features
        "qformer_config": {**QFORMER, "vocab_size": QFORMER_VOCAB_SIZE},  # >= the WordPiece vocabulary size
        "text_config": _text_config("llama", tokenizer),
        "num_query_tokens": NUM_QUERY_TOKENS,
    }


def _instructblip_video_config(tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    return InstructBlipVideoConfig(**_blip_parts(tokenizer), video_token_index=tokenizer.video_token_id)


def _instructblip_config(tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    return InstructBlipConfig(**_blip_parts(tokenizer), image_token_index=tokenizer.image_token_id)


# image processors (PIL backend): class and the kwargs that shrink it to the tiny image size

_SQUARE = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
_CLIP_RESIZE = {"size": {"shortest_edge": IMAGE_SIZE}, "crop_size": _SQUARE}
# SigLIP normalisation, as in the llava-hf OneVision checkpoints
_ONEVISION_IMAGE = dict(size=_SQUARE, image_grid_pinpoints=GRID_PINPOINTS, image_mean=[0.5] * 3, image_std=[0.5] * 3)


# placeholder arithmetic: one function per family


def _patch_grid(config: PreTrainedConfig) -> int:
    return config.vision_config.image_size // config.vision_config.patch_size


def _num_video_tokens_llava_onevision(config: PreTrainedConfig, num_frames: int) -> int:
    """Patch grid g bilinearly pooled to ceil(g/2) per side, per frame, plus one `image_newline` per video."""
    return num_frames * math.ceil(_patch_grid(config) / 2) ** 2 + 1


def _num_video_tokens_llava_next_video(config: PreTrainedConfig, num_frames: int) -> int:
    """CLS dropped, then the `vision_resampler` pools g x g patches with kernel = stride = s: (g // s)^2 per frame."""
    if config.vision_feature_select_strategy != "default":
        raise ValueError(
            "LLaVA-NeXT-Video pools a square patch grid, so `vision_feature_select_strategy` must be 'default', "
            f"got {config.vision_feature_select_strategy!r}."
        )
    return num_frames * (_patch_grid(config) // config.spatial_pool_stride) ** 2


def _num_video_tokens_video_llava(config: PreTrainedConfig, num_frames: int) -> int:
    """The video tower keeps CLS and does not pool: g^2 + 1 per frame (257 for CLIP 224/14)."""
    return num_frames * (_patch_grid(config) ** 2 + 1)


def _num_video_tokens_instructblip(config: PreTrainedConfig, num_frames: int) -> int:
    """The Q-Former reads each frame on its own: `num_query_tokens` per frame (frames are images for InstructBLIP)."""
    return num_frames * config.num_query_tokens


_NUM_VIDEO_TOKENS: dict[str, Callable[[PreTrainedConfig, int], int]] = {
    "llava_onevision": _num_video_tokens_llava_onevision,
    "llava_next_video": _num_video_tokens_llava_next_video,
    "video_llava": _num_video_tokens_video_llava,
    "instructblipvideo": _num_video_tokens_instructblip,
    "instructblip": _num_video_tokens_instructblip,
}


def num_video_tokens(config: PreTrainedConfig, num_frames: int) -> int:
    """Number of placeholder tokens the model fills for one video of `num_frames` frames (any checkpoint size)."""
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be >= 1, got {num_frames}.")
    if config.model_type not in _NUM_VIDEO_TOKENS:
        raise ValueError(
            f"No video token count for model type {config.model_type!r}; known: {sorted(_NUM_VIDEO_TOKENS)}."
        )
    return _NUM_VIDEO_TOKENS[config.model_type](config, num_frames)


# the family table


@dataclass(frozen=True)
class _Family:
    """One tiny family: the real class, its builders, and how a video reaches it.

    `placeholder` names the tokenizer attribute whose token the model replaces (`video_token`, or `image_token`
    for InstructBLIP, which takes the frames as separate images). `pixel_key` is the forward argument.
    """

    model_class: type[PreTrainedModel]
    build_config: Callable[[PreTrainedTokenizerFast], PreTrainedConfig]
    image_processor: tuple[type[BaseImageProcessor], dict]
    placeholder: str = "video_token"
    pixel_key: str = "pixel_values_videos"
    qformer: bool = False


_BLIP = {"pixel_key": "pixel_values", "qformer": True}
_FAMILIES: dict[str, _Family] = {
    "llava_onevision": _Family(
        LlavaOnevisionForConditionalGeneration,
        _llava_onevision_config,
        (LlavaOnevisionImageProcessorPil, _ONEVISION_IMAGE),
    ),
    "llava_next_video": _Family(
        LlavaNextVideoForConditionalGeneration,
        _llava_next_video_config,
        (LlavaNextImageProcessorPil, {**_CLIP_RESIZE, "image_grid_pinpoints": GRID_PINPOINTS}),
    ),
    "video_llava": _Family(
        VideoLlavaForConditionalGeneration, _video_llava_config, (VideoLlavaImageProcessor, _CLIP_RESIZE)
    ),
    "instructblip_video": _Family(
        InstructBlipVideoForConditionalGeneration,
        _instructblip_video_config,
        (BlipImageProcessorPil, {"size": _SQUARE}),
        **_BLIP,
    ),
    "instructblip": _Family(
        InstructBlipForConditionalGeneration,
        _instructblip_config,
        (BlipImageProcessorPil, {"size": _SQUARE}),
        placeholder="image_token",
        **_BLIP,
    ),
}


def _family(family: str) -> _Family:
    if family not in _FAMILIES:
        raise ValueError(f"`family` must be one of {TINY_FAMILIES}, got {family!r}.")
    return _FAMILIES[family]


def video_placeholder(family: str) -> str:
    """Tokenizer attribute of the token a video expands into: `"video_token"`, or `"image_token"` (InstructBLIP)."""
    return _family(family).placeholder


# building and caching


def _marker(family: str, seed: int) -> dict:
    return {"family": family, "seed": seed, "format_version": FORMAT_VERSION, "transformers": transformers.__version__}


def is_complete_checkpoint(path: str | os.PathLike, family: str, seed: int = 0) -> bool:
    """Whether `path` holds a finished tiny checkpoint of `family` built with `seed` by this version."""
    marker = Path(path) / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text()) == _marker(family, seed)
    except (OSError, ValueError):  # missing or unreadable: not complete
        return False


def _write_checkpoint(family: str, out_dir: Path, seed: int) -> None:
    spec = _family(family)
    tokenizer = build_tiny_tokenizer()
    config = spec.build_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.model_class(config).eval()
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor_class, image_processor_kwargs = spec.image_processor
    image_processor_class(**image_processor_kwargs).save_pretrained(out_dir)
    if spec.qformer:
        build_qformer_tokenizer().save_pretrained(out_dir / "qformer_tokenizer")
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(_marker(family, seed), indent=2) + "\n")


def build_tiny_checkpoint(family: str, out_dir: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Build a tiny random checkpoint of `family` into `out_dir` (built in a temporary sibling, then renamed).

    Args:
        family: one of `TINY_FAMILIES`.
        out_dir: target folder. Unless `overwrite`, it must not exist, be empty, or hold an earlier tiny
            checkpoint; whatever it held is replaced.
        seed: weights are a pure function of `seed`; the global torch RNG state is left untouched.
        overwrite: replace `out_dir` whatever it holds.

    Returns:
        `out_dir` as a `Path`.
    """
    _family(family)
    out_dir = Path(out_dir)
    if not overwrite and out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / COMPLETE_MARKER).exists():
        raise FileExistsError(
            f"`out_dir` {out_dir} is not empty and holds no tiny checkpoint; pass a new folder or `overwrite=True`."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_checkpoint(family, tmp_dir, seed)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info(f"Built tiny {family} checkpoint (seed {seed}) in {out_dir} in {time.perf_counter() - start:.2f}s.")
    return out_dir


def build_all_tiny_checkpoints(root: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """`root/<family>` for every family: complete folders for `seed` are reused, anything else is rebuilt."""
    paths = {}
    for family in TINY_FAMILIES:
        path = Path(root) / family
        if is_complete_checkpoint(path, family, seed):
            logger.info(f"Reusing tiny {family} checkpoint in {path}.")
        else:
            build_tiny_checkpoint(family, path, seed, overwrite=True)
        paths[family] = path
    return paths


# inputs


def video_prompt(
    family: str, config: PreTrainedConfig, num_frames: int, text: str = "what color is the circle?"
) -> str:
    """`text` preceded by as many placeholder tokens as the model produces for a `num_frames`-frame video."""
    placeholder = MEDIA_TOKENS[video_placeholder(family)]
    return placeholder * num_video_tokens(config, num_frames) + " " + text


def tiny_video_inputs(
    family: str,
    checkpoint_dir: str | os.PathLike,
    num_frames: int = 2,
    batch: int = 1,
    seed: int = 0,
    text: str = "what color is the circle?",
) -> dict[str, torch.Tensor]:
    """Model kwargs for `batch` random videos of `num_frames` frames: ids, mask, pixels (+ Q-Former ids).

    Pixels are [B, T, 3, S, S], except InstructBLIP (frames as images): [B*T, 3, S, S], Q-Former ids per frame.
    """
    spec = _family(family)
    checkpoint_dir = Path(checkpoint_dir)
    config = spec.model_class.config_class.from_pretrained(checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    inputs = dict(tokenizer([video_prompt(family, config, num_frames, text)] * batch, return_tensors="pt"))
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, num_frames, 3, size, size, generator=generator)  # (B, T, 3, S, S)
    frames_as_images = spec.placeholder == "image_token"  # InstructBLIP: one Q-Former pass per frame
    inputs[spec.pixel_key] = pixels.flatten(0, 1) if frames_as_images else pixels
    if spec.qformer:
        qformer = AutoTokenizer.from_pretrained(checkpoint_dir / "qformer_tokenizer")
        rows = batch * num_frames if frames_as_images else batch
        encoded = qformer([text] * rows, return_tensors="pt")
        inputs["qformer_input_ids"], inputs["qformer_attention_mask"] = encoded.input_ids, encoded.attention_mask
    return inputs
