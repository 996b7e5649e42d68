"""Configs of models that extend a transformers family load that family's checkpoints as their own type.

`PaveConfig.from_pretrained(<a llava-hf OneVision checkpoint>)` reads a `config.json` whose `model_type` is the
base's (`llava_onevision`). transformers would warn that the types differ (a misleading warning: the weights are
meant to load) and keep the base's type on the instance. The mixin renames a base family's type to the subclass's
own before the config is built, and says so at info level.
"""

from typing import Any

from transformers.utils import logging


__all__ = ["FromBaseCheckpointMixin"]

logger = logging.get_logger(__name__)


class FromBaseCheckpointMixin:
    """Put first in the bases of a config that subclasses a transformers config (e.g. `LlavaOnevisionConfig`)."""

    @classmethod
    def base_model_types(cls) -> set[str]:
        """The `model_type` of every transformers config this class derives from."""
        return {
            base.model_type
            for base in cls.__mro__[1:]
            if base.__module__.startswith("transformers.") and getattr(base, "model_type", "")
        }

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> tuple[dict, dict]:
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        base_type = config_dict.get("model_type")
        if base_type in cls.base_model_types():
            logger.info(f"Initialising a `{cls.model_type}` config from a `{base_type}` checkpoint.")
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs
