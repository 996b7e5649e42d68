"""bench/dpc_knn.py at tiny sizes: the JSON report, equal assignments, that a wrong reference is caught, errors."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "dpc_knn.py"
QUICK = ["--quick", "--threads", "1"]  # one thread: tiny ops are not slowed by a busy machine


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dpc_knn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(bench, argv):
    """(returned dict, printed text) of one run."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = bench.main(argv)
    return result, printed.getvalue()


@pytest.fixture(scope="module")
def report(bench):
    return run(bench, QUICK)


def test_quick_report_keys_and_equal_assignments(bench, report):
    result, printed = report
    assert json.loads(printed.strip().splitlines()[-1]) == result  # the last printed line is the JSON object
    for key in ("sdpc_speedup", "tdpc_ms", "sdpc_ms", "sdpc_reference_ms", "tdpc_reference_ms"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["device"] == "cpu" and result["dtype"] == "float32" and result["distances"] == "exact"
    assert result["assignments_equal"] is True
    assert result["sdpc_assignments_equal"] and result["tdpc_assignments_equal"] and result["tdpc_centers_equal"]
    assert result["sdpc_mismatched_frames"] == 0
    assert result["sdpc_mismatches"] == {"assign1": 0, "assign2": 0, "centers1": 0, "centers2": 0}
    assert result["sdpc_prototypes_max_abs_diff"] < 1e-5
    assert result["frames"] == result["sdpc_reference_frames"] == bench.QUICK.frames
    assert result["sdpc_reference_extrapolated"] is False
    assert (result["tokens_per_frame"], result["tdpc_tokens_per_frame"], result["width"]) == (64, 4, 32)
    assert (result["tdpc_clusters"], result["tdpc_k"]) == (bench.QUICK.tdpc_clusters, bench.QUICK.tdpc_k)
    assert result["paper_a100_ms"] == {"tdpc": 608.28, "sdpc": 50.84}
    assert result["targets_met"]["sdpc_ms"] is None and result["targets_met"]["tdpc_ms"] is None  # GPU-only targets
    assert "S-DPC" in printed and "T-DPC" in printed
    assert torch.get_num_threads() >= 1  # restored after --threads


def test_reference_and_layer_agree_per_frame(bench):
    """The comparison is not vacuous: the data has real clusters, and both levels use every cluster slot."""
    video = bench.synthetic_video(bench.QUICK)
    ours = bench.ours_sdpc(video, chunk=3, gram=False)  # chunked calls give the same as the reference too
    ref = bench.ref_sdpc(video, gram=False)
    for key in ("assign1", "assign2", "centers1", "centers2"):
        assert torch.equal(ours[key], ref[key]), key
    assert ours["assign1"].shape == (16, 64) and ours["assign2"].shape == (16, 16)
    assert all(len(set(row.tolist())) == 16 for row in ref["assign1"])
    assert all(len(set(row.tolist())) == 6 for row in ref["assign2"])
    torch.testing.assert_close(ours["prototypes"], ref["prototypes"], atol=1e-5, rtol=0)


def test_a_wrong_reference_is_caught(bench, monkeypatch):
    original = bench.ref_dpc
    monkeypatch.setattr(
        bench, "ref_dpc", lambda dist, num, k, order="score": original(dist, num, max(k - 1, 1), order)
    )
    result, _ = run(bench, QUICK)
    assert result["assignments_equal"] is False
    assert result["sdpc_mismatched_frames"] > 0 and not result["tdpc_assignments_equal"]


def test_reference_time_is_extrapolated_to_all_frames(bench, monkeypatch):
    real = bench.best_times

    def fixed_times(runs, device, repeats, warmup):
        _, outputs = real(runs, device, 1, 0)
        return {"sdpc_ours": 0.5, "sdpc_reference": 2.0, "tdpc_ours": 0.25, "tdpc_reference": 1.0}, outputs

    monkeypatch.setattr(bench, "best_times", fixed_times)
    result, printed = run(bench, [*QUICK, "--reference-frames", "4"])
    assert result["sdpc_reference_frames"] == 4 and result["sdpc_reference_extrapolated"] is True
    assert result["sdpc_reference_ms"] == 2000.0 * 16 / 4 and result["sdpc_speedup"] == 16.0
    assert result["tdpc_ms"] == 250.0 and result["tdpc_reference_ms"] == 1000.0 and result["tdpc_speedup"] == 4.0
    assert result["targets_met"]["sdpc_speedup"] is True  # 16 >= 10
    assert result["assignments_equal"] is True and "extrapolated" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--frames", "1"], r"`--frames` must be >= 2, got 1"),
        (["--reference-frames", "17"], r"`--reference-frames` must be in \[1, --frames\] = \[1, 16\], got 17"),
        (["--reference-frames", "0"], r"`--reference-frames` must be in \[1, --frames\] = \[1, 16\], got 0"),
        (["--repeats", "0"], r"`--repeats` must be >= 1, got 0"),
        (["--warmup", "-1"], r"`--warmup` must be >= 0, got -1"),
        (["--chunk-frames", "-2"], r"`--chunk-frames` must be >= 0 \(0 = all frames at once\), got -2"),
        (["--tdpc-k", "0"], r"`--tdpc-k` must be >= 1, got 0"),
        (["--threads", "0"], r"`--threads` must be >= 1, got 0"),
    ],
)
def test_argument_errors(bench, argv, message):
    with pytest.raises(ValueError, match=message):
        bench.main([*QUICK, *argv])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda(bench):
    with pytest.raises(ValueError, match=r"`--device` is 'cuda' but CUDA is not available; use `--device cpu`"):
        bench.main([*QUICK, "--device", "cuda"])
