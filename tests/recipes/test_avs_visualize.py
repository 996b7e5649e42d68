"""The uniform-vs-AVS contact sheet: layout, pixels of thumbnails/outlines/timelines, a real video whose short shot
only AVS samples, saving, and bad inputs."""

import numpy as np
import pytest
from PIL import Image

from videoadapt.processors.synthetic import PALETTE, ShotSpec, SyntheticVideoSpec, write_synthetic_video
from videoadapt.recipes.avs_visualize import (
    BAND,
    BORDER,
    TICK,
    AvsSheetLayout,
    avs_contact_sheet,
    save_avs_contact_sheet,
    shot_color,
    visualize_avs,
)


def solid(colors) -> np.ndarray:
    return np.stack([np.broadcast_to(np.array(c, np.uint8), (30, 40, 3)) for c in colors])


def test_layout_thumbnails_outlines_and_timeline_pixels():
    uniform = solid([(200, 0, 0), (200, 0, 0), (0, 0, 200)])
    avs = solid([(200, 0, 0), (0, 200, 0), (0, 0, 200)])
    starts = np.array([0.0, 4.0, 6.0])  # three shots in a 10 s video
    uniform_times, avs_times = np.array([0.0, 3.3, 6.6]), np.array([2.0, 5.0, 8.0])
    image = avs_contact_sheet(uniform, uniform_times, avs, avs_times, 10.0, starts, "q?", thumb_width=32, columns=2)
    layout = AvsSheetLayout.create(3, (40, 30), thumb_width=32, columns=2)
    assert (layout.rows, layout.thumb_size) == (2, (32, 24)) and image.size == layout.size
    pixels = np.asarray(image)
    for block, (frames, times) in enumerate(((uniform, uniform_times), (avs, avs_times))):
        shots = np.searchsorted(starts, times, side="right") - 1
        for k in range(3):
            x0, y0, x1, y1 = layout.thumb_box(block, k)
            assert (pixels[y0:y1, x0:x1] == frames[k, 0, 0]).all()  # a solid frame stays solid when resized
            assert tuple(pixels[y0, x0 - 1]) == tuple(pixels[y1, x1]) == shot_color(int(shots[k]))  # outline
            assert tuple(pixels[y0 - BORDER, x0 - BORDER]) == shot_color(int(shots[k]))
        x0, y0, x1, y1 = layout.timeline_box(block)
        ticks = {layout.time_x(block, t, 10.0) for t in times}
        assert all(tuple(pixels[y1 - 1, x]) == TICK for x in ticks)
        for shot, start in enumerate(starts):
            x = layout.time_x(block, start, 10.0) + 1
            assert tuple(pixels[y0, x]) == shot_color(shot)  # coloured top edge of each shot's band
            if x not in ticks and x - 1 not in ticks:
                assert tuple(pixels[y1 - 2, x]) == BAND[shot % 2]
    assert layout.time_x(1, 10.0, 10.0) == layout.timeline_box(1)[2] - 1  # the end of the video stays inside


def test_bad_inputs_are_rejected():
    frames, times = solid([(0, 0, 0)] * 2), np.array([0.0, 1.0])
    cases = [
        ((frames, times, solid([(0, 0, 0)] * 3), np.arange(3.0), 2.0), {}, "must have the same shape"),
        ((frames, times[:1], frames, times, 2.0), {}, r"`uniform_times` must be \[B\] = \[2\] seconds"),
        ((frames, times, frames, times, 0.0), {}, r"`duration` must be > 0 seconds, got 0.0"),
        ((frames, times, frames, times, 2.0), {"shot_starts": [0.5, 1.0]}, "ascending seconds starting at 0"),
        ((frames, times, frames, times, 2.0), {"columns": 0}, r"`columns` must be None or an int >= 1, got 0"),
        ((frames, times, frames, times, 2.0), {"thumb_width": 4}, r"`thumb_width` must be an int >= 8 pixels"),
        ((frames.astype(np.float32), times, frames, times, 2.0), {}, r"`frames` must be uint8 \[T, H, W, 3\]"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            avs_contact_sheet(*args, **kwargs)


@pytest.fixture(scope="module")
def short_shot_video(tmp_path_factory):
    """30 s at 10 fps: grey [0, 11) s, a 2 s red shot [11, 13) s, blue [13, 30) s."""
    path = tmp_path_factory.mktemp("sheet") / "short_shot.mp4"
    shots = tuple(ShotSpec(PALETTE[c]) for c in ("grey", "red", "blue"))
    spec = SyntheticVideoSpec(shots=shots, cut_frames=(110, 130), width=64, height=48, fps=10.0, num_frames=300,
                              keyframe_interval=10, frame_code=False)  # fmt: skip
    write_synthetic_video(path, spec)
    return path


def test_only_avs_samples_the_short_shot_and_the_sheet_shows_it(short_shot_video, tmp_path):
    result = visualize_avs(short_shot_video, budget=6, title="what colour is the short shot?")
    assert result.uniform_indices.tolist() == [0, 50, 100, 150, 200, 250]
    assert result.plan.shots.tolist() == [[0, 110], [110, 130], [130, 300]]
    assert result.plan.allocation.tolist() == [2, 1, 3]
    assert result.plan.frame_indices.tolist() == [27, 82, 120, 158, 215, 271]
    layout = AvsSheetLayout.create(6, (64, 48))
    pixels = np.asarray(result.image).astype(int)
    red = np.array(PALETTE["red"])

    def thumb_centre(block, k):
        x0, y0, x1, y1 = layout.thumb_box(block, k)
        return pixels[(y0 + y1) // 2, (x0 + x1) // 2]

    uniform_red = [np.abs(thumb_centre(0, k) - red).max() < 12 for k in range(6)]
    avs_red = [np.abs(thumb_centre(1, k) - red).max() < 12 for k in range(6)]
    assert not any(uniform_red) and avs_red == [False, False, True, False, False, False]
    title = "what colour is the short shot?"
    saved = save_avs_contact_sheet(short_shot_video, tmp_path / "out" / "sheet.png", budget=6, title=title)
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.size == layout.size
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(result.image))
