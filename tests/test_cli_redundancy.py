"""`videoadapt redundancy`: end to end on a tiny random CLIP checkpoint (saved here) and mp4s with known static shots."""

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

from videoadapt.cli import main
from videoadapt.processors.synthetic import PALETTE, ShotSpec, SyntheticVideoSpec, write_synthetic_video
from videoadapt.recipes.redundancy import estimate_redundancy, load_clip, read_manifest, sample_videos


BOS, EOS = "<|startoftext|>", "<|endoftext|>"
QUESTION = "what color is the background?"


def build_tiny_clip(path) -> None:
    """A random CLIPModel (hidden 32, 1 layer, 32 px images, 8 px patches) with a byte-level BPE tokenizer trained on
    a few sentences (`BOS text EOS`, padded with EOS as OpenAI CLIP) and a PIL CLIP image processor, all saved."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([QUESTION, "red blue green", "the background is red"], trainer)
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, **layers)
    config = CLIPConfig(text_config=text, vision_config=dict(image_size=32, patch_size=8, **layers), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)


def write_shots(path, seconds: list[tuple[str, int]]) -> None:
    """Static constant-colour shots of the given lengths in seconds, 2 fps, no frame code."""
    starts = np.cumsum([0] + [2 * n for _, n in seconds])
    spec = SyntheticVideoSpec(
        shots=tuple(ShotSpec(PALETTE[c]) for c, _ in seconds), cut_frames=tuple(int(s) for s in starts[1:-1]),
        width=48, height=32, fps=2.0, num_frames=int(starts[-1]), frame_code=False,
    )  # fmt: skip
    write_synthetic_video(path, spec)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_clip")
    build_tiny_clip(path)
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """`two_shots`: red 5 s, blue 3 s (8 frames at 1 fps, 1 cut); `aba`: red 3 s, blue 2 s, red 3 s (8 frames, 2 cuts)."""
    root = tmp_path_factory.mktemp("redundancy_cli")
    write_shots(root / "two_shots.mp4", [("red", 5), ("blue", 3)])
    write_shots(root / "aba.mp4", [("red", 3), ("blue", 2), ("red", 3)])
    rows = [{"video": v, "question": QUESTION, "answer": "red"} for v in ("two_shots.mp4", "aba.mp4")]
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cli_end_to_end_on_a_tiny_clip(clip_dir, manifest, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["redundancy", str(manifest), "--clip", str(clip_dir), "--json", str(out), "--device", "cpu"]
    assert main([*argv, "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert json.loads(out.read_text()) == summary
    assert summary["video_ids"] == ["two_shots.mp4", "aba.mp4"] and summary["num_manifest_videos"] == 2
    by_video = {v["video"]: v for v in summary["videos"]}
    # static shots: consecutive similarities are ~1 except at a cut, whose min-max value is 0: r_d = (n - 1 - cuts)/(n - 1)
    assert by_video["two_shots.mp4"]["num_frames"] == by_video["aba.mp4"]["num_frames"] == 8
    assert by_video["two_shots.mp4"]["r_d"] == 6 / 7 and by_video["aba.mp4"]["r_d"] == 5 / 7
    assert summary["r_d"] == pytest.approx((6 / 7 + 5 / 7) / 2, abs=1e-15)
    # the table: a header, one row per video, the means
    assert lines[0].split() == ["video", "frames", "questions", "r_d", "r_a"]
    assert lines[1].split()[:3] == ["two_shots.mp4", "8", "1"] and lines[2].split()[:3] == ["aba.mp4", "8", "1"]
    assert lines[3].startswith("mean of 2 of 2 videos") and f"{summary['r_d']:.3f}" in lines[3]
    # the same figures as the function called in-process
    model, tokenizer, frame_preprocessor = load_clip(clip_dir, "cpu")
    report = estimate_redundancy(manifest, model, tokenizer, frame_preprocessor, progress=False)
    assert report.to_dict() == summary
    # a transformers PIL image processor passed directly gives the same frames, hence the same report
    processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
    assert estimate_redundancy(manifest, model, tokenizer, processor, progress=False) == report
    assert 0.0 <= report.r_a <= 1.0


def test_cli_seeded_draw_and_uniform_frames(clip_dir, manifest, capsys):
    argv = ["redundancy", str(manifest), "--clip", str(clip_dir), "--device", "cpu", "--no-progress"]
    expected = [group[0].video for group in sample_videos(read_manifest(manifest), 1, seed=5)]
    assert main([*argv, "--num-videos", "1", "--seed", "5", "--num-frames", "4"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["video_ids"] == expected and summary["seed"] == 5
    assert (summary["fps"], summary["num_frames"], summary["videos"][0]["num_frames"]) == (None, 4, 4)


def test_cli_errors(clip_dir, manifest, tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert main(["redundancy", str(missing), "--clip", str(tmp_path / "no_clip")]) == 1
    assert f"videoadapt redundancy: error: manifest {str(missing)!r} does not exist" in capsys.readouterr().err
    bad_video = tmp_path / "bad.jsonl"
    bad_video.write_text(json.dumps({"video": "gone.mp4", "question": "q", "answer": "a"}) + "\n")
    assert main(["redundancy", str(bad_video), "--clip", str(clip_dir), "--device", "cpu", "--no-progress"]) == 1
    assert f"{tmp_path / 'gone.mp4'}: no such file" in capsys.readouterr().err
    for extra in (["--num-videos", "0"], ["--fps", "1", "--num-frames", "4"], ["--fps", "-1"]):
        with pytest.raises(SystemExit) as caught:
            main(["redundancy", str(manifest), "--clip", str(clip_dir), *extra])
        assert caught.value.code == 2
    capsys.readouterr()
    assert main(["redundancy", str(manifest), "--clip", str(clip_dir), "--relevance-threshold", "2"]) == 1
    assert "`relevance_threshold` must be in [0, 1]" in capsys.readouterr().err
