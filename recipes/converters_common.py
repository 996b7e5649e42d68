"""Shared pieces of the dataset converters: reading annotation files with clear errors, checking record fields, the
media layout (where a record's video, feature file and side-channel files live) and counted skips.

Every converter error is a `ValueError` that names the file, the record (index and id) and the fix.
"""

import json
import os
import string
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import logging

from videoadapt.recipes.manifest import SPLITS, validate_row


__all__ = ["MediaLayout", "SkipCounter", "check_split", "field_of", "finish_rows", "read_json", "read_lines", "where"]

logger = logging.get_logger(__name__)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed JSON file `path`; `what` names the argument (e.g. "`qa_path`") for the error messages."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{what} must be an existing file, got {str(path)!r}; download the annotations and pass their path."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{what} {str(path)!r} is not valid JSON ({error.msg}, line {error.lineno}); re-download the file."
        ) from None


def read_lines(path: str | os.PathLike, what: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) for every non-blank line of the text file `path`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{what} must be an existing file, got {str(path)!r}; download the annotations and pass their path."
        )
    with open(path, encoding="utf-8") as handle:
        return [(number, line.strip()) for number, line in enumerate(handle, start=1) if line.strip()]


def where(path: str | os.PathLike, index: int, record_id: Any = None) -> str:
    """ "<file>: record <index> (id <id>)", the prefix of converter errors."""
    shown = "" if record_id is None else f" (id {record_id!r})"
    return f"{Path(path).name}: record {index}{shown}"


def field_of(record: Any, name: str, kind: type | tuple[type, ...], at: str, fix: str = "") -> Any:
    """`record[name]`, which must exist and be of type `kind` (bool is never an int); else a ValueError at `at`."""
    if not isinstance(record, dict):
        raise ValueError(f"{at}: a record must be a JSON object, got {type(record).__name__}; is this the right file?")
    value = record.get(name)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{at}: field `{name}` must be a {names}, got {value!r}; {fix or 'is this the right file?'}")
    return value


def check_split(split: str, allowed: tuple[str, ...] = SPLITS) -> str:
    """`split` if it is one of `allowed`, else a ValueError."""
    if split not in allowed:
        raise ValueError(
            f"`split` must be one of {list(allowed)}, got {split!r}; name the split the annotation file is."
        )
    return split


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class MediaLayout:
    """Where a record's files are: `video_root / video_template`, a feature file and side-channel files.

    Templates are `str.format` patterns over the record's fields (each converter documents them, e.g. "{video_id}").
    `video_root=None` writes no `video` (then `features_template` is required). Feature and side-channel templates are
    used as written (relative paths are resolved against the manifest's folder when it is loaded).
    """

    video_root: str | os.PathLike | None
    video_template: str
    features_template: str | None = None
    side_channels: Mapping[str, str] = field(default_factory=dict)

    def check(self, available: tuple[str, ...]) -> None:
        """Every template must use only `available` fields, and some media must be named."""
        if self.video_root is None and self.features_template is None:
            raise ValueError(
                "`video_root` is None and `features_template` is None; give a video folder, a feature-file template, "
                "or both."
            )
        templates = {"video_template": self.video_template, "features_template": self.features_template}
        templates.update({f"side_channels[{name!r}]": value for name, value in self.side_channels.items()})
        for argument, template in templates.items():
            if template is None:
                continue
            unknown = _template_fields(template) - set(available)
            if unknown:
                raise ValueError(
                    f"`{argument}` = {template!r} uses unknown field(s) {sorted(unknown)}; this converter provides "
                    f"{list(available)}."
                )

    def media(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The row's `video` / `features` / `side_channels` entries for a record with these template fields."""
        out: dict[str, Any] = {}
        if self.video_root is not None:
            out["video"] = str(Path(self.video_root) / self.video_template.format(**fields))
        if self.features_template is not None:
            out["features"] = self.features_template.format(**fields)
        if self.side_channels:
            out["side_channels"] = {name: value.format(**fields) for name, value in self.side_channels.items()}
        return out


class SkipCounter:
    """Counts records a converter skips on purpose, by reason, and logs one warning per reason at the end."""

    def __init__(self, source: str | os.PathLike) -> None:
        self.source = Path(source).name
        self.counts: Counter[str] = Counter()

    def skip(self, reason: str) -> None:
        self.counts[reason] += 1

    def report(self) -> None:
        for reason, count in self.counts.items():
            logger.warning(f"{self.source}: skipped {count} record(s): {reason}.")


def finish_rows(rows: list[dict], name: str) -> list[dict]:
    """Validate every converted row (a converter bug or a bad value in the annotations fails here, with the id)."""
    return [validate_row(row, f"{name} row {index} (id {row.get('id')!r})") for index, row in enumerate(rows)]
