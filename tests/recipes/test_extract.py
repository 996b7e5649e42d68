"""Feature pre-extraction into cached Arrow files: numerics against the encoders run directly, caching, resuming
after a killed run, multi-process, side channels, errors. Real mp4 files written here, tiny random encoders."""

import os
import signal
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from videoadapt.modeling_compact import CompactForConditionalGeneration
from videoadapt.processors.errors import MediaError
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.side_channels import AudioSideChannel, MultiviewSideChannel, VideoSideChannel
from videoadapt.processors.synthetic import (
    PALETTE,
    ShapeSpec,
    ShotSpec,
    SyntheticVideoSpec,
    ToneSpec,
    write_synthetic_video,
)
from videoadapt.processors.synthetic_audio import write_tone_audio
from videoadapt.processors.video_io import load_video
from videoadapt.recipes.extract import FrameFeatureEncoder, SideChannelEncoder, extract_features, unique_media
from videoadapt.recipes.manifest import load_manifest, write_manifest


SQUARE32 = FramePreprocessor(size={"height": 32, "width": 32})
TONES = (ToneSpec(440.0, 0.2, 2.5), ToneSpec(1000.0, 1.0, 3.0))
BACKGROUNDS = ("grey", "red", "blue", "green")


def write_video(path: Path, background: str, seconds: float = 1.0, tones=()) -> str:
    """A 64x48, 10 fps video with one moving square on a plain background (and an optional AAC tone track)."""
    shape = ShapeSpec("square", PALETTE["yellow"], 6.0, (20.0, 16.0), (3.0, 1.0))
    spec = SyntheticVideoSpec(
        shots=(ShotSpec(PALETTE[background], (shape,)),), width=64, height=48, fps=10.0, duration=seconds,
        keyframe_interval=5, tones=tones,
    )  # fmt: skip
    write_synthetic_video(path, spec)
    return str(path)


def manifest_row(index: int, video: str, **extra) -> dict:
    """A row of the videoadapt manifest schema (docs/manifest.md)."""
    return {"id": f"toy/train/{index}", "split": "train", "question": "what color is the background?",
            "answers": [BACKGROUNDS[index % 4]], "video": video, "task": "qa", **extra}  # fmt: skip


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("extract_media")
    return [write_video(root / f"{name}.mp4", name) for name in BACKGROUNDS]


@pytest.fixture(scope="module")
def rows(videos) -> datasets.Dataset:
    return datasets.Dataset.from_list([manifest_row(i, path) for i, path in enumerate(videos)])


def siglip(seed: int = 0) -> SiglipVisionModel:
    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    return SiglipVisionModel(config).eval()


def clip_tower() -> CLIPVisionModel:
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    return CLIPVisionModel(config).eval()


class CallCounter:
    """Counts forward calls of a module (in this process)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(lambda *args: setattr(self, "calls", self.calls + 1))


def direct_tower_features(tower, path: str, frames: int, layer: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The reference: decode, preprocess and run the tower by hand on all frames at once."""
    decoded, meta = load_video(path, num_frames=frames)
    with torch.no_grad():
        out = tower(pixel_values=SQUARE32(decoded), output_hidden_states=True)
    return (out.last_hidden_state if layer is None else out.hidden_states[layer]), meta.timestamps


def arrow_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.arrow"))


# ------------------------------------------------------------------------------------------------ frame features


def test_frame_features_equal_the_tower_run_directly(rows, videos, tmp_path, capsys):
    tower = siglip()
    out = extract_features(rows, FrameFeatureEncoder(tower, SQUARE32, sampler=4), "video", tmp_path, batch_size=3)
    if datasets.is_progress_bar_enabled():  # datasets' own tqdm bar (on unless HF_DATASETS_DISABLE_PROGRESS_BARS)
        progress = capsys.readouterr().err
        assert "Extracting frame_features: 100%" in progress and "4/4" in progress
    assert out.column_names == [
        *rows.column_names,
        "frame_features",
        "frame_features_length",
        "frame_features_timestamps",
    ]
    assert list(out["id"]) == list(rows["id"]) and list(out["answers"]) == list(rows["answers"])
    assert list(out["frame_features_length"]) == [4, 4, 4, 4]
    assert str(out.data.schema.field("frame_features").type) == "list<item: list<item: list<item: float>>>"  # float32
    assert str(out.data.schema.field("frame_features_timestamps").type) == "list<item: double>"
    torch_rows, numpy_rows = out.with_format("torch"), out.with_format("numpy", dtype=None)  # None: storage dtype
    for i, path in enumerate(videos):
        expected, timestamps = direct_tower_features(tower, path, 4)
        assert expected.shape == (4, 16, 32)  # T frames, 4x4 patches (SigLIP: no CLS), C
        assert torch.equal(torch_rows[i]["frame_features"], expected)
        assert numpy_rows[i]["frame_features_timestamps"].dtype == np.float64
        assert np.array_equal(numpy_rows[i]["frame_features_timestamps"], timestamps)  # frames 0, 2, 5, 7 of 10 fps
        np.testing.assert_allclose(timestamps, [0.0, 0.2, 0.5, 0.7])


def test_feature_layer_and_grid_with_a_cls_tower(rows, videos, tmp_path):
    tower = clip_tower()
    tokens = FrameFeatureEncoder(tower, SQUARE32, sampler=3, feature_layer=-2, batch_size=2)
    grid = FrameFeatureEncoder(tower, SQUARE32, sampler=3, feature_layer=-2, grid=True)
    small = rows.select([1])
    out_tokens = extract_features(small, tokens, "video", tmp_path).with_format("torch")[0]["frame_features"]
    out_grid = extract_features(small, grid, "video", tmp_path).with_format("torch")[0]["frame_features"]
    expected, _ = direct_tower_features(tower, videos[1], 3, layer=-2)  # [3, 1 + 16, 32]: CLS first
    torch.testing.assert_close(out_tokens, expected, atol=1e-6, rtol=1e-6)  # frames in batches of 2 vs all 3
    torch.testing.assert_close(out_grid, expected[:, 1:].reshape(3, 4, 4, 32), atol=1e-6, rtol=1e-6)


def test_compact_compressor_inputs_for_svc_pretraining(rows, videos, tmp_path, tiny_checkpoints):
    model = CompactForConditionalGeneration.from_pretrained(tiny_checkpoints["llava_onevision"], compressor_grid=8)
    encoder = FrameFeatureEncoder(model.model, SQUARE32, sampler=4, video_method="get_compressor_inputs")
    out = extract_features(rows.select([0, 1]), encoder, "video", tmp_path).with_format("torch")
    for i in range(2):
        frames, _ = load_video(videos[i], num_frames=4)
        with torch.no_grad():
            expected = model.model.get_compressor_inputs(SQUARE32(frames)[None])[0]  # one video [1, T, 3, H, W]
        assert expected.shape == (4, 8, 8, 32)  # [T, g, g, D]: what the SVC autoencoder is pre-trained on
        assert torch.equal(out[i]["frame_features"], expected)


# ------------------------------------------------------------------------------------------------ caching


def test_a_second_run_reads_the_cache_and_changes_invalidate_it(rows, tmp_path):
    tower = siglip()
    counter = CallCounter(tower)
    first = extract_features(rows, FrameFeatureEncoder(tower, SQUARE32, sampler=2), "video", tmp_path)
    assert counter.calls == 4
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.iterdir()) == ["extraction.json", "frame_features.arrow"]
    again = extract_features(rows, FrameFeatureEncoder(tower, SQUARE32, sampler=2), "video", tmp_path)
    assert counter.calls == 4  # nothing encoded
    assert list(again["frame_features"]) == list(first["frame_features"])
    assert again.cache_files[0]["filename"] == str(folder / "frame_features.arrow")
    extract_features(rows, FrameFeatureEncoder(tower, SQUARE32, sampler=2), "video", tmp_path, overwrite=True)
    assert counter.calls == 8
    with torch.no_grad():
        tower.post_layernorm.bias.add_(0.5)  # same config, other weights: a new cache entry
    changed = extract_features(rows, FrameFeatureEncoder(tower, SQUARE32, sampler=2), "video", tmp_path)
    assert counter.calls == 12 and list(changed["frame_features"]) != list(first["frame_features"])
    extract_features(rows.select([0, 1]), FrameFeatureEncoder(tower, SQUARE32, sampler=2), "video", tmp_path)
    assert counter.calls == 14  # other rows: a new cache entry
    stat = os.stat(rows[0]["video"])
    os.utime(rows[0]["video"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed on disk
    extract_features(rows.select([0, 1]), FrameFeatureEncoder(tower, SQUARE32, sampler=2), "video", tmp_path)
    assert counter.calls == 16
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 4


def test_a_reused_encoder_sees_its_models_new_weights(rows, tmp_path):
    """One encoder object, its tower changed in place between two runs (a fine-tuning step, `load_state_dict`): the
    second run is a new cache entry with the new weights' features, not the first run's."""
    tower = siglip()
    encoder = FrameFeatureEncoder(tower, SQUARE32, sampler=2)
    counter = CallCounter(tower)
    first = extract_features(rows.select([0]), encoder, "video", tmp_path)
    extract_features(rows.select([0]), encoder, "video", tmp_path)
    assert counter.calls == 1  # unchanged weights: the cache
    tower.load_state_dict({**tower.state_dict(), "post_layernorm.bias": tower.post_layernorm.bias.detach() + 0.5})
    second = extract_features(rows.select([0]), encoder, "video", tmp_path)
    fresh = extract_features(rows.select([0]), FrameFeatureEncoder(tower, SQUARE32, sampler=2), "video", tmp_path)
    assert counter.calls == 2 and list(second["frame_features"]) == list(fresh["frame_features"])
    assert list(second["frame_features"]) != list(first["frame_features"])
    side = SideChannelEncoder(VideoSideChannel(siglip(), SQUARE32, fps=2.0))
    before = side.config_dict()["weights"]
    with torch.no_grad():
        side.extractor.encoder.post_layernorm.weight.mul_(2.0)
    assert side.config_dict()["weights"] != before


def test_two_processes_give_identical_features(rows, tmp_path):
    tower = siglip()
    encoder = FrameFeatureEncoder(tower, SQUARE32, sampler=3)
    single = extract_features(rows, encoder, "video", tmp_path / "one")
    double = extract_features(rows, encoder, "video", tmp_path / "two", num_proc=2, batch_size=1, devices=["cpu"])
    assert arrow_files(tmp_path / "two") == [
        "frame_features_00000_of_00002.arrow",
        "frame_features_00001_of_00002.arrow",
    ]
    assert list(double["frame_features"]) == list(single["frame_features"]) and list(double["id"]) == list(rows["id"])


def _crashing_encoder(log: Path, crash_flag: Path, crash_on: str, wait_for: Path):
    """A plain-function encoder that logs every call; while `crash_flag` exists, the process encoding `crash_on` waits
    for the other shard's cache file, then kills itself with SIGKILL (a crash mid-shard, no clean-up)."""

    def encode(path: str) -> np.ndarray:
        if crash_flag.exists() and path.endswith(crash_on):
            deadline = time.monotonic() + 20
            while not list(wait_for.rglob("frame_features_00000_of_00002.arrow")) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        with open(log, "a") as handle:
            handle.write(f"{Path(path).stem}\n")
        return np.full((2, 3), len(Path(path).stem), dtype=np.float32)

    return encode


def test_a_killed_run_resumes_with_only_the_unfinished_shard(rows, tmp_path):
    log, flag, cache = tmp_path / "calls.log", tmp_path / "crash", tmp_path / "cache"
    encode = _crashing_encoder(log, flag, "green.mp4", cache)  # green is row 3: shard 1 of 2 holds rows 2, 3
    flag.touch()
    with pytest.raises(RuntimeError, match="One of the subprocesses has abruptly died"):
        extract_features(rows, encode, "video", cache, num_proc=2, batch_size=1, fingerprint="toy-v1")
    assert arrow_files(cache) == ["frame_features_00000_of_00002.arrow"]  # shard 0 finished, shard 1 lost
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    assert len([p for p in folder.iterdir() if p.name.startswith("tmp")]) == 1  # the killed shard's partial file
    assert sorted(log.read_text().split()) == ["blue", "grey", "red"]  # rows 0, 1 and 2 were encoded
    flag.unlink()
    log.unlink()
    resumed = extract_features(rows, encode, "video", cache, batch_size=1, fingerprint="toy-v1")  # one process now
    assert log.read_text().split() == ["blue", "green"]  # only shard 1 (rows 2, 3) again
    assert arrow_files(cache) == ["frame_features_00000_of_00002.arrow", "frame_features_00001_of_00002.arrow"]
    assert list(resumed["frame_features_length"]) == [2, 2, 2, 2]
    assert [row[0][0] for row in resumed["frame_features"]] == [
        4.0,
        3.0,
        4.0,
        5.0,
    ]  # len(stem) of grey, red, blue, green


# ------------------------------------------------------------------------------------------------ side channels


def tiny_ast():
    torch.manual_seed(0)
    config = ASTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=16,
        frequency_stride=16, time_stride=16, max_length=208, num_mel_bins=32,
    )  # fmt: skip
    return ASTModel(config).eval(), ASTFeatureExtractor(num_mel_bins=32, max_length=208)


def test_audio_side_channel_from_the_track_or_the_rows_file(tmp_path):
    own = write_video(tmp_path / "own.mp4", "grey", seconds=3.0, tones=TONES)
    silent = write_video(tmp_path / "silent.mp4", "red", seconds=3.0)
    wav = str(write_tone_audio(tmp_path / "a.wav", TONES, 3.0))
    rows = datasets.Dataset.from_list(
        [manifest_row(0, own, side_channels=None), manifest_row(1, silent, side_channels={"audio": wav})]
    )
    extractor = AudioSideChannel(*tiny_ast(), batch_size=4)
    counter = CallCounter(extractor.encoder)
    out = extract_features(rows, SideChannelEncoder(extractor), "video", tmp_path / "cache", output_column="audio")
    assert counter.calls == 2  # one batch of 2 clips per row (the silent video's audio is the row's wav file)
    again = extract_features(rows, SideChannelEncoder(extractor), "video", tmp_path / "cache", output_column="audio")
    assert counter.calls == 2 and list(again["audio"]) == list(out["audio"])
    assert out.column_names[-3:] == ["audio", "audio_length", "audio_timestamps"]
    assert list(out["audio_length"]) == [2, 2]  # 2 s clips at 1 s stride over 3 s
    table = out.with_format("torch", columns=["audio", "audio_timestamps"])
    for i, expected in enumerate([extractor(own), extractor(silent, audio_path=wav)]):
        assert table[i]["audio"].shape == (2, 1, 1, 32)
        assert torch.equal(table[i]["audio"], expected.features)
        assert table[i]["audio_timestamps"].tolist() == expected.timestamps.tolist() == [1.0, 2.0]


def test_rows_of_a_loaded_manifest(tmp_path):
    """Through `load_manifest`: relative paths, a `side_channels` JSON column, a DatasetDict of splits."""
    write_video(tmp_path / "own.mp4", "grey", seconds=3.0, tones=TONES)
    write_video(tmp_path / "silent.mp4", "red", seconds=3.0)
    write_tone_audio(tmp_path / "a.wav", TONES, 3.0)
    path = tmp_path / "manifest.jsonl"
    write_manifest([manifest_row(0, "own.mp4"), {**manifest_row(1, "silent.mp4", side_channels={"audio": "a.wav"}),
                    "split": "validation"}], path)  # fmt: skip
    extractor = AudioSideChannel(*tiny_ast(), batch_size=4)
    out = extract_features(load_manifest(path, cache_dir=tmp_path / "hf"), SideChannelEncoder(extractor), "video",
                           tmp_path / "cache", output_column="audio")  # fmt: skip
    assert sorted(out) == ["train", "validation"] and "features" in out["train"].column_names  # the manifest's own
    expected = extractor(str(tmp_path / "silent.mp4"), audio_path=str(tmp_path / "a.wav")).features
    assert torch.equal(out["validation"].with_format("torch", columns=["audio"])[0]["audio"], expected)


def test_high_frame_rate_side_channel_in_float16(rows, videos, tmp_path):
    extractor = VideoSideChannel(siglip(), SQUARE32, fps=2.0)
    encoder = SideChannelEncoder(extractor)
    out = extract_features(rows.select([0, 1]), encoder, "video", tmp_path, output_column="hfr", dtype="float16")
    table = out.with_format("numpy", columns=["hfr"], dtype=None)
    expected = extractor(videos[1]).features.numpy()  # [2, 2, 2, 32]: 2 fps over 1 s, pooled to 2 x 2
    assert table[1]["hfr"].dtype == np.float16 and table[1]["hfr"].shape == expected.shape
    assert np.array_equal(table[1]["hfr"], expected.astype(np.float16))


def test_dataset_dict_is_processed_split_by_split(rows, tmp_path):
    encoder = FrameFeatureEncoder(siglip(), SQUARE32, sampler=2)
    splits = datasets.DatasetDict({"train": rows.select([0, 1, 2]), "validation": rows.select([3])})
    out = extract_features(splits, encoder, "video", tmp_path)
    whole = extract_features(rows, encoder, "video", tmp_path)
    assert isinstance(out, datasets.DatasetDict) and out["validation"].num_rows == 1
    assert list(out["train"]["frame_features"]) + list(out["validation"]["frame_features"]) == list(
        whole["frame_features"]
    )


def test_unique_media_keeps_the_first_row_of_each_video(videos):
    rows = datasets.Dataset.from_list([manifest_row(i, videos[i % 2]) for i in range(5)])
    assert list(unique_media(rows)["id"]) == ["toy/train/0", "toy/train/1"]


# ------------------------------------------------------------------------------------------------ errors


def test_bad_arguments(rows, tmp_path):
    encoder = FrameFeatureEncoder(siglip(), SQUARE32, sampler=2)

    def call(data=rows, enc=encoder, column="video", cache=tmp_path, **kwargs):
        return extract_features(data, enc, column, cache, **kwargs)

    cases = [
        (
            dict(column="clip"),
            ValueError,
            r"`column` must be one of the dataset's columns \[.*'video'.*\], got 'clip'",
        ),
        (dict(output_column="answers"), ValueError, r"already has column\(s\) \['answers'\]; pass another"),
        (dict(data=rows.select([])), ValueError, "`dataset` has no rows"),
        (dict(num_proc=0), ValueError, r"`num_proc` must be an int >= 1 or None \(worker processes\), got 0"),
        (dict(batch_size=0), ValueError, r"`batch_size` must be an int >= 1 \(rows per map batch\), got 0"),
        (dict(dtype="bfloat16"), ValueError, r"`dtype` must be one of \('float32', 'float16'\), got 'bfloat16'"),
        (dict(devices="cuda:0"), ValueError, "`devices` must be a non-empty list"),
        (dict(enc=lambda path: np.zeros(1), devices=["cpu"]), ValueError, "`devices` needs an encoder with a `.to"),
        (dict(data=rows.to_list()), TypeError, "`dataset` must be a datasets.Dataset or DatasetDict, got list"),
        (dict(enc="siglip"), TypeError, "`encoder` must be a FeatureEncoder or a function"),
        (dict(cache=tmp_path / "file.txt"), ValueError, "`cache_dir` must be a folder"),
    ]
    (tmp_path / "file.txt").write_text("x")
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            call(**kwargs)


def test_bad_rows_and_bad_encoder_outputs(rows, videos, tmp_path):
    encoder = FrameFeatureEncoder(siglip(), SQUARE32, sampler=2)
    missing = datasets.Dataset.from_list([manifest_row(0, videos[0]), manifest_row(1, None)])
    with pytest.raises(ValueError, match=r"row 1 \(id 'toy/train/1'\): `video` must be a media path, got None"):
        extract_features(missing, encoder, "video", tmp_path)
    gone = datasets.Dataset.from_list([manifest_row(0, str(tmp_path / "gone.mp4"))])
    with pytest.raises(MediaError, match="gone.mp4: no such file"):
        extract_features(gone, encoder, "video", tmp_path)
    outputs = [
        (lambda path: np.zeros((2, 3), dtype=np.int64), "features must be a float array"),
        (lambda path: np.zeros((0, 3), dtype=np.float32), r"\[T, ...\], T >= 1, got torch.float32 \(0, 3\)"),
        (lambda path: {"feats": np.zeros(2)}, r"returned keys \['feats'\]; a dict needs 'features'"),
        (lambda path: {"features": np.zeros((2, 1)), "timestamps": np.zeros(3)}, "`timestamps` must have T = 2"),
        (lambda path: np.zeros((1,)) if "grey" in path else {"features": np.zeros(1), "timestamps": [0.0]},
         r"row 1 \(id 'toy/train/1'\): the encoder returned"),
    ]  # fmt: skip
    for i, (fn, message) in enumerate(outputs):
        with pytest.raises(ValueError, match=message):
            extract_features(rows, fn, "video", tmp_path, fingerprint=f"bad-{i}")


def test_encoder_construction_errors():
    tower = siglip()
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        FrameFeatureEncoder(lambda x: x, SQUARE32)
    with pytest.raises(TypeError, match="`sampler` must be a FrameSampler or an int"):
        FrameFeatureEncoder(tower, SQUARE32, sampler="uniform")
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1 .*, got 0"):
        FrameFeatureEncoder(tower, SQUARE32, batch_size=0)
    with pytest.raises(ValueError, match="`video_method` must name a method of SiglipVisionModel, got 'encode'"):
        FrameFeatureEncoder(tower, SQUARE32, video_method="encode")
    with pytest.raises(ValueError, match="leave `feature_layer`, `grid` unset"):
        FrameFeatureEncoder(tower, SQUARE32, video_method="forward", grid=True)
    with pytest.raises(ValueError, match="`model` must be one of"):
        FrameFeatureEncoder(tower, "siglip")
    with pytest.raises(ValueError, match="a 'multiview' extractor needs `media`"):
        SideChannelEncoder(MultiviewSideChannel(tower, SQUARE32, num_frames=2))
    with pytest.raises(TypeError, match="`extractor` must be a side-channel extractor"):
        SideChannelEncoder(tower)
