"""Converters for the question-answering datasets: MSVD-QA, ActivityNet-QA, MUSIC-AVQA, ScanQA and SQA3D.

Each reads the dataset's published annotation files and returns manifest rows (see `videoadapt.recipes.manifest`) of
one split, in file order. Media paths come from a `MediaLayout`: `video_root / video_template`, where the template's
fields are listed per converter. docs/manifest.md documents the layouts and every choice made here.
"""

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from videoadapt.recipes.converters_common import (
    MediaLayout,
    SkipCounter,
    check_split,
    field_of,
    finish_rows,
    read_json,
    read_lines,
    where,
)


__all__ = [
    "convert_activitynet_qa",
    "convert_msvd_qa",
    "convert_music_avqa",
    "convert_scanqa",
    "convert_sqa3d",
    "fill_placeholders",
    "read_youtube_mapping",
]

_PLACEHOLDER = re.compile(r"<[^<>\s]+>")


def _records(payload: Any, path: str | os.PathLike, what: str, key: str | None = None) -> list:
    """The list of records in a loaded JSON file (under `key` when the file is an object)."""
    if key is not None:
        if not isinstance(payload, dict) or not isinstance(payload.get(key), list):
            raise ValueError(
                f"{what} {str(path)!r} must be a JSON object with a list under {key!r}; is this the right file?"
            )
        return payload[key]
    if not isinstance(payload, list):
        raise ValueError(
            f"{what} {str(path)!r} must hold a JSON list of records, got {type(payload).__name__}; is this the right "
            "file?"
        )
    return payload


# --------------------------------------------------------------------------------------------- MSVD-QA


def read_youtube_mapping(mapping_path: str | os.PathLike) -> dict[str, str]:
    """MSVD's `youtube_mapping.txt` ("<clip name> vid<N>" per line) as {"vid<N>": clip name}."""
    mapping: dict[str, str] = {}
    for number, line in read_lines(mapping_path, "`mapping_path`"):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"`mapping_path` line {number}: expected '<clip name> vid<N>', got {line!r}; pass MSVD's "
                "youtube_mapping.txt."
            )
        mapping[parts[1]] = parts[0]
    return mapping


def convert_msvd_qa(
    qa_path: str | os.PathLike,
    mapping_path: str | os.PathLike,
    video_root: str | os.PathLike | None,
    split: str,
    *,
    video_template: str = "{clip}.avi",
    features_template: str | None = None,
    side_channels: Mapping[str, str] | None = None,
) -> list[dict]:
    """MSVD-QA `{train,val,test}_qa.json` (a list of {"answer", "id", "question", "video_id"}) -> "qa" rows.

    `video_id` N is the clip named on the "vid<N>" line of `youtube_mapping.txt` (`mapping_path`). Template fields:
    `clip` (e.g. "-4wsuPCjDBc_5_15"), `video_id`, `question_id`. An unknown video id, a missing field or an empty
    answer raises ValueError.
    """
    split = check_split(split)
    layout = MediaLayout(video_root, video_template, features_template, side_channels or {})
    layout.check(("clip", "video_id", "question_id"))
    mapping = read_youtube_mapping(mapping_path)
    rows = []
    for index, record in enumerate(_records(read_json(qa_path, "`qa_path`"), qa_path, "`qa_path`")):
        at = where(qa_path, index, record.get("id") if isinstance(record, dict) else None)
        question_id = field_of(record, "id", int, at)
        video_id = field_of(record, "video_id", int, at)
        question = field_of(record, "question", str, at)
        answer = field_of(record, "answer", str, at)
        if not answer.strip():
            raise ValueError(
                f"{at}: the answer is empty; fix or drop the record (every row needs a reference answer)."
            )
        clip = mapping.get(f"vid{video_id}")
        if clip is None:
            raise ValueError(
                f"{at}: video_id {video_id} ('vid{video_id}') is not in `mapping_path`; pass the youtube_mapping.txt "
                "that ships with MSVD-QA."
            )
        fields = {"clip": clip, "video_id": video_id, "question_id": question_id}
        rows.append({
            "id": f"msvd_qa/{split}/{question_id}", "split": split, "task": "qa", "question": question,
            "answers": [answer], **layout.media(fields), "meta": {"video_id": video_id, "clip": clip},
        })  # fmt: skip
    return finish_rows(rows, "msvd_qa")


# --------------------------------------------------------------------------------------------- ActivityNet-QA


def convert_activitynet_qa(
    questions_path: str | os.PathLike,
    answers_path: str | os.PathLike,
    video_root: str | os.PathLike | None,
    split: str,
    *,
    video_template: str = "v_{video_name}.mp4",
    features_template: str | None = None,
    side_channels: Mapping[str, str] | None = None,
) -> list[dict]:
    """ActivityNet-QA `{split}_q.json` ({"video_name", "question", "question_id"}) joined with `{split}_a.json`
    ({"answer", "type", "question_id"}) on `question_id` -> "qa" rows, in question-file order.

    Template fields: `video_name` (the YouTube id), `question_id`. A question without an answer, an answer without a
    question, or a duplicate question id raises ValueError. `meta.type` keeps the published type code (0 motion,
    1 spatial, 2 temporal, 3-8 free: yes/no, color, object, location, number, other).
    """
    split = check_split(split)
    layout = MediaLayout(video_root, video_template, features_template, side_channels or {})
    layout.check(("video_name", "question_id"))
    answers: dict[str, tuple[str, Any]] = {}
    answer_records = _records(read_json(answers_path, "`answers_path`"), answers_path, "`answers_path`")
    for index, record in enumerate(answer_records):
        at = where(answers_path, index, record.get("question_id") if isinstance(record, dict) else None)
        question_id = field_of(record, "question_id", str, at)
        answer = field_of(record, "answer", str, at)
        if not answer.strip():
            raise ValueError(
                f"{at}: the answer is empty; fix or drop the record (every row needs a reference answer)."
            )
        answers[question_id] = (answer, record.get("type"))
    rows, used = [], set()
    questions = _records(read_json(questions_path, "`questions_path`"), questions_path, "`questions_path`")
    for index, record in enumerate(questions):
        at = where(questions_path, index, record.get("question_id") if isinstance(record, dict) else None)
        question_id = field_of(record, "question_id", str, at)
        video_name = field_of(record, "video_name", str, at)
        question = field_of(record, "question", str, at)
        if question_id in used:
            raise ValueError(f"{at}: question_id {question_id!r} appears twice; is the file corrupt?")
        if question_id not in answers:
            raise ValueError(
                f"{at}: question_id {question_id!r} has no answer in `answers_path`; pass the {split} answers file "
                "that pairs with these questions."
            )
        used.add(question_id)
        answer, kind = answers[question_id]
        rows.append({
            "id": f"activitynet_qa/{split}/{question_id}", "split": split, "task": "qa", "question": question,
            "answers": [answer], **layout.media({"video_name": video_name, "question_id": question_id}),
            "meta": {"video_name": video_name, "type": kind},
        })  # fmt: skip
    orphans = sorted(set(answers) - used)
    if orphans:
        raise ValueError(
            f"`answers_path` has {len(orphans)} answer(s) whose question is not in `questions_path` "
            f"(e.g. {orphans[:3]}); pass files of the same split."
        )
    return finish_rows(rows, "activitynet_qa")


# --------------------------------------------------------------------------------------------- MUSIC-AVQA


def _json_list(value: Any, at: str, name: str) -> list:
    """A field stored either as a list or as a JSON-encoded list string (MUSIC-AVQA's `templ_values`, `type`)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(
                f"{at}: field `{name}` must be a JSON list (or its string), got {value!r}; is this the right file?"
            ) from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{at}: field `{name}` must be a list of strings, got {value!r}; is this the right file?")
    return value


def fill_placeholders(template: str, values: list[str], at: str) -> str:
    """MUSIC-AVQA's question template with its <Object>/<LOC>/<FL>/... placeholders replaced, left to right."""
    slots = _PLACEHOLDER.findall(template)
    if len(slots) != len(values):
        raise ValueError(
            f"{at}: the question {template!r} has {len(slots)} placeholder(s) but templ_values has {len(values)} "
            f"({values}); fix the record."
        )
    filled = iter(values)
    return _PLACEHOLDER.sub(lambda _: next(filled), template)


def convert_music_avqa(
    qa_path: str | os.PathLike,
    video_root: str | os.PathLike | None,
    split: str,
    *,
    keep_deleted: bool = False,
    video_template: str = "{video_id}.mp4",
    features_template: str | None = None,
    side_channels: Mapping[str, str] | None = None,
) -> list[dict]:
    """MUSIC-AVQA `avqa-{train,val,test}.json` -> "qa" rows.

    Records are {"video_id", "question_id", "type" (JSON string of [modality, kind]), "question_content" (with
    <Object>, <LOC>, <FL>, ... placeholders), "templ_values" (JSON string of the fillers, in order),
    "question_deleted", "anser" [sic]}. Placeholders are filled left to right; a count mismatch raises ValueError.
    Records with `question_deleted` = 1 are skipped (a logged count) unless `keep_deleted`. Template fields:
    `video_id`, `question_id`. The audio is the video's own track; add `side_channels` for separate audio files or
    features.
    """
    split = check_split(split)
    layout = MediaLayout(video_root, video_template, features_template, side_channels or {})
    layout.check(("video_id", "question_id"))
    skipped = SkipCounter(qa_path)
    rows = []
    for index, record in enumerate(_records(read_json(qa_path, "`qa_path`"), qa_path, "`qa_path`")):
        at = where(qa_path, index, record.get("question_id") if isinstance(record, dict) else None)
        question_id = field_of(record, "question_id", int, at)
        video_id = field_of(record, "video_id", str, at)
        if record.get("question_deleted", 0) and not keep_deleted:
            skipped.skip("question_deleted = 1 (pass keep_deleted=True to keep them)")
            continue
        template = field_of(record, "question_content", str, at)
        question = fill_placeholders(template, _json_list(record.get("templ_values", "[]"), at, "templ_values"), at)
        answer = field_of(record, "anser", str, at, "MUSIC-AVQA spells the answer field 'anser'")
        if not answer.strip():
            raise ValueError(
                f"{at}: the answer is empty; fix or drop the record (every row needs a reference answer)."
            )
        kind = _json_list(record.get("type", "[]"), at, "type")
        rows.append({
            "id": f"music_avqa/{split}/{question_id}", "split": split, "task": "qa", "question": question,
            "answers": [answer], **layout.media({"video_id": video_id, "question_id": question_id}),
            "meta": {"video_id": video_id, "type": kind, "question_template": template},
        })  # fmt: skip
    skipped.report()
    return finish_rows(rows, "music_avqa")


# --------------------------------------------------------------------------------------------- ScanQA


def convert_scanqa(
    qa_path: str | os.PathLike,
    video_root: str | os.PathLike | None,
    split: str,
    *,
    video_template: str = "{scene_id}.mp4",
    features_template: str | None = None,
    side_channels: Mapping[str, str] | None = None,
) -> list[dict]:
    """ScanQA `ScanQA_v1.0_{train,val,test_w_obj,test_wo_obj}.json` (a list of {"scene_id", "question_id",
    "question", "answers", "object_ids", "object_names"}) -> "qa" rows about the scene's video (a rendered/scanned
    walk-through of the ScanNet scene; or a frame folder with `video_template="{scene_id}"`).

    All answers are kept (evaluation scores against all). Records without answers (the published test files) are
    skipped with a logged count. Template fields: `scene_id`, `question_id`. `side_channels` can name per-scene 3D
    feature files (e.g. {"3d": "feats/{scene_id}.pt"}).
    """
    split = check_split(split)
    layout = MediaLayout(video_root, video_template, features_template, side_channels or {})
    layout.check(("scene_id", "question_id"))
    skipped = SkipCounter(qa_path)
    rows = []
    for index, record in enumerate(_records(read_json(qa_path, "`qa_path`"), qa_path, "`qa_path`")):
        at = where(qa_path, index, record.get("question_id") if isinstance(record, dict) else None)
        question_id = field_of(record, "question_id", str, at)
        scene_id = field_of(record, "scene_id", str, at)
        question = field_of(record, "question", str, at)
        answers = [answer for answer in record.get("answers") or [] if isinstance(answer, str) and answer.strip()]
        if not answers:
            skipped.skip("no answers (ScanQA's test files withhold them)")
            continue
        meta = {"scene_id": scene_id}
        meta.update({key: record[key] for key in ("object_ids", "object_names") if key in record})
        rows.append({
            "id": f"scanqa/{split}/{question_id}", "split": split, "task": "qa", "question": question,
            "answers": answers, **layout.media({"scene_id": scene_id, "question_id": question_id}), "meta": meta,
        })  # fmt: skip
    skipped.report()
    return finish_rows(rows, "scanqa")


# --------------------------------------------------------------------------------------------- SQA3D


def convert_sqa3d(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike,
    video_root: str | os.PathLike | None,
    split: str,
    *,
    video_template: str = "{scene_id}.mp4",
    features_template: str | None = None,
    side_channels: Mapping[str, str] | None = None,
) -> list[dict]:
    """SQA3D `v1_balanced_questions_{split}_scannetv2.json` ({"questions": [{"question_id", "scene_id", "situation",
    "question", ...}]}) joined with `v1_balanced_sqa_annotations_{split}_scannetv2.json` ({"annotations":
    [{"question_id", "answers": [{"answer", ...}], "answer_type", "question_type", "position", "rotation", ...}]}) on
    `question_id` -> "qa" rows.

    The situation is prepended to the question: question = situation + " " + question (the original question and
    situation are kept in `meta`). Answers are the distinct non-empty `answers[*].answer`, in order. A question without
    an annotation (or without any answer) raises ValueError. Template fields: `scene_id`, `question_id`.
    """
    split = check_split(split)
    layout = MediaLayout(video_root, video_template, features_template, side_channels or {})
    layout.check(("scene_id", "question_id"))
    annotations: dict[int, dict] = {}
    payload = read_json(annotations_path, "`annotations_path`")
    for index, record in enumerate(_records(payload, annotations_path, "`annotations_path`", "annotations")):
        at = where(annotations_path, index, record.get("question_id") if isinstance(record, dict) else None)
        annotations[field_of(record, "question_id", int, at)] = record
    rows = []
    payload = read_json(questions_path, "`questions_path`")
    questions = _records(payload, questions_path, "`questions_path`", "questions")
    for index, record in enumerate(questions):
        at = where(questions_path, index, record.get("question_id") if isinstance(record, dict) else None)
        question_id = field_of(record, "question_id", int, at)
        scene_id = field_of(record, "scene_id", str, at)
        situation = field_of(record, "situation", str, at)
        question = field_of(record, "question", str, at)
        annotation = annotations.get(question_id)
        if annotation is None:
            raise ValueError(
                f"{at}: question_id {question_id} has no entry in `annotations_path`; pass the {split} annotations "
                "that pair with these questions."
            )
        answers = []
        for item in annotation.get("answers") or []:
            text = item.get("answer") if isinstance(item, dict) else None
            if isinstance(text, str) and text.strip() and text not in answers:
                answers.append(text)
        if not answers:
            raise ValueError(
                f"{at}: question_id {question_id} has no answer in `annotations_path`; fix or drop the record."
            )
        meta = {"scene_id": scene_id, "situation": situation, "question": question}
        extras = ("answer_type", "question_type", "position", "rotation")
        meta.update({key: annotation[key] for key in extras if key in annotation})
        rows.append({
            "id": f"sqa3d/{split}/{question_id}", "split": split, "task": "qa",
            "question": f"{situation.strip()} {question.strip()}", "answers": answers,
            **layout.media({"scene_id": scene_id, "question_id": question_id}), "meta": meta,
        })  # fmt: skip
    return finish_rows(rows, "sqa3d")
