"""Model cards: what `save_pretrained` writes for every method (valid metadata, weights unchanged), PAVE patch rows
and patch cards, `push_to_hub` uploading exactly the saved folder with our card (Hub calls recorded, no server),
`card_info` in the metadata and the text, facts that survive re-saves, and the recipes: train names the recipe and
data, `evaluate ... card=true` adds model-index results."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file
from transformers import set_seed

from videoadapt.configuration.configuration_pave import PavePatchConfig
from videoadapt.hub_mixin import read_card_info
from videoadapt.model_cards import check_card_info, model_card, patch_card, patch_card_info
from videoadapt.modeling_compact import CompactForConditionalGeneration, CompactModel
from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
from videoadapt.modeling_pave import (
    PaveForConditionalGeneration,
    PaveLlavaNextVideoForConditionalGeneration,
    PaveModel,
)
from videoadapt.modeling_reef import ReefForConditionalGeneration
from videoadapt.processors.synthetic import random_spec, write_synthetic_video
from videoadapt.recipes.evaluate import main as evaluate_main
from videoadapt.recipes.manifest import write_manifest
from videoadapt.recipes.train import main as train_main


MODELS = {  # method -> (class, base family, config overrides fitting the tiny checkpoints)
    "reef": (ReefForConditionalGeneration, "instructblip_video", {"num_selected_tokens": 4, "memory_bank_length": 2}),
    "dynfocus": (DynFocusForConditionalGeneration, "instructblip_video",
                 {"num_pooled_tokens": 4, "num_events": 2, "event_knn": 1, "spatial_clusters": [4, 2],
                  "spatial_knn": [2, 1]}),
    "compact": (CompactForConditionalGeneration, "llava_onevision", {"num_frames": 4}),
    "pave": (PaveForConditionalGeneration, "llava_onevision", {}),
}  # fmt: skip
SMALL_PATCH = dict(hidden_size=32, num_attention_heads=4, ffn_size=48, output_mlp_size=48)
BASE_ID = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
GENERIC = "This is the model card of a 🤗 transformers model"


def build(method: str, tiny_checkpoints, cls=None):
    model_class, family, overrides = MODELS[method]
    torch.manual_seed(0)
    return (cls or model_class).from_pretrained(tiny_checkpoints[family], **overrides).eval()


def front_matter(text: str) -> dict:
    """The YAML block, parsed literally, and checked to be what huggingface_hub parses too."""
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    assert ModelCard(text).data.to_dict() == meta
    return meta


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def with_audio_patch(model):
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL_PATCH))
    return model


# --------------------------------------------------------------------------------------------- save_pretrained


@pytest.mark.parametrize("method", sorted(MODELS))
def test_save_pretrained_writes_a_valid_card_and_the_weights_load_back(method, tiny_checkpoints, tmp_path):
    model = build(method, tiny_checkpoints)
    model.save_pretrained(tmp_path)
    text = (tmp_path / "README.md").read_text()
    meta = front_matter(text)
    assert {k: meta[k] for k in ("library_name", "license", "pipeline_tag")} == {
        "library_name": "videoadapt", "license": "apache-2.0", "pipeline_tag": "video-text-to-text"}  # fmt: skip
    assert meta["tags"] == ["videoadapt", method, "video-text-to-text"]
    assert meta["videoadapt"] == {"model_type": model.config.model_type}
    assert "base_model" not in meta and "model-index" not in meta and "datasets" not in meta
    family = MODELS[method][1]
    assert f"(`{family}`), not on the Hub" in text and str(tiny_checkpoints[family]) not in text  # no local path
    assert "card_info" not in (tmp_path / "config.json").read_text()
    assert f"{sum(p.numel() for p in model.parameters()):,}" in text
    for section in ("## Model", "## Training", "## Evaluation", "## Intended use", "## How to load", "## License"):
        assert section in text
    loaded = type(model).from_pretrained(tmp_path).state_dict()
    state = model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_headless_models_are_loaded_with_automodel_in_the_snippet(tiny_checkpoints):
    for cls, method in ((PaveModel, "pave"), (CompactModel, "compact")):
        text = model_card(build(method, tiny_checkpoints, cls))
        assert 'AutoModel.from_pretrained("<this folder or repo>")' in text and "ForImageTextToText" not in text


def test_pave_card_lists_each_patch_with_its_side_channel_and_sizes(tiny_checkpoints, tmp_path):
    model = with_audio_patch(build("pave", tiny_checkpoints))
    model.add_patch("hfr", model.patch_config_for("video", 16, side_channel_grid=[2, 2], **SMALL_PATCH))
    model.set_patches(["audio"])
    model.save_pretrained(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert front_matter(text)["tags"] == ["videoadapt", "pave", "video-text-to-text", "audio", "video"]
    for name, kind, features, on in (("audio", "audio", "24-d, 1x1", "yes"), ("hfr", "video", "16-d, 2x2", "no")):
        fusion = sum(p.numel() for p in model.model.patches[name].parameters())
        lora = sum(t.numel() for t in load_file(tmp_path / "patches" / name / "adapter_model.safetensors").values())
        rope = "1d" if kind == "audio" else "3d"
        row = f"| `{name}` | {kind} | {features} per step | 2 x 32 wide, 4 heads | {rope} | projected | {fusion:,} | "
        assert row + f"{lora:,} | {on} |" in text
    assert "side_channels={name: {'features': ...}}" in text


def test_patch_card_parses_and_shows_both_ways_to_load(tmp_path):
    config = PavePatchConfig(side_channel="audio", side_channel_dim=512, query_dim=896, output_dim=896,
                             base_model_type="llava_onevision", base_model_name_or_path=BASE_ID)  # fmt: skip
    text = patch_card("audio", config, fusion_parameters=1234567, lora_parameters=89, recipe="pave/avqa.yaml",
                      datasets=["avqa"], metrics={"accuracy": 0.79}, repo_id="me/audio-patch")  # fmt: skip
    meta = front_matter(text)
    assert meta == {
        "base_model": BASE_ID, "base_model_relation": "adapter", "datasets": ["avqa"], "library_name": "videoadapt",
        "license": "apache-2.0", "pipeline_tag": "video-text-to-text",
        "tags": ["videoadapt", "pave", "video-text-to-text", "audio"],
        "videoadapt": {"patch": "audio", "side_channel": "audio", "recipe": {"file": "pave/avqa.yaml"}},
        "model-index": [{"name": "me/audio-patch", "results": [{
            "task": {"type": "video-text-to-text"}, "dataset": {"name": "avqa", "type": "avqa"},
            "metrics": [{"type": "accuracy", "value": 0.79, "name": "accuracy"}]}]}],
    }  # fmt: skip
    assert "- Recipe: `pave/avqa.yaml`\n- Datasets: `avqa`" in text and "| avqa | - | accuracy | 0.79 |" in text
    assert 'model = AutoModelForImageTextToText.from_pretrained("me/audio-patch")' in text
    assert (
        "from videoadapt.modeling_pave import PaveForConditionalGeneration\n\n"
        f'model = PaveForConditionalGeneration.from_pretrained("{BASE_ID}")\n'
        'model.load_patch("me/audio-patch", name="audio")' in text
    )
    assert (
        "| `audio` | audio | 512-d, 1x1 per step | 2 x 512 wide, 4 heads | 1d | projected | 1,234,567 | 89 |" in text
    )
    local = PavePatchConfig(side_channel="audio", base_model_name_or_path=str(tmp_path / "base"))
    text = patch_card("a", local, fusion_parameters=1, lora_parameters=0)
    meta = front_matter(text)
    assert "base_model" not in meta and "base_model_relation" not in meta and str(tmp_path) not in text
    assert "a local `video LLM` checkpoint (`base`), not on the Hub" in text


@pytest.mark.parametrize(
    ("family", "cls"),
    [
        ("llava_onevision", PaveForConditionalGeneration),
        ("llava_next_video", PaveLlavaNextVideoForConditionalGeneration),
    ],
)
def test_the_patch_card_snippet_runs_both_ways(family, cls, tiny_checkpoints, tmp_path):
    model = cls.from_pretrained(tiny_checkpoints[family])
    model.add_patch("audio", model.patch_config_for("audio", 24, **SMALL_PATCH))
    model.save_patch("audio", tmp_path / "audio")
    code = (tmp_path / "audio" / "README.md").read_text().split("```python\n")[1].split("```")[0]
    code = code.replace("<this folder or repo>", str(tmp_path / "audio"))
    scope = {}
    exec(code.replace("<base model>", str(tiny_checkpoints[family])), scope)  # the base is loaded, then the patch
    assert type(scope["model"]) is cls and scope["model"].patch_names == ["audio"]
    one_line = code.split("# or onto a base")[0]
    exec(one_line, scope)
    assert type(scope["model"]) is cls and scope["model"].active_patches == ["audio"]


def test_a_patch_card_carries_the_license_and_intended_use_of_its_model(tiny_checkpoints, tmp_path):
    model = with_audio_patch(build("pave", tiny_checkpoints))
    model.card_info = {"license": "cc-by-nc-4.0", "intended_use": "Non-commercial research on AVSD only."}
    model.save_pretrained(tmp_path)
    for card in (tmp_path / "README.md", tmp_path / "patches" / "audio" / "README.md"):
        text = card.read_text()
        assert front_matter(text)["license"] == "cc-by-nc-4.0" and "`cc-by-nc-4.0`" in text
        assert "Non-commercial research on AVSD only." in text


# --------------------------------------------------------------------------------------------- card_info


REEF_INFO = {
    "recipe": {"file": "reef/msvd_qa.yaml", "method": "reef", "setting": "msvd_qa", "stage": "main",
               "manifests": ["data/msvd_qa.jsonl"]},
    "datasets": ["msvd_qa", "activitynet_qa"],
    "metrics": {"msvd_qa": {"accuracy": 0.5, "split": "test"}, "activitynet_qa": {"accuracy": 0.25, "em1": 0.125}},
    "license": "mit",
    "base_model": "Salesforce/instructblip-vicuna-7b",
}  # fmt: skip


def test_card_info_appears_in_the_metadata_and_the_text(tiny_checkpoints, tmp_path):
    model = build("reef", tiny_checkpoints)
    model.card_info = REEF_INFO
    model.save_pretrained(tmp_path)
    text = (tmp_path / "README.md").read_text()
    result = lambda name, split, metrics: {  # noqa: E731
        "task": {"type": "video-text-to-text"}, "dataset": {"name": name, "type": name, **split},
        "metrics": [{"type": k, "value": v, "name": k} for k, v in metrics.items()]}  # fmt: skip
    assert front_matter(text) == {
        "base_model": "Salesforce/instructblip-vicuna-7b", "datasets": ["msvd_qa", "activitynet_qa"],
        "library_name": "videoadapt", "license": "mit", "pipeline_tag": "video-text-to-text",
        "tags": ["videoadapt", "reef", "video-text-to-text"],
        "videoadapt": {"model_type": "videoadapt_reef", "recipe": REEF_INFO["recipe"]},
        "model-index": [{"name": "videoadapt-reef-msvd_qa", "results": [
            result("msvd_qa", {"split": "test"}, {"accuracy": 0.5}),
            result("activitynet_qa", {}, {"accuracy": 0.25, "em1": 0.125})]}],
    }  # fmt: skip
    assert "- Recipe: `reef/msvd_qa.yaml` (method `reef`, setting `msvd_qa`, stage `main`)" in text
    assert "- Data manifests: `data/msvd_qa.jsonl`\n- Datasets: `msvd_qa`, `activitynet_qa`" in text
    assert "| msvd_qa | test | accuracy | 0.5 |\n| activitynet_qa | - | accuracy | 0.25 |" in text
    assert "[`Salesforce/instructblip-vicuna-7b`](https://huggingface.co/Salesforce/instructblip-vicuna-7b)" in text
    assert "`mit`" in text.split("## License")[1]
    assert read_card_info(tmp_path) == check_card_info(REEF_INFO)  # what the card records reads back exactly


def test_recorded_facts_survive_resaves_and_card_info_replaces_them(tiny_checkpoints, tmp_path):
    model = build("reef", tiny_checkpoints)
    model.card_info = REEF_INFO
    model.save_pretrained(tmp_path / "a")
    again = ReefForConditionalGeneration.from_pretrained(tmp_path / "a")  # card_info None
    again.save_pretrained(tmp_path / "a")  # the target folder's card
    assert read_card_info(tmp_path / "a") == check_card_info(REEF_INFO)
    again.save_pretrained(tmp_path / "b")  # the card of the folder it was loaded from
    assert read_card_info(tmp_path / "b") == check_card_info(REEF_INFO)
    again.card_info = {"datasets": ["youcook2"], "metrics": {}}
    again.save_pretrained(tmp_path / "b")
    facts = read_card_info(tmp_path / "b")
    assert facts["datasets"] == ["youcook2"] and "metrics" not in facts and facts["license"] == "mit"
    other = build("compact", tiny_checkpoints)  # another model type's card in the target folder is ignored
    other.save_pretrained(tmp_path / "a")
    assert read_card_info(tmp_path / "a", "videoadapt_compact") == {"license": "apache-2.0"}  # nothing of REEF's
    assert read_card_info(tmp_path / "a", "videoadapt_reef") == {}


@pytest.mark.parametrize(
    "card_info, error, words",
    [
        (["msvd_qa"], TypeError, "`card_info` must be a dict"),
        ({"dataset": ["x"]}, ValueError, "keys must be among"),
        ({"recipe": {"name": "x"}}, ValueError, "card_info['recipe'] must be a string or a dict"),
        ({"recipe": {"file": "x", "manifests": "m.jsonl"}}, TypeError, "card_info['recipe.manifests'] must be a list"),
        ({"datasets": "msvd_qa"}, TypeError, "card_info['datasets'] must be a list of strings"),
        ({"metrics": {"msvd_qa": {"accuracy": "high"}}}, ValueError, "card_info['metrics'] must map dataset names"),
        ({"metrics": [0.5]}, ValueError, "card_info['metrics'] must map dataset names"),
        ({"license": ""}, TypeError, "card_info['license'] must be a non-empty string"),
        ({"license": "Apache 2.0"}, ValueError, "must be a Hub license id (lowercase, e.g. 'apache-2.0', 'mit',"),
        ({"license": "Apache 2.0"}, ValueError, "repositories-licenses), got 'Apache 2.0'; try 'apache-2.0'."),
        ({"license": "MIT"}, ValueError, "got 'MIT'; try 'mit'"),
        ({"base_model": 7}, TypeError, "card_info['base_model'] must be a non-empty string"),
    ],
)
def test_bad_card_info_is_refused_naming_the_key(card_info, error, words):
    with pytest.raises(error) as caught:
        check_card_info(card_info)
    assert words in str(caught.value) and "got" in str(caught.value)


def test_flat_metrics_go_under_the_first_dataset_and_bad_card_info_fails_before_saving(tiny_checkpoints, tmp_path):
    flat = check_card_info({"datasets": ["avqa", "x"], "metrics": {"accuracy": 1, "split": "val"}})
    assert flat["metrics"] == {"avqa": {"accuracy": 1.0, "split": "val"}}
    assert patch_card_info(REEF_INFO) == {"recipe": "reef/msvd_qa.yaml", "datasets": REEF_INFO["datasets"],
                                          "metrics": REEF_INFO["metrics"], "license": "mit",
                                          "intended_use": None}  # fmt: skip
    assert check_card_info({"datasets": ["avqa"], "metrics": {"accuracy": 1}}) == {
        "datasets": ["avqa"], "metrics": {"avqa": {"accuracy": 1.0}}}  # fmt: skip
    model = build("compact", tiny_checkpoints)
    model.save_pretrained(tmp_path, is_main_process=False)  # another rank of a distributed run writes no card
    assert not (tmp_path / "README.md").exists()
    model.card_info = {"metric": {}}
    with pytest.raises(ValueError, match=r"got unknown \['metric'\]"):
        model.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing written


# --------------------------------------------------------------------------------------------- push_to_hub


@pytest.fixture
def hub_calls(monkeypatch):
    """HfApi's Hub calls replaced by recorders: the uploaded folder's files are read while it still exists."""
    calls = {"branches": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["upload"] = (repo_id, kwargs)
        calls["files"] = files(Path(folder_path))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_branch", lambda self, **kwargs: calls["branches"].append(kwargs))
    return calls


def test_push_to_hub_uploads_exactly_the_saved_folder_with_our_card(tiny_checkpoints, tmp_path, hub_calls):
    model = with_audio_patch(build("pave", tiny_checkpoints))
    model.card_info = {"datasets": ["avqa"], "metrics": {"avqa": {"accuracy": 0.75, "split": "test"}}}
    assert model.push_to_hub("me/pave-audio", tags=["audio-visual"], private=True) == "commit-info"
    assert hub_calls["create_repo"] == ("me/pave-audio", {"private": True, "token": None, "exist_ok": True})
    upload = {"commit_message": "Upload PaveForConditionalGeneration", "commit_description": None, "token": None,
              "revision": None, "create_pr": False, "allow_patterns": None}  # fmt: skip
    assert hub_calls["upload"] == ("me/pave-audio", upload)
    model.save_pretrained(tmp_path)
    saved, pushed = files(tmp_path), hub_calls["files"]
    assert pushed.keys() == saved.keys() and "patches/audio/patch.safetensors" in pushed  # subfolders too
    assert all(pushed[k] == saved[k] for k in saved if k != "README.md")
    card = pushed["README.md"].decode()
    meta = front_matter(card)
    assert GENERIC not in card and meta["library_name"] == "videoadapt"
    assert meta["tags"] == ["videoadapt", "pave", "video-text-to-text", "audio", "audio-visual"]
    assert meta["model-index"][0]["name"] == "me/pave-audio" and "# me/pave-audio" in card
    assert 'from_pretrained("me/pave-audio")' in card
    assert card.split("---", 2)[2] != saved["README.md"].decode().split("---", 2)[2]  # the repo's own title, snippet


def test_push_to_a_branch_and_save_pretrained_push_to_hub(tiny_checkpoints, tmp_path, hub_calls):
    model = build("reef", tiny_checkpoints)
    model.card_info = {"base_model": "me/reef"}  # pushed back to where it came from: not its own base
    model.push_to_hub("me/reef", revision="v2", commit_message="v2 weights")
    assert hub_calls["branches"] == [{"repo_id": "me/reef", "branch": "v2", "token": None, "exist_ok": True}]
    assert hub_calls["upload"][1]["revision"] == "v2" and hub_calls["upload"][1]["commit_message"] == "v2 weights"
    assert "base_model" not in front_matter(hub_calls["files"]["README.md"].decode())
    model.card_info = None
    model.save_pretrained(tmp_path / "reef-local", push_to_hub=True, tags=["x"])
    assert hub_calls["create_repo"][0] == "reef-local"  # transformers' default: the folder's name
    assert hub_calls["files"] == files(tmp_path / "reef-local")
    assert front_matter(hub_calls["files"]["README.md"].decode())["tags"][-1] == "x"
    hub_calls.clear()
    with pytest.raises(TypeError, match="`tags` must be a list of non-empty strings"):
        model.push_to_hub("me/reef", tags=[3])
    model.card_info = {"license": 3}
    with pytest.raises(TypeError, match=r"card_info\['license'\] must be a non-empty string, got 3"):
        model.push_to_hub("me/reef")
    assert hub_calls == {}  # refused before any Hub call


# --------------------------------------------------------------------------------------------- the recipes


@pytest.fixture(scope="module")
def trained(tiny_checkpoints, tmp_path_factory):
    """A tiny Compact run (1 step) on msvd_qa-style rows, then `evaluate ... card=true` on its test rows."""
    root = tmp_path_factory.mktemp("card_run")
    rows = []
    for i in range(3):
        spec = random_spec(seed=i, num_frames=24, fps=12.0, width=64, height=48, num_cuts=1, with_audio=False)
        write_synthetic_video(root / f"v{i}.mp4", spec)
        for split in ("train", "test"):
            rows.append({"id": f"msvd_qa/{split}/{i}", "split": split, "video": f"v{i}.mp4",
                         "question": "what color is it?", "answers": [["red", "green", "blue"][i]]})  # fmt: skip
    write_manifest(rows, root / "msvd.jsonl")
    out = root / "run"
    set_seed(0)
    assert train_main(["--recipe", "compact/stage1", "config.num_frames=4", "processor.num_frames=4", "max_steps=1",
                       "per_device_train_batch_size=2", "gradient_accumulation_steps=1", "save_strategy=no",
                       "report_to=none", "disable_tqdm=true", f"model={tiny_checkpoints['llava_onevision']}",
                       f"train={root / 'msvd.jsonl'}", f"output_dir={out}"]) == 0  # fmt: skip
    card_after_training = (out / "model" / "README.md").read_text()
    argv = ["--recipe", "compact/stage1", f"model={out / 'model'}", f"eval={root / 'msvd.jsonl'}", "progress=false",
            "max_new_tokens=2", "card=true"]  # fmt: skip
    assert evaluate_main([*argv, f"output_dir={root / 'eval'}"]) == 0
    scores = json.loads((root / "eval" / "scores.json").read_text())["scores"]
    return SimpleNamespace(root=root, model=out / "model", card=card_after_training, scores=scores, argv=argv)


def test_train_names_the_recipe_and_the_data_in_the_card(trained):
    meta = front_matter(trained.card)
    recipe = {"file": "compact/stage1.yaml", "method": "compact", "setting": "stage1",
              "manifests": [str(trained.root / "msvd.jsonl")]}  # fmt: skip
    assert meta["videoadapt"] == {"model_type": "videoadapt_compact", "recipe": recipe}
    assert meta["datasets"] == ["msvd_qa"] and "model-index" not in meta
    assert "- Recipe: `compact/stage1.yaml` (method `compact`, setting `stage1`)" in trained.card
    assert "- Datasets: `msvd_qa`" in trained.card


def test_evaluate_card_true_adds_the_scores_and_keeps_the_rest(trained, tmp_path):
    text = (trained.model / "README.md").read_text()
    meta = front_matter(text)
    assert meta["model-index"] == [{"name": "videoadapt-compact-stage1", "results": [{
        "task": {"type": "video-text-to-text"}, "dataset": {"name": "msvd_qa", "type": "msvd_qa", "split": "test"},
        "metrics": [{"type": "accuracy", "value": trained.scores["accuracy"], "name": "accuracy"}]}]}]  # fmt: skip
    assert meta["datasets"] == ["msvd_qa"] and meta["videoadapt"]["recipe"]["setting"] == "stage1"
    assert f"| msvd_qa | test | accuracy | {trained.scores['accuracy']:.4g} |" in text
    other = [{"id": f"o{i}", "split": "test", "video": str(trained.root / f"v{i}.mp4"), "question": "what color?",
              "answers": ["red"], "meta": {"dataset": "other_qa"}} for i in range(2)]  # fmt: skip
    write_manifest(other, tmp_path / "other.jsonl")
    argv = [*trained.argv[:3], f"eval={tmp_path / 'other.jsonl'}", *trained.argv[4:]]  # another dataset
    assert evaluate_main([*argv, f"output_dir={tmp_path / 'other'}"]) == 0
    other_accuracy = json.loads((tmp_path / "other" / "scores.json").read_text())["scores"]["accuracy"]
    index = {r["dataset"]["name"]: r["metrics"] for r in front_matter((trained.model / "README.md").read_text())[
        "model-index"][0]["results"]}  # fmt: skip
    assert index == {"msvd_qa": meta["model-index"][0]["results"][0]["metrics"],  # kept
                     "other_qa": [{"type": "accuracy", "value": other_accuracy, "name": "accuracy"}]}  # fmt: skip
    before = (trained.model / "README.md").read_bytes()
    assert evaluate_main([*trained.argv[:-1], f"output_dir={tmp_path / 'no_card'}"]) == 0  # card=false: untouched
    assert (trained.model / "README.md").read_bytes() == before
    with pytest.raises(ValueError, match="`card` must be true or false, got 'yes'"):
        evaluate_main([*trained.argv[:-1], "card=yes", f"output_dir={tmp_path / 'bad'}"])


def test_a_trained_and_evaluated_folder_pushes_with_its_metrics(trained, hub_calls):
    model = CompactForConditionalGeneration.from_pretrained(trained.model)
    model.push_to_hub("me/compact-msvd")
    meta = front_matter(hub_calls["files"]["README.md"].decode())
    results = {r["dataset"]["name"]: r["metrics"] for r in meta["model-index"][0]["results"]}
    assert results["msvd_qa"] == [{"type": "accuracy", "value": trained.scores["accuracy"], "name": "accuracy"}]
    assert meta["datasets"] == ["msvd_qa"] and meta["videoadapt"]["recipe"]["file"] == "compact/stage1.yaml"
