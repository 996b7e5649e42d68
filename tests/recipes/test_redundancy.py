"""DynFocus redundancy estimation (Appendix A) on real mp4s with known shots, encoded by a stub CLIP whose image and
text embeddings are set by hand, so every r_d / r_a below is computed by hand."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.testing_utils import CaptureLogger

from videoadapt.processors.errors import MediaError
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.synthetic import PALETTE, ShotSpec, SyntheticVideoSpec, write_synthetic_video
from videoadapt.recipes import redundancy
from videoadapt.recipes.redundancy import (
    ManifestRecord,
    estimate_redundancy,
    irrelevance_ratio,
    min_max_normalize,
    read_manifest,
    repetition_ratio,
    sample_videos,
)


COLOURS = ("red", "green", "blue")
# image embedding of a frame of each background colour: cos(red, blue) = 0.6, cos(blue, green) = 0.8, cos(red, green) = 0
IMAGE_VECTORS = {"red": [1.0, 0.0, 0.0], "blue": [0.6, 0.8, 0.0], "green": [0.0, 1.0, 0.0]}
# text embedding = sum of its words' vectors; other words count zero
WORD_VECTORS = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0]}
WORDS = ("what", "color", "is", "it", "word", *COLOURS)
QUESTION = "what color is it"


def build_word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer, `[BOS] text [EOS]`, trained on nothing (the vocabulary is given)."""
    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    vocab = {word: i for i, word in enumerate([*specials, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )


class StubClip:
    """A CLIP stand-in: a frame's embedding is IMAGE_VECTORS of its nearest palette colour (frames preprocessed to
    [0, 1] without normalisation), a text's is the sum of WORD_VECTORS of its tokens. Records what it was given."""

    def __init__(self, tokenizer, max_position_embeddings: int = 77):
        self.tokenizer = tokenizer
        self.config = SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=max_position_embeddings))
        self.image_batches, self.text_ids = [], []
        names = list(IMAGE_VECTORS)
        self.palette = torch.tensor([PALETTE[n] for n in names], dtype=torch.float32)  # (3 colours, RGB)
        self.image_table = torch.tensor([IMAGE_VECTORS[n] for n in names])  # (3 colours, D)
        self.word_table = torch.zeros(len(tokenizer), 3)  # (vocab, D)
        for word, vector in WORD_VECTORS.items():
            self.word_table[tokenizer.convert_tokens_to_ids(word)] = torch.tensor(vector)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.image_batches.append(pixel_values.shape[0])
        rgb = pixel_values.mean(dim=(2, 3)) * 255  # (T, 3)
        return self.image_table[torch.cdist(rgb, self.palette).argmin(-1)]

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.text_ids += [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
        return (self.word_table[input_ids] * attention_mask[..., None]).sum(1)

    def texts(self) -> list[str]:
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in self.text_ids]


def write_colour_video(path, seconds: list[str], fps: float = 2.0) -> str:
    """One constant-colour second per entry of `seconds` (runs of a colour form one static shot), no frame code."""
    runs = [[seconds[0], 0]]
    for k, colour in enumerate(seconds):
        if colour != runs[-1][0]:
            runs.append([colour, k])
    per_second = round(fps)
    spec = SyntheticVideoSpec(
        shots=tuple(ShotSpec(PALETTE[c]) for c, _ in runs),
        cut_frames=tuple(start * per_second for _, start in runs[1:]),
        width=32, height=24, fps=fps, num_frames=len(seconds) * per_second, frame_code=False,
    )  # fmt: skip
    write_synthetic_video(path, spec)
    return str(path)


def write_manifest(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer()


@pytest.fixture(scope="module")
def preprocessor():
    return FramePreprocessor(size={"height": 8, "width": 8}, do_normalize=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """`rrbgg.mp4`: red 3 s, blue 1 s, green 2 s; `static.mp4`: red 3 s. Two pairs for the first, one for the second."""
    root = tmp_path_factory.mktemp("redundancy")
    (root / "videos").mkdir()
    write_colour_video(root / "videos" / "rrbgg.mp4", ["red", "red", "red", "blue", "green", "green"])
    write_colour_video(root / "videos" / "static.mp4", ["red", "red", "red"])
    rows = [
        {"video": "videos/rrbgg.mp4", "question": QUESTION, "answer": "red", "id": 7},
        {"video": "videos/static.mp4", "question": QUESTION, "answer": "red"},
        {"video": "videos/rrbgg.mp4", "question": QUESTION, "answer": "green"},
    ]
    return write_manifest(root / "manifest.jsonl", rows)


def reference_ratios(frames: list[list[float]], text: list[float], high: float, low: float) -> tuple[float, float]:
    """Appendix A with Python floats: cosines, min-max per video (raw if all equal), then the two shares."""

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    def minmax(s):
        lo, hi = min(s), max(s)
        return s if hi - lo < 1e-6 else [(x - lo) / (hi - lo) for x in s]

    consecutive = minmax([cos(frames[t], frames[t + 1]) for t in range(len(frames) - 1)])
    relevance = minmax([cos(f, text) for f in frames])
    return sum(s > high for s in consecutive) / len(consecutive), sum(s < low for s in relevance) / len(relevance)


def test_min_max_normalize_rows_and_degenerate_range():
    scores = torch.tensor([[0.2, 0.6, 1.0], [0.9, 0.9, 0.9 + 1e-8]], dtype=torch.float64)
    out = min_max_normalize(scores)
    assert torch.allclose(out[0], torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), atol=1e-12)
    assert torch.equal(out[1], scores[1])  # all equal up to float error: left raw
    assert torch.equal(min_max_normalize(torch.tensor([0.3])), torch.tensor([0.3]))


def test_repetition_ratio_hand_computed():
    red, blue, green = (torch.tensor(IMAGE_VECTORS[c]) for c in ("red", "blue", "green"))
    frames = torch.stack([red, red, blue, blue, green, green])  # cosines 1, .6, 1, .8, 1 -> 1, 0, 1, .5, 1
    assert repetition_ratio(frames) == 3 / 5
    assert repetition_ratio(frames, threshold=0.4) == 4 / 5
    assert repetition_ratio(torch.stack([red, red, red])) == 1.0  # all equal: raw cosine 1 > 0.6
    assert repetition_ratio(torch.stack([red, green])) == 0.0  # one raw cosine 0, not > 0.6
    assert math.isnan(repetition_ratio(red[None]))
    # scale does not matter (cosines)
    assert repetition_ratio(frames * torch.tensor([[1.0], [3.0], [0.5], [2.0], [7.0], [1.0]])) == 3 / 5


def test_irrelevance_ratio_hand_computed_and_min_max_matters():
    frames = torch.eye(3)[[0, 0, 1, 1, 2, 2]]  # red, red, green, green, blue, blue as one-hot embeddings
    text = torch.tensor([0.9, 0.45, 0.35])  # cosines .845, .423, .329 (x 2)
    # raw cosine would flag only the blue frames (2/6); after min-max green is (0.45 - 0.35) / 0.55 = 0.18 < 0.4
    assert irrelevance_ratio(frames, text).item() == 4 / 6
    per_text = irrelevance_ratio(frames, torch.stack([text, torch.tensor([0.0, 1.0, 0.0])]))
    assert per_text.shape == (2,) and per_text.tolist() == [4 / 6, 4 / 6]
    # all cosines equal (0.577): compared raw with the threshold
    assert irrelevance_ratio(frames, torch.ones(3)).item() == 0.0
    assert irrelevance_ratio(frames, torch.ones(3), threshold=0.6).item() == 1.0


def test_ratios_equal_literal_reference_on_random_embeddings():
    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        frames = torch.randn(int(torch.randint(2, 12, (1,), generator=generator)), 5, generator=generator)
        text = torch.randn(5, generator=generator)
        high, low = (0.6, 0.4) if trial % 2 else (0.3, 0.7)
        r_d, r_a = reference_ratios(frames.tolist(), text.tolist(), high, low)
        assert repetition_ratio(frames, high) == r_d
        assert irrelevance_ratio(frames, text, low).item() == r_a


def test_estimate_redundancy_on_generated_videos(dataset, tokenizer, preprocessor):
    model = StubClip(tokenizer)
    report = estimate_redundancy(dataset, model, tokenizer, preprocessor, progress=False)
    first, static = report.videos
    assert report.video_ids == ("videos/rrbgg.mp4", "videos/static.mp4") and report.num_manifest_videos == 2
    assert (first.num_frames, first.num_questions, static.num_frames, static.num_questions) == (6, 2, 3, 1)
    # rrbgg at 1 fps: frames r r r b g g; consecutive cosines 1 1 .6 .8 1 -> min-max 1 1 0 .5 1 -> 3 of 5 above .6
    assert first.r_d == 3 / 5
    # "... red": cosines 1 1 1 .6 0 0 -> 2 of 6 below .4; "... green": 0 0 0 .8 1 1 -> 3 of 6; mean 5/12
    assert first.r_a == pytest.approx(5 / 12, abs=1e-15)
    # static: cosines all 1 (raw) -> r_d 1; frame-text cosines all 1 (raw) -> r_a 0
    assert (static.r_d, static.r_a) == (1.0, 0.0)
    assert report.r_d == pytest.approx((3 / 5 + 1) / 2, abs=1e-15)
    assert report.r_a == pytest.approx(5 / 24, abs=1e-15)
    assert sorted(model.texts()) == sorted(f"{QUESTION} {answer}" for answer in ("red", "green", "red"))
    summary = report.to_dict()
    assert json.loads(json.dumps(summary)) == summary and summary["video_ids"] == list(report.video_ids)
    # frame batching changes nothing
    small = estimate_redundancy(dataset, StubClip(tokenizer), tokenizer, preprocessor, batch_size=2, progress=False)
    assert small == report


def test_uniform_frames_max_frames_and_separator(dataset, tokenizer, preprocessor):
    model = StubClip(tokenizer)
    report = estimate_redundancy(
        dataset, model, tokenizer, preprocessor, fps=None, num_frames=3, separator=" word ", progress=False
    )
    # 12 source frames, uniform 3 -> frames 0, 4, 8 = red, red, green: cosines 1, 0 -> 1 of 2 above .6
    assert report.videos[0].num_frames == 3 and report.videos[0].r_d == 1 / 2
    assert f"{QUESTION} word red" in model.texts()
    capped = estimate_redundancy(dataset, model, tokenizer, preprocessor, max_frames=3, progress=False)
    # 1 fps gives t = 0..5 s; capped to 3 by the uniform rule: t = 0, 2, 4 = red, red, green
    assert capped.videos[0].num_frames == 3 and capped.videos[0].r_d == 1 / 2


def test_question_answer_cut_to_text_context(tmp_path, tokenizer, preprocessor):
    video = write_colour_video(tmp_path / "v.mp4", ["red", "green"])
    question = " ".join(["word"] * 20)
    manifest = write_manifest(tmp_path / "m.jsonl", [{"video": video, "question": question, "answer": "green"}])
    model = StubClip(tokenizer, max_position_embeddings=8)
    with CaptureLogger(redundancy.logger) as captured:
        report = estimate_redundancy(manifest, model, tokenizer, preprocessor, progress=False)
    assert "1 of 1 question+answer texts exceed 8 tokens" in captured.out
    (ids,) = model.text_ids
    assert (
        len(ids) == 8 and ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[1:-1]) == " ".join(["word"] * 6)
    )
    # the answer was cut: the text embedding is zero, so every frame-text cosine is 0 (raw) -> all irrelevant
    assert report.videos[0].r_a == 1.0


def test_sample_videos_seeded_distinct_and_in_manifest_order():
    paths = [f"/v/{i}.mp4" for i in range(25)]
    records = [ManifestRecord(i, p, p, "q", "a") for i, p in enumerate(paths + paths[:5])]  # 5 videos twice
    picked = sample_videos(records, 20, seed=0)
    ids = [group[0].path for group in picked]
    expected = sorted(np.random.default_rng(0).choice(25, size=20, replace=False).tolist())
    assert ids == [paths[i] for i in expected] and len(set(ids)) == 20
    assert all(len(group) == (2 if int(group[0].path[3:-4]) < 5 else 1) for group in picked)
    assert [g[0].path for g in sample_videos(records, 20, seed=0)] == ids
    assert [g[0].path for g in sample_videos(records, 20, seed=1)] != ids
    with CaptureLogger(redundancy.logger) as captured:
        everything = sample_videos(records, 40, seed=0)
    assert [g[0].path for g in everything] == paths and "using all of them" in captured.out


def test_seed_picks_the_same_videos_end_to_end(tmp_path, tokenizer, preprocessor):
    colours = [["red", "green"], ["green", "green"], ["red", "red"], ["green", "red"]]
    rows = [
        {"video": write_colour_video(tmp_path / f"{i}.mp4", c), "question": QUESTION, "answer": "red"}
        for i, c in enumerate(colours)
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    run = [estimate_redundancy(manifest, StubClip(tokenizer), tokenizer, preprocessor, num_videos=2, seed=s,
                               progress=False).video_ids for s in (3, 3, 4)]  # fmt: skip
    expected = [
        [rows[i]["video"] for i in sorted(np.random.default_rng(s).choice(4, 2, replace=False))] for s in (3, 4)
    ]
    assert list(run[0]) == list(run[1]) == expected[0] and list(run[2]) == expected[1] != expected[0]


def test_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_manifest(tmp_path / "missing.jsonl")
    bad = {
        "not json": ('{"video": "a.mp4", "question": "q", "answer": "a"}\n{oops\n', "line 2: not valid JSON"),
        "not an object": ("[1, 2]\n", "line 1: must be a JSON object, got list"),
        "no answer": ('{"video": "a.mp4", "question": "q"}\n', "field `answer` must be a string, got None"),
        "empty video": ('{"video": "", "question": "q", "answer": "a"}\n', "`video` must be a non-empty string"),
        "empty": ("\n\n", "has no records"),
    }
    for name, (text, message) in bad.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_manifest(path)
    path = tmp_path / "ok.jsonl"
    path.write_text('\n{"video": "sub/a.mp4", "question": 3, "answer": 4.5, "extra": [1]}\n')
    assert read_manifest(path) == [ManifestRecord(0, "sub/a.mp4", str(tmp_path / "sub" / "a.mp4"), "3", "4.5")]


def test_argument_errors(dataset, tokenizer, preprocessor):
    model = StubClip(tokenizer)
    bad = {
        "`num_videos` must be an int >= 1, got 0": dict(num_videos=0),
        "pass exactly one of `fps` and `num_frames`": dict(num_frames=4),
        "`similarity_threshold` must be in \\[0, 1\\]": dict(similarity_threshold=1.5),
        "`relevance_threshold` must be in \\[0, 1\\]": dict(relevance_threshold=-0.1),
        "`batch_size` must be an int >= 1, got 0": dict(batch_size=0),
        "`fps` must be a finite number > 0": dict(fps=0.0),
        "`max_frames` caps fps sampling only": dict(fps=None, num_frames=4, max_frames=2),
        "`max_frames` must be None or an int >= 1": dict(max_frames=0),
    }
    for message, kwargs in bad.items():
        with pytest.raises(ValueError, match=message):
            estimate_redundancy(dataset, model, tokenizer, preprocessor, progress=False, **kwargs)
    with pytest.raises(TypeError, match="`model` must have `get_image_features`"):
        estimate_redundancy(dataset, torch.nn.Linear(2, 2), tokenizer, preprocessor)


def test_bad_video_raises_media_error_with_its_path(tmp_path, tokenizer, preprocessor):
    manifest = write_manifest(tmp_path / "m.jsonl", [{"video": "gone.mp4", "question": QUESTION, "answer": "red"}])
    with pytest.raises(MediaError, match="gone.mp4: no such file") as caught:
        estimate_redundancy(manifest, StubClip(tokenizer), tokenizer, preprocessor, progress=False)
    assert caught.value.path == str(tmp_path / "gone.mp4")
