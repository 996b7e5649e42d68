"""`videoadapt.recipes.train`: tiny end-to-end runs of the REEF, DynFocus and Compact recipes, the manifest collator,
atomic checkpoints and the command line's overrides."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from transformers import set_seed

from videoadapt.processors.sampling import SegmentSampler, UniformSampler
from videoadapt.processors.video_io import load_video
from videoadapt.recipes.manifest import load_manifest, write_manifest
from videoadapt.recipes.train import RunOptions, main, parse_overrides, train
from videoadapt.recipes.training import IGNORE_INDEX, METHODS, STAGING_PREFIX, SFTCollator, method_of
from videoadapt.testing.toy_clips import write_toy_clips


FAST = ["max_steps=2", "per_device_train_batch_size=2", "gradient_accumulation_steps=1", "save_steps=1",
        "report_to=none", "disable_tqdm=true", "logging_steps=1"]  # fmt: skip
RUNS = {  # method -> (base family, recipe, stage, overrides fitting the tiny models)
    "reef": ("instructblip_video", "reef/msvd_qa", "main",
             ["config.num_selected_tokens=4", "config.memory_bank_length=2", "processor.num_frames=4"]),
    "dynfocus": ("instructblip_video", "dynfocus/default", "stage2",
                 ["config.num_pooled_tokens=4", "config.num_events=2", "config.event_knn=1",
                  "config.spatial_clusters=[4,2]", "config.spatial_knn=[2,1]", "processor.sampler={type: uniform, "
                  "num_frames: 4}"]),
    "compact": ("llava_onevision", "compact/stage1", None, ["config.num_frames=4", "processor.num_frames=4"]),
    "pave": ("llava_onevision", "pave/avsd", None, ["config.side_channel_dim=8", "processor.num_frames=4"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """4 short videos (24 frames at 12 fps) with audio-like side-channel features, one row with a segment; a
    validation row."""
    root = tmp_path_factory.mktemp("data")
    rows = [{"id": f"train/{i}", "split": "train", **clip, "question": "what color is the circle?",
             "answers": [["red", "green", "blue", "yellow"][i]]} for i, clip in enumerate(write_toy_clips(root, 4))]  # fmt: skip
    rows[1]["timestamps"] = [0.5, 1.5]
    rows.append({**rows[0], "id": "val/0", "split": "validation"})
    write_manifest(rows, root / "data.jsonl")
    return root / "data.jsonl"


@pytest.mark.parametrize("method", sorted(RUNS))
def test_a_tiny_run_trains_exactly_the_recipes_parameters(method, manifest, tiny_checkpoints, tmp_path):
    family, recipe, stage, extra = RUNS[method]
    out = tmp_path / "run"
    argv = ["--recipe", recipe, *(["--stage", stage] if stage else []), *extra, *FAST,
            f"model={tiny_checkpoints[family]}", f"train={manifest}", f"eval={manifest}", f"output_dir={out}"]  # fmt: skip
    assert main(argv) == 0
    shared = ["patch"] if method == "pave" else []  # PAVE also writes the patch alone
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-2", "model", *shared]  # no staging
    spec = METHODS[method]
    options, config, processor, _ = parse_overrides(argv[argv.index(extra[0]) :])
    loaded = spec.load_recipe(Path(recipe).name)
    set_seed(loaded.seed)  # as train() does: REEF/DynFocus/Compact's new modules start from the same draw
    model, _ = spec.build(loaded, stage, tiny_checkpoints[family], config, processor)
    trainable = set(spec.apply_freezing(loaded, model, stage))
    before = {k: v.detach() for k, v in model.state_dict().items()}
    after = spec.model_class().from_pretrained(out / "model").state_dict()  # the final folder loads on its own
    assert after.keys() == before.keys()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable, sorted(changed - trainable)
    assert all(torch.equal(after[k], before[k]) for k in before.keys() - trainable)  # frozen: bit-identical
    last = spec.model_class().from_pretrained(out / "checkpoint-2").state_dict()
    assert all(torch.equal(last[k], after[k]) for k in changed)
    assert (out / "model" / "processor_config.json").is_file()
    if method == "pave":  # the shared patch alone, loaded onto the untouched base, carries every trained weight
        base = spec.model_class().from_pretrained(tiny_checkpoints[family])
        base.load_patch(out / "patch", name="avsd")
        patched = base.state_dict()
        assert all(torch.equal(patched[k], after[k]) for k in changed)


def test_collator_masks_the_prompt_and_decodes_segments(manifest, tiny_checkpoints):
    spec = METHODS["reef"]
    recipe = spec.load_recipe("msvd_qa")
    config = {"num_selected_tokens": 4, "memory_bank_length": 2}
    model, processor = spec.build(recipe, "main", tiny_checkpoints["instructblip_video"], config, {"num_frames": 4})
    rows = list(load_manifest(manifest, split="train"))
    collator = SFTCollator(processor, lambda row: spec.prompt(recipe, processor, row), train=True)
    batch = collator(rows[:2])
    tokenizer = processor.tokenizer
    for i, row in enumerate(rows[:2]):
        alone = processor([collator.prompt(row)], videos=[rows[0]["video"]])  # the prompt does not depend on frames
        prompt = alone["input_ids"][0][alone["attention_mask"][0].bool()].tolist()
        answer = tokenizer(" " + row["answers"][0], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        length = len(prompt) + len(answer)
        assert prompt[: processor.num_query_tokens] == [tokenizer.video_token_id] * processor.num_query_tokens
        assert batch["input_ids"][i, :length].tolist() == prompt + answer
        assert batch["attention_mask"][i, :length].eq(1).all() and batch["attention_mask"][i, length:].eq(0).all()
        labels = batch["labels"][i]
        assert labels[: len(prompt)].eq(IGNORE_INDEX).all() and labels[length:].eq(IGNORE_INDEX).all()
        assert labels[len(prompt) : length].tolist() == answer
    # row 1 has the segment [0.5, 1.5) s: its frames are the uniform 4 of that second, not of the whole video
    frames, _ = load_video(rows[1]["video"], SegmentSampler(UniformSampler(4), 0.5, 1.5))
    expected = processor(["q"], videos=[frames])["pixel_values"][0]
    assert torch.equal(batch["pixel_values"][1], expected)
    whole = processor(["q"], videos=[rows[1]["video"]])["pixel_values"][0]
    assert not torch.equal(batch["pixel_values"][1], whole)
    evaluation = SFTCollator(processor, lambda row: spec.prompt(recipe, processor, row), train=False)(rows[:2])
    assert evaluation["references"] == [r["answers"] for r in rows[:2]] and "labels" not in evaluation
    assert evaluation["attention_mask"][:, -1].eq(1).all()  # left-padded for generate


def test_a_checkpoint_that_fails_mid_write_never_appears(manifest, tiny_checkpoints, tmp_path, monkeypatch):
    from transformers import Trainer

    family, recipe, stage, extra = RUNS["compact"]
    calls = {"n": 0}
    original = Trainer._save_rng_state

    def crash_on_second(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed while writing checkpoint-2")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", crash_on_second)
    out = tmp_path / "run"
    argv = [
        "--recipe",
        recipe,
        *extra,
        *FAST,
        "warmup_steps=0",
        f"model={tiny_checkpoints[family]}",
        f"train={manifest}",
        f"output_dir={out}",
    ]  # fmt: skip  (no warmup: step 1 changes the weights)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    names = {p.name for p in out.iterdir()}
    assert names == {"checkpoint-1", f"{STAGING_PREFIX}checkpoint-2"}  # checkpoint-2 never existed under its name
    monkeypatch.setattr(Trainer, "_save_rng_state", original)
    main([*argv, "resume=true"])  # resumes from checkpoint-1 and removes the leftover staging folder
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-2", "model"]
    whole = tmp_path / "uninterrupted"
    main([*argv[:-1], f"output_dir={whole}"])
    model_class = METHODS["compact"].model_class()
    resumed, expected = (model_class.from_pretrained(d / "model").state_dict() for d in (out, whole))
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)  # the resume restored the trained projector


def test_overrides_are_sorted_into_their_kinds():
    options, config, processor, training = parse_overrides(
        ["model=/ckpt", "train=a.jsonl", "resume=true", "config.num_events=4", "config.spatial_clusters=[4, 2]",
         "processor.num_frames=8", "max_steps=3", "bf16=false", "learning_rate=1e-4", "report_to=tensorboard"]
    )  # fmt: skip
    assert options == RunOptions(train="a.jsonl", model="/ckpt", resume=True)
    assert config == {"num_events": 4, "spatial_clusters": [4, 2]} and processor == {"num_frames": 8}
    assert training == {"max_steps": 3, "bf16": False, "learning_rate": 1e-4, "report_to": "tensorboard"}
    _, _, _, training = parse_overrides(["save_strategy=no", "bf16=true", "eval_strategy=steps"])
    assert training == {"save_strategy": "no", "bf16": True, "eval_strategy": "steps"}  # only true/false are booleans


@pytest.mark.parametrize(
    "item, message",
    [("max_step=3", "unknown override 'max_step'"), ("nokey", "key=value"), ("=3", "key=value")],
)
def test_bad_overrides(item, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides([item])


def test_method_and_stage_errors(tmp_path):
    assert (
        method_of("reef/msvd_qa").name == "reef" and method_of(Path("recipes/compact/stage1.yaml")).name == "compact"
    )
    with pytest.raises(ValueError, match="cannot tell the method"):
        method_of(tmp_path / "mine.yaml")
    assert method_of(tmp_path / "mine.yaml", "dynfocus").name == "dynfocus"
    with pytest.raises(ValueError, match=r"`--stage` must be one of \['initial', 'main'\]"):
        train("reef/msvd_qa", RunOptions(train="x", output_dir=os.fspath(tmp_path)), stage="stage1")
    with pytest.raises(ValueError, match="one stage per file"):
        train("compact/stage1", RunOptions(train="x", output_dir=os.fspath(tmp_path)), stage="main")
    with pytest.raises(ValueError, match="pass `train=<manifest.jsonl>`"):
        train("compact/stage1", RunOptions())


def test_help_describes_the_overrides(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "config.<field>" in text and "accelerate launch" in text and "resume" in text


@pytest.mark.parametrize("options", [["activation_checkpointing=true"], ["bf16=true"]], ids=["checkpointing", "bf16"])
def test_gradient_accumulation_checkpointing_and_bf16(options, manifest, tiny_checkpoints, tmp_path):
    """2 micro-batches of 1 accumulated per step, with gradient checkpointing or CPU bf16 autocast: the trained
    weights move, the frozen ones do not, and the run matches the plain run's step count."""
    family, recipe, _, extra = RUNS["compact"]
    out = tmp_path / "run"
    argv = ["--recipe", recipe, *extra, *FAST, "per_device_train_batch_size=1", "gradient_accumulation_steps=2",
            "warmup_steps=0", *options, f"model={tiny_checkpoints[family]}", f"train={manifest}",
            f"output_dir={out}"]  # fmt: skip
    assert main(argv) == 0
    spec = METHODS["compact"]
    loaded = spec.load_recipe("stage1")
    set_seed(loaded.seed)
    model, _ = spec.build(loaded, None, tiny_checkpoints[family], {"num_frames": 4}, {"num_frames": 4})
    trainable = set(spec.apply_freezing(loaded, model, None))
    before, after = model.state_dict(), spec.model_class().from_pretrained(out / "model").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and all(
        math.isfinite(log["loss"]) for log in state["log_history"] if "loss" in log
    )
