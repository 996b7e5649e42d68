"""Learning test: with the same frame budget, AVS frames answer a question about one short shot more often than uniform.

Each video (36 s at 10 fps, real H.264) has three long filler shots and one 2 s answer shot, in random order. The
answer is the answer shot's background colour (4 classes); fillers use other colours and carry white/black moving
shapes. Both samplers take 6 frames. A frame's feature is the share of its pixels near each of the 8 palette colours;
a video's feature is the max over its frames. A linear classifier is trained per sampler on its own training videos
and evaluated on held-out videos. Uniform frames are 6 s apart, so they land in the answer shot about a third of the
time; AVS gives every detected shot a frame. If AVS missed the short shot (or spread frames uniformly), its accuracy
would fall to uniform's and the test fails.
"""

import numpy as np
import pytest
import torch

from videoadapt.processors.adaptive_sampling import AdaptiveSampler
from videoadapt.processors.synthetic import PALETTE, ShapeSpec, ShotSpec, SyntheticVideoSpec, write_synthetic_video
from videoadapt.processors.video_io import load_video, probe_video


ANSWERS = ("red", "green", "blue", "yellow")
FILLERS = ("grey", "magenta", "cyan", "orange")
COLORS = np.array(list(PALETTE.values()), dtype=np.float64)  # [8, 3]
FPS, FRAMES, ANSWER_FRAMES, BUDGET = 10.0, 360, 20, 6


def make_video(path, seed: int) -> tuple[int, tuple[int, int]]:
    """Write one QA video; returns (answer class, answer shot frame range)."""
    rng = np.random.default_rng(seed)
    answer = int(rng.integers(len(ANSWERS)))
    fillers = 30 + rng.multinomial(FRAMES - ANSWER_FRAMES - 90, [1 / 3] * 3)  # three shots of >= 3 s
    position = int(rng.integers(4))
    lengths = [*fillers[:position], ANSWER_FRAMES, *fillers[position:]]
    names = [FILLERS[i] for i in rng.permutation(4)[:3]]
    names.insert(position, ANSWERS[answer])
    shots = []
    for name in names:
        shapes = [
            ShapeSpec("circle", (255, 255, 255) if k % 2 else (0, 0, 0), 5.0, (20.0 + 20 * k, 20.0), (1.5, -1.0))
            for k in range(2)
        ]
        shots.append(ShotSpec(PALETTE[name], shapes))
    cuts = tuple(int(c) for c in np.cumsum(lengths)[:-1])
    spec = SyntheticVideoSpec(shots=tuple(shots), cut_frames=cuts, width=64, height=48, fps=FPS, num_frames=FRAMES,
                              keyframe_interval=10, frame_code=False)  # fmt: skip
    write_synthetic_video(path, spec)
    start = sum(lengths[:position])
    return answer, (start, start + ANSWER_FRAMES)


def video_feature(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> [8]: per palette colour, the largest share of a frame's pixels within 40 of that colour."""
    distance = np.abs(frames[:, :, :, None, :].astype(np.float64) - COLORS).max(-1)  # [T, H, W, 8]
    return (distance < 40).mean(axis=(1, 2)).max(0)


def train_and_test(train_x, train_y, test_x, test_y, seed: int = 0) -> float:
    """Accuracy of a linear classifier (full-batch Adam on cross-entropy) trained on `train_x`."""
    generator = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(train_x.shape[1], len(ANSWERS))
    with torch.no_grad():
        layer.weight.copy_(0.01 * torch.randn(layer.weight.shape, generator=generator))
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    x, y = torch.tensor(train_x, dtype=torch.float32), torch.tensor(train_y)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(layer(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = layer(torch.tensor(test_x, dtype=torch.float32)).argmax(-1)
    return float((predicted == torch.tensor(test_y)).float().mean())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Per sampler: features [N, 8], whether any frame hit the answer shot [N]; and the labels [N]."""
    folder = tmp_path_factory.mktemp("avs_qa")
    features = {"uniform": [], "avs": []}
    hits = {"uniform": [], "avs": []}
    labels = []
    sampler = AdaptiveSampler(BUDGET)
    for seed in range(24):
        path = folder / f"qa_{seed:02d}.mp4"
        answer, (start, stop) = make_video(path, seed)
        labels.append(answer)
        plan = sampler.plan(probe_video(path))
        chosen = {
            "uniform": load_video(path, num_frames=BUDGET),
            "avs": load_video(path, lambda _, picked=plan.frame_indices: picked),
        }
        for name, (frames, meta) in chosen.items():
            assert len(frames) == BUDGET
            features[name].append(video_feature(frames))
            hits[name].append(bool(((meta.frame_indices >= start) & (meta.frame_indices < stop)).any()))
    return {k: np.stack(v) for k, v in features.items()}, {k: np.array(v) for k, v in hits.items()}, np.array(labels)


def test_avs_frames_answer_the_short_shot_question_more_often_than_uniform(dataset):
    features, hits, labels = dataset
    train, test = slice(0, 12), slice(12, 24)
    accuracy = {name: train_and_test(x[train], labels[train], x[test], labels[test]) for name, x in features.items()}
    assert hits["avs"].all()  # every video: one AVS frame inside the 2 s answer shot
    assert hits["uniform"].mean() < 0.6  # the task is hard for uniform sampling with this budget
    assert accuracy["avs"] >= 0.9
    assert accuracy["avs"] - accuracy["uniform"] >= 0.25, accuracy


def test_the_classifier_is_what_reads_the_answer(dataset):
    """Sanity of the probe: on videos where a frame hit the answer shot, the feature's answer colour is present."""
    features, hits, labels = dataset
    answer_columns = [list(PALETTE).index(name) for name in ANSWERS]
    present = features["avs"][:, answer_columns]  # [N, 4]
    assert np.array_equal(present.argmax(1), labels) and (present.max(1) > 0.5).all()
    missed = ~hits["uniform"]
    assert missed.any() and (features["uniform"][missed][:, answer_columns].max(1) < 0.05).all()
