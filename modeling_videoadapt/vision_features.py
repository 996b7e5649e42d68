"""`forward` and `generate` of the InstructBLIP-Video-based models (REEF, DynFocus) that also take precomputed frame
features (`vision_features`, see their `get_video_features`) instead of `pixel_values`.

Shape legend: B videos, T frames, (1+P, C) one frame's vision features, N video tokens, D LLM width.
"""

import torch


__all__ = ["VisionFeaturesMixin"]


class VisionFeaturesMixin:
    """Put before `InstructBlipVideoForConditionalGeneration` in the bases. The model provides
    `get_video_features(..., vision_features=)` and `prompt_video_tokens(num_frames)`: how many `<video>` tokens a
    prompt-less `generate` starts with."""

    def _check_frame_inputs(self, pixel_values: torch.Tensor | None, vision_features: torch.Tensor | None) -> tuple:
        """(B, T) of exactly one of `pixel_values` [B, T, 3, H, W] and `vision_features` [B, T, 1+P, C]."""
        if (pixel_values is None) == (vision_features is None):
            got = "both" if pixel_values is not None else "neither"
            raise ValueError(
                "pass exactly one of `pixel_values` [B, T, 3, H, W] (the frames) and `vision_features` [B, T, L, C] "
                f"(the frozen vision encoder's output per frame, before `post_layernorm`), got {got}."
            )
        if pixel_values is not None:
            if pixel_values.ndim != 5:
                raise ValueError(
                    f"`pixel_values` must be [B, T, 3, H, W] (a batch of videos), got {tuple(pixel_values.shape)}."
                )
            return tuple(pixel_values.shape[:2])
        vision = self.config.vision_config
        tokens, width = (vision.image_size // vision.patch_size) ** 2 + 1, vision.hidden_size
        if vision_features.ndim != 4 or tuple(vision_features.shape[2:]) != (tokens, width):
            method = self.config.model_type.removeprefix("videoadapt_")
            raise ValueError(
                f"`vision_features` must be [B, T, L, C] with L = {tokens} tokens per frame (CLS + (image_size / "
                f"patch_size)^2 patches) and C = {width} (the vision hidden size), got {tuple(vision_features.shape)}; "
                f"extract them with `METHODS['{method}'].feature_encoder(model, processor)` (videoadapt.recipes.training)."
            )
        return tuple(vision_features.shape[:2])

    @staticmethod
    def _check_instruction_rows(qformer_input_ids: torch.Tensor, batch: int) -> None:
        """The Q-Former's instruction [B, L] needs one row per video."""
        if qformer_input_ids.ndim != 2 or qformer_input_ids.shape[0] != batch:
            raise ValueError(
                f"`qformer_input_ids` must be [B, L] with one instruction per video: {batch} videos, got shape "
                f"{tuple(qformer_input_ids.shape)}; tokenize one question per video (the processor does)."
            )

    def _check_video_placeholders(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, video_tokens: torch.Tensor
    ) -> torch.Tensor:
        """The `<video>` mask [B, S, 1] of the prompts, after checking that each of the B prompts holds exactly N
        placeholders for the video tokens [B, N, D] (a surplus would otherwise shift into the next prompt)."""
        if input_ids is not None:
            mask = (input_ids == self.config.video_token_index).unsqueeze(-1)
        elif inputs_embeds is not None:
            mask = self.get_placeholder_mask(None, inputs_embeds)
        else:
            raise ValueError("pass `input_ids` (or `inputs_embeds`): the prompt that holds the `<video>` tokens.")
        batch, tokens = video_tokens.shape[:2]
        per_prompt = mask[..., 0].sum(-1)
        if mask.shape[0] != batch or bool((per_prompt != tokens).any()):
            raise ValueError(
                f"each prompt must hold exactly {tokens} `<video>` tokens (id {self.config.video_token_index}), one "
                f"per video token this model makes, for {batch} videos; got {per_prompt.tolist()} in {mask.shape[0]} "
                "prompts. Build the prompts with the model's processor (made for this config), which writes them."
            )
        return mask

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict | None = None,
        vision_features: torch.Tensor | None = None,
        **kwargs,
    ):
        """InstructBLIP-Video's `forward`, with `vision_features` [B, T, 1+P, C] (see `get_video_features`) as an
        alternative to `pixel_values`: the frozen vision encoder is then skipped. Every prompt must hold exactly as
        many `<video>` tokens as the model makes video tokens (the processor writes them)."""
        video = (mm_encoder_outputs or {}).get("video")
        if video is None and (pixel_values is not None or vision_features is not None):
            video = self.get_video_features(
                pixel_values, qformer_input_ids, qformer_attention_mask, interpolate_pos_encoding,
                vision_features=vision_features, **kwargs,
            )  # fmt: skip
            mm_encoder_outputs = {**(mm_encoder_outputs or {}), "video": video}
        if video is not None:
            self._check_video_placeholders(input_ids, inputs_embeds, video.pooler_output)
        return super().forward(
            pixel_values=None, qformer_input_ids=qformer_input_ids,
            qformer_attention_mask=qformer_attention_mask, input_ids=input_ids, attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
            inputs_embeds=inputs_embeds, labels=labels, interpolate_pos_encoding=interpolate_pos_encoding,
            use_cache=use_cache, mm_encoder_outputs=mm_encoder_outputs, **kwargs,
        )  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        vision_features: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """InstructBLIP-Video's `generate` from `pixel_values` or `vision_features`; without a prompt, the input is the
        video tokens and BOS."""
        if hasattr(self, "hf_device_map"):
            self._preprocess_accelerate()
        video = self.get_video_features(
            pixel_values, qformer_input_ids, qformer_attention_mask, interpolate_pos_encoding,
            vision_features=vision_features,
        ).pooler_output  # fmt: skip
        if input_ids is None and inputs_embeds is None:
            frames = (pixel_values if vision_features is None else vision_features).shape[1]
            start = [self.config.video_token_index] * self.prompt_video_tokens(frames)
            start.append(self.config.text_config.bos_token_id)
            input_ids = torch.tensor([start], dtype=torch.long, device=video.device).repeat(len(video), 1)
        return self._generate_from_video_tokens(video, input_ids, attention_mask, inputs_embeds, **generate_kwargs)

    def _generate_from_video_tokens(self, video_tokens, input_ids, attention_mask, inputs_embeds, **generate_kwargs):
        """InstructBLIP-Video's generation from video tokens [B, N, D]: scattered into the `video_token_index`
        positions of the prompt's embeddings, then the language model's `generate`."""
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        video_tokens = video_tokens.to(inputs_embeds.device, inputs_embeds.dtype)
        mask = self._check_video_placeholders(input_ids, inputs_embeds, video_tokens)
        inputs_embeds = inputs_embeds.masked_scatter(mask.to(inputs_embeds.device), video_tokens)
        inputs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if not self.language_model.config.is_encoder_decoder:
            inputs["input_ids"] = input_ids
        return self.language_model.generate(**inputs, **generate_kwargs)
