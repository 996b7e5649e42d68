"""The registration table: every row round-trips through every Auto class it names, bit for bit.

The table may still be empty; a tiny video model defined here goes through the same `register` function,
so the mechanism is covered either way. A row added to `REGISTRY` without a tiny builder below fails.
"""

import subprocess
import sys

import pytest
import torch
import transformers
from huggingface_hub.dataclasses import strict
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoConfig,
    AutoProcessor,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

import videoadapt
from videoadapt._auto import AUTO_MODEL_CLASSES, REGISTRY, ModelRow, register


# ----------------------------------------------------------------------------- a tiny video model, test only


@strict
class TinyVideoConfig(PreTrainedConfig):
    model_type = "videoadapt_test_tiny"
    vocab_size: int = 16
    hidden_size: int = 8
    video_token_id: int = 3


class TinyVideoPreTrainedModel(PreTrainedModel):
    config: TinyVideoConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"


class TinyVideoModel(TinyVideoPreTrainedModel):
    """Token embeddings, with every `<video>` position replaced by a projection of the frame means."""

    def __init__(self, config: TinyVideoConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.video_proj = nn.Linear(3, config.hidden_size)
        self.post_init()

    def forward(self, input_ids, pixel_values_videos=None, **kwargs):
        hidden = self.embed(input_ids)  # (B, L, D)
        if pixel_values_videos is not None:
            feats = self.video_proj(pixel_values_videos.mean(dim=(-1, -2)))  # (B, T, D)
            mask = (input_ids == self.config.video_token_id).unsqueeze(-1)
            hidden = hidden.masked_scatter(mask, feats.to(hidden.dtype))
        return BaseModelOutput(last_hidden_state=hidden)


class TinyVideoForConditionalGeneration(TinyVideoPreTrainedModel, GenerationMixin):
    def __init__(self, config: TinyVideoConfig):
        super().__init__(config)
        self.model = TinyVideoModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids, pixel_values_videos=None, **kwargs):
        return CausalLMOutput(logits=self.lm_head(self.model(input_ids, pixel_values_videos).last_hidden_state))


class TinyVideoProcessor(ProcessorMixin):
    def __init__(self, tokenizer=None, num_video_tokens: int = 2, chat_template=None):
        self.num_video_tokens = num_video_tokens
        super().__init__(tokenizer, chat_template=chat_template)

    def __call__(self, text: str):
        return self.tokenizer(text.replace("<video>", "<video>" * self.num_video_tokens), return_tensors="pt")


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<pad>", "<unk>", "<s>", "<video>", "what", "is", "moving", "a", "red", "circle", "?"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("<video>", behavior="isolated")
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("<video>", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>")


TEST_ROW = ModelRow(
    model_type="videoadapt_test_tiny",
    config_class=TinyVideoConfig,
    model_classes={
        "AutoModel": TinyVideoModel,
        "AutoModelForImageTextToText": TinyVideoForConditionalGeneration,
        "AutoModelForMultimodalLM": TinyVideoForConditionalGeneration,
    },
    processor_class=TinyVideoProcessor,
)


def _build_test_row(tmp_path):
    torch.manual_seed(0)
    model = TinyVideoForConditionalGeneration(TinyVideoConfig())
    processor = TinyVideoProcessor(_tiny_tokenizer(), num_video_tokens=2)
    text = "what is moving <video> ?"
    inputs = dict(processor(text))
    inputs["pixel_values_videos"] = torch.randn(1, 2, 3, 4, 4)
    return model, processor, inputs, text


def _pave_builder(family: str):
    """A PAVE model on a tiny base with one non-trivial audio patch; inputs carry its side channel."""

    def build(tmp_path):
        from transformers import AutoTokenizer

        from videoadapt.processors.processing_pave import PaveProcessor
        from videoadapt.testing.tiny_models import build_tiny_checkpoint, tiny_video_inputs

        checkpoint = build_tiny_checkpoint(family, tmp_path / "base")
        row = next(r for r in REGISTRY if r.weights_like == family)
        model = row.model_classes["AutoModelForImageTextToText"].from_pretrained(checkpoint)
        model.add_patch("audio", model.patch_config_for("audio", 8, hidden_size=16, num_attention_heads=2))
        torch.manual_seed(0)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "patches.audio." in name or ".lora_B." in name:
                    parameter.normal_(0, 0.1)
        processor = PaveProcessor.from_model(model, AutoTokenizer.from_pretrained(checkpoint), num_frames=2)
        inputs = tiny_video_inputs(family, checkpoint, num_frames=2)
        inputs["side_channels"] = {"audio": {"features": torch.randn(1, 5, 1, 1, 8)}}
        return model, processor, inputs, "what is moving ?"

    return build


def _build_reef(tmp_path):
    """REEF on the tiny InstructBLIP-Video checkpoint, filtering 8 of 16 tokens, bank of 2 over 4 frames."""
    from transformers import AutoTokenizer

    from videoadapt.modeling_reef import ReefForConditionalGeneration
    from videoadapt.processors.processing_reef import ReefProcessor
    from videoadapt.testing.tiny_models import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint("instructblip_video", tmp_path / "base")
    torch.manual_seed(0)
    model = ReefForConditionalGeneration.from_pretrained(
        checkpoint, model_type="videoadapt_reef", num_selected_tokens=8, memory_bank_length=2, alpha=0.5
    )
    with torch.no_grad():
        model.frame_position_embedding.weight.normal_(0, 0.1)
    processor = ReefProcessor.from_model(
        model, AutoTokenizer.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer"),
        num_frames=4,
    )  # fmt: skip
    inputs = dict(processor("what is moving ?", videos=[torch.rand(4, 32, 32, 3).mul(255).byte().numpy()]))
    return model, processor, inputs, "what is moving ?"


def _build_dynfocus(tmp_path):
    """DynFocus on the tiny InstructBLIP-Video checkpoint (4x4 patches: P = 4, I = 6 + 3, L = 4)."""
    from transformers import AutoTokenizer

    from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
    from videoadapt.processors.processing_dynfocus import DynFocusProcessor
    from videoadapt.testing.tiny_models import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint("instructblip_video", tmp_path / "base")
    torch.manual_seed(0)
    model = DynFocusForConditionalGeneration.from_pretrained(checkpoint, **DYNFOCUS_TINY)
    processor = DynFocusProcessor.from_model(
        model,
        AutoTokenizer.from_pretrained(checkpoint),
        AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer"),
    )
    frames = torch.rand(5, 32, 32, 3).mul(255).byte().numpy()
    inputs = dict(processor("<video> what is moving ?", videos=[frames]))
    return model, processor, inputs, "what is moving ?"


def _build_compact(tmp_path):
    """Compact on the tiny LLaVA-OneVision checkpoint: 4x4 patches resized to 8x8, 4 frames -> 1 x 2 x 2 tokens."""
    from transformers import AutoTokenizer

    from videoadapt.modeling_compact import CompactForConditionalGeneration
    from videoadapt.processors.processing_compact import CompactProcessor
    from videoadapt.testing.tiny_models import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint("llava_onevision", tmp_path / "base")
    torch.manual_seed(0)
    model = CompactForConditionalGeneration.from_pretrained(checkpoint, compressor_grid=8)
    with torch.no_grad():  # non-zero residual branches, so that the compressor's weights matter
        for parameter in model.model.compressor.parameters():
            parameter.normal_(0, 0.1)
    processor = CompactProcessor.from_model(model, AutoTokenizer.from_pretrained(checkpoint), num_frames=4)
    inputs = dict(processor("<video> what is moving ?", videos=[torch.rand(4, 32, 32, 3).mul(255).byte().numpy()]))
    return model, processor, inputs, "what is moving ?"


DYNFOCUS_TINY = dict(num_pooled_tokens=4, spatial_clusters=[6, 3], spatial_knn=[3, 2], num_events=4, event_knn=2)


# Tiny builders for the shipped rows: model_type -> fn(tmp_path) -> (model, processor, inputs, text).
TINY_BUILDERS = {
    TEST_ROW.model_type: _build_test_row,
    **{
        row.model_type: _pave_builder(row.weights_like)
        for row in REGISTRY
        if row.model_type.startswith("videoadapt_pave")
    },
    "videoadapt_reef": _build_reef,
    "videoadapt_dynfocus": _build_dynfocus,
    "videoadapt_compact": _build_compact,
}


@pytest.fixture(scope="module")
def test_row_registered():
    if TEST_ROW.model_type not in transformers.CONFIG_MAPPING:
        register(TEST_ROW)
    return TEST_ROW


def _rows():
    return [*REGISTRY, TEST_ROW]


def _outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r.model_type)
def test_every_row_round_trips_through_its_auto_classes(row, test_row_registered, tmp_path):
    assert row.model_type in TINY_BUILDERS, f"add a tiny builder for {row.model_type} to TINY_BUILDERS"
    model, processor, inputs, text = TINY_BUILDERS[row.model_type](tmp_path)
    model.eval()
    model.save_pretrained(tmp_path)
    if processor is not None:
        processor.save_pretrained(tmp_path)

    assert type(AutoConfig.from_pretrained(tmp_path)) is row.config_class
    assert row.model_classes, "a row must name at least one Auto class"
    for auto_name, expected_class in row.model_classes.items():
        loaded = getattr(transformers, auto_name).from_pretrained(tmp_path).eval()
        assert type(loaded) is expected_class, auto_name
        reference = model if isinstance(loaded, type(model)) else model.base_model
        ref_out, got_out = _outputs(reference, inputs), _outputs(loaded, inputs)
        assert ref_out.keys() == got_out.keys() and ref_out
        for key in ref_out:
            assert torch.equal(ref_out[key], got_out[key]), f"{auto_name}.{key} differs after the round trip"

    if row.processor_class is None:
        assert processor is None, "a row without a processor class must not build one"
        return
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded_processor) is row.processor_class
    assert torch.equal(loaded_processor(text)["input_ids"], processor(text)["input_ids"])


def test_registration_refuses_collisions_and_bad_rows(test_row_registered):
    register(TEST_ROW)  # the very same row again is a no-op
    clash = ModelRow(model_type=TEST_ROW.model_type, config_class=TinyVideoConfig, model_classes={})
    with pytest.raises(ValueError, match="already used by TinyVideoConfig"):
        register(clash)  # never exist_ok: another row claiming a registered type fails
    with pytest.raises(ValueError, match="must start with 'videoadapt_'"):
        ModelRow(model_type="llava", config_class=TinyVideoConfig).validate()
    with pytest.raises(ValueError, match="make them equal"):
        ModelRow(model_type="videoadapt_other", config_class=TinyVideoConfig).validate()
    with pytest.raises(ValueError, match="unknown Auto classes"):
        ModelRow("videoadapt_test_tiny", TinyVideoConfig, {"AutoModelForCausalLM": TinyVideoModel}).validate()


def test_shipped_rows_are_valid_and_registered():
    for row in REGISTRY:
        row.validate()
        assert transformers.CONFIG_MAPPING[row.model_type] is row.config_class
        assert set(row.model_classes) <= set(AUTO_MODEL_CLASSES)
    assert all(row in videoadapt.registered_rows() for row in REGISTRY)


def test_cli_lists_registered_models(test_row_registered, capsys):
    from videoadapt.cli import main

    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "videoadapt_test_tiny" in listing
    for auto_name in ("AutoConfig", *AUTO_MODEL_CLASSES, "AutoProcessor"):
        assert auto_name in listing
    assert "TinyVideoForConditionalGeneration" in listing and "TinyVideoProcessor" in listing


def test_console_script_version_and_models():
    out = subprocess.run([sys.executable, "-m", "videoadapt", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"videoadapt {videoadapt.__version__}"
    out = subprocess.run([sys.executable, "-m", "videoadapt", "models"], capture_output=True, text=True, check=True)
    for row in REGISTRY:
        assert row.model_type in out.stdout


def test_cli_import_official_pave_forwards_its_arguments(capsys):
    from videoadapt.cli import main

    with pytest.raises(SystemExit) as info:
        main(["import-official-pave", "--help"])
    assert info.value.code == 0 and "--side-channel-dim" in capsys.readouterr().out
    assert main(["import-official-pave", "/nonexistent", "/tmp/out", "--side-channel", "audio",
                 "--side-channel-dim", "8", "--output-dim", "8"]) == 1  # fmt: skip
