"""bench/ddp_equality.py: 2 gloo processes train the same tiny PAVE patch as 1 process with the same global batch;
and the process helpers both benchmarks use (time-outs kill the whole process group)."""

import contextlib
import importlib.util
import io
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "ddp_equality.py"
TOLERANCE = 1e-6
ROW_IDS = [f"train/{i}" for i in range(8)]
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="looks for processes in /proc")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_ddp_equality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def processes_mentioning(text: str) -> list[int]:
    """Ids of live processes whose command line contains `text` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
    return found


def gone(pid: int, wait: float = 10.0) -> bool:
    """Whether process `pid` has exited (or is a zombie waiting for its new parent), waiting up to `wait` s."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def report(bench, tiny_checkpoints, tmp_path_factory):
    """(returned dict, printed text, workdir) of one 4-step run: single, ddp (2 gloo ranks) and control, ~30 s."""
    workdir = tmp_path_factory.mktemp("ddp_equality")
    argv = ["--checkpoint", os.fspath(tiny_checkpoints["llava_onevision"]), "--workdir", os.fspath(workdir),
            "--timeout", "150"]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = bench.main(argv)
    return result, printed.getvalue(), workdir


def test_two_gloo_ranks_end_with_the_single_process_weights(report):
    result, _, _ = report
    assert result["world_size"] == 2 and result["rank_world_sizes"] == [2] and result["backend"] == ["gloo"]
    assert result["num_weights"] == 33_728  # the whole tiny patch (fusion + LoRA) is compared
    assert result["max_abs_diff"] <= TOLERANCE
    # the comparison can fail: the same rows split into global batches of 2 move the weights far beyond it
    assert result["control_max_abs_diff"] > 10 * TOLERANCE


def test_every_global_batch_holds_the_same_rows_in_rank_order(report):
    result, _, _ = report
    batches, (rank0, rank1) = result["batches"], result["rank_batches"]
    assert result["rows_match"]
    assert [len(b) for b in batches] == [4] * 4 and [len(b) for b in rank0 + rank1] == [2] * 8
    assert all(batch == first + second for batch, first, second in zip(batches, rank0, rank1))
    # 4 steps = 2 epochs of the 8 rows, each epoch a new seeded permutation
    assert sorted(batches[0] + batches[1]) == sorted(batches[2] + batches[3]) == ROW_IDS
    assert batches[:2] != batches[2:]


@needs_proc
def test_table_json_and_no_process_left(report):
    result, printed, workdir = report
    lines = printed.strip().splitlines()
    assert json.loads(lines[-1]) == result
    assert lines[1].split() == ["run", "processes", "per", "device", "max", "|w", "-", "w_single|"]
    assert processes_mentioning(os.fspath(workdir)) == []  # the launcher and both ranks are gone


def test_recipe_is_the_shipped_one_with_dropout_off_and_a_tiny_patch(bench, tmp_path):
    from videoadapt.recipes.pave_recipes import load_recipe

    shipped, tiny = load_recipe("avsd"), load_recipe(bench.write_recipe(tmp_path))
    assert (tiny.lora.dropout, tiny.batch_size, tiny.patch.hidden_size, tiny.lora.r) == (0.0, 4, 32, 4)
    assert shipped.lora.dropout == 0.05
    for name in ("learning_rate", "optimizer", "lr_scheduler", "warmup_ratio", "max_grad_norm", "seed", "prompt"):
        assert getattr(tiny, name) == getattr(shipped, name)
    assert load_recipe(bench.write_recipe(tmp_path / "kept", dropout=0.05)).lora.dropout == 0.05


def test_max_abs_diff_and_its_errors(bench):
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([[0.5]])}
    b = {"x": torch.tensor([1.0, 2.25]), "y": torch.tensor([[0.0]])}
    assert bench.max_abs_diff(a, b) == 0.5 and bench.max_abs_diff(a, a) == 0.0
    with pytest.raises(ValueError, match="different tensors"):
        bench.max_abs_diff(a, {"x": a["x"]})


@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_bad_steps(bench, tmp_path, steps):
    with pytest.raises(ValueError, match=r"`steps` must be an integer >= 1"):
        bench.run(tmp_path, steps=steps)


def test_commands_and_environment(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    env = bench.child_env(tmp_path / "rows")
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1" and "WORLD_SIZE" not in env
    assert env[bench.ROWS_ENV] == os.fspath(tmp_path / "rows") and (tmp_path / "rows").is_dir()
    single = bench.worker_command(["--recipe", "r"])
    assert single == [sys.executable, os.fspath(SCRIPT), bench.WORKER_FLAG, "--recipe", "r"]
    launch = bench.worker_command(["--recipe", "r"], num_processes=2)
    assert launch[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and launch[-4:] == single[1:]
    options = dict(zip(launch[3:-4:2], launch[4:-4:2]))
    assert options["--num_processes"] == "2" and options["--mixed_precision"] == "no"
    assert Path(options["--config_file"]).name == "ddp.yaml" and 1024 <= int(options["--main_process_port"]) < 65536


def test_global_batches_needs_every_step_on_every_rank(bench, tmp_path):
    for rank, ids in ((0, [["a", "b"], ["e", "f"]]), (1, [["c", "d"]])):
        lines = [json.dumps({"rank": rank, "world_size": 2, "backend": "gloo", "ids": i}) for i in ids]
        (tmp_path / f"rank{rank}.jsonl").write_text("\n".join(lines) + "\n")
    assert bench.global_batches(tmp_path, 1) == [["a", "b", "c", "d"]]
    with pytest.raises(RuntimeError, match=r"expected >= 2 recorded batches per rank"):
        bench.global_batches(tmp_path, 2)


@needs_proc
def test_a_timed_out_run_is_killed_with_its_children(bench, tmp_path):
    """`run_process` kills the whole session on a time-out: the child and the grandchild it started."""
    code = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(120)']); print(child.pid, flush=True); time.sleep(120)")  # fmt: skip
    log = tmp_path / "sleep.log"
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"ran over 2 s \(killed\)"):
        bench.run_process([sys.executable, "-c", code], log, bench.child_env(), timeout=2)
    assert time.monotonic() - start < 30
    grandchild = int(log.read_text().split()[0])
    assert gone(grandchild)


def test_a_failed_run_reports_its_log(bench, tmp_path):
    command = [sys.executable, "-c", "import sys; print('something broke'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"(?s)exited with 3.*something broke"):
        bench.run_process(command, tmp_path / "fail.log", bench.child_env(), timeout=30)
