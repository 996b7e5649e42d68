"""The JSONL manifest: row validation (defaults, normalisation, one test per user error), atomic writing, and the
round trip write_manifest -> load_manifest (types, None for absent fields, relative-path resolution, splits)."""

import json
import math
import os

import datasets
import pytest

from videoadapt.recipes.manifest import (
    MANIFEST_FIELDS,
    load_manifest,
    manifest_features,
    read_manifest_rows,
    validate_row,
    write_manifest,
)


def base_row(**changes) -> dict:
    row = {"id": "r0", "split": "train", "question": "what is shown?", "answers": ["a dog"], "video": "v/0.mp4"}
    row.update(changes)
    return {key: value for key, value in row.items() if value is not ...}


ROWS = [
    base_row(),
    {"id": "r1", "split": "validation", "task": "caption", "question": "", "answers": ["a cat sleeps", "a cat"],
     "features": "/abs/feats/1.pt", "timestamps": [1, 2.5],
     "side_channels": {"audio": "audio/1.wav", "depth": "s3://b/d"},
     "meta": {"type": [1, "x"], "nested": {"k": None, "b": True}}},
    {"id": "r2", "split": "test", "task": "dialogue", "question": "and then?", "answers": ["he leaves"],
     "video": "../shared/2.mp4", "features": "f/2.npy", "history": [["who enters?", "a man"], ["", ""]],
     "options": ["he stays", "he leaves"]},
    {"id": "r3", "split": "train", "task": "classification", "question": "which activity?", "answers": ["tea"],
     "video": "/data/3.avi", "meta": {}},
]  # fmt: skip


def expected_loaded(folder) -> dict[str, list[dict]]:
    """What load_manifest must return for ROWS written into `folder`, written out literally."""
    f = str(folder)
    empty = dict.fromkeys(MANIFEST_FIELDS)
    return {
        "train": [
            {**empty, "id": "r0", "split": "train", "task": "qa", "question": "what is shown?", "answers": ["a dog"],
             "video": f"{f}/v/0.mp4"},
            {**empty, "id": "r3", "split": "train", "task": "classification", "question": "which activity?",
             "answers": ["tea"], "video": "/data/3.avi", "meta": {}},
        ],
        "validation": [
            {**empty, "id": "r1", "split": "validation", "task": "caption", "question": "",
             "answers": ["a cat sleeps", "a cat"], "features": "/abs/feats/1.pt", "timestamps": [1.0, 2.5],
             "side_channels": {"audio": f"{f}/audio/1.wav", "depth": "s3://b/d"},
             "meta": {"type": [1, "x"], "nested": {"k": None, "b": True}}},
        ],
        "test": [
            {**empty, "id": "r2", "split": "test", "task": "dialogue", "question": "and then?",
             "answers": ["he leaves"],
             "video": f"{os.path.dirname(f)}/shared/2.mp4", "features": f"{f}/f/2.npy",
             "history": [["who enters?", "a man"], ["", ""]], "options": ["he stays", "he leaves"]},
        ],
    }  # fmt: skip


# --------------------------------------------------------------------------------------------- validate_row


def test_validate_row_fills_defaults_and_normalises():
    row = {"video": "x.mp4", "answers": ("yes",), "question": "q?", "split": "test", "id": "a", "features": None,
           "timestamps": (0, 3), "history": [("q0", "a0")], "meta": None}  # fmt: skip
    out = validate_row(row, "here")
    assert out == {"id": "a", "split": "test", "task": "qa", "question": "q?", "answers": ["yes"], "video": "x.mp4",
                   "timestamps": [0.0, 3.0], "history": [["q0", "a0"]]}  # fmt: skip
    assert list(out) == [name for name in MANIFEST_FIELDS if name in out]  # fields in schema order
    assert all(type(value) is float for value in out["timestamps"])
    assert validate_row(base_row(task="caption", question=""), "w")["question"] == ""  # '' is fine for captions
    assert validate_row(base_row(video=None, features="f.pt"), "w")["features"] == "f.pt"


BAD_ROWS = [
    # (changes to base_row, message fragment)
    ({"answer": "typo"}, r"unknown field\(s\) \['answer'\]"),
    ({"id": ...}, r"required field `id` is missing"),
    ({"question": None}, r"required field `question` is missing"),
    ({"id": ""}, r"`id` must be a non-empty string, got ''"),
    ({"id": 7}, r"`id` must be a non-empty string, got 7"),
    ({"split": "val"}, r"`split` must be one of \['train', 'validation', 'test'\], got 'val'; use 'validation'"),
    ({"task": "vqa"}, r"`task` must be one of \['qa', 'caption', 'classification', 'dialogue'\], got 'vqa'"),
    ({"question": "  "}, r"`question` must be non-empty for task 'qa' \('' is allowed only for 'caption'\)"),
    ({"question": 3}, r"`question` must be a string, got 3"),
    ({"answers": []}, r"`answers` must be a list of >= 1 non-empty strings, got \[\]"),
    ({"answers": "dog"}, r"`answers` must be a list of >= 1 non-empty strings, got 'dog'"),
    ({"answers": ["dog", " "]}, r"`answers` must be a list of >= 1 non-empty strings, got \['dog', ' '\]"),
    ({"video": ...}, r"needs `video` \(a media file\) or `features`"),
    ({"video": ""}, r"`video` must be a non-empty path string, got ''"),
    ({"features": 5}, r"`features` must be a non-empty path string, got 5"),
    ({"timestamps": [3, 1]}, r"`timestamps` must be \[start_s, end_s\] .* 0 <= start < end, got \[3, 1\]"),
    ({"timestamps": [-1, 1]}, r"`timestamps` must be .*, got \[-1, 1\]"),
    ({"timestamps": [2, 2]}, r"`timestamps` must be .*, got \[2, 2\]"),
    ({"timestamps": [0, 1, 2]}, r"`timestamps` must be .*, got \[0, 1, 2\]"),
    ({"timestamps": [False, 1]}, r"`timestamps` must be .*, got \[False, 1\]"),
    ({"timestamps": [0, math.inf]}, r"`timestamps` must be .*, got \[0, inf\]"),
    ({"side_channels": ["a.wav"]}, r"`side_channels` must be a dict \{name: path\}"),
    ({"side_channels": {"audio": ""}}, r"`side_channels` must be a dict .*, got \{'audio': ''\}"),
    (
        {"history": [["q only"]]},
        r"`history` must be a list of \[question, answer\] string pairs, got \[\['q only'\]\]",
    ),
    ({"history": "q a"}, r"`history` must be a list of .* pairs, got 'q a'"),
    ({"options": ["a cat", "a cow"]}, r"`options` must be a list that contains answers\[0\] = 'a dog'"),
    ({"options": ["a dog"]}, r"`options` must be a list of >= 2 non-empty strings, got \['a dog'\]"),
    ({"meta": {"x": float("nan")}}, r"`meta` must be a dict of JSON values"),
    ({"meta": {"x": object()}}, r"`meta` must be a dict of JSON values"),
    ({"meta": {1: "int key"}}, r"`meta` must be a dict of JSON values"),
    ({"meta": ["not", "a", "dict"]}, r"`meta` must be a dict of JSON values"),
]


@pytest.mark.parametrize("changes, message", BAD_ROWS)
def test_validate_row_names_where_field_rule_and_value(changes, message):
    with pytest.raises(ValueError, match=r"^m\.jsonl line 4: .*" + message):
        validate_row(base_row(**changes), "m.jsonl line 4")


def test_validate_row_rejects_non_objects():
    with pytest.raises(ValueError, match=r"^row 0: a manifest row must be a JSON object, got list"):
        validate_row(["id", "x"], "row 0")


# --------------------------------------------------------------------------------------------- write_manifest


def test_write_manifest_writes_normalised_rows_one_per_line(tmp_path):
    path = tmp_path / "sub" / "m.jsonl"
    assert write_manifest(iter(ROWS), path) == 4
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [validate_row(row, "x") for row in ROWS]
    assert lines[0] == ('{"id": "r0", "split": "train", "task": "qa", "question": "what is shown?", '
                        '"answers": ["a dog"], "video": "v/0.mp4"}')  # fmt: skip
    assert sorted(os.listdir(path.parent)) == ["m.jsonl"]  # no temporary file left behind
    assert list(read_manifest_rows(path)) == [validate_row(row, "x") for row in ROWS]


def test_write_manifest_keeps_non_ascii_text(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest([base_row(question="¿qué hace él?", answers=["料理"])], path)
    assert "¿qué hace él?" in path.read_text(encoding="utf-8")
    assert next(read_manifest_rows(path))["answers"] == ["料理"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([base_row(id="a"), base_row(id="b"), base_row(id="c", split="dev")], r"\.jsonl: row 2: `split` must be"),
        ([base_row(id="a"), base_row(id="b"), base_row(id="a")], r"row 2: duplicate `id` 'a' \(first at row 0\)"),
    ],
)
def test_write_manifest_is_atomic_on_a_bad_row(tmp_path, rows, message):
    path = tmp_path / "m.jsonl"
    path.write_text("previous content\n")

    def generate():  # rows arrive lazily: two good rows are written to the temporary file before the bad one
        yield from rows

    with pytest.raises(ValueError, match=message):
        write_manifest(generate(), path)
    assert path.read_text() == "previous content\n"  # untouched
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl"]  # the temporary file is gone
    with pytest.raises(ValueError, match=message):
        write_manifest(rows, tmp_path / "new.jsonl")
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl"]  # no partial new file either


# --------------------------------------------------------------------------------------------- load_manifest


def test_round_trip_types_splits_and_relative_paths(tmp_path, monkeypatch):
    folder = tmp_path / "manifests"
    write_manifest(ROWS, folder / "m.jsonl")
    loaded = load_manifest(folder / "m.jsonl", cache_dir=tmp_path / "cache")
    assert isinstance(loaded, datasets.DatasetDict)
    assert list(loaded) == ["train", "validation", "test"]
    expected = expected_loaded(folder)
    for split, dataset in loaded.items():
        assert dataset.features == manifest_features()
        assert dataset.split == split
        assert dataset.to_list() == expected[split]
    # one split at a time, from a relative manifest path
    monkeypatch.chdir(tmp_path)
    test = load_manifest("manifests/m.jsonl", split="test", cache_dir=tmp_path / "cache")
    assert isinstance(test, datasets.Dataset)
    assert test.to_list() == expected["test"]


def test_a_column_absent_from_every_row_still_loads_typed(tmp_path):
    write_manifest([base_row(id="a"), base_row(id="b", timestamps=[0, 1])], tmp_path / "m.jsonl")
    train = load_manifest(tmp_path / "m.jsonl", split="train", cache_dir=tmp_path / "cache", keep_in_memory=True)
    assert train.features == manifest_features()
    assert train["options"] == [None, None] and train["meta"] == [None, None] and train["history"] == [None, None]
    assert train["timestamps"] == [None, [0.0, 1.0]]


def test_reload_after_the_file_changes_reads_the_new_rows(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest([base_row(id="old")], path)
    assert load_manifest(path, split="train", cache_dir=tmp_path / "cache")["id"] == ["old"]
    write_manifest([base_row(id="new-1"), base_row(id="new-2")], path)
    assert load_manifest(path, split="train", cache_dir=tmp_path / "cache")["id"] == ["new-1", "new-2"]


def test_hand_written_manifest_with_blank_lines_and_nulls_loads(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('\n{"id": "a", "split": "test", "question": "q", "answers": ["x"], "video": "a.mp4", '
                    '"features": null, "task": null}\n\n')  # fmt: skip
    (row,) = load_manifest(path, split="test", cache_dir=tmp_path / "cache").to_list()
    assert row["task"] == "qa" and row["features"] is None and row["video"] == str(tmp_path / "a.mp4")


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"id": "a", "split": "train", "question": "q", "answers": ["x"], "video": "v"}\n{"id": "b",\n',
         r"m\.jsonl: line 2: not valid JSON"),
        ('{"id": "a", "split": "train", "question": "q", "answers": ["x"], "video": "v"}\n\n'
         '{"id": "b", "split": "train", "question": "q", "answers": ["x"], "video": "v", "vidoe": "w"}\n',
         r"m\.jsonl: line 3: unknown field\(s\) \['vidoe'\]"),
        ('{"id": "a", "split": "train", "question": "q", "answers": ["x"], "video": "v"}\n'
         '{"id": "a", "split": "test", "question": "q", "answers": ["x"], "video": "v"}\n',
         r"m\.jsonl: line 2: duplicate `id` 'a' \(first on line 1\)"),
        ("\n\n", r"holds no rows"),
    ],
)  # fmt: skip
def test_load_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "m.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_manifest(path, cache_dir=tmp_path / "cache")


def test_load_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`path` must be an existing manifest file, got '.*nope\.jsonl'"):
        load_manifest(tmp_path / "nope.jsonl")
    write_manifest([base_row()], tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match=r"`split` must be one of \['train', 'validation', 'test'\] .* got 'dev'"):
        load_manifest(tmp_path / "m.jsonl", split="dev")
    with pytest.raises(ValueError, match=r"`split` 'test' has no rows in .*; the file holds \['train'\]"):
        load_manifest(tmp_path / "m.jsonl", split="test")
