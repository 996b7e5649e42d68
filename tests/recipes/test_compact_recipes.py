"""Compact MLLM recipes: the shipped YAMLs equal the supplement's section 1.4, turn into valid configs,
TrainingArguments and freezing rules whose gradients reach exactly the trained modules; bad YAMLs fail with errors
that name the file and the field."""

import importlib.resources

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from videoadapt.configuration.configuration_compact import CompactConfig
from videoadapt.modeling_compact import CompactForConditionalGeneration
from videoadapt.recipes.compact_recipes import STAGES, list_recipes, load_recipe


# The supplement, section 1.4, by hand: stage -> (learning rate, what it trains); AdamW, batch 512, 32 frames.
SECTION_1_4 = {
    "stage1": (1e-3, {"projector"}),
    "stage2": (1e-5, {"projector", "llm"}),
    "sft": (1e-5, {"projector", "llm"}),
}


@pytest.fixture(scope="module")
def model(tiny_checkpoints):
    torch.manual_seed(0)
    model = CompactForConditionalGeneration.from_pretrained(tiny_checkpoints["llava_onevision"], compressor_grid=8)
    with torch.no_grad():  # non-zero residual branches: the compressor is not a pure pooling
        for parameter in model.model.compressor.parameters():
            parameter.normal_(0, 0.2)
    return model


def write(tmp_path, data, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def shipped(stage: str) -> dict:
    return yaml.safe_load((importlib.resources.files("videoadapt.recipes") / "compact" / f"{stage}.yaml").read_text())


# --------------------------------------------------------------------------------------------- shipped recipes


def test_the_three_stage_recipes_ship_and_load_by_name_or_path():
    assert list_recipes() == list(STAGES) == ["stage1", "stage2", "sft"]
    folder = importlib.resources.files("videoadapt.recipes") / "compact"
    assert {f"{s}.yaml" for s in STAGES} <= {entry.name for entry in folder.iterdir()}
    for stage in STAGES:
        recipe = load_recipe(stage)
        assert recipe.name == recipe.stage == stage and recipe.path.name == f"{stage}.yaml"
        assert load_recipe(recipe.path) == recipe


def test_stages_equal_the_supplement_section_1_4():
    chain = [load_recipe(stage) for stage in STAGES]
    for recipe in chain:
        lr, _ = SECTION_1_4[recipe.stage]
        assert (recipe.learning_rate, recipe.batch_size, recipe.optimizer, recipe.model.num_frames) == (
            lr, 512, "adamw_torch", 32
        )  # fmt: skip
        assert recipe.source("learning_rate").startswith("supplement 1.4")
        for name in ("batch_size", "optimizer", "model.num_frames"):
            assert recipe.source(name).startswith("supplement 1.4"), name
        for name in ("epochs", "adam_betas", "weight_decay", "lr_scheduler", "warmup_ratio", "bf16", "seed",
                     "model.compressor_grid", "model.compressor_spatial_kernel"):  # fmt: skip
            assert recipe.source(name).startswith("ours"), name
        assert recipe.llm == "Qwen2-7B" and recipe.sampler == "avs"
        assert "model.vision_tower" in recipe.frozen and "model.compressor" in recipe.frozen
    assert [(r.init_from, r.compressor_from) for r in chain] == [
        ("base", "compressor_pretrain"), ("stage1", None), ("stage2", None)
    ]  # fmt: skip
    assert "2,827,000" in chain[0].data and "8,029,456" in chain[1].data and "1,079,387" in chain[2].data


def test_model_settings_make_the_papers_128_token_compressor():
    recipe = load_recipe("stage1")
    config = CompactConfig(**recipe.config_overrides())
    blocks = (config.compressor_num_blocks, config.compressor_num_downsample, config.compressor_bottleneck_ratio)
    assert blocks == (3, 2, 4)
    assert (config.compression_factor, config.feature_grid, config.num_video_tokens()) == (4, 16, 128)
    assert recipe.processor_kwargs() == {"num_frames": 32, "sampler": "avs"}
    assert recipe.source("model.compressor_num_blocks").startswith("supplement 1.3")


def test_training_arguments_keep_the_global_batch(tmp_path):
    recipe = load_recipe("stage2")
    args = recipe.training_arguments(tmp_path, world_size=8, max_per_device_batch_size=6, bf16=False, use_cpu=True)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 16)  # 4 * 16 * 8 = 512
    assert (args.learning_rate, args.optim, args.num_train_epochs, args.weight_decay) == (1e-5, "adamw_torch", 1, 0.0)
    schedule = (args.adam_beta1, args.adam_beta2, args.lr_scheduler_type, args.warmup_steps)
    assert schedule == (0.9, 0.999, "cosine", 0.03)
    with pytest.raises(ValueError, match="must split evenly over `world_size` = 3"):
        recipe.training_arguments(tmp_path, world_size=3, bf16=False, use_cpu=True)


# --------------------------------------------------------------------------------------------- freezing


def _ids(*modules) -> set[int]:
    return {
        id(p)
        for module in modules
        for p in ([module] if isinstance(module, torch.nn.Parameter) else module.parameters())
    }


@pytest.mark.parametrize("stage", STAGES)
def test_gradients_reach_exactly_the_trainable_parameters_of_each_stage(model, tiny_checkpoints, stage):
    recipe = load_recipe(stage)
    parts = {
        "projector": _ids(model.model.multi_modal_projector),
        "llm": _ids(model.model.language_model, model.lm_head),
    }
    expected = set().union(*(parts[p] for p in SECTION_1_4[stage][1]))
    trained = recipe.apply_freezing(model)
    named = dict(model.named_parameters())
    assert {id(named[name]) for name in trained} == expected
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    model.train().zero_grad(set_to_none=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoints["llava_onevision"])
    ids = tokenizer(["<video>" * model.num_video_tokens(4) + " a red circle"] * 2, return_tensors="pt").input_ids
    pixels = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, pixel_values_videos=pixels, labels=ids).loss.backward()
    got = {name for name, p in model.named_parameters() if p.grad is not None}
    assert got == set(trained), stage
    assert all(named[name].grad.abs().sum() > 0 for name in trained)
    model.requires_grad_(True).zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------- errors


def test_bad_recipes_name_the_file_and_the_field(tmp_path, model):
    def fails(data, match, name="recipe.yaml"):
        path = write(tmp_path, data, name)
        with pytest.raises(ValueError, match=match) as info:
            load_recipe(path)
        assert str(path) in str(info.value)

    base = shipped("stage2")
    fails({**base, "extra": 1}, r"unknown key\(s\) \['extra'\]")
    fails({k: v for k, v in base.items() if k != "batch_size"}, r"missing key\(s\) \['batch_size'\]")
    fails({**base, "learning_rate": "1e-5"}, r"`learning_rate` must be a number in \(0.0, 1.0\), got the string")
    fails({**base, "batch_size": 0}, r"`batch_size` must be an integer in \[1, inf\], got 0")
    fails({**base, "sampler": "fps"}, r"`sampler` must be one of \['uniform', 'avs'\]")
    fails({**base, "init_from": "base"}, r"`init_from` must be one of \['stage1'\] for stage 'stage2', got 'base'")
    fails({**base, "compressor_from": "x"}, r"`compressor_from` must name the pre-trained compressor when .* 'x'")
    fails({**shipped("stage1"), "compressor_from": None}, r"`compressor_from` must name .* got None")
    fails(
        {**base, "model": {**base["model"], "num_frames": 30}},
        r"`model` does not make a valid CompactConfig: .*got 30",
    )
    fails({**base, "model": {**base["model"], "compressor_grid": 18}}, r"`model` does not make a valid CompactConfig")
    fails({**base, "trainable": [*base["trainable"], "model.compressor"]}, r"both list \['model.compressor'\]")
    fails({**base, "trainable": []}, r"`trainable` must list at least one module, got \[\]")
    fails({**base, "sources": {k: v for k, v in base["sources"].items() if k != "seed"}}, r"no source for \['seed'\]")
    fails({**base, "sources": {**base["sources"], "nope": "x"}}, r"`sources` names unknown field\(s\) \['nope'\]")
    sft = {**shipped("sft"), "init_from": "stage1"}  # the ablation schedule is allowed
    assert load_recipe(write(tmp_path, sft, "ablation.yaml")).init_from == "stage1"
    # a module no list covers is an error when freezing, never silently trained or frozen
    uncovered = load_recipe(write(tmp_path, {**base, "frozen": ["model.vision_tower", "model.compressor"]}, "u.yaml"))
    with pytest.raises(
        ValueError, match=r"no `trainable` or `frozen` entry covers the parameters \['model.image_newline'\]"
    ):
        uncovered.apply_freezing(model)
    with pytest.raises(ValueError, match=r"shipped Compact MLLM stage recipe \(stage1, stage2, sft\) or a YAML file"):
        load_recipe("stage3")
