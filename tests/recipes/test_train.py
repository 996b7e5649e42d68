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


QWEN_STYLE_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for block in message['content'] %}"
    "{% if block['type'] == 'video' %}<video>{% else %}{{ block['text'] }}{% endif %}{% endfor %}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)  # LLaVA-OneVision's (Qwen2) layout: the answer starts right after "assistant\n"


@pytest.mark.parametrize("template", ["tiny", "qwen"])
def test_the_answer_reads_as_the_chat_template_renders_it(template, manifest, tiny_checkpoints):
    """prompt + answer + EOS = the token ids of the conversation with the answer as the assistant's turn, rendered by
    the chat template: a leading space only where the template leaves none (not after "assistant\\n")."""
    family, recipe_name, _, _ = RUNS["pave"]
    spec = METHODS["pave"]
    recipe = spec.load_recipe(Path(recipe_name).name)
    _, processor = spec.build(recipe, None, tiny_checkpoints[family], {"side_channel_dim": 8}, {"num_frames": 4})
    if template == "qwen":
        processor.tokenizer.chat_template = QWEN_STYLE_TEMPLATE
    row = next(iter(load_manifest(manifest, split="train")))
    batch = spec.collator(recipe, processor, True)([row])
    length = int(batch["attention_mask"][0].sum())
    prompt = spec.prompt(recipe, processor, row)
    assert prompt.endswith("assistant\n" if template == "qwen" else "assistant:")
    turns = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": recipe.format_prompt(row["question"])}]},
             {"role": "assistant", "content": [{"type": "text", "text": row["answers"][0]}]}]  # fmt: skip
    whole = processor.tokenizer.apply_chat_template(turns, tokenize=False)
    expected = processor([whole], videos=[row["video"]])["input_ids"][0].tolist()
    assert batch["input_ids"][0, :length].tolist() == expected[:length]
    assert expected[length - 1] == processor.tokenizer.eos_token_id


def test_pave_side_channels_are_cut_to_the_rows_segment(manifest, tiny_checkpoints):
    """A row with `timestamps` gets its segment's frames and only the side-channel steps of that segment (PAVE aligns
    the two by position along the clip), from a `side_channels` file and from extracted columns alike."""
    from videoadapt.processors.side_channels import SideChannelFeatures
    from videoadapt.recipes.features import side_channels_from_columns

    family, recipe_name, _, _ = RUNS["pave"]
    spec = METHODS["pave"]
    recipe = spec.load_recipe(Path(recipe_name).name)
    _, processor = spec.build(recipe, None, tiny_checkpoints[family], {"side_channel_dim": 8}, {"num_frames": 4})
    rows = list(load_manifest(manifest, split="train"))
    assert rows[1]["timestamps"] == [0.5, 1.5] and rows[0]["timestamps"] is None
    channels = [SideChannelFeatures.load(row["side_channels"]["audio"]) for row in rows[:2]]
    assert [c.timestamps.tolist() for c in channels] == [[0.5, 1.5], [0.5, 1.5]]
    batch = spec.collator(recipe, processor, True)(rows[:2])["side_channels"]["avsd"]
    assert batch["lengths"].tolist() == [2, 1]  # row 1: the step at 0.5 s only, of its segment [0.5, 1.5)
    assert torch.equal(batch["features"][0], channels[0].features) and torch.equal(
        batch["features"][1, :1], channels[1].features[:1]
    )
    columns = [{**row, "audio": c.features.numpy(), "audio_timestamps": c.timestamps.numpy()}
               for row, c in zip(rows[:2], channels)]  # fmt: skip
    extracted = side_channels_from_columns(columns, "audio", "audio", "avsd")["side_channels"]
    assert [len(sample["avsd"].features) for sample in extracted] == [2, 1]
    outside = {**columns[1], "timestamps": [1.6, 1.9]}
    with pytest.raises(ValueError, match=r"side channel 'avsd' has no step in the row's segment .*\[1.6, 1.9\)"):
        side_channels_from_columns([outside], "audio", "audio", "avsd")


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


def test_resume_from_checkpoint_resumes_and_a_missing_checkpoint_is_named(manifest, tiny_checkpoints, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    """`resume_from_checkpoint` (a TrainingArguments field that Trainer itself never reads) resumes like `resume`;
    a `resume` that is no checkpoint folder fails before any model loads, naming the key, the value and the
    checkpoints that exist (not as a Hub repo id)."""
    from videoadapt.recipes.trainer import VideoadaptTrainer

    family, recipe, _, extra = RUNS["compact"]
    out = tmp_path / "run"
    argv = ["--recipe", recipe, *extra, *FAST, f"model={tiny_checkpoints[family]}", f"train={manifest}",
            f"output_dir={out}"]  # fmt: skip
    main([*argv, "max_steps=1"])
    loaded = []
    original = VideoadaptTrainer._load_from_checkpoint
    monkeypatch.setattr(VideoadaptTrainer, "_load_from_checkpoint",
                        lambda self, path, model=None: loaded.append(path) or original(self, path, model))  # fmt: skip
    main([*argv, "resume_from_checkpoint=true"])
    assert loaded == [os.fspath(out / "checkpoint-1")]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    for item, key in (("resume=runs/x/checkpoint-9", "resume"), ("resume=3", "resume"),
                      (f"resume_from_checkpoint={out}", "resume_from_checkpoint")):  # fmt: skip
        message = (
            rf"`{key}` must be true .* a checkpoint folder holding trainer_state.json, got .*; the checkpoints in"
        )
        with pytest.raises(ValueError, match=message) as error:
            main([*argv, item])
        assert "checkpoint-2" in str(error.value)
    with pytest.raises(ValueError, match="pass one of `resume` and `resume_from_checkpoint`"):
        main([*argv, "resume=true", f"resume_from_checkpoint={out / 'checkpoint-1'}"])
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint` must be a checkpoint folder .* got '/nowhere'"):
        VideoadaptTrainer._load_from_checkpoint(None, "/nowhere", model=torch.nn.Linear(1, 1))


def test_a_new_run_refuses_a_folder_with_an_earlier_runs_checkpoints(manifest, tmp_path):
    """Without `resume`, checkpoints already in `output_dir` would mix with the new run's (and `save_total_limit`
    would rotate the new, lower-numbered ones out): refused before anything loads."""
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / f"{STAGING_PREFIX}checkpoint-11").mkdir()
    options = RunOptions(train=os.fspath(manifest), output_dir=os.fspath(tmp_path), model="/not/loaded")
    message = (
        r"already holds the checkpoints \['checkpoint-5', 'checkpoint-10'\] of an earlier run; pass `resume=true`"
    )
    with pytest.raises(ValueError, match=message):
        train("compact/stage1", options)
    (tmp_path / "checkpoint-10").rmdir()
    (tmp_path / "checkpoint-5").rmdir()
    with pytest.raises(OSError):  # no checkpoint left (a staging folder is none): the run starts, at the model
        train("compact/stage1", options)


@pytest.mark.parametrize("n_gpu", [0, 1, 2, 4])
def test_the_global_batch_is_the_recipes_with_one_process_on_several_gpus(n_gpu, tmp_path, monkeypatch):
    """`python -m videoadapt.recipes.train` on a machine with several GPUs (no launcher): Trainer's DataParallel
    feeds each GPU a per-device batch, so the per-device batch is the recipe's global batch / (world size * n_gpu)."""
    from transformers import TrainingArguments

    from videoadapt.recipes.train import _training_arguments

    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: n_gpu))
    monkeypatch.setenv("WORLD_SIZE", "1")
    spec = METHODS["compact"]
    recipe = spec.load_recipe("stage1")
    for max_per_device in (None, 2):
        args = _training_arguments(spec, recipe, None, tmp_path, max_per_device, {"use_cpu": True})
        assert args.train_batch_size * args.gradient_accumulation_steps == recipe.batch_size
        assert max_per_device is None or args.per_device_train_batch_size <= max_per_device


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
