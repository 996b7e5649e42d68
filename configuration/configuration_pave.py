"""PAVE configurations: the patch (`PavePatchConfig`, saved as `patch_config.json`) and the patched models.

A patch fuses one side channel into a video LLM's visual tokens through temporal-aligned cross-attention
(paper Eq. 2). Defaults follow the paper; the official code's behaviour is one call away:
`PavePatchConfig.official(...)` (values reuse the key projection, no attention output projection, no RoPE,
queries from pre-projector vision features). See docs/fidelity.md.
"""

import json
import os
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import LlavaNextVideoConfig, LlavaOnevisionConfig, PreTrainedConfig, VideoLlavaConfig

from videoadapt.configuration.base_checkpoint import FromBaseCheckpointMixin


__all__ = [
    "PATCH_CONFIG_NAME",
    "PaveConfig",
    "PaveLlavaNextVideoConfig",
    "PavePatchConfig",
    "PavePatchRepoConfig",
    "PaveVideoLlavaConfig",
]

PATCH_CONFIG_NAME = "patch_config.json"
SIDE_CHANNELS = ("audio", "video", "3d", "multiview", "generic")
# Tokens per side-channel time step (h, w) when the kind fixes it; None = given by the features.
_DEFAULT_GRID = {"audio": [1, 1], "video": [2, 2]}


def _check_type(name: str, value: Any, hint: Any) -> None:
    """TypeError/ValueError unless `value` matches `hint` (int, float, bool, str, None, Literal, list[int], unions)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _check_type(name, value, option)
            except (TypeError, ValueError) as exc:
                errors.append(exc)
        # a value of the right type but out of range (a Literal miss) says so; otherwise it is a type error
        wrong_value = next((e for e in errors if isinstance(e, ValueError)), None)
        raise wrong_value or TypeError(f"`{name}` must be {hint}, got {value!r} ({type(value).__name__}).")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"`{name}` must be one of {list(args)}, got {value!r}.")
    elif origin is list:
        if not isinstance(value, list):
            raise TypeError(f"`{name}` must be a list, got {value!r} ({type(value).__name__}).")
        for item in value:
            _check_type(f"{name}[]", item, args[0])
    elif hint is type(None):
        if value is not None:
            raise TypeError(f"`{name}` must be None, got {value!r}.")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"`{name}` must be a number, got {value!r} ({type(value).__name__}).")
    elif isinstance(value, bool) and hint is int or not isinstance(value, hint):
        raise TypeError(f"`{name}` must be {hint.__name__}, got {value!r} ({type(value).__name__}).")


@dataclass
class PavePatchConfig:
    """One PAVE patch.

    Args:
        side_channel: `audio`, `video` (high-frame-rate frames), `3d`, `multiview`, or `generic` (explicit grid).
        side_channel_dim: channels C of the side-channel features [T, h, w, C].
        side_channel_grid: (h, w) tokens per side-channel time step; required for `generic`, `3d`, `multiview`.
        query_dim: channels of the query tokens: the LLM hidden size for `projected`, the vision hidden size for
            `vision`.
        output_dim: LLM hidden size (the residual is added to the projected video tokens).
        hidden_size, num_attention_heads, num_layers: cross-attention width (512), heads (4), layers (2; 3 for
            Music-AVQA).
        ffn_size, output_mlp_size: hidden widths of the FFN after each attention and of the output MLP (1024).
        rope: `none`, `1d` (temporal), `3d` (t, h, w). Default: `1d` for audio, `3d` otherwise (paper).
        rope_theta: RoPE base.
        query_source: `projected` visual tokens (paper) or `vision` pre-projector features pooled to the same grid
            (official code).
        tie_value_to_key: values reuse the key projection (official code's behaviour).
        attention_output_projection: an output projection after attention (paper: standard cross-attention;
            official code: none).
        base_model_type, base_model_name_or_path, base_revision, base_hidden_size: the base the patch was trained
            on; loading onto another family or hidden size is refused.
    """

    side_channel: Literal["audio", "video", "3d", "multiview", "generic"] = "audio"
    side_channel_dim: int = 1024
    side_channel_grid: list[int] | None = None
    query_dim: int = 896
    output_dim: int = 896
    hidden_size: int = 512
    num_attention_heads: int = 4
    num_layers: int = 2
    ffn_size: int = 1024
    output_mlp_size: int = 1024
    rope: Literal["none", "1d", "3d"] | None = None
    rope_theta: float = 10000.0
    query_source: Literal["projected", "vision"] = "projected"
    tie_value_to_key: bool = False
    attention_output_projection: bool = True
    base_model_type: str | None = None
    base_model_name_or_path: str | None = None
    base_revision: str | None = None
    base_hidden_size: int | None = None

    def __post_init__(self):
        for name, hint in typing.get_type_hints(type(self)).items():
            _check_type(name, getattr(self, name), hint)
        if self.rope is None:
            self.rope = "1d" if self.side_channel == "audio" else "3d"
        if self.side_channel_grid is None:
            self.side_channel_grid = _DEFAULT_GRID.get(self.side_channel)
        if self.side_channel_grid is None:
            raise ValueError(
                f"`side_channel_grid` (h, w tokens per time step) is required for side_channel="
                f"{self.side_channel!r}; e.g. side_channel_grid=[24, 24] for 3D features of 24x24 patches."
            )
        self._check_sizes()

    def _check_sizes(self) -> None:
        for name in ("side_channel_dim", "query_dim", "output_dim", "hidden_size", "num_attention_heads",
                     "num_layers", "ffn_size", "output_mlp_size"):  # fmt: skip
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if len(self.side_channel_grid) != 2 or min(self.side_channel_grid) < 1:
            raise ValueError(f"`side_channel_grid` must be [h, w] with h, w >= 1, got {self.side_channel_grid}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        head_dim = self.hidden_size // self.num_attention_heads
        if self.rope != "none" and head_dim % (8 if self.rope == "3d" else 2):
            raise ValueError(
                f"`rope`={self.rope!r} needs a head dim divisible by {8 if self.rope == '3d' else 2}, got {head_dim} "
                f"(hidden_size / num_attention_heads); change `hidden_size` or `num_attention_heads`."
            )
        if self.rope_theta <= 0:
            raise ValueError(f"`rope_theta` must be > 0, got {self.rope_theta}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def official(cls, **kwargs: Any) -> "PavePatchConfig":
        """The released official configs' behaviour: tied K/V, no attention output projection, no RoPE, vision
        queries. Keyword arguments override any field (e.g. `side_channel_dim=1024, output_dim=3584`)."""
        defaults = dict(
            tie_value_to_key=True,
            attention_output_projection=False,
            rope="none",
            query_source="vision",
            query_dim=1152,
        )
        return cls(**{**defaults, **kwargs})

    # ------------------------------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PavePatchConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown `PavePatchConfig` fields {unknown}; allowed: {sorted(known)}.")
        return cls(**data)

    def save(self, directory: str | os.PathLike) -> str:
        """Write `patch_config.json` atomically into `directory`; returns its path."""
        path = os.path.join(directory, PATCH_CONFIG_NAME)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "PavePatchConfig":
        path = os.path.join(directory, PATCH_CONFIG_NAME)
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError as exc:
            raise ValueError(f"{path} not found: a patch folder holds `{PATCH_CONFIG_NAME}`.") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); the patch folder is corrupt.") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}.")
        return cls.from_dict(data)


# ------------------------------------------------------------------------------------------ patched models
# Each keeps its base config's fields and weight names; `pave_patches` records the patches a saved model carries
# (name -> patch config dict, in load order) and which are enabled.


@strict
class PaveConfig(FromBaseCheckpointMixin, LlavaOnevisionConfig):
    """LLaVA-OneVision with PAVE patches (`model_type="videoadapt_pave"`)."""

    model_type = "videoadapt_pave"
    pave_patches: dict | None = None
    active_patches: list | None = None


@strict
class PaveLlavaNextVideoConfig(FromBaseCheckpointMixin, LlavaNextVideoConfig):
    """LLaVA-NeXT-Video with PAVE patches."""

    model_type = "videoadapt_pave_llava_next_video"
    pave_patches: dict | None = None
    active_patches: list | None = None


@strict
class PaveVideoLlavaConfig(FromBaseCheckpointMixin, VideoLlavaConfig):
    """Video-LLaVA with PAVE patches."""

    model_type = "videoadapt_pave_video_llava"
    pave_patches: dict | None = None
    active_patches: list | None = None


@strict
class PavePatchRepoConfig(PreTrainedConfig):
    """The `config.json` of a patch folder: it points `AutoModel*.from_pretrained(<patch>)` at the patch's base.

    Args:
        patch_name: the name the patch gets on the model (`model.patch_names`).
        base_model_name_or_path: the base checkpoint (Hub id or folder) the patch was trained on.
        base_revision: the base's revision (commit) the patch pins; `None` loads the base's default branch.
        base_model_type: the base's transformers family (e.g. `llava_onevision`), which picks the PAVE class.

    Any field can be overridden at load time, e.g.
    `from_pretrained(<patch>, base_model_name_or_path="/data/llava-ov-0.5b")` for a base that is only on disk.
    """

    model_type = "videoadapt_pave_patch"
    patch_name: str = "patch"
    base_model_name_or_path: str | None = None
    base_revision: str | None = None
    base_model_type: str | None = None
