"""Settings that fit every method's recipe to the tiny checkpoints of `tiny_models`, shared by tests and benches.

family, recipe, stage, config, processor = TINY_METHODS["reef"]
model, processor = METHODS["reef"].build(METHODS["reef"].load_recipe(recipe), stage, checkpoints[family],
                                         config, processor)
"""

from typing import Any, NamedTuple


__all__ = ["TINY_METHODS", "TinyMethod"]


class TinyMethod(NamedTuple):
    family: str  # the tiny base checkpoint (`build_tiny_checkpoint` family)
    recipe: str  # the shipped recipe's name, without the method folder
    stage: str | None
    config: dict[str, Any]  # `config.*` overrides
    processor: dict[str, Any]  # `processor.*` overrides


TINY_METHODS: dict[str, TinyMethod] = {
    "reef": TinyMethod("instructblip_video", "msvd_qa", "main", {"num_selected_tokens": 4, "memory_bank_length": 2},
                       {"num_frames": 4}),
    "dynfocus": TinyMethod("instructblip_video", "default", "stage2",
                           {"num_pooled_tokens": 4, "num_events": 2, "event_knn": 1, "spatial_clusters": [4, 2],
                            "spatial_knn": [2, 1]}, {"sampler": {"type": "uniform", "num_frames": 4}}),
    "compact": TinyMethod("llava_onevision", "stage1", None, {"num_frames": 4}, {"num_frames": 4}),
    "pave": TinyMethod("llava_onevision", "avsd", None, {"side_channel_dim": 8}, {"num_frames": 4}),
}  # fmt: skip
