"""The shipped accelerate configs: loaded by accelerate's own loader, resolved by `accelerate launch` (launchers
stubbed: nothing is started), command-line overrides, the FSDP wrap policy on our models, DeepSpeed plugin settings,
and the FSDP layer-class helpers."""

import importlib

import pytest
import torch
from accelerate.commands import launch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env
from transformers import LlamaConfig, LlamaForCausalLM

from videoadapt.modeling_compact import CompactForConditionalGeneration
from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
from videoadapt.modeling_pave import PaveForConditionalGeneration, PaveLlavaNextVideoForConditionalGeneration
from videoadapt.modeling_reef import ReefForConditionalGeneration
from videoadapt.recipes.accelerate_configs import (
    accelerate_config_path,
    check_fsdp_layer_classes,
    fsdp_layer_classes,
    list_accelerate_configs,
    load_accelerate_config,
    main,
    write_fsdp_config,
)


DISTRIBUTED = {
    "single_device": DistributedType.NO,
    "ddp": DistributedType.MULTI_GPU,
    "fsdp": DistributedType.FSDP,
    "fsdp_instructblip": DistributedType.FSDP,
    "deepspeed_zero2": DistributedType.DEEPSPEED,
    "deepspeed_zero3": DistributedType.DEEPSPEED,
}
# where transformers defines each layer class the FSDP configs wrap
LAYER_MODULES = {
    "Qwen2DecoderLayer": "qwen2",
    "SiglipEncoderLayer": "siglip",
    "LlamaDecoderLayer": "llama",
    "InstructBlipVideoEncoderLayer": "instructblipvideo",
    "CLIPEncoderLayer": "clip",
}
OVERRIDES = ["--num_processes", "16", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.1.2.3"]
OVERRIDES += ["--main_process_port", "29555"]


def layer_class(name: str) -> type:
    return getattr(
        importlib.import_module(f"transformers.models.{LAYER_MODULES[name]}.modeling_{LAYER_MODULES[name]}"), name
    )


@pytest.fixture
def launched(monkeypatch):
    """Runs `accelerate launch` up to its launcher, which is replaced by a recorder of the launch arguments and of the
    environment accelerate's own `prepare_*` function builds for the training processes."""
    record = {}

    def recorder(kind, prepare):
        def run(args):
            out = prepare(args)
            record.update(kind=kind, args=args, env=out if isinstance(out, dict) else out[1])

        return run

    monkeypatch.setattr(launch, "simple_launcher", recorder("simple", prepare_simple_launcher_cmd_env))
    monkeypatch.setattr(launch, "multi_gpu_launcher", recorder("multi_gpu", prepare_multi_gpu_env))
    monkeypatch.setattr(launch, "deepspeed_launcher", recorder("deepspeed", prepare_deepspeed_cmd_env))

    def run(name: str, *options: str) -> dict:
        argv = ["--config_file", str(accelerate_config_path(name)), *options, "train.py", "--recipe", "msvd_qa"]
        launch.launch_command(launch.launch_command_parser().parse_args(argv))
        return record

    return run


def plugin_env(monkeypatch, env: dict[str, str]) -> None:
    """What a training process launched with `env` sees (accelerate's plugins read these variables)."""
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)


# ------------------------------------------------------------------------------------------------ loading


def test_the_shipped_configs_are_listed_and_found():
    assert list_accelerate_configs() == sorted(DISTRIBUTED)
    for name in DISTRIBUTED:
        assert accelerate_config_path(name).is_file() and accelerate_config_path(name).name == f"{name}.yaml"
    with pytest.raises(
        ValueError, match=r"`name` must be one of the shipped accelerate configs \[.*'ddp'.*\], got 'dp'"
    ):
        accelerate_config_path("dp")


@pytest.mark.parametrize("name", sorted(DISTRIBUTED))
def test_each_config_loads_with_accelerates_loader(name):
    path = accelerate_config_path(name)
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.compute_environment.value == "LOCAL_MACHINE" and config.distributed_type == DISTRIBUTED[name]
    assert config.mixed_precision == "bf16" and config.use_cpu is False  # every config is for GPUs
    assert (config.num_machines, config.machine_rank) == (1, 0)
    assert config.num_processes == (1 if name == "single_device" else 8)
    # accelerate copies these sections into the launch arguments without checking the keys: a typo would be ignored
    options = {action.dest for action in launch.launch_command_parser()._actions}
    for section in (config.fsdp_config, config.deepspeed_config):
        assert set(section) <= options, sorted(set(section) - options)
    # (`to_dict` turns the config's enums into strings in place: compare fresh loads)
    assert load_accelerate_config(name).to_dict() == ClusterConfig.from_yaml_file(path).to_dict() == config.to_dict()


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match=r"shipped accelerate config \[.*\] or a YAML file, got 'nope'"):
        load_accelerate_config("nope")
    with pytest.raises(ValueError, match="a YAML file, got '.*missing.yaml'"):
        load_accelerate_config(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------------------ launch


@pytest.mark.parametrize("name", sorted(DISTRIBUTED))
def test_accelerate_launch_resolves_each_config_and_takes_command_line_overrides(launched, name):
    record = launched(name)
    args = record["args"]
    assert args.mixed_precision == "bf16" and record["env"]["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert args.training_script_args == ["--recipe", "msvd_qa"]
    if name == "single_device":
        assert record["kind"] == "simple" and args.num_processes == 1 and args.gpu_ids == "0"
        assert record["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        return
    assert record["kind"] == ("deepspeed" if name.startswith("deepspeed") else "multi_gpu")
    assert (args.num_processes, args.nproc_per_node, args.num_machines) == (8, "8", 1)  # one node, 8 GPUs
    record = launched(name, *OVERRIDES)  # 2 nodes x 8 GPUs, this is node 1
    args = record["args"]
    assert (args.num_processes, args.num_machines, args.machine_rank) == (16, 2, 1)
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", 1)  # torchrun's arguments
    assert args.rdzv_endpoint == "10.1.2.3:29555" and args.rdzv_backend == "static"
    assert launched(name, "--num_processes", "2")["args"].nproc_per_node == "2"  # 2 GPUs


@pytest.mark.parametrize("name", ["fsdp", "fsdp_instructblip"])
def test_fsdp_configs_name_transformers_layer_classes(launched, monkeypatch, name):
    config = load_accelerate_config(name)
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    names = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert names == {"fsdp": ["Qwen2DecoderLayer", "SiglipEncoderLayer"],
                     "fsdp_instructblip": ["LlamaDecoderLayer", "InstructBlipVideoEncoderLayer"]}[name]  # fmt: skip
    assert all(issubclass(layer_class(n), torch.nn.Module) for n in names)
    env = launched(name)["env"]
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == ",".join(names)
    plugin_env(monkeypatch, env)
    plugin = FullyShardedDataParallelPlugin()  # as the Accelerator builds it in each training process
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == names
    assert plugin.state_dict_type.name == "FULL_STATE_DICT" and plugin.cpu_ram_efficient_loading is True


def wrapped(plugin: FullyShardedDataParallelPlugin, model: torch.nn.Module) -> dict[str, int]:
    """Class name -> count of the modules accelerate's FSDP-2 auto-wrap policy gives their own FSDP unit."""
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    counts: dict[str, int] = {}
    for module in model.modules():
        if policy(module):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


MODELS = {  # model class, tiny checkpoint family, loading overrides, shipped FSDP config
    "pave": (PaveForConditionalGeneration, "llava_onevision", {}, "fsdp"),
    "compact": (CompactForConditionalGeneration, "llava_onevision", {"compressor_grid": 8}, "fsdp"),
    "reef": (ReefForConditionalGeneration, "instructblip_video", {"num_selected_tokens": 8}, "fsdp_instructblip"),
    "dynfocus": (DynFocusForConditionalGeneration, "instructblip_video", {}, "fsdp_instructblip"),
}


@pytest.mark.parametrize("method", sorted(MODELS))
def test_fsdp_wraps_every_decoder_and_vision_layer_of_our_models(launched, monkeypatch, tiny_checkpoints, method):
    model_class, family, overrides, name = MODELS[method]
    model = model_class.from_pretrained(tiny_checkpoints[family], **overrides)
    decoder, vision = load_accelerate_config(name).fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert fsdp_layer_classes(model) == [decoder, vision]
    assert check_fsdp_layer_classes(name, model) == [decoder, vision]
    plugin_env(monkeypatch, launched(name)["env"])
    assert wrapped(FullyShardedDataParallelPlugin(), model) == {
        decoder: 2,
        vision: 2,
    }  # 2 + 2 layers in the tiny model
    other = "fsdp_instructblip" if name == "fsdp" else "fsdp"
    plugin_env(monkeypatch, launched(other)["env"])
    with pytest.raises(ValueError, match="Could not find the transformer layer class"):  # accelerate's own failure
        wrapped(FullyShardedDataParallelPlugin(), model)
    with pytest.raises(ValueError, match=rf"names classes {model_class.__name__} does not contain: \[.*\] and leaves"):
        check_fsdp_layer_classes(other, model)  # ours: says so before any weight is loaded on a GPU


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_give_zero_stages_with_trainer_filled_values(launched, monkeypatch, stage):
    name = f"deepspeed_zero{stage}"
    assert load_accelerate_config(name).deepspeed_config["zero_stage"] == stage
    env = launched(name)["env"]
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    plugin_env(monkeypatch, env)
    plugin = DeepSpeedPlugin()  # deepspeed itself is not needed to build the plugin's config
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == stage and ds["zero_optimization"]["stage"] == stage
    assert (
        ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == ds["gradient_clipping"] == "auto"
    )
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == ds["zero_optimization"]["offload_param"]["device"]
    assert ds["zero_optimization"]["offload_param"]["device"] == "none"
    assert plugin.zero3_init_flag is (stage == 3)
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)


# ------------------------------------------------------------------------------------------------ helpers


def test_layer_classes_of_another_base_and_writing_a_config_for_it(tmp_path, tiny_checkpoints):
    model = PaveLlavaNextVideoForConditionalGeneration.from_pretrained(tiny_checkpoints["llava_next_video"])
    assert fsdp_layer_classes(model) == ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    with pytest.raises(ValueError, match=r"`--fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer,CLIPEncoderLayer`"):
        check_fsdp_layer_classes("fsdp", model)
    path = write_fsdp_config(
        model, tmp_path / "fsdp_next.yaml", extra_classes=["CLIPEncoderLayer", "LlavaNextVideoPooler"]
    )
    config = load_config_from_file(str(path))
    shipped = load_accelerate_config("fsdp").fsdp_config
    assert config.fsdp_config == {
        **shipped,
        "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer,CLIPEncoderLayer,LlavaNextVideoPooler",
    }
    assert config.distributed_type == DistributedType.FSDP and config.num_processes == 8


def test_helper_errors():
    with pytest.raises(TypeError, match="`model` must be a transformers PreTrainedModel .*, got Linear"):
        fsdp_layer_classes(torch.nn.Linear(2, 2))
    text_only = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, vocab_size=32))  # fmt: skip
    with pytest.raises(ValueError, match="found no vision tower layers in LlamaForCausalLM"):
        fsdp_layer_classes(text_only)
    with pytest.raises(ValueError, match="no `fsdp_config.fsdp_transformer_layer_cls_to_wrap`"):
        check_fsdp_layer_classes("ddp", text_only)
    with pytest.raises(ValueError, match="`base` must be an FSDP config"):
        write_fsdp_config(text_only, "unused.yaml", base="ddp")


def test_module_prints_a_config_path(capsys):
    main(["deepspeed_zero3"])
    assert capsys.readouterr().out == f"{accelerate_config_path('deepspeed_zero3')}\n"
    with pytest.raises(SystemExit, match=r"usage: python -m videoadapt.recipes.accelerate_configs \{ddp,"):
        main(["zero3"])
