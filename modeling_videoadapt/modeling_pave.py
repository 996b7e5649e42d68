"""PAVE: patches that fuse a side channel into a pre-trained video LLM's visual tokens (paper Eq. 2).

A patch maps the video tokens to queries and the side channel to keys/values, runs temporal-aligned
cross-attention (each query frame sees only its own chunk of the side channel's time axis), an FFN, an output
MLP and a zero-initialised LayerNorm, and adds the result to the projected, pooled video tokens. The LLM sees
as many tokens as before. LoRA on the LLM comes from peft through transformers' PEFT integration, one LoRA
adapter per patch, under the patch's name.

Shape legend:
    B   batch                       T   query (key) frames of the video
    N   video tokens per frame      D   LLM hidden size
    Dq  query channels              E   patch hidden size
    Tk  side-channel time steps     hk, wk  side-channel tokens per step (Nk = hk * wk)
    C   side-channel channels
"""

import inspect
import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn
from transformers import (
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoModel,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    VideoLlavaForConditionalGeneration,
    VideoLlavaModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from videoadapt.configuration.configuration_pave import (
    PaveConfig,
    PaveLlavaNextVideoConfig,
    PavePatchConfig,
    PaveVideoLlavaConfig,
)
from videoadapt.hub_mixin import VideoadaptHubMixin
from videoadapt.layers.rotary import create_rotary, grid_positions, query_time_positions
from videoadapt.layers.temporal_chunks import upsample_time
from videoadapt.layers.temporal_cross_attention import TemporalAlignedCrossAttention
from videoadapt.pave_patches import PavePatchesMixin


__all__ = [
    "PaveForConditionalGeneration",
    "PaveLlavaNextVideoForConditionalGeneration",
    "PaveLlavaNextVideoModel",
    "PaveModel",
    "PavePatch",
    "PaveVideoLlavaForConditionalGeneration",
    "PaveVideoLlavaModel",
]


# --------------------------------------------------------------------------------------------- the patch


class PaveFeedForward(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear (no biases), the block's second residual branch."""

    def __init__(self, hidden_size: int, ffn_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, ffn_size, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class PaveCrossAttentionBlock(nn.Module):
    """q = attn(q, kv) + q; q = ffn(q) + q (no pre-attention norm, as in the official code)."""

    def __init__(self, config: PavePatchConfig, attn_implementation: str):
        super().__init__()
        self.attn = TemporalAlignedCrossAttention(
            config.hidden_size,
            config.num_attention_heads,
            tie_value_to_key=config.tie_value_to_key,
            output_projection=config.attention_output_projection,
            attn_implementation=attn_implementation,
        )
        self.ffn = PaveFeedForward(config.hidden_size, config.ffn_size)

    def forward(self, q, kv, kv_lengths, q_rotary, kv_rotary, return_attention: bool = False):
        attended = self.attn(q, kv, kv_lengths, q_rotary, kv_rotary, return_attention=return_attention)
        # with return_attention the layer gives (out, probabilities, key time steps): keep the last two as the map
        attended, attention = (attended[0], attended[1:]) if return_attention else (attended, None)
        q = q + attended
        return q + self.ffn(q), attention


class PaveOutputHead(nn.Module):
    """Linear -> GELU -> Linear to the LLM width, then a LayerNorm whose weight and bias start at zero."""

    def __init__(self, hidden_size: int, mlp_size: int, output_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_size, output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(self.act(self.fc1(x))))


class PavePosition3D(nn.Module):
    """Learned 3D position embedding of xyz world coordinates, added to 3D side-channel tokens (LLaVA-3D style)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(3, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(xyz)))


class PavePatch(nn.Module):
    """The fusion function of one patch: video tokens + side channel -> residual for the video tokens.

    Inputs:
        queries: [B, T, N, Dq] video tokens (projected or pre-projector, per `config.query_source`).
        side: [B, Tk, hk, wk, C] side-channel features, zero-padded along Tk.
        side_lengths: [B] valid side-channel steps per sample.
        query_grid: (h, w, prefix): the N tokens of a frame are `prefix` global tokens then an h x w grid.
        side_positions: [B, Tk, hk, wk, 3] xyz world coordinates (3D side channels only).
    Returns:
        residual [B, T, N, D] (exactly zero at initialisation), and with `return_attention` a list with one
        (probabilities [B, H, T, N, Cmax * Nk], key time step of each column [B, T, Cmax * Nk]) per layer, as
        `TemporalAlignedCrossAttention` returns them.
    """

    def __init__(self, config: PavePatchConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        self.query_proj = nn.Linear(config.query_dim, config.hidden_size)
        self.side_proj = nn.Linear(config.side_channel_dim, config.hidden_size)
        self.position_3d = PavePosition3D(config.hidden_size) if config.side_channel == "3d" else None
        self.rotary = create_rotary(config.rope, config.head_dim, config.rope_theta)
        self.layers = nn.ModuleList(
            PaveCrossAttentionBlock(config, attn_implementation) for _ in range(config.num_layers)
        )
        self.output_head = PaveOutputHead(config.hidden_size, config.output_mlp_size, config.output_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Linear biases at zero (official init) and the output LayerNorm at zero: the patch starts as identity."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
        self.output_head.norm.weight.zero_()
        self.output_head.norm.bias.zero_()

    def _rotary(self, batch: int, frames: int, query_grid, side_lengths, side_grid, max_steps: int):
        """(cos, sin) for queries [B, T*N, d] and keys [B, Tk*Nk, d], from global positions; `max_steps` is the
        padded Tk (padding steps get positions too: the attention mask hides them)."""
        if self.rotary is None:
            return None, None
        h, w, prefix = query_grid
        hk, wk = side_grid
        device = side_lengths.device
        q_time = torch.stack([query_time_positions(frames, int(n)) for n in side_lengths.tolist()]).to(device)
        k_time = torch.arange(max_steps, device=device)
        if self.config.rope == "1d":
            q_pos = q_time[:, :, None].expand(batch, frames, prefix + h * w).reshape(batch, -1)
            k_pos = k_time[:, None].expand(max_steps, hk * wk).reshape(1, -1)
        else:
            ref_h, ref_w = max(h, hk), max(w, wk)
            q_hw = _grid_hw(h, w, prefix, ref_h, ref_w).to(device)  # (N, 2)
            k_hw = _grid_hw(hk, wk, 0, ref_h, ref_w).to(device)  # (Nk, 2)
            q_pos = torch.cat(
                [q_time[:, :, None, None].expand(-1, -1, len(q_hw), 1), q_hw.expand(batch, frames, -1, -1)], dim=-1
            ).reshape(batch, -1, 3)
            k_pos = torch.cat(
                [k_time[:, None, None].expand(-1, len(k_hw), 1), k_hw.expand(max_steps, -1, -1)], dim=-1
            ).reshape(1, -1, 3)
        return self.rotary(q_pos), self.rotary(k_pos)

    def forward(
        self,
        queries: torch.Tensor,
        side: torch.Tensor,
        side_lengths: torch.Tensor,
        query_grid: tuple[int, int, int],
        side_positions: torch.Tensor | None = None,
        return_attention: bool = False,
    ):
        batch, frames, num_tokens, _ = queries.shape
        _, _, hk, wk, _ = side.shape
        dtype = self.query_proj.weight.dtype
        q = self.query_proj(queries.to(dtype))  # (B, T, N, E)
        kv = self.side_proj(side.to(dtype))  # (B, Tk, hk, wk, E)
        if self.position_3d is not None:
            if side_positions is None:
                raise ValueError("a `3d` patch needs `positions` ([B, Tk, hk, wk, 3] xyz) in its side-channel input.")
            kv = kv + self.position_3d(side_positions.to(dtype))
        kv, kv_lengths = upsample_time(kv.flatten(2, 3), side_lengths, frames)  # (B, max(Tk, T), Nk, E)
        q_rotary, kv_rotary = self._rotary(batch, frames, query_grid, kv_lengths, (hk, wk), kv.shape[1])
        attentions = []
        for layer in self.layers:
            q, attention = layer(q, kv, kv_lengths, q_rotary, kv_rotary, return_attention)
            attentions.append(attention)
        residual = self.output_head(q)  # (B, T, N, D)
        return (residual, attentions) if return_attention else residual


def _grid_hw(h: int, w: int, prefix: int, ref_h: int, ref_w: int) -> torch.Tensor:
    """(h, w) rotary positions of `prefix` global tokens (grid centre) then an h x w grid, in a ref_h x ref_w frame."""
    rows, cols = grid_positions(h, ref_h), grid_positions(w, ref_w)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    centre = torch.stack([grid_positions(1, ref_h), grid_positions(1, ref_w)], dim=-1).expand(prefix, 2)
    return torch.cat([centre, grid], dim=0)


# ------------------------------------------------------------------- where each family keeps its video tokens


class _Layout(ABC):
    """How a base family lays out its video features, so a patch can see them as [B, T, N, D]."""

    @abstractmethod
    def grid(self, config) -> tuple[int, int, int]:
        """(h, w, prefix) of the N tokens of one frame: `prefix` global tokens, then an h x w grid."""

    def split(self, features: torch.Tensor, batch: int, frames: int):
        """pooler_output -> (tokens [B, T, N, D], extra tokens kept aside or None)."""
        return features.reshape(batch, frames, -1, features.shape[-1]), None

    def join(self, tokens: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        return tokens.flatten(1, 2)

    def pool_vision(self, model, selected: torch.Tensor) -> torch.Tensor:
        """Pre-projector features [B*T, n, Dv] -> the same per-frame grid as the video tokens."""
        return selected


class _OnevisionLayout(_Layout):
    """T * ceil(g/2)^2 bilinear-pooled tokens, then one `image_newline` per video."""

    def grid(self, config):
        side = math.ceil(config.vision_config.image_size // config.vision_config.patch_size / 2)
        return side, side, 0

    def split(self, features, batch, frames):
        return features[:, :-1].reshape(batch, frames, -1, features.shape[-1]), features[:, -1:]

    def join(self, tokens, extra):
        return torch.cat([tokens.flatten(1, 2), extra], dim=1)

    def pool_vision(self, model, selected):
        return model.apply_pooling(selected)


class _NextVideoLayout(_Layout):
    """T * (g / stride)^2 average-pooled tokens (CLS dropped)."""

    def grid(self, config):
        side = config.vision_config.image_size // config.vision_config.patch_size // config.spatial_pool_stride
        return side, side, 0

    def pool_vision(self, model, selected):
        return model.vision_resampler(selected)


class _VideoLlavaLayout(_Layout):
    """T * (1 + g^2) tokens per frame (CLS kept, no pooling); pooler_output is [B*T, N, D]."""

    def grid(self, config):
        side = config.vision_config.image_size // config.vision_config.patch_size
        return side, side, 1

    def join(self, tokens, extra):
        return tokens.flatten(0, 1)


# --------------------------------------------------------------------------------------------- the models


class PaveModelMixin(PavePatchesMixin):
    """Headless-model side of PAVE: holds the patches and adds their residuals to the video features."""

    layout: ClassVar[_Layout]
    patch_class = PavePatch

    def _init_patches(self) -> None:
        self.patches = nn.ModuleDict()
        self.enabled_patches: list[str] = []

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        side_channels: dict[str, dict[str, torch.Tensor]] | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """The base family's video features plus the residual of every enabled patch.

        `side_channels` maps each enabled patch's name to {"features": [B, Tk, hk, wk, C], "lengths": [B]
        (optional, default Tk), "positions": [B, Tk, hk, wk, 3] (3D only)}.
        """
        if vision_feature_select_strategy is not None:
            kwargs["vision_feature_select_strategy"] = vision_feature_select_strategy
        out = super().get_video_features(pixel_values_videos, vision_feature_layer=vision_feature_layer, **kwargs)
        if not self.enabled_patches:
            return out
        batch, frames = pixel_values_videos.shape[:2]
        tokens, extra = self.layout.split(out.pooler_output, batch, frames)
        grid = self.layout.grid(self.config)
        vision_queries = None
        residual = torch.zeros_like(tokens)
        for name in self.enabled_patches:
            patch = self.patches[name]
            side = _side_input(side_channels, name, batch, patch.config)
            if patch.config.query_source == "vision" and vision_queries is None:
                vision_queries = self._vision_queries(out, vision_feature_layer, batch, frames)
            queries = tokens if patch.config.query_source == "projected" else vision_queries
            residual = residual + patch(queries, side["features"], side["lengths"], grid, side.get("positions"))
        out.pooler_output = self.layout.join(tokens + residual.to(tokens.dtype), extra)
        return out

    def _vision_queries(self, out, vision_feature_layer, batch: int, frames: int) -> torch.Tensor:
        """Pre-projector features of the selected layer, pooled to the video-token grid: [B, T, N, Dv]."""
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        if not isinstance(layer, int) or out.hidden_states is None:
            raise ValueError("`query_source='vision'` needs a single `vision_feature_layer` and vision hidden states.")
        selected = out.hidden_states[layer]
        drops_cls = getattr(self.config, "vision_feature_select_strategy", None) == "default"
        if drops_cls and self.layout.grid(self.config)[2] == 0:  # the video tokens have no CLS: drop it here too
            selected = selected[:, 1:]
        pooled = self.layout.pool_vision(self, selected)
        return pooled.reshape(batch, frames, -1, pooled.shape[-1])

    def forward(self, *args, side_channels: dict | None = None, **kwargs):
        pixel_values_videos = kwargs.get("pixel_values_videos")
        if self.enabled_patches and pixel_values_videos is not None:
            kwargs["pixel_values_videos"] = None
            video = self.get_video_features(
                pixel_values_videos,
                vision_feature_layer=kwargs.get("vision_feature_layer"),
                vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"),
                side_channels=side_channels,
            )
            kwargs["mm_encoder_outputs"] = {**(kwargs.get("mm_encoder_outputs") or {}), "video": video}
        return super().forward(*args, **kwargs)


def _side_input(side_channels, name: str, batch: int, config: PavePatchConfig) -> dict[str, torch.Tensor]:
    """Validate one patch's side-channel input and fill in default lengths."""
    if not side_channels or name not in side_channels:
        given = sorted(side_channels) if side_channels else []
        raise ValueError(
            f"patch {name!r} is enabled but `side_channels` has no entry for it (got {given}); pass "
            f"side_channels={{{name!r}: {{'features': ..., 'lengths': ...}}}} or disable it with `set_patches`."
        )
    side = dict(side_channels[name])
    features = side.get("features")
    expected = (batch, "Tk", *config.side_channel_grid, config.side_channel_dim)
    if (
        not isinstance(features, torch.Tensor)
        or features.ndim != 5
        or features.shape[0] != batch
        or (list(features.shape[2:4]) != config.side_channel_grid or features.shape[4] != config.side_channel_dim)
    ):
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"side channel {name!r}: `features` must be a tensor of shape {expected} "
            f"[B, Tk, h, w, C] for this patch ({config.side_channel}), got {got}."
        )
    lengths = side.get("lengths")
    if lengths is None:
        lengths = torch.full((batch,), features.shape[1], dtype=torch.long, device=features.device)
    try:  # a list of ints is fine too
        lengths = torch.as_tensor(lengths, dtype=torch.long, device=features.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"side channel {name!r}: `lengths` must be [B] integers, got {lengths!r}.") from exc
    if lengths.shape != (batch,) or int(lengths.min()) < 1 or int(lengths.max()) > features.shape[1]:
        raise ValueError(
            f"side channel {name!r}: `lengths` must be [B] with values in [1, {features.shape[1]}], got "
            f"{lengths.tolist()}."
        )
    side["lengths"] = lengths
    return side


class PaveModel(VideoadaptHubMixin, PaveModelMixin, LlavaOnevisionModel):
    """LLaVA-OneVision (headless) with PAVE patches."""

    config: PaveConfig
    layout = _OnevisionLayout()

    def __init__(self, config: PaveConfig):
        super().__init__(config)
        self._init_patches()


class PaveLlavaNextVideoModel(VideoadaptHubMixin, PaveModelMixin, LlavaNextVideoModel):
    """LLaVA-NeXT-Video (headless) with PAVE patches."""

    config: PaveLlavaNextVideoConfig
    layout = _NextVideoLayout()

    def __init__(self, config: PaveLlavaNextVideoConfig):
        super().__init__(config)
        self._init_patches()


class PaveVideoLlavaModel(VideoadaptHubMixin, PaveModelMixin, VideoLlavaModel):
    """Video-LLaVA (headless) with PAVE patches."""

    config: PaveVideoLlavaConfig
    layout = _VideoLlavaLayout()

    def __init__(self, config: PaveVideoLlavaConfig):
        super().__init__(config)
        self._init_patches()


class _PaveForConditionalGenerationMixin(PavePatchesMixin):
    """Builds the headless PAVE model in place of the base one (same weight names) and forwards side channels."""

    headless_class: ClassVar[type]
    base_class: ClassVar[type]
    patch_class = PavePatch

    def __init__(self, config):
        super(self.base_class, self).__init__(config)  # the PreTrainedModel set-up, without the base's own model
        self.model = self.headless_class(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def __init_subclass__(cls, **kwargs):
        """Give each class a `forward` with its base's full signature plus `side_channels` (generate and Trainer
        read the signature to route inputs)."""
        super().__init_subclass__(**kwargs)
        if "base_class" not in cls.__dict__:
            return
        base_forward = cls.base_class.forward

        def forward(self, *args, side_channels: dict[str, dict[str, torch.Tensor]] | None = None, **kw):
            return base_forward(self, *args, side_channels=side_channels, **kw)

        parameters = list(inspect.signature(base_forward).parameters.values())
        extra = inspect.Parameter("side_channels", inspect.Parameter.KEYWORD_ONLY, default=None)
        var_keyword = [p for p in parameters if p.kind is p.VAR_KEYWORD]
        parameters = [p for p in parameters if p.kind is not p.VAR_KEYWORD] + [extra, *var_keyword]
        forward.__signature__ = inspect.signature(base_forward).replace(parameters=parameters)
        forward.__doc__ = f"{cls.base_class.__name__}.forward; `side_channels` reaches the enabled patches."
        cls.forward = forward


class PaveForConditionalGeneration(
    VideoadaptHubMixin, _PaveForConditionalGenerationMixin, LlavaOnevisionForConditionalGeneration
):
    """LLaVA-OneVision with PAVE patches: `AutoModelForImageTextToText` for `videoadapt_pave`."""

    config: PaveConfig
    base_class = LlavaOnevisionForConditionalGeneration
    headless_class = PaveModel


class PaveLlavaNextVideoForConditionalGeneration(
    VideoadaptHubMixin, _PaveForConditionalGenerationMixin, LlavaNextVideoForConditionalGeneration
):
    """LLaVA-NeXT-Video with PAVE patches."""

    config: PaveLlavaNextVideoConfig
    base_class = LlavaNextVideoForConditionalGeneration
    headless_class = PaveLlavaNextVideoModel


class PaveVideoLlavaForConditionalGeneration(
    VideoadaptHubMixin, _PaveForConditionalGenerationMixin, VideoLlavaForConditionalGeneration
):
    """Video-LLaVA with PAVE patches."""

    config: PaveVideoLlavaConfig
    base_class = VideoLlavaForConditionalGeneration
    headless_class = PaveVideoLlavaModel
