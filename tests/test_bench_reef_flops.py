"""bench/reef_flops.py at tiny sizes: counted FLOPs equal a closed-form count, the JSON report, argument errors."""

import contextlib
import dataclasses
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "reef_flops.py"
REQUIRED = (
    "gflops_reef",
    "gflops_baseline",
    "flops_reduction",
    "memory_ratio_1000_vs_20",
    "topk_speedup",
    "topk_memory_ratio",
)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_reef_flops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(bench):
    """(returned dict, printed text) of one `--quick` run."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = bench.main(["--quick"])
    return result, printed.getvalue()


def expected_flops(sizes, selection: bool) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of REEF's online loop, written out from the shapes, frame by frame.

    Step t: the visual bank holds min(t, M) slots of K' tokens (K + CLS with selection, all P + 1 without), the query
    banks min(t, M) steps of S = Q + L states; the Q-Former's Q queries cross-attend to (slots + 1) K' tokens in every
    `cross_attention_frequency`-th layer and its S tokens self-attend to (slots + 1) S states in every layer.
    """
    P = (sizes.image_size // sizes.patch_size) ** 2
    tokens = sizes.num_selected_tokens + 1 if selection else P + 1
    C, E, F, D = sizes.vision_width, sizes.qformer_width, sizes.qformer_intermediate, sizes.llm_width
    Q, M, T = sizes.num_query_tokens, sizes.memory_bank_length, sizes.frames
    S = Q + sizes.text_tokens
    H, layers = C // 2, sizes.qformer_layers  # the relevance scorers' hidden width defaults to C // 2
    cross_layers = len(range(0, layers, sizes.cross_attention_frequency))
    cross = self_attention = 0
    for t in range(T):
        slots = min(t, M) + 1
        n = slots * tokens  # cross-attention keys
        cross += cross_layers * (2 * Q * E * E + 2 * n * C * E + 2 * Q * n * E) * 2  # q, o; k, v; scores, weighted sum
        n = slots * S  # self-attention keys
        self_attention += layers * (2 * S * E * E + 2 * n * E * E + 2 * S * n * E) * 2
    merges = max(0, T - 1 - M)  # the bank exceeds M slots after steps M .. T-2 (none after the last)
    scorer_per_token = (C * H + 2 * H) * 2  # Linear(C, H), then Linear(2H, 1)
    return {
        "qformer_cross_attention": cross,
        "qformer_self_attention": self_attention,
        "qformer_ffn": T * layers * S * 2 * E * F * 2,  # queries and text through their own feed-forward
        "spatial_filter": T * P * scorer_per_token,  # also without selection: relevance is still computed
        "temporal_compression": merges * (M + 1) * scorer_per_token if selection else 0,  # alpha = 1: no scorer
        "language_projection": Q * E * D * 2,
        "other": 0,
    }


@pytest.mark.parametrize("selection", [True, False])
def test_counted_flops_equal_closed_form_and_exclude_the_vision_tower(bench, selection):
    sizes = dataclasses.replace(bench.QUICK, vision_layers=1)  # a real encoder layer, whose FLOPs must drop out
    model = bench.build_model(bench.reef_config(sizes, selection), "cpu", attn_implementation="eager")
    inputs = bench.video_inputs(sizes, sizes.frames, "cpu")
    flops = bench.count_adapter_flops(model, inputs)
    expected = expected_flops(sizes, selection)
    assert {c: flops[c] for c in bench.COMPONENTS} == expected
    assert flops["adapter"] == sum(expected.values()) == flops["total"] - flops["vision_tower"]
    patches = (sizes.image_size // sizes.patch_size) ** 2
    conv = sizes.frames * patches * 3 * sizes.patch_size**2 * sizes.vision_width * 2
    assert flops["vision_tower"] > conv  # patch embedding plus the encoder layer


def test_quick_report_keys_and_values(bench, report):
    result, printed = report
    assert json.loads(printed.strip().splitlines()[-1]) == result  # the last printed line is the JSON object
    for key in REQUIRED:
        assert isinstance(result[key], float), key
    flops = result["flops"]
    for label, selection in (("reef", True), ("baseline", False)):
        assert {c: flops[label][c] for c in bench.COMPONENTS} == expected_flops(bench.QUICK, selection)
    reef, base = flops["reef"]["adapter"], flops["baseline"]["adapter"]
    assert result["gflops_reef"] == round(reef / 1e9, 3) and result["gflops_baseline"] == round(base / 1e9, 3)
    assert result["flops_reduction"] == round(1 - reef / base, 4) and 0 < result["flops_reduction"] < 1
    ma_lmm = base - flops["baseline"]["spatial_filter"]
    assert result["flops_reduction_vs_ma_lmm"] == round(1 - reef / ma_lmm, 4) < result["flops_reduction"]
    # selection only shrinks what the queries cross-attend to; the query banks and feed-forwards are the same
    assert flops["reef"]["qformer_cross_attention"] < flops["baseline"]["qformer_cross_attention"]
    for part in ("qformer_self_attention", "qformer_ffn", "language_projection", "spatial_filter"):
        assert flops["reef"][part] == flops["baseline"][part]
    assert result["memory_frames"] == [6, 24] and result["memory_qformer_layers"] == 1
    assert set(result["peak_mem_mib"]) == {"6", "24"}
    for peaks in result["peak_mem_mib"].values():
        assert set(peaks) == {"process", "tensors"} and min(peaks.values()) >= 0
    # live tensors: activations of one step plus a few per-frame outputs; 4x the frames stays far below 4x the peak
    assert 1 <= result["memory_ratio_1000_vs_20_tensors"] < 1.5
    assert isinstance(result["memory_ratio_1000_vs_20"], float)  # the process metric is not meaningful in-process
    assert result["topk_rows"] == 8 and all(t > 0 for t in result["topk_time_ms"].values())
    assert result["topk_speedup"] > 0 and result["topk_memory_ratio"] >= 0  # in-process at 8 rows: may reuse freed
    assert result["topk_max_abs_diff_y"] < 1e-6 and result["topk_max_abs_diff_grad"] < 1e-5  # same layer output
    assert "flops_reduction" in printed and "top-K" in printed


def test_live_tensor_peak_counts_new_storages_once_while_alive(bench):
    before = torch.zeros(250)  # exists before: neither it nor its views count
    with bench.LiveTensorPeak() as tracker:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # 8000 alive
        view, _ = b[10:], before[5:]  # views share a storage
        b.add_(1)  # in place: same storage
        del a  # 4000 alive
        c = before.double() * 2  # 2000 + 2000 alive for a moment (8000 in all), then the temporary is freed
        peak_so_far, current = tracker.peak, tracker.current
        del b, view, c
    assert peak_so_far == 8000 and current == 4000 + 2000
    assert tracker.current == 0 and tracker.live == {}


def test_memory_child_process_protocol(bench):
    """The CPU path of the full bench: a fresh interpreter measures one call and prints the bytes last."""
    peak = bench.peak_memory(bench.QUICK, bench.QUICK.frames, 24, "cpu", "tensors")
    assert peak == bench.peak_memory_here(bench.QUICK, bench.QUICK.frames, 24, "cpu", "tensors")  # deterministic


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--frames-long", "5"], r"`--frames-long` must be >= 6 \(the short video's frames\), got 5"),
        (["--memory-qformer-layers", "0"], r"`--memory-qformer-layers` must be in \[1, 2\] .*got 0"),
        (["--memory-qformer-layers", "3"], r"`--memory-qformer-layers` must be in \[1, 2\] .*got 3"),
        (["--vision-layers", "-1"], r"`--vision-layers` must be >= 0, got -1"),
        (["--repeats", "0"], r"`--repeats` must be >= 1, got 0"),
    ],
)
def test_argument_errors(bench, argv, message):
    with pytest.raises(ValueError, match=message):
        bench.main(["--quick", *argv])


def test_unknown_memory_metric(bench):
    with pytest.raises(ValueError, match=r"`metric` must be one of \('process', 'tensors'\), got 'rss'"):
        bench.peak_memory_here(bench.QUICK, 6, 24, "cpu", "rss")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda(bench):
    with pytest.raises(ValueError, match=r"`--device` is 'cuda' but CUDA is not available; use `--device cpu`"):
        bench.main(["--quick", "--device", "cuda"])
