"""The DynFocus picture: layout, event bars, key-frame outlines, the S-DPC cluster panel, atomic saving, and
`visualize_dynfocus` on a tiny DynFocus model (the CLI is tested in tests/test_cli_visualize_dynfocus.py)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration, DynFocusVideoFeaturesOutput
from videoadapt.processors.processing_dynfocus import DynFocusProcessor
from videoadapt.recipes.dynfocus_visualize import (
    DynFocusPictureLayout,
    cluster_color,
    dynfocus_picture,
    event_color,
    faded,
    save_dynfocus_picture,
    visualize_dynfocus,
)
from videoadapt.recipes.visualize_utils import center
from videoadapt.testing.tiny_models import build_tiny_checkpoint


COLORS = [(200, 100, 50), (40, 180, 220), (250, 250, 250), (10, 90, 160), (120, 120, 0), (0, 0, 0), (90, 30, 200)]
EVENTS = [0, 0, 1, 1, 1, 2, 3]  # T-DPC event of each frame
KEY_FRAMES = [1, 3, 6]  # centres of the kept events 0, 1 and 3; event 2 is dropped
QUADRANTS = [0, 0, 1, 1] * 2 + [2, 2, 3, 3] * 2  # 4 x 4 patches, one cluster per quadrant
OUTLINE, BOUNDARY, WHITE = (0, 0, 0), (20, 20, 20), (255, 255, 255)
# the tiny vision tower has 4 x 4 patches (as tests/models/dynfocus/test_modeling_dynfocus.py); K = 2 of L = 4 events
TINY = dict(num_pooled_tokens=4, spatial_clusters=[6, 3], spatial_knn=[3, 2], num_events=4, event_knn=2)


def flat_frames(colors=COLORS, size=(48, 64)) -> np.ndarray:
    return np.stack([np.full((*size, 3), c, dtype=np.uint8) for c in colors])  # [T, H, W, 3]


def features(events=EVENTS, key_frames=KEY_FRAMES, clusters=QUADRANTS) -> DynFocusVideoFeaturesOutput:
    return DynFocusVideoFeaturesOutput(
        event_assign=torch.tensor([events]),
        key_frames=torch.tensor([key_frames]),
        spatial_assign=torch.tensor([[clusters] * len(events)]),
    )


def mix(cluster: int, color: tuple[int, int, int]) -> tuple[int, int, int]:
    """60% cluster colour over 40% frame colour."""
    return tuple(int(np.round(0.6 * c + 0.4 * f)) for c, f in zip(cluster_color(cluster), color))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and far faster when other processes load the CPU); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------- the picture


def test_picture_size_thumbnails_key_frame_outlines_and_event_bars():
    image = dynfocus_picture(flat_frames(), features(), columns=4)
    # 2 rows of 4 x 64 px thumbnails; 192 px panels (48 px cells): width max(64 + 4 * 64 + 3 * 6 + 12,
    # 64 + 2 * 192 + 16 + 12, 480); height 48 + 2 * (64 + 4 + 12 + 30) + 16 + 192 + 40
    assert image.mode == "RGB" and image.size == (480, 516)
    layout = DynFocusPictureLayout.create(7, (4, 4), columns=4)
    assert layout.size == image.size and layout.num_rows == 2 and layout.thumb_size == (64, 64)
    assert layout.frame_box(5) == (64 + 70, 48 + 110, 64 + 70 + 64, 48 + 110 + 64)  # row 1, column 1
    assert image.getpixel((64 + 70 - 1, 48 + 30)) == OUTLINE  # key frame 1: outlined, left of its thumbnail
    assert image.getpixel((64 + 70 + 32, 48 + 64 + 4 + 6)) == (230, 69, 69)  # its bar: event 0, kept, literal
    assert image.getpixel((64 + 70 + 32, 48 + 110 + 64 + 4 + 6)) == faded(event_color(2)) != event_color(2)
    assert faded((230, 69, 69)) == (246, 190, 190)
    for t, color in enumerate(COLORS):
        box = layout.frame_box(t)
        assert image.getpixel(center(box)) == color, t
        key = t in KEY_FRAMES
        for xy in ((box[0] - 1, center(box)[1]), (box[0] - 3, box[1] - 3), (box[2] + 2, box[3]), (box[2], box[3] + 2)):
            assert image.getpixel(xy) == (OUTLINE if key else WHITE), (t, xy)
        assert image.getpixel((center(box)[0], box[1] - 4)) == WHITE  # the outline is 3 px wide
        kept = EVENTS[t] in (0, 1, 3)
        want = event_color(EVENTS[t]) if kept else faded(event_color(EVENTS[t]))
        x0, y0, x1, y1 = layout.event_box(t)
        assert image.getpixel(center(layout.event_box(t))) == image.getpixel((x0, y0)) == want, t
        assert image.getpixel((x1 - 1, y1 - 1)) == want and image.getpixel((x0, y1)) == WHITE, t


def test_cluster_panel_colours_each_patch_by_its_cluster_with_lines_between_clusters():
    image = dynfocus_picture(flat_frames(), features(), columns=4)  # default panel frame: the first key frame, 1
    layout = DynFocusPictureLayout.create(7, (4, 4), columns=4)
    assert image.getpixel(center(layout.frame_panel_box())) == COLORS[1]
    assert mix(0, COLORS[1]) == (63, 217, 110)  # 0.6 * (78, 242, 36) + 0.4 * (40, 180, 220), by hand
    panel = layout.cluster_panel_box()
    assert panel == (64 + 192 + 16, 48 + 220 + 16, 64 + 2 * 192 + 16, 48 + 220 + 16 + 192)
    for index, cluster in enumerate(QUADRANTS):
        box = layout.patch_box(panel, index)
        row, col = divmod(index, 4)
        assert image.getpixel(center(box)) == mix(cluster, COLORS[1]), index
        # a line on the first pixel column (row) of a cell whose left (upper) neighbour is another cluster
        left_edge = image.getpixel((box[0], center(box)[1]))
        assert left_edge == (BOUNDARY if col == 2 else mix(cluster, COLORS[1])), index
        top_edge = image.getpixel((center(box)[0], box[1]))
        assert top_edge == (BOUNDARY if row == 2 else mix(cluster, COLORS[1])), index
    # another frame for the panels; one cluster everywhere: no lines
    other = dynfocus_picture(flat_frames(), features(clusters=[5] * 16), frame=4, columns=4)
    assert other.getpixel(center(layout.frame_panel_box())) == COLORS[4]
    for index in range(16):
        box = layout.patch_box(panel, index)
        assert other.getpixel(box[:2]) == other.getpixel(center(box)) == mix(5, COLORS[4]), index
    assert cluster_color(-1) == event_color(-1) == (200, 200, 200)  # unassigned patches / frames


def test_one_row_rectangular_grid_and_bad_inputs():
    rect = DynFocusVideoFeaturesOutput(
        event_assign=torch.tensor([[0, 1, 1]]),
        key_frames=torch.tensor([[2]]),
        spatial_assign=torch.tensor([[list(range(12))] * 3]),
    )
    frames = flat_frames(COLORS[:3])
    with pytest.raises(ValueError, match=r"12 spatial tokens per frame do not form a square grid; pass `patch_grid"):
        dynfocus_picture(frames, rect)
    image = dynfocus_picture(frames, rect, patch_grid=(3, 4))  # 64 x 48 thumbnails, 48 px cells: 192 x 144 panels
    layout = DynFocusPictureLayout.create(3, (3, 4))
    assert (layout.columns, layout.thumb_size, layout.panel_size) == (3, (64, 48), (192, 144))
    assert image.size == layout.size == (480, 48 + 48 + 4 + 12 + 30 + 16 + 144 + 40)
    assert image.getpixel(center(layout.frame_panel_box())) == COLORS[2]  # the key frame
    last = layout.patch_box(layout.cluster_panel_box(), 11)
    assert image.getpixel(center(last)) == mix(11, COLORS[2])
    with pytest.raises(ValueError, match=r"`patch_grid` \(4, 4\) has 16 cells but the features have 12"):
        dynfocus_picture(frames, rect, patch_grid=4)
    with pytest.raises(ValueError, match=r"`frames` must be uint8 \[T, H, W, 3\]"):
        dynfocus_picture(frames.astype(np.float32), rect, patch_grid=(3, 4))
    with pytest.raises(ValueError, match=r"`frames` has 3 frames but the features have 7"):
        dynfocus_picture(frames, features())
    with pytest.raises(ValueError, match=r"`sample` must be in \[0, 0\]"):
        dynfocus_picture(flat_frames(), features(), sample=1)
    with pytest.raises(ValueError, match=r"`frame` must be a frame index in \[0, 6\], got 7"):
        dynfocus_picture(flat_frames(), features(), frame=7)
    with pytest.raises(
        ValueError, match=r"`features.key_frames\[0\]` must be frame indices in \[0, 7\), got \[1, 9\]"
    ):
        dynfocus_picture(flat_frames(), features(key_frames=[1, 9]))
    with pytest.raises(ValueError, match=r"`columns` must be an integer >= 1"):
        dynfocus_picture(flat_frames(), features(), columns=0)
    wrong = features()
    wrong.spatial_assign = None
    with pytest.raises(ValueError, match=r"`features.spatial_assign` is None"):
        dynfocus_picture(flat_frames(), wrong)
    wrong.spatial_assign = torch.zeros(1, 6, 16, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`features.spatial_assign\[0\]` must be \[T = 7, N\]"):
        dynfocus_picture(flat_frames(), wrong)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = save_dynfocus_picture(flat_frames(), features(), tmp_path / "sub" / "picture.png", columns=4)
    assert path == tmp_path / "sub" / "picture.png"
    expected = np.asarray(dynfocus_picture(flat_frames(), features(), columns=4))
    with Image.open(path) as saved:  # PNG is lossless: the file holds exactly the picture
        assert np.array_equal(np.asarray(saved.convert("RGB")), expected)
    path.write_bytes(b"an earlier picture")

    def fail_halfway(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_dynfocus_picture(flat_frames(), features(), path)
    assert path.read_bytes() == b"an earlier picture"  # untouched, and no temporary file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["picture.png"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown file extension"):
        save_dynfocus_picture(flat_frames(), features(), tmp_path / "picture.xyz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


# --------------------------------------------------------------------------------------------- the model end to end


def test_visualize_dynfocus_runs_the_model_in_eval_mode_and_restores_its_mode(tmp_path_factory, tmp_path):
    checkpoint = build_tiny_checkpoint("instructblip_video", tmp_path_factory.mktemp("dynfocus_visualize") / "ibv")
    torch.manual_seed(0)
    model = DynFocusForConditionalGeneration.from_pretrained(checkpoint, **TINY, event_keep_ratio=0.5).train()
    tokenizers = (
        AutoTokenizer.from_pretrained(checkpoint),
        AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer"),
    )
    processor = DynFocusProcessor.from_model(model, *tokenizers, max_frames=6)
    frames = np.random.default_rng(0).integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)  # cut to max_frames = 6
    result = visualize_dynfocus(model, processor, frames, "what is moving?", tmp_path / "p.png", max_new_tokens=2)
    assert model.training and result.path == tmp_path / "p.png" and isinstance(result.answer, str)
    out = result.features
    assert out.event_assign.shape == (1, 6) and out.spatial_assign.shape == (1, 6, 16)
    chosen = out.event_scores.topk(2, dim=1).indices.sort(1).values  # eval: the hard top-K of the scores
    assert torch.equal(out.key_frames, out.event_centers.gather(1, chosen))
    assert result.frame == int(out.key_frames[0, 0])  # the panels show the first key frame
    expected = dynfocus_picture(frames[:6], out, title="x")
    with Image.open(result.path) as image:
        assert image.size == expected.size == DynFocusPictureLayout.create(6, (4, 4)).size
        below_title = (0, 30, *image.size)
        assert np.array_equal(
            np.asarray(image.convert("RGB").crop(below_title)), np.asarray(expected.crop(below_title))
        )
    again = visualize_dynfocus(model, processor, frames, "q", tmp_path / "q.png", frame=5, max_new_tokens=0)
    assert again.answer is None and again.frame == 5
    with pytest.raises(ValueError, match=r"`max_new_tokens` must be an integer >= 0"):
        visualize_dynfocus(model, processor, frames, "q", tmp_path / "r.png", max_new_tokens=-1)
    with pytest.raises(ValueError, match=r"`frame` must be a frame index in \[0, 5\], got 6"):
        visualize_dynfocus(model, processor, frames, "q", tmp_path / "r.png", frame=6, max_new_tokens=0)
    assert not (tmp_path / "r.png").exists() and model.training
