"""Importing an official PAVE release (pickled `non_lora_trainables.bin` + PEFT adapter) into our patch format.

The "official" release is built here for a tiny LLaVA-OneVision with the official key names and shapes, and the
imported patch is checked against a hand-written copy of the official fusion forward (`PAVEModuleV5`).
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import videoadapt.pave_import as pave_import
from videoadapt.modeling_pave import PaveForConditionalGeneration
from videoadapt.pave_import import import_official_pave, main
from videoadapt.pave_patches import LORA_TARGET_MODULES
from videoadapt.testing.tiny_models import tiny_video_inputs


FRAMES, SIDE_DIM, HIDDEN, HEADS, FFN, MLP, RANK = 4, 24, 32, 4, 48, 48, 8
PREFIX = "base_model.model.model.temporal_aggregator."
LORA_MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # fmt: skip


def mapping(num_layers=2):
    """Official key (after the prefix) -> ours, written out by hand from pave_official.md section 5."""
    table = {"query_input_mapping": "query_proj", "input_mapping": "side_proj", "output_mapping.0": "output_head.fc1",
             "output_mapping.2": "output_head.fc2", "output_norm": "output_head.norm"}  # fmt: skip
    pairs = {f"{o}.{p}": f"{ours}.{p}" for o, ours in table.items() for p in ("weight", "bias")}
    for i in range(num_layers):
        o, ours = f"cross_attn_layers.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            pairs |= {f"{o}attn.q_linear.{p}": f"{ours}attn.q_proj.{p}", f"{o}attn.k_linear.{p}": f"{ours}attn.k_proj.{p}",
                      f"{o}ffn.0.{p}": f"{ours}ffn.norm.{p}"}  # fmt: skip
        pairs |= {f"{o}ffn.1.weight": f"{ours}ffn.fc1.weight", f"{o}ffn.3.weight": f"{ours}ffn.fc2.weight"}
    return pairs


def official_patch_state(query_dim, out_dim, num_layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"input_mapping": (HIDDEN, SIDE_DIM), "query_input_mapping": (HIDDEN, query_dim),
              "output_mapping.0": (MLP, HIDDEN), "output_mapping.2": (out_dim, MLP)}  # fmt: skip
    for i in range(num_layers):
        for name in ("q_linear", "k_linear", "v_linear"):
            shapes[f"cross_attn_layers.{i}.attn.{name}"] = (HIDDEN, HIDDEN)
    state = {}
    for name, (o, n) in shapes.items():
        state[f"{name}.weight"] = torch.randn(o, n, generator=g) * 0.2
        state[f"{name}.bias"] = torch.randn(o, generator=g)
    for i in range(num_layers):
        state[f"cross_attn_layers.{i}.ffn.0.weight"] = 1 + 0.1 * torch.randn(HIDDEN, generator=g)
        state[f"cross_attn_layers.{i}.ffn.0.bias"] = 0.1 * torch.randn(HIDDEN, generator=g)
        state[f"cross_attn_layers.{i}.ffn.1.weight"] = torch.randn(FFN, HIDDEN, generator=g) * 0.2
        state[f"cross_attn_layers.{i}.ffn.3.weight"] = torch.randn(HIDDEN, FFN, generator=g) * 0.2
    state["output_norm.weight"] = torch.randn(out_dim, generator=g)  # zero at init upstream; random here
    state["output_norm.bias"] = torch.randn(out_dim, generator=g)
    return {PREFIX + k: v for k, v in state.items()}


def official_lora_state(text_config, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, inter = text_config.hidden_size, text_config.intermediate_size
    head_dim = getattr(text_config, "head_dim", None) or h // text_config.num_attention_heads
    q, kv = text_config.num_attention_heads * head_dim, text_config.num_key_value_heads * head_dim
    sizes = {"self_attn.q_proj": (h, q), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
             "self_attn.o_proj": (q, h), "mlp.gate_proj": (h, inter), "mlp.up_proj": (h, inter),
             "mlp.down_proj": (inter, h)}  # fmt: skip
    state = {}
    for layer in range(text_config.num_hidden_layers):
        for module, (n_in, n_out) in sizes.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            state[f"{key}.lora_A.weight"] = torch.randn(RANK, n_in, generator=g) * 0.1
            state[f"{key}.lora_B.weight"] = torch.randn(n_out, RANK, generator=g) * 0.1
    return state


def write_release(folder: Path, patch_state, lora_state, num_llm_layers, lora_as_bin=False):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(patch_state, folder / "non_lora_trainables.bin")
    if lora_as_bin:
        torch.save(lora_state, folder / "adapter_model.bin")
    else:
        save_file(lora_state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    targets = [f"model.layers.{i}.{m}" for i in range(num_llm_layers) for m in LORA_MODULES]
    config = {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "lmms-lab/llava-onevision-qwen2-0.5b-ov",
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
              "layer_replication": None, "layers_pattern": None, "layers_to_transform": None, "loftq_config": {},
              "lora_alpha": 16, "lora_dropout": 0.05, "megatron_config": None, "megatron_core": "megatron.core",
              "modules_to_save": None, "peft_type": "LORA", "r": RANK, "rank_pattern": {}, "revision": None,
              "target_modules": targets, "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints):
    checkpoint = tiny_checkpoints["llava_onevision"]
    config = PaveForConditionalGeneration.config_class.from_pretrained(checkpoint)
    return checkpoint, config


@pytest.fixture
def release(tmp_path, tiny):
    _, config = tiny
    patch = official_patch_state(config.vision_config.hidden_size, config.text_config.hidden_size)
    lora = official_lora_state(config.text_config)
    return write_release(tmp_path / "official", patch, lora, config.text_config.num_hidden_layers), patch, lora


def run_import(folder, out, tiny, **kwargs):
    checkpoint, config = tiny
    args = dict(side_channel="audio", side_channel_dim=SIDE_DIM, output_dim=config.text_config.hidden_size,
                query_dim=config.vision_config.hidden_size, base_model_name_or_path=str(checkpoint))  # fmt: skip
    return import_official_pave(folder, out, **{**args, **kwargs})


def official_fusion(state, queries, side):
    """PAVEModuleV5.forward for one sample, from the official tensors: queries [T, N, Dq], side [L, h, w, C]."""

    def w(name):
        return state[PREFIX + name]

    def linear(x, name, bias=True):
        return F.linear(x, w(f"{name}.weight"), w(f"{name}.bias") if bias else None)

    T, N, _ = queries.shape
    q = linear(queries, "query_input_mapping")  # [T, N, E]
    kv = linear(side, "input_mapping")  # [L, h, w, E]
    L, h, wd, E = kv.shape
    if L < T:  # nn.Upsample(mode="trilinear", align_corners=True) along time only
        kv = F.interpolate(kv.permute(3, 0, 1, 2)[None], size=(T, h, wd), mode="trilinear", align_corners=True)
        kv, L = kv[0].permute(1, 2, 3, 0), T
    kv = kv.reshape(L, h * wd, E)
    sizes = [L // T + 1] * (L % T) + [L // T] * (T - L % T)  # split_list_lengths: the bigger chunks first
    starts = [sum(sizes[:t]) for t in range(T)]
    d = E // HEADS
    for i in range(sum(k.startswith(f"{PREFIX}cross_attn_layers.") and k.endswith("q_linear.weight") for k in state)):
        p = f"cross_attn_layers.{i}."
        attended = []
        for t in range(T):
            chunk = kv[starts[t] : starts[t] + sizes[t]].reshape(-1, E)
            qh = linear(q[t], p + "attn.q_linear").view(N, HEADS, d).transpose(0, 1)
            kh = linear(chunk, p + "attn.k_linear").view(-1, HEADS, d).transpose(0, 1)
            vh = linear(chunk, p + "attn.k_linear").view(-1, HEADS, d).transpose(0, 1)  # the official bug: k_linear
            probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
            attended.append((probs @ vh).transpose(0, 1).reshape(N, E))
        q = q + torch.stack(attended)
        normed = F.layer_norm(q, (E,), w(p + "ffn.0.weight"), w(p + "ffn.0.bias"))
        q = q + F.linear(F.gelu(F.linear(normed, w(p + "ffn.1.weight"))), w(p + "ffn.3.weight"))
    out = linear(F.gelu(linear(q, "output_mapping.0")), "output_mapping.2")
    return F.layer_norm(out, (out.shape[-1],), w("output_norm.weight"), w("output_norm.bias"))


def pooled_vision_features(model, pixels):
    """SigLIP features of the selected layer (pre-projector), bilinear-pooled like the official get_2dPool."""
    hidden_states = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    hidden = hidden_states[model.config.vision_feature_layer]
    g = int(math.isqrt(hidden.shape[1]))
    grid = hidden.view(-1, g, g, hidden.shape[-1]).permute(0, 3, 1, 2)
    pooled = F.interpolate(grid, size=(math.ceil(g / 2), math.ceil(g / 2)), mode="bilinear")
    return pooled.flatten(2).transpose(1, 2)  # [T, N, Dv]


# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "side_channel,grid,steps", [("audio", (1, 1), 7), ("audio", (1, 1), 3), ("video", (2, 2), 9)]
)  # fmt: skip
def test_import_matches_the_official_tensors_and_forward(release, tmp_path, tiny, side_channel, grid, steps):
    folder, patch_state, lora_state = release
    checkpoint, _ = tiny
    out = run_import(folder, tmp_path / "imported", tiny, side_channel=side_channel)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "config.json", "patch.safetensors", "patch_config.json"]  # fmt: skip
    pointer = json.loads((out / "config.json").read_text())
    assert pointer["model_type"] == "videoadapt_pave_patch" and pointer["base_model_type"] == "llava_onevision"
    config = json.loads((out / "patch_config.json").read_text())
    assert config["tie_value_to_key"] and not config["attention_output_projection"] and config["rope"] == "none"
    assert config["query_source"] == "vision" and config["base_model_type"] == "llava_onevision"
    sizes = [config[k] for k in ("num_layers", "hidden_size", "num_attention_heads", "ffn_size", "output_mlp_size")]
    assert sizes == [2, HIDDEN, HEADS, FFN, MLP]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["target_modules"] == LORA_TARGET_MODULES and adapter["base_model_name_or_path"] == str(checkpoint)
    readme = (out / "README.md").read_text()
    assert f"release folder `{folder.name}`" in readme and str(folder.parent) not in readme  # a name, never a path
    assert f"{PREFIX}cross_attn_layers.1.attn.v_linear.weight" in readme

    model = PaveForConditionalGeneration.from_pretrained(checkpoint).eval()
    model.load_patch(out, name="pave")
    ours = model.model.patches["pave"].state_dict()
    assert set(ours) == set(mapping().values())
    for official_key, our_key in mapping().items():
        assert torch.equal(ours[our_key], patch_state[PREFIX + official_key]), our_key
    parameters = dict(model.named_parameters())
    for key, tensor in lora_state.items():
        ours_key = key.removeprefix("base_model.model.").replace("model.layers.", "model.language_model.layers.")
        assert torch.equal(parameters[ours_key.replace(".weight", ".pave.weight")], tensor), key
    assert sum(".lora_" in n for n in parameters) == len(lora_state)

    pixels = tiny_video_inputs("llava_onevision", checkpoint, num_frames=FRAMES, batch=1)["pixel_values_videos"]
    side = torch.randn(1, steps, *grid, SIDE_DIM, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.disable_patches()
        plain = model.model.get_video_features(pixels).pooler_output
        model.set_patches(["pave"])
        patched = model.model.get_video_features(pixels, side_channels={"pave": {"features": side}}).pooler_output
        reference = official_fusion(patch_state, pooled_vision_features(model, pixels[0]), side[0])
    residual = (patched - plain)[0]
    assert torch.equal(residual[-1], torch.zeros_like(residual[-1]))  # the video's newline token is untouched
    torch.testing.assert_close(residual[:-1].view(reference.shape), reference, atol=1e-5, rtol=0)
    assert reference.abs().max() > 0.1


def test_unused_v_linear_is_dropped(release, tmp_path, tiny):
    folder, patch_state, lora_state = release
    first = load_file(run_import(folder, tmp_path / "a", tiny) / "patch.safetensors")
    perturbed = {k: v + 1.0 if ".v_linear." in k else v for k, v in patch_state.items()}
    torch.save(perturbed, folder / "non_lora_trainables.bin")
    second = load_file(run_import(folder, tmp_path / "b", tiny) / "patch.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert not any("v_" in k for k in first)


def test_bin_adapter_partial_lora_and_only_weights_only_loads(tmp_path, tiny, monkeypatch):
    checkpoint, config = tiny
    patch = official_patch_state(config.vision_config.hidden_size, config.text_config.hidden_size)
    lora = {k: v for k, v in official_lora_state(config.text_config).items() if ".self_attn." in k}
    folder = write_release(tmp_path / "official", patch, lora, config.text_config.num_hidden_layers, lora_as_bin=True)
    calls, original = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    out = run_import(folder, tmp_path / "imported", tiny)
    assert len(calls) == 2 and all(c.get("weights_only") is True for c in calls)
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == sorted(
        f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo"
    )  # fmt: skip
    model = PaveForConditionalGeneration.from_pretrained(checkpoint).eval()
    model.load_patch(out, name="pave")
    assert sum(".lora_" in n for n, _ in model.named_parameters()) == len(lora)


class Payload:
    """Unpickling this would run `_touch` (code execution); weights_only=True must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def _touch(path):
    Path(path).touch()


def _patch_mutations(patch_state, tmp_path):
    layer1 = PREFIX + "cross_attn_layers.1."
    wrong = {**patch_state, layer1 + "attn.k_linear.weight": torch.zeros(HIDDEN, HIDDEN - 1)}
    missing = {k: v for k, v in patch_state.items() if k != layer1 + "ffn.3.weight"}
    return {
        "missing": (None, r"non_lora_trainables.bin not found"),
        "shape": (wrong, r"wrong shapes \['layers.1.attn.k_proj.weight: \(32, 31\) != \(32, 32\)'\]"),
        "extra": ({**patch_state, PREFIX + "extra.weight": torch.zeros(1)}, r"unknown keys \[.*extra.weight'\]"),
        "second_patch": ({"base_model.model.model.temporal_aggregator2.output_norm.bias": torch.zeros(1)}, "unknown"),
        "missing_key": (missing, r"missing \['layers.1.ffn.fc2.weight'\]"),
        "not_tensors": ({PREFIX + "output_norm.bias": 3}, r"must hold a dict of str -> tensor, got non-tensor"),
        "list": ([torch.zeros(1)], r"must hold a dict of str -> tensor, got a list"),
        "custom_class": ({"x": Payload(str(tmp_path / "marker"))}, r"refused by torch.load\(weights_only=True\)"),
    }


@pytest.mark.parametrize("case", ["missing", "shape", "extra", "second_patch", "missing_key", "not_tensors", "list",
                                  "custom_class"])  # fmt: skip
def test_bad_patch_weights_are_refused_and_nothing_is_written(release, tmp_path, tiny, case):
    folder, patch_state, _ = release
    content, message = _patch_mutations(patch_state, tmp_path)[case]
    (folder / "non_lora_trainables.bin").unlink()
    if content is not None:
        torch.save(content, folder / "non_lora_trainables.bin")
    with pytest.raises(ValueError, match=message) as info:
        run_import(folder, tmp_path / "out" / "patch", tiny)
    assert str(folder / "non_lora_trainables.bin") in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "marker").exists()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_layers=3), r"`num_layers`=3 but the checkpoint has 2 .*pass num_layers=2"),
        (
            dict(side_channel_dim=16),
            r"`side_channel_dim`=16 but the checkpoint has 24 \(input_mapping.weight in .*non_lora",
        ),
        (dict(output_dim=896), r"`output_dim`=896 but the checkpoint has 64"),
        (dict(query_dim=1152), r"`query_dim`=1152 but the checkpoint has 32"),
        (dict(side_channel="3d"), r"side_channel='generic'"),
        (dict(side_channel="generic"), r"`side_channel_grid` .* is required"),
    ],
)
def test_arguments_are_cross_checked_against_the_checkpoint(release, tmp_path, tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_import(release[0], tmp_path / "out" / "patch", tiny, **kwargs)
    assert not (tmp_path / "out").exists()


def test_official_config_json_is_cross_checked(release, tmp_path, tiny):
    folder = release[0]
    (folder / "config.json").write_text(json.dumps({"model_type": "pave_qwen2", "hidden_size": 896}))
    with pytest.raises(
        ValueError, match=r"`output_dim`=64 but the checkpoint has 896 \(`hidden_size` in .*config.json"
    ):
        run_import(folder, tmp_path / "out" / "patch", tiny)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match=r"LoRA on LLM layer 1, but config.json has 1 layers"):
        run_import(folder, tmp_path / "out" / "patch", tiny)
    assert not (tmp_path / "out").exists()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2}))
    assert run_import(folder, tmp_path / "out" / "patch", tiny).is_dir()


def test_bad_lora_adapters_are_refused(release, tmp_path, tiny):
    folder, _, lora_state = release
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    cases = [
        ({k: v for k, v in lora_state.items() if k != key}, r"layer 1 mlp.up_proj: lora_A \(8, 64\) and lora_B None"),
        ({**lora_state, "base_model.model.lm_head.lora_A.weight": torch.zeros(8, 64)}, "unexpected LoRA key"),
        ({**lora_state, key: torch.zeros(128, 4)}, r"are not a rank-8 pair"),
    ]
    for state, message in cases:
        save_file(state, folder / "adapter_model.safetensors")
        with pytest.raises(ValueError, match=message):
            run_import(folder, tmp_path / "out" / "patch", tiny)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(ValueError, match="adapter_config.json not found"):
        run_import(folder, tmp_path / "out" / "patch", tiny)
    assert not (tmp_path / "out").exists()


def test_writing_is_atomic(release, tmp_path, tiny, monkeypatch):
    folder = release[0]
    out = run_import(folder, tmp_path / "out" / "patch", tiny)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pave_import, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        run_import(folder, out, tiny)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old patch is intact
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["patch"]  # no temporary folder left
    monkeypatch.undo()
    run_import(folder, out, tiny)  # an existing patch folder is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a patch folder"):
        run_import(folder, tmp_path / "other", tiny)
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_cli(release, tmp_path, tiny):
    folder, _, _ = release
    checkpoint, config = tiny
    args = [str(folder), str(tmp_path / "cli"), "--side-channel", "audio", "--side-channel-dim", str(SIDE_DIM),
            "--output-dim", str(config.text_config.hidden_size), "--query-dim", "32", "--base-model", str(checkpoint)]  # fmt: skip
    assert main(args) == 0
    written = json.loads((tmp_path / "cli" / "patch_config.json").read_text())
    assert written["base_model_name_or_path"] == str(checkpoint)
    assert main([*args[:1], str(tmp_path / "bad"), *args[2:], "--num-layers", "3"]) == 1
    assert not (tmp_path / "bad").exists()


def test_patch_names_load_patch_refuses_are_refused_before_anything_is_written(release, tmp_path, tiny):
    from transformers import AutoModelForImageTextToText

    folder, _, _ = release
    out = tmp_path / "avsd-0.5b"
    with pytest.raises(ValueError, match=r"`patch_name` must match .*got 'avsd-0.5b' \(the name of `out_dir`\); pass "
                       r"`patch_name` \(`--patch-name`\), e.g. 'avsd-0_5b'"):  # fmt: skip
        run_import(folder, out, tiny)
    with pytest.raises(ValueError, match=r"got '2 views'; .* e.g. 'patch_2_views'"):
        run_import(folder, out, tiny, patch_name="2 views")
    assert not out.exists()
    run_import(folder, out, tiny, patch_name="avsd")
    assert AutoModelForImageTextToText.from_pretrained(out).patch_names == ["avsd"]  # base + patch, one line


def test_the_card_names_the_release_folder_not_its_path(release, tmp_path, tiny):
    folder, _, _ = release
    card = (run_import(folder, tmp_path / "avsd", tiny) / "README.md").read_text()
    assert "from the release folder `official`" in card and str(tmp_path) not in card


def test_cli_errors_name_the_command_and_the_argument(release, tmp_path, tiny, capsys):
    from videoadapt.cli import main as cli_main

    folder, _, _ = release
    args = ["import-official-pave", str(folder), str(tmp_path / "out"), "--side-channel", "audio",
            "--output-dim", str(tiny[1].text_config.hidden_size)]  # fmt: skip
    assert cli_main([*args, "--side-channel-dim", "8"]) == 1  # the checkpoint's is 24
    assert capsys.readouterr().err.startswith("videoadapt import-official-pave: error: `side_channel_dim`=8 but")
    with pytest.raises(SystemExit) as info:
        cli_main([*args, "--side-channel-dim", "x"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "usage: videoadapt import-official-pave" in err
    assert "argument --side-channel-dim: must be an integer >= 1, got 'x'" in err
    assert main([*args[1:], "--side-channel-dim", "8"]) == 1
    assert capsys.readouterr().err.startswith("python -m videoadapt.pave_import: error: `side_channel_dim`=8")
    assert not (tmp_path / "out").exists()
