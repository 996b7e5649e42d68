"""Tiny checkpoints: real classes loaded from disk, matching token ids, exact placeholder counts, determinism, cache."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoTokenizer,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipVideoConfig,
    InstructBlipVideoForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedModel,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
)

from videoadapt.testing import tiny_models
from videoadapt.testing.tiny_models import (
    COMPLETE_MARKER,
    TINY_FAMILIES,
    build_all_tiny_checkpoints,
    build_qformer_tokenizer,
    build_tiny_checkpoint,
    build_tiny_tokenizer,
    num_video_tokens,
    tiny_video_inputs,
    video_placeholder,
)


EXPECTED_CLASS = {
    "llava_onevision": LlavaOnevisionForConditionalGeneration,
    "llava_next_video": LlavaNextVideoForConditionalGeneration,
    "video_llava": VideoLlavaForConditionalGeneration,
    "instructblip_video": InstructBlipVideoForConditionalGeneration,
    "instructblip": InstructBlipForConditionalGeneration,
}
# InstructBLIP is an image model: a video reaches it as separate frames through `get_image_features`
FEATURE_METHOD = {"instructblip": "get_image_features"}
TEXT_KEYS = ("input_ids", "attention_mask")


def _load(tiny_checkpoints: dict[str, Path], family: str) -> PreTrainedModel:
    return AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family]).eval()


def _placeholder_id(model: PreTrainedModel, family: str) -> int:
    return getattr(model.config, f"{video_placeholder(family)}_id")


def _num_features(model: PreTrainedModel, family: str, inputs: dict[str, torch.Tensor]) -> int:
    """Total number of LLM-width feature vectors the model scatters into the placeholders."""
    method = getattr(model.base_model, FEATURE_METHOD.get(family, "get_video_features"))
    with torch.no_grad():
        features = method(**{k: v for k, v in inputs.items() if k not in TEXT_KEYS}).pooler_output
    assert features.shape[-1] == model.config.text_config.hidden_size
    return features.numel() // features.shape[-1]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_loads_real_classes_with_matching_token_ids(tiny_checkpoints, family):
    path = tiny_checkpoints[family]
    model = _load(tiny_checkpoints, family)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = model.config
    assert type(model) is EXPECTED_CLASS[family]
    assert getattr(tokenizer, f"{video_placeholder(family)}_id") == _placeholder_id(model, family)
    for name in ("image_token_id", "video_token_id"):
        if getattr(config, name, None) is not None:
            assert getattr(config, name) == getattr(tokenizer, name)
    assert config.text_config.vocab_size >= len(tokenizer)
    if family != "instructblip":
        assert tokenizer.video_token_id == config.video_token_id
    if family.startswith("instructblip"):
        qformer_tokenizer = AutoTokenizer.from_pretrained(path / "qformer_tokenizer")
        assert config.qformer_config.vocab_size >= len(qformer_tokenizer)
        assert qformer_tokenizer.pad_token_id == config.qformer_config.pad_token_id == 0


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_image_processor_matches_vision_size(tiny_checkpoints, family):
    image_processor = AutoImageProcessor.from_pretrained(tiny_checkpoints[family])
    size = _load(tiny_checkpoints, family).config.vision_config.image_size
    outputs = image_processor(Image.new("RGB", (40, 50), "red"), return_tensors="pt")
    pixel_values = outputs.get("pixel_values", outputs.get("pixel_values_images"))  # Video-LLaVA: legacy key
    assert tuple(pixel_values.shape[-3:]) == (3, size, size)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_forward_with_labels_and_generate(tiny_checkpoints, family):
    model = _load(tiny_checkpoints, family)
    inputs = tiny_video_inputs(family, tiny_checkpoints[family], num_frames=3, batch=2)
    input_ids = inputs["input_ids"]
    labels = input_ids.masked_fill(input_ids == _placeholder_id(model, family), -100)
    loss = model(**inputs, labels=labels).loss
    assert torch.isfinite(loss)
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == 2
    assert input_ids.shape[1] < generated.shape[1] <= input_ids.shape[1] + 3


@pytest.mark.parametrize("num_frames", [1, 4])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_num_video_tokens_equals_features_produced(tiny_checkpoints, family, num_frames):
    model = _load(tiny_checkpoints, family)
    inputs = tiny_video_inputs(family, tiny_checkpoints[family], num_frames=num_frames, batch=2)
    expected = num_video_tokens(model.config, num_frames)
    assert _num_features(model, family, inputs) == 2 * expected
    assert ((inputs["input_ids"] == _placeholder_id(model, family)).sum(-1) == expected).all()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_one_placeholder_too_many_is_rejected(tiny_checkpoints, family):
    model = _load(tiny_checkpoints, family)
    inputs = tiny_video_inputs(family, tiny_checkpoints[family], num_frames=2)
    extra = torch.full((1, 1), _placeholder_id(model, family))
    inputs["input_ids"] = torch.cat([extra, inputs["input_ids"]], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with pytest.raises((ValueError, RuntimeError)):  # LLaVA: count check; InstructBLIP: masked_scatter too short
        model(**inputs)


@pytest.mark.parametrize(
    ("config", "per_frame", "per_video"),
    [
        (LlavaOnevisionConfig(), 196, 1),  # SigLIP 384/14: 27x27 pooled to 14x14, plus one newline
        (LlavaNextVideoConfig(), 144, 0),  # CLIP 336/14: 24x24 average-pooled to 12x12
        (VideoLlavaConfig(), 257, 0),  # CLIP 224/14: 16x16 + CLS
        (InstructBlipVideoConfig(), 32, 0),  # 32 queries per frame
        (InstructBlipConfig(), 32, 0),
    ],
)
def test_num_video_tokens_at_published_sizes(config, per_frame, per_video):
    assert num_video_tokens(config, 8) == 8 * per_frame + per_video


def test_num_video_tokens_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        num_video_tokens(VideoLlavaConfig(), 0)
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        num_video_tokens(LlavaNextVideoConfig(vision_feature_select_strategy="full"), 2)
    with pytest.raises(ValueError, match="family"):
        build_tiny_checkpoint("llava", "unused")


def test_tokenizer_special_tokens_and_chat_template():
    tokenizer = build_tiny_tokenizer()
    media_tokens = tokenizer.convert_ids_to_tokens([tokenizer.image_token_id, tokenizer.video_token_id])
    assert media_tokens == ["<image>", "<video>"]
    assert None not in (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what color is it?"}]}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>user: <video>what color is it?</s>\nassistant: "
    assert tokenizer("<video><video> red").input_ids[:2] == [tokenizer.video_token_id] * 2
    assert tokenizer.decode(tokenizer("a red square moves left.").input_ids) == "a red square moves left."


def test_qformer_tokenizer_is_bert_style_wordpiece():
    tokenizer = build_qformer_tokenizer()
    assert [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id] == [0, 1, 2]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Is the RED circle moving up?").input_ids)
    # corpus words are whole tokens; an unseen word falls back to its characters
    assert tokens == [
        "[CLS]",
        "is",
        "the",
        "red",
        "circle",
        "m",
        "##o",
        "##v",
        "##i",
        "##n",
        "##g",
        "up",
        "?",
        "[SEP]",
    ]
    assert tokenizer.convert_ids_to_tokens(tokenizer("~").input_ids) == ["[CLS]", "[UNK]", "[SEP]"]
    assert len(tokenizer) <= tiny_models.QFORMER_VOCAB_SIZE


def test_tokenizers_are_identical_across_processes():
    # tokenizers' WordPieceTrainer gave a different vocabulary in every process, so models trained on its
    # ids (the REEF and DynFocus learning tests) were not reproducible from one run to the next
    script = (
        "import hashlib\n"
        "from videoadapt.testing.tiny_models import build_qformer_tokenizer, build_tiny_tokenizer\n"
        "for build in (build_qformer_tokenizer, build_tiny_tokenizer):\n"
        "    print(hashlib.sha256(build().backend_tokenizer.to_str().encode()).hexdigest())\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True) for _ in "ab"]
    assert runs[0].stdout == runs[1].stdout
    assert len(runs[0].stdout.split()) == 2


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_build_is_deterministic_and_keeps_global_rng(tmp_path, family):
    rng_state = torch.get_rng_state()
    first, second, other = (
        build_tiny_checkpoint(family, tmp_path / name, seed) for name, seed in [("a", 0), ("b", 0), ("c", 1)]
    )
    assert torch.equal(torch.get_rng_state(), rng_state)
    weights = [load_file(path / "model.safetensors") for path in (first, second, other)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()


def test_cache_reuses_complete_checkpoints_and_rebuilds_stale_ones(tmp_path, monkeypatch):
    built = []
    original = tiny_models.build_tiny_checkpoint

    def counting_build(family, out_dir, seed=0, **kwargs):
        built.append(family)
        return original(family, out_dir, seed, **kwargs)

    monkeypatch.setattr(tiny_models, "build_tiny_checkpoint", counting_build)
    paths = build_all_tiny_checkpoints(tmp_path)
    assert built == list(TINY_FAMILIES)
    assert all((path / COMPLETE_MARKER).is_file() for path in paths.values())
    mtimes = {family: (path / "model.safetensors").stat().st_mtime_ns for family, path in paths.items()}

    assert build_all_tiny_checkpoints(tmp_path) == paths
    assert built == list(TINY_FAMILIES)
    assert mtimes == {family: (path / "model.safetensors").stat().st_mtime_ns for family, path in paths.items()}

    marker = paths["video_llava"] / COMPLETE_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "format_version": -1}))
    (paths["instructblip"] / COMPLETE_MARKER).unlink()
    build_all_tiny_checkpoints(tmp_path)
    assert built == [*TINY_FAMILIES, "video_llava", "instructblip"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(TINY_FAMILIES)  # no temporary folders left


def test_build_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(FileExistsError, match="out_dir"):
        build_tiny_checkpoint("video_llava", tmp_path)
