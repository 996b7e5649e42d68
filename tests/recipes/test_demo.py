"""The PAVE demo end to end in its short version (`--quick`), and the shipped `Accuracy` metric."""

import json

import pytest
import torch
from PIL import Image

from videoadapt.metrics import Accuracy, normalize_answer
from videoadapt.recipes import demo


SUMMARY_KEYS = {
    "base_zero_shot_acc",
    "lora_video_only_acc",
    "pave_acc",
    "reloaded_acc",
    "patch_params",
    "base_params",
    "patch_bytes",
}
PATCH_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.json", "patch.safetensors",
               "patch_config.json"]  # fmt: skip


def test_accuracy_metric_matches_hand_computed_values():
    metric = Accuracy()
    assert metric.compute(predictions=[0, 1, 2, 3], references=[0, 1, 1, 3]) == {"accuracy": 0.75}
    strings = metric.compute(predictions=["red", "blue", "green"], references=["red", "green", "green"])
    assert strings["accuracy"] == pytest.approx(2 / 3)
    # exact match unless asked to normalise: " Red." != "red"
    assert metric.compute(predictions=[" Red.", "blue"], references=["red", "blue"])["accuracy"] == 0.5
    assert metric.compute(predictions=[" Red.", "blue"], references=["red", "blue"], normalize=True)["accuracy"] == 1
    # weighted: (3 * 1 + 1 * 0) / (3 + 1)
    assert metric.compute(predictions=[0, 1], references=[0, 0], sample_weight=[3, 1])["accuracy"] == 0.75
    metric.add_batch(predictions=["a", "b"], references=["a", "a"])
    metric.add(prediction="c", reference="c")
    assert metric.compute()["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="sample_weight"):
        metric.compute(predictions=["a"], references=["a"], sample_weight=[-1.0])
    assert normalize_answer("  Two   Words! ") == "two words"


def test_short_demo_end_to_end(tmp_path, capsys):
    threads = torch.get_num_threads()
    demo.main(["--out", str(tmp_path), "--quick"])
    assert torch.get_num_threads() == threads  # the demo's single-thread setting does not leak
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the JSON line comes last

    assert set(summary) == SUMMARY_KEYS
    assert summary["reloaded_acc"] == summary["pave_acc"]
    # the short version does not reach the full demo's bar (>= 0.9), but the audio patch already beats video-only
    # LoRA clearly (seeds 0-5: pave 0.69 to 1.0, LoRA 0.19 to 0.28)
    assert summary["pave_acc"] > summary["lora_video_only_acc"] and summary["pave_acc"] >= 0.5
    assert 0 < summary["patch_params"] and 0 < summary["base_params"]

    patch = tmp_path / "audio_patch"
    assert sorted(p.name for p in patch.iterdir()) == PATCH_FILES
    assert summary["patch_bytes"] == sum(p.stat().st_size for p in patch.iterdir())
    assert json.loads((patch / "patch_config.json").read_text())["side_channel"] == "audio"

    details = json.loads((tmp_path / "summary.json").read_text())
    assert details["same_predictions_after_reload"] is True
    assert {k: details[k] for k in SUMMARY_KEYS} == summary

    config = demo.DemoConfig(quick=True)
    n_audio = config.dataset.num_train + config.dataset.num_test
    assert len(list((tmp_path / "data").glob("*/*.mp4"))) == n_audio + config.dataset.num_pretrain
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == n_audio  # one cached file per video
    assert (tmp_path / "base" / "config.json").is_file() and (tmp_path / "audio_encoder" / "config.json").is_file()
    with Image.open(tmp_path / "pave_attention.png") as image:
        assert image.format == "PNG" and min(image.size) > 100
