"""REEF: a relevance-aware online video adapter on InstructBLIP-Video parts (MA-LMM-style memory banks).

Frames are read one at a time. Per frame t: vision features + a learned temporal position embedding; Spatial Token
Filtering (STF) keeps the K most relevant spatial tokens (perturbed top-K in training, hard top-K at inference); the
Q-Former's queries cross-attend to the visual memory bank plus the current frame and self-attend with each layer's
query memory bank (past Q-Former states as extra keys/values); then the frame enters the visual bank and the step's
states enter the query banks. A bank longer than `memory_bank_length` is shortened by one merge per step:
Relevance-aware Temporal Compression (RTC) merges the adjacent pair with the highest
s_t = alpha * cos(p_t, p_t+1) + (1 - alpha) * ((1 - r_t) + (1 - r_t+1)) / 2, r = r_temp * r_spat, by a size-weighted
average (alpha = 1 without filtering is MA-LMM's memory-bank compression). Only the last step's query outputs go
through the language projection into the LLM, so the LLM sees `num_query_tokens` video tokens whatever the length.

Shape legend:
    B   batch                       T   frames (processed one at a time; memory never holds more than M + 1)
    P   spatial tokens per frame    K   tokens kept per frame (num_selected_tokens, + 1 with CLS; P + 1 unfiltered)
    M   memory slots (<= memory_bank_length + 1 before a merge)
    C   vision width                Q   query tokens            S   Q-Former sequence (Q + instruction tokens)
    E   Q-Former width              D   LLM width
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, InstructBlipVideoForConditionalGeneration
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.instructblipvideo.modeling_instructblipvideo import (
    BaseModelOutputWithVisionQformerOutputs,
    InstructBlipVideoQFormerModel,
    InstructBlipVideoQFormerMultiHeadAttention,
    InstructBlipVideoVisionModel,
    eager_attention_forward,
)

from videoadapt.configuration.configuration_reef import ReefConfig
from videoadapt.layers.adjacent_merge import merge_adjacent, pair_scores
from videoadapt.layers.perturbed_topk import PerturbedTopK
from videoadapt.layers.relevance_scorer import RelevanceScorer


__all__ = ["ReefForConditionalGeneration", "ReefVideoFeaturesOutput"]


@dataclass
class ReefVideoFeaturesOutput(BaseModelOutputWithVisionQformerOutputs):
    """`get_video_features` output: `pooler_output` [B, Q, D] (the LLM's video tokens) plus what REEF decided.

    selected_indices: long [B, T, K'] spatial token indices kept per frame (sorted; the argmax of the soft
        indicators in training), or None without filtering.
    spatial_relevance: [B, T, P] the STF scorer's min-max normalised relevance of every spatial token.
    merged_slots: long [B, T] (frame granularity) or [B, T, K] (position granularity): the visual-bank slot that
        absorbed its right neighbour at each step, -1 where no merge happened.
    """

    selected_indices: torch.Tensor | None = None
    spatial_relevance: torch.Tensor | None = None
    merged_slots: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------- Q-Former memory


class QueryMemory:
    """Per-layer query memory banks for one forward pass: past Q-Former self-attention inputs [B, M, S, E].

    Layers read `past(layer)` as extra keys/values and `record` their current input; `commit()` appends the step's
    records and merges the most similar adjacent pair per position (MA-LMM's rule) once a bank exceeds `length`.
    """

    def __init__(self, length: int, key_padding: torch.Tensor, detach: bool):
        self.length, self.key_padding, self.detach = length, key_padding, detach  # key_padding: bool [B, S]
        self.banks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (states [B,M,S,E], sizes [B,M,S])
        self._records: dict[int, torch.Tensor] = {}

    def past(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(past states [B, M*S, E], key mask bool [B, (M+1)*S]) or None while the bank is empty."""
        if layer not in self.banks:
            return None
        states = self.banks[layer][0]
        mask = self.key_padding.repeat(1, states.shape[1] + 1)  # MA-LMM tiles the current mask M + 1 times
        return states.flatten(1, 2), mask

    def record(self, layer: int, hidden_states: torch.Tensor) -> None:
        self._records[layer] = hidden_states.detach() if self.detach else hidden_states

    def commit(self) -> None:
        for layer, states in self._records.items():
            sizes = states.new_ones(states.shape[:2])
            if layer in self.banks:
                old, old_sizes = self.banks[layer]
                states, sizes = torch.cat([old, states[:, None]], 1), torch.cat([old_sizes, sizes[:, None]], 1)
            else:
                states, sizes = states[:, None], sizes[:, None]
            if states.shape[1] > self.length:
                choice = pair_scores(states, alpha=1.0, granularity="position").argmax(1)  # [B, S]
                states, sizes = merge_adjacent(states, sizes, choice)
            self.banks[layer] = (states, sizes)
        self._records = {}


class ReefQFormerSelfAttention(InstructBlipVideoQFormerMultiHeadAttention):
    """Q-Former self-attention whose keys/values also cover this layer's query memory bank (same weight names)."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, is_cross_attention=False)
        self.layer_idx = layer_idx

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                reef_query_memory: QueryMemory | None = None, **kwargs):  # fmt: skip
        past = None
        if reef_query_memory is not None:
            past = reef_query_memory.past(self.layer_idx)
            reef_query_memory.record(self.layer_idx, hidden_states)
        if past is None:
            return super().forward(
                hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask, **kwargs
            )
        states, key_mask = past
        batch, length = hidden_states.shape[:2]
        kv = torch.cat([states.to(hidden_states.dtype), hidden_states], dim=1)  # [B, (M+1)*S, E]
        q = self.query(hidden_states).view(batch, length, -1, self.attention_head_size).transpose(1, 2)
        k = self.key(kv).view(batch, kv.shape[1], -1, self.attention_head_size).transpose(1, 2)
        v = self.value(kv).view(batch, kv.shape[1], -1, self.attention_head_size).transpose(1, 2)
        mask = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(~key_mask, torch.finfo(q.dtype).min)[:, None, None, :]
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        dropout = self.attention_dropout if self.training else 0.0
        out, weights = interface(self, q, k, v, mask, dropout=dropout, scaling=self.scaling, **kwargs)
        return out.reshape(batch, length, -1).contiguous(), weights


# --------------------------------------------------------------------------------------------- REEF modules


class ReefFramePositionEmbedding(nn.Module):
    """Learned temporal position embedding added to every token of frame t (MA-LMM's `image_pe`, zero-initialised)."""

    def __init__(self, max_num_frames: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_num_frames, dim))

    def forward(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        return tokens + self.weight[t].to(tokens.dtype)


class ReefSpatialFilter(nn.Module):
    """STF: score the P spatial tokens of a frame and keep the top-K (CLS bypasses the filter when kept)."""

    def __init__(self, config: ReefConfig):
        super().__init__()
        width = config.vision_config.hidden_size
        self.scorer = RelevanceScorer(width, config.relevance_hidden_size)
        k = config.num_selected_tokens
        self.topk = None if k is None else PerturbedTopK(k, config.topk_num_samples, config.topk_sigma)
        self.keep_cls = config.keep_cls_token or k is None

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """tokens [B, 1+P, C] -> kept [B, K', C], kept relevance [B, K'], relevance [B, P], indices [B, K] or None."""
        cls, patches = tokens[:, :1], tokens[:, 1:]
        relevance = self.scorer(patches)  # [B, P] in [0, 1]
        if self.topk is None:
            kept, kept_relevance, indices = patches, relevance, None
        elif self.training:
            indicators = self.topk(relevance).indicators  # [B, K, P], soft: gradients reach the scorer
            kept = indicators.to(patches.dtype) @ patches
            kept_relevance = (indicators @ relevance[..., None])[..., 0]
            indices = indicators.argmax(-1)
        else:
            indices = self.topk(relevance).indices  # hard top-K, sorted by position
            kept = torch.gather(patches, 1, indices[..., None].expand(-1, -1, patches.shape[-1]))
            kept_relevance = torch.gather(relevance, 1, indices)
        if self.keep_cls:
            kept = torch.cat([cls, kept], 1)
            kept_relevance = torch.cat([kept_relevance.mean(1, keepdim=True), kept_relevance], 1)
        return kept, kept_relevance, relevance, indices


class ReefTemporalCompression(nn.Module):
    """RTC: merge the adjacent visual-bank pair with the highest similarity-plus-irrelevance score.

    At inference the pair is the argmax; in training (unless the memory is detached) the merge is the expectation
    over the perturbed argmax (perturbed top-1 over the pairs), so the scores' gradients reach the relevance scorers.
    """

    def __init__(self, config: ReefConfig):
        super().__init__()
        width = config.vision_config.hidden_size
        self.alpha = config.alpha
        self.granularity = config.resolved_merge_granularity
        self.soft = not config.detach_memory
        self.scorer = RelevanceScorer(width, config.relevance_hidden_size)
        self.select = PerturbedTopK(1, config.topk_num_samples, config.topk_sigma)

    def forward(
        self, bank: torch.Tensor, sizes: torch.Tensor, spatial_relevance: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """bank [B, M, K, C], sizes and spatial relevance [B, M, K] -> the same with M - 1 slots, and the merged
        slot index ([B] per frame, [B, K] per position)."""
        temporal = self.scorer(bank.mean(2)) if self.alpha < 1 else torch.ones_like(sizes[..., 0])  # r_temp [B, M]
        relevance = temporal[..., None] * spatial_relevance  # r = r_temp * r_spat, [B, M, K]
        scores = pair_scores(bank, relevance, alpha=self.alpha, granularity=self.granularity)  # [B, M-1(, K)]
        if self.training and self.soft:
            choice = (
                self.select(scores.movedim(1, -1)).indicators[..., 0, :].movedim(-1, 1)
            )  # pair probabilities [B, M-1(, K)]
            if self.granularity == "frame":
                choice = choice[..., None].expand(*choice.shape, bank.shape[2])  # [B, M-1, K]
            merged_slots = choice.argmax(1)
        else:
            choice = merged_slots = scores.argmax(1)  # [B] or [B, K]
        merged, new_sizes, new_relevance = merge_adjacent(bank, sizes, choice, spatial_relevance)
        if self.granularity == "frame" and merged_slots.ndim == 2:
            merged_slots = merged_slots[:, 0]
        return merged, new_sizes, new_relevance, merged_slots


# --------------------------------------------------------------------------------------------- the model


class ReefForConditionalGeneration(InstructBlipVideoForConditionalGeneration):
    """InstructBLIP-Video read online, frame by frame, with REEF's memory banks, STF and RTC.

    Weight names are InstructBLIP-Video's (`vision_model`, `query_tokens`, `qformer`, `language_projection`,
    `language_model`); REEF adds `frame_position_embedding`, `spatial_filter` and `temporal_compression`, so loading an
    InstructBLIP(-Video) checkpoint reports only those as missing. The LLM receives `num_query_tokens` video tokens.
    """

    config: ReefConfig

    def __init__(self, config: ReefConfig):
        config.check_token_budget()
        super(InstructBlipVideoForConditionalGeneration, self).__init__(config)  # PreTrainedModel set-up only
        self.vision_model = InstructBlipVideoVisionModel._from_config(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = InstructBlipVideoQFormerModel._from_config(config.qformer_config)
        for index, layer in enumerate(self.qformer.encoder.layer):
            layer.attention.attention = ReefQFormerSelfAttention(config.qformer_config, index)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.frame_position_embedding = ReefFramePositionEmbedding(
            config.max_num_frames, config.vision_config.hidden_size
        )
        self.spatial_filter = ReefSpatialFilter(config)
        self.temporal_compression = ReefTemporalCompression(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ReefFramePositionEmbedding):
            init.zeros_(module.weight)  # MA-LMM initialises `image_pe` to zeros

    def get_video_features(
        self,
        pixel_values: torch.Tensor,
        qformer_input_ids: torch.LongTensor,
        qformer_attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        **kwargs,
    ) -> ReefVideoFeaturesOutput:
        """Read the video online; `pooler_output` [B, Q, D] is the last step's queries through the projection.

        pixel_values: [B, T, 3, H, W]. qformer_input_ids / qformer_attention_mask: [B, L], the instruction.
        """
        if pixel_values.ndim != 5:
            raise ValueError(
                f"`pixel_values` must be [B, T, 3, H, W] (a batch of videos), got {tuple(pixel_values.shape)}."
            )
        batch, frames = pixel_values.shape[:2]
        if not 1 <= frames <= self.config.max_num_frames:
            raise ValueError(
                f"REEF needs between 1 and `max_num_frames` = {self.config.max_num_frames} frames per video, got "
                f"{frames}; sample fewer frames or raise `max_num_frames` (the temporal position embedding's size)."
            )
        config, device = self.config, pixel_values.device
        queries = self.query_tokens.expand(batch, -1, -1)
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        query_mask = torch.ones(queries.shape[:2], dtype=torch.long, device=device)
        qformer_mask = torch.cat([query_mask, qformer_attention_mask.to(device)], dim=1)
        query_memory = None
        if config.query_memory_bank:
            query_memory = QueryMemory(config.memory_bank_length, qformer_mask.bool(), config.detach_memory)
        bank = sizes = relevance = None  # visual memory [B, M, K, C], [B, M, K], [B, M, K]
        selected, spatial, merges = [], [], []
        for t in range(frames):
            vision = self.vision_model(
                pixel_values=pixel_values[:, t], interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
            )
            frame = self.frame_position_embedding(vision.last_hidden_state, t)  # [B, 1+P, C]
            kept, kept_relevance, frame_relevance, indices = self.spatial_filter(frame)
            bank, sizes, relevance = _append(bank, sizes, relevance, kept, kept_relevance)  # current frame last
            qformer_outputs = self.qformer(
                input_ids=qformer_input_ids,
                attention_mask=qformer_mask,
                query_embeds=queries,
                encoder_hidden_states=bank.flatten(1, 2),
                encoder_attention_mask=torch.ones(bank.shape[:1] + (bank.shape[1] * bank.shape[2],), device=device),
                reef_query_memory=query_memory,
                **kwargs,
            )
            last = t == frames - 1
            if query_memory is not None and not last:
                query_memory.commit()
            merged = torch.full(_merge_shape(config, bank), -1, device=device)
            if bank.shape[1] > config.memory_bank_length and not last:
                bank, sizes, relevance, merged = self.temporal_compression(bank, sizes, relevance)
            if config.detach_memory:
                bank, sizes, relevance = bank.detach(), sizes.detach(), relevance.detach()
            spatial.append(frame_relevance.detach())
            merges.append(merged.detach())
            if indices is not None:
                selected.append(indices)
        query_output = qformer_outputs.last_hidden_state[:, : queries.shape[1]]
        return ReefVideoFeaturesOutput(
            last_hidden_state=vision.last_hidden_state,
            pooler_output=self.language_projection(query_output),
            vision_outputs=vision,
            qformer_outputs=qformer_outputs,
            selected_indices=torch.stack(selected, 1) if selected else None,
            spatial_relevance=torch.stack(spatial, 1),
            merged_slots=torch.stack(merges, 1),
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """InstructBLIP-Video's `generate`; without a prompt, the input is the Q video tokens and BOS."""
        if input_ids is None and inputs_embeds is None:
            start = [self.config.video_token_index] * self.config.num_query_tokens + [
                self.config.text_config.bos_token_id
            ]
            input_ids = torch.tensor([start], dtype=torch.long, device=pixel_values.device).repeat(
                len(pixel_values), 1
            )
        return super().generate(
            pixel_values, qformer_input_ids, qformer_attention_mask, input_ids, attention_mask, inputs_embeds,
            interpolate_pos_encoding, **generate_kwargs,
        )  # fmt: skip


def _merge_shape(config: ReefConfig, bank: torch.Tensor) -> tuple[int, ...]:
    return (bank.shape[0],) if config.resolved_merge_granularity == "frame" else (bank.shape[0], bank.shape[2])


def _append(bank, sizes, relevance, kept: torch.Tensor, kept_relevance: torch.Tensor):
    """Append the current frame's kept tokens [B, K, C] (size 1) as the bank's last slot."""
    ones = kept_relevance.new_ones(kept_relevance.shape)
    if bank is None:
        return kept[:, None], ones[:, None], kept_relevance[:, None]
    return (
        torch.cat([bank, kept[:, None].to(bank.dtype)], 1),
        torch.cat([sizes, ones[:, None]], 1),
        torch.cat([relevance, kept_relevance[:, None]], 1),
    )
