"""Hub keyword arguments against the local fake Hub, with the real client over real HTTP: what
`save_pretrained(push_to_hub=True)` uploads from a folder that holds other files, and a patch repository read with
`subfolder=` and an explicit `token=` (no token in the environment) for a private repository."""

import pytest
import torch
from huggingface_hub import HfApi, ResolvedRevision
from transformers import AutoModelForImageTextToText

from videoadapt.modeling_pave import PaveForConditionalGeneration
from videoadapt.pave_hub import PavePatchRepo, download_patch_folder


TOKEN = "hf_fake"  # the FakeHub's token


@pytest.fixture
def patched(tiny_checkpoints):
    """A PAVE model on the tiny OneVision base with one non-identity audio patch."""
    model = PaveForConditionalGeneration.from_pretrained(tiny_checkpoints["llava_onevision"]).eval()
    model.add_patch("audio", model.patch_config_for("audio", 8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "patches." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.2)
    return model


def patch_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model._patch_host.patches["audio"].state_dict().items()}


def test_save_pretrained_push_to_hub_uploads_only_what_the_save_wrote(hub_env, patched, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-10").mkdir(parents=True)
    torch.save({"exp_avg": torch.zeros(3)}, out / "checkpoint-10" / "optimizer.pt")  # a trainer's pickles
    (out / "training_args.bin").write_bytes(b"not for the Hub")
    (out / "config.json").write_text("{}")  # an older save's file, rewritten by this one
    patched.save_pretrained(out, push_to_hub=True, repo_id="tester/run", commit_message="trained")
    files = set(HfApi().list_repo_files("tester/run"))
    assert {"config.json", "model.safetensors", "README.md", "patches/audio/patch.safetensors"} <= files
    assert not files & {"checkpoint-10/optimizer.pt", "training_args.bin"}
    assert HfApi().list_repo_commits("tester/run")[0].title == "trained"
    assert (out / "training_args.bin").is_file()  # left alone locally


def test_a_private_patch_in_a_subfolder_loads_with_an_explicit_token(hub_env, patched, tmp_path, monkeypatch):
    folder = tmp_path / "repo"
    patched.save_patch("audio", folder / "patches" / "audio", repo_id="tester/patches")
    api = HfApi(token=TOKEN)
    api.create_repo("tester/patches", private=True)
    api.upload_folder(repo_id="tester/patches", folder_path=folder)
    monkeypatch.delenv("HF_TOKEN")
    expected = patch_state(patched)

    for load in (AutoModelForImageTextToText.from_pretrained, PavePatchRepo.from_pretrained):
        model = load("tester/patches", subfolder="patches/audio", token=TOKEN, cache_dir=tmp_path / load.__qualname__)
        assert model.patch_names == ["audio"] and model.active_patches == ["audio"]
        assert all(torch.equal(v, expected[k]) for k, v in patch_state(model).items())


def test_patch_download_errors_show_the_revision_as_typed(hub_env, tmp_path):
    api = HfApi()
    api.create_repo("tester/not-a-patch")
    commit = api.upload_file(repo_id="tester/not-a-patch", path_or_fileobj=b"{}", path_in_repo="config.json").oid
    with pytest.raises(ValueError, match=r"'tester/not-a-patch' at revision 'main' has no") as error:
        download_patch_folder("tester/not-a-patch", ResolvedRevision(commit), cache_dir=tmp_path)
    assert "ResolvedRevision" not in str(error.value)


def test_a_patch_push_with_bad_card_info_fails_before_creating_the_repository(hub_env, patched):
    patched.card_info = {"license": "Apache 2.0"}
    with pytest.raises(ValueError, match="must be a Hub license id"):
        patched.push_patch_to_hub("audio", "tester/never")
    assert not HfApi().repo_exists("tester/never")
