"""DynFocus on the tiny InstructBLIP-Video checkpoint: weights, token budget, event selection, the token sequence
against a literal reference, gradients, generate, errors."""

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoModelForImageTextToText, AutoTokenizer, InstructBlipVideoForConditionalGeneration

from videoadapt.configuration.configuration_dynfocus import DynFocusConfig, dynfocus_video_tokens
from videoadapt.layers.dpc_knn import dpc_knn
from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
from videoadapt.processors.processing_dynfocus import DynFocusProcessor


# The tiny vision tower has 4 x 4 patches: P = 4 pooled tokens (2 x 2), S-DPC 16 -> 6 -> 3 (I = 9).
TINY = dict(num_pooled_tokens=4, spatial_clusters=[6, 3], spatial_knn=[3, 2], num_events=4, event_knn=2)
NEW_MODULES = ("event_scorer.", "context_attention.", "fine_projector.", "coarse_projector.")
B = 2


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints["instructblip_video"]


@pytest.fixture(scope="module")
def tokenizers(checkpoint):
    return AutoTokenizer.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer")


def load(checkpoint, **overrides) -> DynFocusForConditionalGeneration:
    torch.manual_seed(0)
    return DynFocusForConditionalGeneration.from_pretrained(checkpoint, **{**TINY, **overrides}).eval()


def clips(frames: int, batch: int = B, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8) for _ in range(batch)]


def inputs_for(model, tokenizers, frames: int, **processor_kwargs):
    processor = DynFocusProcessor.from_model(model, *tokenizers, **processor_kwargs)
    return processor(["<video> what is moving?", "<video> is it red?"], videos=clips(frames)), processor


def test_loads_an_instructblip_video_checkpoint_with_only_dynfocus_modules_missing(checkpoint):
    model, info = DynFocusForConditionalGeneration.from_pretrained(checkpoint, **TINY, output_loading_info=True)
    assert info["missing_keys"] and all(k.startswith(NEW_MODULES) for k in info["missing_keys"])
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    base = InstructBlipVideoForConditionalGeneration.from_pretrained(checkpoint).state_dict()
    ours = model.state_dict()
    assert all(torch.equal(ours[name], tensor) for name, tensor in base.items())
    assert model.config.model_type == "videoadapt_dynfocus"


def test_token_budget_matches_the_paper_defaults():
    config = DynFocusConfig()
    assert (config.num_spatial_prototypes, config.fine_tokens_per_key_frame) == (22, 38)
    assert config.num_key_frames(100) == 20 and config.num_key_frames(10) == 8 and config.num_key_frames(1) == 1
    assert config.num_video_tokens(100) == 2 * 100 + 38 * 20  # key frames: 38 fine + 2 coarse = 40, others 2
    official = DynFocusConfig(key_frame_rods=False)
    assert official.num_video_tokens(100) == 2 * 80 + 38 * 20


@pytest.mark.parametrize(("frames", "overrides"), [(1, {}), (3, {}), (7, {}), (7, {"key_frame_rods": False})])
def test_processor_count_equals_the_model_tokens(checkpoint, tokenizers, frames, overrides):
    model = load(checkpoint, **overrides)
    inputs, processor = inputs_for(model, tokenizers, frames)
    with torch.no_grad():
        features = model.get_video_features(
            inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
        )
        logits = model(**inputs).logits
    expected = dynfocus_video_tokens(num_frames=frames, **model.config.token_budget())
    assert features.pooler_output.shape == (B, expected, 64) == (B, processor.video_token_count(frames), 64)
    assert (inputs["input_ids"] == tokenizers[0].video_token_id).sum(1).tolist() == [expected] * B
    assert logits.shape[:2] == inputs["input_ids"].shape


def test_sequence_equals_a_literal_frame_by_frame_assembly(checkpoint, tokenizers):
    model = load(checkpoint)
    inputs, _ = inputs_for(model, tokenizers, 6)
    captured = {}
    model.fine_projector.register_forward_hook(lambda m, a, out: captured.__setitem__("fine", out))
    model.coarse_projector.register_forward_hook(lambda m, a, out: captured.__setitem__("rods", out))
    with torch.no_grad():
        out = model.get_video_features(
            inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
        )
    fine, rods = captured["fine"], captured["rods"]  # [B, K, P+I, D], [B, T, 2, D]
    for b in range(B):
        keys = out.key_frames[b].tolist()
        rows = []
        for t in range(6):
            if t in keys:
                rows += list(fine[b, keys.index(t)])
            rows += list(rods[b, t])
        assert torch.equal(out.pooler_output[b], torch.stack(rows))


def test_events_are_t_dpc_and_the_hard_selection_keeps_the_top_scored(checkpoint, tokenizers):
    model = load(checkpoint)
    inputs, _ = inputs_for(model, tokenizers, 9)
    with torch.no_grad():
        out = model.get_video_features(
            inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
        )
    expected = dpc_knn(out.last_hidden_state.flatten(2), 4, 2, distance_normaliser=4, center_order="position")
    assert torch.equal(out.event_assign, expected.assign) and torch.equal(out.event_centers, expected.centers)
    assert (out.event_centers.diff(dim=1) > 0).all()  # events in temporal order
    k = model.config.num_key_frames(9)
    chosen = out.event_scores.topk(k, dim=1).indices.sort(1).values
    assert torch.equal(out.key_frames, out.event_centers.gather(1, chosen))
    assert out.event_scores.min() >= 0 and out.event_scores.max() <= 1


def test_training_gradients_reach_the_scorer_and_the_new_modules(checkpoint, tokenizers):
    model = load(checkpoint, topk_num_samples=50, topk_sigma=0.5, event_keep_ratio=0.5)  # K = 2 of L = 4
    model.vision_model.requires_grad_(False)
    model.language_model.requires_grad_(False)
    model.train()
    inputs, _ = inputs_for(model, tokenizers, 6)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("vision_model.", "language_model.", "language_projection.")):
            assert parameter.grad is None, name
        elif name == "event_scorer.mlp.4.bias":  # min-max normalised scores do not depend on a shift: zero gradient
            assert parameter.grad is None or parameter.grad.abs().max() < 1e-4, name
        elif name.startswith(NEW_MODULES):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_generate_and_save_load_round_trip(checkpoint, tokenizers, tmp_path):
    model = load(checkpoint)
    inputs, processor = inputs_for(model, tokenizers, 5)
    generated = model.generate(**inputs, num_beams=3, max_new_tokens=3, do_sample=False)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is DynFocusForConditionalGeneration
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    assert torch.equal(loaded.generate(**inputs, num_beams=3, max_new_tokens=3, do_sample=False), generated)


def test_bad_inputs(checkpoint, tokenizers):
    with pytest.raises(ValueError, match=r"`num_events` \(L\) must be >= 1"):
        DynFocusConfig(num_events=0)
    with pytest.raises(ValueError, match=r"`event_keep_ratio` \(K/L\) must be in \(0, 1\]"):
        DynFocusConfig(event_keep_ratio=1.5)
    with pytest.raises(ValueError, match="`num_pooled_tokens` must be a square"):
        DynFocusConfig(num_pooled_tokens=15)
    with pytest.raises(ValueError, match="`spatial_clusters` must decrease"):
        DynFocusConfig(spatial_clusters=[6, 16])
    with pytest.raises(ValueError, match=r"`num_events` \(L\) must be >= 1"):  # overrides land after __post_init__
        load(checkpoint, num_events=0)
    model = load(checkpoint, max_frames=8)
    inputs, _ = inputs_for(model, tokenizers, 3)
    no_rods = load(checkpoint, max_frames=8, key_frame_rods=False)
    other, _ = inputs_for(no_rods, tokenizers, 3)  # a processor made for another config
    tokens, fewer = model.config.num_video_tokens(3), no_rods.config.num_video_tokens(3)
    assert (other["input_ids"] == tokenizers[0].video_token_id).sum(1).tolist() == [fewer, fewer] != [tokens] * 2
    with pytest.raises(ValueError, match=rf"exactly {tokens} `<video>` tokens .* got \[{fewer}, {fewer}\]"):
        model(**other)
    with pytest.raises(ValueError, match="T >= 1 frames"):
        model.get_video_features(inputs["pixel_values"][:, :0], inputs["qformer_input_ids"])
    with pytest.raises(ValueError, match="at most `max_frames` = 8"):
        model.get_video_features(torch.randn(1, 9, 3, 32, 32), inputs["qformer_input_ids"][:1])
    with pytest.raises(ValueError, match="pass `qformer_input_ids`"):
        model.get_video_features(inputs["pixel_values"])
    processor = DynFocusProcessor.from_model(model, *tokenizers)
    with pytest.raises(ValueError, match="same frame count"):
        processor(["<video> a", "<video> b"], videos=[clips(2)[0], clips(3)[0]])
    with pytest.raises(ValueError, match="exactly one"):
        processor(["a"], videos=[clips(2)[0]])
    with pytest.raises(ValueError, match="one question per text .* got 2 texts and 1 questions"):
        processor(["<video> a", "<video> b"], videos=clips(2), questions=["a"])
    with pytest.raises(ValueError, match=r"one instruction per video: 2 videos, got shape \(1, "):
        model.get_video_features(inputs["pixel_values"], inputs["qformer_input_ids"][:1])


def test_frame_arrays_beyond_max_frames_are_sampled_uniformly(checkpoint, tokenizers):
    model = load(checkpoint, max_frames=4)
    processor = DynFocusProcessor.from_model(model, *tokenizers)
    video = np.stack([np.full((32, 32, 3), 10 * i, dtype=np.uint8) for i in range(10)])  # frame i is grey 10*i
    capped = processor(["<video> a"], videos=[video])
    expected = processor(["<video> a"], videos=[video[[0, 2, 5, 7]]])  # i * 10 // 4
    assert torch.equal(capped["pixel_values"], expected["pixel_values"]) and capped["pixel_values"].shape[1] == 4


def test_interpolate_pos_encoding_reaches_the_vision_tower(checkpoint, tokenizers):
    model = load(checkpoint)
    inputs, _ = inputs_for(model, tokenizers, 2)
    large = torch.nn.functional.interpolate(inputs["pixel_values"].flatten(0, 1), size=48).unflatten(0, (B, 2))
    with pytest.raises(RuntimeError, match="size of tensor a"):  # transformers' error without interpolation
        model.get_video_features(large, inputs["qformer_input_ids"])
    with torch.no_grad():
        out = model.get_video_features(large, inputs["qformer_input_ids"], interpolate_pos_encoding=True)
        logits = model(**{**inputs, "pixel_values": large}, interpolate_pos_encoding=True).logits
    assert out.pooler_output.shape[:2] == (B, model.config.num_video_tokens(2)) and torch.isfinite(logits).all()


def test_processor_sampler_option_avs_and_timestamps(checkpoint, tokenizers, tmp_path):
    from videoadapt.processors.adaptive_sampling import AdaptiveSampler
    from videoadapt.processors.sampling import FpsSampler
    from videoadapt.processors.synthetic import SyntheticVideoSpec, write_synthetic_video
    from videoadapt.processors.video_io import probe_video

    path = tmp_path / "clip.mp4"
    write_synthetic_video(path, SyntheticVideoSpec(num_frames=50, width=64, height=48, fps=10.0))
    model = load(checkpoint, max_frames=8)
    default = DynFocusProcessor.from_model(model, *tokenizers)
    assert default.sampler == FpsSampler(1.0, 8)  # unchanged: 1 fps, at most `max_frames`
    assert default("<video> a", videos=str(path), return_timestamps=True)["video_timestamps"] == [[0, 1, 2, 3, 4]]
    avs = DynFocusProcessor.from_model(model, *tokenizers, sampler="avs")
    assert avs.sampler == AdaptiveSampler(8)  # min(32, max_frames)
    inputs = avs("<video> a", videos=str(path), return_timestamps=True)
    plan = AdaptiveSampler(8).plan(probe_video(path))
    assert inputs["video_timestamps"] == [plan.timestamps.tolist()] and inputs["pixel_values"].shape[1] == 8
    assert (inputs["input_ids"] == tokenizers[0].video_token_id).sum() == avs.video_token_count(8)
    avs.save_pretrained(tmp_path / "saved")
    assert DynFocusProcessor.from_pretrained(tmp_path / "saved").sampler == AdaptiveSampler(8)
    with pytest.raises(ValueError, match="`sampler` takes 9 frames but `max_frames` is 8"):
        DynFocusProcessor.from_model(model, *tokenizers, sampler={"type": "avs", "budget": 9})


def test_event_scorer_official_predictor_lg_option():
    from videoadapt.modeling_dynfocus import DynFocusEventScorer

    def count(module):
        return sum(p.numel() for p in module.parameters())

    # C = 1408 (EVA ViT-g), d = 2C: the appendix's MLP, and PredictorLG, whose count matches Table 3's 12.91 M
    assert count(DynFocusEventScorer(1408)) == 4_958_977
    assert count(DynFocusEventScorer(1408, input_block=True)) == 12_897_281
    torch.manual_seed(0)
    scorer = DynFocusEventScorer(8, input_block=True)
    events = torch.randn(2, 5, 3, 8)  # [B, L, P, C]
    expected = torch.empty(2, 5)
    for b in range(2):  # literal: per event, local half of the input block || the video's mean of the other half
        hidden = [scorer.in_conv(torch.cat([events[b, e].amax(0), events[b, e].mean(0)])) for e in range(5)]
        glob = torch.stack([h[8:] for h in hidden]).mean(0)
        raw = torch.stack([scorer.mlp(torch.cat([h[:8], glob]))[0] for h in hidden])
        expected[b] = (raw - raw.min()) / (raw.max() - raw.min() + 1e-5)
    torch.testing.assert_close(scorer(events), expected)
    with pytest.raises(StrictDataclassFieldValidationError, match="expected one of \\('mlp', 'predictor_lg'\\)"):
        DynFocusConfig(event_scorer="transformer")  # @strict's error, as every Literal field of a transformers config


def test_predictor_lg_scorer_loads_trains_and_round_trips(checkpoint, tokenizers, tmp_path):
    model = load(checkpoint, event_scorer="predictor_lg")
    assert model.event_scorer.in_conv is not None
    inputs, _ = inputs_for(model, tokenizers, 5)
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.event_scorer.in_conv.parameters())
    model.eval().save_pretrained(tmp_path)
    loaded = DynFocusForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.event_scorer == "predictor_lg"
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
