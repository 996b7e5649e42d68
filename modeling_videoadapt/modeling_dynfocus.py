"""DynFocus: dynamic event prototypes (DPE) and a dual-granularity encoder (CCE) on InstructBLIP-Video parts.

Per video of T frames (1 fps): the vision tower's patch tokens X_t, average-pooled to P tokens h_t. DPE: T-DPC
clusters the frames into L events (fewer when T < L), each event prototype the weighted average of its frames' h;
Dynamic Selection scores each prototype from [Max || Avg] with a three-layer MLP and keeps K = ceil(K/L * min(L, T))
(perturbed top-K in training, hard top-K at inference). CCE: S-DPC builds I = 22 multi-grained spatial prototypes G_t
per frame. "Cones": the key frame of each kept event (the event's centre frame) gets P + I fine tokens
F_fine(h || G). "Rods": every frame gets 2 coarse tokens F_coarse([context, content]): the context token is
LLaMA-VID's attention of instruction-conditioned Q-Former queries over G_t, the content token the mean of G_t. The
tokens go to the LLM frame by frame in temporal order: [fine (key frames), rods]. `forward`, `generate` and
`get_video_features` take the frames as `pixel_values` or, pre-extracted, as `vision_features` (the frozen vision
encoder's output before its `post_layernorm`, applied here).

Shape legend:
    B   batch             T   frames               N   patch tokens per frame (CLS dropped)     C   vision width
    P   pooled tokens     L   events (<= T)        K   kept events / key frames                 I   spatial prototypes
    Q   query tokens      E   Q-Former width       D   LLM width
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, InstructBlipVideoForConditionalGeneration
from transformers.models.instructblipvideo.modeling_instructblipvideo import (
    BaseModelOutputWithVisionQformerOutputs,
    InstructBlipVideoQFormerModel,
    InstructBlipVideoVisionModel,
)

from videoadapt.configuration.configuration_dynfocus import DynFocusConfig
from videoadapt.hub_mixin import VideoadaptHubMixin
from videoadapt.layers.dpc_knn import dpc_knn
from videoadapt.layers.dpc_prototypes import merge_clusters, multi_level_prototypes, prototype_weights
from videoadapt.layers.perturbed_topk import PerturbedTopK, hard_topk
from videoadapt.layers.relevance_scorer import min_max_normalize
from videoadapt.vision_features import VisionFeaturesMixin


__all__ = ["DynFocusForConditionalGeneration", "DynFocusVideoFeaturesOutput"]

FRAME_CHUNK = 64  # frames through the vision tower, the Q-Former and S-DPC at once


@dataclass
class DynFocusVideoFeaturesOutput(BaseModelOutputWithVisionQformerOutputs):
    """`get_video_features` output: `pooler_output` [B, 2T + (P+I)K, D], the LLM's video tokens in temporal order.

    event_assign: long [B, T], the event of every frame. event_centers: long [B, L], each event's centre frame.
    event_scores: [B, L], Dynamic Selection's min-max normalised scores. key_frames: long [B, K], sorted.
    spatial_assign: long [B, T, N], each patch's finest S-DPC cluster.
    """

    event_assign: torch.Tensor | None = None
    event_centers: torch.Tensor | None = None
    event_scores: torch.Tensor | None = None
    key_frames: torch.Tensor | None = None
    spatial_assign: torch.Tensor | None = None


class DynFocusEventScorer(nn.Module):
    """Dynamic Selection's U: [Max || Avg] over an event prototype's tokens -> d -> d/2 -> d/4 -> 1 (d = 2C).

    With `input_block` (the official PredictorLG), LayerNorm -> Linear(d, d) -> GELU comes first; each event keeps
    the first d/2 of those channels and gets the mean over the video's events of the other d/2 (local || global).
    """

    def __init__(self, dim: int, input_block: bool = False):
        super().__init__()
        d = 2 * dim
        self.in_conv = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()) if input_block else None
        self.mlp = nn.Sequential(
            nn.Linear(d, d // 2), nn.GELU(), nn.Linear(d // 2, d // 4), nn.GELU(), nn.Linear(d // 4, 1)
        )

    def forward(self, events: torch.Tensor) -> torch.Tensor:
        """events [B, L, P, C] -> scores [B, L] in [0, 1] (min-max over the video's events)."""
        x = torch.cat([events.amax(2), events.mean(2)], dim=-1)  # [B, L, d]
        if self.in_conv is not None:
            local, rest = self.in_conv(x).chunk(2, dim=-1)  # [B, L, d/2] each
            x = torch.cat([local, rest.mean(1, keepdim=True).expand_as(rest)], dim=-1)
        return min_max_normalize(self.mlp(x).squeeze(-1))


class DynFocusContextAttention(nn.Module):
    """LLaMA-VID's text-guided context: mean over the Q queries of softmax(q k^T / sqrt(C)) G."""

    def __init__(self, qformer_width: int, dim: int):
        super().__init__()
        self.query_projection = nn.Linear(qformer_width, dim)  # LLaMA-VID's vlm_att_projector
        self.key_projection = nn.Linear(dim, dim)  # vlm_att_key_projector
        self.scale = dim**-0.5

    def forward(self, queries: torch.Tensor, prototypes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """queries [F, Q, E], prototypes [F, I, C], mask bool [F, I] -> context [F, C]."""
        scores = self.query_projection(queries) @ self.key_projection(prototypes).transpose(1, 2) * self.scale
        scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
        return (scores.softmax(-1) @ prototypes).mean(1)


class DynFocusProjector(nn.Sequential):
    """LLaVA's mlp2x_gelu: Linear(C, D) -> GELU -> Linear(D, D)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__(nn.Linear(dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class DynFocusForConditionalGeneration(
    VideoadaptHubMixin, VisionFeaturesMixin, InstructBlipVideoForConditionalGeneration
):
    """InstructBLIP-Video parts with DynFocus' DPE and CCE; the LLM sees 2 tokens per frame plus P + I per key frame.

    Weight names are InstructBLIP-Video's; the new modules are `event_scorer`, `context_attention`, `fine_projector`
    and `coarse_projector`. InstructBLIP's `language_projection` is kept (weights load) but unused: the Q-Former's
    queries reach the LLM only through the context attention, as in LLaMA-VID. Frames come as `pixel_values`
    [B, T, 3, H, W] or as `vision_features` [B, T, 1+N, C] (see `get_video_features`).
    """

    config: DynFocusConfig

    def __init__(self, config: DynFocusConfig):
        config.check_ranges()  # again: `from_pretrained`'s overrides skip `__post_init__`
        super(InstructBlipVideoForConditionalGeneration, self).__init__(config)  # PreTrainedModel set-up only
        width, text_width = config.vision_config.hidden_size, config.text_config.hidden_size
        self.vision_model = InstructBlipVideoVisionModel._from_config(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = InstructBlipVideoQFormerModel._from_config(config.qformer_config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, text_width)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.event_scorer = DynFocusEventScorer(width, input_block=config.event_scorer == "predictor_lg")
        self.event_topk = PerturbedTopK(1, config.topk_num_samples, config.topk_sigma)  # k is set per video
        self.context_attention = DynFocusContextAttention(config.qformer_config.hidden_size, width)
        self.fine_projector = DynFocusProjector(width, text_width)
        self.coarse_projector = DynFocusProjector(width, text_width)
        self.post_init()

    # ----------------------------------------------------------------------------------------- per-frame encoding

    def _frame_tokens(self, frames: torch.Tensor, from_features: bool, interpolate_pos_encoding: bool) -> torch.Tensor:
        """Pixels [F, 3, H, W] or vision features [F, 1+N, C] -> the vision tokens [F, 1+N, C] (after
        `post_layernorm`, applied here to features as the vision model applies it)."""
        if not from_features:
            return self.vision_model(
                pixel_values=frames, interpolate_pos_encoding=interpolate_pos_encoding
            ).last_hidden_state
        layer_norm = self.vision_model.post_layernorm
        return layer_norm(frames.to(layer_norm.weight.dtype))

    def _encode_frames(self, tokens: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor):
        """tokens [F, 1+N, C] -> (pooled h [F, P, C], G [F, I, C], G mask [F, I], finest assign [F, N], ctx [F, C])."""
        config, device = self.config, tokens.device
        queries = self.query_tokens.expand(len(tokens), -1, -1)
        mask = torch.cat([torch.ones(queries.shape[:2], dtype=text_mask.dtype, device=device), text_mask], 1)
        text = self.qformer(
            input_ids=text_ids, attention_mask=mask, query_embeds=queries, encoder_hidden_states=tokens,
            encoder_attention_mask=torch.ones(tokens.shape[:2], dtype=torch.long, device=device),
        ).last_hidden_state[:, : queries.shape[1]]  # fmt: skip
        patches = tokens[:, 1:]  # [F, N, C]
        grid, side = int(patches.shape[1] ** 0.5), int(config.num_pooled_tokens**0.5)
        square = patches.transpose(1, 2).reshape(len(tokens), -1, grid, grid)
        pooled = nn.functional.adaptive_avg_pool2d(square, side).flatten(2).transpose(1, 2)  # [F, P, C]
        spatial = multi_level_prototypes(
            patches, tuple(config.spatial_clusters), tuple(config.spatial_knn), weighting=config.prototype_weighting
        )
        context = self.context_attention(text, spatial.prototypes, spatial.mask)
        return pooled, spatial.prototypes, spatial.mask, spatial.results[0].assign, context

    # ----------------------------------------------------------------------------------------- video features

    def get_video_features(
        self,
        pixel_values: torch.Tensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ) -> DynFocusVideoFeaturesOutput:
        """Frames + the instruction [B, L_text] -> video tokens. The frames (every video with T) are pixel_values
        [B, T, 3, H, W], or instead vision_features [B, T, 1+N, C]: the frozen vision encoder's output per frame before
        `post_layernorm` (`hidden_states[-1]` of `vision_model`; pre-extracted, see
        `videoadapt.recipes.training.Method.feature_encoder`)."""
        config = self.config
        batch, frames = self._check_frame_inputs(pixel_values, vision_features)
        if frames < 1:
            raise ValueError(f"DynFocus needs T >= 1 frames per video, got {frames}; pass at least one frame.")
        if frames > config.max_frames:
            raise ValueError(f"videos may have at most `max_frames` = {config.max_frames} frames, got {frames}.")
        if qformer_input_ids is None:
            raise ValueError(
                "DynFocus' coarse context tokens attend with the instruction's Q-Former queries: pass "
                "`qformer_input_ids` (the question tokenized by the Q-Former tokenizer; an empty question is allowed)."
            )
        self._check_instruction_rows(qformer_input_ids, batch)
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        text_ids = qformer_input_ids.repeat_interleave(frames, 0)
        from_features = vision_features is not None
        flat = (vision_features if from_features else pixel_values).flatten(0, 1)
        text_mask = qformer_attention_mask.to(flat.device).repeat_interleave(frames, 0)
        parts = [
            self._encode_frames(
                self._frame_tokens(flat[i : i + FRAME_CHUNK], from_features, bool(interpolate_pos_encoding)),
                text_ids[i : i + FRAME_CHUNK],
                text_mask[i : i + FRAME_CHUNK],
            )
            for i in range(0, len(flat), FRAME_CHUNK)
        ]
        pooled, spatial, spatial_mask, spatial_assign, context = (
            torch.cat(p).unflatten(0, (batch, frames)) for p in zip(*parts)
        )
        events, centers, assign, scores = self._events(pooled)
        key_rows, key_frames = self._select(scores, centers, frames)  # [B, K, L], [B, K]
        fine_h = (key_rows.to(events.dtype) @ events.flatten(2)).unflatten(2, events.shape[2:])  # [B, K, P, C]
        center_spatial = spatial.gather(1, centers[..., None, None].expand(-1, -1, *spatial.shape[2:]))
        fine_g = (key_rows.detach().to(spatial.dtype) @ center_spatial.flatten(2)).unflatten(2, spatial.shape[2:])
        fine = self.fine_projector(torch.cat([fine_h, fine_g], dim=2))  # [B, K, P+I, D]
        content = (spatial * spatial_mask[..., None]).sum(2) / spatial_mask.sum(2, keepdim=True).clamp_min(1)
        pair = (context, content) if config.rods_order == "context_content" else (content, context)
        rods = self.coarse_projector(torch.stack(pair, dim=2))  # [B, T, 2, D]
        return DynFocusVideoFeaturesOutput(
            last_hidden_state=pooled,
            pooler_output=self._assemble(fine, rods, key_frames),
            event_assign=assign,
            event_centers=centers,
            event_scores=scores,
            key_frames=key_frames,
            spatial_assign=spatial_assign,
        )

    def _events(self, pooled: torch.Tensor):
        """T-DPC over the frames (P x C matrices, the paper's (1/P)||.||_F^2 distance), events in temporal order."""
        config = self.config
        batch, frames = pooled.shape[:2]
        num_events = min(config.num_events, frames)
        points = pooled.flatten(2)  # [B, T, P*C]
        result = dpc_knn(
            points, num_events, config.event_knn, distance_normaliser=config.num_pooled_tokens, center_order="position"
        )
        weights = prototype_weights(result, config.prototype_weighting)
        events = merge_clusters(points, result.assign, num_events, weights)[0].unflatten(2, pooled.shape[2:])
        return events, result.centers, result.assign, self.event_scorer(events)

    def _select(self, scores: torch.Tensor, centers: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [B, K, L] (soft in training, one-hot at inference) and the key frames [B, K] (hard top-K's centres,
        sorted: placement is always hard, so the token count never depends on the noise)."""
        k = self.config.num_key_frames(frames)
        indices = hard_topk(scores.detach(), k)[0]  # sorted event ids = temporal order
        rows = self.event_topk(scores, k=k).indicators
        return rows, centers.gather(1, indices)

    def _assemble(self, fine: torch.Tensor, rods: torch.Tensor, key_frames: torch.Tensor) -> torch.Tensor:
        """Per frame in temporal order: key frames [fine (P+I), rods (2, unless key_frame_rods=False)], others [rods].

        fine [B, K, P+I, D], rods [B, T, 2, D], key_frames long [B, K] sorted -> [B, total, D]."""
        batch, frames, _, dim = rods.shape
        per_key = fine.shape[2]
        is_key = torch.zeros(batch, frames, dtype=torch.bool, device=rods.device).scatter_(1, key_frames, True)
        has_rods = ~is_key | self.config.key_frame_rods
        length = is_key * per_key + has_rods * 2  # [B, T]
        start = length.cumsum(1) - length
        total = int(length[0].sum())
        out = rods.new_zeros(batch, total, dim)
        b = torch.arange(batch, device=rods.device)
        fine_pos = start.gather(1, key_frames)[..., None] + torch.arange(per_key, device=rods.device)  # [B, K, P+I]
        out[b[:, None, None], fine_pos] = fine
        rods_pos = (start + is_key * per_key)[..., None] + torch.arange(2, device=rods.device)  # [B, T, 2]
        keep = has_rods[..., None].expand(-1, -1, 2)
        out[b[:, None, None].expand_as(rods_pos)[keep], rods_pos[keep]] = rods[keep]
        return out

    def prompt_video_tokens(self, num_frames: int) -> int:
        """`<video>` tokens for `num_frames` frames (what the processor expands the placeholder to)."""
        return self.config.num_video_tokens(num_frames)
