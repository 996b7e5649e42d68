"""`VideoadaptHubMixin`: every videoadapt model writes its model card on `save_pretrained` and pushes it to the Hub.

transformers' `push_to_hub` saves into a temporary folder and then overwrites README.md with a generic card (the
remote one or a template), and uploads only one level of subfolders. This mixin writes our card (see
`videoadapt.model_cards`) after the weights, and `push_to_hub` uploads the saved folder as it is, PAVE's
`patches/<name>/` included, with `HfApi.upload_folder`. `save_pretrained(dir, push_to_hub=True)` uploads the files
that this save wrote, at any depth, as transformers does (modified files only): never what else `dir` holds (a
trainer's `checkpoint-*/` with pickled optimizer states, logs, ...).

The card's facts come, key by key, from the first of:
1. `model.card_info` (the recipes set it: `train` the recipe and data, `evaluate ... card=true` the metrics);
2. the videoadapt card already in the target folder, so that evaluate's metrics survive a later re-save;
3. the videoadapt card of the folder the model was loaded from (`config._name_or_path`), so that pushing a trained,
   evaluated model keeps its card;
4. for the base model only: `config._name_or_path` (a Hub id, or a local folder named by its last part only), else
   a PAVE patch's recorded base.
A recorded card counts only when it describes the same model type. `card_info` never enters config.json.
"""

import glob
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitInfo, HfApi, metadata_load
from transformers.utils import logging

from videoadapt.model_cards import check_card_info, is_hub_id, model_card


__all__ = ["CARD_NAME", "VideoadaptHubMixin", "read_card_info", "upload_folder"]

logger = logging.get_logger(__name__)

CARD_NAME = "README.md"
# `save_pretrained(..., push_to_hub=True, **these)` as transformers takes them
_PUSH_KWARGS = ("repo_id", "commit_message", "commit_description", "private", "revision", "create_pr", "tags")


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _index_metrics(meta: dict) -> dict[str, dict] | None:
    """`model-index` -> {dataset: {metric: value, "split": split}}."""
    out = {}
    for entry in _dicts(meta.get("model-index")):
        for result in _dicts(entry.get("results")):
            dataset = result.get("dataset") if isinstance(result.get("dataset"), dict) else {}
            name = dataset.get("name") or dataset.get("type")
            scores = out.setdefault(str(name), {}) if name else {}
            if dataset.get("split"):
                scores["split"] = str(dataset["split"])
            for metric in _dicts(result.get("metrics")):
                value = metric.get("value")
                if isinstance(value, int | float) and not isinstance(value, bool):
                    scores[str(metric.get("name") or metric.get("type"))] = value
    return out or None


def read_card_info(folder: str | os.PathLike, model_type: str | None = None) -> dict[str, Any]:
    """The `card_info` that the videoadapt card `folder/README.md` records; {} when there is none, when it cannot be
    read, or when it describes another `model_type`."""
    path = Path(folder) / CARD_NAME
    try:
        meta = metadata_load(path) if path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        logger.warning(f"Ignoring the unreadable model card {path} ({exc}).")
        return {}
    block = (meta or {}).get("videoadapt")
    if not meta or meta.get("library_name") != "videoadapt" or not isinstance(block, dict):
        return {}
    if model_type is not None and block.get("model_type") != model_type:
        return {}
    info = {key: meta.get(key) for key in ("license", "base_model", "datasets")}
    info.update(recipe=block.get("recipe"), intended_use=block.get("intended_use"), metrics=_index_metrics(meta))
    try:
        return check_card_info(info)
    except (TypeError, ValueError) as exc:
        logger.warning(f"Ignoring what {path} records: {exc}")
        return {}


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary sibling and `os.replace`, so a reader never sees half a card."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _file_states(folder: str | os.PathLike) -> dict[str, tuple[int, int, int]]:
    """Relative POSIX path -> (inode, size, mtime in ns) of every file under `folder` ({} when it does not exist)."""
    root = Path(folder)
    states = {}
    for path in root.rglob("*") if root.is_dir() else []:
        if path.is_file():
            stat = path.stat()
            states[path.relative_to(root).as_posix()] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return states


def _tag_list(tags: Any) -> list[str]:
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    if not all(isinstance(tag, str) and tag for tag in tags):
        raise TypeError(f"`tags` must be a list of non-empty strings, got {tags!r}; e.g. tags=['audio', 'avqa'].")
    return tags


def upload_folder(
    api: HfApi,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str,
    token: bool | str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    only: list[str] | None = None,
) -> CommitInfo:
    """`HfApi.upload_folder` of `folder` as it is (or of the relative paths `only`), in one commit; a `revision` that
    is a branch name is created first (from main) when missing, as transformers' `push_to_hub` does."""
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    logger.info(f"Uploading {folder} to {repo_id} ({sorted(os.listdir(folder)) if only is None else sorted(only)}).")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message,
        commit_description=commit_description,
        token=token,
        revision=revision,
        create_pr=create_pr,
        allow_patterns=None if only is None else [glob.escape(path) for path in only],
    )


class VideoadaptHubMixin:
    """Put first in the bases of a videoadapt model class: `save_pretrained` writes README.md after the weights,
    `push_to_hub` uploads exactly what `save_pretrained` writes. Set `model.card_info` (see
    `videoadapt.model_cards`) to say how the model was trained and scored."""

    card_info: dict[str, Any] | None = None

    def card_facts(self, directory: str | os.PathLike | None = None, repo_id: str | None = None) -> dict[str, Any]:
        """The facts of the card `save_pretrained(directory)` would write (see the module docstring)."""
        info = check_card_info(self.card_info)
        model_type, source = self.config.model_type, getattr(self.config, "_name_or_path", "") or ""
        recorded = [read_card_info(directory, model_type)] if directory is not None else []
        recorded += [read_card_info(source, model_type)] if source and Path(source).is_dir() else []
        for facts in recorded:
            info.update({key: value for key, value in facts.items() if key not in info})
        if "base_model" not in info:
            host = getattr(self, "_patch_host", None)
            patch_bases = [p.config.base_model_name_or_path for p in host.patches.values()] if host else []
            info["base_model"] = next((b for b in [source, *patch_bases] if is_hub_id(b)), source or None)
        if info.get("base_model") in (None, repo_id):  # a model pushed back to the repository it came from
            info.pop("base_model")
        return info

    def save_card(
        self, directory: str | os.PathLike, *, tags: list[str] | None = None, repo_id: str | None = None
    ) -> Path:
        """Write this model's card to `directory/README.md` (atomically); returns its path."""
        directory = Path(directory)
        info = self.card_facts(directory, repo_id)
        tags = [*(getattr(self, "model_tags", None) or []), *_tag_list(tags)]
        path = directory / CARD_NAME
        _write_text(path, model_card(self, info, tags=tags, repo_id=repo_id))
        return path

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, then the model card; with `push_to_hub=True` (and `repo_id`, default
        the folder's name, `commit_message`, ...) the files this save wrote are then uploaded, subfolders included;
        other files already in the folder are not."""
        check_card_info(self.card_info)  # a bad `card_info` fails before anything is written
        push = {key: kwargs.pop(key) for key in _PUSH_KWARGS if key in kwargs}
        before = _file_states(save_directory) if push_to_hub else {}
        super().save_pretrained(save_directory, **kwargs)
        if not self._writes_files(kwargs.get("is_main_process", True)):
            return
        if not push_to_hub:
            self.save_card(save_directory)
            return
        api, token = HfApi(library_name="videoadapt"), kwargs.get("token")
        name = push.pop("repo_id", None) or Path(save_directory).resolve().name
        repo_id = api.create_repo(name, private=push.pop("private", None), token=token, exist_ok=True).repo_id
        self.save_card(save_directory, tags=push.pop("tags", None), repo_id=repo_id)
        message = push.pop("commit_message", None) or f"Upload {type(self).__name__}"
        written = [path for path, state in _file_states(save_directory).items() if before.get(path) != state]
        upload_folder(api, save_directory, repo_id, token=token, commit_message=message, only=written, **push)

    def _writes_files(self, is_main_process: bool) -> bool:
        """Whether this process writes files (the main process; rank 0 of a distributed run)."""
        check = getattr(self, "should_save_on_this_rank", None)
        return check(is_main_process) if check is not None else bool(is_main_process)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ) -> CommitInfo:
        """Upload this model (weights, config, every subfolder, and our README.md) to the Hub repository `repo_id`
        (created if needed) in one commit; returns the `CommitInfo`. `tags` join the card's tags.

        Example:
            ```python
            model.card_info = {"datasets": ["avqa"], "metrics": {"avqa": {"accuracy": 0.79, "split": "test"}}}
            model.push_to_hub("me/pave-audio", tags=["audio-visual"])
            ```
        """
        tags, _ = _tag_list(tags), check_card_info(self.card_info)  # fail before any Hub call
        api = HfApi(library_name="videoadapt")
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            super().save_pretrained(tmp, max_shard_size=max_shard_size)
            self.save_card(tmp, tags=tags, repo_id=repo_id)
            return upload_folder(
                api,
                tmp,
                repo_id,
                token=token,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )
