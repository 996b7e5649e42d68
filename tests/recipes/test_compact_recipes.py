"""Compact MLLM recipes: the shipped YAMLs equal the supplement's section 1.4, turn into valid configs,
TrainingArguments and freezing rules whose gradients reach exactly the trained modules; the pre-trained compressor
reaches stage 1 (`compressor=`) and stays through stage 2; bad YAMLs fail with errors that name the file and the
field."""

import dataclasses
import importlib.resources
import logging

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from videoadapt.configuration.configuration_compact import CompactConfig
from videoadapt.layers.video_compressor import SpatioTemporalAutoencoder
from videoadapt.modeling_compact import CompactForConditionalGeneration
from videoadapt.processors.processing_compact import CompactProcessor
from videoadapt.recipes.compact_pretrain import load_compressor_recipe, pretrain_compressor, save_autoencoder
from videoadapt.recipes.compact_recipes import STAGES, list_recipes, load_recipe
from videoadapt.recipes.manifest import write_manifest
from videoadapt.recipes.train import RunOptions, main, train
from videoadapt.recipes.training import METHODS
from videoadapt.testing.toy_clips import write_toy_clips


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


def test_the_compressor_recipe_must_fit_the_stage_model(tmp_path):
    folder = importlib.resources.files("videoadapt.recipes") / "compact"
    compressor = yaml.safe_load((folder / "compressor_pretrain.yaml").read_text())
    compressor["compressor"]["dim"] = 1408  # the paper's ViT-g/14 width, not the stage base's SigLIP (1152)
    write(tmp_path, compressor, "wide_svc.yaml")
    path = write(tmp_path, {**shipped("stage1"), "compressor_from": "wide_svc.yaml"})  # next to the stage recipe
    mismatch = (
        r"recipe.yaml: `compressor_from` names the compressor recipe 'wide_svc.yaml' .* does not fit this recipe's "
        r"model: dim=1408 \(model: 1152\); .*set the compressor recipe's `compressor` fields"
    )
    with pytest.raises(ValueError, match=mismatch):
        load_recipe(path)
    compressor["compressor"]["dim"] = 1152
    write(tmp_path, compressor, "wide_svc.yaml")
    assert load_recipe(path).compressor_from == "wide_svc.yaml"
    unknown = r"`compressor_from` must be a shipped compressor recipe \(compressor_pretrain\) or a compressor recipe "
    with pytest.raises(ValueError, match=unknown + r"YAML file, got 'nope'"):
        load_recipe(write(tmp_path, {**shipped("stage1"), "compressor_from": "nope"}))


# --------------------------------------------------------------------------------------------- the stage chain

# the tiny model (4 frames) and one short optimiser step per stage
TINY = ["config.num_frames=4", "processor.num_frames=4", "max_steps=1", "per_device_train_batch_size=2",
        "gradient_accumulation_steps=1", "save_strategy=no", "report_to=none", "disable_tqdm=true", "warmup_steps=0"]  # fmt: skip


@pytest.fixture(scope="module")
def toy_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("compact_data")
    rows = [
        {
            "id": f"train/{i}",
            "split": "train",
            **clip,
            "question": "what color is it?",
            "answers": [["red", "blue"][i]],
        }
        for i, clip in enumerate(write_toy_clips(root, 2))
    ]
    write_manifest(rows, root / "data.jsonl")
    return root / "data.jsonl"


def _untrained_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "untrained" in r.getMessage()]


def _compressor_equals(model: CompactForConditionalGeneration, state: dict) -> bool:
    return all(torch.equal(value, state[name]) for name, value in model.model.compressor.state_dict().items())


def test_the_pretrained_compressor_reaches_stage1_and_stays_through_stage2(
    tiny_checkpoints, toy_manifest, tmp_path, caplog
):
    base = tiny_checkpoints["llava_onevision"]
    # compressor pre-training: the shipped recipe's architecture at the tiny tower's width, on the tiny model's own
    # compressor inputs (the frozen tower's grids), written to a folder
    model = CompactForConditionalGeneration.from_pretrained(base, num_frames=4)
    processor = CompactProcessor.from_model(model, AutoTokenizer.from_pretrained(base), num_frames=4)
    videos = [str(toy_manifest.parent / f"v{i}.mp4") for i in range(2)]
    with torch.no_grad():
        pixels = processor(["<video> q"] * 2, videos=videos)["pixel_values_videos"]
        features = model.model.get_compressor_inputs(pixels)  # [2, 4, 16, 16, 32]
    recipe = load_compressor_recipe()
    autoencoder = SpatioTemporalAutoencoder(**{**recipe.compressor.kwargs(), "dim": model.config.compressor_dim})
    settings = dataclasses.replace(recipe.training, batch_size=2, learning_rate=1e-2)
    svc = tmp_path / "svc"
    svc.mkdir()
    pretrain_compressor(autoencoder, features, settings, output_path=svc, progress=False)
    pretrained = autoencoder.encoder.state_dict()
    assert not _compressor_equals(model, pretrained)  # a fresh compressor is not the pre-trained one

    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    data = [f"train={toy_manifest}", *TINY]
    with caplog.at_level(logging.WARNING):
        argv = ["--recipe", "compact/stage1", f"compressor={svc}", f"model={base}", f"output_dir={stage1}", *data]
        assert main(argv) == 0
        trained = CompactForConditionalGeneration.from_pretrained(stage1 / "model")
        assert _compressor_equals(trained, pretrained)
        projector = (
            trained.model.multi_modal_projector.linear_1.weight,
            model.model.multi_modal_projector.linear_1.weight,
        )
        assert not torch.equal(*projector)  # stage 1 trained the projector on the pre-trained compressor's tokens
        assert main(["--recipe", "compact/stage2", f"model={stage1 / 'model'}", f"output_dir={stage2}", *data]) == 0
    assert _untrained_warnings(caplog) == []
    assert _compressor_equals(CompactForConditionalGeneration.from_pretrained(stage2 / "model"), pretrained)

    options = RunOptions(train=str(toy_manifest), output_dir=str(tmp_path / "x"), model=str(stage1 / "model"))
    with pytest.raises(
        ValueError,
        match=r"recipe 'stage2' \(init_from 'stage1'\) starts from the earlier stage's output, which carries the "
        r"compressor; drop `compressor=`",
    ):
        train("compact/stage2", dataclasses.replace(options, compressor=str(svc)), config={"num_frames": 4})


def test_stage1_without_a_pretrained_compressor_warns(tiny_checkpoints, caplog):
    spec, recipe = METHODS["compact"], load_recipe("stage1")
    with caplog.at_level(logging.WARNING):
        spec.build(recipe, None, tiny_checkpoints["llava_onevision"], {"num_frames": 4}, {"num_frames": 4})
    (message,) = _untrained_warnings(caplog)
    assert "4 x 4 x 4 average pooling" in message and "`compressor=<folder>`" in message
    assert "recipe 'compressor_pretrain'" in message


def test_compressor_errors_name_the_field_and_the_fix(tiny_checkpoints, tmp_path):
    spec, recipe = METHODS["compact"], load_recipe("stage1")
    base = tiny_checkpoints["llava_onevision"]

    def build(compressor):
        return spec.build(recipe, None, base, {"num_frames": 4}, {"num_frames": 4}, compressor=compressor)

    missing = r"`compressor` must be the compressor pre-training output .*got '.*nowhere', which does not exist; "
    with pytest.raises(ValueError, match=missing + "pre-train it first"):
        build(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"`compressor=.*empty`: .*must be a folder holding compressor.safetensors"):
        build(tmp_path / "empty")
    save_autoencoder(SpatioTemporalAutoencoder(64), tmp_path / "wide.safetensors")
    wide = r"`compressor=.*wide.safetensors` does not fit the model built from .*: .*dim=64 \(model: 32\)"
    with pytest.raises(ValueError, match=wide):
        build(tmp_path / "wide.safetensors")
    reef = METHODS["reef"]
    with pytest.raises(ValueError, match=r"`compressor=` loads Compact's pre-trained compressor; reef recipes have "):
        reef.build(reef.load_recipe("msvd_qa"), "main", base, {}, {}, compressor="x")
