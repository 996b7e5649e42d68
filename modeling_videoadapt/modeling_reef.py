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
`forward`, `generate` and `get_video_features` take the frames as `pixel_values` or, pre-extracted, as
`vision_features` (the frozen vision encoder's output before its `post_layernorm`, which REEF's recipes train).

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
from videoadapt.hub_mixin import VideoadaptHubMixin
from videoadapt.layers.memory_bank import QueryMemoryBank, VisualMemoryBank
from videoadapt.layers.memory_merge import merge_scores
from videoadapt.layers.perturbed_topk import PerturbedTopK
from videoadapt.layers.relevance_scorer import RelevanceScorer
from videoadapt.vision_features import VisionFeaturesMixin


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


class QueryMemoryStep:
    """What the Q-Former's self-attention layers see during one step: a snapshot of the query banks, read as extra
    keys/values, and the step's inputs, recorded for the banks. A snapshot, so that a layer recomputed by gradient
    checkpointing sees the same memory as the first time."""

    def __init__(self, past: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self._past, self.records = past, {}

    def past(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(past states [B, M*S, E], key mask bool [B, (M+1)*S]) or None while the bank is empty."""
        return self._past.get(layer)

    def record(self, layer: int, hidden_states: torch.Tensor) -> None:
        self.records[layer] = hidden_states


class QueryMemory:
    """The query memory banks of one forward pass, one `QueryMemoryBank` per Q-Former self-attention layer.

    `step()` gives the layers a snapshot; `commit(step)` appends the step's recorded inputs, merging the most similar
    adjacent pair per position (MA-LMM's rule) once a bank exceeds `length`.
    """

    def __init__(self, length: int, key_padding: torch.Tensor, detach: bool):
        self.length, self.key_padding, self.detach = length, key_padding, detach  # key_padding: bool [B, S]
        self.banks: dict[int, QueryMemoryBank] = {}

    def step(self) -> QueryMemoryStep:
        past = {
            layer: (bank.keys_values_source(), bank.tile_attention_mask(self.key_padding))
            for layer, bank in self.banks.items()
        }
        return QueryMemoryStep(past)

    def commit(self, step: QueryMemoryStep) -> None:
        for layer, states in step.records.items():
            if layer not in self.banks:
                self.banks[layer] = QueryMemoryBank(self.length, detach=self.detach, record_history=False)
            bank = self.banks[layer]
            bank.append(states)


class ReefQFormerSelfAttention(InstructBlipVideoQFormerMultiHeadAttention):
    """Q-Former self-attention whose keys/values also cover this layer's query memory bank (same weight names)."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, is_cross_attention=False)
        self.layer_idx = layer_idx

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                reef_query_memory: QueryMemoryStep | None = None, **kwargs):  # fmt: skip
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
        implementation = self.config._attn_implementation
        implementation = "sdpa" if "flash" in implementation else implementation  # flash takes no padding mask here
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
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

    r = r_temp * r_spat: r_temp scores the bank's slots (their mean tokens) against the bank's mean, r_spat is the
    slots' stored spatial relevance. At inference the pair is the argmax; in training (unless the memory is detached)
    the merge is the expectation over the perturbed argmax (perturbed top-1 over the pairs), so the scores'
    gradients reach both relevance scorers.
    """

    def __init__(self, config: ReefConfig):
        super().__init__()
        self.alpha = config.alpha
        self.soft = not config.detach_memory
        self.scorer = RelevanceScorer(config.vision_config.hidden_size, config.relevance_hidden_size)
        self.select = PerturbedTopK(1, config.topk_num_samples, config.topk_sigma)

    def forward(self, bank: VisualMemoryBank) -> torch.Tensor:
        """Merge one pair of `bank` (which holds memory_bank_length + 1 slots) in place; return the merged slot."""
        if self.alpha < 1:
            temporal = self.scorer(bank.features.mean(2))  # r_temp [B, M]
            relevance = temporal if bank.mode == "frame" else temporal[..., None]
            scores = merge_scores(bank.features, relevance * bank.relevance, self.alpha, bank.mode)
        else:
            scores = merge_scores(bank.features, bank.relevance, 1.0, bank.mode)  # the cosine term alone
        if self.training and self.soft:
            return bank.compress(probabilities=self.select(scores.movedim(1, -1)).indicators[..., 0, :].movedim(-1, 1))
        return bank.compress(merge_index=scores.argmax(1))


# --------------------------------------------------------------------------------------------- the model


class ReefForConditionalGeneration(VideoadaptHubMixin, VisionFeaturesMixin, InstructBlipVideoForConditionalGeneration):
    """InstructBLIP-Video read online, frame by frame, with REEF's memory banks, STF and RTC.

    Weight names are InstructBLIP-Video's (`vision_model`, `query_tokens`, `qformer`, `language_projection`,
    `language_model`); REEF adds `frame_position_embedding`, `spatial_filter` and `temporal_compression`, so loading an
    InstructBLIP(-Video) checkpoint reports only those as missing. The LLM receives `num_query_tokens` video tokens.
    Frames come as `pixel_values` [B, T, 3, H, W] or as `vision_features` [B, T, 1+P, C] (see `get_video_features`).
    """

    config: ReefConfig

    def __init__(self, config: ReefConfig):
        config.check_ranges()  # again: `from_pretrained`'s overrides skip `__post_init__`
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

    def _frame_tokens(self, pixel_values, vision_features, t: int, interpolate_pos_encoding, **kwargs) -> tuple:
        """Frame t's vision tokens [B, 1+P, C] (after `post_layernorm`) and the vision model's output (None when
        they come from `vision_features`: `post_layernorm` is applied here, as the vision model applies it)."""
        if vision_features is None:
            vision = self.vision_model(
                pixel_values=pixel_values[:, t], interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
            )
            return vision.last_hidden_state, vision
        layer_norm = self.vision_model.post_layernorm
        return layer_norm(vision_features[:, t].to(layer_norm.weight.dtype)), None

    def get_video_features(
        self,
        pixel_values: torch.Tensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ) -> ReefVideoFeaturesOutput:
        """Read the video online; `pooler_output` [B, Q, D] is the last step's queries through the projection.

        pixel_values: [B, T, 3, H, W], or instead vision_features: [B, T, 1+P, C], the frozen vision encoder's output
        per frame before `post_layernorm` (`hidden_states[-1]` of `vision_model`; pre-extracted, see
        `videoadapt.recipes.training.Method.feature_encoder`): `post_layernorm` (trained by REEF's recipes) is
        applied here. qformer_input_ids / qformer_attention_mask: [B, L], the instruction.
        """
        batch, frames = self._check_frame_inputs(pixel_values, vision_features)
        if not 1 <= frames <= self.config.max_num_frames:
            raise ValueError(
                f"REEF needs between 1 and `max_num_frames` = {self.config.max_num_frames} frames per video, got "
                f"{frames}; sample fewer frames or raise `max_num_frames` (the temporal position embedding's size)."
            )
        if qformer_input_ids is None:
            raise ValueError("REEF's Q-Former reads the instruction: pass `qformer_input_ids` (the processor's).")
        self._check_instruction_rows(qformer_input_ids, batch)
        config = self.config
        device = (pixel_values if vision_features is None else vision_features).device
        queries = self.query_tokens.expand(batch, -1, -1)
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        query_mask = torch.ones(queries.shape[:2], dtype=torch.long, device=device)
        qformer_mask = torch.cat([query_mask, qformer_attention_mask.to(device)], dim=1)
        query_memory = None
        if config.query_memory_bank:
            query_memory = QueryMemory(config.memory_bank_length, qformer_mask.bool(), config.detach_memory)
        granularity = config.resolved_merge_granularity
        bank = VisualMemoryBank(
            config.memory_bank_length, config.alpha, granularity, detach=config.detach_memory, record_history=False
        )
        # per-frame outputs are written into tensors allocated once: thousands of small per-step tensors would
        # fragment the CPU heap between the steps' large temporaries and let memory grow with the video's length
        selected = spatial = merges = None
        for t in range(frames):
            step = None if query_memory is None else query_memory.step()
            tokens, vision = self._frame_tokens(pixel_values, vision_features, t, interpolate_pos_encoding, **kwargs)
            frame = self.frame_position_embedding(tokens, t)  # [B, 1+P, C]
            kept, kept_relevance, frame_relevance, indices = self.spatial_filter(frame)  # kept [B, K, C]
            if spatial is None:
                spatial = frame_relevance.new_empty(batch, frames, frame_relevance.shape[1])
                merge_shape = (batch, frames) if granularity == "frame" else (batch, frames, kept.shape[1])
                merges = torch.full(merge_shape, -1, dtype=torch.long, device=device)
                if indices is not None:
                    selected = indices.new_empty(batch, frames, indices.shape[1])
            memory = bank.context(kept)  # the bank's slots, then the current frame: [B, (M+1)*K, C]
            qformer_outputs = self.qformer(
                input_ids=qformer_input_ids,
                attention_mask=qformer_mask,
                query_embeds=queries,
                encoder_hidden_states=memory,
                encoder_attention_mask=torch.ones(memory.shape[:2], dtype=torch.long, device=device),
                reef_query_memory=step,
                **kwargs,
            )
            if t < frames - 1:  # after the last step the banks are dropped, as in MA-LMM
                if query_memory is not None:
                    query_memory.commit(step)
                bank.append(kept, kept_relevance, compress=False)
                if len(bank) > config.memory_bank_length:
                    merges[:, t] = self.temporal_compression(bank)
            spatial[:, t] = frame_relevance.detach()
            if selected is not None:
                selected[:, t] = indices
        query_output = qformer_outputs.last_hidden_state[:, : queries.shape[1]]
        return ReefVideoFeaturesOutput(
            last_hidden_state=tokens,
            pooler_output=self.language_projection(query_output),
            vision_outputs=vision,
            qformer_outputs=qformer_outputs,
            selected_indices=selected,
            spatial_relevance=spatial,
            merged_slots=merges,
        )

    def prompt_video_tokens(self, num_frames: int) -> int:
        """`<video>` tokens of a prompt: the last step's Q query outputs, whatever the number of frames."""
        return self.config.num_query_tokens
