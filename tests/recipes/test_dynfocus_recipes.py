"""DynFocus recipes: the shipped YAML equals the appendix's Table 11 and C.1, its variants our reading of Table 1;
it turns into valid configs, TrainingArguments, DeepSpeed dicts, freezing rules and callbacks; bad YAMLs fail with
errors that name the file and the field."""

import dataclasses
import importlib.resources
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from setuptools.config.setupcfg import read_configuration
from torch import nn
from transformers import AutoTokenizer

from videoadapt.callbacks import SigmaAnnealingCallback
from videoadapt.configuration.configuration_dynfocus import DynFocusConfig
from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
from videoadapt.processors.processing_dynfocus import DynFocusProcessor
from videoadapt.recipes.dynfocus_recipes import STAGES, Table1Result, list_recipes, load_recipe
from videoadapt.testing.tiny_models import build_tiny_checkpoint


# The appendix's Table 11, copied by hand: (batch size, learning rate, DeepSpeed stage) per stage; one epoch each,
# cosine decay, warmup ratio 0.03, weight decay 0, AdamW, bf16.
TABLE_11 = {"stage1": (256, 1e-3, 1), "stage2": (32, 2e-5, 0)}
# Our reading of the appendix's Table 1: variant -> (row, DPE+CCE† trained in stage 1, ... in stage 2,
# (MSVD-QA acc, MSVD-QA score, VCG-Bench score)). F_fine/F_coarse are trained and the LLM frozen then trained in all.
TABLE_1 = {
    "open_open": (1, True, True, (65.45, 3.56, 2.65)),
    "open_lock": (2, True, False, (61.07, 3.20, 2.31)),
    "lock_lock": (3, False, False, (62.21, 3.34, 2.38)),
    "lock_open": (4, False, True, (67.90, 3.72, 2.81)),
}
# the tiny vision tower has 4 x 4 patches (as tests/models/dynfocus/test_modeling_dynfocus.py)
TINY = dict(num_pooled_tokens=4, spatial_clusters=[6, 3], spatial_knn=[3, 2], num_events=4, event_knn=2)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and far faster when other processes load the CPU); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint("instructblip_video", tmp_path_factory.mktemp("dynfocus_recipes") / "ibv")


@pytest.fixture(scope="module")
def model(checkpoint):
    torch.manual_seed(0)
    # K = 2 of L = 4 events: the perturbed top-K has a choice to make (with K = L its true gradient is 0)
    return DynFocusForConditionalGeneration.from_pretrained(
        checkpoint, **TINY, event_keep_ratio=0.5, topk_num_samples=20, topk_sigma=0.5
    )


# --------------------------------------------------------------------------------------------- shipped recipe


def test_the_recipe_ships_as_package_data():
    assert list_recipes() == ["default"]
    folder = importlib.resources.files("videoadapt.recipes") / "dynfocus"
    assert sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".yaml")) == ["default.yaml"]
    recipe = load_recipe("default")
    assert recipe.name == "default" and recipe.path.name == "default.yaml"
    assert load_recipe(recipe.path) == recipe  # by path or by name: the same recipe
    # parsed as setuptools parses it (a space-separated line would be one pattern that matches nothing)
    config = read_configuration(Path(__file__).resolve().parents[2] / "setup.cfg")
    patterns = config["options"]["package_data"]["videoadapt.recipes"]
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    folders = sorted({path.parent.name for path in recipes.glob("*/*.yaml")})
    assert "dynfocus" in folders and sorted(patterns) == sorted(f"{folder}/*.yaml" for folder in folders)


def test_stages_equal_appendix_table_11():
    recipe = load_recipe("default")
    for stage, (batch, lr, zero) in TABLE_11.items():
        s = recipe.stage(stage)
        assert (s.batch_size, s.learning_rate, s.deepspeed_stage, s.epochs) == (batch, lr, zero, 1)
        for name in ("batch_size", "learning_rate", "deepspeed_stage", "epochs"):
            assert "appendix Table 11" in recipe.source(f"{stage}.{name}"), (stage, name)
    assert (recipe.stage1.init_from, recipe.stage2.init_from) == ("base", "stage1")
    assert (recipe.optimizer, recipe.lr_scheduler, recipe.warmup_ratio, recipe.weight_decay, recipe.bf16) == (
        "adamw_torch", "cosine", 0.03, 0.0, True
    )  # fmt: skip
    for name in ("optimizer", "lr_scheduler", "warmup_ratio", "weight_decay", "bf16"):
        assert "appendix Table 11" in recipe.source(name), name
    # the discrepancies are recorded where they apply
    assert "C.1 text says 2e-3" in recipe.source("stage1.learning_rate")
    assert "128" in recipe.source("stage2.batch_size") and "zero1" in recipe.source("stage2.deepspeed_stage")
    for name in ("seed", "adam_betas", "base_checkpoint", "model.event_knn", "parts"):
        assert recipe.source(name).startswith("ours"), name


def test_model_settings_equal_appendix_c1_and_build_the_token_budget():
    recipe = load_recipe("default")
    m = recipe.model
    assert (m.num_pooled_tokens, m.num_events, m.event_keep_ratio, m.topk_num_samples) == (16, 25, 0.8, 500)
    assert (m.spatial_clusters, m.spatial_knn, sum(m.spatial_clusters)) == ([16, 6], [8, 3], 22)  # I = 22
    assert (m.prototype_weighting, m.rods_order, m.key_frame_rods, m.topk_sigma) == (
        "exp_score", "context_content", True, 0.1
    )  # fmt: skip
    assert (recipe.image_resolution, recipe.fps, recipe.llm) == (224, 1.0, "Vicuna-7B-v1.5")
    for name in ("num_pooled_tokens", "num_events", "event_keep_ratio", "spatial_clusters"):
        assert recipe.source(f"model.{name}").startswith("appendix C.1"), name
    overrides = recipe.config_overrides()
    assert set(overrides) == {f.name for f in dataclasses.fields(type(m))}
    config = DynFocusConfig(**overrides)  # InstructBLIP-Video's default 224 px / patch 14 vision tower
    for key, value in overrides.items():
        assert getattr(config, key) == value, key
    assert (config.num_key_frames(100), config.fine_tokens_per_key_frame) == (20, 38)  # K = 20, P + I = 38
    assert config.num_video_tokens(100) == 2 * 100 + 38 * 20
    assert recipe.processor_kwargs() == {"fps": 1.0, "max_frames": 2000}


# --------------------------------------------------------------------------------------------- freezing


def test_default_stages_freeze_as_table_11_and_the_official_scripts():
    recipe = load_recipe("default")
    assert recipe.variant == recipe.default_variant == "lock_open"
    assert recipe.parts == {
        "vision_tower": ("vision_model",), "qformer": ("query_tokens", "qformer"), "dpe": ("event_scorer",),
        "cce": ("context_attention",), "projectors": ("fine_projector", "coarse_projector"),
        "llm": ("language_model",), "unused": ("language_projection",),
    }  # fmt: skip
    assert set(recipe.stage1.trainable) == {"projectors"}
    assert set(recipe.stage1.frozen) == {"vision_tower", "qformer", "dpe", "cce", "llm", "unused"}
    assert set(recipe.stage2.trainable) == {"qformer", "dpe", "cce", "projectors", "llm"}
    assert set(recipe.stage2.frozen) == {"vision_tower", "unused"}
    trainable, frozen = recipe.module_rules("stage1")
    assert trainable == ("fine_projector", "coarse_projector") and "language_projection" in frozen


@pytest.mark.parametrize("variant", sorted(TABLE_1))
def test_variants_are_our_reading_of_appendix_table_1(variant):
    row, stage1_open, stage2_open, figures = TABLE_1[variant]
    recipe = load_recipe("default", variant=variant)
    spec = recipe.variants[variant]
    assert spec.table1_row == row and spec.reported == Table1Result(*figures)
    assert recipe.variant == variant and recipe.source(f"variants.{variant}").startswith(f"appendix Table 1 row {row}")
    for stage, trained in (("stage1", stage1_open), ("stage2", stage2_open)):
        s = recipe.stage(stage)
        for part in ("dpe", "cce"):  # DPE+CCE† move together
            assert (part in s.trainable, part in s.frozen) == (trained, not trained), (variant, stage, part)
        assert "projectors" in s.trainable and "vision_tower" in s.frozen and "unused" in s.frozen
        assert ("llm" in s.trainable) == (stage == "stage2")  # Table 11: LLM frozen, then open
        assert ("qformer" in s.trainable) == (stage == "stage2")
        assert set(s.trainable) | set(s.frozen) == set(recipe.parts) and not set(s.trainable) & set(s.frozen)
    # B.1: the best row locks DPE+CCE† in stage 1 only, 0.16 VCG-Bench above the row that trains it there
    best = max(TABLE_1, key=lambda v: TABLE_1[v][3][2])
    assert best == recipe.default_variant == "lock_open"
    assert TABLE_1["lock_open"][3][2] - TABLE_1["open_open"][3][2] == pytest.approx(0.16)


def test_official_code_variant_trains_the_context_attention_in_stage_1():
    default, official = load_recipe("default"), load_recipe("default", variant="official_code")
    assert (
        official.variants["official_code"].table1_row is None and official.variants["official_code"].reported is None
    )
    assert set(official.stage1.trainable) == {"projectors", "cce"}
    assert official.stage2 == default.stage2
    assert official.source("variants.official_code").startswith("official code")
    # switching back and forth lands on the same stages
    assert official.with_variant("lock_open") == default
    assert default.with_variant("open_lock").with_variant("official_code") == official


def _parameter_ids(*modules_or_parameters) -> set[int]:
    ids = set()
    for item in modules_or_parameters:
        ids.update(id(p) for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()))
    return ids


@pytest.mark.parametrize("variant", [*sorted(TABLE_1), "official_code"])
def test_apply_freezing_trains_exactly_the_parts_of_the_tiny_model(model, variant):
    recipe = load_recipe("default", variant=variant)
    # reference by module objects, not by names
    parts = {
        "projectors": _parameter_ids(model.fine_projector, model.coarse_projector),
        "dpe": _parameter_ids(model.event_scorer),
        "cce": _parameter_ids(model.context_attention),
        "qformer": _parameter_ids(model.query_tokens, model.qformer),
        "llm": _parameter_ids(model.language_model),
    }
    for stage in STAGES:
        expected = set().union(*(parts[p] for p in recipe.stage(stage).trainable))
        trained = recipe.apply_freezing(model, stage)
        assert trained == sorted(recipe.trainable_parameters(model, stage))
        assert {id(p) for p in model.parameters() if p.requires_grad} == expected, stage
        assert not any(p.requires_grad for p in model.vision_model.parameters())
        assert not any(p.requires_grad for p in model.language_projection.parameters())


def test_stage_1_training_step_reaches_only_the_trainable_parts(model, checkpoint):
    tokenizers = (
        AutoTokenizer.from_pretrained(checkpoint),
        AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer"),
    )
    processor = DynFocusProcessor.from_model(model, *tokenizers)
    clip = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    inputs = processor(["<video> what is moving?"], videos=[clip])
    model.train()
    for variant, scorer_trained in (("lock_open", False), ("open_open", True)):
        recipe = load_recipe("default", variant=variant)
        recipe.apply_freezing(model, "stage1")
        model.zero_grad(set_to_none=True)
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                assert parameter.grad is None, (variant, name)
        for module in (model.fine_projector, model.coarse_projector):
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
        grads = [p.grad for p in model.event_scorer.parameters()]
        if scorer_trained:  # the perturbed top-K carries the gradient (the last bias gets ~0: min-max normalised)
            assert all(g is not None for g in grads) and model.event_scorer.mlp[0].weight.grad.abs().sum() > 1e-3
        else:
            assert all(g is None for g in grads), variant
    model.eval()


def test_a_parameter_no_part_covers_is_an_error(checkpoint):
    model = DynFocusForConditionalGeneration.from_pretrained(checkpoint, **TINY)
    model.extra_head = nn.Linear(2, 2)
    with pytest.raises(
        ValueError,
        match=r"variant 'lock_open'\), stage 'stage2'.*covers the parameters "
        r"\['extra_head.weight', 'extra_head.bias'\]",
    ):
        load_recipe("default").apply_freezing(model, "stage2")


# --------------------------------------------------------------------------------------------- derived objects


def test_training_arguments_carry_table_11(tmp_path):
    recipe = load_recipe("default")
    args = recipe.training_arguments("stage1", tmp_path, use_cpu=True)  # bf16 on CPU needs use_cpu
    assert (args.learning_rate, args.weight_decay, args.adam_beta1, args.adam_beta2) == (1e-3, 0.0, 0.9, 0.999)
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 256, 1)
    assert args.optim.value == "adamw_torch" and args.lr_scheduler_type.value == "cosine"
    assert args.bf16 and args.seed == 42 and args.report_to == [] and args.output_dir == str(tmp_path)
    assert args.warmup_steps == 0.03 and args.get_warmup_steps(1000) == 30 and args.get_warmup_steps(100) == 3
    assert args.deepspeed is None  # DeepSpeed is metadata unless asked for
    stage2 = recipe.training_arguments("stage2", tmp_path, world_size=8, bf16=False, learning_rate=1.5e-5)
    assert (stage2.learning_rate, stage2.bf16) == (1.5e-5, False)  # overrides win
    assert (stage2.per_device_train_batch_size, stage2.gradient_accumulation_steps) == (4, 1)  # 32 over 8 devices
    split = recipe.training_arguments("stage1", tmp_path, world_size=8, max_per_device_batch_size=12, bf16=False)
    assert (split.per_device_train_batch_size, split.gradient_accumulation_steps) == (8, 4)  # 32 per device -> 8 x 4
    with pytest.raises(ValueError, match=r"global batch size 32 must split evenly over `world_size` = 3"):
        recipe.training_arguments("stage2", tmp_path, world_size=3, bf16=False)
    with pytest.raises(ValueError, match=r"`stage` must be one of \['stage1', 'stage2'\], got 'stage3'"):
        recipe.training_arguments("stage3", tmp_path)


def test_deepspeed_config_is_a_plain_dict_of_the_paper_stage():
    recipe = load_recipe("default")
    assert recipe.deepspeed_config("stage1") == {
        "zero_optimization": {"stage": 1}, "bf16": {"enabled": "auto"}, "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    }  # fmt: skip
    assert recipe.deepspeed_config("stage2") is None  # Table 11: stage 0, no DeepSpeed


def test_sigma_annealing_is_off_by_default_and_an_option():
    recipe = load_recipe("default")
    assert recipe.callbacks("stage1") == [] and recipe.callbacks("stage2") == []
    (callback,) = recipe.callbacks("stage2", sigma_annealing=True)
    assert isinstance(callback, SigmaAnnealingCallback)
    assert (callback.sigma_max, callback.final_sigma) == (0.1, 0.0)
    assert callback.sigma_at(callback.sigma_max, 25, 100) == pytest.approx(0.075)
    assert "no decay" in recipe.source("stage1.sigma_annealing")


def test_sigma_annealing_from_the_yaml(tmp_path):
    data = yaml.safe_load(load_recipe("default").path.read_text())
    data["stages"]["stage2"]["sigma_annealing"] = True
    path = tmp_path / "annealed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    recipe = load_recipe(path)
    assert recipe.callbacks("stage1") == [] and len(recipe.callbacks("stage2")) == 1
    assert recipe.callbacks("stage2", sigma_annealing=False) == []


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
    (_set("learning_rate", 1e-4), r"unknown key\(s\) \['learning_rate'\] in the top level"),
    (_set("stages", "stage1", "warmup", 0.1), r"unknown key\(s\) \['stages.stage1.warmup'\] in stages.stage1"),
    (_set("model", "num_frames", 8), r"unknown key\(s\) \['model.num_frames'\] in model"),
    (_delete("model", "num_events"), r"missing key\(s\) \['model.num_events'\] in model"),
    (_delete("stages", "stage2", "deepspeed_stage"), r"missing key\(s\) \['stages.stage2.deepspeed_stage'\]"),
    (_delete("stages", "stage2"), r"`stages` must be a mapping with exactly the keys \['stage1', 'stage2'\]"),
    (_set("stages", "stage1", "batch_size", "256"),
     r"`stages.stage1.batch_size` must be an integer in \[1, inf\], got '256' \(str\)"),
    (_set("stages", "stage1", "learning_rate", 0.0),
     r"`stages.stage1.learning_rate` must be a number in \(0.0, 1.0\)"),
    (_set("stages", "stage2", "deepspeed_stage", 4),
     r"`stages.stage2.deepspeed_stage` must be an integer in \[0, 3\], got 4"),
    (_set("stages", "stage2", "init_from", "base"), r"`stages.stage2.init_from` must be 'stage1', got 'base'"),
    (_set("stages", "stage1", "sigma_annealing", "no"), r"`stages.stage1.sigma_annealing` must be true or false"),
    (_set("warmup_ratio", 1.0), r"`warmup_ratio` must be a number in \[0.0, 1.0\), got 1.0"),
    (_set("optimizer", "lamb"), r"`optimizer` must be one of \["),
    (_set("model", "event_keep_ratio", 1.5), r"`model.event_keep_ratio` must be a number in \(0.0, 1.0\], got 1.5"),
    (_set("model", "spatial_clusters", [16, "6"]), r"`model.spatial_clusters` must be a non-empty list of integers"),
    (_set("model", "num_pooled_tokens", 15),
     r"`model` does not make a valid DynFocusConfig: `num_pooled_tokens` must be a square"),
    (_set("model", "spatial_clusters", [6, 16]),
     r"`model` does not make a valid DynFocusConfig: `spatial_clusters` must decrease"),
    (_set("parts", "llm", ["language_model", "event_scorer"]),
     r"`parts.llm` and `parts.dpe` both list 'event_scorer'"),
    (_set("parts", "llm", "language_model"), r"`parts.llm` must be a list of module names"),
    (_set("stages", "stage1", "frozen", ["vision_tower", "qformer", "dpe", "cce", "llm"]),
     r"`stages.stage1` puts part\(s\) \['unused'\] in neither `trainable` nor `frozen`"),
    (_set("stages", "stage1", "trainable", ["projectors", "llm"]),
     r"`stages.stage1.trainable` and `stages.stage1.frozen` both list \['llm'\]"),
    (_set("stages", "stage2", "trainable", ["qformer", "dpe", "cce", "projectors", "llm", "audio"]),
     r"`stages.stage2` lists unknown part\(s\) \['audio'\]"),
    (_set("variants", "open_open", "stage1", {"dpe": "trainable", "cce": "open"}),
     r"`variants.open_open.stage1` must be a mapping of part -> 'trainable' or 'frozen'"),
    (_set("variants", "open_open", "stage1", {"dpe": "trainable", "decoder": "trainable"}),
     r"`variants.open_open.stage1` names unknown part\(s\) \['decoder'\]"),
    (_set("variants", "open_open", "stage1", {"dpe": "trainable"}),
     r"`variants.open_open.stage1` must set the same parts as the default variant 'lock_open' \(\['cce', 'dpe'\]\)"),
    (_set("variants", "lock_lock", "table1_row", 5),
     r"`variants.lock_lock.table1_row` must be null \(not a Table 1 row\)"),
    (_delete("variants", "lock_lock", "reported", "vcg_bench_score"),
     r"missing key\(s\) \['variants.lock_lock.reported.vcg_bench_score'\]"),
    (_delete("variants", "lock_lock", "stage2"), r"missing key\(s\) \['variants.lock_lock.stage2'\]"),
    (_set("default_variant", "best"), r"`default_variant` must be one of `variants` \["),
    (_set("default_variant", "open_open"),
     r"`default_variant` 'open_open' makes part '(dpe|cce)' trainable in stage1, but `stages.stage1` lists it frozen"),
    (_delete("sources", "fps"), r"`sources` gives no source for \['fps'\]"),
    (_delete("sources", "model.event_knn"), r"`sources` gives no source for \['model.event_knn'\]"),
    (_delete("sources", "variants.lock_lock"), r"`sources` gives no source for \['variants.lock_lock'\]"),
    (_delete("sources", "epochs"), r"no source for \['stage1.epochs', 'stage2.epochs'\]"),
    (_set("sources", "scheduler", "ours"), r"`sources` names unknown field\(s\) \['scheduler'\]"),
    (_set("sources", "seed", ""), r"`sources` must be a mapping of field name -> non-empty source text"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_recipes_raise_errors_naming_the_file_and_field(tmp_path, mutate, message):
    data = yaml.safe_load(load_recipe("default").path.read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"`stages.stage2.learning_rate` must be a number in \(0.0, 1.0\), got the string '2e-5'; write "
               r"floats with a dot and a signed exponent, e.g. 1.0e-4"),
        ("- a\n- b\n", r"the top level must be a mapping of keys to values, got \['a', 'b'\] \(list\)"),
        ("name: [unclosed\n", r"not valid YAML"),
    ],
)  # fmt: skip
def test_bad_yaml_text_raises_clear_errors(tmp_path, text, message):
    if text is None:  # PyYAML reads 2e-5 without a dot as a string
        text = load_recipe("default").path.read_text().replace("learning_rate: 2.0e-5", "learning_rate: 2e-5", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}: ")


def test_unknown_recipe_or_variant_names_list_the_known_ones():
    with pytest.raises(ValueError, match=re.escape("must be a shipped DynFocus recipe (default) or a YAML file")):
        load_recipe("dynfocus")
    known = "['lock_lock', 'lock_open', 'official_code', 'open_lock', 'open_open']"
    with pytest.raises(ValueError, match=re.escape(f"`variant` must be one of {known}, got 'best'")):
        load_recipe("default", variant="best")


def test_stage_1_caption_rows_take_the_recipes_prompt(checkpoint):
    from videoadapt.recipes.training import METHODS

    recipe, spec = load_recipe("default"), METHODS["dynfocus"]
    processor = DynFocusProcessor(
        AutoTokenizer.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer")
    )
    video = processor.tokenizer.video_token
    assert spec.prompt(recipe, processor, {"id": "cap0", "answers": ["a dog runs"]}) == f"{video} {recipe.prompt}"
    assert spec.prompt(recipe, processor, {"id": "qa0", "question": "why?"}) == f"{video} why?"
    assert recipe.prompt == "Describe the video briefly." and recipe.source("prompt").startswith("ours")
