"""PAVE recipes: the shipped YAMLs equal the paper's settings, turn into the paper's patch, LoRA, TrainingArguments
and optimizer groups, and train exactly one patch and its LoRA on a tiny PAVE model; bad YAMLs fail with errors that
name the file and the field."""

import configparser
import dataclasses
import importlib.resources
import inspect
import re
from pathlib import Path

import pytest
import torch
import yaml
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import Trainer

from videoadapt.configuration.configuration_pave import PavePatchConfig
from videoadapt.modeling_pave import PaveForConditionalGeneration, PavePatch
from videoadapt.pave_patches import LORA_TARGET_MODULES
from videoadapt.processors.processing_pave import PaveProcessor
from videoadapt.processors.side_channel_3d import Depth3DSideChannel
from videoadapt.processors.side_channels import AudioSideChannel, MultiviewSideChannel, VideoSideChannel
from videoadapt.recipes.pave_recipes import list_recipes, load_recipe
from videoadapt.testing.tiny_models import build_tiny_checkpoint, tiny_video_inputs


# The paper's settings, copied by hand: recipe -> (task, dataset, side channel, epochs). Epochs: section 4.1 (AVSD 1,
# AVQA 2, Music-AVQA 2), 4.2 (ScanQA 1, SQA3D 2), 4.3 (1), supplement A.3 (Ego-Exo4D 2).
PAPER = {
    "avsd": ("dialogue", "avsd", "audio", 1),
    "avqa": ("qa", "avqa", "audio", 2),
    "music_avqa": ("qa", "music_avqa", "audio", 2),
    "scanqa": ("qa", "scanqa", "3d", 1),
    "sqa3d": ("qa", "sqa3d", "3d", 2),
    "enhanced_video": ("qa", "llava_video_178k_subset", "video", 1),
    "egoexo_proficiency": ("classification", "egoexo4d_proficiency", "multiview", 2),
}
# Supplement B.2 (B.3 and B.4 reuse it): AdamW, 3% linear warmup, cosine, lr 2e-5, batch 32; 2 cross-attention layers,
# hidden 512, 4 heads; LoRA r 64, alpha 16; 32 frames of LLaVA-OneVision-7B (Qwen2-7B: hidden 3584, SigLIP 1152).
B2 = {"learning_rate": 2e-5, "batch_size": 32, "warmup_ratio": 0.03, "lr_scheduler": "cosine", "num_frames": 32,
      "optimizer": "adamw_torch", "base_checkpoint": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
      "base_hidden_size": 3584, "base_vision_hidden_size": 1152}  # fmt: skip
B2_PATCH = {"hidden_size": 512, "num_attention_heads": 4, "num_layers": 2}
B2_LORA = {"r": 64, "alpha": 16}
# Side channels (sections 4.1-4.3, A.3, B.2-B.4), and the token counts of supplement B.5 for a 2-minute video:
# kind -> (feature dim, tokens per step, steps per second or None, frames or None, views, B.5 total tokens)
SIDE = {
    "audio": (1024, 1, 1.0, None, 1, 120),  # 1 token per second -> 120 audio tokens
    "3d": (1024, 576, None, 32, 1, 18432),  # 576 tokens per frame, 32 frames -> 18432
    "video": (1024, 4, 2.0, None, 1, 960),  # 2 fps, 2 x 2 per frame -> 960
    "multiview": (1152, 196, None, 32, 4, 25088),  # 196 per frame, 32 frames, 4 exo views -> 25,088
}
EXTRACTORS = {"audio": AudioSideChannel, "video": VideoSideChannel, "3d": Depth3DSideChannel,
              "multiview": MultiviewSideChannel}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint("llava_onevision", tmp_path_factory.mktemp("pave_recipes") / "ov")


@pytest.fixture
def model(checkpoint):
    torch.manual_seed(0)
    return PaveForConditionalGeneration.from_pretrained(checkpoint)


def write(tmp_path, data, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def shipped(name: str) -> dict:
    return yaml.safe_load(load_recipe(name).path.read_text())


def ids(parameters) -> set[int]:
    return {id(p) for p in parameters}


def lora_parameter_ids(model: nn.Module, adapter: str) -> set[int]:
    """The LoRA A/B weights of `adapter`, found through peft's layer objects (not through parameter names)."""
    found = set()
    for module in model.modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            found |= ids(module.lora_A[adapter].parameters()) | ids(module.lora_B[adapter].parameters())
    return found


# --------------------------------------------------------------------------------------------- shipped recipes


def test_one_recipe_per_paper_setting_loads_by_name_or_path():
    assert list_recipes() == sorted(PAPER)
    folder = importlib.resources.files("videoadapt.recipes") / "pave"
    assert sorted(e.name for e in folder.iterdir() if e.name.endswith(".yaml")) == sorted(f"{n}.yaml" for n in PAPER)
    for name in PAPER:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.path.name == f"{name}.yaml"
        assert load_recipe(recipe.path) == recipe


def test_setup_cfg_ships_the_pave_yamls():
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    assert "pave/*.yaml" in config["options.package_data"]["videoadapt.recipes"].split()


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_values_equal_the_paper(name):
    task, dataset, kind, epochs = PAPER[name]
    recipe = load_recipe(name)
    assert (recipe.task, recipe.dataset, recipe.side_channel.kind, recipe.epochs) == (task, dataset, kind, epochs)
    assert {key: getattr(recipe, key) for key in B2} == B2
    assert {key: getattr(recipe.patch, key) for key in B2_PATCH} == B2_PATCH
    assert {key: getattr(recipe.lora, key) for key in B2_LORA} == B2_LORA
    assert recipe.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert recipe.patch_learning_rate is None  # one learning rate for the patch and the LoRA (official code too)
    assert (recipe.weight_decay, recipe.max_grad_norm, recipe.seed, recipe.bf16) == (0.0, 0.1, 42, True)  # official
    # where each value comes from: the settings' own numbers cite the paper; Ego-Exo4D borrows B.2's (ours)
    assert recipe.source("epochs").startswith("paper") and recipe.source("task").startswith("paper")
    borrowed = name == "egoexo_proficiency"
    for field in ("learning_rate", "warmup_ratio", "lr_scheduler", "lora.r", "lora.alpha", "patch.hidden_size"):
        assert recipe.source(field).startswith("ours: B.2's value" if borrowed else "paper"), field
    assert recipe.source("batch_size").startswith("ours" if borrowed else "paper")
    assert recipe.source("weight_decay").startswith("official code")
    with pytest.raises(
        ValueError, match=r"`name` must be a field of the recipe such as 'epochs' or 'lora.r' .* got 'lr'"
    ):
        recipe.source("lr")


@pytest.mark.parametrize("name", sorted(PAPER))
def test_side_channels_give_the_papers_token_counts(name):
    s = load_recipe(name).side_channel
    dim, per_step, rate, frames, views, total = SIDE[s.kind]
    assert (s.feature_dim, s.tokens_per_step, s.steps_per_second, s.frames_per_video, s.num_views) == (
        dim, per_step, rate, frames, views
    )  # fmt: skip
    steps = 120 * rate if rate else frames * views  # a 2-minute video, as supplement B.5 assumes
    assert steps * s.tokens_per_step == total


def test_where_the_paper_and_the_official_code_disagree_the_paper_wins():
    scanqa, sqa3d, music = load_recipe("scanqa"), load_recipe("sqa3d"), load_recipe("music_avqa")
    assert scanqa.epochs == 1 and "official code (scripts/scanqa_train.sh: 2)" in scanqa.source("epochs")
    assert sqa3d.batch_size == 32 and "64 on 2 GPUs" in sqa3d.source("batch_size")
    assert music.patch.num_layers == 2 and "official code uses 3 for Music-AVQA" in music.source("patch.num_layers")
    for name in PAPER:  # the paper's patch, not the official configs' (PavePatchConfig.official)
        patch = load_recipe(name).patch
        assert (patch.query_source, patch.tie_value_to_key, patch.attention_output_projection) == (
            "projected", False, True
        )  # fmt: skip
        assert patch.rope == ("1d" if PAPER[name][2] == "audio" else "3d")  # supplement B.1


# --------------------------------------------------------------------------------------------- patch and LoRA


def test_patch_config_is_the_papers_patch_on_the_7b_base():
    recipe = load_recipe("avsd")
    assert recipe.patch_config() == PavePatchConfig(
        side_channel="audio", side_channel_dim=1024, side_channel_grid=[1, 1], query_dim=3584, output_dim=3584,
        hidden_size=512, num_attention_heads=4, num_layers=2, ffn_size=1024, output_mlp_size=1024, rope="1d",
        base_model_type="llava_onevision", base_model_name_or_path="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        base_hidden_size=3584,
    )  # fmt: skip
    # parameter count, by hand: query proj, side proj, 2 x (q, k, v, o + FFN), output MLP + LayerNorm
    e, d, c, f, m = 512, 3584, 1024, 1024, 1024
    per_layer = 4 * (e * e + e) + 2 * e + e * f + f * e
    expected = (d * e + e) + (c * e + e) + 2 * per_layer + (e * m + m) + (m * d + d) + 2 * d
    assert expected == 10_766_848  # docs/fidelity.md: paper mode, 7B
    assert sum(p.numel() for p in PavePatch(recipe.patch_config()).parameters()) == expected
    # the official configs' patch: 1152-d vision queries, tied K/V, no output projection -> 8,996,352 - 525,312
    official = dataclasses.replace(recipe, patch=dataclasses.replace(
        recipe.patch, query_source="vision", tie_value_to_key=True, attention_output_projection=False, rope="none"
    ))  # fmt: skip
    config = official.patch_config()
    assert (config.query_dim, config.output_dim) == (1152, 3584)
    assert sum(p.numel() for p in PavePatch(config).parameters()) == 8_996_352 - 525_312
    # another encoder: only the side-channel width changes
    assert recipe.patch_config(side_channel_dim=512) == dataclasses.replace(
        recipe.patch_config(), side_channel_dim=512
    )
    for name in ("scanqa", "egoexo_proficiency"):
        assert load_recipe(name).patch_config().side_channel_grid == {"scanqa": [24, 24]}.get(name, [14, 14])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "1024"])
def test_bad_side_channel_dim_raises(bad):
    with pytest.raises(
        ValueError, match=r"`side_channel_dim` must be an integer >= 1 .* or None \(the recipe's 1024\)"
    ):
        load_recipe("avsd").patch_config(side_channel_dim=bad)


def test_patch_and_lora_sized_for_a_tiny_model(model):
    recipe = load_recipe("sqa3d")
    settings = {**dataclasses.asdict(recipe.patch), "side_channel_grid": [24, 24]}
    assert recipe.patch_config(model=model) == model.patch_config_for("3d", 1024, **settings)
    pattern, default = re.compile(recipe.lora_config().target_modules), re.compile(LORA_TARGET_MODULES)
    names = [n for n, _ in model.named_modules()]
    targets = [n for n in names if pattern.fullmatch(n)]
    assert targets == [n for n in names if default.fullmatch(n)]  # the library's LoRA: the 7 projections per layer
    assert len(targets) == 7 * model.config.text_config.num_hidden_layers
    assert all(n.startswith("model.language_model.layers.") for n in targets)
    lora = recipe.lora_config()
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias) == (64, 16, 0.05, "none")
    patch = recipe.add_patch(model)
    assert model.patch_names == ["sqa3d"] and model.active_patches == ["sqa3d"]
    assert patch.config == recipe.patch_config(model=model)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer) and "sqa3d" in m.lora_A]
    assert wrapped == targets
    with pytest.raises(TypeError, match=r"`model` must be a PAVE model .* got Linear"):
        recipe.add_patch(nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------- freezing


def test_apply_freezing_trains_exactly_one_patch_and_its_lora(model, checkpoint):
    video, audio = load_recipe("enhanced_video"), load_recipe("avsd")
    video.add_patch(model, name="hfr")  # an earlier patch (stage-wise multi-task, paper 4.4)
    audio.add_patch(model)
    trained = audio.apply_freezing(model)
    expected = ids(model.model.patches["avsd"].parameters()) | lora_parameter_ids(model, "avsd")
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    assert trained == sorted(n for n, p in model.named_parameters() if id(p) in expected)
    n_patch = sum(p.numel() for p in model.model.patches["avsd"].parameters())
    text = model.config.text_config
    kv = text.num_key_value_heads * text.hidden_size // text.num_attention_heads
    shapes = [(text.hidden_size, text.hidden_size), (text.hidden_size, kv), (text.hidden_size, kv),
              (text.hidden_size, text.hidden_size), (text.hidden_size, text.intermediate_size),
              (text.hidden_size, text.intermediate_size), (text.intermediate_size, text.hidden_size)]  # fmt: skip
    n_lora = text.num_hidden_layers * sum(64 * (i + o) for i, o in shapes)  # r (in + out) per projection
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_patch + n_lora

    # a training step: gradients reach exactly the trainable parameters
    model.train()
    inputs = tiny_video_inputs("llava_onevision", checkpoint, num_frames=2)
    g = torch.Generator().manual_seed(0)
    sides = {"hfr": {"features": torch.randn(1, 5, 2, 2, 1024, generator=g), "lengths": torch.tensor([5])},
             "avsd": {"features": torch.randn(1, 3, 1, 1, 1024, generator=g), "lengths": torch.tensor([3])}}  # fmt: skip
    model(**inputs, side_channels=sides, labels=inputs["input_ids"]).loss.backward()
    assert {id(p) for p in model.parameters() if p.grad is not None} == expected

    trained = video.apply_freezing(model, patch_name="hfr")  # another patch, by name
    expected = ids(model.model.patches["hfr"].parameters()) | lora_parameter_ids(model, "hfr")
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    assert trained == sorted(n for n, p in model.named_parameters() if id(p) in expected)


def test_apply_freezing_errors(model):
    recipe = load_recipe("avsd")
    with pytest.raises(ValueError, match=r"`patch_name` must name a patch of the model \(\[\]\), got 'avsd'; add it"):
        recipe.apply_freezing(model)
    recipe.add_patch(model)
    with pytest.raises(ValueError, match=r"\(\['avsd'\]\), got 'audio'"):
        recipe.apply_freezing(model, patch_name="audio")
    with pytest.raises(TypeError, match=r"`model` must be a PAVE model \(`Pave\*ForConditionalGeneration`\)"):
        recipe.apply_freezing(nn.Linear(2, 2))


def test_optimizer_groups_give_the_patch_its_own_learning_rate(model, tmp_path):
    recipe = load_recipe("avsd")
    recipe.add_patch(model)
    with pytest.raises(ValueError, match=r"no trainable parameter; call `recipe.apply_freezing\(model\)` first"):
        recipe.optimizer_groups(model.requires_grad_(False))
    recipe.apply_freezing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    (group,) = recipe.optimizer_groups(model)  # the shipped recipes: one rate, no weight decay
    assert (group["lr"], group["weight_decay"]) == (2e-5, 0.0) and ids(group["params"]) == ids(trainable)

    data = shipped("avsd")
    data.update(patch_learning_rate=1.0e-4, weight_decay=0.05)
    custom = load_recipe(write(tmp_path, data))
    groups = custom.optimizer_groups(model)
    decay = set(Trainer.get_decay_parameter_names(None, model))  # Trainer's own rule, as the oracle
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(setting) == sum(len(g["params"]) for g in groups) == len(trainable)  # each parameter once
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            lr = 1e-4 if name.startswith("model.patches.avsd.") else 2e-5
            assert setting[id(parameter)] == (lr, 0.05 if name in decay else 0.0), name
    assert sorted((g["lr"], g["weight_decay"]) for g in groups) == [(2e-5, 0.05), (1e-4, 0.0), (1e-4, 0.05)]
    optimizer = torch.optim.AdamW(groups, betas=custom.adam_betas)  # the documented use
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]


# --------------------------------------------------------------------------------------------- derived settings


@pytest.mark.parametrize(
    ("world_size", "max_per_device", "expected"),
    [(1, None, (32, 1)), (1, 8, (8, 4)), (2, None, (16, 1)), (2, 4, (4, 4)), (4, 4, (4, 2)), (4, 3, (2, 4))],
)
def test_training_arguments_keep_the_global_batch(tmp_path, world_size, max_per_device, expected):
    recipe = load_recipe("avsd")
    args = recipe.training_arguments(tmp_path, world_size=world_size, max_per_device_batch_size=max_per_device,
                                     use_cpu=True)  # fmt: skip
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == expected
    assert expected[0] * expected[1] * world_size == 32
    assert (args.learning_rate, args.num_train_epochs, args.weight_decay, args.max_grad_norm) == (2e-5, 1, 0.0, 0.1)
    assert (args.adam_beta1, args.adam_beta2, args.optim.value, args.lr_scheduler_type.value) == (
        0.9, 0.999, "adamw_torch", "cosine"
    )  # fmt: skip
    assert args.get_warmup_steps(1000) == 30 and args.bf16 and args.seed == 42 and args.report_to == []
    assert not args.remove_unused_columns and args.output_dir == str(tmp_path)


def test_training_arguments_overrides_and_errors(tmp_path):
    recipe = load_recipe("sqa3d")
    args = recipe.training_arguments(tmp_path, bf16=False, num_train_epochs=5)
    assert (args.bf16, args.num_train_epochs) == (False, 5)
    with pytest.raises(ValueError, match=r"global batch size 32 must split evenly over `world_size` = 3"):
        recipe.training_arguments(tmp_path, world_size=3, bf16=False)
    with pytest.raises(ValueError, match=r"`max_per_device_batch_size` must be an integer >= 1 or None, got 0"):
        recipe.training_arguments(tmp_path, max_per_device_batch_size=0, bf16=False)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_processor_extractor_generation_and_callbacks(name):
    recipe = load_recipe(name)
    assert recipe.processor_kwargs() == {"num_frames": 32, "sampler": "uniform"}
    inspect.signature(PaveProcessor).bind_partial(**recipe.processor_kwargs())
    kind = recipe.side_channel.kind
    expected = {
        "audio": {"clip_seconds": 2.0, "stride_seconds": 1.0},  # 2 s clips at 1 s stride
        "video": {"fps": 2.0, "pool": (2, 2)},
        "3d": {"num_frames": 32},
        "multiview": {"num_frames": 32, "spatial_pool_stride": 2},  # 27 x 27 SigLIP patches -> 14 x 14
    }[kind]
    assert recipe.side_channel_kwargs() == expected
    inspect.signature(EXTRACTORS[kind]).bind_partial(**expected)  # the extractor takes these keywords
    assert recipe.generation_kwargs() == {"num_beams": 1, "max_new_tokens": 1024, "do_sample": False}
    assert recipe.callbacks() == []


def test_format_prompt():
    assert load_recipe("scanqa").format_prompt("Where is the chair?") == "Where is the chair?"
    avqa = load_recipe("avqa")
    assert avqa.format_prompt("What makes the sound?", ["dog", "cat", "car", "bird"]) == (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\nWhat makes the sound?\n"
        "A.dog\nB.cat\nC.car\nD.bird\nAnswer with the option's letter from the given choices directly."
    )
    egoexo = load_recipe("egoexo_proficiency").format_prompt()
    assert egoexo.startswith("In this video, a human is performing an activity. Your goal is to evaluate")
    assert egoexo.endswith("4. Late Expert: Near-masterful or masterful performance, showcasing exceptional skill, "
                           "precision, and expertise. Example Output: Early Expert")  # fmt: skip
    with pytest.raises(ValueError, match=r"`options` must be given for recipe 'avqa', got None"):
        avqa.format_prompt("What makes the sound?")
    with pytest.raises(ValueError, match=r"`options` must be None \(the prompt of 'scanqa' has no \{options\}\)"):
        load_recipe("scanqa").format_prompt("Where?", ["a", "b"])
    with pytest.raises(ValueError, match=r"`question` must be given for recipe 'scanqa', got None"):
        load_recipe("scanqa").format_prompt()
    with pytest.raises(ValueError, match=r"`options` must be a list of 1 to 26 answer strings, got 'abcd'"):
        avqa.format_prompt("Which?", "abcd")


# --------------------------------------------------------------------------------------------- bad YAMLs


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def mutate(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return mutate


def _delete(*keys):
    def mutate(data):
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]

    return mutate


BAD = [
    (_set("lr", 2e-5), r"unknown key\(s\) \['lr'\] in the top level"),
    (_set("lora", "rank", 64), r"unknown key\(s\) \['lora.rank'\] in lora"),
    (_delete("epochs"), r"missing key\(s\) \['epochs'\] in the top level; add them"),
    (_delete("side_channel", "feature_dim"), r"missing key\(s\) \['side_channel.feature_dim'\] in side_channel"),
    (_delete("patch"), r"missing key\(s\) \['patch'\] in the top level"),
    (_set("learning_rate", 0.0), r"`learning_rate` must be a number in \(0.0, 1.0\), got 0.0"),
    (_set("learning_rate", 1.5), r"`learning_rate` must be a number in \(0.0, 1.0\), got 1.5"),
    (_set("patch_learning_rate", -1.0), r"`patch_learning_rate` must be null \(the patch trains at `learning_rate`\)"),
    (_set("batch_size", "32"), r"`batch_size` must be an integer in \[1, inf\], got '32' \(str\)"),
    (_set("warmup_ratio", 1.0), r"`warmup_ratio` must be a number in \[0.0, 1.0\), got 1.0"),
    (_set("task", "caption"), r"`task` must be one of \['qa', 'dialogue', 'classification'\], got 'caption'"),
    (_set("base_model_type", "qwen2_vl"), r"`base_model_type` must be one of \['llava_onevision', "),
    (_set("bf16", "yes"), r"`bf16` must be true or false, got 'yes' \(str\)"),
    (_set("side_channel", "kind", "text"), r"`side_channel.kind` must be one of \['audio', 'video', '3d', 'multiview'\]"),
    (_set("side_channel", "grid", [1, 1, 1]), r"`side_channel.grid` must be a list of two numbers"),
    (_set("side_channel", "frames_per_video", 32),
     r"`side_channel.frames_per_video` must be null for kind 'audio', got 32"),
    (_set("side_channel", "steps_per_second", None),
     r"`side_channel.steps_per_second` must be a rate for kind 'audio', got None"),
    (_set("side_channel", "clip_seconds", 0.5), r"`side_channel.clip_seconds` must be >= the stride 1 / "
                                                r"steps_per_second = 1 s"),
    (_set("side_channel", "grid", [2, 2]), r"`side_channel.grid` must be \[1, 1\] for audio"),
    (_set("side_channel", "num_views", 4), r"`side_channel.num_views` must be 1 for kind 'audio', got 4"),
    (_set("side_channel", "spatial_pool_stride", 2), r"`side_channel.spatial_pool_stride` must be null for kind"),
    (_set("patch", "hidden_size", 510), r"`patch` does not make a valid PavePatchConfig: `hidden_size` \(510\) must be "
                                        r"divisible by `num_attention_heads` \(4\)"),
    (_set("patch", "rope", "2d"), r"`patch.rope` must be one of \['none', '1d', '3d'\], got '2d'"),
    (_set("lora", "target_modules", ["q_proj", "fc1"]), r"`lora.target_modules` must be a non-empty list of names from"),
    (_set("lora", "target_modules", ["q_proj", "q_proj"]), r"`lora.target_modules` must be a list without repeated"),
    (_set("lora", "dropout", 1.0), r"`lora.dropout` must be a number in \[0.0, 1.0\), got 1.0"),
    (_set("generation", "num_beams", 0), r"`generation.num_beams` must be an integer in \[1, inf\], got 0"),
    (_set("prompt", "Answer briefly."), r"`prompt` must hold \{question\} once for task 'dialogue'"),
    (_set("prompt", "{question} {context}"), r"`prompt` must hold \{question\} once .*\(no other fields\)"),
    (_set("prompt", "Q: {}"), r"`prompt` must hold \{question\} once"),
    (_set("prompt", "{question"), r"`prompt` is not a valid template"),
    (_delete("sources", "seed"), r"`sources` gives no source for \['seed'\]"),
    (_delete("sources", "lora.r"), r"`sources` gives no source for \['lora.r'\]"),
    (_set("sources", "lora.rank", "paper"), r"`sources` names unknown field\(s\) \['lora.rank'\]"),
    (_set("sources", "seed", ""), r"`sources` must be a mapping of field name -> non-empty source text"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_recipes_raise_errors_naming_the_file_and_field(tmp_path, mutate, message):
    data = shipped("avsd")
    mutate(data)
    path = write(tmp_path, data, "bad.yaml")
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}: ")


def test_frame_aligned_side_channels_need_frames(tmp_path):
    data = shipped("scanqa")
    data["side_channel"]["frames_per_video"] = None
    with pytest.raises(ValueError, match=r"`side_channel.frames_per_video` must be a frame count for kind '3d'"):
        load_recipe(write(tmp_path, data))
    data = shipped("egoexo_proficiency")
    data["prompt"] = "{question} {question}"
    with pytest.raises(ValueError, match=r"`prompt` must hold \{question\} at most once for task 'classification'"):
        load_recipe(write(tmp_path, data))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"`learning_rate` must be a number in \(0.0, 1.0\), got the string '2e-5'; write floats with a dot"),
        ("- a\n- b\n", r"the top level must be a mapping of keys to values, got \['a', 'b'\] \(list\)"),
        ("name: [unclosed\n", r"not valid YAML"),
    ],
)
def test_bad_yaml_text_raises_clear_errors(tmp_path, text, message):
    if text is None:  # PyYAML reads 2e-5 without a dot as a string
        text = load_recipe("avsd").path.read_text().replace("learning_rate: 2.0e-5", "learning_rate: 2e-5", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}: ")


def test_unknown_recipe_name_lists_the_shipped_ones():
    names = ", ".join(sorted(PAPER))
    with pytest.raises(ValueError, match=re.escape(f"must be a shipped PAVE recipe ({names}) or a YAML file")):
        load_recipe("avsd_7b")
