"""DDP equality: 2 processes on gloo train the same tiny PAVE patch as 1 process with the same global batch.

    python bench/ddp_equality.py [--steps 4] [--learning-rate LR] [--checkpoint DIR] [--workdir DIR] [--timeout 300]

Every run is a fresh `videoadapt.recipes.train` process on CPU (CUDA hidden, one intra-op thread per process), on
the same data: a tiny random LLaVA-OneVision checkpoint (`build_tiny_checkpoint`), 8 synthetic mp4s with 8-d
audio-like `SideChannelFeatures`, answers of 1 to 4 words (so rows and ranks hold different numbers of label tokens):

    single   1 process, per-device batch 4 (the recipe's global batch 4 for world size 1)
    ddp      `accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 2 --mixed_precision no`
             with CUDA hidden (`use_cpu`, so 2 ranks on gloo), per-device batch 2 (the recipe's split for world 2)
    control  1 process, per-device batch 2: a global batch of 2, i.e. other rows in every step; its distance to
             `single` shows how far a wrong split moves the weights (so the equality could fail)

The recipe is the shipped `pave/avsd`, written to `<workdir>/pave/avsd.yaml` with: LoRA dropout 0 (masks are drawn
per process, so rank 1's rows would get other masks than the same rows in one process; the command line has no
LoRA-dropout override, `config.*` takes only `side_channel_dim` for PAVE), global batch 4, and a tiny patch (width
32, FFN and output MLP 64, LoRA r 4 / alpha 8: the paper's 512-wide patch makes a CPU step ~20x slower). The rest is
the recipe's: AdamW, lr 2e-5, cosine schedule with 3% warmup, clipping 0.1, seed 42. The command line adds
`config.side_channel_dim=8 processor.num_frames=4 max_steps=N save_strategy=no`. Nothing else is needed: the
Trainer's seeded sampler shards each global batch over the ranks in order, and it divides the loss by the label
tokens of the whole global batch (`average_tokens_across_devices`, on by default).

Each process records the row ids of every batch its collator builds (`--worker` wraps `SFTCollator.__call__`, then
runs `videoadapt.recipes.train.main`, which is all `-m videoadapt.recipes.train` does), with its rank, world size
and backend. Step s of `ddp` must hold rank 0's rows then rank 1's, equal to the rows of step s of `single`.

Compared: every tensor of the final patch folder, `patch.safetensors` (fusion weights) and
`adapter_model.safetensors` (LoRA). Ranks sum gradients in another order than one process, and AdamW divides by
sqrt(v) + 1e-8, so a gradient component near 0 turns rounding noise into up to lr * noise / 1e-8 of weight change:
the difference grows with the learning rate (measured over 4 steps: 7.5e-9 at the recipe's 2e-5, 5.6e-8 at 1e-3,
3.9e-6 at 1e-2, while the control moves the weights by 5.8e-5 at 2e-5). The last line is one JSON
object: `world_size`, `max_abs_diff` (max |single - ddp|), `control_max_abs_diff`, `rows_match`, `backend`,
`steps`, `global_batch`, `learning_rate`, `num_weights`, `seconds_single`, `seconds_ddp`, `batches` (row ids of
each global step), `rank_batches` (per rank), `rank_world_sizes`.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file


NUM_ROWS, GLOBAL_BATCH, SIDE_CHANNEL_DIM, NUM_FRAMES = 8, 4, 8, 4
ANSWERS = ("red", "two dogs", "a red circle", "the bird sings loudly", "no", "blue and green", "yes", "three")
TINY_RECIPE = {  # (section, field) -> value; see the module docstring for why
    (None, "batch_size"): GLOBAL_BATCH,
    ("lora", "dropout"): 0.0,
    ("lora", "r"): 4,
    ("lora", "alpha"): 8,
    ("patch", "hidden_size"): 32,
    ("patch", "ffn_size"): 64,
    ("patch", "output_mlp_size"): 64,
}
PATCH_FILES = ("patch.safetensors", "adapter_model.safetensors")
RECIPE_NAME = "avsd"  # the shipped recipe the tiny one derives from; also the patch's name
WORKER_FLAG = "--worker"
ROWS_ENV = "VIDEOADAPT_BENCH_ROWS"  # the folder where a worker records its batches
# launcher variables that a test run inside another launch would leak into the 1-process runs
_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


# ------------------------------------------------------------------------------------------------ data and recipe


def write_recipe(folder: str | os.PathLike, dropout: float = 0.0) -> Path:
    """The shipped `pave/avsd` recipe with `TINY_RECIPE` (and LoRA dropout `dropout`) as `<folder>/pave/avsd.yaml`."""
    from videoadapt.recipes.pave_recipes import load_recipe

    recipe = yaml.safe_load(load_recipe(RECIPE_NAME).path.read_text())
    for (section, name), value in {**TINY_RECIPE, ("lora", "dropout"): dropout}.items():
        (recipe if section is None else recipe[section])[name] = value
    path = Path(folder) / "pave" / f"{RECIPE_NAME}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    load_recipe(path)  # still a valid recipe
    return path


def write_dataset(folder: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> dict[str, Path]:
    """`NUM_ROWS` synthetic videos with side-channel features and their manifest, plus a tiny LLaVA-OneVision
    checkpoint unless one is given. Returns {"manifest", "checkpoint"}."""
    from videoadapt.processors.side_channels import SideChannelFeatures
    from videoadapt.processors.synthetic import random_spec, write_synthetic_video
    from videoadapt.recipes.manifest import write_manifest
    from videoadapt.testing.tiny_models import build_tiny_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        checkpoint = build_tiny_checkpoint("llava_onevision", folder / "checkpoint")
    rows = []
    for i, answer in enumerate(ANSWERS[:NUM_ROWS]):
        spec = random_spec(seed=i, num_frames=24, fps=12.0, width=64, height=48, num_cuts=1, with_audio=False)
        write_synthetic_video(folder / f"v{i}.mp4", spec)
        features = torch.randn(2, 1, 1, SIDE_CHANNEL_DIM, generator=torch.Generator().manual_seed(i))
        SideChannelFeatures("audio", features, torch.tensor([0.5, 1.5])).save(folder / f"a{i}.safetensors")
        rows.append({"id": f"train/{i}", "split": "train", "video": f"v{i}.mp4", "question": "what happens?",
                     "answers": [answer], "side_channels": {"audio": f"a{i}.safetensors"}})  # fmt: skip
    write_manifest(rows, folder / "data.jsonl")
    return {"manifest": folder / "data.jsonl", "checkpoint": Path(checkpoint)}


def train_overrides(recipe: Path, data: dict[str, Path], output_dir: Path, steps: int, *extra: str) -> list[str]:
    """The `videoadapt.recipes.train` arguments of one run."""
    return ["--recipe", os.fspath(recipe), "--method", "pave", f"config.side_channel_dim={SIDE_CHANNEL_DIM}",
            f"processor.num_frames={NUM_FRAMES}", f"max_steps={steps}", "report_to=none", "disable_tqdm=true",
            "logging_steps=1", f"model={data['checkpoint']}", f"train={data['manifest']}", f"output_dir={output_dir}",
            *extra]  # fmt: skip


# ------------------------------------------------------------------------------------------------ the worker


def record_rows() -> None:
    """Make every `SFTCollator` call append {"rank", "world_size", "backend", "ids"} to `$ROWS_ENV/rank<r>.jsonl`."""
    from videoadapt.recipes.training import SFTCollator

    folder, original = Path(os.environ[ROWS_ENV]), SFTCollator.__call__

    def recording(self, rows):
        rows = list(rows)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        entry = {
            "rank": rank,
            "world_size": torch.distributed.get_world_size() if distributed else 1,
            "backend": torch.distributed.get_backend() if distributed else None,
            "ids": [row["id"] for row in rows],
        }
        with open(folder / f"rank{rank}.jsonl", "a") as out:
            out.write(json.dumps(entry) + "\n")
        return original(self, rows)

    SFTCollator.__call__ = recording


def worker(train_argv: Sequence[str]) -> int:
    """`videoadapt.recipes.train` (as `python -m` runs it), recording the rows of every batch."""
    from transformers.utils import logging

    from videoadapt.recipes import train

    record_rows()
    logging.set_verbosity_info()
    return train.main(list(train_argv))


def read_rows(folder: Path) -> dict[int, list[dict]]:
    """rank -> its recorded batches, in order."""
    return {
        int(path.stem[4:]): [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(folder.glob("rank*.jsonl"))
    }


def global_batches(folder: Path, steps: int) -> list[list[str]]:
    """The row ids of each of the first `steps` global batches: every rank's batch of that step, rank by rank."""
    ranks = read_rows(folder)
    if not ranks or any(len(batches) < steps for batches in ranks.values()):
        raise RuntimeError(f"{folder}: expected >= {steps} recorded batches per rank, got "
                           f"{ {r: len(b) for r, b in ranks.items()} }.")  # fmt: skip
    return [sum((ranks[rank][step]["ids"] for rank in sorted(ranks)), []) for step in range(steps)]


# ------------------------------------------------------------------------------------------------ processes


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(rows: Path | None = None) -> dict[str, str]:
    """The environment of a training process: CPU only, one intra-op thread, offline, no inherited launch."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    if rows is not None:
        rows.mkdir(parents=True, exist_ok=True)
        env[ROWS_ENV] = os.fspath(rows)
    return env


def worker_command(train_argv: Sequence[str], num_processes: int = 1) -> list[str]:
    """This script's `--worker` mode: directly, or under `accelerate launch` with the shipped DDP config."""
    script = [os.fspath(Path(__file__).resolve()), WORKER_FLAG, *train_argv]
    if num_processes == 1:
        return [sys.executable, *script]
    from videoadapt.recipes.accelerate_configs import accelerate_config_path

    config = os.fspath(accelerate_config_path("ddp"))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes",
              str(num_processes), "--main_process_port", str(free_port()), "--mixed_precision", "no"]  # fmt: skip
    return [*launch, *script]


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


@contextlib.contextmanager
def spawned(command: Sequence[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Run `command` in its own session (stdout and stderr to `log`); on leaving, kill whatever of that session is
    still alive (a launcher's ranks included) and reap it."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_process(command: Sequence[str], log: Path, env: dict[str, str], timeout: float) -> float:
    """Run `command` to the end; RuntimeError (with the log's tail) on a failure or after `timeout` s. Returns the
    wall time in seconds."""
    start = time.perf_counter()
    with spawned(command, log, env) as process:
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{command[:4]}... ran over {timeout} s (killed); log {log}:\n{log_tail(log)}"
            ) from None
    if code != 0:
        raise RuntimeError(f"{command[:4]}... exited with {code}; log {log}:\n{log_tail(log)}")
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ comparison


def patch_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a patch folder (fusion weights and LoRA), keyed "<file>:<tensor name>"."""
    weights = {}
    for name in PATCH_FILES:
        weights.update({f"{name}:{k}": v for k, v in load_file(folder / name).items()})
    return weights


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        raise ValueError(f"the runs saved different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ------------------------------------------------------------------------------------------------ the benchmark


def run(
    workdir: str | os.PathLike,
    steps: int = 4,
    learning_rate: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    timeout: float = 300.0,
    control: bool = True,
) -> dict[str, Any]:
    """Train `single`, `ddp` (and `control`) for `steps` steps in `workdir`; returns the figures of the JSON line.

    `learning_rate`: overrides the recipe's; `checkpoint`: a tiny llava_onevision checkpoint to reuse (default:
    build one); `timeout`: seconds per training process.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1 (optimizer steps to train), got {steps!r}; pass e.g. 4.")
    from videoadapt.recipes.pave_recipes import load_recipe

    workdir = Path(workdir)
    data = write_dataset(workdir / "data", checkpoint)
    recipe = write_recipe(workdir)
    extra = ["save_strategy='no'", *([f"learning_rate={learning_rate}"] if learning_rate is not None else [])]
    runs = {"single": (1, []), "ddp": (2, []), "control": (1, ["per_device_train_batch_size=2"])}
    seconds = {}
    for name, (processes, more) in runs.items():
        if name == "control" and not control:
            continue
        argv = train_overrides(recipe, data, workdir / name, steps, *extra, *more)
        env = child_env(workdir / f"{name}-rows")
        seconds[name] = run_process(worker_command(argv, processes), workdir / f"{name}.log", env, timeout)
    single = patch_weights(workdir / "single" / "patch")
    ranks = read_rows(workdir / "ddp-rows")
    batches = global_batches(workdir / "single-rows", steps)
    return {
        "world_size": len(ranks),
        "max_abs_diff": max_abs_diff(single, patch_weights(workdir / "ddp" / "patch")),
        "control_max_abs_diff": max_abs_diff(single, patch_weights(workdir / "control" / "patch"))
        if control
        else None,
        "rows_match": batches == global_batches(workdir / "ddp-rows", steps),
        "backend": sorted({batch["backend"] for batches in ranks.values() for batch in batches}, key=str),
        "steps": steps,
        "global_batch": GLOBAL_BATCH,
        "learning_rate": learning_rate if learning_rate is not None else load_recipe(recipe).learning_rate,
        "num_weights": sum(v.numel() for v in single.values()),
        "seconds_single": round(seconds["single"], 2),
        "seconds_ddp": round(seconds["ddp"], 2),
        "batches": batches,
        "rank_batches": [[batch["ids"] for batch in ranks[rank][:steps]] for rank in sorted(ranks)],
        "rank_world_sizes": sorted({batch["world_size"] for batches in ranks.values() for batch in batches}),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"tiny PAVE patch, {result['num_weights']} trained weights, {result['steps']} steps, global batch "
          f"{result['global_batch']}, lr {result['learning_rate']:g}")  # fmt: skip
    print(f"{'run':<10}{'processes':>10}{'per device':>12}{'max |w - w_single|':>22}")
    print(f"{'single':<10}{1:>10}{GLOBAL_BATCH:>12}{0.0:>22.3e}")
    print(f"{'ddp':<10}{result['world_size']:>10}{GLOBAL_BATCH // 2:>12}{result['max_abs_diff']:>22.3e}")
    if result["control_max_abs_diff"] is not None:
        print(f"{'control':<10}{1:>10}{GLOBAL_BATCH // 2:>12}{result['control_max_abs_diff']:>22.3e}")
    print(f"ddp backend {', '.join(map(str, result['backend']))}; every global batch holds the same rows: "
          f"{result['rows_match']}")  # fmt: skip
    for step, ids in enumerate(result["batches"]):
        per_rank = " | ".join(", ".join(batches[step]) for batches in result["rank_batches"])
        print(f"  step {step + 1}: single {', '.join(ids)}; ddp ranks {per_rank}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (8 rows, 2 steps per epoch)")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the recipe's 2e-5")
    parser.add_argument("--checkpoint", default=None, help="a tiny llava_onevision checkpoint (default: build one)")
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per training process")
    parser.add_argument("--no-control", action="store_true", help="skip the 1-process global-batch-2 control run")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="ddp_equality-"))
        result = run(workdir, args.steps, args.learning_rate, args.checkpoint, args.timeout, not args.no_control)
    print_table(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
        sys.exit(worker(sys.argv[2:]))
    main()
