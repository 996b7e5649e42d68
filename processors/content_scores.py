"""Frame-to-frame change scores of the content shot detector, in numpy on OpenCV's 8-bit HSV scale.

- `content_scores`: PySceneDetect's content value, the mean absolute difference of H, S and V between frames i - 1
  and i over pixels and channels. Hue differences go around the colour circle, min(|dH|, 180 - |dH|)
  (`circular_hue`; PySceneDetect uses |dH|, so noise on red, whose hue flips between 0 and 179, scores like a cut).
- `histogram_scores`: the share of pixel mass that moves between the soft colour histograms of frames i - 1 and i,
  255 * mean over H, S, V of (1/2) sum_k |hist_i[k] - hist_(i-1)[k]|. Objects moving over a background barely change
  a frame's histogram while a cut replaces it, so this cue keeps its contrast under fast motion, where pixelwise
  differences of moving shapes swamp the content value. Histograms are soft (each value split linearly between its
  two nearest bin centres) so that a small colour change, as in a fade or a lighting change, moves a small mass
  instead of a whole bin; hue bins are circular with bin 0 centred on hue 0 (red).

Both scores are on a 0-255 scale and score_0 = 0.

Shape legend:
    T     frames
    h w   frame height and width
    3     RGB or HSV channels
    K     histogram bins per channel
"""

import numpy as np


__all__ = ["check_frames", "content_scores", "histogram_scores", "hsv_histograms", "rgb_to_hsv"]

CHANNEL_RANGES = (180.0, 256.0, 256.0)  # H, S, V spans on OpenCV's 8-bit scale


def check_frames(frames: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """`frames` as uint8 RGB [T, h, w, 3] with T >= 1 (and (w, h) = `size` when given), else ValueError."""
    frames = np.asarray(frames)
    wanted = f"[T, {size[1]}, {size[0]}, 3]" if size else "[T, h, w, 3]"
    ok = frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3 and frames.shape[0] >= 1
    if not ok or (size is not None and frames.shape[1:3] != (size[1], size[0])):
        raise ValueError(f"`frames` must be uint8 RGB {wanted} with T >= 1, got {frames.dtype} {frames.shape}.")
    return frames


def rgb_to_hsv(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> float32 HSV [..., 3] on OpenCV's 8-bit scale: H in [0, 180), S and V in [0, 255]."""
    rgb = np.asarray(frames, dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = np.maximum(np.maximum(r, g), b)
    spread = value - np.minimum(np.minimum(r, g), b)
    saturation = np.divide(255.0 * spread, value, out=np.zeros_like(value), where=value > 0)
    safe = np.where(spread > 0, spread, np.float32(1.0))
    # hexcone sector of the largest channel, later assignments winning ties: red, then green, then blue
    degrees = (240.0 + 60.0 * (r - g) / safe).astype(np.float32)
    green, red = value == g, value == r
    degrees[green] = (120.0 + 60.0 * (b - r) / safe)[green]
    degrees[red] = (60.0 * (g - b) / safe)[red]
    hue = np.where(spread > 0, np.mod(degrees, 360.0) * 0.5, 0.0)
    return np.stack([hue, saturation, value], axis=-1).astype(np.float32)


def hsv_content_scores(hsv: np.ndarray, circular_hue: bool = True) -> np.ndarray:
    """HSV [T, h, w, 3] -> [T] float64 content scores (see `content_scores`)."""
    scores = np.zeros(len(hsv), dtype=np.float64)
    if len(hsv) > 1:
        diff = np.abs(np.diff(hsv, axis=0))  # [T - 1, h, w, 3]
        if circular_hue:
            diff[..., 0] = np.minimum(diff[..., 0], 180.0 - diff[..., 0])
        scores[1:] = diff.mean(axis=(1, 2, 3), dtype=np.float64)
    return scores


def content_scores(frames: np.ndarray, circular_hue: bool = True) -> np.ndarray:
    """[T, h, w, 3] uint8 RGB -> [T] float64: mean |HSV_i - HSV_(i-1)| over pixels and channels (score_0 = 0).

    With `circular_hue`, the hue difference is min(|dH|, 180 - |dH|)."""
    return hsv_content_scores(rgb_to_hsv(check_frames(frames)), circular_hue)


def hsv_histograms(hsv: np.ndarray, bins: int) -> np.ndarray:
    """HSV [T, h, w, 3] -> [T, 3, K] soft histograms, each row summing to 1 (K = `bins`).

    S and V: bin k is centred at (k + 1/2) * 256 / K; a value between two centres splits its unit mass linearly
    between them, a value beyond the first or last centre goes wholly to that end bin. H: circular, bin k centred
    at k * 180 / K (bin 0 on red), the mass split between the two nearest centres around the circle."""
    T = len(hsv)
    flat = np.asarray(hsv, dtype=np.float64).reshape(T, -1, 3)  # [T, N, 3]
    pixels = flat.shape[1]
    rows = (np.arange(T) * bins)[:, None]  # [T, 1] offset of each frame's histogram in the flat bincount
    histograms = np.empty((T, 3, bins), dtype=np.float64)
    for channel, span in enumerate(CHANNEL_RANGES):
        circular = channel == 0
        position = flat[..., channel] * (bins / span) - (0.0 if circular else 0.5)  # [T, N] in bin-centre units
        low = np.floor(position)
        upper_share = position - low
        low = low.astype(np.int64)
        if circular:
            low, high = low % bins, (low + 1) % bins
        else:
            low, high = np.clip(low, 0, bins - 1), np.clip(low + 1, 0, bins - 1)
        counts = np.bincount((rows + low).ravel(), (1.0 - upper_share).ravel(), T * bins)
        counts += np.bincount((rows + high).ravel(), upper_share.ravel(), T * bins)
        histograms[:, channel] = counts.reshape(T, bins) / pixels
    return histograms


def hsv_histogram_scores(hsv: np.ndarray, bins: int) -> np.ndarray:
    """HSV [T, h, w, 3] -> [T] float64 histogram scores (see `histogram_scores`)."""
    scores = np.zeros(len(hsv), dtype=np.float64)
    if len(hsv) > 1:
        histograms = hsv_histograms(hsv, bins)  # [T, 3, K]
        moved = 0.5 * np.abs(np.diff(histograms, axis=0)).sum(axis=-1)  # [T - 1, 3] share of mass moved
        scores[1:] = 255.0 * moved.mean(axis=-1)
    return scores


def histogram_scores(frames: np.ndarray, bins: int = 16) -> np.ndarray:
    """[T, h, w, 3] uint8 RGB -> [T] float64: 255 * mean over H, S, V of half the L1 distance between the soft
    histograms (`hsv_histograms`, `bins` per channel) of frames i - 1 and i (score_0 = 0)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"`bins` must be an int >= 2 (histogram bins per channel), got {bins!r}; e.g. 16.")
    return hsv_histogram_scores(rgb_to_hsv(check_frames(frames)), bins)
