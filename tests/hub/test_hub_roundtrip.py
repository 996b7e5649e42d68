"""Hub round trips against the local fake Hub, with the real client over real HTTP: every full model and processor,
a PAVE patch alone, one-line loading of a patch repository with revision pinning, and the errors a user meets."""

import copy
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoModelForImageTextToText, set_seed

from videoadapt.modeling_pave import PaveForConditionalGeneration, PaveLlavaNextVideoForConditionalGeneration
from videoadapt.pave_hub import PatchDownloadError
from videoadapt.recipes.training import METHODS
from videoadapt.testing.hub_server import FakeHub, fake_hub_environment
from videoadapt.testing.roundtrip import method_logits, run_in_fresh_process, write_tiny_manifest
from videoadapt.testing.tiny_methods import TINY_METHODS


MODELS = {m: (t.family, f"{m}/{t.recipe}", t.stage, t.config, t.processor) for m, t in TINY_METHODS.items()}
PATCH = "avsd"  # the pave/avsd recipe's patch name
PATCH_REPO, BASE_REPO = "tester/avsd-patch", "tester/tiny-onevision"


def randomize(model, needle: str, seed: int) -> None:
    """Non-zero values in every parameter whose name holds `needle` (a patch is an exact identity at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if needle in name:
                parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with FakeHub() as server, fake_hub_environment(server, tmp_path_factory.mktemp("hf_home")):
        yield server


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_tiny_manifest(tmp_path_factory.mktemp("hub_data"))


@pytest.fixture(scope="module")
def pushed(hub, manifest, tiny_checkpoints) -> dict[str, torch.Tensor]:
    """Every method's tiny model + processor pushed to `tester/<method>`; method -> the logits before pushing."""
    expected = {}
    for method, (family, recipe, stage, config, processor) in MODELS.items():
        spec = METHODS[method]
        set_seed(0)
        model, proc = spec.build(
            spec.load_recipe(Path(recipe).name), stage, tiny_checkpoints[family], config, processor
        )
        randomize(model, "patches." if method == "pave" else "_never_", seed=1)
        expected[method] = method_logits(model, proc, method, recipe, str(manifest))
        model.push_to_hub(f"tester/{method}")
        proc.push_to_hub(f"tester/{method}")
    return expected


def run_jobs(jobs: list[dict], hub: FakeHub, tmp_path: Path) -> dict[str, torch.Tensor | dict]:
    """Run the jobs in a fresh interpreter that knows only the hub's address; id -> logits or {"type", "message"}."""
    return run_in_fresh_process(jobs, tmp_path, {**hub.env(tmp_path / "child_home"), "PATH": "/usr/bin:/bin"})


def job(job_id: str, load: str, repo: str, manifest: Path, method: str = "pave", **extra) -> dict:
    recipe = MODELS[method][1]
    return {"id": job_id, "load": load, "repo": repo, "processor": f"tester/{method}", "method": method,
            "recipe": recipe, "manifest": str(manifest), **extra}  # fmt: skip


def test_every_full_model_and_processor_round_trips_through_the_hub(pushed, hub, manifest, tmp_path):
    files = HfApi().list_repo_files("tester/pave")
    assert {"config.json", "model.safetensors", "processor_config.json", "README.md"} <= set(files)
    assert f"patches/{PATCH}/patch.safetensors" in files
    results = run_jobs([job(m, "model", f"tester/{m}", manifest, m) for m in MODELS], hub, tmp_path)
    for method, expected in pushed.items():
        assert isinstance(results[method], torch.Tensor), results[method]
        assert torch.equal(results[method], expected), method


@pytest.fixture(scope="module")
def patch_repo(hub, pushed, manifest, tiny_checkpoints, tmp_path_factory) -> dict:
    """A base on the Hub, a patch trained on it pushed twice (tag v1, then main), then the base's main moved on."""
    api = HfApi()
    api.create_repo(BASE_REPO)
    api.upload_folder(repo_id=BASE_REPO, folder_path=tiny_checkpoints["llava_onevision"])
    model = PaveForConditionalGeneration.from_pretrained(BASE_REPO).eval()
    base_commit = api.model_info(BASE_REPO).sha
    processor = __import__("transformers").AutoProcessor.from_pretrained("tester/pave")
    recipe = METHODS["pave"].load_recipe("avsd")
    set_seed(0)
    recipe.add_patch(model, side_channel_dim=8)
    randomize(model, "patches.", seed=2)
    v1 = method_logits(model, processor, "pave", "pave/avsd", str(manifest))
    model.push_patch_to_hub(PATCH, PATCH_REPO)
    api.create_tag(PATCH_REPO, tag="v1")
    randomize(model, "patches.", seed=3)
    v2 = method_logits(model, processor, "pave", "pave/avsd", str(manifest))
    model.push_patch_to_hub(PATCH, PATCH_REPO)

    moved = tmp_path_factory.mktemp("moved_base")
    base = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["llava_onevision"])
    with torch.no_grad():
        base.lm_head.weight.mul_(1.5)
    base.save_pretrained(moved)
    api.upload_folder(repo_id=BASE_REPO, folder_path=moved, allow_patterns=["*.safetensors"])
    assert api.model_info(BASE_REPO).sha != base_commit
    return {"v1": v1, "v2": v2, "base_commit": base_commit, "model": model, "processor": processor}


def test_a_patch_repo_loads_in_one_line_with_its_pinned_base(patch_repo, hub, manifest, tiny_checkpoints, tmp_path):
    card = HfApi().hf_hub_download(PATCH_REPO, "config.json")
    pointer = json.loads(Path(card).read_text())
    assert pointer["base_model_name_or_path"] == BASE_REPO and pointer["base_revision"] == patch_repo["base_commit"]
    results = run_jobs(
        [
            job("auto_v1", "auto", PATCH_REPO, manifest, revision="v1"),
            job("auto_main", "auto", PATCH_REPO, manifest),
            job("patch_v1", "patch", PATCH_REPO, manifest, revision="v1", base=BASE_REPO, base_type="llava_onevision"),
            job("patch_v1_on_the_original_base", "patch", PATCH_REPO, manifest, revision="v1",
                base=str(tiny_checkpoints["llava_onevision"]), base_type="llava_onevision"),
        ],
        hub,
        tmp_path,
    )  # fmt: skip
    assert torch.equal(results["auto_v1"], patch_repo["v1"])  # patch at v1, base at the commit it pins
    assert torch.equal(results["auto_main"], patch_repo["v2"])
    assert torch.equal(results["patch_v1_on_the_original_base"], patch_repo["v1"])  # load_patch(repo, revision)
    # the same patch on the base's moved main: different outputs, so the pin above is what made them equal
    assert isinstance(results["patch_v1"], torch.Tensor), results["patch_v1"]
    assert not torch.allclose(results["patch_v1"], patch_repo["v1"])


def test_a_patch_pushed_to_a_new_branch_creates_it_and_leaves_main(patch_repo, hub, manifest, tiny_checkpoints):
    api = HfApi()
    main = api.model_info(PATCH_REPO).sha
    model = copy.deepcopy(patch_repo["model"])
    randomize(model, "patches.", seed=4)
    dev = method_logits(model, patch_repo["processor"], "pave", "pave/avsd", str(manifest))
    model.push_patch_to_hub(PATCH, PATCH_REPO, revision="dev", commit_message="dev patch")  # no "dev" branch yet
    assert "dev" in {branch.name for branch in api.list_repo_refs(PATCH_REPO).branches}
    assert api.model_info(PATCH_REPO).sha == main
    assert api.list_repo_commits(PATCH_REPO, revision="dev")[0].title == "dev patch"
    loaded = PaveForConditionalGeneration.from_pretrained(tiny_checkpoints["llava_onevision"])
    loaded.load_patch(PATCH_REPO, revision="dev")
    logits = method_logits(loaded, patch_repo["processor"], "pave", "pave/avsd", str(manifest))
    assert torch.equal(logits, dev) and not torch.equal(dev, patch_repo["v2"])


def test_hub_errors_are_named_and_leave_nothing_half_written(patch_repo, hub, manifest, tiny_checkpoints, tmp_path):
    model = PaveForConditionalGeneration.from_pretrained(tiny_checkpoints["llava_onevision"])
    with pytest.raises(ValueError, match="'tester/nope' is neither a local patch folder nor a repository on http"):
        model.load_patch("tester/nope")
    with pytest.raises(OSError, match="tester/nope"):
        AutoModelForImageTextToText.from_pretrained("tester/nope")
    with pytest.raises(ValueError, match="revision 'nope' does not exist in the patch repository 'tester/avsd-patch'"):
        model.load_patch(PATCH_REPO, revision="nope")
    with pytest.raises(OSError, match="nope"):
        AutoModelForImageTextToText.from_pretrained(PATCH_REPO, revision="nope")

    api = HfApi()
    api.create_repo("tester/half-patch")
    api.upload_file(repo_id="tester/half-patch", path_or_fileobj=b"{}", path_in_repo="patch_config.json")
    with pytest.raises(ValueError, match=r"has no \['patch.safetensors'\].*it is not a PAVE patch"):
        model.load_patch("tester/half-patch")

    other = PaveLlavaNextVideoForConditionalGeneration.from_pretrained(tiny_checkpoints["llava_next_video"])
    with pytest.raises(ValueError, match="made for a `llava_onevision` base"):
        other.load_patch(PATCH_REPO)
    assert other.patch_names == []

    gone = tmp_path / "gone"
    patch_repo["model"].save_patch(PATCH, gone, repo_id="tester/orphan")
    pointer = json.loads((gone / "config.json").read_text())
    (gone / "config.json").write_text(json.dumps({**pointer, "base_model_name_or_path": "tester/deleted-base"}))
    api.create_repo("tester/orphan")
    api.upload_folder(repo_id="tester/orphan", folder_path=gone)
    with pytest.raises(OSError, match="(?s)needs its base 'tester/deleted-base'.*base_model_name_or_path="):
        AutoModelForImageTextToText.from_pretrained("tester/orphan")

    # a transfer cut mid-file: a clear error, no patch file in the snapshot, nothing loaded; then a clean retry
    cache = tmp_path / "cache"
    hub.fail_next("GET */resolve/*/patch.safetensors", mode="truncate", times=10)
    with pytest.raises(PatchDownloadError, match="failed .*nothing partial was kept in the cache, retry"):
        model.load_patch(PATCH_REPO, revision="v1", cache_dir=cache)
    assert not list(cache.rglob("snapshots/*/patch.safetensors")) and model.patch_names == []
    with pytest.raises((ValueError, PatchDownloadError)):
        model.load_patch(PATCH_REPO, revision="v1", cache_dir=cache, local_files_only=True)
    assert model.patch_names == []
    hub.fail_next("GET */resolve/*/patch.safetensors", mode="truncate", times=0)  # clears the fault
    hub.fail_next("GET */resolve/*/patch.safetensors", mode="status", status=500, times=1)  # a server error
    with pytest.raises(PatchDownloadError, match=r"(?s)failed \(HfHubHTTPError: Server error .500.*retry"):
        model.load_patch(PATCH_REPO, revision="v1", cache_dir=cache)
    assert not list(cache.rglob("snapshots/*/patch.safetensors")) and model.patch_names == []
    model.load_patch(PATCH_REPO, revision="v1", cache_dir=cache)
    assert model.patch_names == [PATCH]
    logits = method_logits(model, patch_repo["processor"], "pave", "pave/avsd", str(manifest))
    assert torch.equal(logits, patch_repo["v1"])
