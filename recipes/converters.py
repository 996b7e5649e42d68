"""Dataset converters: the published annotation layouts of the seeds' datasets -> JSONL manifest rows.

One function per dataset (`convert_<name>(annotation path(s), video_root, split, ...) -> list[dict]`), the registry
`CONVERTERS` and `convert(name, ..., out=path)`, which writes the rows with `write_manifest`. The QA converters live in
`converters_qa.py`, the dialogue/caption/classification ones in `converters_video.py`, shared helpers in
`converters_common.py`. Every converter takes keyword-only `video_template`, `features_template` and `side_channels`
(`str.format` patterns over the record's fields) to place the media. docs/manifest.md lists the layouts.

Example:

    rows = convert_msvd_qa("MSVD-QA/train_qa.json", "MSVD-QA/youtube_mapping.txt", "YouTubeClips", "train")
    convert("msvd_qa", "MSVD-QA/val_qa.json", "MSVD-QA/youtube_mapping.txt", "YouTubeClips", "validation",
            out="manifests/msvd_qa_val.jsonl")
"""

import os
from collections.abc import Callable
from typing import Any

from videoadapt.recipes.converters_common import MediaLayout
from videoadapt.recipes.converters_qa import (
    convert_activitynet_qa,
    convert_msvd_qa,
    convert_music_avqa,
    convert_scanqa,
    convert_sqa3d,
    fill_placeholders,
    read_youtube_mapping,
)
from videoadapt.recipes.converters_video import (
    BREAKFAST_FPS,
    BREAKFAST_TEST_PERSONS,
    convert_avsd,
    convert_breakfast,
    convert_llava_video,
    convert_youcook2,
    frames_to_seconds,
    strip_media_placeholders,
)
from videoadapt.recipes.manifest import write_manifest


__all__ = [
    "BREAKFAST_FPS",
    "BREAKFAST_TEST_PERSONS",
    "CONVERTERS",
    "MediaLayout",
    "convert",
    "convert_activitynet_qa",
    "convert_avsd",
    "convert_breakfast",
    "convert_llava_video",
    "convert_msvd_qa",
    "convert_music_avqa",
    "convert_scanqa",
    "convert_sqa3d",
    "convert_youcook2",
    "fill_placeholders",
    "frames_to_seconds",
    "read_youtube_mapping",
    "strip_media_placeholders",
]

CONVERTERS: dict[str, Callable[..., list[dict]]] = {
    "msvd_qa": convert_msvd_qa,
    "activitynet_qa": convert_activitynet_qa,
    "avsd": convert_avsd,
    "music_avqa": convert_music_avqa,
    "scanqa": convert_scanqa,
    "sqa3d": convert_sqa3d,
    "breakfast": convert_breakfast,
    "youcook2": convert_youcook2,
    "llava_video_178k": convert_llava_video,
}


def convert(name: str, *args: Any, out: str | os.PathLike, **kwargs: Any) -> int:
    """Run the converter `CONVERTERS[name]` with `args`/`kwargs` and write its rows to the manifest `out`
    (atomically, validated; see `write_manifest`). Returns the number of rows written.

    To put several splits in one manifest, call the converters and pass the concatenated rows to `write_manifest`.
    """
    if name not in CONVERTERS:
        raise ValueError(f"`name` must be one of {sorted(CONVERTERS)}, got {name!r}; pick the dataset's converter.")
    return write_manifest(CONVERTERS[name](*args, **kwargs), out)
