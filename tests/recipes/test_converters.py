"""Dataset converters: each one on a tiny hand-written sample in its dataset's published annotation layout must give
exactly the expected manifest rows; malformed input fails with the file, record and fix; documented skips log a count;
`convert` writes a manifest that loads back with the media paths resolved."""

import json
import logging

import pytest

from videoadapt.recipes.converters import (
    BREAKFAST_TEST_PERSONS,
    CONVERTERS,
    convert,
    convert_activitynet_qa,
    convert_avsd,
    convert_breakfast,
    convert_llava_video,
    convert_msvd_qa,
    convert_music_avqa,
    convert_scanqa,
    convert_sqa3d,
    convert_youcook2,
    frames_to_seconds,
    strip_media_placeholders,
)
from videoadapt.recipes.manifest import load_manifest, validate_row


def dump(path, payload):
    """Write a JSON annotation file (the samples below are literal data in each dataset's published layout)."""
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def skipped_counts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]


# --------------------------------------------------------------------------------------------- MSVD-QA

MSVD_MAPPING = "-Ab12cd34Ef_10_18 vid1\nzYx98_wv76U_3_9 vid2\n\n"
MSVD_QA = [
    {"answer": "dog", "id": 0, "question": "what is running across the yard?", "video_id": 1},
    {"answer": "slice", "id": 1, "question": "what does the woman do to the tomato?", "video_id": 2},
    {"answer": "grass", "id": 2, "question": "what is the dog running on?", "video_id": 1},
]


@pytest.fixture
def msvd(tmp_path):
    (tmp_path / "youtube_mapping.txt").write_text(MSVD_MAPPING)
    return dump(tmp_path / "train_qa.json", MSVD_QA), tmp_path / "youtube_mapping.txt"


def test_msvd_qa(msvd):
    rows = convert_msvd_qa(*msvd, "/data/msvd/YouTubeClips", "train")
    assert rows == [
        {"id": "msvd_qa/train/0", "split": "train", "task": "qa", "question": "what is running across the yard?",
         "answers": ["dog"], "video": "/data/msvd/YouTubeClips/-Ab12cd34Ef_10_18.avi",
         "meta": {"video_id": 1, "clip": "-Ab12cd34Ef_10_18"}},
        {"id": "msvd_qa/train/1", "split": "train", "task": "qa", "question": "what does the woman do to the tomato?",
         "answers": ["slice"], "video": "/data/msvd/YouTubeClips/zYx98_wv76U_3_9.avi",
         "meta": {"video_id": 2, "clip": "zYx98_wv76U_3_9"}},
        {"id": "msvd_qa/train/2", "split": "train", "task": "qa", "question": "what is the dog running on?",
         "answers": ["grass"], "video": "/data/msvd/YouTubeClips/-Ab12cd34Ef_10_18.avi",
         "meta": {"video_id": 1, "clip": "-Ab12cd34Ef_10_18"}},
    ]  # fmt: skip


def test_media_layout_templates_for_features_and_side_channels(msvd):
    rows = convert_msvd_qa(*msvd, None, "validation", features_template="feats/{clip}.pt",
                           side_channels={"audio": "audio/vid{video_id}.wav"})  # fmt: skip
    assert [(r["id"], r.get("video"), r["features"], r["side_channels"]) for r in rows] == [
        ("msvd_qa/validation/0", None, "feats/-Ab12cd34Ef_10_18.pt", {"audio": "audio/vid1.wav"}),
        ("msvd_qa/validation/1", None, "feats/zYx98_wv76U_3_9.pt", {"audio": "audio/vid2.wav"}),
        ("msvd_qa/validation/2", None, "feats/-Ab12cd34Ef_10_18.pt", {"audio": "audio/vid1.wav"}),
    ]
    unknown = r"`video_template` = '\{name\}\.mp4' uses unknown field\(s\) \['name'\]; this converter provides "
    with pytest.raises(ValueError, match=unknown + r"\['clip', 'video_id', 'question_id'\]"):
        convert_msvd_qa(*msvd, "v", "train", video_template="{name}.mp4")
    with pytest.raises(ValueError, match=r"`video_root` is None and `features_template` is None"):
        convert_msvd_qa(*msvd, None, "train")
    with pytest.raises(ValueError, match=r"`split` must be one of \['train', 'validation', 'test'\], got 'val'"):
        convert_msvd_qa(*msvd, "v", "val")


@pytest.mark.parametrize(
    "records, mapping, message",
    [
        ([{"answer": "dog", "id": 5, "question": "q?", "video_id": 3}], MSVD_MAPPING,
         r"train_qa\.json: record 0 \(id 5\): video_id 3 \('vid3'\) is not in `mapping_path`; pass the "
         r"youtube_mapping\.txt"),
        ([MSVD_QA[0], {"answer": " ", "id": 6, "question": "q?", "video_id": 1}], MSVD_MAPPING,
         r"train_qa\.json: record 1 \(id 6\): the answer is empty; fix or drop the record"),
        ([{"id": 7, "question": "q?", "video_id": 1}], MSVD_MAPPING,
         r"record 0 \(id 7\): field `answer` must be a str, got None"),
        ([{"answer": "dog", "id": "8", "question": "q?", "video_id": 1}], MSVD_MAPPING,
         r"record 0 \(id '8'\): field `id` must be a int, got '8'"),
        ({"answer": "dog"}, MSVD_MAPPING, r"`qa_path` .* must hold a JSON list of records, got dict"),
        (MSVD_QA, "-Ab12cd34Ef_10_18 vid1\nbroken-line\n",
         r"`mapping_path` line 2: expected '<clip name> vid<N>', got 'broken-line'"),
    ],
)  # fmt: skip
def test_msvd_qa_errors(tmp_path, records, mapping, message):
    (tmp_path / "youtube_mapping.txt").write_text(mapping)
    with pytest.raises(ValueError, match=message):
        convert_msvd_qa(dump(tmp_path / "train_qa.json", records), tmp_path / "youtube_mapping.txt", "v", "train")


def test_missing_annotation_files(tmp_path, msvd):
    with pytest.raises(ValueError, match=r"`qa_path` must be an existing file, got '.*val_qa\.json'; download"):
        convert_msvd_qa(tmp_path / "val_qa.json", msvd[1], "v", "validation")
    with pytest.raises(ValueError, match=r"`mapping_path` must be an existing file"):
        convert_msvd_qa(msvd[0], tmp_path / "mapping.txt", "v", "train")
    (tmp_path / "bad.json").write_text('[{"answer": "dog",')
    with pytest.raises(ValueError, match=r"`qa_path` '.*bad\.json' is not valid JSON \(.*line 1\); re-download"):
        convert_msvd_qa(tmp_path / "bad.json", msvd[1], "v", "train")


# --------------------------------------------------------------------------------------------- ActivityNet-QA

ANET_Q = [
    {"video_name": "Qx7Lp0aB3cD", "question": "is the person in the video indoors", "question_id": "v_Qx7Lp0aB3cD_0"},
    {"video_name": "Qx7Lp0aB3cD", "question": "what color is the ball", "question_id": "v_Qx7Lp0aB3cD_1"},
    {"video_name": "mN2oP4qR6sT", "question": "what does the man do after jumping", "question_id": "v_mN2oP4qR6sT_4"},
]
ANET_A = [  # answers need not follow the question order: the join is on question_id
    {"answer": "red", "type": 4, "question_id": "v_Qx7Lp0aB3cD_1"},
    {"answer": "no", "type": 3, "question_id": "v_Qx7Lp0aB3cD_0"},
    {"answer": "fall down", "type": 2, "question_id": "v_mN2oP4qR6sT_4"},
]


def test_activitynet_qa(tmp_path):
    rows = convert_activitynet_qa(dump(tmp_path / "val_q.json", ANET_Q), dump(tmp_path / "val_a.json", ANET_A),
                                  "anet/videos", "validation")  # fmt: skip
    assert rows == [
        {"id": "activitynet_qa/validation/v_Qx7Lp0aB3cD_0", "split": "validation", "task": "qa",
         "question": "is the person in the video indoors", "answers": ["no"], "video": "anet/videos/v_Qx7Lp0aB3cD.mp4",
         "meta": {"video_name": "Qx7Lp0aB3cD", "type": 3}},
        {"id": "activitynet_qa/validation/v_Qx7Lp0aB3cD_1", "split": "validation", "task": "qa",
         "question": "what color is the ball", "answers": ["red"], "video": "anet/videos/v_Qx7Lp0aB3cD.mp4",
         "meta": {"video_name": "Qx7Lp0aB3cD", "type": 4}},
        {"id": "activitynet_qa/validation/v_mN2oP4qR6sT_4", "split": "validation", "task": "qa",
         "question": "what does the man do after jumping", "answers": ["fall down"],
         "video": "anet/videos/v_mN2oP4qR6sT.mp4", "meta": {"video_name": "mN2oP4qR6sT", "type": 2}},
    ]  # fmt: skip


@pytest.mark.parametrize(
    "questions, answers, message",
    [
        (ANET_Q, ANET_A[:2], r"val_q\.json: record 2 \(id 'v_mN2oP4qR6sT_4'\): question_id 'v_mN2oP4qR6sT_4' has no "
                             r"answer in `answers_path`; pass the validation answers file"),
        (ANET_Q[:2], ANET_A, r"`answers_path` has 1 answer\(s\) whose question is not in `questions_path` "
                             r"\(e\.g\. \['v_mN2oP4qR6sT_4'\]\); pass files of the same split"),
        (ANET_Q + ANET_Q[:1], ANET_A,
         r"record 3 \(id 'v_Qx7Lp0aB3cD_0'\): question_id 'v_Qx7Lp0aB3cD_0' appears twice"),
        (ANET_Q, [*ANET_A[:2], {"answer": "", "type": 2, "question_id": "v_mN2oP4qR6sT_4"}],
         r"val_a\.json: record 2 \(id 'v_mN2oP4qR6sT_4'\): the answer is empty"),
    ],
)  # fmt: skip
def test_activitynet_qa_errors(tmp_path, questions, answers, message):
    with pytest.raises(ValueError, match=message):
        convert_activitynet_qa(dump(tmp_path / "val_q.json", questions), dump(tmp_path / "val_a.json", answers),
                               "v", "validation")  # fmt: skip


# --------------------------------------------------------------------------------------------- AVSD

AVSD_TRAIN = {"dialogs": [
    {"image_id": "K3Q9Z", "summary": "A man tidies a shelf, then sits on the sofa.",
     "caption": "A person puts books on a shelf and sits down.",
     "dialog": [{"question": "how many people are in the video ?", "answer": "just one man ."},
                {"question": "what is he holding ?", "answer": "a few books ."},
                {"question": "does he say anything ?", "answer": "no , there is no speech ."}]},
    {"image_id": "7BTQ2", "summary": "A woman drinks from a cup.", "caption": "A woman drinks.",
     "dialog": [{"question": "is it daytime ?", "answer": "yes , it is bright ."}]},
]}  # fmt: skip
AVSD_TEST = {"dialogs": [
    {"image_id": "QW3RT", "summary": "", "caption": "A person opens a door.",
     "dialog": [{"question": "who is there ?", "answer": "a young woman ."},
                {"question": "what does she do next ?", "answer": "__UNDISCLOSED__"}]},
    {"image_id": "ZX9CV", "summary": "", "caption": "A man laughs.",
     "dialog": [{"question": "is he alone ?", "answer": "__UNDISCLOSED__"}]},
]}  # fmt: skip
AVSD_REFS = {
    "images": [{"id": 0, "name": "QW3RT_1"}],
    "annotations": [
        {"image_id": 0, "caption": "she walks out ."},
        {"image_id": 0, "caption": "she leaves the room ."},
    ],
}


def test_avsd_one_row_per_turn_with_history(tmp_path):
    rows = convert_avsd(dump(tmp_path / "train_set4DSTC7-AVSD.json", AVSD_TRAIN), "Charades_v1", "train")
    meta = {"image_id": "K3Q9Z", "summary": "A man tidies a shelf, then sits on the sofa.",
            "caption": "A person puts books on a shelf and sits down."}  # fmt: skip
    turn0 = ["how many people are in the video ?", "just one man ."]
    turn1 = ["what is he holding ?", "a few books ."]
    assert rows == [
        {"id": "avsd/train/K3Q9Z/0", "split": "train", "task": "dialogue", "question": turn0[0], "answers": [turn0[1]],
         "video": "Charades_v1/K3Q9Z.mp4", "history": [], "meta": {**meta, "turn": 0}},
        {"id": "avsd/train/K3Q9Z/1", "split": "train", "task": "dialogue", "question": turn1[0], "answers": [turn1[1]],
         "video": "Charades_v1/K3Q9Z.mp4", "history": [turn0], "meta": {**meta, "turn": 1}},
        {"id": "avsd/train/K3Q9Z/2", "split": "train", "task": "dialogue", "question": "does he say anything ?",
         "answers": ["no , there is no speech ."], "video": "Charades_v1/K3Q9Z.mp4", "history": [turn0, turn1],
         "meta": {**meta, "turn": 2}},
        {"id": "avsd/train/7BTQ2/0", "split": "train", "task": "dialogue", "question": "is it daytime ?",
         "answers": ["yes , it is bright ."], "video": "Charades_v1/7BTQ2.mp4", "history": [],
         "meta": {"image_id": "7BTQ2", "summary": "A woman drinks from a cup.", "caption": "A woman drinks.",
                  "turn": 0}},
    ]  # fmt: skip


def test_avsd_withheld_turns_use_the_references_or_are_skipped(tmp_path, caplog):
    dialogs = dump(tmp_path / "test_set4DSTC7-AVSD.json", AVSD_TEST)
    with caplog.at_level(logging.WARNING):
        rows = convert_avsd(dialogs, "Charades_vu17_test", "test")
    assert [row["id"] for row in rows] == ["avsd/test/QW3RT/0"]
    assert skipped_counts(caplog) == [
        "test_set4DSTC7-AVSD.json: skipped 2 record(s): __UNDISCLOSED__ answer (pass `references_path` to score the "
        "withheld turns)."
    ]
    refs = dump(tmp_path / "test_set4DSTC7-AVSD_multiref.json", AVSD_REFS)
    rows = convert_avsd(dialogs, "Charades_vu17_test", "test", references_path=refs)
    assert [(row["id"], row["answers"], row["history"]) for row in rows] == [
        ("avsd/test/QW3RT/0", ["a young woman ."], []),
        ("avsd/test/QW3RT/1", ["she walks out .", "she leaves the room ."], [["who is there ?", "a young woman ."]]),
    ]  # ZX9CV has no reference: still skipped


def test_avsd_errors(tmp_path):
    bad_turn = {"dialogs": [{"image_id": "AB12C", "dialog": [{"question": "q ?", "answer": ""}]}]}
    with pytest.raises(ValueError, match=r"record 0 \(id 'AB12C'\) turn 0: the answer is empty"):
        convert_avsd(dump(tmp_path / "a.json", bad_turn), "v", "train")
    no_question = {"dialogs": [{"image_id": "AB12C", "dialog": [{"answer": "yes"}]}]}
    with pytest.raises(ValueError, match=r"record 0 \(id 'AB12C'\) turn 0: field `question` must be a str"):
        convert_avsd(dump(tmp_path / "a.json", no_question), "v", "train")
    with pytest.raises(ValueError, match=r"`dialogs_path` .* must be a JSON object with a 'dialogs' list"):
        convert_avsd(dump(tmp_path / "a.json", AVSD_TRAIN["dialogs"]), "v", "train")
    refs = dump(tmp_path / "r.json", {"images": [], "annotations": [{"image_id": 4, "caption": "x"}]})
    with pytest.raises(ValueError, match=r"r\.json: record 0: annotation image_id 4 is not in 'images'"):
        convert_avsd(dump(tmp_path / "a.json", AVSD_TEST), "v", "test", references_path=refs)


# --------------------------------------------------------------------------------------------- MUSIC-AVQA

MUSIC_AVQA = [
    {"video_id": "00000412", "question_id": 21, "type": "[\"Audio-Visual\", \"Temporal\"]",
     "question_content": "Where is the <FL> sounding instrument?", "templ_values": "[\"last\"]",
     "question_deleted": 0, "anser": "right"},
    {"video_id": "00000412", "question_id": 22, "type": "[\"Audio\", \"Counting\"]",
     "question_content": "How many instruments are sounding in the video?", "templ_values": "[]",
     "question_deleted": 0, "anser": "three"},
    {"video_id": "00001203", "question_id": 37, "type": "[\"Visual\", \"Location\"]",
     "question_content": "Is the <Object> on the <LR> of the <Object>?",
     "templ_values": "[\"cello\", \"left\", \"flute\"]", "question_deleted": 0, "anser": "no"},
    {"video_id": "00001203", "question_id": 38, "type": "[\"Audio-Visual\", \"Existential\"]",
     "question_content": "Is this sound from the instrument in the video?", "templ_values": "[]",
     "question_deleted": 1, "anser": "yes"},
]  # fmt: skip


def test_music_avqa_fills_placeholders_and_skips_deleted(tmp_path, caplog):
    path = dump(tmp_path / "avqa-test.json", MUSIC_AVQA)
    with caplog.at_level(logging.WARNING):
        rows = convert_music_avqa(path, "MUSIC-AVQA-videos-Real", "test")
    assert rows == [
        {"id": "music_avqa/test/21", "split": "test", "task": "qa",
         "question": "Where is the last sounding instrument?",
         "answers": ["right"], "video": "MUSIC-AVQA-videos-Real/00000412.mp4",
         "meta": {"video_id": "00000412", "type": ["Audio-Visual", "Temporal"],
                  "question_template": "Where is the <FL> sounding instrument?"}},
        {"id": "music_avqa/test/22", "split": "test", "task": "qa",
         "question": "How many instruments are sounding in the video?", "answers": ["three"],
         "video": "MUSIC-AVQA-videos-Real/00000412.mp4",
         "meta": {"video_id": "00000412", "type": ["Audio", "Counting"],
                  "question_template": "How many instruments are sounding in the video?"}},
        {"id": "music_avqa/test/37", "split": "test", "task": "qa",
         "question": "Is the cello on the left of the flute?",
         "answers": ["no"], "video": "MUSIC-AVQA-videos-Real/00001203.mp4",
         "meta": {"video_id": "00001203", "type": ["Visual", "Location"],
                  "question_template": "Is the <Object> on the <LR> of the <Object>?"}},
    ]  # fmt: skip
    assert skipped_counts(caplog) == [
        "avqa-test.json: skipped 1 record(s): question_deleted = 1 (pass keep_deleted=True to keep them)."
    ]
    kept = convert_music_avqa(path, "v", "test", keep_deleted=True)
    assert [row["id"] for row in kept] == [f"music_avqa/test/{n}" for n in (21, 22, 37, 38)]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"templ_values": "[\"last\", \"first\"]"},
         r"record 0 \(id 21\): the question 'Where is the <FL> sounding instrument\?' has 1 placeholder\(s\) but "
         r"templ_values has 2 \(\['last', 'first'\]\); fix the record"),
        ({"templ_values": "[last]"},
         r"record 0 \(id 21\): field `templ_values` must be a JSON list \(or its string\)"),
        ({"anser": None, "answer": "right"},
         r"record 0 \(id 21\): field `anser` must be a str, got None; MUSIC-AVQA spells the answer field 'anser'"),
        ({"anser": ""}, r"record 0 \(id 21\): the answer is empty"),
    ],
)  # fmt: skip
def test_music_avqa_errors(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        convert_music_avqa(dump(tmp_path / "avqa-val.json", [{**MUSIC_AVQA[0], **change}]), "v", "validation")


# --------------------------------------------------------------------------------------------- ScanQA

SCANQA_VAL = [
    {"answers": ["black office chair", "office chair"], "object_ids": [12, 13], "object_names": ["chair", "chair"],
     "question": "What is placed in front of the desk?", "question_id": "val-scene0011-3", "scene_id": "scene0011_00"},
    {"answers": ["white"], "object_ids": [4], "object_names": ["door"], "question": "What color is the door?",
     "question_id": "val-scene0015-0", "scene_id": "scene0015_00"},
]  # fmt: skip
SCANQA_TEST = [  # the published test files carry no answers
    {"object_ids": [2], "object_names": ["table"], "question": "Where is the lamp?",
     "question_id": "test-scene0707-1", "scene_id": "scene0707_00"},
]  # fmt: skip


def test_scanqa(tmp_path, caplog):
    rows = convert_scanqa(dump(tmp_path / "ScanQA_v1.0_val.json", SCANQA_VAL), "scannet/videos", "validation",
                          side_channels={"3d": "feats3d/{scene_id}.pt"})  # fmt: skip
    assert rows == [
        {"id": "scanqa/validation/val-scene0011-3", "split": "validation", "task": "qa",
         "question": "What is placed in front of the desk?", "answers": ["black office chair", "office chair"],
         "video": "scannet/videos/scene0011_00.mp4", "side_channels": {"3d": "feats3d/scene0011_00.pt"},
         "meta": {"scene_id": "scene0011_00", "object_ids": [12, 13], "object_names": ["chair", "chair"]}},
        {"id": "scanqa/validation/val-scene0015-0", "split": "validation", "task": "qa",
         "question": "What color is the door?", "answers": ["white"], "video": "scannet/videos/scene0015_00.mp4",
         "side_channels": {"3d": "feats3d/scene0015_00.pt"},
         "meta": {"scene_id": "scene0015_00", "object_ids": [4], "object_names": ["door"]}},
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert convert_scanqa(dump(tmp_path / "ScanQA_v1.0_test_w_obj.json", SCANQA_TEST), "v", "test") == []
    assert skipped_counts(caplog) == [
        "ScanQA_v1.0_test_w_obj.json: skipped 1 record(s): no answers (ScanQA's test files withhold them)."
    ]
    with pytest.raises(ValueError, match=r"record 0 \(id 'val-scene0011-3'\): field `scene_id` must be a str, got 11"):
        convert_scanqa(dump(tmp_path / "bad.json", [{**SCANQA_VAL[0], "scene_id": 11}]), "v", "validation")


# --------------------------------------------------------------------------------------------- SQA3D

SINK = "I am washing dishes at the sink with the window in front of me."
SQA3D_QUESTIONS = {"questions": [
    {"alternative_situation": ["I am standing by the sink."], "question": "Which side of me is the fridge on?",
     "question_id": 220602000101, "scene_id": "scene0406_00",
     "situation": SINK},
    {"alternative_situation": [], "question": "How many chairs are behind me?", "question_id": 220602000102,
     "scene_id": "scene0406_00", "situation": "I sit at the table facing the TV."},
]}  # fmt: skip
SQA3D_ANNOTATIONS = {"annotations": [
    {"answer_type": "other", "answers": [{"answer": "two", "answer_confidence": "yes", "answer_id": 1}],
     "position": {"x": 1.5, "y": -0.25, "z": 0}, "question_id": 220602000102, "question_type": "N/A",
     "rotation": {"_w": 1.0, "_x": 0, "_y": 0, "_z": 0.0}, "scene_id": "scene0406_00"},
    {"answer_type": "other", "answers": [{"answer": "left", "answer_confidence": "yes", "answer_id": 1}],
     "position": {"x": -0.5, "y": 2.0, "z": 0}, "question_id": 220602000101, "question_type": "N/A",
     "rotation": {"_w": 0.5, "_x": 0, "_y": 0, "_z": 0.5}, "scene_id": "scene0406_00"},
]}  # fmt: skip


def test_sqa3d_prepends_the_situation(tmp_path):
    questions = dump(tmp_path / "v1_balanced_questions_test_scannetv2.json", SQA3D_QUESTIONS)
    annotations = dump(tmp_path / "v1_balanced_sqa_annotations_test_scannetv2.json", SQA3D_ANNOTATIONS)
    rows = convert_sqa3d(questions, annotations, "scannet", "test", video_template="{scene_id}")
    assert rows == [
        {"id": "sqa3d/test/220602000101", "split": "test", "task": "qa",
         "question": f"{SINK} Which side of me is the fridge on?",
         "answers": ["left"], "video": "scannet/scene0406_00",
         "meta": {"scene_id": "scene0406_00", "situation": SINK,
                  "question": "Which side of me is the fridge on?", "answer_type": "other", "question_type": "N/A",
                  "position": {"x": -0.5, "y": 2.0, "z": 0}, "rotation": {"_w": 0.5, "_x": 0, "_y": 0, "_z": 0.5}}},
        {"id": "sqa3d/test/220602000102", "split": "test", "task": "qa",
         "question": "I sit at the table facing the TV. How many chairs are behind me?", "answers": ["two"],
         "video": "scannet/scene0406_00",
         "meta": {"scene_id": "scene0406_00", "situation": "I sit at the table facing the TV.",
                  "question": "How many chairs are behind me?", "answer_type": "other", "question_type": "N/A",
                  "position": {"x": 1.5, "y": -0.25, "z": 0}, "rotation": {"_w": 1.0, "_x": 0, "_y": 0, "_z": 0.0}}},
    ]  # fmt: skip
    one = {"annotations": SQA3D_ANNOTATIONS["annotations"][:1]}
    with pytest.raises(ValueError, match=r"record 0 \(id 220602000101\): question_id 220602000101 has no entry in "
                                         r"`annotations_path`; pass the test annotations"):  # fmt: skip
        convert_sqa3d(questions, dump(tmp_path / "a.json", one), "scannet", "test")
    empty = {"annotations": [{**a, "answers": []} for a in SQA3D_ANNOTATIONS["annotations"]]}
    with pytest.raises(ValueError, match=r"record 0 \(id 220602000101\): question_id 220602000101 has no answer"):
        convert_sqa3d(questions, dump(tmp_path / "a.json", empty), "scannet", "test")
    with pytest.raises(ValueError, match=r"`questions_path` .* must be a JSON object with a list under 'questions'"):
        convert_sqa3d(dump(tmp_path / "q.json", SQA3D_QUESTIONS["questions"]), annotations, "scannet", "test")


# --------------------------------------------------------------------------------------------- Breakfast

BREAKFAST_LABELS = {  # "<start>-<end> <label>", 1-based inclusive frames at 15 fps
    "P05_cam01_P05_cereals.txt": "1-30 SIL  \n31-150 take_bowl\n151-420 pour_cereals\n421-450 SIL\n",
    "P20_webcam02_P20_tea.txt": "1-15 SIL\n16-300 add_teabag\n\n",
    "P42_stereo01_P42_juice.txt": "1-60 SIL\n61-75 take_squeezer\n",
}


@pytest.fixture
def breakfast(tmp_path):
    folder = tmp_path / "segmentation_coarse"
    folder.mkdir()
    for name, text in BREAKFAST_LABELS.items():
        (folder / name).write_text(text)
    return folder


def test_breakfast_frames_to_seconds():
    assert frames_to_seconds(1, 30) == [0.0, 2.0]
    assert frames_to_seconds(31, 150) == [2.0, 10.0]
    assert frames_to_seconds(16, 300, fps=30.0) == [0.5, 10.0]
    assert BREAKFAST_TEST_PERSONS[1] == tuple(f"P{n:02d}" for n in range(3, 16))
    assert sorted(sum(BREAKFAST_TEST_PERSONS.values(), ())) == [f"P{n:02d}" for n in range(3, 55)]


def test_breakfast_classification_rows_by_fold(breakfast):
    test = convert_breakfast(breakfast, "BreakfastII_15fps_qvga_sync", "test", fold=1)
    assert test == [
        {"id": "breakfast/test/P05_cam01_P05_cereals", "split": "test", "task": "classification",
         "question": "What type of breakfast is shown in the video?", "answers": ["cereals"],
         "video": "BreakfastII_15fps_qvga_sync/P05/cam01/P05_cereals.avi",
         "meta": {"person": "P05", "camera": "cam01", "fold": 1,
                  "segments": [[0.0, 2.0, "SIL"], [2.0, 10.0, "take_bowl"], [10.0, 28.0, "pour_cereals"],
                               [28.0, 30.0, "SIL"]]}},
    ]  # fmt: skip
    train = convert_breakfast(sorted(breakfast.iterdir()), "bf", "train", fold=1, video_template="{stem}.mp4")
    assert [(row["id"], row["answers"], row["video"]) for row in train] == [
        ("breakfast/train/P20_webcam02_P20_tea", ["tea"], "bf/P20_webcam02_P20_tea.mp4"),
        ("breakfast/train/P42_stereo01_P42_juice", ["juice"], "bf/P42_stereo01_P42_juice.mp4"),
    ]
    assert train[0]["meta"]["segments"] == [[0.0, 1.0, "SIL"], [1.0, 20.0, "add_teabag"]]
    assert [row["id"] for row in convert_breakfast(breakfast, "bf", "test", fold=4)] == [
        "breakfast/test/P42_stereo01_P42_juice"
    ]


def test_breakfast_segment_rows(breakfast):
    rows = convert_breakfast(breakfast / "P20_webcam02_P20_tea.txt", "bf", "train", fold=1, segment_rows=True)
    meta = {"person": "P20", "camera": "webcam02", "fold": 1}
    assert rows[1:] == [
        {"id": "breakfast/train/P20_webcam02_P20_tea/0", "split": "train", "task": "classification",
         "question": "What action is being performed?", "answers": ["SIL"], "video": "bf/P20/webcam02/P20_tea.avi",
         "timestamps": [0.0, 1.0], "meta": {**meta, "activity": "tea"}},
        {"id": "breakfast/train/P20_webcam02_P20_tea/1", "split": "train", "task": "classification",
         "question": "What action is being performed?", "answers": ["add_teabag"],
         "video": "bf/P20/webcam02/P20_tea.avi", "timestamps": [1.0, 20.0], "meta": {**meta, "activity": "tea"}},
    ]  # fmt: skip
    assert rows[0]["id"] == "breakfast/train/P20_webcam02_P20_tea"


def test_breakfast_errors(breakfast, tmp_path):
    (breakfast / "P06_cam01_P06_milk.txt").write_text("1-30 SIL\n40-20 pour_milk\n")
    with pytest.raises(ValueError, match=r"P06_cam01_P06_milk\.txt line 2: expected '<start frame>-<end frame> "
                                         r"<label>' with 1 <= start <= end, got '40-20 pour_milk'"):  # fmt: skip
        convert_breakfast(breakfast, "bf", "test")
    (breakfast / "P06_cam01_P06_milk.txt").write_text("1-30\n")
    with pytest.raises(ValueError, match=r"line 1: expected .*, got '1-30'"):
        convert_breakfast(breakfast, "bf", "test")
    (breakfast / "P06_cam01_P06_milk.txt").unlink()
    (breakfast / "cereals.txt").write_text("1-30 SIL\n")
    with pytest.raises(ValueError, match=r"file 'cereals\.txt' must be named '<person>_<camera>_\.\.\._<activity>"):
        convert_breakfast(breakfast, "bf", "test")
    with pytest.raises(ValueError, match=r"`fold` must be in \[1, 4\] \(Breakfast's standard splits\), got 5"):
        convert_breakfast(breakfast, "bf", "test", fold=5)
    with pytest.raises(ValueError, match=r"`split` must be one of \['train', 'test'\], got 'validation'"):
        convert_breakfast(breakfast, "bf", "validation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"`label_paths` folder .* holds no \.txt label files"):
        convert_breakfast(tmp_path / "empty", "bf", "test")
    with pytest.raises(ValueError, match=r"`label_paths` must be label files or a folder of them, got .*P07\.txt"):
        convert_breakfast([tmp_path / "P07.txt"], "bf", "test")


# --------------------------------------------------------------------------------------------- YouCook2

YOUCOOK2 = {"database": {
    "aB3dE5fG7hI": {"duration": 180.5, "subset": "training", "recipe_type": "113",
                    "url": "https://www.youtube.com/watch?v=aB3dE5fG7hI",
                    "annotations": [{"segment": [12, 30], "id": 0, "sentence": "spread butter on the bread"},
                                    {"segment": [41, 58], "id": 1, "sentence": "place cheese on the bread"},
                                    {"segment": [60, 60], "id": 2, "sentence": "close the sandwich"}]},
    "Zy9Xw8Vu7Ts": {"duration": 95.0, "subset": "validation", "recipe_type": "201",
                    "url": "https://www.youtube.com/watch?v=Zy9Xw8Vu7Ts",
                    "annotations": [{"segment": [5, 17], "id": 0, "sentence": "boil the noodles in water"}]},
}}  # fmt: skip


def test_youcook2_dense_caption_rows(tmp_path, caplog):
    path = dump(tmp_path / "youcookii_annotations_trainval.json", YOUCOOK2)
    with caplog.at_level(logging.WARNING):
        train = convert_youcook2(path, "raw_videos", "train")
    meta = {"video_id": "aB3dE5fG7hI", "recipe_type": "113", "duration": 180.5}
    assert train == [
        {"id": "youcook2/train/aB3dE5fG7hI/0", "split": "train", "task": "caption", "question": "",
         "answers": ["spread butter on the bread"], "video": "raw_videos/training/113/aB3dE5fG7hI.mp4",
         "timestamps": [12.0, 30.0], "meta": {**meta, "segment_id": 0}},
        {"id": "youcook2/train/aB3dE5fG7hI/1", "split": "train", "task": "caption", "question": "",
         "answers": ["place cheese on the bread"], "video": "raw_videos/training/113/aB3dE5fG7hI.mp4",
         "timestamps": [41.0, 58.0], "meta": {**meta, "segment_id": 1}},
    ]  # fmt: skip
    assert skipped_counts(caplog) == [
        "youcookii_annotations_trainval.json: skipped 1 record(s): segment with end <= start (or a negative start)."
    ]
    validation = convert_youcook2(path, "raw_videos", "validation", question="Describe this step.")
    assert [(r["id"], r["question"], r["video"], r["timestamps"]) for r in validation] == [
        (
            "youcook2/validation/Zy9Xw8Vu7Ts/0",
            "Describe this step.",
            "raw_videos/validation/201/Zy9Xw8Vu7Ts.mp4",
            [5.0, 17.0],
        ),
    ]
    assert convert_youcook2(path, "raw_videos", "test") == []
    bad = {"database": {"aB3dE5fG7hI": {**YOUCOOK2["database"]["aB3dE5fG7hI"], "annotations": [{"segment": [1, 2]}]}}}
    with pytest.raises(ValueError, match=r"record 0 \(id 'aB3dE5fG7hI'\) segment 0: field `sentence` must be a str"):
        convert_youcook2(dump(tmp_path / "bad.json", bad), "raw_videos", "train")
    bad = {"database": {"aB3dE5fG7hI": {**YOUCOOK2["database"]["aB3dE5fG7hI"], "subset": "train"}}}
    with pytest.raises(ValueError, match=r"subset 'train' is not one of \['training', 'validation', 'testing'\]"):
        convert_youcook2(dump(tmp_path / "bad.json", bad), "raw_videos", "train")


# --------------------------------------------------------------------------------------------- LLaVA-Video-178K

LLAVA_VIDEO = [
    {"id": "ytb_Ab3Cd5Ef7Gh", "video": "academic_source/youtube/ytb_Ab3Cd5Ef7Gh.mp4",
     "conversations": [{"from": "human", "value": "<image>\nWhat is the chef preparing?"},
                       {"from": "gpt", "value": "A vegetable stir-fry."},
                       {"from": "human", "value": "Which ingredient goes in first?\nAnswer briefly."},
                       {"from": "gpt", "value": "Garlic."}],
     "data_source": "0_30_s_academic_v0_1"},
    {"id": 4021, "video": "liwei_youtube_videos/videos/clip_4021.mp4",
     "conversations": [{"from": "human", "value": "Describe the video in detail. <video>"},
                       {"from": "gpt", "value": " A dog catches a frisbee in a park. "}],
     "data_source": "30_60_s_youtube_v0_1"},
]  # fmt: skip


def test_llava_video_178k_one_row_per_turn(tmp_path):
    path = dump(tmp_path / "0_30_s_academic_oe_v0_1_qa_processed.json", LLAVA_VIDEO)
    rows = convert_llava_video(path, "LLaVA-Video-178K")
    first = ["What is the chef preparing?", "A vegetable stir-fry."]
    assert rows == [
        {"id": "llava_video_178k/train/ytb_Ab3Cd5Ef7Gh/0", "split": "train", "task": "dialogue", "question": first[0],
         "answers": [first[1]], "video": "LLaVA-Video-178K/academic_source/youtube/ytb_Ab3Cd5Ef7Gh.mp4", "history": [],
         "meta": {"source_id": "ytb_Ab3Cd5Ef7Gh", "data_source": "0_30_s_academic_v0_1", "turn": 0}},
        {"id": "llava_video_178k/train/ytb_Ab3Cd5Ef7Gh/1", "split": "train", "task": "dialogue",
         "question": "Which ingredient goes in first?\nAnswer briefly.", "answers": ["Garlic."],
         "video": "LLaVA-Video-178K/academic_source/youtube/ytb_Ab3Cd5Ef7Gh.mp4", "history": [first],
         "meta": {"source_id": "ytb_Ab3Cd5Ef7Gh", "data_source": "0_30_s_academic_v0_1", "turn": 1}},
        {"id": "llava_video_178k/train/4021/0", "split": "train", "task": "qa",
         "question": "Describe the video in detail.",
         "answers": ["A dog catches a frisbee in a park."],
         "video": "LLaVA-Video-178K/liwei_youtube_videos/videos/clip_4021.mp4", "history": [],
         "meta": {"source_id": "4021", "data_source": "30_60_s_youtube_v0_1", "turn": 0}},
    ]  # fmt: skip


def test_strip_media_placeholders():
    assert strip_media_placeholders("<image>\nWhat happens?") == "What happens?"
    assert (
        strip_media_placeholders("<video>\n<video>\nCompare the clips.\nBe brief.") == "Compare the clips.\nBe brief."
    )
    assert strip_media_placeholders("What happens after <video> ends?") == "What happens after ends?"


@pytest.mark.parametrize(
    "conversations, message",
    [
        ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}],
         r"record 0 \(id 'x1'\): message 0 must be from 'human' \(turns alternate human, gpt\)"),
        ([{"from": "human", "value": "q"}], r"record 0 \(id 'x1'\): `conversations` must hold human/gpt pairs, got 1"),
        ([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "  "}],
         r"record 0 \(id 'x1'\): the answer of turn 0 is empty"),
    ],
)  # fmt: skip
def test_llava_video_178k_errors(tmp_path, conversations, message):
    record = {"id": "x1", "video": "v.mp4", "conversations": conversations, "data_source": "s"}
    with pytest.raises(ValueError, match=message):
        convert_llava_video(dump(tmp_path / "a.json", [record]), "root")


# --------------------------------------------------------------------------------------------- registry and convert


def test_registry_names_every_dataset_of_the_issue():
    assert sorted(CONVERTERS) == sorted(["msvd_qa", "activitynet_qa", "avsd", "music_avqa", "scanqa", "sqa3d",
                                         "breakfast", "youcook2", "llava_video_178k"])  # fmt: skip


def test_convert_writes_a_manifest_that_loads_with_resolved_paths(tmp_path):
    path = dump(tmp_path / "ScanQA_v1.0_val.json", SCANQA_VAL)
    out = tmp_path / "manifests" / "scanqa_val.jsonl"
    assert convert("scanqa", path, "../scannet", "validation", out=out, features_template="feats/{scene_id}.pt") == 2
    assert [json.loads(line)["video"] for line in out.read_text().splitlines()] == [
        "../scannet/scene0011_00.mp4",
        "../scannet/scene0015_00.mp4",
    ]  # written as given
    loaded = load_manifest(out, split="validation", cache_dir=tmp_path / "cache")
    scenes = ("scene0011_00", "scene0015_00")
    assert loaded["video"] == [str(tmp_path / "scannet" / f"{scene}.mp4") for scene in scenes]
    assert loaded["features"] == [str(tmp_path / "manifests" / "feats" / f"{scene}.pt") for scene in scenes]
    assert loaded["answers"] == [["black office chair", "office chair"], ["white"]]
    with pytest.raises(ValueError, match=r"`name` must be one of \[.*'youcook2'\], got 'msvd'"):
        convert("msvd", path, "v", "train", out=out)


def test_every_converted_sample_row_is_a_valid_manifest_row(tmp_path):
    rows = convert_llava_video(dump(tmp_path / "l.json", LLAVA_VIDEO), "r")
    rows += convert_youcook2(dump(tmp_path / "y.json", YOUCOOK2), "r", "train")
    assert all(validate_row(row, "x") == row for row in rows)  # already normalised: converters return clean rows
