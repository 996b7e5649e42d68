"""PAVE on tiny real base models: identity at init, gradients, generate, patches on disk, several patches, errors."""

import copy
import functools
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from videoadapt.configuration.configuration_pave import PavePatchConfig, PavePatchRepoConfig
from videoadapt.modeling_pave import (
    PaveForConditionalGeneration,
    PaveLlavaNextVideoForConditionalGeneration,
    PavePatch,
    PaveVideoLlavaForConditionalGeneration,
)
from videoadapt.testing.tiny_models import tiny_video_inputs


FAMILIES = {
    "llava_onevision": PaveForConditionalGeneration,
    "llava_next_video": PaveLlavaNextVideoForConditionalGeneration,
    "video_llava": PaveVideoLlavaForConditionalGeneration,
}
FRAMES, BATCH = 4, 2
SMALL = dict(hidden_size=32, num_attention_heads=4, ffn_size=48, output_mlp_size=48)


def side_input(dim=24, steps=7, grid=(1, 1), lengths=(7, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(BATCH, steps, *grid, dim, generator=g), "lengths": torch.tensor(lengths)}


def randomize(model, names, seed=1):
    """Non-zero values everywhere in the patches and their LoRA (the zero-initialised parts included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(f"patches.{n}." in name or f".{n}." in name and ".lora_" in name for n in names):
                parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.2)


def logits(model, inputs, side_channels=None):
    with torch.no_grad():
        return model(**inputs, side_channels=side_channels).logits


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


@pytest.fixture
def setup(family, tiny_checkpoints):
    checkpoint = tiny_checkpoints[family]
    base = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    model = FAMILIES[family].from_pretrained(checkpoint).eval()
    inputs = tiny_video_inputs(family, checkpoint, num_frames=FRAMES, batch=BATCH)
    return base, model, inputs, checkpoint


def test_loading_a_base_checkpoint_keeps_every_weight(setup):
    base, model, _, _ = setup
    base_state = base.state_dict()
    state = model.state_dict()
    assert state.keys() == base_state.keys()
    for key in state:
        assert torch.equal(state[key], base_state[key]), key


def test_new_patches_are_an_exact_identity(setup):
    base, model, inputs, _ = setup
    reference = logits(base, inputs)
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    model.add_patch("hfr", model.patch_config_for("video", 16, **SMALL))
    sides = {"audio": side_input(), "hfr": side_input(dim=16, steps=9, grid=(2, 2), lengths=(9, 5))}
    assert torch.equal(logits(model, inputs, sides), reference)
    randomize(model, ["audio"])
    assert not torch.equal(logits(model, inputs, sides), reference)
    model.disable_patches()
    assert torch.equal(logits(model, inputs), reference)


def test_gradients_reach_exactly_the_patch_and_its_lora(setup):
    _, model, inputs, _ = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    model.train_patch("audio")
    randomize(model, ["audio"])  # so that every trainable parameter lies on the gradient path
    model.train()
    out = model(**inputs, side_channels={"audio": side_input()}, labels=inputs["input_ids"])
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trainable == with_grad
    assert all(n.startswith("model.patches.audio.") or ".lora_" in n for n in trainable)
    assert any(".lora_A.audio." in n for n in trainable) and any(".lora_B.audio." in n for n in trainable)
    n_lora_modules = 7 * model.config.text_config.num_hidden_layers
    assert sum(".lora_A.audio." in n for n in trainable) == n_lora_modules
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in trainable)


def test_generate_applies_the_patches_once_before_prefill(setup, monkeypatch):
    _, model, inputs, _ = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    randomize(model, ["audio"])
    sides = {"audio": side_input()}
    calls = []
    original = type(model.model).get_video_features

    @functools.wraps(original)  # generate routes inputs by this signature
    def counting(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model.model), "get_video_features", counting)
    generated = model.generate(**inputs, side_channels=sides, max_new_tokens=3, do_sample=False)
    assert len(calls) == 1 and calls[0]["side_channels"] is sides
    first = logits(model, inputs, sides)[:, -1].argmax(-1)
    assert torch.equal(generated[:, inputs["input_ids"].shape[1]], first)


def test_patch_folder_round_trip_is_bit_exact(setup, tmp_path, family, tiny_checkpoints):
    _, model, inputs, checkpoint = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    randomize(model, ["audio"])
    sides = {"audio": side_input()}
    expected = logits(model, inputs, sides)
    folder = model.save_patch("audio", tmp_path / "audio_patch")
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.json",
                     "patch.safetensors", "patch_config.json"]  # fmt: skip
    assert json.loads((folder / "patch_config.json").read_text())["base_model_type"] == family
    pointer = json.loads((folder / "config.json").read_text())
    assert pointer["model_type"] == "videoadapt_pave_patch" and pointer["patch_name"] == "audio"
    assert pointer["base_model_name_or_path"] == str(checkpoint) and pointer["base_model_type"] == family

    fresh = FAMILIES[family].from_pretrained(checkpoint).eval()
    fresh.load_patch(folder)
    assert fresh.active_patches == ["audio_patch"]
    assert torch.equal(logits(fresh, inputs, {"audio_patch": sides["audio"]}), expected)


def test_one_line_load_of_a_patch_folder(setup, tmp_path, family, tiny_checkpoints):
    _, model, inputs, checkpoint = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    randomize(model, ["audio"])
    sides = {"audio": side_input()}
    expected = logits(model, inputs, sides)
    folder = model.save_patch("audio", tmp_path / "audio_patch")

    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(loaded) is FAMILIES[family] and loaded.active_patches == ["audio"]
    assert torch.equal(logits(loaded, inputs, sides), expected)

    # the base can be overridden (e.g. a base that only exists on disk elsewhere) ...
    moved = AutoModelForImageTextToText.from_pretrained(folder, base_model_name_or_path=str(checkpoint)).eval()
    assert torch.equal(logits(moved, inputs, sides), expected)
    # ... a missing base is named in the error, with the fix
    with pytest.raises(OSError, match=r"needs its base '.*nowhere'.*base_model_name_or_path="):
        AutoModelForImageTextToText.from_pretrained(folder, base_model_name_or_path=str(tmp_path / "nowhere"))
    # ... and a base of another family is refused by the family check before any weight is read
    other = next(f for f in FAMILIES if f != family)
    with pytest.raises(ValueError, match=f"made for a `{family}` base"):
        AutoModelForImageTextToText.from_pretrained(
            folder, base_model_name_or_path=str(tiny_checkpoints[other]), base_model_type=other
        )
    with pytest.raises(TypeError, match="holds a patch, not a model"):
        AutoModelForImageTextToText.from_config(PavePatchRepoConfig())


def test_full_model_round_trip_through_auto_class(setup, tmp_path):
    _, model, inputs, _ = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    model.add_patch("hfr", model.patch_config_for("video", 16, **SMALL))
    randomize(model, ["audio", "hfr"])
    model.set_patches(["hfr", "audio"])
    sides = {"audio": side_input(), "hfr": side_input(dim=16, steps=9, grid=(2, 2), lengths=(9, 5))}
    expected = logits(model, inputs, sides)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.patch_names == ["audio", "hfr"] and loaded.active_patches == ["hfr", "audio"]
    assert torch.equal(logits(loaded, inputs, sides), expected)
    model.save_pretrained(tmp_path / "repo" / "model")  # a model in a subfolder keeps its patches beside it
    nested = AutoModelForImageTextToText.from_pretrained(tmp_path / "repo", subfolder="model").eval()
    assert nested.patch_names == ["audio", "hfr"] and torch.equal(logits(nested, inputs, sides), expected)


def test_a_patch_folder_name_becomes_a_module_safe_patch_name(setup, tmp_path):
    _, model, _, checkpoint = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    folder = model.save_patch("audio", tmp_path / "avsd-0.5b")
    fresh = type(model).from_pretrained(checkpoint)
    fresh.load_patch(folder)
    assert fresh.patch_names == ["avsd-0_5b"]
    fresh.load_patch(model.save_patch("audio", tmp_path / "7up"))
    assert fresh.patch_names == ["avsd-0_5b", "_7up"]


def test_enabled_patches_add_their_residuals(setup):
    _, model, inputs, _ = setup
    model.add_patch("a", model.patch_config_for("audio", 24, **SMALL), lora=False)
    model.add_patch("b", model.patch_config_for("video", 16, **SMALL), lora=False)
    randomize(model, ["a", "b"])
    sides = {"a": side_input(), "b": side_input(dim=16, steps=9, grid=(2, 2), lengths=(9, 5))}
    pixels = inputs[next(k for k in inputs if k.startswith("pixel_values"))]  # (B, T, 3, S, S)

    def features(names):
        model.set_patches(names)
        with torch.no_grad():
            return model.model.get_video_features(pixels, side_channels=sides).pooler_output

    none, a, b, both = features([]), features(["a"]), features(["b"]), features(["a", "b"])
    torch.testing.assert_close(both - none, (a - none) + (b - none), atol=1e-5, rtol=0)
    assert not torch.equal(a, none) and not torch.equal(b, none)


def test_stage_wise_training_keeps_earlier_patches_frozen(setup):
    _, model, inputs, _ = setup
    model.add_patch("first", model.patch_config_for("video", 16, **SMALL))
    model.add_patch("second", model.patch_config_for("audio", 24, **SMALL))
    model.train_patch("second")
    assert model.active_patches == ["first", "second"]
    assert not any(p.requires_grad for p in model.patch_parameters("first"))
    assert all(p.requires_grad for p in model.patch_parameters("second"))


# ------------------------------------------------------------------------------------------------- bad input


def test_missing_or_malformed_side_channels(setup):
    _, model, inputs, _ = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    with pytest.raises(ValueError, match="patch 'audio' is enabled but `side_channels` has no entry"):
        logits(model, inputs)
    with pytest.raises(ValueError, match=r"`features` must be a tensor of shape \(2, 'Tk', 1, 1, 24\)"):
        logits(model, inputs, {"audio": side_input(dim=23)})
    with pytest.raises(ValueError, match=r"`lengths` must be \[B\] with values in \[1, 7\]"):
        logits(model, inputs, {"audio": {**side_input(), "lengths": torch.tensor([8, 2])}})
    with pytest.raises(ValueError, match=r"`lengths` must be \[B\] integers, got 'seven'"):
        logits(model, inputs, {"audio": {**side_input(), "lengths": "seven"}})
    randomize(model, ["audio"])
    as_list = logits(model, inputs, {"audio": {**side_input(), "lengths": [7, 3]}})
    assert torch.equal(as_list, logits(model, inputs, {"audio": side_input()}))


def test_patch_for_another_base_is_refused_before_any_weight_changes(setup, tmp_path, tiny_checkpoints, family):
    _, model, _, _ = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    folder = model.save_patch("audio", tmp_path / "p")
    other_family = next(f for f in FAMILIES if f != family)
    other = FAMILIES[other_family].from_pretrained(tiny_checkpoints[other_family])
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=f"made for a `{family}` base"):
        other.load_patch(folder)
    assert other.patch_names == [] and other.state_dict().keys() == before.keys()

    config = json.loads((folder / "patch_config.json").read_text())
    (folder / "patch_config.json").write_text(json.dumps({**config, "base_hidden_size": 4096, "output_dim": 4096}))
    with pytest.raises(ValueError, match="needs an LLM hidden size of 4096"):
        FAMILIES[family].from_pretrained(tiny_checkpoints[family]).load_patch(folder)


def test_corrupt_patch_files(setup, tmp_path):
    _, model, _, checkpoint = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    folder = model.save_patch("audio", tmp_path / "p")
    fresh = type(model).from_pretrained(checkpoint)
    data = (folder / "patch.safetensors").read_bytes()
    (folder / "patch.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        fresh.load_patch(folder)
    (folder / "patch_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        fresh.load_patch(folder)
    assert fresh.patch_names == []


def test_a_failed_lora_load_leaves_the_model_unchanged(setup, tmp_path):
    base, model, inputs, checkpoint = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    randomize(model, ["audio"])
    good = model.save_patch("audio", tmp_path / "good")
    bad = model.save_patch("audio", tmp_path / "bad")
    weights = load_file(bad / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first] = torch.zeros(weights[first].shape[0] + 1, *weights[first].shape[1:])
    save_file(weights, bad / "adapter_model.safetensors")
    fresh = type(model).from_pretrained(checkpoint).eval()
    with pytest.raises(ValueError, match="adapter_model.safetensors does not match its LoRA config"):
        fresh.load_patch(bad, name="audio")
    assert fresh.patch_names == [] and not fresh._lora_names()
    assert torch.equal(logits(fresh, inputs), logits(base, inputs))  # no LoRA left behind, active or not
    fresh.load_patch(good, name="audio")  # the name is free again
    side = {"audio": side_input()}
    assert torch.equal(logits(fresh, inputs, side), logits(model, inputs, side))

    (good / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="the patch folder is incomplete \\(it needs `adapter_model.safetensors`\\)"):
        type(model).from_pretrained(checkpoint).load_patch(good)


def test_saving_a_patch_without_lora_over_one_with_lora_drops_the_old_lora(setup, tmp_path):
    _, model, inputs, checkpoint = setup
    model.add_patch("with_lora", model.patch_config_for("audio", 24, **SMALL))
    model.add_patch("plain", model.patch_config_for("audio", 24, **SMALL), lora=False)
    folder = model.save_patch("with_lora", tmp_path / "p")
    assert (folder / "adapter_model.safetensors").is_file()
    model.save_patch("plain", folder)
    assert not (folder / "adapter_model.safetensors").exists() and not (folder / "adapter_config.json").exists()
    fresh = type(model).from_pretrained(checkpoint)
    fresh.load_patch(folder, name="plain")
    assert not fresh._lora_names()


def test_patch_names_and_enable_errors(setup):
    _, model, _, _ = setup
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    with pytest.raises(ValueError, match="already loaded"):
        model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL))
    with pytest.raises(ValueError, match="patch `name` must match"):
        model.add_patch("bad name", model.patch_config_for("audio", 24, **SMALL))
    with pytest.raises(ValueError, match=r"unknown patches \['nope'\]"):
        model.set_patches(["nope"])
    model.delete_patch("audio")
    assert model.patch_names == [] and not model._lora_names()


def test_patch_config_validation():
    with pytest.raises(ValueError, match="`side_channel_grid` .* is required for side_channel='generic'"):
        PavePatchConfig(side_channel="generic")
    with pytest.raises(ValueError, match="must be one of"):
        PavePatchConfig(rope="2d")
    with pytest.raises(TypeError, match="`hidden_size` must be int"):
        PavePatchConfig(hidden_size="512")
    with pytest.raises(ValueError, match="divisible by `num_attention_heads`"):
        PavePatchConfig(hidden_size=510)
    assert PavePatchConfig(side_channel="audio").rope == "1d" and PavePatchConfig(side_channel="video").rope == "3d"
    official = PavePatchConfig.official(side_channel="3d", side_channel_grid=[24, 24])
    assert (official.rope, official.tie_value_to_key, official.attention_output_projection) == ("none", True, False)


@pytest.mark.parametrize("rope", ["1d", "3d", "none"])
@pytest.mark.parametrize(("steps", "lengths"), [((7, 10), (7, 3)), ((3, 12), (3, 2))])
def test_side_padding_past_the_longest_sample_changes_nothing(rope, steps, lengths):
    """Tk zero-padded beyond max(lengths) (a collator padding to a fixed size; the second case is upsampled to T)."""
    config = PavePatchConfig(
        side_channel="generic", side_channel_grid=[2, 2], side_channel_dim=8, query_dim=16, output_dim=16, rope=rope,
        **SMALL,
    )  # fmt: skip
    torch.manual_seed(0)
    patch = PavePatch(config).eval()
    with torch.no_grad():  # away from the identity init
        patch.output_head.norm.weight.fill_(1.0)
    queries = torch.randn(2, 4, 9, 16)
    tight, padded = steps
    side = torch.randn(2, tight, 2, 2, 8)
    side_padded = torch.cat([side, torch.zeros(2, padded - tight, 2, 2, 8)], dim=1)
    with torch.no_grad():
        expected = patch(queries, side, torch.tensor(lengths), (3, 3, 0))
        got = patch(queries, side_padded, torch.tensor(lengths), (3, 3, 0))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_patch_returns_its_attention_maps():
    config = PavePatchConfig(side_channel="audio", side_channel_dim=8, query_dim=16, output_dim=16, **SMALL)
    patch = PavePatch(config)
    queries = torch.randn(2, 4, 3, 16)  # (B, T, N, Dq)
    side = torch.randn(2, 10, 1, 1, 8)  # (B, Tk, 1, 1, C)
    residual, maps = patch(queries, side, torch.tensor([10, 6]), (1, 3, 0), return_attention=True)
    assert residual.shape == (2, 4, 3, 16) and len(maps) == config.num_layers
    probs, key_time = maps[0]
    assert probs.shape[:4] == (2, config.num_attention_heads, 4, 3) and key_time.shape[:2] == (2, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert key_time[0, 0].tolist()[:3] == [0, 1, 2] and key_time[1, 3].max() == 5  # chunks: 3,3,2,2 and 2,2,1,1
