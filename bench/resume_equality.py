"""Crash safety: a PAVE run SIGKILLed while writing a checkpoint, and again while writing its patch, then resumed,
ends with the weights of an uninterrupted run.

    python bench/resume_equality.py [--steps 5] [--kill-at 4] [--workdir DIR] [--timeout 300]

Same data, tiny recipe and process setup as `bench/ddp_equality.py` (1 process, CPU, one intra-op thread, global
batch 4 over 8 rows: 2 steps per epoch), with the recipe's LoRA dropout 0.05 kept, so a resumed run must also restore
the random state; `save_steps=1`. Four processes of `videoadapt.recipes.train` (through `--worker`, which records
every batch's rows and can stop inside a write):

    A   uninterrupted, `steps` (N) steps
    B1  the same command, killed while checkpoint K = `kill_at` is half written (the model is in
        `.staging-checkpoint-K/`, the optimizer not yet)
    B2  `resume=true` in B's folder: resumes from checkpoint K-1, trains to the end, and is killed while the final
        patch folder is half written (its first weights file is written)
    B3  `resume=true` again: resumes from checkpoint N with nothing left to train, and writes the patch
Each kill is a real SIGKILL from this process (`os.kill(pid, SIGKILL)`), sent once the worker has stopped inside the
write and listed what it had written into a marker file.

JSON keys: `killed_at_step` (K) and `max_abs_diff` (max |A - B| over every tensor of the final `patch.safetensors`
and `adapter_model.safetensors`), then per process:
    checkpoint_kill  `exit_code` (-9), `written_when_killed`, `after_kill` (B's folder), `partial_hidden` (no
                     `checkpoint-K`, only its staging folder)
    first_resume     `resumed_at_step` (from the Trainer's log; K-1), `staging_removed`, `steps_trained` (N-K+1),
                     `rows_match` (its batches are A's batches of steps K..N), `losses_match` (loss history of
                     checkpoint N against A's), `checkpoint_max_abs_diff` (checkpoint N's patch against A's)
    patch_kill       `exit_code`, `written_when_killed`, `after_kill`, `partial_hidden` (no file visible in `patch/`)
    second_resume    `resumed_at_step` (N), `steps_trained` (0), `after_resume`, `leftovers` (hidden entries left
                     in the run or patch folder: none)
"""

import argparse
import contextlib
import importlib.util
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


PAUSE_ENV = "VIDEOADAPT_BENCH_PAUSE"  # JSON {"at": "checkpoint"|"patch", "step"|"folder": ..., "marker": path}
RECIPE_DROPOUT = 0.05  # the shipped pave/avsd LoRA dropout
POLL_SECONDS = 0.05


def _sibling(name: str) -> Any:
    """Load `bench/<name>.py` (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ddp = _sibling("ddp_equality")


# ------------------------------------------------------------------------------------------------ the worker


def _stop_here(marker: Path, folder: Path) -> None:
    """List what `folder` holds and the hidden entries beside it (temporary folders) into `marker` (written
    atomically), then wait for the parent's SIGKILL."""
    roots = [p for p in (folder, *folder.parent.glob(".*")) if p.is_dir()]
    written = sorted(p.relative_to(folder.parent).as_posix() for root in roots for p in (root, *root.rglob("*")))
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"folder": os.fspath(folder), "written": written}))
    os.replace(tmp, marker)
    time.sleep(600)  # the parent kills us long before; give up if it never does
    os._exit(1)


def pause_in_checkpoint(step: int, marker: Path) -> None:
    """Stop inside checkpoint `step`'s write: after the model, before the optimizer."""
    from transformers import Trainer

    original = Trainer._save_optimizer_and_scheduler

    def pausing(self, output_dir):
        if self.state.global_step == step:
            _stop_here(marker, Path(output_dir))
        return original(self, output_dir)

    Trainer._save_optimizer_and_scheduler = pausing


def pause_in_patch(folder: Path, marker: Path) -> None:
    """Stop inside `save_patch(..., folder)` once its first weights file is written, wherever the writer puts it
    until the folder is complete (checkpoints also save patches, under `checkpoint-N/patches/`: those pass)."""
    from videoadapt import pave_patches

    save_patch, save_file = pave_patches.PavePatchesMixin.save_patch, pave_patches.save_file
    inside = []

    def saving_patch(self, name, directory, *args, **kwargs):
        inside.append(Path(directory).resolve() == folder.resolve())
        try:
            return save_patch(self, name, directory, *args, **kwargs)
        finally:
            inside.pop()

    def saving_file(*args, **kwargs):
        save_file(*args, **kwargs)
        if inside and inside[-1]:
            _stop_here(marker, folder)

    pave_patches.PavePatchesMixin.save_patch, pave_patches.save_file = saving_patch, saving_file


def worker(train_argv: Sequence[str]) -> int:
    """`bench/ddp_equality.py`'s worker (rows recorded), stopped inside a write if `$PAUSE_ENV` says where."""
    if os.environ.get(PAUSE_ENV):
        pause = json.loads(os.environ[PAUSE_ENV])
        if pause["at"] == "checkpoint":
            pause_in_checkpoint(pause["step"], Path(pause["marker"]))
        else:
            pause_in_patch(Path(pause["folder"]), Path(pause["marker"]))
    return ddp.worker(train_argv)


def worker_command(train_argv: Sequence[str]) -> list[str]:
    return [sys.executable, os.fspath(Path(__file__).resolve()), ddp.WORKER_FLAG, *train_argv]


# ------------------------------------------------------------------------------------------------ the kill


def run_and_kill(command: Sequence[str], log: Path, env: dict[str, str], marker: Path, timeout: float) -> dict:
    """Start `command`, wait for `marker`, SIGKILL the process; returns its exit code and what it had written."""
    deadline = time.monotonic() + timeout
    with ddp.spawned(command, log, env) as process:
        while not marker.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the run ended (exit {process.returncode}) before the kill point; log {log}:\n"
                                   f"{ddp.log_tail(log)}")  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"the run did not reach the kill point in {timeout} s; log {log}:\n"
                                   f"{ddp.log_tail(log)}")  # fmt: skip
            time.sleep(POLL_SECONDS)
        os.kill(process.pid, signal.SIGKILL)
        code = process.wait(timeout=30)
    return {"exit_code": code, "written_when_killed": json.loads(marker.read_text())["written"]}


# ------------------------------------------------------------------------------------------------ checks


def listing(folder: Path) -> list[str]:
    """Names in `folder`, checkpoints first in step order."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    step = re.compile(r"checkpoint-(\d+)$")
    return sorted(names, key=lambda n: (step.match(n) is None, int(step.match(n)[1]) if step.match(n) else 0, n))


def leftovers(output_dir: Path) -> list[str]:
    """Hidden entries of the run folder and of its patch folder: what half-finished writes left (`.staging-*`
    checkpoints and final model, temporary patch folders) and a resumed run should have removed."""
    hidden = [p.name for p in output_dir.glob(".*")]
    return sorted(hidden) + sorted(f"patch/{p.name}" for p in (output_dir / "patch").glob(".*"))


def resumed_at_step(log: Path) -> int | None:
    """The global step the Trainer resumed at (its "Resuming training from checkpoint with ..." line)."""
    match = re.search(r"Resuming training from checkpoint with epoch \d+ and global step (\d+)", log.read_text())
    return int(match[1]) if match else None


def trained_steps(log: Path) -> int:
    """Optimizer steps a run took: its logged losses (`logging_steps=1`)."""
    return len(re.findall(r"^\{'loss': ", log.read_text(), re.MULTILINE))


def losses(checkpoint: Path) -> list[tuple[int, float]]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]


# ------------------------------------------------------------------------------------------------ the benchmark


def run(
    workdir: str | os.PathLike,
    steps: int = 5,
    kill_at: int = 4,
    checkpoint: str | os.PathLike | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Run A and B1-B3 (see the module docstring) in `workdir`; returns the figures of the JSON line.

    `checkpoint`: a tiny llava_onevision checkpoint to reuse (default: build one); `timeout`: seconds per process.
    """
    if not 2 <= kill_at <= steps:
        raise ValueError(
            f"`kill_at` must be in [2, steps] = [2, {steps}] (a checkpoint to resume from must exist), got "
            f"{kill_at}; pick a step in that range."
        )
    from videoadapt.recipes.training import STAGING_PREFIX

    workdir = Path(workdir)
    data = ddp.write_dataset(workdir / "data", checkpoint)
    recipe = ddp.write_recipe(workdir, dropout=RECIPE_DROPOUT)
    a_dir, b_dir, last = workdir / "A", workdir / "B", f"checkpoint-{steps}"
    staging = f"{STAGING_PREFIX}checkpoint-{kill_at}"  # where B1 was writing checkpoint K

    def argv(output_dir: Path, *extra: str) -> list[str]:
        return ddp.train_overrides(recipe, data, output_dir, steps, "save_steps=1", *extra)

    def env(name: str, pause: dict | None = None) -> dict[str, str]:
        paused = {PAUSE_ENV: json.dumps(pause, default=str)} if pause else {}
        return {**ddp.child_env(workdir / f"{name}-rows"), **paused}

    seconds = ddp.run_process(worker_command(argv(a_dir)), workdir / "A.log", env("A"), timeout)
    pause = {"at": "checkpoint", "step": kill_at, "marker": workdir / "B1.json"}
    b1 = run_and_kill(worker_command(argv(b_dir)), workdir / "B1.log", env("B1", pause), workdir / "B1.json", timeout)
    b1["after_kill"] = listing(b_dir)
    pause = {"at": "patch", "folder": b_dir / "patch", "marker": workdir / "B2.json"}
    b2 = run_and_kill(worker_command(argv(b_dir, "resume=true")), workdir / "B2.log", env("B2", pause),
                      workdir / "B2.json", timeout)  # fmt: skip
    b2["after_kill"] = listing(b_dir)
    b2["partial_hidden"] = not [name for name in listing(b_dir / "patch") if not name.startswith(".")]
    ddp.run_process(worker_command(argv(b_dir, "resume=true")), workdir / "B3.log", env("B3"), timeout)

    a_weights = ddp.patch_weights(a_dir / "patch")
    checkpoint_patch = Path(last) / "patches" / ddp.RECIPE_NAME
    return {
        "killed_at_step": kill_at,
        "max_abs_diff": ddp.max_abs_diff(a_weights, ddp.patch_weights(b_dir / "patch")),
        "steps": steps,
        "lora_dropout": RECIPE_DROPOUT,
        "num_weights": sum(v.numel() for v in a_weights.values()),
        "seconds_uninterrupted": round(seconds, 2),
        "checkpoint_kill": {
            **b1,
            "partial_hidden": f"checkpoint-{kill_at}" not in b1["after_kill"] and staging in b1["after_kill"],
        },
        "first_resume": {
            "resumed_at_step": resumed_at_step(workdir / "B2.log"),
            "staging_removed": staging not in b2["after_kill"],
            "steps_trained": trained_steps(workdir / "B2.log"),
            "rows_match": ddp.global_batches(workdir / "B2-rows", steps - kill_at + 1)
            == ddp.global_batches(workdir / "A-rows", steps)[kill_at - 1 :],
            "losses_match": losses(a_dir / last) == losses(b_dir / last),
            "checkpoint_max_abs_diff": ddp.max_abs_diff(
                ddp.patch_weights(a_dir / checkpoint_patch), ddp.patch_weights(b_dir / checkpoint_patch)
            ),
        },
        "patch_kill": b2,
        "second_resume": {
            "resumed_at_step": resumed_at_step(workdir / "B3.log"),
            "steps_trained": trained_steps(workdir / "B3.log"),
            "after_resume": listing(b_dir),
            "leftovers": leftovers(b_dir),
        },
    }


def print_table(result: dict[str, Any]) -> None:
    k, n = result["killed_at_step"], result["steps"]
    kill, first, patch, second = (result[key] for key in ("checkpoint_kill", "first_resume", "patch_kill",
                                                          "second_resume"))  # fmt: skip
    print(f"tiny PAVE patch, {result['num_weights']} trained weights, N = {n} steps, LoRA dropout "
          f"{result['lora_dropout']}, a checkpoint every step")  # fmt: skip
    print(f"B1 stopped in checkpoint-{k}'s write: {', '.join(kill['written_when_killed'])}")
    print(f"B's folder after B1: {', '.join(kill['after_kill'])}")
    print(f"B2 stopped in the patch write: {', '.join(patch['written_when_killed'])}")
    rows = [
        ("B1 exit", -9, kill["exit_code"]),
        (f"B1 left checkpoint-{k} only as staging", True, kill["partial_hidden"]),
        ("B2 resumed at step", k - 1, first["resumed_at_step"]),
        ("B2 removed the staging folder", True, first["staging_removed"]),
        ("B2 steps trained", n - k + 1, first["steps_trained"]),
        (f"B2 batches = A's of steps {k}..{n}", True, first["rows_match"]),
        (f"checkpoint-{n} loss history = A's", True, first["losses_match"]),
        (f"checkpoint-{n} max |A - B|", 0.0, f"{first['checkpoint_max_abs_diff']:.3e}"),
        ("B2 exit", -9, patch["exit_code"]),
        ("B2 patch files visible", False, not patch["partial_hidden"]),
        ("B3 resumed at step", n, second["resumed_at_step"]),
        ("B3 steps trained", 0, second["steps_trained"]),
        ("B3 leftovers", "none", ", ".join(second["leftovers"]) or "none"),
        ("final patch max |A - B|", 0.0, f"{result['max_abs_diff']:.3e}"),
    ]
    print(f"{'check':<40}{'expected':>12}{'measured':>30}")
    for what, expected, measured in rows:
        print(f"{what:<40}{expected!s:>12}{measured!s:>30}")
    print(f"B3 folder at the end: {', '.join(second['after_resume'])}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps N (8 rows, 2 steps per epoch)")
    parser.add_argument("--kill-at", type=int, default=4, help="the step K whose checkpoint write is killed")
    parser.add_argument("--checkpoint", default=None, help="a tiny llava_onevision checkpoint (default: build one)")
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per training process")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="resume_equality-"))
        result = run(workdir, args.steps, args.kill_at, args.checkpoint, args.timeout)
    print_table(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == ddp.WORKER_FLAG:
        sys.exit(worker(sys.argv[2:]))
    main()
