"""PAVE patch management: add, load, save, enable and delete named patches on a PAVE model.

A patch folder (the shareable unit) holds only the patch:

    patch_config.json            PavePatchConfig: side channel, sizes, flags, the base it was trained on
    patch.safetensors            fusion weights (keys relative to the patch module)
    adapter_config.json          the PEFT LoRA on the LLM
    adapter_model.safetensors    its weights, in PEFT's key format (`base_model.model.` prefix, no adapter name)
    README.md                    model card

Several patches can be enabled together: their residuals add up, and their LoRA adapters are active together
(peft sums them). The UX follows diffusers' `load_lora_weights` / `set_adapters`.
"""

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.utils import logging
from transformers.utils.hub import resolve_revision

from videoadapt.configuration.configuration_pave import PATCH_CONFIG_NAME, PavePatchConfig, PavePatchRepoConfig
from videoadapt.model_cards import patch_card, patch_card_info
from videoadapt.pave_hub import download_patch_folder, lora_config_for_repo, push_patch_to_hub


__all__ = ["LORA_TARGET_MODULES", "PATCH_WEIGHTS_NAME", "PavePatchesMixin", "default_lora_config"]

logger = logging.get_logger(__name__)

PATCH_WEIGHTS_NAME = "patch.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PATCHES_SUBFOLDER = "patches"
# All seven projections of every LLM decoder layer; the vision tower and projector never get LoRA.
LORA_TARGET_MODULES = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def default_lora_config(r: int = 64, alpha: int = 16, dropout: float = 0.05) -> LoraConfig:
    """PAVE's LoRA: r=64, alpha=16 (the paper), dropout 0.05 (the official code) on q/k/v/o/gate/up/down of every LLM layer."""
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGET_MODULES, bias="none")


def _resolve_folder(
    path_or_repo: str | os.PathLike, revision: str | None, subfolder: str | None = None, **hub_kwargs: Any
) -> Path:
    """A local folder, or a Hub repository downloaded (only the patch files) at `revision`."""
    local = Path(path_or_repo) / (subfolder or "")
    if local.is_dir():
        return local
    if Path(path_or_repo).exists():
        raise ValueError(f"{local} is not a folder; a patch is a folder holding `{PATCH_CONFIG_NAME}`.")
    return download_patch_folder(str(path_or_repo), revision, subfolder, **hub_kwargs)


_TMP_PREFIX = ".tmp-patch-"


def _atomic_folder_write(directory: Path, write, obsolete: tuple[str, ...] = ()) -> None:
    """Write every file into a temporary sibling folder, then move each into `directory` with os.replace, then
    remove the files named in `obsolete` that this write did not produce (e.g. an earlier save's LoRA). Temporary
    folders of an earlier write that was killed (SIGKILL skips their clean-up) are removed first."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=_TMP_PREFIX) as tmp:
        write(Path(tmp))
        written = {item.name for item in Path(tmp).iterdir()}
        for name in sorted(written):
            os.replace(Path(tmp) / name, directory / name)
    for name in obsolete:
        if name not in written:
            (directory / name).unlink(missing_ok=True)


class PavePatchesMixin:
    """Patch management for the `Pave*ForConditionalGeneration` classes (the headless model holds the patches)."""

    patch_class: type[torch.nn.Module]  # `PavePatch`, set by the model classes

    @property
    def _patch_host(self) -> torch.nn.Module:
        """The headless model, which holds `patches` and `enabled_patches` (self, or `self.model`)."""
        return self if hasattr(self, "enabled_patches") else self.model

    @property
    def _lora_key_prefix(self) -> str:
        """LoRA keys on disk are relative to the ForConditionalGeneration model; a headless model lacks `model.`."""
        return "" if self._patch_host is not self else "model."

    # ------------------------------------------------------------------------------------------------ queries

    @property
    def patch_names(self) -> list[str]:
        """Every loaded patch, enabled or not, in load order."""
        return list(self._patch_host.patches)

    @property
    def active_patches(self) -> list[str]:
        return list(self._patch_host.enabled_patches)

    @property
    def base_model_type(self) -> str:
        """The transformers family this model patches (e.g. `llava_onevision`)."""
        return next(
            klass.model_type
            for klass in type(self.config).__mro__[1:]
            if klass.__module__.startswith("transformers.") and getattr(klass, "model_type", "")
        )

    def patch_config_for(self, side_channel: str, side_channel_dim: int, **kwargs: Any) -> PavePatchConfig:
        """A `PavePatchConfig` sized for this model: query/output dims and the base's identity filled in."""
        official = kwargs.pop("official", False)
        query_source = kwargs.get("query_source", "vision" if official else "projected")
        text_hidden = self.config.text_config.hidden_size
        query_dim = self.config.vision_config.hidden_size if query_source == "vision" else text_hidden
        fields = dict(
            side_channel=side_channel,
            side_channel_dim=side_channel_dim,
            query_dim=query_dim,
            output_dim=text_hidden,
            base_model_type=self.base_model_type,
            base_model_name_or_path=self.config._name_or_path or None,
            base_revision=getattr(self, "_base_commit", None),
            base_hidden_size=text_hidden,
        )
        fields.update(kwargs)
        return PavePatchConfig.official(**fields) if official else PavePatchConfig(**fields)

    # ----------------------------------------------------------------------------------------- adding patches

    def check_patch_compatible(self, config: PavePatchConfig, source: str = "the patch") -> None:
        """Refuse a patch trained on another family or hidden size (before any weight is touched)."""
        text_hidden = self.config.text_config.hidden_size
        if config.base_model_type is not None and config.base_model_type != self.base_model_type:
            raise ValueError(
                f"{source} was made for a `{config.base_model_type}` base, but this model patches "
                f"`{self.base_model_type}`; load it onto a {config.base_model_type} model."
            )
        hidden = config.base_hidden_size if config.base_hidden_size is not None else config.output_dim
        if hidden != text_hidden or config.output_dim != text_hidden:
            raise ValueError(
                f"{source} needs an LLM hidden size of {hidden} (output_dim {config.output_dim}), but this model's "
                f"is {text_hidden}; load it onto the base it was trained on ({config.base_model_name_or_path})."
            )
        expected_query = self.config.vision_config.hidden_size if config.query_source == "vision" else text_hidden
        if config.query_dim != expected_query:
            raise ValueError(
                f"{source} expects {config.query_source} queries of {config.query_dim} channels, this model gives "
                f"{expected_query}."
            )

    def add_patch(
        self, name: str, config: PavePatchConfig, lora_config: LoraConfig | None = None, *, lora: bool = True
    ):
        """Create a new (identity) patch `name` with its LoRA adapter, and enable it beside the enabled ones."""
        self._check_new_name(name)
        self.check_patch_compatible(config, f"patch {name!r}")
        parameter = next(self.parameters())
        patch = self.patch_class(config, attn_implementation=self.config._attn_implementation or "sdpa")
        self._patch_host.patches[name] = patch.to(device=parameter.device, dtype=parameter.dtype)
        if lora:
            self._add_lora(lora_config or default_lora_config(), name)
        self.train(self.training)  # new modules (LoRA dropout) follow the model's train/eval mode
        self.set_patches([*self.active_patches, name])
        return patch

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"patch `name` must match {_NAME.pattern} (a module-safe name), got {name!r}.")
        if name in self._patch_host.patches:
            raise ValueError(
                f"a patch named {name!r} is already loaded; `delete_patch({name!r})` first or pick another."
            )

    def _add_lora(self, lora_config: LoraConfig, name: str) -> None:
        with warnings.catch_warnings():  # one LoRA adapter per patch is the design, not an accident
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            self.add_adapter(lora_config, adapter_name=name)

    def _lora_names(self) -> set[str]:
        return set(getattr(self, "peft_config", {}) or {}) if getattr(self, "_hf_peft_config_loaded", False) else set()

    # --------------------------------------------------------------------------------------- enable / delete

    def set_patches(self, names: str | list[str]) -> None:
        """Enable exactly these patches (their residuals add up; their LoRA adapters are active together)."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self._patch_host.patches]
        if unknown:
            raise ValueError(f"unknown patches {unknown}; loaded: {self.patch_names}.")
        self._patch_host.enabled_patches = list(dict.fromkeys(names))
        with_lora = [n for n in self._patch_host.enabled_patches if n in self._lora_names()]
        if with_lora:
            self.enable_adapters()
            self.set_adapter(with_lora)
        elif self._lora_names():
            self.disable_adapters()

    def disable_patches(self) -> None:
        """The plain base model again (patches stay loaded)."""
        self.set_patches([])

    def delete_patch(self, name: str) -> None:
        if name not in self._patch_host.patches:
            raise ValueError(f"no patch named {name!r}; loaded: {self.patch_names}.")
        self.set_patches([n for n in self.active_patches if n != name])
        del self._patch_host.patches[name]
        if name in self._lora_names():
            self.delete_adapter(name)

    def patch_parameters(self, name: str) -> list[torch.nn.Parameter]:
        """The fusion and LoRA parameters that belong to patch `name`."""
        lora = [p for n, p in self.named_parameters() if f".{name}." in n and ".lora_" in n]
        return [*self._patch_host.patches[name].parameters(), *lora]

    def train_patch(self, name: str) -> None:
        """Freeze everything but patch `name` (fusion + its LoRA); earlier patches stay frozen (stage-wise)."""
        if name not in self._patch_host.patches:
            raise ValueError(f"no patch named {name!r}; loaded: {self.patch_names}.")
        self.requires_grad_(False)
        for parameter in self.patch_parameters(name):
            parameter.requires_grad_(True)

    # ------------------------------------------------------------------------------------------- save / load

    def save_patch(
        self, name: str, directory: str | os.PathLike, model_card: str | None = None, repo_id: str | None = None
    ) -> Path:
        """Write patch `name` alone into `directory` (atomically, file by file); returns the folder.

        `repo_id`: the Hub repository the folder is meant for (`push_patch_to_hub` passes it), so that
        `AutoModelForImageTextToText.from_pretrained(repo_id)` loads base + patch (see `videoadapt.pave_hub`).
        """
        if name not in self._patch_host.patches:
            raise ValueError(f"no patch named {name!r}; loaded: {self.patch_names}.")
        patch = self._patch_host.patches[name]
        weights = {k: v.detach().contiguous().cpu() for k, v in patch.state_dict().items()}
        lora = None
        if name in self._lora_names():
            lora = {
                f"base_model.model.{self._lora_key_prefix}{k}": v.contiguous().cpu()
                for k, v in self.get_adapter_state_dict(name).items()
            }

        pointer = PavePatchRepoConfig(
            patch_name=name,
            base_model_name_or_path=patch.config.base_model_name_or_path,
            base_revision=patch.config.base_revision,
            base_model_type=patch.config.base_model_type or self.base_model_type,
        )

        def write(tmp: Path) -> None:
            patch.config.save(tmp)
            pointer.save_pretrained(tmp)
            save_file(weights, tmp / PATCH_WEIGHTS_NAME, metadata={"format": "pt"})
            if lora is not None:
                lora_config_for_repo(self.peft_config[name], repo_id).save_pretrained(tmp)
                save_file(lora, tmp / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
            card = model_card or patch_card(
                name,
                patch.config,
                fusion_parameters=sum(v.numel() for v in weights.values()),
                lora_parameters=sum(v.numel() for v in lora.values()) if lora else 0,
                repo_id=repo_id,
                **patch_card_info(getattr(self, "card_info", None)),
            )
            (tmp / "README.md").write_text(card)

        directory = Path(directory)
        _atomic_folder_write(directory, write, obsolete=(ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME))
        return directory

    def push_patch_to_hub(self, name: str, repo_id: str, **kwargs: Any):
        """Upload patch `name` alone as the Hub repository `repo_id`; see `videoadapt.pave_hub.push_patch_to_hub`."""
        if name not in self._patch_host.patches:
            raise ValueError(f"no patch named {name!r}; loaded: {self.patch_names}.")
        return push_patch_to_hub(self, name, repo_id, **kwargs)

    def load_patch(
        self,
        path_or_repo: str | os.PathLike,
        name: str | None = None,
        *,
        revision: str | None = None,
        subfolder: str | None = None,
        enable: bool = True,
        is_trainable: bool = False,
        **hub_kwargs: Any,
    ):
        """Load a patch folder (local or a Hub repo at `revision`) as patch `name` and enable it beside the others.

        The patch config is checked against this model before any weight is read; a corrupt or mismatched
        `patch.safetensors` raises `ValueError` and leaves the model unchanged. `hub_kwargs` (token, cache_dir,
        local_files_only, force_download) go to the download.
        """
        folder = _resolve_folder(path_or_repo, revision, subfolder, **hub_kwargs)
        name = name or _default_patch_name(path_or_repo, folder)
        self._check_new_name(name)
        config = PavePatchConfig.load(folder)
        self.check_patch_compatible(config, f"the patch at {folder}")
        patch = self.patch_class(config, attn_implementation=self.config._attn_implementation or "sdpa")
        weights = _read_weights(folder / PATCH_WEIGHTS_NAME)
        expected = patch.state_dict()
        missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"{folder / PATCH_WEIGHTS_NAME} does not match its {PATCH_CONFIG_NAME}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}; the patch folder is corrupt or mixed."
            )
        patch.load_state_dict(weights)
        if (folder / ADAPTER_CONFIG_NAME).is_file():
            self._load_lora(folder, name)
        parameter = next(self.parameters())
        self._patch_host.patches[name] = patch.to(device=parameter.device, dtype=parameter.dtype)
        for parameter in self.patch_parameters(name):
            parameter.requires_grad_(is_trainable)
        self.train(self.training)  # new modules (LoRA dropout) follow the model's train/eval mode
        self.set_patches([*self.active_patches, name] if enable else self.active_patches)
        return patch

    def _load_lora(self, folder: Path, name: str) -> None:
        """Add LoRA adapter `name` from a patch folder; every saved tensor must land (else nothing is kept)."""
        try:
            lora_config = LoraConfig.from_pretrained(str(folder))
        except (ValueError, TypeError, OSError) as exc:
            raise ValueError(f"{folder / ADAPTER_CONFIG_NAME} is not a valid LoRA config ({exc}).") from exc
        state = {
            k.removeprefix(f"base_model.model.{self._lora_key_prefix}"): v
            for k, v in _read_weights(folder / ADAPTER_WEIGHTS_NAME).items()
        }
        self._add_lora(lora_config, name)
        try:
            result = set_peft_model_state_dict(self, state, adapter_name=name)
        except RuntimeError as exc:  # wrong shapes: torch's load_state_dict error
            self.delete_adapter(name)
            raise ValueError(
                f"{folder / ADAPTER_WEIGHTS_NAME} does not match its LoRA config on this model ({exc}); the patch "
                "folder is corrupt or for another base."
            ) from exc
        expected = {k for k in self.state_dict() if ".lora_" in k and f".{name}." in k}
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected or len(state) != len(expected):
            self.delete_adapter(name)
            raise ValueError(
                f"{folder / ADAPTER_WEIGHTS_NAME} does not match its LoRA config on this model: {len(state)} tensors "
                f"for {len(expected)} LoRA weights, unexpected {unexpected[:5]}; the patch is for another base."
            )

    # ---------------------------------------------------------------------------- whole model with its patches

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the base weights (LoRA unmerged, patches excluded) plus every patch under `patches/<name>/`."""
        save_directory = Path(save_directory)
        self.config.pave_patches = {name: patch.config.to_dict() for name, patch in self._patch_host.patches.items()}
        self.config.active_patches = self.active_patches
        state_dict = kwargs.pop("state_dict", None) or self.state_dict()
        base = {
            k.replace(".base_layer.", "."): v
            for k, v in state_dict.items()
            if not k.startswith(("patches.", "model.patches.")) and ".lora_" not in k
        }
        peft_loaded = getattr(self, "_hf_peft_config_loaded", False)
        self._hf_peft_config_loaded = False  # transformers would otherwise save the LoRA adapters only
        try:
            super().save_pretrained(save_directory, state_dict=base, **kwargs)
        finally:
            self._hf_peft_config_loaded = peft_loaded
        patches_root = save_directory / PATCHES_SUBFOLDER
        if patches_root.exists():
            shutil.rmtree(patches_root)
        for name in self.patch_names:
            self.save_patch(name, patches_root / name)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args: Any, **kwargs: Any):
        """Load the base weights, then every patch the config lists from `patches/<name>/`, and enable as saved.

        A Hub checkpoint's revision is resolved to its commit first: weights and patches come from that one commit,
        and new patches record it as the base revision they pin.
        """
        hub = {k: kwargs.get(k) for k in ("token", "cache_dir", "local_files_only", "force_download")}
        local = os.path.isdir(pretrained_model_name_or_path)
        if not local:
            kwargs["revision"] = resolve_revision(
                pretrained_model_name_or_path,
                kwargs.get("revision"),
                token=hub["token"],
                local_files_only=bool(hub["local_files_only"]),
                cache_dir=hub["cache_dir"],
            )
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) with output_loading_info
        revision = kwargs.get("revision")
        model._base_commit = None if local else getattr(revision, "resolved", None) or _commit_or_none(revision)
        saved = getattr(model.config, "pave_patches", None) or {}
        root = kwargs.get("subfolder") or ""  # the model's own subfolder holds its patches too
        for name in saved:
            model.load_patch(
                pretrained_model_name_or_path,
                name=name,
                revision=revision,
                subfolder="/".join(part for part in (root.strip("/"), PATCHES_SUBFOLDER, name) if part),
                enable=False,
                **hub,
            )
        model.set_patches(getattr(model.config, "active_patches", None) or [])
        return loaded


def _default_patch_name(path_or_repo: str | os.PathLike, folder: Path) -> str:
    """A local folder's name; for a Hub repository, the name its `config.json` records (else the repo's name); made
    module-safe (other characters become `_`, e.g. `avsd-0.5b` -> `avsd-0_5b`)."""
    if Path(path_or_repo).is_dir():
        return _safe_name(folder.name)
    try:
        return PavePatchRepoConfig.from_pretrained(folder).patch_name
    except (OSError, ValueError):
        return _safe_name(str(path_or_repo).rstrip("/").split("/")[-1])


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", name)
    return name if _NAME.match(name) else f"_{name}"


def _commit_or_none(revision: str | None) -> str | None:
    return revision if isinstance(revision, str) and re.fullmatch(r"[0-9a-f]{40}", revision) else None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"{path} not found: the patch folder is incomplete (it needs `{path.name}`).")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}); the patch folder is corrupt.") from exc
