"""Converters for the dialogue, instruction, captioning and classification datasets: AVSD, LLaVA-Video-178K,
YouCook2 and Breakfast.

Each reads the dataset's published annotation files and returns manifest rows (see `videoadapt.recipes.manifest`) of
one split. Media paths come from a `MediaLayout` (`video_root / video_template`, fields listed per converter).
docs/manifest.md documents the layouts and every choice made here.
"""

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
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
    "BREAKFAST_FPS",
    "BREAKFAST_TEST_PERSONS",
    "UNDISCLOSED",
    "convert_avsd",
    "convert_breakfast",
    "convert_llava_video",
    "convert_youcook2",
    "frames_to_seconds",
    "strip_media_placeholders",
]

UNDISCLOSED = "__UNDISCLOSED__"
BREAKFAST_FPS = 15.0
# the four standard Breakfast folds: fold k tests on these persons and trains on the other 39
BREAKFAST_TEST_PERSONS = {
    1: tuple(f"P{n:02d}" for n in range(3, 16)),
    2: tuple(f"P{n:02d}" for n in range(16, 29)),
    3: tuple(f"P{n:02d}" for n in range(29, 42)),
    4: tuple(f"P{n:02d}" for n in range(42, 55)),
}
_YOUCOOK2_SUBSETS = {"training": "train", "validation": "validation", "testing": "test"}
_MEDIA_PLACEHOLDER = re.compile(r"[ \t]*<(?:image|video)>[ \t]*")
_BREAKFAST_LINE = re.compile(r"^(\d+)-(\d+)\s+(\S+)$")


# --------------------------------------------------------------------------------------------- AVSD


def _avsd_references(path: str | os.PathLike) -> dict[str, list[str]]:
    """The DSTC7 multi-reference file (COCO-caption layout: "images" [{"id", "name": "<image_id>_<turn>"}],
    "annotations" [{"image_id", "caption"}]) as {video image_id: [references]}."""
    payload = read_json(path, "`references_path`")
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(key), list) for key in ("images", "annotations")
    ):
        raise ValueError(
            f"`references_path` {str(path)!r} must be a JSON object with 'images' and 'annotations' lists "
            "(test_set4DSTC7-AVSD_multiref.json); is this the right file?"
        )
    names = {}
    for index, image in enumerate(payload["images"]):
        at = where(path, index)
        names[field_of(image, "id", (int, str), at)] = field_of(image, "name", str, at).rsplit("_", 1)[0]
    references: dict[str, list[str]] = {}
    for index, annotation in enumerate(payload["annotations"]):
        at = where(path, index)
        image_id = field_of(annotation, "image_id", (int, str), at)
        if image_id not in names:
            raise ValueError(f"{at}: annotation image_id {image_id!r} is not in 'images'; is the file corrupt?")
        caption = field_of(annotation, "caption", str, at)
        if caption.strip():
            references.setdefault(names[image_id], []).append(caption)
    return references


def convert_avsd(
    dialogs_path: str | os.PathLike,
    video_root: str | os.PathLike | None,
    split: str,
    *,
    references_path: str | os.PathLike | None = None,
    video_template: str = "{image_id}.mp4",
    features_template: str | None = None,
    side_channels: Mapping[str, str] | None = None,
) -> list[dict]:
    """AVSD (DSTC7) `{train,valid,test}_set4DSTC7-AVSD.json` ({"dialogs": [{"image_id", "summary", "caption",
    "dialog": [{"question", "answer"}, ...]}]}) -> one "dialogue" row per turn, with the preceding turns as `history`.

    A turn whose answer is "__UNDISCLOSED__" (the withheld last turn of the official test file) takes its answers from
    `references_path` (the multi-reference file, matched by image id) when given, else it is skipped (a logged count).
    The caption and summary go to `meta`. Template fields: `image_id` (the Charades video id).
    """
    split = check_split(split)
    layout = MediaLayout(video_root, video_template, features_template, side_channels or {})
    layout.check(("image_id",))
    references = {} if references_path is None else _avsd_references(references_path)
    payload = read_json(dialogs_path, "`dialogs_path`")
    if not isinstance(payload, dict) or not isinstance(payload.get("dialogs"), list):
        raise ValueError(
            f"`dialogs_path` {str(dialogs_path)!r} must be a JSON object with a 'dialogs' list; is this the right "
            "file?"
        )
    skipped = SkipCounter(dialogs_path)
    rows = []
    for index, dialog in enumerate(payload["dialogs"]):
        at = where(dialogs_path, index, dialog.get("image_id") if isinstance(dialog, dict) else None)
        image_id = field_of(dialog, "image_id", str, at)
        turns = field_of(dialog, "dialog", list, at)
        meta = {"image_id": image_id, "caption": dialog.get("caption", ""), "summary": dialog.get("summary", "")}
        history: list[list[str]] = []
        for turn_index, turn in enumerate(turns):
            turn_at = f"{at} turn {turn_index}"
            question = field_of(turn, "question", str, turn_at)
            answer = field_of(turn, "answer", str, turn_at)
            answers = references.get(image_id, []) if answer == UNDISCLOSED else [answer]
            if answer == UNDISCLOSED and not answers:
                skipped.skip(f"{UNDISCLOSED} answer (pass `references_path` to score the withheld turns)")
                break
            if not answer.strip():
                raise ValueError(
                    f"{turn_at}: the answer is empty; fix or drop the turn (every row needs a reference answer)."
                )
            rows.append({
                "id": f"avsd/{split}/{image_id}/{turn_index}", "split": split, "task": "dialogue",
                "question": question, "answers": answers, **layout.media({"image_id": image_id}),
                "history": [list(pair) for pair in history], "meta": {**meta, "turn": turn_index},
            })  # fmt: skip
            if answer == UNDISCLOSED:
                break  # the withheld turn ends the dialogue: later turns would lack its answer in their history
            history.append([question, answer])
    skipped.report()
    return finish_rows(rows, "avsd")


# --------------------------------------------------------------------------------------------- LLaVA-Video-178K


def strip_media_placeholders(text: str) -> str:
    """`text` without its `<image>` / `<video>` placeholders, trimmed: a line that held only placeholders is dropped;
    inside a line, a placeholder and the spaces around it become one space."""
    lines = []
    for line in text.split("\n"):
        if _MEDIA_PLACEHOLDER.search(line) is None:
            lines.append(line)
        elif cleaned := _MEDIA_PLACEHOLDER.sub(" ", line).strip():
            lines.append(cleaned)
    return "\n".join(lines).strip()


def convert_llava_video(
    annotation_path: str | os.PathLike,
    video_root: str | os.PathLike | None,
    split: str = "train",
    *,
    video_template: str = "{video}",
    features_template: str | None = None,
    side_channels: Mapping[str, str] | None = None,
) -> list[dict]:
    """LLaVA-Video-178K-style conversations (a list of {"id", "video", "conversations": [{"from": "human", "value":
    "<image>\\n..."}, {"from": "gpt", "value": ...}, ...], "data_source"}) -> one row per human/gpt turn.

    Turns after the first carry the earlier turns as `history`; rows of multi-turn conversations are task "dialogue",
    single-turn ones "qa". `<image>`/`<video>` placeholders are stripped. Turns must alternate human, gpt (else
    ValueError). Template fields: `video` (the record's relative path), `id`.
    """
    split = check_split(split)
    layout = MediaLayout(video_root, video_template, features_template, side_channels or {})
    layout.check(("video", "id"))
    payload = read_json(annotation_path, "`annotation_path`")
    if not isinstance(payload, list):
        raise ValueError(
            f"`annotation_path` {str(annotation_path)!r} must hold a JSON list of records; is this the right file?"
        )
    rows = []
    for index, record in enumerate(payload):
        at = where(annotation_path, index, record.get("id") if isinstance(record, dict) else None)
        record_id = str(field_of(record, "id", (str, int), at))
        video = field_of(record, "video", str, at)
        messages = field_of(record, "conversations", list, at)
        if not messages or len(messages) % 2:
            raise ValueError(
                f"{at}: `conversations` must hold human/gpt pairs, got {len(messages)} message(s); fix the record."
            )
        history: list[list[str]] = []
        for turn in range(len(messages) // 2):
            for offset, speaker in enumerate(("human", "gpt")):
                message = messages[2 * turn + offset]
                if not isinstance(message, dict) or message.get("from") != speaker:
                    raise ValueError(
                        f"{at}: message {2 * turn + offset} must be from {speaker!r} (turns alternate human, gpt), "
                        f"got {message!r}; fix the record."
                    )
            question = strip_media_placeholders(field_of(messages[2 * turn], "value", str, at))
            answer = field_of(messages[2 * turn + 1], "value", str, at).strip()
            if not answer:
                raise ValueError(f"{at}: the answer of turn {turn} is empty; fix or drop the record.")
            rows.append({
                "id": f"llava_video_178k/{split}/{record_id}/{turn}", "split": split,
                "task": "dialogue" if len(messages) > 2 else "qa", "question": question, "answers": [answer],
                **layout.media({"video": video, "id": record_id}), "history": [list(pair) for pair in history],
                "meta": {"source_id": record_id, "data_source": record.get("data_source"), "turn": turn},
            })  # fmt: skip
            history.append([question, answer])
    return finish_rows(rows, "llava_video_178k")


# --------------------------------------------------------------------------------------------- YouCook2


def convert_youcook2(
    annotation_path: str | os.PathLike,
    video_root: str | os.PathLike | None,
    split: str,
    *,
    question: str = "",
    video_template: str = "{subset}/{recipe_type}/{video_id}.mp4",
    features_template: str | None = None,
    side_channels: Mapping[str, str] | None = None,
) -> list[dict]:
    """YouCook2 `youcookii_annotations_trainval.json` ({"database": {video_id: {"subset", "duration",
    "recipe_type", "annotations": [{"id", "segment": [start_s, end_s], "sentence"}]}}}) -> one "caption" row per
    segment of the videos whose subset ("training" / "validation" / "testing") is `split`, with `timestamps`.

    `question` "" uses the recipe's caption prompt. A segment with end <= start is skipped (a logged count); a missing
    sentence raises ValueError. Template fields: `video_id`, `subset`, `recipe_type`.
    """
    split = check_split(split)
    layout = MediaLayout(video_root, video_template, features_template, side_channels or {})
    layout.check(("video_id", "subset", "recipe_type"))
    payload = read_json(annotation_path, "`annotation_path`")
    if not isinstance(payload, dict) or not isinstance(payload.get("database"), dict):
        raise ValueError(
            f"`annotation_path` {str(annotation_path)!r} must be a JSON object with a 'database' object; is this "
            "youcookii_annotations_trainval.json?"
        )
    skipped = SkipCounter(annotation_path)
    rows = []
    for index, (video_id, entry) in enumerate(payload["database"].items()):
        at = where(annotation_path, index, video_id)
        subset = field_of(entry, "subset", str, at)
        if subset not in _YOUCOOK2_SUBSETS:
            raise ValueError(
                f"{at}: subset {subset!r} is not one of {list(_YOUCOOK2_SUBSETS)}; is this the right file?"
            )
        if _YOUCOOK2_SUBSETS[subset] != split:
            continue
        recipe_type = str(field_of(entry, "recipe_type", (str, int), at))
        fields = {"video_id": video_id, "subset": subset, "recipe_type": recipe_type}
        for position, segment in enumerate(field_of(entry, "annotations", list, at)):
            segment_at = f"{at} segment {position}"
            bounds = field_of(segment, "segment", list, segment_at)
            sentence = field_of(segment, "sentence", str, segment_at)
            if len(bounds) != 2 or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
                raise ValueError(f"{segment_at}: `segment` must be [start_s, end_s], got {bounds!r}; fix the record.")
            if not sentence.strip():
                raise ValueError(f"{segment_at}: the sentence is empty; fix or drop the segment.")
            if not 0 <= bounds[0] < bounds[1]:
                skipped.skip("segment with end <= start (or a negative start)")
                continue
            segment_id = segment.get("id", position)
            rows.append({
                "id": f"youcook2/{split}/{video_id}/{segment_id}", "split": split, "task": "caption",
                "question": question, "answers": [sentence], **layout.media(fields),
                "timestamps": [float(bounds[0]), float(bounds[1])],
                "meta": {"video_id": video_id, "recipe_type": recipe_type, "duration": entry.get("duration"),
                         "segment_id": segment_id},
            })  # fmt: skip
    skipped.report()
    return finish_rows(rows, "youcook2")


# --------------------------------------------------------------------------------------------- Breakfast


def frames_to_seconds(start_frame: int, end_frame: int, fps: float = BREAKFAST_FPS) -> list[float]:
    """A 1-based, inclusive frame range "start-end" as [start_s, end_s]: [(start - 1) / fps, end / fps]."""
    return [(start_frame - 1) / fps, end_frame / fps]


def _breakfast_files(label_paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(label_paths, str | os.PathLike):
        root = Path(label_paths)
        if root.is_dir():
            files = sorted(root.rglob("*.txt"))
            if not files:
                raise ValueError(
                    f"`label_paths` folder {str(root)!r} holds no .txt label files; pass Breakfast's "
                    "segmentation_coarse folder."
                )
            return files
        label_paths = [root]
    files = [Path(path) for path in label_paths]
    for path in files:
        if not path.is_file():
            raise ValueError(
                f"`label_paths` must be label files or a folder of them, got {str(path)!r}; check the path."
            )
    return sorted(files)


def _breakfast_segments(path: Path) -> list[list[Any]]:
    """[[start_s, end_s, label], ...] of one label file ("<start>-<end> <label>" lines, 1-based frames)."""
    segments = []
    for number, line in read_lines(path, "`label_paths`"):
        match = _BREAKFAST_LINE.match(line)
        if match is None or not 1 <= int(match[1]) <= int(match[2]):
            raise ValueError(
                f"{path.name} line {number}: expected '<start frame>-<end frame> <label>' with 1 <= start <= end, got "
                f"{line!r}; is this a Breakfast segmentation file?"
            )
        segments.append([*frames_to_seconds(int(match[1]), int(match[2])), match[3]])
    if not segments:
        raise ValueError(f"{path.name}: the label file is empty; re-download it or leave it out.")
    return segments


def convert_breakfast(
    label_paths: str | os.PathLike | Iterable[str | os.PathLike],
    video_root: str | os.PathLike | None,
    split: str,
    *,
    fold: int = 1,
    question: str = "What type of breakfast is shown in the video?",
    segment_rows: bool = False,
    segment_question: str = "What action is being performed?",
    video_template: str = "{person}/{camera}/{person}_{activity}.avi",
    features_template: str | None = None,
    side_channels: Mapping[str, str] | None = None,
) -> list[dict]:
    """Breakfast per-video segmentation label files ("<start>-<end> <label>" per line, 1-based frames at 15 fps, named
    "<person>_<camera>_<person>_<activity>.txt") -> one "classification" row per video (answer: the activity from the
    file name), its segments in `meta.segments` as [start_s, end_s, label].

    `split` "train" / "test" keeps the videos of the standard fold `fold` (1-4; fold k tests on the persons
    `BREAKFAST_TEST_PERSONS[k]`). `segment_rows` adds one "classification" row per segment (answer: the action
    label, with `timestamps`). Template fields: `person`, `camera`, `activity`, `stem` (the file name without .txt).
    """
    split = check_split(split, ("train", "test"))
    if fold not in BREAKFAST_TEST_PERSONS:
        raise ValueError(f"`fold` must be in [1, 4] (Breakfast's standard splits), got {fold!r}; pick one of 1-4.")
    layout = MediaLayout(video_root, video_template, features_template, side_channels or {})
    layout.check(("person", "camera", "activity", "stem"))
    rows = []
    for path in _breakfast_files(label_paths):
        parts = path.stem.split("_")
        if len(parts) < 3 or not re.fullmatch(r"P\d+", parts[0]):
            raise ValueError(
                f"`label_paths` file {path.name!r} must be named '<person>_<camera>_..._<activity>.txt' "
                "(e.g. P03_cam01_P03_cereals.txt); rename it."
            )
        person, camera, activity = parts[0], parts[1], parts[-1]
        if (person in BREAKFAST_TEST_PERSONS[fold]) != (split == "test"):
            continue
        segments = _breakfast_segments(path)
        media = layout.media({"person": person, "camera": camera, "activity": activity, "stem": path.stem})
        base = f"breakfast/{split}/{path.stem}"
        meta = {"person": person, "camera": camera, "fold": fold}
        rows.append({"id": base, "split": split, "task": "classification", "question": question,
                     "answers": [activity], **media, "meta": {**meta, "segments": segments}})  # fmt: skip
        if segment_rows:
            rows.extend(
                {"id": f"{base}/{k}", "split": split, "task": "classification", "question": segment_question,
                 "answers": [label], **media, "timestamps": [start, end], "meta": {**meta, "activity": activity}}
                for k, (start, end, label) in enumerate(segments)
            )  # fmt: skip
    return finish_rows(rows, "breakfast")
