"""The REEF picture: layout, kept/dropped cells, relevance colours, merge strip, atomic saving, and `visualize_reef`
on a tiny REEF model (the CLI is tested in tests/test_cli_visualize.py)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from videoadapt.modeling_reef import ReefForConditionalGeneration, ReefVideoFeaturesOutput
from videoadapt.processors.processing_reef import ReefProcessor
from videoadapt.recipes.reef_visualize import (
    ReefPictureLayout,
    center,
    heat_color,
    merge_color,
    reef_picture,
    save_reef_picture,
    visualize_reef,
)
from videoadapt.testing.tiny_models import build_tiny_checkpoint


COLORS = [(200, 100, 50), (40, 180, 220), (250, 250, 250), (10, 90, 160), (120, 120, 0)]  # one flat colour per frame
OUTLINE, GREY, FULL_MERGE = (46, 230, 120), (236, 236, 236), (190, 20, 20)
SELECTED = [[0, 5, 10, 15, 3], [1, 2, 3, 4, 6], [15, 14, 13, 12, 0], [7, 8, 9, 10, 11], [0, 1, 2, 3, 4]]


def flat_frames(colors=COLORS, size=(48, 64)) -> np.ndarray:
    return np.stack([np.full((*size, 3), c, dtype=np.uint8) for c in colors])  # [T, H, W, 3]


def features(selected=SELECTED, merged=(-1, -1, 1, 0, -1), patches=16) -> ReefVideoFeaturesOutput:
    frames = len(selected) if selected is not None else len(merged)
    relevance = torch.arange(frames * patches, dtype=torch.float32).reshape(1, frames, patches) / (frames * patches)
    return ReefVideoFeaturesOutput(
        selected_indices=None if selected is None else torch.tensor([selected]),
        spatial_relevance=relevance,
        merged_slots=torch.tensor([merged]),
    )


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return image.getpixel(xy)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and far faster when other processes load the CPU); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint("instructblip_video", tmp_path_factory.mktemp("reef_visualize") / "ibv")


@pytest.fixture(scope="module")
def reef_dir(checkpoint, tmp_path_factory):
    """A saved tiny REEF model (8 of 16 tokens kept, bank of 2) with its processor (3 frames)."""
    torch.manual_seed(0)
    model = ReefForConditionalGeneration.from_pretrained(checkpoint, num_selected_tokens=8, memory_bank_length=2)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    qformer_tokenizer = AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer")
    processor = ReefProcessor.from_model(model, tokenizer, qformer_tokenizer, num_frames=3)
    out = tmp_path_factory.mktemp("reef_model")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------- the picture


def test_picture_size_and_kept_cells_outlined_dropped_cells_dimmed():
    image = reef_picture(flat_frames(), features(), num_slots=3)
    # 4 x 4 grid, 96 px thumbnails (24 px cells): width 96 + 5 * 96 + 4 * 6 + 12, height 44 + 2 * 96 + 2 * 22 + 3 * 10 + 40
    assert image.mode == "RGB" and image.size == (612, 350)
    assert pixel(image, (131, 79)) == COLORS[0]  # frame 0, token 5 (row 1, col 1): kept, centre untouched
    assert pixel(image, (120, 68)) == OUTLINE  # ... and its top-left corner is the outline
    assert pixel(image, (155, 79)) == (60, 30, 15)  # token 6 (row 1, col 2): dropped -> 0.3 x (200, 100, 50)
    layout = ReefPictureLayout.create(5, (4, 4), 3)
    assert layout.size == image.size
    for t, color in enumerate(COLORS):
        dimmed = tuple(round(c * 0.3) for c in color)
        for index in range(16):
            box = layout.patch_box(layout.frame_box(t), index)
            kept = index in SELECTED[t]
            assert pixel(image, center(box)) == (color if kept else dimmed), (t, index)
            assert pixel(image, box[:2]) == (OUTLINE if kept else dimmed), (t, index)


def test_relevance_cells_follow_the_colour_ramp():
    assert (heat_color(0.0), heat_color(1.0), heat_color(0.125), heat_color(7.0)) == (
        (0, 0, 4), (252, 255, 164), (44, 8, 57), (252, 255, 164)
    )  # fmt: skip
    maps = features()
    image = reef_picture(flat_frames(), maps, num_slots=3)
    layout = ReefPictureLayout.create(5, (4, 4), 3)
    for t in range(5):
        for index in range(16):
            value = maps.spatial_relevance[0, t, index].item()  # (16 t + index) / 80 in float32
            assert pixel(image, center(layout.patch_box(layout.relevance_box(t), index))) == heat_color(value)


def test_merge_strip_colours_the_slot_that_absorbed_its_neighbour():
    image = reef_picture(flat_frames(), features(merged=(-1, -1, 1, 0, 2)), num_slots=3)
    layout = ReefPictureLayout.create(5, (4, 4), 3)
    expected = {(2, 1), (3, 0), (4, 2)}
    for step in range(5):
        for slot in range(3):
            want = FULL_MERGE if (step, slot) in expected else GREY
            assert pixel(image, center(layout.merge_box(step, slot))) == want, (step, slot)
    assert pixel(image, (96 + 2 * 102 + 40, 44 + 192 + 44 + 10 + 4)) == FULL_MERGE  # step 2, slot 1, by hand
    # per-position merges ([T, K]): the colour is the share of positions that merged the slot
    per_position = [[-1] * 4, [0, 0, 0, 1], [1, 1, 1, 1]]
    picture = reef_picture(flat_frames(COLORS[:3]), features(selected=None, merged=per_position), num_slots=2)
    layout = ReefPictureLayout.create(3, (4, 4), 2)
    assert merge_color(0.75) == (206, 68, 64) and merge_color(0.25) == (239, 166, 152)
    assert [pixel(picture, center(layout.merge_box(1, s))) for s in range(2)] == [(206, 68, 64), (239, 166, 152)]
    assert [pixel(picture, center(layout.merge_box(2, s))) for s in range(2)] == [GREY, FULL_MERGE]
    assert [pixel(picture, center(layout.merge_box(0, s))) for s in range(2)] == [GREY, GREY]


def test_without_filtering_every_token_is_kept_and_nothing_is_outlined():
    image = reef_picture(flat_frames(COLORS[:3]), features(selected=None, merged=(-1, 0, -1)))
    layout = ReefPictureLayout.create(3, (4, 4), 1)  # num_slots defaults to the highest merged slot + 1
    assert image.size == layout.size == (480, 44 + 2 * 96 + 2 * 22 + 10 + 40)  # the minimum width, one slot row
    for t in range(3):
        for index in range(16):
            box = layout.patch_box(layout.frame_box(t), index)
            assert pixel(image, center(box)) == pixel(image, box[:2]) == COLORS[t]


def test_rectangular_patch_grid_and_bad_inputs():
    rect = ReefVideoFeaturesOutput(
        spatial_relevance=torch.rand(1, 2, 12), selected_indices=torch.tensor([[[0], [11]]])
    )
    frames = flat_frames(COLORS[:2])
    with pytest.raises(ValueError, match=r"12 spatial tokens per frame do not form a square grid; pass `patch_grid"):
        reef_picture(frames, rect)
    image = reef_picture(frames, rect, patch_grid=(3, 4))  # 24 px cells: 96 x 72 thumbnails
    layout = ReefPictureLayout.create(2, (3, 4), 1)
    assert layout.thumb_size == (96, 72) and image.size == layout.size == (480, 44 + 144 + 44 + 10 + 40)
    assert pixel(image, center(layout.patch_box(layout.frame_box(1), 11))) == COLORS[1]  # last cell kept
    with pytest.raises(ValueError, match=r"`patch_grid` \(4, 4\) has 16 cells but the features have 12"):
        reef_picture(frames, rect, patch_grid=4)
    with pytest.raises(ValueError, match=r"`frames` must be uint8 \[T, H, W, 3\]"):
        reef_picture(frames.astype(np.float32), features())
    with pytest.raises(ValueError, match=r"`frames` has 2 frames but the features have 5 steps"):
        reef_picture(frames, features())
    with pytest.raises(ValueError, match=r"`sample` must be in \[0, 0\]"):
        reef_picture(flat_frames(), features(), sample=1)
    with pytest.raises(ValueError, match=r"slots in \[0, 1\] \(`num_slots` = 2\), got values in \[-1, 2\]"):
        reef_picture(flat_frames(), features(merged=(-1, -1, 2, 0, -1)), num_slots=2)
    with pytest.raises(ValueError, match=r"patch indices in \[0, 16\)"):
        reef_picture(flat_frames(), features(selected=[[16]] * 5))
    with pytest.raises(ValueError, match=r"`features.spatial_relevance` is None"):
        reef_picture(flat_frames(), ReefVideoFeaturesOutput())


def test_save_is_atomic(tmp_path, monkeypatch):
    path = save_reef_picture(flat_frames(), features(), tmp_path / "sub" / "picture.png", num_slots=3)
    assert path == tmp_path / "sub" / "picture.png"
    expected = np.asarray(reef_picture(flat_frames(), features(), num_slots=3))
    with Image.open(path) as saved:  # PNG is lossless: the file holds exactly the picture
        assert np.array_equal(np.asarray(saved.convert("RGB")), expected)
    path.write_bytes(b"an earlier picture")

    def fail_halfway(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_reef_picture(flat_frames(), features(), path, num_slots=3)
    assert path.read_bytes() == b"an earlier picture"  # untouched, and no temporary file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["picture.png"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown file extension"):
        save_reef_picture(flat_frames(), features(), tmp_path / "picture.xyz", num_slots=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


# --------------------------------------------------------------------------------------------- the model end to end


def test_visualize_reef_runs_the_model_in_eval_mode_and_restores_its_mode(reef_dir, tmp_path):
    model = ReefForConditionalGeneration.from_pretrained(reef_dir).train()
    processor = ReefProcessor.from_pretrained(reef_dir)
    frames = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    result = visualize_reef(
        model, processor, frames, "what color is the circle?", tmp_path / "p.png", max_new_tokens=2
    )
    assert model.training and result.path == tmp_path / "p.png" and isinstance(result.answer, str)
    relevance, selected = result.features.spatial_relevance, result.features.selected_indices
    assert selected.shape == (1, 4, 8)  # eval: hard top-K of the relevance, sorted by position
    assert torch.equal(selected, relevance.topk(8, dim=-1).indices.sort(-1).values)
    merged = result.features.merged_slots[0].tolist()  # bank of 2: one merge, after step 2 (none after the last)
    assert merged[:2] == [-1, -1] and merged[2] in (0, 1) and merged[3] == -1
    with Image.open(result.path) as image:
        assert image.size == ReefPictureLayout.create(4, (4, 4), 2).size
    with pytest.raises(ValueError, match="`num_frames` applies to a video path"):
        visualize_reef(model, processor, frames, "q", tmp_path / "q.png", num_frames=3)
