"""Load what a parent process pushed, in a fresh process, and write the outputs: the other half of a Hub round trip.

Shared by tests/hub and bench/hub_roundtrip.py. The parent writes a job file and runs

    python -m videoadapt.testing.roundtrip jobs.json

Each job loads a model one way, runs it on the first rows of a manifest through the method's collator (so the
processor is exercised too) and writes `<out>/<id>.safetensors` (`logits` [B, L, V]) or, when loading fails,
`<out>/<id>.error.json` with the exception's type and message. Job fields:

    id:        output name
    load:      "model"   AutoModelForImageTextToText.from_pretrained(repo, revision)
               "patch"   <PAVE class of base_type>.from_pretrained(base) then load_patch(repo, revision)
               "auto"    AutoModelForImageTextToText.from_pretrained(repo, revision): a patch repository in one line
    repo, revision (optional), base / base_type (load="patch"), processor (a repo or folder for AutoProcessor),
    method, recipe (e.g. "pave/avsd"), stage (optional), manifest, split (default "test"), rows (default 2)
"""

import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor


__all__ = ["HIDDEN_CHILD", "method_logits", "run_in_fresh_process", "run_job", "run_jobs", "write_tiny_manifest"]

# A fresh interpreter in which videoadapt cannot be imported (it is installed, so a finder first in `sys.meta_path`
# refuses it): it loads `argv[1]` (an exported folder or a Hub repo of one) with plain transformers and
# `trust_remote_code=True`, runs the processor on the raw inputs in `argv[2]` (`frames` [T, H, W, 3] uint8, an
# optional `side.<patch>` [T', h, w, C] per side channel, text in the metadata) and writes the logits and the list of
# videoadapt modules that got imported (none) into `argv[3]`.
HIDDEN_CHILD = r"""
import importlib.abc, json, sys


class HideVideoadapt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "videoadapt" or name.startswith("videoadapt."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)


sys.meta_path.insert(0, HideVideoadapt())
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

torch.set_num_threads(1)
source, raw_path, out = sys.argv[1:4]
raw = load_file(raw_path)
with safe_open(raw_path, "pt") as handle:
    text = handle.metadata()["text"]
side = {k.removeprefix("side."): v for k, v in raw.items() if k.startswith("side.")}
processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=True).eval()
inputs = processor(text, videos=[raw["frames"].numpy()], **({"side_channels": [side]} if side else {}))
with torch.no_grad():
    logits = model(**inputs).logits
imported = sorted(m for m in sys.modules if m == "videoadapt" or m.startswith("videoadapt."))
save_file({"logits": logits.contiguous()}, out, metadata={"imported": json.dumps(imported),
                                                           "module": type(model).__module__})
"""


def write_tiny_manifest(root: str | Path, rows: int = 2) -> Path:
    """`rows` test rows on short synthetic videos, each with 8-d audio-like side-channel features; returns the
    manifest path (`root/data.jsonl`)."""
    from videoadapt.recipes.manifest import write_manifest
    from videoadapt.testing.toy_clips import write_toy_clips

    root = Path(root)
    clips = write_toy_clips(root, rows)
    records = [{"id": f"test/{i}", "split": "test", **clip, "question": "what color is it?", "answers": ["red"]}
               for i, clip in enumerate(clips)]  # fmt: skip
    write_manifest(records, root / "data.jsonl")
    return root / "data.jsonl"


def method_logits(
    model: Any, processor: Any, method: str, recipe: str, manifest: str, split: str = "test", rows: int = 2, **kw
) -> torch.Tensor:
    """Logits of `model` on the first `rows` rows of `manifest`, batched by the method's evaluation collator."""
    from videoadapt.recipes.manifest import load_manifest
    from videoadapt.recipes.training import METHODS, SFTCollator

    spec = METHODS[method]
    loaded = spec.load_recipe(Path(recipe).name)
    collator = SFTCollator(
        processor, functools.partial(spec.prompt, loaded, processor), train=False, extra=spec.processor_extra(loaded)
    )
    data = load_manifest(manifest, split=split)
    batch = collator([data[i] for i in range(min(rows, len(data)))])
    batch.pop("references")
    with torch.no_grad():
        return model.eval()(**batch).logits.detach().contiguous()


def _load(job: dict[str, Any]) -> Any:
    revision = job.get("revision")
    if job["load"] in ("model", "auto"):
        return AutoModelForImageTextToText.from_pretrained(job["repo"], revision=revision)
    if job["load"] == "patch":
        from videoadapt.pave_hub import pave_class_for

        model = pave_class_for(job["base_type"], "the job").from_pretrained(job["base"])
        model.load_patch(job["repo"], revision=revision)
        return model
    raise ValueError(f"job `load` must be 'model', 'patch' or 'auto', got {job['load']!r}.")


def run_job(job: dict[str, Any], out: Path) -> None:
    """Run one job (see the module docstring); failures are written, not raised."""
    try:
        model = _load(job)
        processor = AutoProcessor.from_pretrained(job["processor"])
        logits = method_logits(
            model, processor, job["method"], job["recipe"], job["manifest"], job.get("split", "test"),
            job.get("rows", 2),
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the parent asserts on the type and message
        (out / f"{job['id']}.error.json").write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        return
    save_file({"logits": logits}, out / f"{job['id']}.safetensors")


def run_jobs(path: str) -> None:
    spec = json.loads(Path(path).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    for job in spec["jobs"]:
        run_job(job, out)


def run_in_fresh_process(jobs: list[dict[str, Any]], work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `jobs` in a fresh interpreter with environment `env` (files under `work`); id -> logits tensor, or the
    {"type", "message"} of a job whose loading failed. A crash of the interpreter itself raises `RuntimeError`."""
    import subprocess

    from safetensors.torch import load_file

    out = work / "out"
    (work / "jobs.json").write_text(json.dumps({"out": str(out), "jobs": jobs}))
    command = [sys.executable, "-m", "videoadapt.testing.roundtrip", str(work / "jobs.json")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the job runner failed:\n{done.stderr[-4000:]}")
    results = {}
    for job in jobs:
        error = out / f"{job['id']}.error.json"
        results[job["id"]] = (json.loads(error.read_text()) if error.exists()
                              else load_file(out / f"{job['id']}.safetensors")["logits"])  # fmt: skip
    return results


if __name__ == "__main__":
    import videoadapt  # noqa: F401 - registers the Auto classes

    torch.set_num_threads(1)
    run_jobs(sys.argv[1])
