"""PAVE patches on the Hub: download a patch folder with clear errors, push one patch as its own repository, and
load a patch repository in one line.

A patch folder carries, beside the patch files (see `pave_patches`), a `config.json` of type `videoadapt_pave_patch`
(`PavePatchRepoConfig`) naming the base and the base revision it pins. `PavePatchRepo` is registered with
`AutoModelForImageTextToText` for that type, so

    AutoModelForImageTextToText.from_pretrained("me/audio-patch", revision="v1")

reads the patch at `v1`, loads the base named there at its pinned revision and attaches the patch, as transformers
does for PEFT adapters. A pushed patch's `adapter_config.json` names the patch repository itself as
`base_model_name_or_path`: transformers follows that field before reading `config.json`, so pointing it at the base
would load the bare base and only the LoRA half of the patch.
"""

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import PreTrainedModel
from transformers.utils import logging

from videoadapt.configuration.configuration_pave import PATCH_CONFIG_NAME, PavePatchRepoConfig
from videoadapt.hub_mixin import upload_folder
from videoadapt.model_cards import PAVE_CLASSES, check_card_info


__all__ = [
    "PAVE_CLASSES",
    "PatchDownloadError",
    "PavePatchRepo",
    "download_patch_folder",
    "load_patch_repo",
    "pave_class_for",
    "push_patch_to_hub",
]

logger = logging.get_logger(__name__)

# Keyword arguments `from_pretrained` passes down that concern the patch repository, not the base (`subfolder` and
# `revision` are read separately: they select the patch folder).
_PATCH_ONLY_KWARGS = ("adapter_kwargs", "adapter_name", "code_revision")
# Hub keyword arguments that reach both the patch download and the base's `from_pretrained`.
_HUB_KWARGS = ("token", "cache_dir", "local_files_only", "force_download")


class PatchDownloadError(OSError):
    """A patch could not be fetched from the Hub (network or server failure); nothing partial was kept."""


def pave_class_for(family: str | None, source: str) -> type[PreTrainedModel]:
    """The PAVE model class for a base family (`llava_onevision`, ...); `source` names the patch in errors."""
    import videoadapt.modeling_pave as modeling_pave

    if family not in PAVE_CLASSES:
        raise ValueError(
            f"{source} is for a {family!r} base; PAVE patches these families: "
            f"{sorted(k for k in PAVE_CLASSES if not k.startswith('videoadapt_'))}."
        )
    return getattr(modeling_pave, PAVE_CLASSES[family])


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def download_patch_folder(
    repo_id: str,
    revision: str | None = None,
    subfolder: str | None = None,
    **hub_kwargs: Any,
) -> Path:
    """Download the files of the patch folder `subfolder` of `repo_id` at `revision`; returns the local folder.

    `hub_kwargs` go to `snapshot_download` (token, cache_dir, local_files_only, force_download). An unknown repository
    or revision raises `ValueError`; a failed transfer raises `PatchDownloadError`. huggingface_hub moves a file into
    the snapshot only once it is complete, and the folder is checked for `patch_config.json` and `patch.safetensors`,
    so an interrupted download is never loaded.
    """
    pattern = f"{subfolder}/*" if subfolder else "*"
    # str(): a revision that transformers resolved is a `ResolvedRevision`, whose repr is not what the user typed
    where = f"{repo_id!r}" + (f" at revision {str(revision)!r}" if revision else "")
    kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    try:
        root = snapshot_download(str(repo_id), revision=revision, allow_patterns=[pattern], **kwargs)
    except RevisionNotFoundError as exc:
        raise ValueError(
            f"revision {str(revision)!r} does not exist in the patch repository {repo_id!r}; pass a branch, tag or "
            f"commit of it (see `HfApi().list_repo_refs({repo_id!r})`)."
        ) from exc
    except GatedRepoError as exc:
        raise ValueError(f"the patch repository {repo_id!r} is gated: request access, then pass `token=`.") from exc
    except RepositoryNotFoundError as exc:
        raise ValueError(
            f"{repo_id!r} is neither a local patch folder nor a repository on {_endpoint()} (if it is private, pass "
            "`token=`); check the name."
        ) from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise PatchDownloadError(
            f"the patch {where} is not in the local cache and the Hub cannot be reached ({exc}); connect once, or "
            "pass the path of a downloaded patch folder."
        ) from exc
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        raise PatchDownloadError(
            f"downloading the patch {where} from {_endpoint()} failed ({type(exc).__name__}: {exc}); nothing "
            "partial was kept in the cache, retry."
        ) from exc
    folder = Path(root) / (subfolder or "")
    missing = [name for name in (PATCH_CONFIG_NAME, "patch.safetensors") if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"the repository {where} has no {missing} under {subfolder or 'its root'!r}: it is not a PAVE patch "
            "(or a download was interrupted; retry with `force_download=True`)."
        )
    return folder


# ------------------------------------------------------------------------------------------------ one-line load


class PavePatchRepo(PreTrainedModel):
    """The Auto class entry for patch folders: `from_pretrained` returns the base PAVE model with the patch on.

    There is no model of this type to build: a patch only exists on top of its base.
    """

    config_class = PavePatchRepoConfig
    base_model_prefix = "model"

    def __init__(self, config: PavePatchRepoConfig, *args: Any, **kwargs: Any):
        raise TypeError(
            "a PAVE patch folder holds a patch, not a model: load it with `AutoModelForImageTextToText."
            "from_pretrained(<patch folder or repo>)` (base + patch) or `model.load_patch(<patch>)` on its base."
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        return load_patch_repo(pretrained_model_name_or_path, *args, **kwargs)


def load_patch_repo(path_or_repo: str | os.PathLike, *args: Any, config: PavePatchRepoConfig | None = None, **kwargs):
    """Load the base a patch folder or repository names (at its pinned revision) and attach the patch.

    `revision` and `subfolder` select the patch (a repository may hold patch folders in subfolders); the base's
    revision comes from the patch config (`base_revision`), which a keyword argument can override, as can
    `base_model_name_or_path`. `token`, `cache_dir`, `local_files_only` and `force_download` apply to both; other
    keyword arguments (dtype, device_map, attn_implementation, ...) go to the base's `from_pretrained`.
    """
    revision, subfolder = kwargs.pop("revision", None), kwargs.pop("subfolder", None) or None
    for key in _PATCH_ONLY_KWARGS:
        kwargs.pop(key, None)
    hub = {k: kwargs.get(k) for k in _HUB_KWARGS}
    if config is None:
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in PavePatchRepoConfig.__dataclass_fields__}
        found = {k: v for k, v in hub.items() if v is not None}
        config = PavePatchRepoConfig.from_pretrained(
            path_or_repo, revision=revision, subfolder=subfolder or "", **found, **overrides
        )
    source = f"the patch {str(path_or_repo)!r}"
    if config.base_model_name_or_path is None:
        raise ValueError(
            f"{source} names no base model; pass `base_model_name_or_path=<the base folder or repo>` to from_pretrained."
        )
    model_class = pave_class_for(config.base_model_type, source)
    base = config.base_model_name_or_path
    try:
        model = model_class.from_pretrained(base, *args, revision=config.base_revision, **kwargs)
    except OSError as exc:
        raise OSError(
            f"{source} needs its base {base!r}"
            + (f" at revision {config.base_revision!r}" * bool(config.base_revision))
            + f", which cannot be loaded ({exc}). Download the base, then pass `base_model_name_or_path=<its folder>` "
            "to from_pretrained."
        ) from exc
    model.load_patch(path_or_repo, name=config.patch_name, revision=revision, subfolder=subfolder, **hub)
    return model


# ------------------------------------------------------------------------------------------------------- push


def push_patch_to_hub(
    model: Any,
    name: str,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
):
    """Upload patch `name` of `model` alone as the repository `repo_id` (created if needed; a branch `revision` too);
    returns the CommitInfo.

    The repository then loads with `AutoModelForImageTextToText.from_pretrained(repo_id)` or `model.load_patch`.
    """
    check_card_info(getattr(model, "card_info", None))  # a bad `card_info` fails before any Hub call
    api = HfApi(token=token, library_name="videoadapt")
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        model.save_patch(name, tmp, repo_id=repo_id)
        return upload_folder(
            api,
            tmp,
            repo_id,
            token=token,
            commit_message=commit_message or f"Upload PAVE patch {name}",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


def lora_config_for_repo(lora_config: Any, repo_id: str | None) -> Any:
    """The LoRA config to write into a patch folder: for a repository, `base_model_name_or_path` names it (above)."""
    if repo_id is None:
        return lora_config
    lora_config = copy.copy(lora_config)
    lora_config.base_model_name_or_path = repo_id
    return lora_config
