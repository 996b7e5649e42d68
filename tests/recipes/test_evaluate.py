"""`videoadapt.recipes.evaluate`: tiny saved models of every method end to end (files, counts, reproducibility), the
scores against the metrics computed directly on the predictions file, default metrics per task, decoding overrides,
and the errors a user can cause."""

import json
from pathlib import Path

import pytest
import torch
from transformers import set_seed

import videoadapt.recipes.evaluate as evaluate_module
from videoadapt.metrics import Accuracy, Bleu, Cider, ExactMatchAt1, RougeL, normalize_answer
from videoadapt.processors.side_channels import SideChannelFeatures
from videoadapt.processors.synthetic import random_spec, write_synthetic_video
from videoadapt.recipes.evaluate import (
    EvalOptions,
    compute_metrics,
    default_metrics,
    evaluate,
    main,
    parse_eval_overrides,
)
from videoadapt.recipes.manifest import read_manifest_rows, write_manifest
from videoadapt.recipes.training import METHODS
from videoadapt.testing.tiny_methods import TINY_METHODS


MODELS = {m: (t.family, f"{m}/{t.recipe}", t.stage, t.config, t.processor) for m, t in TINY_METHODS.items()}
COLORS = ["red", "green", "blue", "yellow", "white"]
QUIET = ["progress=false", "max_new_tokens=3"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """5 test rows on 3 short videos (audio-like side-channel features), 2 references on one row; a train row."""
    root = tmp_path_factory.mktemp("eval_data")
    rows = []
    for i in range(5):
        if i < 3:
            spec = random_spec(seed=i, num_frames=24, fps=12.0, width=64, height=48, num_cuts=1, with_audio=False)
            write_synthetic_video(root / f"v{i}.mp4", spec)
            features = torch.randn(2, 1, 1, 8, generator=torch.Generator().manual_seed(i))
            SideChannelFeatures("audio", features, torch.tensor([0.5, 1.5])).save(root / f"a{i}.safetensors")
        rows.append({"id": f"test/{i}", "split": "test", "video": f"v{i % 3}.mp4", "question": "what color is it?",
                     "answers": [COLORS[i]], "side_channels": {"audio": f"a{i % 3}.safetensors"}})  # fmt: skip
    rows[2]["answers"] = ["blue", "navy"]
    rows.append({**rows[0], "id": "train/0", "split": "train"})
    write_manifest(rows, root / "data.jsonl")
    return root / "data.jsonl"


@pytest.fixture(scope="module")
def model_dirs(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """A saved model + processor per method, as `videoadapt.recipes.train` leaves in `<output_dir>/model`."""
    out = {}
    for method, (family, recipe, stage, config, processor) in MODELS.items():
        spec = METHODS[method]
        set_seed(0)
        loaded = spec.load_recipe(Path(recipe).name)
        model, proc = spec.build(loaded, stage, tiny_checkpoints[family], config, processor)
        folder = tmp_path_factory.mktemp(f"{method}_model")
        model.save_pretrained(folder)
        proc.save_pretrained(folder)
        out[method] = folder
    return out


def run(method: str, model_dir: Path, manifest: Path, out: Path, *extra: str) -> dict:
    _, recipe, stage, _, _ = MODELS[method]
    argv = ["--recipe", recipe, *(["--stage", stage] if stage else []), f"model={model_dir}", f"eval={manifest}",
            f"output_dir={out}", *QUIET, *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "scores.json").read_text())


def read_predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def literal_accuracy(records: list[dict], key: str = "prediction") -> float:
    """Slow reference: a row is right when its normalised prediction equals any normalised reference."""
    hits = [normalize_answer(r[key]) in [normalize_answer(a) for a in r["references"]] for r in records]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("method", sorted(MODELS))
def test_every_method_writes_predictions_and_scores_reproducibly(method, model_dirs, manifest, tmp_path, capsys,
                                                                monkeypatch):  # fmt: skip
    monkeypatch.setattr(evaluate_module, "meteor_unavailable_reason", lambda: "no java on PATH")  # the jar is slow
    first = run(method, model_dirs[method], manifest, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["predictions.jsonl", "scores.json"]  # no temp files
    records = read_predictions(tmp_path / "a")
    assert [r["id"] for r in records] == [f"test/{i}" for i in range(5)]  # every test row, in order; not train/0
    assert [r["references"] for r in records] == [["red"], ["green"], ["blue", "navy"], ["yellow"], ["white"]]
    assert all(isinstance(r["prediction"], str) and set(r) == {"id", "prediction", "references"} for r in records)
    expected_scores = {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "brevity_penalty", "length_ratio", "cider", "rouge_l"}
    if method == "pave":  # the AVSD recipe is a dialogue task: caption metrics, METEOR skipped with its reason
        assert first["task"] == "dialogue" and first["metrics"] == ["bleu", "cider", "rouge_l", "meteor"]
        assert set(first["scores"]) == expected_scores and first["skipped"] == {"meteor": "no java on PATH"}
    else:
        assert first["task"] == "qa" and first["metrics"] == ["accuracy"] and set(first["scores"]) == {"accuracy"}
        assert first["skipped"] == {}
        assert first["scores"]["accuracy"] == pytest.approx(literal_accuracy(records))
    assert first["num_examples"] == 5 and first["split"] == "test" and first["method"] == method
    assert first["model"] == str(model_dirs[method]) and first["generation"]["max_new_tokens"] == 3
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["scores"] == first["scores"]
    run(method, model_dirs[method], manifest, tmp_path / "b")
    for name in ("predictions.jsonl", "scores.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_recipes_decoding_settings_apply_and_are_overridable(model_dirs, manifest, tmp_path):
    scores = run("reef", model_dirs["reef"], manifest, tmp_path / "a", "generation.repetition_penalty=1.0")
    assert scores["generation"] == {"num_beams": 5, "max_new_tokens": 3, "min_new_tokens": 1,
                                    "repetition_penalty": 1.0, "length_penalty": 0.0, "num_return_sequences": 1,
                                    "do_sample": False}  # fmt: skip
    scores = run("compact", model_dirs["compact"], manifest, tmp_path / "b", "num_beams=2")  # no recipe settings
    assert scores["generation"] == {"num_beams": 2, "max_new_tokens": 3, "do_sample": False}


def test_bfloat16_evaluation_casts_the_inputs_too(model_dirs, manifest, tmp_path):
    scores = run("pave", model_dirs["pave"], manifest, tmp_path, "dtype=bfloat16", "metrics=accuracy")
    assert scores["num_examples"] == 5 and set(scores["scores"]) == {"accuracy"}  # float32 pixels, side channels


def test_predictions_are_the_models_own_generate_output(model_dirs, manifest, tmp_path):
    """The decoded new tokens of `generate` on one row alone equal that row's prediction (left padding is inert)."""
    from videoadapt.recipes.manifest import load_manifest
    from videoadapt.recipes.training import SFTCollator

    run("compact", model_dirs["compact"], manifest, tmp_path, "batch_size=5")
    records = read_predictions(tmp_path)
    spec = METHODS["compact"]
    recipe = spec.load_recipe("stage1")
    model, processor = spec.build(recipe, None, model_dirs["compact"], {"num_frames": 4}, {})
    rows = load_manifest(manifest, split="test")
    collator = SFTCollator(processor, lambda row: spec.prompt(recipe, processor, row), train=False)
    for i in (0, 3):
        batch = collator([rows[i]])
        batch.pop("references")
        out = model.generate(**batch, max_new_tokens=3, num_beams=1, do_sample=False)
        text = processor.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert records[i]["prediction"] == text


def with_references(manifest: Path, name: str, references: list[list[str]]) -> Path:
    """A copy of the manifest (same folder) whose test rows get `references`: scores that are not all zero for a
    random tiny model, built from its own predictions."""
    rows = list(read_manifest_rows(manifest))
    tests = [row for row in rows if row["split"] == "test"]
    for row, refs in zip(tests, references, strict=True):
        row["answers"] = refs
    path = manifest.parent / f"{name}.jsonl"
    write_manifest(rows, path)
    return path


def test_scores_equal_the_metrics_on_the_predictions_file(model_dirs, manifest, tmp_path):
    run("reef", model_dirs["reef"], manifest, tmp_path / "first")
    said = [r["prediction"] for r in read_predictions(tmp_path / "first")]
    assert all(said)  # the tiny model says something
    references = [[said[0]], [said[1] + " and more words"], ["something else", said[2].upper() + "."], ["no"],
                  [said[4].split()[0]]]  # fmt: skip
    derived = with_references(manifest, "derived_caption", references)
    scores = run("reef", model_dirs["reef"], derived, tmp_path, "metrics=bleu,cider,rouge_l,em1,accuracy")
    records = read_predictions(tmp_path)
    assert [r["references"] for r in records] == references
    predictions = [r["prediction"] for r in records]
    direct = {}
    for metric in (Bleu(), Cider(), RougeL(), ExactMatchAt1()):
        direct.update(metric.compute(predictions=predictions, references=references))
    direct["accuracy"] = literal_accuracy(records)
    assert scores["scores"] == pytest.approx(direct) and scores["skipped"] == {} and scores["task"] == "qa"
    assert direct["accuracy"] >= 2 / 5 and direct["bleu_1"] > 0 and direct["rouge_l"] > 0  # rows 0 and 2 match


def test_top_k_accuracy_counts_any_candidate(model_dirs, manifest, tmp_path):
    run("reef", model_dirs["reef"], manifest, tmp_path / "first", "generation.num_return_sequences=3")
    first = read_predictions(tmp_path / "first")
    assert all(len(r["candidates"]) == 3 and r["candidates"][0] == r["prediction"] for r in first)
    references = [[first[0]["candidates"][1]], [first[1]["candidates"][2]], [first[2]["prediction"]], ["no"], ["no"]]
    derived = with_references(manifest, "derived_topk", references)
    scores = run("reef", model_dirs["reef"], derived, tmp_path, "generation.num_return_sequences=3")
    records = read_predictions(tmp_path)
    best = [{"references": r["references"], "best": next((c for c in r["candidates"] if normalize_answer(c) in
             [normalize_answer(a) for a in r["references"]]), r["prediction"])} for r in records]  # fmt: skip
    assert scores["scores"]["accuracy_top3"] == pytest.approx(literal_accuracy(best, "best")) == pytest.approx(3 / 5)
    assert scores["scores"]["accuracy"] == pytest.approx(literal_accuracy(records))
    assert scores["scores"]["accuracy"] < scores["scores"]["accuracy_top3"]


def test_metric_values_on_known_predictions(monkeypatch):
    records = [
        {"id": "a", "prediction": "Red.", "references": ["red"]},
        {"id": "b", "prediction": "navy", "references": ["blue", "Navy"]},  # the second reference counts
        {"id": "c", "prediction": "green", "references": ["yellow"], "candidates": ["green", "yellow"]},
    ]
    records[0]["candidates"], records[1]["candidates"] = ["Red.", "x"], ["navy", "y"]
    scores, skipped = compute_metrics(records, ["accuracy"])
    assert scores == {"accuracy": pytest.approx(2 / 3), "accuracy_top2": 1.0} and skipped == {}
    predictions = ["red", "navy", "green"]
    plain = Accuracy().compute(predictions=predictions, references=["red", "navy", "yellow"])["accuracy"]
    assert plain == pytest.approx(2 / 3)
    monkeypatch.setattr(evaluate_module, "meteor_unavailable_reason", lambda: "no java on PATH")
    scores, skipped = compute_metrics(records, ["meteor", "cider"])
    assert skipped == {"meteor": "no java on PATH"} and set(scores) == {"cider"}


def test_default_metrics_by_task():
    assert default_metrics("qa") == ("accuracy",) and default_metrics("classification", "breakfast") == ("accuracy",)
    assert default_metrics("qa", "ScanQA") == ("accuracy", "em1") and default_metrics("qa", "sqa3d")[-1] == "em1"
    assert default_metrics("caption") == ("bleu", "cider", "rouge_l", "meteor") == default_metrics("dialogue")
    with pytest.raises(ValueError, match=r"`task` must be one of"):
        default_metrics("retrieval")


def test_overrides_are_sorted_into_their_kinds():
    options, config, generation = parse_eval_overrides(
        ["model=/m", "eval=e.jsonl", "output_dir=o", "split=validation", "batch_size=2", "metrics=accuracy, bleu",
         "num_beams=3", "max_new_tokens=7", "generation.length_penalty=1.0", "config.num_events=4"]
    )  # fmt: skip
    assert options == EvalOptions(model="/m", eval="e.jsonl", output_dir="o", split="validation", batch_size=2,
                                  metrics=("accuracy", "bleu"))  # fmt: skip
    assert config == {"num_events": 4} and generation == {"num_beams": 3, "max_new_tokens": 7, "length_penalty": 1.0}


@pytest.mark.parametrize(
    "items, message",
    [
        (["metrics=accuracy,bleu4"], r"`metrics` must be a non-empty list of names among .* fix \['bleu4'\]"),
        (["metrics=3"], r"`metrics` must be comma-separated names such as accuracy,bleu, got 3"),
        (["metrics="], r"`metrics` must be comma-separated names such as accuracy,bleu, got None"),
        (["batch_size=0"], r"`batch_size` must be an int >= 1 \(rows per generate call\), got 0"),
        (["num_beams=0"], r"`num_beams` must be an int >= 1, got 0"),
        (["dtype=int8"], r"`dtype` must be one of \['float32', 'bfloat16', 'float16'\], got 'int8'"),
        (["split=dev"], r"`split` must be one of \['train', 'validation', 'test'\]"),
        (["split=validation"], r"`split` 'validation' has no rows in .*holds \['test', 'train'\]"),
        (["eval=/nowhere/data.jsonl"], r"`path` must be an existing manifest file, got '/nowhere/data.jsonl'"),
        (["model=/nowhere"], r"`model` must be a trained model folder .* got '/nowhere'"),
        (["output_dir="], r"pass `output_dir=...`"),
        (["beams=2"], r"unknown override 'beams'"),
    ],
)
def test_bad_input_raises_a_clear_error(items, message, model_dirs, manifest, tmp_path):
    argv = ["--recipe", "compact/stage1", f"model={model_dirs['compact']}", f"eval={manifest}",
            f"output_dir={tmp_path}", *QUIET, *items]  # fmt: skip
    with pytest.raises(ValueError, match=message):
        main(argv)
    assert not (tmp_path / "scores.json").exists()


def test_a_pave_folder_without_the_recipes_patch_is_refused(model_dirs, manifest, tmp_path, tiny_checkpoints):
    from videoadapt.modeling_pave import PaveForConditionalGeneration

    folder = tmp_path / "base"
    PaveForConditionalGeneration.from_pretrained(tiny_checkpoints["llava_onevision"]).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"holds the patches \[\], not the recipe's patch 'avsd'"):
        evaluate("pave/avsd", EvalOptions(model=str(folder), eval=str(manifest), output_dir=str(tmp_path / "o")))


def test_help_describes_the_keys(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "videoadapt eval" in text and "metrics" in text and "max_new_tokens" in text and "one process" in text
