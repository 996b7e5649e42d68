"""The single registration table: every videoadapt model type and the Auto classes it is registered with.

`import videoadapt` calls `register_all()` exactly once. Rows are declarative; `register` is the one place
that talks to the transformers Auto registries. `exist_ok=True` is never used, so a clash with a built-in
transformers model type or class name fails loudly at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers
from transformers import CONFIG_MAPPING, AutoConfig, AutoProcessor, PreTrainedConfig, PreTrainedModel, ProcessorMixin
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping


__all__ = [
    "AUTO_MODEL_CLASSES",
    "MODEL_TYPE_PREFIX",
    "PATCH_REPO_ROW",
    "REGISTRY",
    "ModelRow",
    "register",
    "register_all",
]

MODEL_TYPE_PREFIX = "videoadapt_"

# The model Auto classes a row may name, in the order `videoadapt models` lists them.
AUTO_MODEL_CLASSES = ("AutoModel", "AutoModelForImageTextToText", "AutoModelForMultimodalLM")


@dataclass(frozen=True)
class ModelRow:
    """One registered model type.

    Args:
        model_type: `config.model_type`, always prefixed `videoadapt_`.
        config_class: the strict `PreTrainedConfig` subclass.
        model_classes: Auto class name (one of `AUTO_MODEL_CLASSES`) -> model class registered with it.
        processor_class: the `ProcessorMixin` registered with `AutoProcessor`, or `None`.
        weights_like: a transformers model type whose checkpoint conversions (legacy key layouts) also apply to
            this type, because its models keep that family's weight names; `None` for none.
    """

    model_type: str
    config_class: type[PreTrainedConfig]
    model_classes: dict[str, type[PreTrainedModel]] = field(default_factory=dict)
    processor_class: type[ProcessorMixin] | None = None
    weights_like: str | None = None

    def validate(self) -> None:
        if not self.model_type.startswith(MODEL_TYPE_PREFIX):
            raise ValueError(
                f"`model_type` must start with {MODEL_TYPE_PREFIX!r} so it never collides with a transformers "
                f"model type, got {self.model_type!r}."
            )
        if self.config_class.model_type != self.model_type:
            raise ValueError(
                f"`{self.config_class.__name__}.model_type` is {self.config_class.model_type!r} but the row says "
                f"{self.model_type!r}; make them equal."
            )
        unknown = sorted(set(self.model_classes) - set(AUTO_MODEL_CLASSES))
        if unknown:
            raise ValueError(f"`model_classes` names unknown Auto classes {unknown}; allowed: {AUTO_MODEL_CLASSES}.")
        for auto_name, model_class in self.model_classes.items():
            if model_class.config_class is not self.config_class:
                raise ValueError(
                    f"`{model_class.__name__}.config_class` is {model_class.config_class!r}, expected "
                    f"{self.config_class.__name__} (row {self.model_type!r}, {auto_name})."
                )


def _rows() -> tuple[ModelRow, ...]:
    from videoadapt.configuration.configuration_compact import CompactConfig
    from videoadapt.configuration.configuration_dynfocus import DynFocusConfig
    from videoadapt.configuration.configuration_pave import PaveConfig, PaveLlavaNextVideoConfig, PaveVideoLlavaConfig
    from videoadapt.configuration.configuration_reef import ReefConfig
    from videoadapt.modeling_compact import CompactForConditionalGeneration, CompactModel
    from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
    from videoadapt.modeling_pave import (
        PaveForConditionalGeneration,
        PaveLlavaNextVideoForConditionalGeneration,
        PaveLlavaNextVideoModel,
        PaveModel,
        PaveVideoLlavaForConditionalGeneration,
        PaveVideoLlavaModel,
    )
    from videoadapt.modeling_reef import ReefForConditionalGeneration
    from videoadapt.processors.processing_compact import CompactProcessor
    from videoadapt.processors.processing_dynfocus import DynFocusProcessor
    from videoadapt.processors.processing_pave import PaveProcessor
    from videoadapt.processors.processing_reef import ReefProcessor

    def vlm(model_type, config, headless, generative, base):
        classes = {
            "AutoModel": headless,
            "AutoModelForImageTextToText": generative,
            "AutoModelForMultimodalLM": generative,
        }
        return ModelRow(model_type, config, classes, processor_class=PaveProcessor, weights_like=base)

    return (
        vlm("videoadapt_pave", PaveConfig, PaveModel, PaveForConditionalGeneration, "llava_onevision"),
        vlm(
            "videoadapt_pave_llava_next_video",
            PaveLlavaNextVideoConfig,
            PaveLlavaNextVideoModel,
            PaveLlavaNextVideoForConditionalGeneration,
            "llava_next_video",
        ),
        vlm(
            "videoadapt_pave_video_llava",
            PaveVideoLlavaConfig,
            PaveVideoLlavaModel,
            PaveVideoLlavaForConditionalGeneration,
            "video_llava",
        ),
        # REEF's headless counterpart would be InstructBLIP-Video's `InstructBlipVideoModel`, which computes the video
        # features inline; REEF registers the generative classes only.
        ModelRow(
            "videoadapt_reef",
            ReefConfig,
            {
                "AutoModelForImageTextToText": ReefForConditionalGeneration,
                "AutoModelForMultimodalLM": ReefForConditionalGeneration,
            },
            processor_class=ReefProcessor,
            weights_like="instructblipvideo",
        ),
        ModelRow(
            "videoadapt_dynfocus",
            DynFocusConfig,
            {
                "AutoModelForImageTextToText": DynFocusForConditionalGeneration,
                "AutoModelForMultimodalLM": DynFocusForConditionalGeneration,
            },
            processor_class=DynFocusProcessor,
            weights_like="instructblipvideo",
        ),
        # Compact keeps OneVision's weight names (plus `model.compressor`). The headless class is registered too: its
        # class name must carry OneVision's headless key conversions, or legacy OneVision keys are renamed twice.
        ModelRow(
            "videoadapt_compact",
            CompactConfig,
            {
                "AutoModel": CompactModel,
                "AutoModelForImageTextToText": CompactForConditionalGeneration,
                "AutoModelForMultimodalLM": CompactForConditionalGeneration,
            },
            processor_class=CompactProcessor,
            weights_like="llava_onevision",
        ),
    )


# One row per model type (PAVE on three base families, REEF, DynFocus, Compact).
REGISTRY: tuple[ModelRow, ...] = _rows()


def _patch_repo_row() -> ModelRow:
    from videoadapt.configuration.configuration_pave import PavePatchRepoConfig
    from videoadapt.pave_hub import PavePatchRepo

    classes = {"AutoModelForImageTextToText": PavePatchRepo, "AutoModelForMultimodalLM": PavePatchRepo}
    return ModelRow("videoadapt_pave_patch", PavePatchRepoConfig, classes)


# Not a model: the `config.json` of a PAVE patch folder, so `from_pretrained(<patch>)` returns base + patch.
PATCH_REPO_ROW: ModelRow = _patch_repo_row()

_registered: list[ModelRow] = []


def register(row: ModelRow) -> None:
    """Register one row with `AutoConfig`, its model Auto classes and `AutoProcessor` (never `exist_ok`)."""
    row.validate()
    if row in _registered:
        return  # the same row again (e.g. a module reload): nothing to do
    if row.model_type in CONFIG_MAPPING:
        raise ValueError(
            f"model type {row.model_type!r} is already used by {CONFIG_MAPPING[row.model_type].__name__}; "
            "pick another `videoadapt_` name (videoadapt never registers with exist_ok=True)."
        )
    AutoConfig.register(row.model_type, row.config_class)
    for auto_name, model_class in row.model_classes.items():
        getattr(transformers, auto_name).register(row.config_class, model_class)
    if row.processor_class is not None:
        AutoProcessor.register(row.config_class, row.processor_class)
    _register_weight_conversions(row)
    _registered.append(row)


def _register_conversion(key: str, mapping: list) -> None:
    """Register `mapping` for `key`. An identical mapping already registered (by an exported remote-code copy of this
    model loaded earlier in the process) is kept; a different one is a collision."""
    existing = get_checkpoint_conversion_mapping(key)
    if existing is None:
        register_checkpoint_conversion_mapping(key, mapping)
    elif repr(existing) != repr(mapping):
        raise ValueError(f"weight conversions for {key!r} are already registered and differ from videoadapt's.")


def _register_weight_conversions(row: ModelRow) -> None:
    """Legacy checkpoint layouts of the base family load into our subclasses too (by model type and class name)."""
    conversions = get_checkpoint_conversion_mapping(row.weights_like) if row.weights_like else None
    if conversions:
        _register_conversion(row.model_type, conversions)
    # By class name too: a base checkpoint's own config keeps the base model type, which transformers does not map
    # for classes defined outside it. The headless classes inherit their base's class mapping.
    for model_class in dict.fromkeys(row.model_classes.values()):
        inherited = conversions
        for base in model_class.__mro__[1:]:
            if base.__module__.startswith("transformers.") and get_checkpoint_conversion_mapping(base.__name__):
                inherited = get_checkpoint_conversion_mapping(base.__name__)
                break
        if inherited:
            _register_conversion(model_class.__name__, inherited)


def register_all(rows: tuple[ModelRow, ...] = REGISTRY) -> None:
    for row in rows:
        register(row)


def registered_rows() -> tuple[ModelRow, ...]:
    """Every row registered in this process, in registration order."""
    return tuple(_registered)
