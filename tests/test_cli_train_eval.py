"""`videoadapt train | eval | extract | ask`: help texts, tiny runs through the console script, `ask` against the
model's own `generate`, extracted features against the encoder run directly, and clean errors (no traceback)."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer, set_seed

from videoadapt.cli import main
from videoadapt.modeling_pave import PaveForConditionalGeneration
from videoadapt.processors.processing_pave import PaveProcessor
from videoadapt.processors.sampling import UniformSampler
from videoadapt.recipes.extract import FrameFeatureEncoder
from videoadapt.recipes.manifest import write_manifest
from videoadapt.recipes.training import METHODS
from videoadapt.testing.tiny_methods import TINY_METHODS
from videoadapt.testing.toy_clips import write_toy_clips


QUESTION = "what color is the circle?"
BUILDS = {m: TINY_METHODS[m] for m in ("reef", "dynfocus", "compact")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """2 short videos with audio-like side-channel features and a manifest with 2 train rows."""
    root = tmp_path_factory.mktemp("cli_data")
    rows = [{"id": f"train/{i}", "split": "train", **clip, "question": QUESTION, "answers": [["red", "blue"][i]]}
            for i, clip in enumerate(write_toy_clips(root, 2))]  # fmt: skip
    write_manifest(rows, root / "data.jsonl")
    return root


@pytest.fixture(scope="module")
def model_dirs(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Saved model + processor folders (REEF, DynFocus, Compact) as training leaves them."""
    out = {}
    for method, (family, recipe, stage, config, processor) in BUILDS.items():
        spec = METHODS[method]
        set_seed(0)
        model, proc = spec.build(spec.load_recipe(recipe), stage, tiny_checkpoints[family], config, processor)
        folder = tmp_path_factory.mktemp(f"{method}_model")
        model.save_pretrained(folder)
        proc.save_pretrained(folder)
        out[method] = folder
    return out


@pytest.fixture(scope="module")
def patch_dir(tiny_checkpoints, tmp_path_factory) -> Path:
    """A PAVE audio patch (8-d features) of the tiny LLaVA-OneVision base, saved alone."""
    base = PaveForConditionalGeneration.from_pretrained(tiny_checkpoints["llava_onevision"])
    set_seed(1)
    base.add_patch("avsd", base.patch_config_for("audio", 8, hidden_size=16, num_attention_heads=2, ffn_size=16,
                                                 output_mlp_size=16))  # fmt: skip
    for parameter in base.patch_parameters("avsd"):  # a patch that changes the answer: not a zero residual
        torch.nn.init.normal_(parameter, std=0.5, generator=torch.Generator().manual_seed(2))
    return base.save_patch("avsd", tmp_path_factory.mktemp("patches") / "avsd")


def expected_answer(model, processor, prompt: str, video: Path, max_new_tokens: int, num_beams: int = 1, **extra):
    """What `generate` returns for the prompt and video, decoded (new tokens, special tokens skipped)."""
    inputs = processor([prompt], videos=[str(video)], **extra)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                         pad_token_id=processor.tokenizer.pad_token_id)  # fmt: skip
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


# --------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command, words",
    [
        (["train"], ["--recipe", "config.<field>", "example", "videoadapt train --recipe"]),
        (["eval"], ["--recipe", "metrics", "num_beams", "example", "videoadapt eval --recipe", "one"]),
        (["extract"], ["--model", "--num-proc", "--cache-dir", "--output", "example", "videoadapt extract"]),
        (["ask"], ["--base", "--side-channel", "--max-new-tokens", "--num-beams", "example", "videoadapt ask"]),
        (["models"], ["--json", "example"]),
        (["visualize", "reef"], ["--question", "--out", "example", "videoadapt visualize reef"]),
        (["visualize", "dynfocus"], ["--frame", "example", "videoadapt visualize dynfocus"]),
        (["redundancy"], ["--clip", "example", "videoadapt redundancy"]),
        (["import-official-pave"], ["--side-channel-dim", "example", "videoadapt import-official-pave"]),
    ],
)
def test_every_commands_help_explains_its_arguments_with_an_example(command, words, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    missing = [word for word in words if word not in text]
    assert not missing, text


def test_the_top_level_help_lists_the_new_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(f"    {name} " in text for name in ("train", "eval", "extract", "ask", "models", "visualize"))


# --------------------------------------------------------------------------------------------- ask


@pytest.mark.parametrize("method", sorted(BUILDS))
def test_ask_streams_exactly_what_generate_returns(method, model_dirs, data, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = model_dirs[method]
    assert main(["ask", str(folder), str(data / "v0.mp4"), QUESTION, "--max-new-tokens", "4"]) == 0
    streamed = capsys.readouterr().out
    model, processor = AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    prompt = QUESTION if method == "reef" else f"{processor.tokenizer.video_token} {QUESTION}"  # REEF: the processor
    expected = expected_answer(model, processor, prompt, data / "v0.mp4", 4)
    assert expected.strip() and streamed == expected + "\n"


def test_ask_with_beam_search_prints_the_answer_at_the_end(model_dirs, data, capsys):
    from videoadapt.modeling_reef import ReefForConditionalGeneration
    from videoadapt.processors.processing_reef import ReefProcessor

    folder = model_dirs["reef"]
    assert main(["ask", str(folder), str(data / "v1.mp4"), QUESTION, "--max-new-tokens", "3", "--num-beams", "3"]) == 0
    printed = capsys.readouterr().out
    model, processor = ReefForConditionalGeneration.from_pretrained(folder), ReefProcessor.from_pretrained(folder)
    expected = expected_answer(model, processor, QUESTION, data / "v1.mp4", 3, num_beams=3)
    assert expected.strip() and printed == expected + "\n"


def test_ask_loads_a_pave_patch_onto_its_base(patch_dir, tiny_checkpoints, data, capsys):
    base = tiny_checkpoints["llava_onevision"]
    argv = ["ask", str(patch_dir), str(data / "v0.mp4"), QUESTION, "--max-new-tokens", "4", "--num-frames", "4",
            "--side-channel", f"audio={data / 'a0.safetensors'}"]  # fmt: skip
    assert main(argv) == 0  # the base named in the patch config
    streamed = capsys.readouterr().out
    assert main([*argv, "--base", str(base), "--side-channel", f"avsd={data / 'a1.safetensors'}"]) == 0
    with_other_features = capsys.readouterr().out

    model = PaveForConditionalGeneration.from_pretrained(base)
    model.load_patch(patch_dir, name="avsd")
    tokenizer = AutoTokenizer.from_pretrained(base)
    processor = PaveProcessor.from_model(model, tokenizer, AutoImageProcessor.from_pretrained(base), num_frames=4)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).rstrip(" ")
    answers = [
        expected_answer(
            model, processor, prompt, data / "v0.mp4", 4, side_channels=[{"avsd": data / f"a{i}.safetensors"}]
        )
        for i in (0, 1)
    ]
    assert answers[0].strip() and streamed == answers[0] + "\n" and with_other_features == answers[1] + "\n"
    model.disable_patches()
    plain = expected_answer(model, processor, prompt, data / "v0.mp4", 4)
    assert plain != answers[0]  # the patch (and its side channel) shape the answer


def test_ask_answers_with_a_saved_pave_model_and_its_patches(patch_dir, tiny_checkpoints, data, tmp_path, capsys):
    """A whole PAVE model folder (base + patches/avsd + processor) answers as the patch loaded onto the base."""
    base = tiny_checkpoints["llava_onevision"]
    model = PaveForConditionalGeneration.from_pretrained(base)
    model.load_patch(patch_dir, name="avsd")
    tokenizer = AutoTokenizer.from_pretrained(base)
    PaveProcessor.from_model(model, tokenizer, AutoImageProcessor.from_pretrained(base), num_frames=4).save_pretrained(
        tmp_path
    )
    model.save_pretrained(tmp_path)
    side = ["--side-channel", f"avsd={data / 'a0.safetensors'}"]
    assert main(["ask", str(tmp_path), str(data / "v0.mp4"), QUESTION, "--max-new-tokens", "4", *side]) == 0
    from_folder = capsys.readouterr().out
    argv = ["ask", str(patch_dir), str(data / "v0.mp4"), QUESTION, "--max-new-tokens", "4", "--num-frames", "4"]
    assert main([*argv, *side]) == 0
    assert from_folder == capsys.readouterr().out and from_folder.strip()


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda d, m, p, b: ["ask", str(m), str(d / "missing.mp4"), QUESTION],
         "`video` must be an existing video file, got '"),
        (lambda d, m, p, b: ["ask", str(d), str(d / "v0.mp4"), QUESTION],
         "is neither a model folder (config.json) nor a PAVE patch folder (patch_config.json)"),
        (lambda d, m, p, b: ["ask", str(b), str(d / "v0.mp4"), QUESTION],
         "holds a 'llava_onevision' model, not a videoadapt one"),
        (lambda d, m, p, b: ["ask", str(p), str(d / "v0.mp4"), QUESTION, "--num-frames", "4"],
         "patch(es) ['avsd'] need side-channel features: pass `--side-channel avsd=<features file>`"),
        (lambda d, m, p, b: ["ask", str(p), str(d / "v0.mp4"), QUESTION, "--side-channel", "video=x.safetensors"],
         "`--side-channel video=...` names no single enabled patch; the model's patches (name: kind) are "
         "{'avsd': 'audio'}"),
        (lambda d, m, p, b: ["ask", str(m), str(d / "v0.mp4"), QUESTION, "--side-channel", "audio"],
         "`--side-channel` must look like NAME=FILE"),
        (lambda d, m, p, b: ["ask", str(m), str(d / "v0.mp4"), QUESTION, "--side-channel", "audio=a.safetensors"],
         "`--side-channel` is for PAVE models; "),
        (lambda d, m, p, b: ["ask", str(p), str(d / "v0.mp4"), QUESTION, "--side-channel", "avsd=/no/a.safetensors"],
         "the side-channel features file '/no/a.safetensors' does not exist"),
        (lambda d, m, p, b: ["ask", str(m), str(d / "v0.mp4"), "  "], "`question` is empty"),
        (lambda d, m, p, b: ["train", "--recipe", "compact/stage1", "max_step=3"], "unknown override 'max_step'"),
        (lambda d, m, p, b: ["eval", "--recipe", "reef/msvd_qa", f"model={m}", f"eval={d / 'data.jsonl'}",
                             "output_dir=o", "metrics=bleu4"], "`metrics` must be a non-empty list of names"),
        (lambda d, m, p, b: ["extract", str(d / "data.jsonl"), "--model", str(b), "--output", str(d)],
         "already exists; pass a new folder"),
        (lambda d, m, p, b: ["extract", str(d / "data.jsonl"), "--model", str(b), "--output", str(d / "new"),
                             "--max-frames", "3"], "`--max-frames` caps `--fps` sampling; pass `--fps` too"),
    ],
)  # fmt: skip
def test_errors_exit_non_zero_with_a_clear_message(make_argv, message, data, model_dirs, patch_dir, tiny_checkpoints,
                                                   capsys):  # fmt: skip
    argv = make_argv(data, model_dirs["reef"], patch_dir, tiny_checkpoints["llava_onevision"])
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and "Traceback" not in captured.err
    assert captured.err.splitlines()[-1].startswith(f"videoadapt {argv[0]}: error: ")  # after any loading bars


def test_folders_missing_a_processor_or_a_base_are_refused(model_dirs, patch_dir, data, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dirs["reef"] / name, bare / name)
    assert main(["ask", str(bare), str(data / "v0.mp4"), QUESTION]) == 1
    assert "holds a videoadapt_reef model but no processor (processor_config.json)" in capsys.readouterr().err
    orphan = tmp_path / "orphan"
    shutil.copytree(patch_dir, orphan)
    config = json.loads((orphan / "patch_config.json").read_text())
    (orphan / "patch_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    assert main(["ask", str(orphan), str(data / "v0.mp4"), QUESTION]) == 1
    assert "names no base model; pass `--base <base model folder>`" in capsys.readouterr().err


def test_beam_search_cannot_stream(model_dirs, data):
    from transformers import TextStreamer

    from videoadapt.recipes.ask import answer, load_for_ask, prepare_inputs

    loaded = load_for_ask(model_dirs["reef"])
    inputs = prepare_inputs(loaded, data / "v0.mp4", QUESTION)
    with pytest.raises(ValueError, match=r"beam search \(`num_beams` > 1\) cannot stream"):
        answer(loaded, inputs, 2, num_beams=2, streamer=TextStreamer(loaded.processor.tokenizer))
    with pytest.raises(ValueError, match=r"`max_new_tokens` must be an int >= 1, got 0"):
        answer(loaded, inputs, 0)


def test_the_console_script_fails_cleanly(data, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "videoadapt", "ask", str(tmp_path), str(data / "missing.mp4"), QUESTION],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"videoadapt ask: error: `video` must be an existing video file, got '{data / 'missing.mp4'}'."
    ]


# --------------------------------------------------------------------------------------------- train, eval, extract


def test_train_then_eval_through_the_console_script(data, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    train = ["train", "--recipe", "compact/stage1", f"model={tiny_checkpoints['llava_onevision']}",
             f"train={data / 'data.jsonl'}", f"output_dir={out}", "config.num_frames=4", "processor.num_frames=4",
             "max_steps=1", "per_device_train_batch_size=2", "gradient_accumulation_steps=1", "report_to=none",
             "disable_tqdm=true"]  # fmt: skip
    assert main(train) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == f"saved the trained model and processor to {out / 'model'}"
    assert "[videoadapt] compact recipe 'stage1', stage None: training 4 parameter tensors." in captured.err
    assert (out / "model" / "processor_config.json").is_file()
    evaluate = ["eval", "--recipe", "compact/stage1", f"model={out / 'model'}", f"eval={data / 'data.jsonl'}",
                "split=train", f"output_dir={tmp_path / 'eval'}", "max_new_tokens=2", "progress=false"]  # fmt: skip
    assert main(evaluate) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert printed == {"scores": scores["scores"], "skipped": {}, "num_examples": 2}
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["train/0", "train/1"] and scores["model"] == str(out / "model")


def test_extract_writes_the_towers_features(data, tiny_checkpoints, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    base = tiny_checkpoints["llava_onevision"]
    argv = ["extract", str(data / "data.jsonl"), "--model", str(base), "--output", str(tmp_path / "features"),
            "--split", "train", "--num-frames", "3", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out == f"wrote 2 rows with frame features to {tmp_path / 'features'}\n"
    rows = datasets.load_from_disk(str(tmp_path / "features")).with_format("torch")
    model = AutoModelForImageTextToText.from_pretrained(base)
    preprocessor, layer = AutoImageProcessor.from_pretrained(base), model.config.vision_feature_layer
    encoder = FrameFeatureEncoder(model.model.vision_tower, preprocessor, UniformSampler(3), feature_layer=layer)
    for i in range(2):
        direct = encoder(str(data / f"v{i}.mp4"), {})["features"]
        assert rows[i]["id"] == f"train/{i}" and rows[i]["frame_features"].shape == direct.shape
        assert direct.shape[0] == 3 and torch.equal(rows[i]["frame_features"], direct)
        assert rows[i]["frame_features_length"] == 3
