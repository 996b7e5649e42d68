"""FakeHub against the real clients over real HTTP: huggingface_hub (upload, list, download, refs, errors, faults),
transformers `push_to_hub` / `from_pretrained`, peft `PeftModel.push_to_hub` / `from_pretrained`, a subprocess."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import huggingface_hub
import huggingface_hub.constants as hf_constants
import huggingface_hub.hf_api as hf_api_module
import pytest
import torch
import transformers
import transformers.utils.hub as transformers_hub
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    get_session,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from peft import LoraConfig, PeftModel, get_peft_model

from videoadapt.testing.hub_server import FakeHub, fake_hub_environment


README = "---\nlicense: apache-2.0\ntags:\n- video\n---\n# tiny\n"
FOLDER = {
    "config.json": b'{"hidden_size": 32}',
    "weights/part-1.bin": bytes(range(256)) * 40,
    "weights/part-2.bin": b"\x07" * 3001,
    "README.md": README.encode(),
}


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _tiny_bert_config() -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )


def _snapshot_files(hf_home: Path, repo: str) -> list[Path]:
    snapshots = hf_home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"
    return [path for path in snapshots.rglob("*") if path.is_file()] if snapshots.exists() else []


def test_round_trip_moves_branches_and_keeps_tags_and_commits(hub_env, tmp_path):
    api = HfApi()
    url = api.create_repo("tester/round-trip")
    assert (url.endpoint, url.repo_id) == (hub_env.endpoint, "tester/round-trip")
    first = api.upload_folder(repo_id="tester/round-trip", folder_path=_write_folder(tmp_path / "v1", FOLDER)).oid
    api.create_tag("tester/round-trip", tag="v1")
    again = api.upload_folder(repo_id="tester/round-trip", folder_path=tmp_path / "v1")  # preupload's oid: no-op
    assert again.oid == first and len(api.list_repo_commits("tester/round-trip")) == 2  # initial commit + first

    assert api.list_repo_files("tester/round-trip") == sorted([".gitattributes", *FOLDER])
    top = {(e.path, type(e).__name__) for e in api.list_repo_tree("tester/round-trip")}
    assert top == {
        ("weights", "RepoFolder"),
        *((n, "RepoFile") for n in FOLDER if "/" not in n),
        (".gitattributes", "RepoFile"),
    }
    sizes = {e.path: e.size for e in api.list_repo_tree("tester/round-trip", recursive=True) if e.path in FOLDER}
    assert sizes == {name: len(data) for name, data in FOLDER.items()}
    assert (
        Path(hf_hub_download("tester/round-trip", "weights/part-1.bin")).read_bytes() == FOLDER["weights/part-1.bin"]
    )
    snapshot = Path(snapshot_download("tester/round-trip", allow_patterns=["weights/*"]))
    assert snapshot.name == first == api.model_info("tester/round-trip").sha
    got = {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
    assert got == {name: data for name, data in FOLDER.items() if name.startswith("weights/")}

    operations = [
        CommitOperationAdd("config.json", b'{"hidden_size": 64}'),
        CommitOperationDelete("weights/", is_folder=True),
    ]
    second = api.create_commit("tester/round-trip", operations, commit_message="v2", parent_commit=first).oid
    assert second != first and api.model_info("tester/round-trip").sha == second
    assert api.list_repo_files("tester/round-trip") == [".gitattributes", "README.md", "config.json"]
    for old in ("v1", first):
        assert (
            Path(hf_hub_download("tester/round-trip", "config.json", revision=old)).read_bytes()
            == FOLDER["config.json"]
        )
        assert api.model_info("tester/round-trip", revision=old).sha == first
    assert Path(hf_hub_download("tester/round-trip", "config.json")).read_bytes() == b'{"hidden_size": 64}'
    assert hub_env.repo_files("tester/round-trip", first) == {
        ".gitattributes": hub_env.repo_files("tester/round-trip")[".gitattributes"],
        **FOLDER,
    }
    refs = api.list_repo_refs("tester/round-trip")
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", second)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first)]
    assert [c.commit_id for c in api.list_repo_commits("tester/round-trip")][:2] == [second, first]

    with pytest.raises(HfHubHTTPError) as stale:  # main moved: the parent no longer matches
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="tester/round-trip", parent_commit=first)
    assert stale.value.response.status_code == 412
    api.create_branch("tester/round-trip", branch="dev", revision="v1")
    api.upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id="tester/round-trip", revision="dev")
    assert hub_env.repo_files("tester/round-trip", "dev")["dev.txt"] == b"dev only"
    assert (
        "dev.txt" not in hub_env.repo_files("tester/round-trip") and api.model_info("tester/round-trip").sha == second
    )
    assert api.file_exists("tester/round-trip", "dev.txt", revision="dev")
    assert not api.file_exists("tester/round-trip", "dev.txt")
    api.delete_repo("tester/round-trip")
    assert not api.repo_exists("tester/round-trip")


def test_dataset_repos_live_apart_from_model_repos(hub_env):
    api = HfApi()
    api.create_repo("tester/clips", repo_type="dataset")
    line = b'{"video": "a.mp4"}\n'
    commit = api.upload_file(
        path_or_fileobj=line, path_in_repo="train.jsonl", repo_id="tester/clips", repo_type="dataset"
    )
    assert api.list_repo_files("tester/clips", repo_type="dataset") == [".gitattributes", "train.jsonl"]
    path = hf_hub_download("tester/clips", "train.jsonl", repo_type="dataset")
    assert Path(path).read_bytes() == line and "datasets--tester--clips" in path
    assert api.dataset_info("tester/clips").sha == commit.oid
    assert hub_env.repo_files("tester/clips", repo_type="dataset")["train.jsonl"] == line
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/clips")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("clips")  # no namespace


def test_subprocess_downloads_what_this_process_uploaded(fake_hub, tmp_path):
    payload = os.urandom(5000)
    api = HfApi(endpoint=fake_hub.endpoint, token=fake_hub.token)
    api.create_repo("tester/shared")
    commit = api.upload_file(path_or_fileobj=payload, path_in_repo="blob.bin", repo_id="tester/shared").oid
    script = (
        "import hashlib, json, sys\n"
        "from huggingface_hub import constants, hf_hub_download\n"
        "path = hf_hub_download('tester/shared', 'blob.bin')\n"
        "digest = hashlib.sha256(open(path, 'rb').read()).hexdigest()\n"
        "sys.stdout.write(json.dumps({'endpoint': constants.ENDPOINT, 'path': path, 'sha256': digest}))\n"
    )
    home = tmp_path / "child_home"
    env = {**os.environ, **fake_hub.env(home)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["endpoint"] == fake_hub.endpoint
    assert answer["sha256"] == hashlib.sha256(payload).hexdigest()
    assert Path(answer["path"]) == home / "hub" / "models--tester--shared" / "snapshots" / commit / "blob.bin"


def test_transformers_push_to_hub_and_from_pretrained_at_main_and_at_a_commit(hub_env):
    torch.manual_seed(0)
    model = transformers.BertModel(_tiny_bert_config())
    first = model.push_to_hub("tiny-bert").oid  # no namespace: the token's user
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.add_(1.0)
    second = model.push_to_hub("tester/tiny-bert").oid
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub_env.repo_files("tester/tiny-bert"))

    at_main = transformers.BertModel.from_pretrained("tester/tiny-bert").state_dict()
    at_first = transformers.BertModel.from_pretrained("tester/tiny-bert", revision=first).state_dict()
    expected = model.state_dict()
    assert at_main.keys() == expected.keys() and all(torch.equal(at_main[k], expected[k]) for k in expected)
    embedding = "embeddings.word_embeddings.weight"
    assert torch.equal(at_first[embedding] + 1.0, expected[embedding]) and second != first
    assert all(torch.equal(at_first[k], expected[k]) for k in expected if k != embedding)

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "video", "llm"]
    tokenizer = transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    tokenizer.push_to_hub("tester/tiny-bert")
    loaded = transformers.AutoTokenizer.from_pretrained("tester/tiny-bert")
    assert loaded("a video llm")["input_ids"] == tokenizer("a video llm")["input_ids"] == [2, 5, 6, 7, 3]


def test_peft_lora_push_to_hub_and_from_pretrained(hub_env):
    def base() -> transformers.BertModel:
        torch.manual_seed(1)
        return transformers.BertModel(_tiny_bert_config())

    peft_model = get_peft_model(base(), LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    with torch.no_grad():  # lora_B starts at zero: make the adapter change the output
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param))
    peft_model.push_to_hub("tester/tiny-lora")
    assert sorted(hub_env.repo_files("tester/tiny-lora")) == [
        ".gitattributes",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]

    loaded = PeftModel.from_pretrained(base(), "tester/tiny-lora")
    lora = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    loaded_lora = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert lora.keys() == loaded_lora.keys() and len(lora) == 4
    assert all(torch.equal(lora[k], loaded_lora[k]) for k in lora)
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    peft_model.eval(), loaded.eval()
    assert torch.equal(peft_model(input_ids=ids).last_hidden_state, loaded(input_ids=ids).last_hidden_state)


def test_errors_map_to_the_client_exceptions(hub_env, tmp_path):
    api = HfApi()
    hub_env.put_files("tester/errors", {"present.txt": b"here"})
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/absent", "present.txt")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/absent")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("tester/errors", "present.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files("tester/errors", revision="f" * 40)
    with pytest.raises(RemoteEntryNotFoundError) as missing:
        hf_hub_download("tester/errors", "absent.txt")
    assert isinstance(missing.value, EntryNotFoundError) and missing.value.response.status_code == 404
    with pytest.raises(RemoteEntryNotFoundError):
        api.delete_file("absent.txt", "tester/errors")
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo("tester/errors")
    assert exists.value.response.status_code == 409
    api.create_repo("tester/errors", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as denied:
        HfApi(token="hf_wrong").create_repo("tester/other")
    assert denied.value.response.status_code == 401 and not isinstance(denied.value, RepositoryNotFoundError)
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(
            path_or_fileobj=b"---\nkey: [unclosed\n---\n", path_in_repo="README.md", repo_id="tester/errors"
        )
    assert hub_env.repo_files("tester/errors") == {
        ".gitattributes": hub_env.repo_files("tester/errors")[".gitattributes"],
        "present.txt": b"here",
    }


def test_truncated_download_raises_leaves_no_snapshot_file_then_recovers(hub_env, tmp_path, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the client waits 1 s before each resume
    payload = os.urandom(4000)
    hub_env.put_files("tester/cut", {"patch.safetensors": payload})
    hub_env.fail_next("GET */resolve/*/patch.safetensors", mode="truncate", times=100)
    with pytest.raises(httpx2.RemoteProtocolError, match="received 2000 bytes, expected 4000"):
        hf_hub_download("tester/cut", "patch.safetensors")
    hf_home = tmp_path / "hf_home"
    assert _snapshot_files(hf_home, "tester/cut") == []
    cut = [r for r in hub_env.requests if r[0] == "GET" and r[1].endswith("patch.safetensors")]
    assert len(cut) == 6  # huggingface_hub: 1 try + 5 resumes (none with Range: no complete chunk arrived)

    hub_env.fail_next("GET */resolve/*/patch.safetensors", times=0)  # cancels the rule (94 left)
    path = Path(hf_hub_download("tester/cut", "patch.safetensors"))
    assert path.read_bytes() == payload and _snapshot_files(hf_home, "tester/cut") == [path]

    hub_env.fail_next("GET */resolve/*/patch.safetensors", mode="truncate", times=1)  # one cut: resumed, exact
    again = Path(hf_hub_download("tester/cut", "patch.safetensors", force_download=True))
    assert again.read_bytes() == payload


def test_status_fault_raises_http_error_without_retrying_the_download_get(hub_env):
    hub_env.put_files("tester/flaky", {"w.bin": b"\x01" * 100})
    hub_env.fail_next("GET /tester/flaky/resolve/*", status=503)
    with pytest.raises(HfHubHTTPError) as failed:
        hf_hub_download("tester/flaky", "w.bin")
    assert failed.value.response.status_code == 503
    assert [r for r in hub_env.requests if "/resolve/" in r[1]] == [
        ("HEAD", "/tester/flaky/resolve/main/w.bin", 200),
        ("GET", "/tester/flaky/resolve/main/w.bin", 503),
    ]
    assert Path(hf_hub_download("tester/flaky", "w.bin")).read_bytes() == b"\x01" * 100
    hub_env.fail_next("* /tester/flaky/*", status=500, times=50)
    hub_env.clear_faults()
    assert Path(hf_hub_download("tester/flaky", "w.bin", force_download=True)).read_bytes() == b"\x01" * 100
    assert hub_env.requests[-1] == ("GET", "/tester/flaky/resolve/main/w.bin", 200)


def test_resolve_headers_and_ranges(fake_hub):
    data = bytes(range(200)) * 5
    commit = fake_hub.put_files("tester/ranges", {"dir/file.bin": data})
    url = f"{fake_hub.endpoint}/tester/ranges/resolve/main/dir/file.bin"
    head = get_session().head(url)
    blob_sha = hashlib.sha1(b"blob 1000\0" + data).hexdigest()  # git's object id, as the Hub's ETag
    assert head.status_code == 200 and head.headers["ETag"] == f'"{blob_sha}"'
    assert (head.headers["X-Repo-Commit"], head.headers["Content-Length"]) == (commit, "1000")
    cases = {"bytes=10-19": (206, data[10:20]), "bytes=990-": (206, data[990:]), "bytes=-5": (206, data[-5:])}
    cases |= {"bytes=995-5000": (206, data[995:]), "bytes=1000-": (416, b""), None: (200, data)}
    for range_header, (status, body) in cases.items():
        answer = get_session().get(url, headers={"Range": range_header} if range_header else {})
        assert (answer.status_code, answer.content) == (status, body), range_header
    assert get_session().get(url, headers={"Range": "bytes=10-19"}).headers["Content-Range"] == "bytes 10-19/1000"


def test_fake_hub_environment_sets_then_restores_everything(fake_hub, tmp_path):
    def snapshot() -> tuple:
        return (
            hf_constants.ENDPOINT,
            hf_constants.HUGGINGFACE_CO_URL_TEMPLATE,
            hf_constants.HF_HUB_CACHE,
            hf_constants.HF_TOKEN_PATH,
            hf_constants.HF_HUB_DISABLE_XET,
            hf_constants.HF_HUB_OFFLINE,
            hf_api_module.api.endpoint,
            transformers_hub._hf_api,
            transformers_hub.HF_MODULES_CACHE,
            os.environ.get("HF_ENDPOINT"),
            os.environ.get("HF_HOME"),
            os.environ.get("HF_TOKEN"),
        )

    before = snapshot()
    with fake_hub_environment(fake_hub, tmp_path / "home"):
        assert hf_constants.ENDPOINT == hf_api_module.api.endpoint == os.environ["HF_ENDPOINT"] == fake_hub.endpoint
        assert hf_constants.HF_HUB_CACHE == str(tmp_path / "home" / "hub")
        assert hf_constants.HF_HUB_DISABLE_XET and not hf_constants.HF_HUB_OFFLINE
        assert transformers_hub.hf_api().endpoint == fake_hub.endpoint
        assert huggingface_hub.whoami()["name"] == "tester"
    assert snapshot() == before
    assert hf_constants.ENDPOINT != fake_hub.endpoint


def test_arguments_and_lifecycle_errors(fake_hub):
    with pytest.raises(ValueError, match="`mode` must be one of"):
        fake_hub.fail_next("GET *", mode="drop")
    with pytest.raises(ValueError, match=r"`status` must be an HTTP error code in \[400, 599\], got 200"):
        fake_hub.fail_next("GET *", status=200)
    with pytest.raises(ValueError, match="`times` must be >= 0"):
        fake_hub.fail_next("GET *", times=-1)
    with pytest.raises(TypeError, match="`pattern` must be a non-empty"):
        fake_hub.fail_next("")
    fake_hub.put_files("tester/known", {"a": b"1"})
    with pytest.raises(ValueError, match=r"`repo_id` must name a model repo .*\['tester/known'\].*got 'tester/nope'"):
        fake_hub.repo_files("tester/nope")
    with pytest.raises(ValueError, match=r"`revision` must be a branch \['main'\].*got 'v9'"):
        fake_hub.repo_files("tester/known", "v9")
    hub = FakeHub().start()
    hub.stop()
    hub.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not serving"):
        _ = hub.endpoint
