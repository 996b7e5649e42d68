"""What `videoadapt.recipes.train` needs for every method: the manifest collator, the method table, the Trainer.

A method (`METHODS`) knows how to load its YAML recipe, build its model and processor from a checkpoint (a base
checkpoint or an earlier stage's output), freeze what the stage freezes, and give the stage's `TrainingArguments`
and callbacks. `SFTCollator` turns manifest rows into model inputs with labels on the answer only, through the
method's own processor, so the video token counts are always the processor's. `VideoadaptTrainer` writes every
checkpoint atomically (into a staging folder, then renamed), so a run killed mid-write never leaves a
`checkpoint-N` that a resume would load.

Features mode (REEF, DynFocus, Compact): `Method.feature_encoder(model, processor)` extracts, with the processor's
frame sampler and preprocessing, exactly the frozen-tower features the model reads as `vision_features`;
`SFTCollator(..., features="frame_features")` then feeds them instead of decoding videos, and `load_feature_rows`
reads rows saved by `videoadapt extract`. For PAVE the same column carries a `SideChannelEncoder`'s side channel.

Shape legend: B rows per batch, L prompt + answer tokens, T frames, (L_v, C) or (g, g, D) one frame's features.
"""

import functools
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.utils import logging

from videoadapt.pave_hub import pave_class_for
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import FrameSampler, SegmentSampler
from videoadapt.processors.side_channels import SideChannelFeatures
from videoadapt.processors.video_io import load_video
from videoadapt.recipes.features import (
    FEATURES_COLUMN,
    FrameFeatures,
    MethodFrameEncoder,
    _float_tensor,
    _row_name,
    load_feature_rows,
    side_channel_of_segment,
    side_channels_from_columns,
)
from videoadapt.recipes.trainer import STAGING_PREFIX, VideoadaptTrainer


__all__ = [
    "FEATURES_COLUMN",
    "IGNORE_INDEX",
    "METHODS",
    "FrameFeatures",
    "Method",
    "MethodFrameEncoder",
    "SFTCollator",
    "STAGING_PREFIX",
    "VideoadaptTrainer",
    "load_feature_rows",
    "method_of",
]

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------- the collator


class SFTCollator:
    """Manifest rows -> a batch for the method's model: the prompt through the processor, then the answer.

    Training (`train=True`): right-padded `input_ids` = prompt + answers[0] + EOS, `labels` = -100 on the prompt and
    the padding. Evaluation: left-padded prompts (for `generate`) and `references` (every row's answers), which the
    caller pops. Rows with `timestamps` are decoded on their segment only (the processor's sampler on [start, end)).

    Features mode (`features` names a column): no video is decoded. Each row's `<features>` [T, ...] (with
    `<features>_length` = T) is stacked into `vision_features` [B, T, ...], and the text holds the processor's
    `video_token_count(T)` video tokens where the processor puts them (at the `<video>` placeholder, or in front of
    the prompt for REEF), so the batch equals the video batch with `vision_features` for the pixels.

    Args:
        processor: the method's processor (its `__call__(text, videos=...)` expands the video tokens).
        prompt: row -> the text for the processor (the method's prompt format).
        extra: rows -> more processor arguments for the batch (PAVE: the side-channel features).
        train: training batches (labels) or evaluation batches (prompts + references).
        features: the rows' column of pre-extracted frame features (`Method.feature_encoder`), or None (videos).
    """

    def __init__(
        self,
        processor: Any,
        prompt: Callable[[Mapping[str, Any]], str],
        train: bool = True,
        extra: Callable[[Sequence[Mapping[str, Any]]], dict] | None = None,
        features: str | None = None,
    ):  # extra: rows -> more processor arguments (PAVE's side channels)
        self.processor, self.prompt, self.train, self.extra = processor, prompt, train, extra
        self.tokenizer, self.features = processor.tokenizer, features
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set `tokenizer.pad_token` before training.")
        if train and self.tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no eos token; training appends it to every answer (so that `generate` learns to "
                "stop): set `tokenizer.eos_token` before training."
            )
        if features is not None and not callable(getattr(processor, "video_token_count", None)):
            raise ValueError(f"`features` needs a processor with `video_token_count`, got {type(processor).__name__}.")

    def _video(self, row: Mapping[str, Any]) -> Any:
        path = row.get("video")
        if path is None:
            raise ValueError(f"row {row.get('id')!r} has no `video`; this method reads frames from a video file.")
        if not row.get("timestamps"):
            return path
        start, end = row["timestamps"]
        frames, _ = load_video(path, SegmentSampler(self.processor.frame_sampler, float(start), float(end)))
        return frames

    def _answer_ids(self, row: Mapping[str, Any], text: str) -> list[int]:
        """answers[0] + EOS, as the answer reads after the prompt `text`: after a space (`Answer: red`), or right
        after a chat template's newline (`<|im_start|>assistant\nred`, as the template renders earlier turns)."""
        space = "" if text[-1:].isspace() else " "
        ids = self.tokenizer(space + row["answers"][0].strip(), add_special_tokens=False).input_ids
        return ids + [self.tokenizer.eos_token_id]

    def _vision_features(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """The rows' `<features>` column stacked: [B, T, ...]."""
        column, stacked = self.features, []
        for row in rows:
            if row.get(column) is None:
                raise ValueError(
                    f"{_row_name(row)} has no `{column}` column: training or evaluating from features needs every "
                    "row's pre-extracted frame features (`videoadapt extract`, or `extract_features` with the "
                    "method's `feature_encoder`); extract them for these rows, or read videos (drop `features=`)."
                )
            value = _float_tensor(row[column])
            length = row.get(f"{column}_length")
            if value.ndim < 2 or (length is not None and int(length) != value.shape[0]):
                raise ValueError(
                    f"{_row_name(row)}: `{column}` must be [T, ...] frame features with T = `{column}_length` = "
                    f"{length}, got shape {tuple(value.shape)}; extract the row again."
                )
            stacked.append(value)
        counts = sorted({len(value) for value in stacked})
        if len(counts) > 1:
            raise ValueError(f"videos in one batch need the same frame count, got {counts} frames in `{column}`.")
        return torch.stack(stacked)

    def _feature_inputs(self, rows: Sequence[Mapping[str, Any]], texts: list[str], extra: dict) -> tuple:
        """Features mode: (batch without input_ids, the prompts' token ids), text built as the processor builds it
        for T-frame videos (`video_token_count(T)` tokens at the `<video>` placeholder or, REEF, before the text)."""
        features = self._vision_features(rows)
        token, count = self.tokenizer.video_token, self.processor.video_token_count(features.shape[1])
        placed = [text.count(token) for text in texts]
        if all(n == 0 for n in placed):  # REEF: the processor prepends the video tokens to its own text
            batch = dict(self.processor(texts, **extra))
            ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
            prefix = [self.tokenizer.convert_tokens_to_ids(token)] * count
            prompts = [prefix + row_ids[row_mask.bool()].tolist() for row_ids, row_mask in zip(ids, mask)]
        elif all(n == 1 for n in placed):  # DynFocus, Compact: each text's placeholder expands to the video tokens
            prompts = self.tokenizer([text.replace(token, token * count) for text in texts]).input_ids
            batch = dict(extra)
            qformer = getattr(self.processor, "qformer_tokenizer", None)
            if qformer is not None:  # DynFocus: the Q-Former reads the question, the text without the placeholder
                questions = qformer(
                    [text.replace(token, "").strip() for text in texts], padding=True, return_tensors="pt"
                )
                batch.update(qformer_input_ids=questions.input_ids, qformer_attention_mask=questions.attention_mask)
        else:
            raise ValueError(f"each text needs exactly one {token!r} or none (REEF), got counts {placed}.")
        return {**batch, "vision_features": features}, prompts

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        rows = list(rows)
        extra = self.extra(rows) if self.extra else {}
        texts = [self.prompt(r) for r in rows]
        if self.features is not None:
            batch, prompts = self._feature_inputs(rows, texts, extra)
        else:
            batch = dict(self.processor(texts, videos=[self._video(r) for r in rows], **extra))
            pairs = zip(batch.pop("input_ids"), batch.pop("attention_mask"))
            prompts = [ids[mask.bool()].tolist() for ids, mask in pairs]
        pad = self.tokenizer.pad_token_id
        if self.train:
            answers = [self._answer_ids(r, text) for r, text in zip(rows, texts)]
            length = max(len(p) + len(a) for p, a in zip(prompts, answers))
            input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
            labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
            attention = torch.zeros((len(rows), length), dtype=torch.long)
            for i, (p, a) in enumerate(zip(prompts, answers)):
                input_ids[i, : len(p) + len(a)] = torch.tensor(p + a)
                labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
                attention[i, : len(p) + len(a)] = 1
            return {**batch, "input_ids": input_ids, "attention_mask": attention, "labels": labels}
        length = max(len(p) for p in prompts)
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, length - len(p) :] = torch.tensor(p)
            attention[i, length - len(p) :] = 1
        return {
            **batch,
            "input_ids": input_ids,
            "attention_mask": attention,
            "references": [r["answers"] for r in rows],
        }


# --------------------------------------------------------------------------------------------- the methods


def _subfolder_or_none(checkpoint: Path, name: str) -> Path | None:
    return checkpoint / name if (checkpoint / name).is_dir() else None


def _image_processor(checkpoint: Path) -> Any:
    try:
        return AutoImageProcessor.from_pretrained(checkpoint)
    except (OSError, ValueError):  # no image processor saved: the processor's own preset for the tower's size
        return None


def _load_or_build_processor(processor_class: type, model: Any, checkpoint: Path, kwargs: dict, qformer: bool) -> Any:
    """The processor saved with `checkpoint` (an earlier stage), else one built from the base's tokenizer(s)."""
    if (checkpoint / "processor_config.json").is_file():
        return processor_class.from_pretrained(checkpoint)
    tokenizers = [AutoTokenizer.from_pretrained(checkpoint)]
    if qformer:
        folder = _subfolder_or_none(checkpoint, "qformer_tokenizer")
        if folder is None:
            raise ValueError(
                f"{checkpoint} has no `qformer_tokenizer/` folder; InstructBLIP(-Video) checkpoints ship one. Pass an "
                "InstructBLIP(-Video) base or an earlier stage's output."
            )
        tokenizers.append(AutoTokenizer.from_pretrained(folder))
    return processor_class.from_model(model, *tokenizers, image_processor=_image_processor(checkpoint), **kwargs)


# --------------------------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class Method:
    """One method's recipe and model plumbing. `stages`: the recipe's stage names (None: one stage per file);
    `frame_features`: what its `vision_features` are (None: the method cannot skip its vision tower)."""

    name: str
    stages: tuple[str, ...] | None
    load_recipe: Callable[..., Any]
    model_class: Callable[[], type]
    processor_class: Callable[[], type]
    qformer: bool  # the processor takes a Q-Former tokenizer too
    video_in_text: bool  # the prompt holds the `<video>` placeholder (otherwise the processor prepends the tokens)
    frame_features: FrameFeatures | None = None

    def _stage_args(self, stage: str | None) -> tuple:
        return () if self.stages is None else (stage,)

    def check_stage(self, stage: str | None) -> str | None:
        if self.stages is None:
            if stage is not None:
                raise ValueError(f"{self.name} recipes hold one stage per file: drop `--stage` (got {stage!r}).")
            return None
        if stage not in self.stages:
            raise ValueError(f"`--stage` must be one of {list(self.stages)} for {self.name}, got {stage!r}.")
        return stage

    def config_overrides(self, recipe: Any, stage: str | None) -> dict[str, Any]:
        overrides = recipe.config_overrides(stage) if self.name == "reef" else recipe.config_overrides()
        return dict(overrides)

    def processor_kwargs(self, recipe: Any, stage: str | None) -> dict[str, Any]:
        return dict(recipe.processor_kwargs(stage) if self.name == "reef" else recipe.processor_kwargs())

    def build(
        self,
        recipe: Any,
        stage: str | None,
        checkpoint: str | os.PathLike,
        config: dict,
        processor: dict,
        compressor: str | os.PathLike | None = None,
    ) -> tuple[Any, Any]:
        """(model, processor) from `checkpoint` with the recipe's config/processor settings and the overrides.
        `compressor`: Compact's pre-trained compressor (`CompactMethod`); other methods refuse it."""
        checkpoint = Path(checkpoint)
        model = self._load_model(
            recipe, stage, checkpoint, {**self.config_overrides(recipe, stage), **config}, compressor
        )
        kwargs = {**self.processor_kwargs(recipe, stage), **processor}
        return model, _load_or_build_processor(self.processor_class(), model, checkpoint, kwargs, self.qformer)

    def _load_model(
        self, recipe: Any, stage: str | None, checkpoint: Path, overrides: dict, compressor: str | os.PathLike | None
    ) -> Any:
        """The model from `checkpoint` with the config `overrides`."""
        self._check_no_compressor(compressor)
        return self.model_class().from_pretrained(checkpoint, **overrides)

    def _check_no_compressor(self, compressor: str | os.PathLike | None) -> None:
        if compressor is not None:
            raise ValueError(
                f"`compressor=` loads Compact's pre-trained compressor; {self.name} recipes have none, got "
                f"compressor={os.fspath(compressor)!r}; drop it."
            )

    def load_processor(self, model: Any, checkpoint: str | os.PathLike, **kwargs: Any) -> Any:
        """The processor saved with `checkpoint`, else one built for `model` from the checkpoint's tokenizer(s)."""
        return _load_or_build_processor(self.processor_class(), model, Path(checkpoint), kwargs, self.qformer)

    def _features_spec(self) -> FrameFeatures:
        if self.frame_features is None:
            raise ValueError(
                f"{self.name} reads its frames through the base model's vision tower at every step; its pre-extracted "
                "inputs are the side channels (`SideChannelEncoder`, named by `features=` rows' column). Frame "
                "features serve reef, dynfocus and compact."
            )
        return self.frame_features

    def feature_encoder(
        self, model: Any, processor: Any, sampler: FrameSampler | None = None, batch_size: int = 32
    ) -> MethodFrameEncoder:
        """An encoder for `extract_features` giving, per row, the `vision_features` [T, ...] that `model` computes from
        the frames `processor` samples (its frame sampler, or `sampler`; a row's `timestamps` segment) and
        preprocesses. Use the model the features will train or evaluate (its frozen tower)."""
        spec = self._features_spec()
        tower = model.get_submodule(spec.tower)
        frames = FramePreprocessor.from_dict(processor.frame_preprocessor)
        sampler = processor.frame_sampler if sampler is None else sampler
        if spec.video_method is None:  # the tower's last hidden state, before its final layer norm
            return MethodFrameEncoder(tower, frames, sampler, feature_layer=-1, batch_size=batch_size,
                                      fingerprint=tower)  # fmt: skip
        owner, _, method = spec.video_method.rpartition(".")
        return MethodFrameEncoder(model.get_submodule(owner), frames, sampler, video_method=method, fingerprint=tower)

    def check_features_training(self, model: Any, trained: Sequence[str], where: str) -> None:
        """Features mode skips the frozen tower: refuse a stage that trains any of it (but `applied` modules)."""
        spec = self._features_spec()
        inside = [n for n in trained if n.startswith(f"{spec.tower}.")]
        skipped = [n for n in inside if not any(n.startswith(f"{module}.") for module in spec.applied)]
        if skipped:
            raise ValueError(
                f"features mode skips `{spec.tower}` (the features are its output), but {where} trains "
                f"{len(skipped)} of its parameters ({', '.join(skipped[:3])}, ...); train this stage from videos "
                "(`train=` manifest), or freeze them in the recipe."
            )

    def collator(self, recipe: Any, processor: Any, train: bool, features: str | None = None) -> SFTCollator:
        """The batches of this method; `features`: the rows' column of pre-extracted frame features (features mode)."""
        if features is not None:
            self._features_spec()
        prompt = functools.partial(self.prompt, recipe, processor)
        return SFTCollator(processor, prompt, train, self.processor_extra(recipe), features=features)

    def training_arguments(self, recipe: Any, stage: str | None, output_dir: str, world_size: int, **kw) -> Any:
        return recipe.training_arguments(*self._stage_args(stage), output_dir, world_size, **kw)

    def callbacks(self, recipe: Any, stage: str | None) -> list:
        return list(recipe.callbacks(*self._stage_args(stage))) if hasattr(recipe, "callbacks") else []

    def apply_freezing(self, recipe: Any, model: Any, stage: str | None) -> list[str]:
        return recipe.apply_freezing(model, *self._stage_args(stage))

    def processor_extra(
        self, recipe: Any, features: str | None = None
    ) -> Callable[[Sequence[Mapping[str, Any]]], dict] | None:
        """rows -> more processor arguments (None: the video and the text are all the processor needs)."""
        return None

    def final_artifacts(self, recipe: Any, model: Any, output_dir: Path) -> None:
        """Write what the method shares besides the whole model (PAVE: the patch folder)."""

    def prompt(self, recipe: Any, processor: Any, row: Mapping[str, Any]) -> str:
        """The row's text for the processor: its question, or the recipe's prompt for question-less rows
        (captioning); `<video> ` in front where the processor expects the placeholder in the text."""
        question = row.get("question") or getattr(recipe, "prompt", "")
        if not question:
            raise ValueError(
                f"row {row.get('id')!r} has no question and the {self.name} recipe no prompt; give the row a question."
            )
        return f"{processor.tokenizer.video_token} {question}" if self.video_in_text else question


class PaveMethod(Method):
    """PAVE: the base (or a saved PAVE model) gets the recipe's patch and LoRA; rows carry side-channel features."""

    def config_overrides(self, recipe: Any, stage: str | None) -> dict[str, Any]:
        return {}

    def build(self, recipe, stage, checkpoint, config, processor, compressor=None):
        self._check_no_compressor(compressor)
        unknown = sorted(set(config) - {"side_channel_dim"})
        if unknown:
            raise ValueError(f"PAVE takes only `config.side_channel_dim` (the feature width), got {unknown}.")
        model_class = pave_class_for(recipe.base_model_type, f"the recipe {recipe.name!r}")
        checkpoint = Path(checkpoint)
        model = model_class.from_pretrained(checkpoint)
        if recipe.name not in model.patch_names:
            recipe.add_patch(model, side_channel_dim=config.get("side_channel_dim"))
        kwargs = {**recipe.processor_kwargs(), **processor}
        return model, _load_or_build_processor(self.processor_class(), model, checkpoint, kwargs, qformer=False)

    def apply_freezing(self, recipe: Any, model: Any, stage: str | None) -> list[str]:
        return recipe.apply_freezing(model)

    def collator(self, recipe: Any, processor: Any, train: bool, features: str | None = None) -> SFTCollator:
        """PAVE decodes the video in both modes; `features` names the rows' side-channel column instead of files."""
        prompt = functools.partial(self.prompt, recipe, processor)
        return SFTCollator(processor, prompt, train, self.processor_extra(recipe, features))

    def processor_extra(
        self, recipe: Any, features: str | None = None
    ) -> Callable[[Sequence[Mapping[str, Any]]], dict]:
        """rows -> the recipe's side channel: the row's `side_channels` file, or with `features` the row's Arrow
        columns `<features>`, `<features>_timestamps` (+ `_positions`) of `extract_features(..., SideChannelEncoder)`."""
        kind, name = recipe.side_channel.kind, recipe.name
        if features is not None:
            return functools.partial(side_channels_from_columns, column=features, kind=kind, name=name)

        def side_channels(rows: Sequence[Mapping[str, Any]]) -> dict:
            features = []
            for row in rows:
                files = row.get("side_channels") or {}
                path = files.get(name) or files.get(kind)
                if path is None:
                    raise ValueError(
                        f"row {row.get('id')!r} has no `side_channels` entry {name!r} or {kind!r}: PAVE trains on "
                        "pre-extracted side-channel features (`SideChannelFeatures.save` files; see "
                        "videoadapt.recipes.extract)."
                    )
                if row.get("timestamps"):  # the frames are the segment's: keep the side channel's steps in it
                    path = side_channel_of_segment(SideChannelFeatures.load(path), row, name)
                features.append({name: path})
            return {"side_channels": features}

        return side_channels

    def final_artifacts(self, recipe: Any, model: Any, output_dir: Path) -> None:
        model.save_patch(recipe.name, output_dir / "patch")

    def prompt(self, recipe: Any, processor: Any, row: Mapping[str, Any]) -> str:
        """The recipe's prompt (question, options) after the video, in the tokenizer's chat template, with the row's
        earlier dialogue turns (`history`) as chat turns."""
        fields = {"question": row.get("question") or None, "options": row.get("options")}
        text = recipe.format_prompt(**{k: v for k, v in fields.items() if "{" + k + "}" in recipe.prompt})
        messages = []
        for i, (question, answer) in enumerate(row.get("history") or []):
            content = [{"type": "text", "text": question}]
            messages += [{"role": "user", "content": ([{"type": "video"}] if i == 0 else []) + content},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}]  # fmt: skip
        first = not messages
        messages.append(
            {"role": "user", "content": ([{"type": "video"}] if first else []) + [{"type": "text", "text": text}]}
        )
        return processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).rstrip(
            " "
        )


class CompactMethod(Method):
    """Compact: a stage that starts from a base (the recipe's `compressor_from`) gets the compressor pre-training
    output (`compressor=`); a compressor that stays untrained (the checkpoint has none) is logged as a warning."""

    def _load_model(self, recipe, stage, checkpoint, overrides, compressor):
        pretrained = recipe.read_pretrained_compressor(compressor)  # before the model loads: a bad path fails fast
        model, info = self.model_class().from_pretrained(checkpoint, output_loading_info=True, **overrides)
        fresh = any(key.startswith("model.compressor.") for key in info["missing_keys"])
        recipe.load_pretrained_compressor(model, pretrained, compressor, fresh, where=os.fspath(checkpoint))
        return model


def _pave_recipe(name: str) -> Any:
    from videoadapt.recipes.pave_recipes import load_recipe

    return load_recipe(name)


def _reef_recipe(name: str) -> Any:
    from videoadapt.recipes.reef_recipes import load_recipe

    return load_recipe(name)


def _dynfocus_recipe(name: str, variant: str | None = None) -> Any:
    from videoadapt.recipes.dynfocus_recipes import load_recipe

    return load_recipe(name, variant)


def _compact_recipe(name: str) -> Any:
    from videoadapt.recipes.compact_recipes import load_recipe

    return load_recipe(name)


def _class(module: str, name: str) -> Callable[[], type]:
    def get() -> type:
        return getattr(importlib.import_module(module), name)

    return get


METHODS: dict[str, Method] = {
    "reef": Method(
        "reef", ("initial", "main"), _reef_recipe,
        _class("videoadapt.modeling_reef", "ReefForConditionalGeneration"),
        _class("videoadapt.processors.processing_reef", "ReefProcessor"), qformer=True, video_in_text=False,
        frame_features=FrameFeatures("vision_model", applied=("vision_model.post_layernorm",)),
    ),
    "dynfocus": Method(
        "dynfocus", ("stage1", "stage2"), _dynfocus_recipe,
        _class("videoadapt.modeling_dynfocus", "DynFocusForConditionalGeneration"),
        _class("videoadapt.processors.processing_dynfocus", "DynFocusProcessor"), qformer=True, video_in_text=True,
        frame_features=FrameFeatures("vision_model", applied=("vision_model.post_layernorm",)),
    ),
    "pave": PaveMethod(
        "pave", None, _pave_recipe, _class("videoadapt.modeling_pave", "PaveForConditionalGeneration"),
        _class("videoadapt.processors.processing_pave", "PaveProcessor"), qformer=False, video_in_text=True,
    ),
    "compact": CompactMethod(
        "compact", None, _compact_recipe,
        _class("videoadapt.modeling_compact", "CompactForConditionalGeneration"),
        _class("videoadapt.processors.processing_compact", "CompactProcessor"), qformer=False, video_in_text=True,
        frame_features=FrameFeatures("model.vision_tower", video_method="model.get_compressor_inputs"),
    ),
}  # fmt: skip


def method_of(recipe_path: str | os.PathLike, method: str | None = None) -> Method:
    """The method of a recipe: `method` if given, else the recipe's folder name (recipes/<method>/<setting>.yaml)."""
    name = method or Path(recipe_path).parent.name or Path(str(recipe_path)).parts[0]
    if name not in METHODS:
        raise ValueError(
            f"cannot tell the method of recipe {os.fspath(recipe_path)!r} (folder {name!r}); pass `--method` as one "
            f"of {sorted(METHODS)}, or a shipped name such as 'reef/msvd_qa'."
        )
    return METHODS[name]
