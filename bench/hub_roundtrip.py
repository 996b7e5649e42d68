"""Hub round trip of a PAVE model and patch against a local Hub: the real huggingface_hub client over real HTTP.

    python bench/hub_roundtrip.py [--workdir DIR]

A `FakeHub` (videoadapt.testing.hub_server) on 127.0.0.1 stands in for huggingface.co. On a tiny random LLaVA-OneVision
base with the `pave/avsd` recipe's patch (random weights, so the patch changes the outputs), this process pushes the
model + processor (`push_to_hub`), the patch alone (`push_patch_to_hub`) and the `export-remote-code` folder of the
model (`upload_folder`). Then fresh processes, which know only the Hub's address, load:

    model        AutoModelForImageTextToText.from_pretrained(<model repo>) + AutoProcessor
    patch        the base, then `load_patch(<patch repo>)`
    one_line     AutoModelForImageTextToText.from_pretrained(<patch repo>): the base the patch names, at the revision
                 it pins, with the patch attached
    remote_code  AutoModelForImageTextToText.from_pretrained(<export repo>, trust_remote_code=True) + AutoProcessor,
                 in an interpreter where `import videoadapt` fails

Each must give the pushing process's logits bit for bit (torch.equal). JSON line last: `model_outputs_equal`,
`patch_outputs_equal`, `one_line_load`, `remote_code_load`, plus `seconds` per phase, `repo_files` and
`videoadapt_imported_by_remote_code` (must be []).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from huggingface_hub import HfApi
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import set_seed

import videoadapt  # noqa: F401 - registers the Auto classes
from videoadapt.recipes.training import METHODS
from videoadapt.remote_code import export_remote_code
from videoadapt.testing.hub_server import FakeHub, fake_hub_environment
from videoadapt.testing.roundtrip import HIDDEN_CHILD, method_logits, run_in_fresh_process, write_tiny_manifest
from videoadapt.testing.tiny_models import build_tiny_checkpoint


RECIPE, PATCH = "pave/avsd", "avsd"
MODEL_REPO, PATCH_REPO, REMOTE_REPO = "tester/tiny-pave", "tester/tiny-pave-avsd-patch", "tester/tiny-pave-remote"


def build(checkpoint: Path):
    """The recipe's PAVE model on the tiny base with random patch weights, and its processor."""
    set_seed(0)
    spec = METHODS["pave"]
    model, processor = spec.build(
        spec.load_recipe(PATCH), None, checkpoint, {"side_channel_dim": 8}, {"num_frames": 4}
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "patches." in name or f".{PATCH}." in name and ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval(), processor


def child_env(hub: FakeHub, home: Path) -> dict[str, str]:
    return {**hub.env(home), "PATH": "/usr/bin:/bin", "TRANSFORMERS_VERBOSITY": "error"}


def run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{done.stderr[-4000:]}")


def load_jobs(hub: FakeHub, work: Path, manifest: Path, checkpoint: Path) -> dict[str, torch.Tensor | dict]:
    """Fresh process 1: the model repo, the patch on the base, the patch repo in one line."""
    common = {"processor": MODEL_REPO, "method": "pave", "recipe": RECIPE, "manifest": str(manifest)}
    jobs = [
        {"id": "model", "load": "model", "repo": MODEL_REPO, **common},
        {"id": "patch", "load": "patch", "repo": PATCH_REPO, "base": str(checkpoint), "base_type": "llava_onevision",
         **common},
        {"id": "one_line", "load": "auto", "repo": PATCH_REPO, **common},
    ]  # fmt: skip
    return run_in_fresh_process(jobs, work, child_env(hub, work / "h1"))


def remote_code_job(hub: FakeHub, work: Path, model, processor) -> tuple[bool, list[str], str]:
    """Fresh process 2 (videoadapt hidden): the exported folder from its Hub repo, on raw frames + features."""
    generator = torch.Generator().manual_seed(2)
    frames = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=generator)
    side = torch.randn(5, 1, 1, 8, generator=generator)
    text = f"{processor.tokenizer.video_token} what color is it?"
    save_file({"frames": frames, f"side.{PATCH}": side}, work / "raw.safetensors", metadata={"text": text})
    inputs = processor(text, videos=[frames.numpy()], side_channels=[{PATCH: side}])
    with torch.no_grad():
        expected = model(**inputs).logits
    out = work / "remote.safetensors"
    run([sys.executable, "-c", HIDDEN_CHILD, REMOTE_REPO, str(work / "raw.safetensors"), str(out)],
        child_env(hub, work / "h2"))  # fmt: skip
    with safe_open(out, "pt") as handle:
        meta = handle.metadata()
    return torch.equal(load_file(out)["logits"], expected), json.loads(meta["imported"]), meta["module"]


def equal(result, expected: torch.Tensor) -> bool:
    return isinstance(result, torch.Tensor) and torch.equal(result, expected)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        seconds = {}
        start = time.perf_counter()
        checkpoint = build_tiny_checkpoint("llava_onevision", work / "base", overwrite=True)
        manifest = write_tiny_manifest(work / "data")
        model, processor = build(checkpoint)
        expected = method_logits(model, processor, "pave", RECIPE, str(manifest))
        seconds["build"] = time.perf_counter() - start
        with FakeHub() as hub, fake_hub_environment(hub, work / "hf_home"):
            start = time.perf_counter()
            model.push_to_hub(MODEL_REPO)
            processor.push_to_hub(MODEL_REPO)
            model.push_patch_to_hub(PATCH, PATCH_REPO)
            model.save_pretrained(work / "saved")
            processor.save_pretrained(work / "saved")
            export = export_remote_code(work / "saved", work / "export", overwrite=True)
            HfApi().create_repo(REMOTE_REPO)
            HfApi().upload_folder(repo_id=REMOTE_REPO, folder_path=export)
            seconds["push"] = time.perf_counter() - start
            start = time.perf_counter()
            results = load_jobs(hub, work, manifest, checkpoint)
            seconds["load_model_patch_one_line"] = time.perf_counter() - start
            start = time.perf_counter()
            remote_equal, imported, module = remote_code_job(hub, work, model, processor)
            seconds["load_remote_code"] = time.perf_counter() - start
            files = {repo: sorted(HfApi().list_repo_files(repo)) for repo in (PATCH_REPO, MODEL_REPO)}
    result = {
        "model_outputs_equal": equal(results["model"], expected),
        "patch_outputs_equal": equal(results["patch"], expected),
        "one_line_load": equal(results["one_line"], expected),
        "remote_code_load": remote_equal and not imported and module.startswith("transformers_modules."),
        "videoadapt_imported_by_remote_code": imported,
        "remote_code_module": module,
        "errors": {k: v for k, v in results.items() if isinstance(v, dict)},
        "repo_files": files,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
