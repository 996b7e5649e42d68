"""`videoadapt visualize reef`: end to end on a saved tiny REEF model + processor and a real mp4 written here."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from videoadapt.cli import main
from videoadapt.modeling_reef import ReefForConditionalGeneration
from videoadapt.processors.processing_reef import ReefProcessor
from videoadapt.processors.synthetic import PALETTE, ShapeSpec, ShotSpec, SyntheticVideoSpec, write_synthetic_video
from videoadapt.processors.video_io import load_video
from videoadapt.recipes.reef_visualize import reef_picture
from videoadapt.testing.tiny_models import build_tiny_checkpoint


QUESTION = "what color is the circle?"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and far faster when other processes load the CPU); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint("instructblip_video", tmp_path_factory.mktemp("cli_visualize") / "ibv")


@pytest.fixture(scope="module")
def reef_dir(checkpoint, tmp_path_factory):
    """A saved tiny REEF model (8 of 16 tokens kept, bank of 2) with its processor (3 frames)."""
    torch.manual_seed(0)
    model = ReefForConditionalGeneration.from_pretrained(checkpoint, num_selected_tokens=8, memory_bank_length=2)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    qformer_tokenizer = AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer")
    processor = ReefProcessor.from_model(model, tokenizer, qformer_tokenizer, num_frames=3)
    out = tmp_path_factory.mktemp("reef_model")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    shapes = (
        ShapeSpec("circle", PALETTE["red"], 10, (20, 20), (3, 1)),
        ShapeSpec("square", PALETTE["blue"], 8, (60, 30)),
    )
    spec = SyntheticVideoSpec(shots=(ShotSpec(PALETTE["grey"], shapes),), width=96, height=64, num_frames=24, fps=12)
    path = tmp_path_factory.mktemp("reef_video") / "shapes.mp4"
    write_synthetic_video(path, spec)
    return path


def test_cli_draws_the_model_selection_for_a_real_video(reef_dir, video, tmp_path, capsys):
    out = tmp_path / "picture.png"
    argv = ["visualize", "reef", str(reef_dir), str(video), "--question", QUESTION, "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"saved {out}" in printed and "answer: " in printed
    # the same picture drawn in-process from the same frames and model (the titles differ: compare below them)
    model = ReefForConditionalGeneration.from_pretrained(reef_dir).eval()
    processor = ReefProcessor.from_pretrained(reef_dir)
    frames = load_video(video, num_frames=3)[0]
    inputs = processor(QUESTION, videos=frames)
    with torch.no_grad():
        features = model.get_video_features(
            inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
        )
    expected = reef_picture(frames, features, num_slots=2)
    with Image.open(out) as drawn:
        assert drawn.size == expected.size == (480, 340)  # 3 frames, 4 x 4 grid, bank of 2, the minimum width
        below_title = (0, 30, *drawn.size)
        assert np.array_equal(
            np.asarray(drawn.convert("RGB").crop(below_title)), np.asarray(expected.crop(below_title))
        )
    # more frames: one more column each (96 px thumbnails, 6 px gaps)
    assert main([*argv, "--num-frames", "5", "--max-new-tokens", "0"]) == 0
    with Image.open(out) as drawn:
        assert drawn.size == (96 + 5 * 96 + 4 * 6 + 12, 340)
    assert "answer" not in capsys.readouterr().out


def test_cli_errors(reef_dir, checkpoint, video, tmp_path, capsys):
    out = str(tmp_path / "picture.png")
    missing = tmp_path / "missing.mp4"
    assert main(["visualize", "reef", str(reef_dir), str(missing), "--question", QUESTION, "--out", out]) == 1
    assert str(missing) in capsys.readouterr().err
    assert main(["visualize", "reef", str(checkpoint), str(video), "--question", QUESTION, "--out", out]) == 1
    assert (
        "holds InstructBlipVideoForConditionalGeneration, not ReefForConditionalGeneration" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["visualize", "reef", str(reef_dir), str(video), "--question", QUESTION, "--out", out, "--num-frames", "0"]
        )
    assert exit_info.value.code == 2 and "must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["visualize", "reef", str(reef_dir), str(video), "--out", out])
    assert exit_info.value.code == 2 and "--question" in capsys.readouterr().err
    assert not (tmp_path / "picture.png").exists()
