"""Training and evaluating from pre-extracted frame features: `vision_features` reproduce the pixel path bit for bit
(REEF, DynFocus, Compact), the method's feature encoder extracts exactly those, a run from features trains the same
weights with the same losses as a run from videos, PAVE's side channel comes from the Arrow columns, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import set_seed

from videoadapt.cli import main as cli_main
from videoadapt.processors.side_channels import SideChannelFeatures
from videoadapt.recipes.evaluate import EvalOptions, evaluate
from videoadapt.recipes.extract import extract_features
from videoadapt.recipes.manifest import load_manifest, write_manifest
from videoadapt.recipes.train import RunOptions, main, train
from videoadapt.recipes.training import METHODS, SFTCollator, load_feature_rows
from videoadapt.testing.tiny_methods import TINY_METHODS
from videoadapt.testing.toy_clips import write_toy_clips


FROZEN_TOWER = ("reef", "dynfocus", "compact")
SETTINGS = {m: TINY_METHODS[m] for m in ("reef", "dynfocus", "compact")}
RUN = ["max_steps=2", "per_device_train_batch_size=2", "gradient_accumulation_steps=1", "save_steps=2",
       "warmup_steps=0", "report_to=none", "disable_tqdm=true", "logging_steps=1"]  # fmt: skip


def build(method: str, checkpoints: dict) -> tuple:
    family, recipe_name, stage, config, processor = SETTINGS[method]
    spec = METHODS[method]
    recipe = spec.load_recipe(recipe_name)
    set_seed(0)
    model, proc = spec.build(recipe, stage, checkpoints[family], dict(config), dict(processor))
    return spec, recipe, stage, model, proc


def command_line(method: str, checkpoints: dict) -> list[str]:
    family, recipe_name, stage, config, processor = SETTINGS[method]
    overrides = [f"config.{k}={json.dumps(v)}" for k, v in config.items()]
    overrides += [f"processor.{k}={json.dumps(v)}" for k, v in processor.items()]
    return ["--recipe", f"{method}/{recipe_name}", *(["--stage", stage] if stage else []), *overrides, *RUN,
            f"model={checkpoints[family]}"]  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """4 short videos (24 frames at 12 fps) with side-channel files; row 1 asks about a segment."""
    root = tmp_path_factory.mktemp("data")
    rows = [{"id": f"toy/train/{i}", "split": "train", **clip, "task": "qa", "question": "what color is the circle?",
             "answers": [["red", "green", "blue", "yellow"][i]]} for i, clip in enumerate(write_toy_clips(root, 4))]  # fmt: skip
    rows[1]["timestamps"] = [0.5, 1.5]
    write_manifest(rows, root / "data.jsonl")
    return root / "data.jsonl"


@pytest.fixture(scope="module")
def runs(manifest, tiny_checkpoints, tmp_path_factory) -> dict:
    """method -> the extracted features folder and two 2-step runs, from videos and from those features (lazy)."""
    done = {}

    def run(method: str) -> dict:
        if method not in done:
            root = tmp_path_factory.mktemp(method)
            spec, _, _, model, proc = build(method, tiny_checkpoints)
            rows = extract_features(load_manifest(manifest, split="train"), spec.feature_encoder(model, proc), "video",
                                    root / "cache")  # fmt: skip
            rows.save_to_disk(str(root / "features"))
            argv = command_line(method, tiny_checkpoints)
            assert main([*argv, f"train={manifest}", f"output_dir={root / 'videos'}"]) == 0
            assert main([*argv, f"features={root / 'features'}", f"output_dir={root / 'from_features'}"]) == 0
            done[method] = {"root": root, "features": root / "features", "model": model}
        return done[method]

    return run


def video_batch(frames: int = 4) -> torch.Tensor:
    """2 videos of 32 px frames (both tiny towers' image size)."""
    return torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def encode_videos(spec, model, proc, pixels: torch.Tensor) -> torch.Tensor:
    encoder = spec.feature_encoder(model, proc)
    return torch.stack([encoder.encode(video) for video in pixels])


def model_inputs(method: str, model, proc, frames: int) -> dict:
    """Text inputs with the right video token count (token ids away from the special ones)."""
    count = proc.video_token_count(frames)
    video_id = proc.tokenizer.convert_tokens_to_ids(proc.tokenizer.video_token)
    words = torch.randint(10, 60, (2, 6), generator=torch.Generator().manual_seed(2))
    words[words == video_id] = 9
    ids = torch.cat([torch.full((2, count), video_id), words], 1)
    inputs = {"input_ids": ids, "labels": ids.clone()}
    if method != "compact":
        qformer = proc.qformer_tokenizer(
            ["what color is the circle?", "is it red?"], padding=True, return_tensors="pt"
        )
        inputs.update(qformer_input_ids=qformer.input_ids, qformer_attention_mask=qformer.attention_mask)
    return inputs


def pixel_key(method: str) -> str:
    return "pixel_values_videos" if method == "compact" else "pixel_values"


# --------------------------------------------------------------------------------------------- the models


@pytest.mark.parametrize("method", FROZEN_TOWER)
def test_vision_features_reproduce_the_pixel_path(method, tiny_checkpoints):
    spec, _, _, model, proc = build(method, tiny_checkpoints)
    pixels = video_batch()
    features = encode_videos(spec, model, proc, pixels)
    with torch.no_grad():  # what the features are, written out
        if method == "compact":
            assert features.shape == (2, 4, 16, 16, 32)  # the recipe's compressor_grid: 16
            assert torch.equal(features, model.model.get_compressor_inputs(pixels))
        else:  # the vision model's output before post_layernorm, which the model applies itself
            assert features.shape == (2, 4, 17, 32)
            frames = model.vision_model(pixel_values=pixels.flatten(0, 1)).last_hidden_state
            assert torch.equal(model.vision_model.post_layernorm(features.flatten(0, 1)), frames)
    inputs = model_inputs(method, model, proc, frames=4)
    for mode in ("train", "eval"):  # train: REEF's perturbed top-K / DynFocus' selection draw the same noise
        getattr(model, mode)()
        set_seed(3)
        from_pixels = model(**inputs, **{pixel_key(method): pixels})
        set_seed(3)
        from_features = model(**inputs, vision_features=features)
        assert torch.equal(from_pixels.logits, from_features.logits), mode
        assert torch.equal(from_pixels.loss, from_features.loss)
    model.eval()
    prompt = {k: v[:, : proc.video_token_count(4) + 2] for k, v in inputs.items() if k != "labels"}
    settings = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": proc.tokenizer.pad_token_id}
    generated = model.generate(**prompt, **{pixel_key(method): pixels}, **settings)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert torch.equal(model.generate(**prompt, vision_features=features, **settings), generated)


@pytest.mark.parametrize("method", ["reef", "dynfocus"])
def test_instructblip_frame_inputs_are_checked(method, tiny_checkpoints):
    _, _, _, model, proc = build(method, tiny_checkpoints)
    inputs = model_inputs(method, model, proc, frames=2)
    pixels, features = video_batch(frames=2), torch.zeros(2, 2, 17, 32)
    with pytest.raises(ValueError, match=r"exactly one of `pixel_values` .* and `vision_features` .*, got both"):
        model(**inputs, pixel_values=pixels, vision_features=features)
    with pytest.raises(ValueError, match=r"exactly one of .*, got neither"):
        model(**inputs)
    with pytest.raises(ValueError, match=r"got neither"):
        model.generate(qformer_input_ids=inputs["qformer_input_ids"], max_new_tokens=1)
    for wrong in (torch.zeros(2, 2, 16, 32), torch.zeros(2, 2, 17, 24), torch.zeros(2, 17, 32)):
        with pytest.raises(ValueError, match=r"L = 17 tokens per frame .* and C = 32 \(the vision hidden size\), got"):
            model(**inputs, vision_features=wrong)


def test_compact_frame_inputs_are_checked(tiny_checkpoints):
    _, _, _, model, proc = build("compact", tiny_checkpoints)
    inputs = model_inputs("compact", model, proc, frames=4)
    with pytest.raises(ValueError, match=r"exactly one of `pixel_values_videos` .* got both"):
        model(**inputs, pixel_values_videos=video_batch(), vision_features=torch.zeros(2, 4, 16, 16, 32))
    for wrong in (torch.zeros(2, 4, 8, 8, 32), torch.zeros(2, 4, 16, 16, 16), torch.zeros(2, 3, 16, 16, 32)):
        with pytest.raises(ValueError, match=r"g = 16 \(`feature_grid`\), D = 32 .* a multiple of f = 4, got"):
            model(**inputs, vision_features=wrong)


# --------------------------------------------------------------------------------------------- batches, training


@pytest.mark.parametrize("method", FROZEN_TOWER)
def test_feature_batches_equal_video_batches(method, manifest, tiny_checkpoints, tmp_path):
    spec, recipe, _, model, proc = build(method, tiny_checkpoints)
    rows = load_manifest(manifest, split="train").select([0, 1])  # row 1: a segment
    extracted = extract_features(rows, spec.feature_encoder(model, proc), "video", tmp_path)
    extracted = extracted.with_format("numpy", columns=["frame_features"], output_all_columns=True)
    for train_mode in (True, False):
        videos = spec.collator(recipe, proc, train_mode)(list(rows))
        features = spec.collator(recipe, proc, train_mode, features="frame_features")(list(extracted))
        pixels = videos.pop(pixel_key(method))
        assert features.pop("vision_features").shape[:2] == pixels.shape[:2] == (2, 4)
        assert videos.keys() == features.keys()
        for key, value in videos.items():
            assert torch.equal(value, features[key]) if torch.is_tensor(value) else value == features[key], key
    # the extracted features are the model's own from the frames the collator decodes (the segment included)
    set_seed(3)
    from_pixels = model(**{k: v for k, v in videos.items() if k != "references"}, **{pixel_key(method): pixels})
    stacked = torch.stack([torch.as_tensor(r["frame_features"]) for r in extracted])
    set_seed(3)
    from_features = model(**{k: v for k, v in videos.items() if k != "references"}, vision_features=stacked)
    assert torch.equal(from_pixels.logits, from_features.logits)


def log_losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.parametrize("method", FROZEN_TOWER)
def test_training_from_features_equals_training_from_videos(method, runs, tiny_checkpoints):
    run = runs(method)
    root = run["root"]
    losses = log_losses(root / "videos")
    assert len(losses) == 2 and losses == log_losses(root / "from_features")
    trained = load_file(root / "videos" / "model" / "model.safetensors")
    from_features = load_file(root / "from_features" / "model" / "model.safetensors")
    assert trained.keys() == from_features.keys()
    assert all(torch.equal(trained[k], from_features[k]) for k in trained)
    spec = METHODS[method]
    start = run["model"].state_dict()
    reloaded = spec.model_class().from_pretrained(root / "from_features" / "model").state_dict()
    changed = [k for k, v in reloaded.items() if not torch.equal(v, start[k])]
    assert changed  # the runs trained something: the equality is not between two untouched models


def test_evaluation_from_features_equals_evaluation_from_videos(runs, manifest, tmp_path, monkeypatch):
    run = runs("reef")
    model_class, inputs = METHODS["reef"].model_class(), []
    original = model_class.generate

    def recording(self, **kwargs):
        inputs.append(sorted(k for k in ("pixel_values", "vision_features") if kwargs.get(k) is not None))
        return original(self, **kwargs)

    monkeypatch.setattr(model_class, "generate", recording)
    common = dict(model=str(run["root"] / "from_features" / "model"), split="train", batch_size=2, progress=False)
    generation = {"max_new_tokens": 3}
    videos = evaluate("reef/msvd_qa", EvalOptions(**common, eval=str(manifest), output_dir=str(tmp_path / "a")),
                      generation=generation)  # fmt: skip
    features = evaluate("reef/msvd_qa", EvalOptions(**common, features=str(run["features"]),
                                                    output_dir=str(tmp_path / "b")), generation=generation)  # fmt: skip
    assert inputs == [["pixel_values"]] * 2 + [["vision_features"]] * 2  # 2 batches each: no video decoded
    assert features["num_examples"] == videos["num_examples"] == 4 and features["scores"] == videos["scores"]
    a, b = ((tmp_path / d / "predictions.jsonl").read_text() for d in "ab")
    assert a == b and len(a.splitlines()) == 4


# --------------------------------------------------------------------------------------------- PAVE, extraction


class _SavedSideChannel:
    """A `FeatureEncoder` giving what `SideChannelEncoder` gives: the row's side-channel file's features."""

    def config_dict(self) -> dict:
        return {"encoder": "saved side channel"}

    def __call__(self, value: str, row: dict) -> SideChannelFeatures:
        return SideChannelFeatures.load(row["side_channels"]["audio"])


def test_pave_side_channels_come_from_the_extracted_columns(manifest, tiny_checkpoints, tmp_path):
    spec = METHODS["pave"]
    recipe = spec.load_recipe("avsd")
    model, proc = spec.build(recipe, None, tiny_checkpoints["llava_onevision"], {"side_channel_dim": 8},
                             {"num_frames": 4})  # fmt: skip
    rows = load_manifest(manifest, split="train").select([0, 2])
    extracted = extract_features(rows, _SavedSideChannel(), "video", tmp_path, output_column="audio")
    from_files = spec.collator(recipe, proc, True)(list(rows))
    from_columns = spec.collator(recipe, proc, True, features="audio")(list(extracted.with_format("numpy")))
    assert from_files.keys() == from_columns.keys() and "side_channels" in from_files
    for key, value in from_files.items():
        if key == "side_channels":
            for name, tensors in value.items():
                assert all(torch.equal(t, from_columns[key][name][k]) for k, t in tensors.items())
        else:
            assert torch.equal(value, from_columns[key]), key
    with pytest.raises(ValueError, match=r"row 'toy/train/0' has no \['audio', 'audio_timestamps'\]"):
        spec.collator(recipe, proc, True, features="audio")(list(rows))
    with pytest.raises(ValueError, match="pave reads its frames through the base model's vision tower"):
        spec.feature_encoder(model, proc)


def test_extract_command_writes_the_models_vision_features(manifest, tiny_checkpoints, tmp_path, capsys):
    spec, _, _, model, proc = build("reef", tiny_checkpoints)
    model.save_pretrained(tmp_path / "reef")
    proc.save_pretrained(tmp_path / "reef")
    argv = ["extract", str(manifest), "--split", "train", "--cache-dir", str(tmp_path / "cache")]
    assert cli_main([*argv, "--model", str(tmp_path / "reef"), "--output", str(tmp_path / "out")]) == 0
    rows = load_feature_rows(tmp_path / "out", "train")
    encoder = spec.feature_encoder(model, proc)
    for row in rows:  # the processor's 4 uniform frames, row 1 on its segment
        expected = encoder(str(Path(manifest).parent / row["video"]), row)["features"]
        assert expected.shape == (4, 17, 32) and torch.equal(torch.as_tensor(row["frame_features"]), expected)
    assert cli_main([*argv, "--model", str(tmp_path / "reef"), "--output", str(tmp_path / "o2"), "--feature-layer",
                     "-2"]) == 1  # fmt: skip
    assert "`--feature-layer` and `--preprocessor` do not apply to a reef model" in capsys.readouterr().err
    # an InstructBLIP-Video base: the output before post_layernorm, as REEF and DynFocus read it
    base = tiny_checkpoints["instructblip_video"]
    out = tmp_path / "base"
    assert cli_main([*argv, "--model", str(base), "--output", str(out), "--num-frames", "4"]) == 0
    first = load_feature_rows(out, "train")[0]  # row 0 has no segment (the generic encoder samples whole videos)
    expected = encoder(str(Path(manifest).parent / first["video"]), first)["features"]
    assert torch.equal(torch.as_tensor(first["frame_features"]), expected)


# --------------------------------------------------------------------------------------------- errors


def test_run_key_errors(manifest, tmp_path):
    folder = str(tmp_path)
    cases = [
        (RunOptions(train=str(manifest), features=folder, output_dir=folder), "pass one of `train=<manifest.jsonl>`"),
        (RunOptions(train=str(manifest), eval_features=folder, output_dir=folder), "pass `features=` for training"),
        (RunOptions(features=folder, eval=str(manifest), output_dir=folder), "pass `eval_features=<folder>`"),
        (RunOptions(output_dir=folder), r"pass `train=<manifest.jsonl>` \(or `features=<folder>`\)"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            train("reef/msvd_qa", options, stage="main")
    with pytest.raises(ValueError, match="pass one of `eval=<manifest.jsonl>`"):
        evaluate("reef/msvd_qa", EvalOptions(model=folder, eval=str(manifest), features=folder, output_dir=folder))


def test_features_need_their_column(manifest, tiny_checkpoints, tmp_path):
    rows = load_manifest(manifest, split="train")
    rows.save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match=r"have no column\(s\) \['frame_features', 'frame_features_length'\]"):
        load_feature_rows(tmp_path / "plain", "train")
    with pytest.raises(ValueError, match="must be a folder written by `videoadapt extract --output`"):
        load_feature_rows(manifest, "train")
    spec, recipe, _, _, proc = build("reef", tiny_checkpoints)
    with pytest.raises(ValueError, match=r"row 'toy/train/0' has no `frame_features` column"):
        spec.collator(recipe, proc, True, features="frame_features")(list(rows))
    short = {**rows[0], "frame_features": np.zeros((3, 17, 32), np.float32), "frame_features_length": 4}
    with pytest.raises(ValueError, match=r"`frame_features` must be \[T, ...\] frame features with T = "):
        SFTCollator(proc, lambda row: row["question"], features="frame_features")([short])
    mixed = [{**short, "frame_features_length": 3}, {**short, "frame_features": np.zeros((2, 17, 32), np.float32),
                                                      "frame_features_length": 2}]  # fmt: skip
    with pytest.raises(ValueError, match=r"videos in one batch need the same frame count, got \[2, 3\]"):
        SFTCollator(proc, lambda row: row["question"], features="frame_features")(mixed)


def test_a_saved_dataset_gives_only_its_rows_of_the_split(tmp_path):
    """`videoadapt extract --split train` saves one Dataset: read as the test split (`videoadapt eval`'s default) it
    must not score the training rows as test rows; a Dataset of several splits gives the asked split's rows."""
    import datasets

    def row(i: int, split: str) -> dict:
        return {"id": f"toy/{split}/{i}", "split": split, "frame_features": [[float(i)]], "frame_features_length": 1}

    datasets.Dataset.from_list([row(i, "train") for i in range(3)]).save_to_disk(str(tmp_path / "train_only"))
    assert list(load_feature_rows(tmp_path / "train_only", "train")["id"]) == [f"toy/train/{i}" for i in range(3)]
    with pytest.raises(ValueError, match=r"are of the split\(s\) \['train'\] .*, not 'test'; extract the 'test' rows"):
        load_feature_rows(tmp_path / "train_only", "test")
    mixed = [row(0, "train"), row(1, "test"), row(2, "train"), row(3, "test")]
    datasets.Dataset.from_list(mixed).save_to_disk(str(tmp_path / "mixed"))
    rows = load_feature_rows(tmp_path / "mixed", "test")
    assert list(rows["id"]) == ["toy/test/1", "toy/test/3"] and rows[1]["frame_features"].tolist() == [[3.0]]
    unsplit = [{k: v for k, v in row(i, "train").items() if k != "split"} for i in range(2)]
    datasets.Dataset.from_list(unsplit).save_to_disk(str(tmp_path / "unsplit"))
    assert len(load_feature_rows(tmp_path / "unsplit", "test")) == 2  # no `split` column: every row


def test_features_mode_refuses_a_stage_that_trains_the_tower(runs, tiny_checkpoints, tmp_path):
    from videoadapt.recipes import reef_recipes

    source = Path(reef_recipes.__file__).parent / "reef" / "msvd_qa.yaml"
    recipe = yaml.safe_load(source.read_text())
    recipe["stages"]["main"]["trainable"].append("vision_model.encoder")
    path = tmp_path / "reef" / "tower.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(recipe))
    _, _, stage, config, processor = SETTINGS["reef"]
    options = RunOptions(features=str(runs("reef")["features"]), output_dir=str(tmp_path / "run"),
                         model=str(tiny_checkpoints["instructblip_video"]))  # fmt: skip
    with pytest.raises(ValueError, match=r"features mode skips `vision_model` .* trains \d+ of its parameters "
                                         r"\(vision_model\.encoder\.layers"):  # fmt: skip
        train(path, options, stage, config=dict(config), processor=dict(processor))
    assert not (tmp_path / "run").exists()
    spec, _, _, model, _ = build("reef", tiny_checkpoints)  # the post_layernorm REEF trains is applied by the model
    spec.check_features_training(model, ["vision_model.post_layernorm.weight", "qformer.layernorm.weight"], "x")
