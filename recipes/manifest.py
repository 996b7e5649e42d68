"""The JSONL data manifest: one JSON object per line, one training/evaluation example per object.

Every dataset enters videoadapt through this format (the converters in `videoadapt.recipes.converters` write it from
the published annotation layouts). A row names a video (or a pre-extracted frame-feature file), the instruction or
question, the reference answers and, optionally, a time segment, side-channel media or features, a dialogue history,
multiple-choice options and dataset-specific extras. See `MANIFEST_FIELDS` and docs/manifest.md.

Rows are validated strictly on write and on load: unknown keys, wrong types and out-of-range values raise
`ValueError("<where>: `<field>` must be ..., got ...; <fix>")`, where <where> is the file and line (or the row index).
Relative paths (`video`, `features`, `side_channels` values) are resolved against the manifest file's folder when the
manifest is loaded; absolute paths and URLs (`scheme://...`) are kept as written.
"""

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets import Features, Json, List, Value


__all__ = [
    "MANIFEST_FIELDS",
    "REQUIRED_FIELDS",
    "SPLITS",
    "TASKS",
    "load_manifest",
    "manifest_features",
    "read_manifest_rows",
    "validate_row",
    "write_manifest",
]

SPLITS = ("train", "validation", "test")
TASKS = ("qa", "caption", "classification", "dialogue")
REQUIRED_FIELDS = ("id", "split", "question", "answers")
MANIFEST_FIELDS: dict[str, str] = {
    "id": "str, unique within the manifest (e.g. 'msvd_qa/train/123')",
    "split": "one of 'train', 'validation', 'test'",
    "task": "'qa' | 'caption' | 'classification' | 'dialogue' (default 'qa')",
    "question": "str, the instruction or question ('' only for task 'caption': the recipe's prompt is used)",
    "answers": "list[str], >= 1 non-empty references (classification: the class name); training uses answers[0]",
    "video": "str, path to the media file (relative: against the manifest's folder); this or `features` is required",
    "features": "str, path to a pre-extracted frame-feature file; this or `video` is required",
    "timestamps": "[start_s, end_s], 0 <= start < end: the segment of the video the row is about",
    "side_channels": "{name: path}, side-channel media or feature files (e.g. {'audio': 'a.wav'})",
    "history": "list of [question, answer] pairs that precede this turn (multi-turn dialogues)",
    "options": "list[str], >= 2 multiple-choice options; answers[0] is one of them",
    "meta": "dict of dataset-specific extras (question type, scene id, ...), JSON values only",
}
_PATH_FIELDS = ("video", "features")


def manifest_features() -> Features:
    """The `datasets` Features of a loaded manifest: optional fields are typed the same whether present or not
    (absent -> None); `side_channels` and `meta` are free-form JSON objects (`datasets.Json`)."""
    text = Value("string")
    return Features(
        {
            "id": text,
            "split": text,
            "task": text,
            "question": text,
            "answers": List(text),
            "video": text,
            "features": text,
            "timestamps": List(Value("float64")),
            "side_channels": Json(),
            "history": List(List(text)),
            "options": List(text),
            "meta": Json(),
        }
    )


# --------------------------------------------------------------------------------------------- validation


def _fail(where: str, field: str, rule: str, value: Any, fix: str) -> ValueError:
    shown = repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return ValueError(f"{where}: `{field}` must be {rule}, got {shown}; {fix}.")


def _is_text(value: Any, allow_empty: bool = False) -> bool:
    return isinstance(value, str) and (allow_empty or value.strip() != "")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_json(value: Any) -> bool:
    """JSON values only: null, bool, finite numbers, str, lists and str-keyed dicts of those."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_json(item) for key, item in value.items())
    return False


def _check_text_list(where: str, field: str, value: Any, minimum: int, fix: str) -> list[str]:
    rule = f"a list of >= {minimum} non-empty strings"
    if not isinstance(value, list | tuple) or len(value) < minimum or not all(_is_text(item) for item in value):
        raise _fail(where, field, rule, value, fix)
    return list(value)


def _check_timestamps(where: str, value: Any) -> list[float]:
    rule = "[start_s, end_s] with finite numbers and 0 <= start < end"
    fix = "give the segment in seconds from the start of the video"
    if not isinstance(value, list | tuple) or len(value) != 2 or not all(_is_number(item) for item in value):
        raise _fail(where, "timestamps", rule, value, fix)
    start, end = float(value[0]), float(value[1])
    if not 0 <= start < end:
        raise _fail(where, "timestamps", rule, value, fix)
    return [start, end]


def _check_side_channels(where: str, value: Any) -> dict[str, str]:
    rule = "a dict {name: path} with non-empty string names and paths"
    fix = "e.g. {'audio': 'audio/clip.wav'}"
    if not isinstance(value, dict) or not all(_is_text(k) and _is_text(v) for k, v in value.items()):
        raise _fail(where, "side_channels", rule, value, fix)
    return dict(value)


def _check_history(where: str, value: Any) -> list[list[str]]:
    rule = "a list of [question, answer] string pairs"
    fix = "give the preceding turns of the dialogue, oldest first"

    def is_pair(turn: Any) -> bool:
        return isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(text, str) for text in turn)

    if not isinstance(value, list | tuple) or not all(is_pair(turn) for turn in value):
        raise _fail(where, "history", rule, value, fix)
    return [list(turn) for turn in value]


def validate_row(row: dict, where: str) -> dict:
    """Check one manifest row and return it normalised.

    The normalised row has the fields in `MANIFEST_FIELDS` order, `task` filled (default "qa"), optional fields that
    are None dropped (null is the same as absent), `timestamps` as floats and tuples turned into lists.

    Args:
        row: the row as parsed from JSON (or built by a converter).
        where: where the row comes from, for error messages (e.g. "train.jsonl line 3").

    Raises:
        ValueError: naming `where`, the field, the rule, the received value and the fix.
    """
    if not isinstance(row, dict):
        kind = type(row).__name__
        raise ValueError(f"{where}: a manifest row must be a JSON object, got {kind}; write one object per line.")
    unknown = sorted(set(row) - set(MANIFEST_FIELDS))
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {unknown}; the allowed fields are {list(MANIFEST_FIELDS)}. Fix the spelling, "
            "or put dataset-specific extras under `meta`."
        )
    for name in REQUIRED_FIELDS:
        if row.get(name) is None:
            raise ValueError(
                f"{where}: the required field `{name}` is missing; every row needs {list(REQUIRED_FIELDS)}."
            )

    out: dict[str, Any] = {}
    if not _is_text(row["id"]):
        raise _fail(where, "id", "a non-empty string", row["id"], "give every row a unique id")
    out["id"] = row["id"]
    if row["split"] not in SPLITS:
        raise _fail(where, "split", f"one of {list(SPLITS)}", row["split"], "use 'validation' for dev/val splits")
    out["split"] = row["split"]
    task = "qa" if row.get("task") is None else row["task"]
    if task not in TASKS:
        raise _fail(where, "task", f"one of {list(TASKS)}", task, "pick the task the row is for")
    out["task"] = task
    question = row["question"]
    if not isinstance(question, str):
        raise _fail(where, "question", "a string", question, "give the instruction or question as text")
    if question.strip() == "" and task != "caption":
        raise _fail(where, "question", f"non-empty for task {task!r} ('' is allowed only for 'caption')", question,
                    "write the question, or set task 'caption' to use the recipe's prompt")  # fmt: skip
    out["question"] = question
    out["answers"] = _check_text_list(where, "answers", row["answers"], 1, "give at least one reference answer")

    if row.get("video") is None and row.get("features") is None:
        raise ValueError(
            f"{where}: the row needs `video` (a media file) or `features` (a pre-extracted feature file), or both; "
            "neither is given."
        )
    for name in _PATH_FIELDS:
        if row.get(name) is not None:
            if not _is_text(row[name]):
                raise _fail(where, name, "a non-empty path string", row[name], f"give the {name} file's path")
            out[name] = row[name]
    if row.get("timestamps") is not None:
        out["timestamps"] = _check_timestamps(where, row["timestamps"])
    if row.get("side_channels") is not None:
        out["side_channels"] = _check_side_channels(where, row["side_channels"])
    if row.get("history") is not None:
        out["history"] = _check_history(where, row["history"])
    if row.get("options") is not None:
        options = _check_text_list(where, "options", row["options"], 2, "give all the choices")
        if out["answers"][0] not in options:
            raise _fail(where, "options", f"a list that contains answers[0] = {out['answers'][0]!r}", options,
                        "put the correct choice (verbatim) first in `answers`")  # fmt: skip
        out["options"] = options
    if row.get("meta") is not None:
        if not isinstance(row["meta"], dict) or not _is_json(row["meta"]):
            raise _fail(where, "meta", "a dict of JSON values (str keys; no NaN/inf, no other objects)", row["meta"],
                        "convert extras to str/int/float/bool/list/dict")  # fmt: skip
        out["meta"] = row["meta"]
    return out


# --------------------------------------------------------------------------------------------- writing


def write_manifest(rows: Iterable[dict], path: str | os.PathLike) -> int:
    """Validate `rows` and write them as a JSONL manifest at `path`, atomically.

    The rows go to a temporary file in the same folder, which replaces `path` (`os.replace`) only once every row is
    valid and written: an invalid row (or duplicate id) leaves no partial file and an existing `path` untouched.
    Paths are written as given (relative ones are resolved against the manifest's folder at load time).

    Returns:
        The number of rows written.

    Raises:
        ValueError: for an invalid row (see `validate_row`; "row i" is its 0-based index) or a duplicate id.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    seen: dict[str, int] = {}
    try:
        with handle:
            for index, row in enumerate(rows):
                where = f"{path.name}: row {index}"
                clean = validate_row(row, where)
                if clean["id"] in seen:
                    raise ValueError(
                        f"{where}: duplicate `id` {clean['id']!r} (first at row {seen[clean['id']]}); ids must be "
                        "unique within a manifest."
                    )
                seen[clean["id"]] = index
                handle.write(json.dumps(clean, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return len(seen)


# --------------------------------------------------------------------------------------------- reading


def read_manifest_rows(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the validated, normalised rows of a manifest file in order (paths as written; blank lines skipped).
    Duplicate ids raise `ValueError`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"`path` must be an existing manifest file, got {str(path)!r}; check the path (write one with "
            "`write_manifest`)."
        )
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{where}: not valid JSON ({error.msg} at column {error.colno}); write one JSON object per line."
                ) from None
            clean = validate_row(row, where)
            if clean["id"] in seen:
                raise ValueError(
                    f"{where}: duplicate `id` {clean['id']!r} (first on line {seen[clean['id']]}); ids must be "
                    "unique within a manifest."
                )
            seen[clean["id"]] = number
            yield clean


def _resolve(folder: Path, value: str) -> str:
    """`value` joined to the manifest's folder when relative; absolute paths and URLs are kept."""
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(folder / value)


def _loaded_row(row: dict, folder: Path) -> dict:
    """A validated row with every feature column present (None when absent) and its paths resolved."""
    out = {name: row.get(name) for name in MANIFEST_FIELDS}
    for name in _PATH_FIELDS:
        if out[name] is not None:
            out[name] = _resolve(folder, out[name])
    if out["side_channels"] is not None:
        out["side_channels"] = {key: _resolve(folder, value) for key, value in out["side_channels"].items()}
    return out


def _generate_split(path: str, split: str, size: int, mtime_ns: int) -> Iterator[dict]:
    """`datasets` generator: the rows of one split. `size`/`mtime_ns` only key the cache to the file's version.

    `load_manifest` has already checked the whole file (`read_manifest_rows`), so only this split's rows are
    normalised again here, and the other rows are just parsed."""
    folder = Path(path).parent
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                row = json.loads(line)
                if row.get("split") == split:
                    yield _loaded_row(validate_row(row, f"{path}: line {number}"), folder)


def load_manifest(
    path: str | os.PathLike,
    split: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    keep_in_memory: bool = False,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load a JSONL manifest with `datasets`, validating every row. Nothing is downloaded.

    Relative `video`, `features` and `side_channels` paths are resolved against the manifest file's folder. The
    columns are those of `manifest_features()`; a field absent from a row is None.

    Args:
        path: the manifest file.
        split: return only this split as a `datasets.Dataset` (one of "train", "validation", "test"); None returns a
            `datasets.DatasetDict` of the splits present in the file.
        cache_dir: where `datasets` writes its Arrow cache (default: the `datasets` cache). The cache is keyed to the
            file's path, size and modification time.
        keep_in_memory: keep the tables in memory instead of memory-mapping the cache files.

    Raises:
        ValueError: the file is missing or empty, a row is invalid (with the line number), an id repeats, or `split`
            is not a split name or has no rows in the file.
    """
    path = Path(path).resolve()
    if split is not None and split not in SPLITS:
        raise ValueError(
            f"`split` must be one of {list(SPLITS)} or None (all splits), got {split!r}; use 'validation' for dev/val."
        )
    counts: dict[str, int] = {}
    for row in read_manifest_rows(path):
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    if not counts:
        raise ValueError(f"`path` {str(path)!r} holds no rows; write the manifest with at least one row.")
    wanted = [split] if split is not None else [name for name in SPLITS if name in counts]
    if split is not None and split not in counts:
        raise ValueError(f"`split` {split!r} has no rows in {str(path)!r}; the file holds {sorted(counts)}.")
    stat = path.stat()
    loaded = {
        name: datasets.Dataset.from_generator(
            _generate_split,
            features=manifest_features(),
            cache_dir=None if cache_dir is None else str(cache_dir),
            keep_in_memory=keep_in_memory,
            gen_kwargs={"path": str(path), "split": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
            split=datasets.NamedSplit(name),
        )
        for name in wanted
    }
    return loaded[split] if split is not None else datasets.DatasetDict(loaded)
