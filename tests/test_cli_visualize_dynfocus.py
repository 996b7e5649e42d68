"""`videoadapt visualize dynfocus`: end to end on a saved tiny DynFocus model + processor and a real mp4 written
here."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from videoadapt.cli import main
from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
from videoadapt.processors.processing_dynfocus import DynFocusProcessor
from videoadapt.processors.sampling import FpsSampler
from videoadapt.processors.synthetic import PALETTE, ShapeSpec, ShotSpec, SyntheticVideoSpec, write_synthetic_video
from videoadapt.processors.video_io import load_video
from videoadapt.recipes.dynfocus_visualize import DynFocusPictureLayout, dynfocus_picture


QUESTION = "what color is the circle?"
# the tiny vision tower has 4 x 4 patches (as tests/models/dynfocus/test_modeling_dynfocus.py); K = 2 of L = 4 events
TINY = dict(num_pooled_tokens=4, spatial_clusters=[6, 3], spatial_knn=[3, 2], num_events=4, event_knn=2)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and far faster when other processes load the CPU); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from videoadapt.testing.tiny_models import build_tiny_checkpoint

    return build_tiny_checkpoint("instructblip_video", tmp_path_factory.mktemp("cli_dynfocus") / "ibv")


@pytest.fixture(scope="module")
def dynfocus_dir(checkpoint, tmp_path_factory):
    """A saved tiny DynFocus model (2 of 4 events kept) with its processor (1 fps)."""
    torch.manual_seed(0)
    model = DynFocusForConditionalGeneration.from_pretrained(checkpoint, **TINY, event_keep_ratio=0.5)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    qformer_tokenizer = AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer")
    processor = DynFocusProcessor.from_model(model, tokenizer, qformer_tokenizer)
    out = tmp_path_factory.mktemp("dynfocus_model")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """6 s at 4 fps, two shots: 6 frames at 1 fps."""
    circle = ShapeSpec("circle", PALETTE["red"], 10, (20, 20), (3, 1))
    square = ShapeSpec("square", PALETTE["blue"], 8, (60, 30))
    shots = (ShotSpec(PALETTE["grey"], (circle,)), ShotSpec(PALETTE["yellow"], (square,)))
    spec = SyntheticVideoSpec(shots=shots, cut_frames=(12,), width=96, height=64, num_frames=24, fps=4)
    path = tmp_path_factory.mktemp("dynfocus_video") / "shapes.mp4"
    write_synthetic_video(path, spec)
    return path


def _features(model_dir, frames):
    model = DynFocusForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = DynFocusProcessor.from_pretrained(model_dir)
    inputs = processor(f"<video>\n{QUESTION}", videos=frames, questions=QUESTION)
    with torch.no_grad():
        return model.get_video_features(
            inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
        )


def _below_title(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").crop((0, 30, *image.size)))


def test_cli_draws_the_events_and_clusters_for_a_real_video(dynfocus_dir, video, tmp_path, capsys):
    out = tmp_path / "picture.png"
    argv = ["visualize", "dynfocus", str(dynfocus_dir), str(video), "--question", QUESTION, "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"saved {out}" in printed and "answer: " in printed
    # the same picture drawn in-process from the same 1 fps frames and model (the titles differ: compare below them)
    frames = load_video(video, FpsSampler(1.0))[0]
    features = _features(dynfocus_dir, frames)
    keys = features.key_frames[0].tolist()
    assert frames.shape[0] == 6 and len(keys) == 2 and f"key frames: {keys} of 6; panels: frame {keys[0]}" in printed
    expected = dynfocus_picture(frames, features)
    with Image.open(out) as drawn:
        # one row of 6 x 64 px thumbnails (64 + 6 * 64 + 5 * 6 + 12 wide), 48 px cells (4 x 4 grid, 192 px panels)
        assert drawn.size == expected.size == DynFocusPictureLayout.create(6, (4, 4)).size == (490, 406)
        assert np.array_equal(_below_title(drawn), _below_title(expected))
    # another panel frame, two timeline rows, no answer
    assert main([*argv, "--frame", "4", "--columns", "4", "--max-new-tokens", "0"]) == 0
    printed = capsys.readouterr().out
    assert "answer" not in printed and "panels: frame 4" in printed
    with Image.open(out) as drawn:
        assert drawn.size == (480, 406 + 110)  # one more timeline row, narrower: the minimum width
        assert np.array_equal(
            _below_title(drawn), _below_title(dynfocus_picture(frames, features, frame=4, columns=4))
        )


def test_cli_errors(dynfocus_dir, checkpoint, video, tmp_path, capsys):
    out = str(tmp_path / "picture.png")
    command = ["visualize", "dynfocus"]
    missing = tmp_path / "missing.mp4"
    assert main([*command, str(dynfocus_dir), str(missing), "--question", QUESTION, "--out", out]) == 1
    assert str(missing) in capsys.readouterr().err
    assert main([*command, str(checkpoint), str(video), "--question", QUESTION, "--out", out]) == 1
    assert (
        "holds InstructBlipVideoForConditionalGeneration, not DynFocusForConditionalGeneration"
        in capsys.readouterr().err
    )
    argv = [*command, str(dynfocus_dir), str(video), "--question", QUESTION, "--out", out]
    assert main([*argv, "--frame", "6", "--max-new-tokens", "0"]) == 1
    assert "visualize dynfocus: error: `frame` must be a frame index in [0, 5], got 6" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--frame", "-1"])
    assert exit_info.value.code == 2 and "must be an integer >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--columns", "0"])
    assert exit_info.value.code == 2 and "must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*command, str(dynfocus_dir), str(video), "--out", out])
    assert exit_info.value.code == 2 and "--question" in capsys.readouterr().err
    assert not (tmp_path / "picture.png").exists()
