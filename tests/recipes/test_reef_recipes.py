"""REEF recipes: the shipped YAMLs equal the supplement's Tables 1-3, and turn into valid configs, TrainingArguments,
freezing rules and callbacks; bad YAMLs fail with errors that name the file and the field."""

import configparser
import importlib.resources
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from videoadapt.callbacks import SigmaAnnealingCallback
from videoadapt.configuration.configuration_reef import ReefConfig
from videoadapt.modeling_reef import ReefForConditionalGeneration
from videoadapt.processors.processing_reef import REEF_PROMPTS
from videoadapt.recipes.reef_recipes import STAGES, list_recipes, load_recipe
from videoadapt.testing.tiny_models import build_tiny_checkpoint


# The REEF supplement's Tables 1-3, copied by hand, one row per table column:
# (table, task, dataset, initial epochs, main epochs, learning rate, batch size, frames, bank length, alpha, K, prompt)
TABLES = {
    "breakfast": (1, "classification", "breakfast", 5, 20, 1e-4, 64, 20, 10, 0.7, 100,
                  "What type of breakfast is shown in the video?"),
    "activitynet": (1, "classification", "activitynet", 5, 20, 1e-4, 64, 20, 10, 0.9, 144,
                    "what is the person doing in the video?"),
    "msvd_qa": (2, "qa", "msvd", 2, 5, 1e-4, 128, 20, 10, 0.7, 100, "Question: {} Short Answer:"),
    "activitynet_qa": (2, "qa", "activitynet", 2, 5, 1e-4, 128, 20, 10, 0.9, 121, "Question: {} Short Answer:"),
    "msvd_caption": (3, "caption", "msvd", 3, 10, 1e-5, 96, 80, 40, 0.7, 100, "what does the video describe?"),
    "youcook2_caption": (3, "caption", "youcook2", 3, 10, 1e-4, 96, 80, 40, 0.7, 144,
                         "what does the video describe?"),
}  # fmt: skip
# the same in every column: LLM, AdamW betas, weight decay, image resolution, beam size
COMMON = {"llm": "Vicuna-7B", "adam_betas": (0.9, 0.999), "weight_decay": 0.05, "image_resolution": 224, "beams": 5}
PROMPT_KEYS = {"breakfast": "breakfast", "activitynet": "activitynet_classification", "msvd_qa": "qa",
               "activitynet_qa": "qa", "msvd_caption": "caption", "youcook2_caption": "caption"}  # fmt: skip
OVERRIDE_KEYS = {"num_frames", "memory_bank_length", "alpha", "num_selected_tokens", "topk_num_samples", "topk_sigma",
                 "detach_memory"}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and far faster when other processes load the CPU); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint("instructblip_video", tmp_path_factory.mktemp("reef_recipes") / "ibv")


# --------------------------------------------------------------------------------------------- shipped recipes


def test_one_recipe_per_table_column_ships_as_package_data():
    assert list_recipes() == sorted(TABLES)
    folder = importlib.resources.files("videoadapt.recipes") / "reef"
    assert sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".yaml")) == sorted(
        f"{name}.yaml" for name in TABLES
    )
    for name in TABLES:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.path.name == f"{name}.yaml"
        assert load_recipe(recipe.path) == recipe  # by path or by name: the same recipe


def test_setup_cfg_ships_the_yamls_and_declares_pyyaml():
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    assert "reef/*.yaml" in config["options.package_data"]["videoadapt.recipes"].split()
    assert "pyyaml>=6" in config["options"]["install_requires"].split()


@pytest.mark.parametrize("name", sorted(TABLES))
def test_recipe_values_equal_the_supplement_table(name):
    table, task, dataset, initial_epochs, main_epochs, lr, batch, frames, bank, alpha, k, prompt = TABLES[name]
    recipe = load_recipe(name)
    assert (recipe.task, recipe.dataset, recipe.llm, recipe.prompt) == (task, dataset, COMMON["llm"], prompt)
    assert recipe.prompt == REEF_PROMPTS[PROMPT_KEYS[name]]  # the processor's copy agrees
    assert recipe.image_resolution == COMMON["image_resolution"]
    assert recipe.generation.num_beams == COMMON["beams"]
    assert (recipe.initial.epochs, recipe.main.epochs) == (initial_epochs, main_epochs)
    for stage in (recipe.initial, recipe.main):  # the table's single values hold for both stages
        assert (stage.learning_rate, stage.batch_size, stage.num_frames, stage.memory_bank_length) == (
            lr, batch, frames, bank
        )  # fmt: skip
        assert (stage.adam_betas, stage.weight_decay) == (COMMON["adam_betas"], COMMON["weight_decay"])
        assert (stage.topk_num_samples, stage.topk_sigma) == (500, 0.05)  # supplement section 1; STTS sigma
    assert (recipe.main.alpha, recipe.main.num_selected_tokens) == (alpha, k)
    # and each of those values cites this table
    for field in ("task", "dataset", "llm", "prompt", "image_resolution", "generation.num_beams", "initial.epochs",
                  "main.epochs", "main.learning_rate", "main.batch_size", "main.adam_betas", "main.weight_decay",
                  "main.num_frames", "main.memory_bank_length", "main.alpha", "main.num_selected_tokens"):  # fmt: skip
        assert recipe.source(field).startswith(f"supplement Table {table}"), field


@pytest.mark.parametrize("name", sorted(TABLES))
def test_initial_stage_is_the_ma_lmm_equivalent_adapter_and_main_adds_the_scorers(name):
    recipe = load_recipe(name)
    initial, main = recipe.initial, recipe.main
    assert (initial.init_from, main.init_from) == ("base", "initial")
    assert (initial.alpha, initial.num_selected_tokens, initial.detach_memory, initial.sigma_annealing) == (
        1.0, None, True, False
    )  # fmt: skip
    assert (main.detach_memory, main.sigma_annealing) == (False, True)
    adapter = {
        "query_tokens",
        "qformer",
        "language_projection",
        "frame_position_embedding",
        "vision_model.post_layernorm",
    }
    assert set(initial.trainable) == adapter
    assert set(initial.frozen) == {"vision_model", "language_model", "spatial_filter", "temporal_compression"}
    assert set(main.trainable) == adapter | {"spatial_filter", "temporal_compression"}
    assert set(main.frozen) == {"vision_model", "language_model"}
    for field in ("initial.alpha", "initial.num_selected_tokens", "warmup_epochs", "bf16", "main.detach_memory"):
        assert recipe.source(field).startswith("ours"), field
    assert recipe.source("lr_scheduler").startswith("MA-LMM")


# --------------------------------------------------------------------------------------------- derived objects


@pytest.mark.parametrize("name", sorted(TABLES))
def test_config_overrides_build_valid_reef_configs(name):
    recipe = load_recipe(name)
    for stage in STAGES:
        overrides = recipe.config_overrides(stage)
        assert set(overrides) == OVERRIDE_KEYS
        config = ReefConfig(**overrides)  # InstructBLIP-Video's default sizes: 224 / 14 -> 256 spatial tokens
        config.check_token_budget()
        assert config.num_patches == 256
        for key, value in overrides.items():
            assert getattr(config, key) == value, key
    assert ReefConfig(**recipe.config_overrides("initial")).resolved_merge_granularity == "position"  # MA-LMM's
    assert ReefConfig(**recipe.config_overrides("main")).resolved_merge_granularity == "frame"
    kwargs = recipe.processor_kwargs("main")
    assert kwargs["num_frames"] == TABLES[name][7]
    assert kwargs["prompt_template"] == (TABLES[name][11] if TABLES[name][1] == "qa" else None)


def test_training_arguments_carry_the_table_optimiser(tmp_path):
    recipe = load_recipe("msvd_qa")
    args = recipe.training_arguments("main", tmp_path, use_cpu=True)  # bf16 on CPU needs use_cpu
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.weight_decay) == (1e-4, 0.9, 0.999, 0.05)
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (5, 128, 1)
    assert args.lr_scheduler_type.value == "cosine" and args.bf16 and args.seed == 42
    assert args.report_to == [] and args.output_dir == str(tmp_path)
    assert args.warmup_steps == pytest.approx(1 / 5) and args.get_warmup_steps(1000) == 200  # one of five epochs
    initial = recipe.training_arguments("initial", tmp_path, bf16=False, learning_rate=3e-5)  # overrides win
    assert (initial.num_train_epochs, initial.bf16, initial.learning_rate) == (2, False, 3e-5)
    assert initial.get_warmup_steps(1000) == 500  # one of two epochs


@pytest.mark.parametrize(
    ("name", "world_size", "max_per_device", "expected"),
    [
        ("msvd_qa", 1, None, (128, 1)),
        ("msvd_qa", 4, 8, (8, 4)),
        ("msvd_qa", 8, 3, (2, 8)),  # 16 per process; the largest divisor of 16 within 3 is 2
        ("msvd_caption", 8, 8, (6, 2)),  # 12 per process -> 6 x 2
        ("msvd_caption", 3, None, (32, 1)),
        ("breakfast", 2, 64, (32, 1)),
    ],
)
def test_batch_split_keeps_the_global_batch_exact(tmp_path, name, world_size, max_per_device, expected):
    recipe = load_recipe(name)
    args = recipe.training_arguments("main", tmp_path, world_size=world_size,
                                     max_per_device_batch_size=max_per_device, bf16=False)  # fmt: skip
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == expected
    assert expected[0] * expected[1] * world_size == recipe.main.batch_size


def test_bad_training_arguments_raise(tmp_path):
    recipe = load_recipe("msvd_qa")
    with pytest.raises(ValueError, match=r"global batch size 128 must split evenly over `world_size` = 5"):
        recipe.training_arguments("main", tmp_path, world_size=5, bf16=False)
    with pytest.raises(ValueError, match=r"`world_size` must be an integer >= 1, got 0"):
        recipe.training_arguments("main", tmp_path, world_size=0, bf16=False)
    with pytest.raises(ValueError, match=r"`max_per_device_batch_size` must be an integer >= 1 or None, got 0"):
        recipe.training_arguments("main", tmp_path, max_per_device_batch_size=0, bf16=False)
    with pytest.raises(ValueError, match=r"`stage` must be one of \['initial', 'main'\], got 'final'"):
        recipe.training_arguments("final", tmp_path)


def test_generation_kwargs_and_callbacks():
    assert load_recipe("breakfast").generation_kwargs() == {
        "num_beams": 5, "max_new_tokens": 20, "min_new_tokens": 1, "repetition_penalty": 1.5,
        "length_penalty": 1.0, "num_return_sequences": 5, "do_sample": False,
    }  # fmt: skip
    assert load_recipe("msvd_qa").generation_kwargs() == {
        "num_beams": 5, "max_new_tokens": 10, "min_new_tokens": 1, "repetition_penalty": 1.5,
        "length_penalty": 0.0, "num_return_sequences": 1, "do_sample": False,
    }  # fmt: skip
    recipe = load_recipe("youcook2_caption")
    assert (recipe.generation.max_new_tokens, recipe.generation.min_new_tokens) == (30, 2)
    assert recipe.callbacks("initial") == []
    (callback,) = recipe.callbacks("main")
    assert isinstance(callback, SigmaAnnealingCallback)
    assert (callback.sigma_max, callback.final_sigma) == (0.05, 0.0)
    assert callback.sigma_at(callback.sigma_max, 25, 100) == pytest.approx(0.0375)  # 0.05 * (1 - 25 / 100)


# --------------------------------------------------------------------------------------------- freezing


def _parameter_ids(*modules_or_parameters) -> set[int]:
    ids = set()
    for item in modules_or_parameters:
        ids.update(id(p) for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()))
    return ids


def test_apply_freezing_trains_exactly_the_stage_parts_of_the_tiny_model(checkpoint):
    torch.manual_seed(0)
    model = ReefForConditionalGeneration.from_pretrained(
        checkpoint, num_selected_tokens=8, topk_num_samples=20, memory_bank_length=1
    )  # a merge every step: RTC takes part
    recipe = load_recipe("msvd_qa")
    # reference by module objects, not by names: the MA-LMM adapter, then the scorers on top
    adapter = _parameter_ids(model.query_tokens, model.qformer, model.language_projection,
                             model.frame_position_embedding, model.vision_model.post_layernorm)  # fmt: skip
    scorers = _parameter_ids(model.spatial_filter, model.temporal_compression)
    for stage, expected in (("initial", adapter), ("main", adapter | scorers)):
        trained = recipe.apply_freezing(model, stage)
        assert trained == sorted(recipe.trainable_parameters(model, stage))
        assert {id(p) for p in model.parameters() if p.requires_grad} == expected, stage
        assert {id(p) for n, p in model.named_parameters() if n in trained} == expected, stage
    assert not model.vision_model.embeddings.patch_embedding.weight.requires_grad
    assert not model.vision_model.encoder.layers[0].self_attn.qkv.weight.requires_grad
    assert not any(p.requires_grad for p in model.language_model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 49634  # the tiny sizes, counted by hand

    # a training step in the main stage: gradients reach exactly the trainable parameters that take part
    model.train()
    pixels = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    qformer_ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    ids = torch.tensor([[model.config.video_token_index] * 4 + [10, 11, 12]] * 2)
    loss = model(pixel_values=pixels, qformer_input_ids=qformer_ids, qformer_attention_mask=(qformer_ids > 0).long(),
                 input_ids=ids, labels=ids).loss  # fmt: skip
    loss.backward()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert parameter.grad is None, name
    for module in (model.spatial_filter.scorer, model.temporal_compression.scorer, model.language_projection):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_a_parameter_no_rule_covers_is_an_error(checkpoint):
    model = ReefForConditionalGeneration.from_pretrained(checkpoint, num_selected_tokens=8)
    model.extra_head = nn.Linear(2, 2)
    with pytest.raises(
        ValueError, match=r"stage 'main'.*covers the parameters \['extra_head.weight', 'extra_head.bias'\]"
    ):
        load_recipe("msvd_qa").apply_freezing(model, "main")


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
    (_set("stages", "main", "sigma", 0.1), r"unknown key\(s\) \['stages.main.sigma'\] in stages.main"),
    (_delete("stages", "initial", "epochs"), r"missing key\(s\) \['stages.initial.epochs'\]"),
    (_delete("stages", "main"), r"`stages` must be a mapping with exactly the keys \['initial', 'main'\]"),
    (_set("stages", "main", "batch_size", "64"), r"`stages.main.batch_size` must be an integer in \[1, inf\], got '64' \(str\)"),
    (_set("stages", "initial", "epochs", True), r"`stages.initial.epochs` must be an integer in \[1, inf\], got True"),
    (_set("stages", "main", "alpha", 1.5), r"`stages.main.alpha` must be a number in \[0.0, 1.0\], got 1.5"),
    (_set("stages", "main", "learning_rate", 0.0), r"`stages.main.learning_rate` must be a number in \(0.0, 1.0\)"),
    (_set("stages", "main", "num_selected_tokens", 300), r"`stages.main.num_selected_tokens` must be in \[1, 256\]"),
    (_set("stages", "main", "num_selected_tokens", 0), r"`stages.main.num_selected_tokens` must be null \(no filtering\)"),
    (_set("stages", "main", "adam_betas", [0.9]), r"`stages.main.adam_betas` must be a list of two numbers"),
    (_set("stages", "main", "adam_betas", [0.9, 1.0]), r"`stages.main.adam_betas` must be .* in \[0.0, 1.0\)"),
    (_set("stages", "main", "num_frames", 121), r"`stages.main.num_frames` must be an integer in \[1, 120\]"),
    (_set("stages", "main", "frozen", ["vision_model", "language_model", "qformer"]),
     r"`stages.main.trainable` and `stages.main.frozen` both list \['qformer'\]"),
    (_set("stages", "main", "trainable", "qformer"), r"`stages.main.trainable` must be a list of module names"),
    (_set("stages", "main", "init_from", "base"), r"`stages.main.init_from` must be 'initial', got 'base'"),
    (_set("task", "retrieval"), r"`task` must be one of \['classification', 'qa', 'caption'\], got 'retrieval'"),
    (_set("prompt", "Question: Short Answer:"), r"`prompt` must hold exactly one '\{\}' \(the question\)"),
    (_set("lr_scheduler", "cosine_annealing"), r"`lr_scheduler` must be one of \["),
    (_set("warmup_epochs", 2.0), r"`warmup_epochs` must be < `stages.initial.epochs` = 2, got 2.0"),
    (_set("bf16", "yes"), r"`bf16` must be true or false, got 'yes' \(str\)"),
    (_set("generation", "min_new_tokens", 11), r"`generation.min_new_tokens` \(11\) must be <= "),
    (_set("generation", "num_return_sequences", 6), r"`generation.num_return_sequences` \(6\) must be <= "),
    (_set("generation", "top_p", 0.9), r"unknown key\(s\) \['generation.top_p'\] in generation"),
    (_delete("sources", "seed"), r"`sources` gives no source for \['seed'\]"),
    (_delete("sources", "learning_rate"), r"no source for \['initial.learning_rate', 'main.learning_rate'\]"),
    (_set("sources", "optimizer", "ours"), r"`sources` names unknown field\(s\) \['optimizer'\]"),
    (_set("sources", "seed", ""), r"`sources` must be a mapping of field name -> non-empty source text"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_recipes_raise_errors_naming_the_file_and_field(tmp_path, mutate, message):
    data = yaml.safe_load(load_recipe("msvd_qa").path.read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"`stages.initial.learning_rate` must be a number in \(0.0, 1.0\), got the string '1e-4'; write "
               r"floats with a dot and a signed exponent, e.g. 1.0e-4"),
        ("- a\n- b\n", r"the top level must be a mapping of keys to values, got \['a', 'b'\] \(list\)"),
        ("name: [unclosed\n", r"not valid YAML"),
    ],
)  # fmt: skip
def test_bad_yaml_text_raises_clear_errors(tmp_path, text, message):
    if text is None:  # PyYAML reads 1e-4 without a dot as a string
        text = load_recipe("msvd_qa").path.read_text().replace("learning_rate: 1.0e-4", "learning_rate: 1e-4", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}: ")


def test_unknown_recipe_name_lists_the_shipped_ones(tmp_path):
    names = ", ".join(sorted(TABLES))
    with pytest.raises(ValueError, match=re.escape(f"must be a shipped REEF recipe ({names}) or a YAML file")):
        load_recipe("msvd")
    with pytest.raises(ValueError, match="got 'missing.yaml'"):
        load_recipe("missing.yaml")
