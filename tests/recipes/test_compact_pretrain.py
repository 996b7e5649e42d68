"""Compact compressor pre-training: the shipped recipe (and that it fits the stage recipes' model), a short run that
learns, accumulation, saving, errors."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from videoadapt.configuration.configuration_compact import CompactConfig
from videoadapt.layers.video_compressor import SpatioTemporalAutoencoder, SpatioTemporalCompressor, reconstruction_loss
from videoadapt.recipes import compact_pretrain
from videoadapt.recipes.compact_pretrain import (
    COMPRESSOR_FILE,
    PretrainSettings,
    load_autoencoder,
    load_compressor_recipe,
    pretrain_compressor,
    save_autoencoder,
)
from videoadapt.recipes.compact_recipes import STAGES, load_recipe


SHIPPED = Path(compact_pretrain.__file__).parent / "compact" / "compressor_pretrain.yaml"


def smooth_clips(n: int, dim: int = 8, size: int = 8, seed: int = 0) -> torch.Tensor:
    """[n, T, H, W, D] features: a shared mean token plus 2 latent factors, each a slow random plane wave over
    (t, h, w) (at most half a cycle across the clip per axis), plus noise."""
    gen = torch.Generator().manual_seed(seed)
    directions, mean = torch.randn(2, dim, generator=gen), torch.randn(dim, generator=gen)
    axis = torch.arange(size, dtype=torch.float32) / size
    t, h, w = torch.meshgrid(axis, axis, axis, indexing="ij")
    clips = []
    for _ in range(n):
        freq, phase = torch.rand(2, 3, generator=gen) - 0.5, torch.rand(2, generator=gen) * 2 * math.pi
        waves = [torch.cos(2 * math.pi * (f[0] * t + f[1] * h + f[2] * w) + p) for f, p in zip(freq, phase)]
        noise = 0.05 * torch.randn(size, size, size, dim, generator=gen)
        clips.append(mean + torch.stack(waves, -1) @ directions + noise)
    return torch.stack(clips)


def test_shipped_recipe_has_the_paper_values():
    recipe = load_compressor_recipe()
    assert recipe == load_compressor_recipe(SHIPPED) and recipe.path is not None
    t = recipe.training
    assert (t.learning_rate, t.batch_size, t.epochs) == (2e-5, 512, 1)
    c = recipe.compressor
    assert (c.num_blocks, c.num_downsample, c.bottleneck_ratio, c.dim) == (3, 2, 4, 1152)
    assert recipe.vision_encoder_frozen is True and recipe.num_frames == 32 and recipe.grid == 16
    assert recipe.latent_tokens() == 8 * 4 * 4
    assert recipe.num_samples == 8_029_456 and "Ego4d" in recipe.datasets
    assert recipe.sources["training.learning_rate"].startswith("supplement")
    assert recipe.sources["training.mse_weight"].startswith("ours")
    with torch.device("meta"):
        model = recipe.build_model()
    assert sum(p.numel() for p in model.parameters()) == 2 * 6 * (3 * 1152**2 + 1152 * 5 // 4) == 47_793_024
    assert model.init_kwargs == c.kwargs()


def test_the_shipped_recipe_pretrains_the_compressor_the_stage_recipes_build():
    """Its width is the stage recipes' base's (LLaVA-OneVision's SigLIP: 1152, not the paper's 1408-wide ViT-g/14):
    otherwise its output cannot be loaded into stage 1."""
    recipe = load_compressor_recipe()
    assert load_recipe("stage1").compressor_from == "compressor_pretrain"
    assert load_recipe("stage1").compressor_recipe() == recipe and load_recipe("stage2").compressor_recipe() is None
    assert CompactConfig().vision_config.hidden_size == 1152  # SigLIP so400m, LLaVA-OneVision's tower
    for stage in STAGES:
        config = CompactConfig(**load_recipe(stage).config_overrides())
        assert recipe.compressor.dim == config.compressor_dim == 1152, stage
        with torch.device("meta"):
            built = SpatioTemporalCompressor(**config.compressor_kwargs()).init_kwargs  # what the model builds
        assert recipe.compressor.kwargs() == {**built, "zero_init_residual": True}
        assert (recipe.grid, recipe.num_frames) == (config.feature_grid, config.num_frames) == (16, 32)
    assert "1152" in recipe.sources["compressor.dim"] and "stage" in recipe.sources["compressor.dim"]


def _write(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(SHIPPED.read_text())
    edit(data)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(grid=14), r"`grid` \(14\) must be a multiple of the compressor's factor 4"),
        (lambda d: d.update(num_frames=30), r"`num_frames` \(30\) must be a multiple of the compressor's factor 4"),
        (lambda d: d["compressor"].update(bottleneck_ratio=5), r"`compressor`: `dim` \(1152\) must be divisible by"),
        (
            lambda d: d["training"].update(learning_rate=0),
            r"`training.learning_rate` must be a number in \(0.0, 1.0\]",
        ),
        (lambda d: d["training"].update(lr_scheduler="step"), r"`training.lr_scheduler` must be one of"),
        (lambda d: d["training"].pop("seed"), r"missing key\(s\) \['training.seed'\]"),
        (
            lambda d: d["sources"].pop("training.batch_size"),
            r"`sources` gives no source for \['training.batch_size'\]",
        ),
        (lambda d: d.update(extra=1), r"unknown key\(s\) \['extra'\]"),
    ],
)
def test_recipe_errors(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        load_compressor_recipe(_write(tmp_path, edit))


def test_unknown_recipe_name():
    assert compact_pretrain.list_compressor_recipes() == ["compressor_pretrain"]  # not the MLLM stage recipes
    with pytest.raises(
        ValueError,
        match=r"must be a shipped compressor recipe \(compressor_pretrain\) or a YAML file, "
        r"got 'nope'",
    ):
        load_compressor_recipe("nope")


def test_short_training_reduces_the_loss():
    """From a random start (the default zero-initialised branches start at the pooling baseline and need ~1000 steps
    to improve on it, see bench/svc_reconstruction.py), 24 steps must cut the held-out loss."""
    torch.manual_seed(0)
    model = SpatioTemporalAutoencoder(8, bottleneck_ratio=2, zero_init_residual=False)
    train, test = smooth_clips(48, seed=1), smooth_clips(8, seed=2)
    with torch.no_grad():
        before = reconstruction_loss(model(test)[0], test).item()
    losses = []
    settings = PretrainSettings(batch_size=4, learning_rate=3e-3, epochs=2, lr_scheduler="cosine", seed=0)
    returned = pretrain_compressor(
        model, train, settings, on_step=lambda s, loss: losses.append((s, loss)), progress=False
    )
    assert returned is model and not model.training
    assert [s for s, _ in losses] == list(range(1, 25))  # 48 clips / 4 per step, 2 epochs
    with torch.no_grad():
        after = reconstruction_loss(model(test)[0], test).item()
    first, last = sum(v for _, v in losses[:4]) / 4, sum(v for _, v in losses[-4:]) / 4
    assert last < 0.9 * first and after < 0.9 * before, (first, last, before, after)


def test_gradient_accumulation_matches_the_full_batch():
    clips = smooth_clips(6, seed=3)
    settings = PretrainSettings(batch_size=6, learning_rate=1e-3, max_grad_norm=None)
    models = []
    for micro in (None, 2, 4):  # 4: chunks of 4 and 2
        torch.manual_seed(0)
        model = SpatioTemporalAutoencoder(8, zero_init_residual=False)
        pretrain_compressor(model, clips, settings, micro_batch_size=micro, progress=False)
        models.append(model.state_dict())
    for other in models[1:]:
        for name, value in models[0].items():
            torch.testing.assert_close(other[name], value, atol=1e-6, rtol=1e-5)


def test_steps_epochs_and_generators():
    steps = []
    model = SpatioTemporalAutoencoder(8)
    settings = PretrainSettings(batch_size=4, learning_rate=1e-3)
    pretrain_compressor(model, list(smooth_clips(10)), settings, on_step=lambda s, _: steps.append(s), progress=False)
    assert steps == [1, 2, 3]  # 4 + 4 + a last batch of 2
    steps.clear()
    generator = (clip for clip in smooth_clips(20))
    pretrain_compressor(model, generator, settings, max_steps=2, on_step=lambda s, _: steps.append(s), progress=False)
    assert steps == [1, 2]


def test_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(4)
    model = SpatioTemporalAutoencoder(8, num_blocks=2, num_downsample=1, shortcut="conv", norm_groups=2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    path = tmp_path / "sub" / "svc.safetensors"
    save_autoencoder(model, path)
    save_autoencoder(model, path)  # overwriting works
    assert sorted(p.name for p in path.parent.iterdir()) == ["svc.safetensors"]  # no temporary file left
    loaded = load_autoencoder(path)
    assert loaded.init_kwargs == model.init_kwargs and loaded.factor == 2
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys() and any(k.startswith("decoder.") for k in restored)
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    x = torch.randn(1, 4, 4, 4, 8)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x)))


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "svc.safetensors"
    save_autoencoder(SpatioTemporalAutoencoder(8), path)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(compact_pretrain, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_autoencoder(SpatioTemporalAutoencoder(8, zero_init_residual=False), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["svc.safetensors"]


def test_training_saves_to_output_path(tmp_path):
    model = SpatioTemporalAutoencoder(8)
    path = tmp_path / "out.safetensors"
    pretrain_compressor(model, smooth_clips(4), PretrainSettings(batch_size=4), output_path=path, progress=False)
    loaded = load_autoencoder(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_a_folder_holds_the_file_under_its_standard_name(tmp_path):
    model = SpatioTemporalAutoencoder(8, zero_init_residual=False)
    pretrain_compressor(model, smooth_clips(4), PretrainSettings(batch_size=4), output_path=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [COMPRESSOR_FILE] == ["compressor.safetensors"]
    for source in (tmp_path, tmp_path / COMPRESSOR_FILE):
        loaded = load_autoencoder(source)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`path` must be a folder holding compressor.safetensors or a safetensors"):
        load_autoencoder(tmp_path)
    with pytest.raises(ValueError, match=r"`path` must be .* a safetensors file written by `save_autoencoder`"):
        load_autoencoder(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"is not an SVC autoencoder file \(metadata format None"):
        load_autoencoder(other)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"micro_batch_size": 0}, r"`micro_batch_size` must be in \[1, batch_size\] = \[1, 4\], got 0"),
        ({"micro_batch_size": 5}, r"`micro_batch_size` must be in \[1, batch_size\] = \[1, 4\], got 5"),
        ({"max_steps": 0}, r"`max_steps` must be >= 1 or None \(all epochs\), got 0"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pretrain_compressor(SpatioTemporalAutoencoder(8), smooth_clips(4), PretrainSettings(batch_size=4), **kwargs)


def test_data_errors():
    model = SpatioTemporalAutoencoder(8)
    one_shot = (clip for clip in smooth_clips(4))
    with pytest.raises(ValueError, match=r"`features` is a one-shot iterator but `epochs` is 2"):
        pretrain_compressor(model, one_shot, PretrainSettings(batch_size=4, epochs=2), progress=False)
    with pytest.raises(ValueError, match=r"`lr_scheduler` 'cosine' needs the number of steps.*pass `max_steps`"):
        pretrain_compressor(model, iter(smooth_clips(4)), PretrainSettings(lr_scheduler="cosine"), progress=False)
    with pytest.raises(ValueError, match=r"yield \[T, H, W, D\] tensors with D = 8 .*got shapes \[\(8, 8, 8, 6\)\]"):
        pretrain_compressor(model, torch.zeros(2, 8, 8, 8, 6), PretrainSettings(batch_size=2), progress=False)
    mixed = [torch.zeros(8, 8, 8, 8), torch.zeros(4, 8, 8, 8)]
    with pytest.raises(ValueError, match=r"one shape per batch, got shapes \[\(4, 8, 8, 8\), \(8, 8, 8, 8\)\]"):
        pretrain_compressor(model, mixed, PretrainSettings(batch_size=2), progress=False)
    with pytest.raises(ValueError, match=r"`x` has H = 6, which is not divisible by the compressor's factor 4"):
        pretrain_compressor(model, torch.zeros(2, 8, 6, 8, 8), PretrainSettings(batch_size=2), progress=False)
