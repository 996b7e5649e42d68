"""Configs that extend a transformers family load that family's checkpoints as their own type, without the
"You are using a model of type X to instantiate a model of type Y" warning."""

import logging

import pytest

from videoadapt.configuration.configuration_pave import PaveConfig, PaveLlavaNextVideoConfig, PaveVideoLlavaConfig
from videoadapt.configuration.configuration_reef import ReefConfig


CASES = [
    (PaveConfig, "llava_onevision", {}),
    (PaveLlavaNextVideoConfig, "llava_next_video", {}),
    (PaveVideoLlavaConfig, "video_llava", {}),
    (ReefConfig, "instructblip_video", {"num_selected_tokens": 8}),
]


@pytest.mark.parametrize(("config_class", "family", "overrides"), CASES, ids=[c[1] for c in CASES])
def test_base_checkpoint_loads_as_our_type_without_the_mismatch_warning(
    config_class, family, overrides, tiny_checkpoints, caplog
):
    with caplog.at_level(logging.WARNING):
        config = config_class.from_pretrained(tiny_checkpoints[family], **overrides)
    assert not [r for r in caplog.records if "to instantiate a model of type" in r.getMessage()]
    assert config.model_type == config_class.model_type == config.to_dict()["model_type"]
    assert config_class.base_model_types() and "videoadapt" not in " ".join(config_class.base_model_types())


def test_unrelated_checkpoint_still_warns(tiny_checkpoints, caplog):
    with caplog.at_level(logging.WARNING):
        PaveConfig.from_pretrained(tiny_checkpoints["video_llava"])
    assert [r for r in caplog.records if "to instantiate a model of type" in r.getMessage()]
