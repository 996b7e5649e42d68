"""Compact: LLaVA-OneVision parts with a spatiotemporal video compressor (SVC) between the vision tower and the LLM.

A video goes: every frame through OneVision's vision tower (the selected layer, as OneVision selects it:
`vision_feature_layer`, `vision_feature_select_strategy`) -> the frame's patch grid resized to g x g
(`compressor_grid`, 16 = the paper's ViT-G/14 at 224 px; bilinear like OneVision's own video pooling, or area) ->
the frames stacked over time [B, T, g, g, D] -> `SpatioTemporalCompressor` (f = 4 along T, H and W) -> the latent
flattened in (t, h, w) order -> OneVision's 2-layer MLP `multi_modal_projector` -> the `<video>` placeholder positions.
No `image_newline` follows a Compact video. The LLM sees (T/f) * (g/f)^2 tokens per video (128 for 32 frames).
`forward`, `generate` and `get_video_features` also take the compressor's inputs pre-extracted, as `vision_features`
[B, T, g, g, D] (what `get_compressor_inputs` returns; the frozen vision tower is then skipped).

Weight names are OneVision's (`model.vision_tower`, `model.multi_modal_projector`, `model.image_newline`,
`model.language_model`, `lm_head`); Compact adds `model.compressor` only, so loading a OneVision checkpoint reports
only the compressor as missing. Images keep OneVision's own path (anyres tiles, projector, `image_newline`).

Shape legend:
    B   batch (videos)              T   frames                  N   vision tokens per frame (s * s patches)
    s   vision grid side            g   feature grid side (compressor input)
    f   compression factor          t, h, w   latent grid = T/f, g/f, g/f
    D   compressor width (vision hidden size x selected layers)         Dt  LLM hidden size
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import select_hidden_states

from videoadapt.configuration.configuration_compact import CompactConfig, multiples_near
from videoadapt.hub_mixin import VideoadaptHubMixin
from videoadapt.layers.video_compressor import SpatioTemporalAutoencoder, SpatioTemporalCompressor


__all__ = ["CompactForConditionalGeneration", "CompactGridResize", "CompactModel", "CompactVideoFeaturesOutput"]


@dataclass
class CompactVideoFeaturesOutput(BaseModelOutputWithPooling):
    """`get_video_features` output: `pooler_output` [B, t*h*w, Dt] (the LLM's video tokens, (t, h, w) order), the
    vision tower's outputs (`last_hidden_state`, `hidden_states`, `attentions`, per frame: [B*T, ...]), and
    `compressed_features` [B, t, h, w, D], the compressor's latent before the projector."""

    compressed_features: torch.Tensor | None = None


class CompactGridResize(nn.Module):
    """Per-frame vision tokens [B*T, s*s, D] -> a g x g grid [B*T, g, g, D] (identity when s = g).

    `mode` "bilinear" is `F.interpolate(..., mode="bilinear", align_corners=False)`, as OneVision pools its video
    features; "area" is adaptive average pooling (`F.interpolate(..., mode="area")`).
    """

    def __init__(self, source_grid: int, target_grid: int, mode: str = "bilinear"):
        super().__init__()
        self.source_grid, self.target_grid, self.mode = source_grid, target_grid, mode

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        frames, tokens, dim = features.shape
        s, g = self.source_grid, self.target_grid
        if tokens != s * s:
            raise ValueError(
                f"the vision tower gave {tokens} tokens per frame for the selected layer, but Compact reshapes them to "
                f"its s x s = {s} x {s} = {s * s} patch grid (image_size // patch_size); use "
                "`vision_feature_select_strategy='full'` for a tower without a CLS token (SigLIP) and 'default' for "
                "one with it (CLIP), and frames of `vision_config.image_size` pixels."
            )
        grid = features.view(frames, s, s, dim)  # [B*T, s, s, D]
        if s == g:
            return grid
        align = False if self.mode == "bilinear" else None
        resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(g, g), mode=self.mode, align_corners=align)
        return resized.permute(0, 2, 3, 1)  # [B*T, g, g, D]

    def extra_repr(self) -> str:
        return f"{self.source_grid} -> {self.target_grid}, mode={self.mode!r}"


def _select_layer_features(hidden_states, layer: int | list[int], strategy: str | None) -> torch.Tensor:
    """OneVision's feature selection: one layer, or several concatenated on D; CLS dropped for "default"."""
    if isinstance(layer, int):
        selected = hidden_states[layer]
    else:
        selected = torch.cat([hidden_states[index] for index in layer], dim=-1)
    return selected[:, 1:] if strategy == "default" else selected  # [B*T, N, D]


class CompactModel(VideoadaptHubMixin, LlavaOnevisionModel):
    """LLaVA-OneVision (headless) whose videos go through the grid resize and the compressor before the projector.

    `forward` is OneVision's: it scatters `get_video_features(...).pooler_output` into the `<video>` positions.
    """

    config: CompactConfig

    def __init__(self, config: CompactConfig):
        config.check_compact()  # again: `from_pretrained` sets keyword overrides after building the config
        super().__init__(config)
        self.grid_resize = CompactGridResize(config.vision_grid, config.feature_grid, config.compressor_resize_mode)
        self.compressor = SpatioTemporalCompressor(**config.compressor_kwargs())
        self.post_init()  # initialises the new modules only (the base's are already marked initialised)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """The compressor gets the SVC's own initialisation (torch's conv init, zero residual branches) after its
        convolutions got the generic one. Hooked here, not in `_init_weights`: transformers skips custom modules
        without direct parameters before `_init_weights`. The torch init functions are guarded while this runs, so
        loaded weights are left untouched."""
        if isinstance(module, SpatioTemporalCompressor) and not getattr(module, "_is_hf_initialized", False):
            with torch.no_grad():
                module.reset_parameters()
            module._is_hf_initialized = True
            return
        super()._initialize_weights(module, is_custom_code)

    def _check_video(self, pixel_values_videos: torch.Tensor) -> None:
        if pixel_values_videos.ndim != 5:
            raise ValueError(
                f"`pixel_values_videos` must be [B, T, 3, H, W] (a batch of videos), got "
                f"{tuple(pixel_values_videos.shape)}."
            )
        frames, f = pixel_values_videos.shape[1], self.config.compression_factor
        if frames < 1 or frames % f:
            raise ValueError(
                f"`pixel_values_videos` has T = {frames} frames, but Compact's compressor downsamples time by "
                f"f = {f} (2 ** compressor_num_downsample) and needs a multiple of {f} frames (allowed: {f}, {2 * f}, "
                f"...); sample {multiples_near(frames, f)} frames (the processor samples "
                f"`num_frames` = {self.config.num_frames})."
            )

    def _frame_grids(self, pixel_values_videos, vision_feature_layer, vision_feature_select_strategy, **kwargs):
        """(compressor inputs [B, T, g, g, D], the vision tower's output over the B*T frames)."""
        self._check_video(pixel_values_videos)
        batch, frames = pixel_values_videos.shape[:2]
        vision = self.vision_tower(pixel_values_videos.flatten(0, 1), return_dict=True, **kwargs)
        selected = _select_layer_features(vision.hidden_states, vision_feature_layer, vision_feature_select_strategy)
        grid = self.grid_resize(selected)  # [B*T, g, g, D]
        return grid.unflatten(0, (batch, frames)), vision

    @merge_with_config_defaults
    @select_hidden_states("vision_feature_layer")
    def get_compressor_inputs(
        self,
        pixel_values_videos: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The features the compressor reads: [B, T, g, g, D] (selected vision layer, grid resized to g x g).

        Cache these to pre-train the compressor as an autoencoder on exactly what the model will feed it.
        """
        grids, _ = self._frame_grids(
            pixel_values_videos, vision_feature_layer, vision_feature_select_strategy, **kwargs
        )
        return grids

    def _check_vision_features(self, pixel_values_videos: torch.Tensor | None, vision_features: torch.Tensor) -> None:
        """`vision_features` alone, shaped [B, T, g, g, D] with T a multiple of f."""
        if pixel_values_videos is not None:
            raise ValueError(
                "pass exactly one of `pixel_values_videos` [B, T, 3, H, W] (the frames) and `vision_features` "
                "[B, T, g, g, D] (the compressor's inputs, `get_compressor_inputs`), got both."
            )
        config = self.config
        g, dim, f = config.feature_grid, config.compressor_dim, config.compression_factor
        shape = tuple(vision_features.shape)
        if len(shape) != 5 or shape[2:] != (g, g, dim) or shape[1] < 1 or shape[1] % f:
            raise ValueError(
                f"`vision_features` must be [B, T, g, g, D] with g = {g} (`feature_grid`), D = {dim} (the compressor "
                f"width) and T a multiple of f = {f}, got {shape}; extract them with `get_compressor_inputs` "
                "(`METHODS['compact'].feature_encoder(model, processor)` of videoadapt.recipes.training)."
            )

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CompactVideoFeaturesOutput:
        """Compressed, projected video tokens.

        Args:
            pixel_values_videos: [B, T, 3, H, W], T a multiple of the compression factor.
            vision_feature_layer / vision_feature_select_strategy: as OneVision's (default: the config's).
            vision_features: instead of the frames, the compressor's inputs [B, T, g, g, D] (`get_compressor_inputs`,
                pre-extracted); the vision outputs are then None.

        Returns:
            `CompactVideoFeaturesOutput` with `pooler_output` [B, (T/f) * (g/f)^2, Dt].
        """
        if vision_features is None:
            grids, vision = self._frame_grids(
                pixel_values_videos, vision_feature_layer, vision_feature_select_strategy, **kwargs
            )
        else:
            self._check_vision_features(pixel_values_videos, vision_features)
            grids, vision = vision_features.to(next(self.compressor.parameters()).dtype), None
        latent = self.compressor(grids)  # [B, t, h, w, D]
        tokens = self.multi_modal_projector(latent.flatten(1, 3))  # [B, t*h*w, Dt], (t, h, w) order
        return CompactVideoFeaturesOutput(
            last_hidden_state=None if vision is None else vision.last_hidden_state,
            pooler_output=tokens,
            hidden_states=None if vision is None else vision.hidden_states,
            attentions=None if vision is None else vision.attentions,
            compressed_features=latent,
        )


class CompactForConditionalGeneration(VideoadaptHubMixin, LlavaOnevisionForConditionalGeneration):
    """Compact (`AutoModelForImageTextToText` for `videoadapt_compact`): LLaVA-OneVision with the SVC for videos.

    Build it from a LLaVA-OneVision checkpoint with `CompactForConditionalGeneration.from_pretrained(ckpt, ...)`
    (only `model.compressor.*` is missing) and put the pre-trained compressor in with `load_compressor`, or load a
    saved Compact model.
    """

    config: CompactConfig

    def __init__(self, config: CompactConfig):
        super(LlavaOnevisionForConditionalGeneration, self).__init__(config)  # PreTrainedModel set-up only
        self.model = CompactModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_sizes_videos: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ):
        """OneVision's `forward`, with `vision_features` [B, T, g, g, D] (the compressor's inputs, see
        `CompactModel.get_video_features`) as an alternative to `pixel_values_videos`."""
        if vision_features is not None:
            video = self.model.get_video_features(pixel_values_videos, vision_features=vision_features)
            mm_encoder_outputs = {**(mm_encoder_outputs or {}), "video": video}
        return super().forward(
            input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes,
            pixel_values_videos=pixel_values_videos, image_sizes_videos=image_sizes_videos,
            attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images, labels=labels, use_cache=use_cache, logits_to_keep=logits_to_keep,
            mm_encoder_outputs=mm_encoder_outputs, **kwargs,
        )  # fmt: skip

    def generate(self, *args: Any, vision_features: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """`GenerationMixin.generate`; `vision_features` [B, T, g, g, D] replace `pixel_values_videos` (encoded once,
        before the prefill, as transformers encodes pixels)."""
        if vision_features is not None:
            video = self.model.get_video_features(kwargs.get("pixel_values_videos"), vision_features=vision_features)
            kwargs["mm_encoder_outputs"] = {**(kwargs.get("mm_encoder_outputs") or {}), "video": video}
        return super().generate(*args, **kwargs)

    def num_video_tokens(self, num_frames: int | None = None) -> int:
        """Tokens the LLM receives for a `num_frames`-frame video (`CompactConfig.num_video_tokens`)."""
        return self.config.num_video_tokens(num_frames)

    def load_compressor(self, pretrained: SpatioTemporalCompressor | SpatioTemporalAutoencoder) -> None:
        """Copy a pre-trained compressor (or an autoencoder's encoder) into `model.compressor`.

        Raises:
            ValueError: its architecture (`init_kwargs`: dim, blocks, factor, kernels, shortcut, normalisation)
                differs from this model's compressor; the message lists the differing arguments.
        """
        source = pretrained.encoder if isinstance(pretrained, SpatioTemporalAutoencoder) else pretrained
        if not isinstance(source, SpatioTemporalCompressor):
            raise TypeError(
                f"`pretrained` must be a SpatioTemporalCompressor or a SpatioTemporalAutoencoder, got "
                f"{type(pretrained).__name__}."
            )
        target = self.model.compressor
        ours, theirs = dict(target.init_kwargs), dict(source.init_kwargs)
        differ = {k: (theirs.get(k), ours[k]) for k in ours if k != "zero_init_residual" and theirs.get(k) != ours[k]}
        if differ:
            listed = ", ".join(f"{k}={got!r} (model: {want!r})" for k, (got, want) in differ.items())
            raise ValueError(
                f"the pre-trained compressor does not match this model's: {listed}; pre-train with the model's "
                "`config.compressor_kwargs()` (dim = vision hidden size) or build the model with matching "
                "`compressor_*` fields."
            )
        target.load_state_dict(source.state_dict())
