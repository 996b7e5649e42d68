"""REEF on the tiny InstructBLIP-Video checkpoint: weights, MA-LMM equivalence, memory banks, STF, gradients, errors."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageTextToText, AutoTokenizer, InstructBlipVideoForConditionalGeneration

from videoadapt.configuration.configuration_reef import ReefConfig
from videoadapt.modeling_reef import QueryMemory, ReefForConditionalGeneration, ReefQFormerSelfAttention
from videoadapt.processors.processing_reef import ReefProcessor


B, T, Q = 2, 6, 4  # tiny checkpoint: 4 query tokens, 16 patches of width 32 per frame
NEW_MODULES = ("frame_position_embedding.", "spatial_filter.", "temporal_compression.")


def load(checkpoint, **overrides) -> ReefForConditionalGeneration:
    torch.manual_seed(0)
    model = ReefForConditionalGeneration.from_pretrained(checkpoint, **overrides)
    with torch.no_grad():  # a non-zero temporal embedding, so that it matters in the comparisons
        model.frame_position_embedding.weight.normal_(0, 0.5)
    return model.eval()


def video_inputs(checkpoint, frames=T, batch=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    qformer = AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer")
    text = qformer(["what color is the circle?", "is it red?"][:batch], padding=True, return_tensors="pt")
    return {
        "pixel_values": torch.randn(batch, frames, 3, 32, 32, generator=g),
        "qformer_input_ids": text.input_ids,
        "qformer_attention_mask": text.attention_mask,
    }


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints["instructblip_video"]


# --------------------------------------------------------------------------------------------- references


def ma_lmm_compress_reference(bank: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MA-LMM's memory_bank_compress, literally: per sample and token position, merge the most similar adjacent
    pair (t*, t*+1) into t* by a size-weighted average."""
    batch, frames, tokens, _ = bank.shape
    out = torch.empty(batch, frames - 1, *bank.shape[2:], dtype=bank.dtype)
    out_sizes = torch.empty(batch, frames - 1, tokens, dtype=sizes.dtype)
    for b in range(batch):
        for n in range(tokens):
            sims = [
                nn.functional.cosine_similarity(bank[b, t, n], bank[b, t + 1, n], dim=-1) for t in range(frames - 1)
            ]
            best = max(range(frames - 1), key=lambda t: (sims[t].item(), -t))  # first maximum
            column = [bank[b, t, n] for t in range(frames)]
            column_sizes = [sizes[b, t, n] for t in range(frames)]
            a, c = column_sizes[best], column_sizes[best + 1]
            merged = (a * column[best] + c * column[best + 1]) / (a + c)
            column = column[:best] + [merged] + column[best + 2 :]
            column_sizes = column_sizes[:best] + [a + c] + column_sizes[best + 2 :]
            for t in range(frames - 1):
                out[b, t, n], out_sizes[b, t, n] = column[t], column_sizes[t]
    return out, out_sizes


def ma_lmm_video_features(model, inputs) -> torch.Tensor:
    """MA-LMM's online loop with a visual memory bank only, written from the notes: the queries cross-attend to the
    bank plus the current frame's 257 tokens; the frame joins the bank, which is compressed beyond its length."""
    pixels = inputs["pixel_values"]
    batch, frames = pixels.shape[:2]
    queries = model.query_tokens.expand(batch, -1, -1)
    mask = torch.cat([torch.ones(batch, queries.shape[1], dtype=torch.long), inputs["qformer_attention_mask"]], 1)
    bank = sizes = None
    for t in range(frames):
        frame = (
            model.vision_model(pixel_values=pixels[:, t]).last_hidden_state + model.frame_position_embedding.weight[t]
        )
        memory = frame[:, None] if bank is None else torch.cat([bank, frame[:, None]], 1)
        memory_sizes = (
            torch.ones(batch, 1, frame.shape[1])
            if sizes is None
            else torch.cat([sizes, torch.ones(batch, 1, frame.shape[1])], 1)
        )
        flat = memory.flatten(1, 2)
        out = model.qformer(
            input_ids=inputs["qformer_input_ids"], attention_mask=mask, query_embeds=queries,
            encoder_hidden_states=flat, encoder_attention_mask=torch.ones(flat.shape[:2]),
        )  # fmt: skip
        bank, sizes = memory, memory_sizes
        if bank.shape[1] > model.config.memory_bank_length:
            bank, sizes = ma_lmm_compress_reference(bank, sizes)
    return model.language_projection(out.last_hidden_state[:, : queries.shape[1]])


# --------------------------------------------------------------------------------------------- tests


def test_loads_an_instructblip_video_checkpoint_with_only_reef_modules_missing(checkpoint):
    model, info = ReefForConditionalGeneration.from_pretrained(
        checkpoint, num_selected_tokens=8, output_loading_info=True
    )
    assert info["missing_keys"] and all(k.startswith(NEW_MODULES) for k in info["missing_keys"])
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    base = InstructBlipVideoForConditionalGeneration.from_pretrained(checkpoint)
    reef_state = model.state_dict()
    for name, tensor in base.state_dict().items():  # every base weight arrives unchanged, under the same name
        assert torch.equal(reef_state[name], tensor), name
    assert torch.count_nonzero(model.frame_position_embedding.weight) == 0  # MA-LMM's image_pe starts at zero
    assert model.config.model_type == "videoadapt_reef" and model.config.num_selected_tokens == 8


def test_alpha_one_without_filtering_reproduces_ma_lmm_exactly(checkpoint):
    model = load(checkpoint, num_selected_tokens=None, alpha=1.0, memory_bank_length=2, query_memory_bank=False)
    assert model.config.resolved_merge_granularity == "position"
    inputs = video_inputs(checkpoint, frames=T)
    with torch.no_grad():
        ours = model.get_video_features(**inputs)
        reference = ma_lmm_video_features(model, inputs)
    assert torch.equal(ours.pooler_output, reference)
    merged = ours.merged_slots  # [B, T, 257]: a merge per position at every step where the bank overflowed
    assert merged.shape == (B, T, 17)
    assert (merged[:, :2] == -1).all() and (merged[:, 2:-1] >= 0).all() and (merged[:, -1] == -1).all()


def test_query_memory_attention_matches_a_literal_reference(checkpoint):
    model = load(checkpoint, num_selected_tokens=8)
    attention = model.qformer.encoder.layer[0].attention.attention
    assert isinstance(attention, ReefQFormerSelfAttention)
    g = torch.Generator().manual_seed(1)
    padding = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)  # [B, S]
    memory = QueryMemory(length=3, key_padding=padding, detach=True)
    past = torch.randn(B, 2, 7, 32, generator=g)
    for t in range(2):
        step = memory.step()
        step.record(0, past[:, t])
        memory.commit(step)
    hidden = torch.randn(B, 7, 32, generator=g)
    with torch.no_grad():
        step = memory.step()
        got, _ = attention(hidden, reef_query_memory=step)
        # reference: keys and values over [past frame 0, past frame 1, current], the padding tiled three times
        heads, d = 4, 8
        kv = torch.cat([past[:, 0], past[:, 1], hidden], 1)
        q = attention.query(hidden).view(B, 7, heads, d).transpose(1, 2)
        k = attention.key(kv).view(B, 21, heads, d).transpose(1, 2)
        v = attention.value(kv).view(B, 21, heads, d).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / d**0.5
        scores = scores.masked_fill(~torch.cat([padding] * 3, 1)[:, None, None], float("-inf"))
        expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, 7, 32)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(step.records[0], hidden)  # the step's input is recorded for the bank


def test_query_memory_bank_is_bounded_and_merges_like_ma_lmm():
    g = torch.Generator().manual_seed(2)
    memory = QueryMemory(length=3, key_padding=torch.ones(1, 5, dtype=torch.bool), detach=True)
    states, sizes = None, None
    for _ in range(7):
        step = torch.randn(1, 5, 8, generator=g)
        snapshot = memory.step()
        snapshot.record(0, step)
        memory.commit(snapshot)
        states = step[:, None] if states is None else torch.cat([states, step[:, None]], 1)
        sizes = torch.ones(1, 1, 5) if sizes is None else torch.cat([sizes, torch.ones(1, 1, 5)], 1)
        if states.shape[1] > 3:
            states, sizes = ma_lmm_compress_reference(states, sizes)
        assert torch.equal(memory.banks[0].features, states) and torch.equal(memory.banks[0].sizes, sizes)
    assert len(memory.banks[0]) == 3 and memory.banks[0].sizes.sum() == 7 * 5


def test_query_memory_changes_the_output_and_past_frames_matter(checkpoint):
    model = load(checkpoint, num_selected_tokens=8, memory_bank_length=2)
    inputs = video_inputs(checkpoint)
    with torch.no_grad():
        out = model.get_video_features(**inputs).pooler_output
        changed = dict(inputs, pixel_values=inputs["pixel_values"].clone())
        changed["pixel_values"][:, 0] += 1.0  # only the first frame differs
        assert not torch.allclose(model.get_video_features(**changed).pooler_output, out)
        model.config.query_memory_bank = False
        assert not torch.allclose(model.get_video_features(**inputs).pooler_output, out)
    assert out.shape == (B, Q, 64)


def test_spatial_filter_keeps_the_hard_top_k_at_inference(checkpoint):
    model = load(checkpoint, num_selected_tokens=5)
    inputs = video_inputs(checkpoint)
    seen = []
    model.qformer.register_forward_hook(
        lambda m, a, kw, out: seen.append(kw["encoder_hidden_states"].shape[1]), with_kwargs=True
    )
    with torch.no_grad():
        out = model.get_video_features(**inputs)
    relevance, selected = out.spatial_relevance, out.selected_indices
    assert relevance.shape == (B, T, 16) and selected.shape == (B, T, 5)
    assert relevance.min() >= 0 and relevance.max() <= 1
    expected = relevance.topk(5, dim=-1).indices.sort(-1).values
    assert torch.equal(selected, expected)
    bank = model.config.memory_bank_length
    assert seen == [(min(t, bank) + 1) * 6 for t in range(T)]  # 5 kept + CLS per slot, bank bounded


def test_memory_stays_bounded_over_a_long_video(checkpoint):
    model = load(checkpoint, num_selected_tokens=4, memory_bank_length=3, max_num_frames=64)
    inputs = video_inputs(checkpoint, frames=60, batch=1)
    widths = []
    model.qformer.register_forward_hook(
        lambda m, a, kw, out: widths.append(kw["encoder_hidden_states"].shape[1]), with_kwargs=True
    )
    with torch.no_grad():
        out = model.get_video_features(**inputs)
    assert len(widths) == 60 and max(widths) == 4 * 5  # never more than bank + current slots
    assert out.pooler_output.shape == (1, Q, 64) and out.merged_slots.shape == (1, 60)
    assert (out.merged_slots[0, 3:-1] >= 0).all()


def test_training_gradients_reach_the_scorers_and_only_trainable_parameters(checkpoint):
    model = load(checkpoint, num_selected_tokens=6, memory_bank_length=2, alpha=0.5, topk_num_samples=20)
    for module in (model.vision_model, model.language_model):
        module.requires_grad_(False)
    model.train()
    inputs = video_inputs(checkpoint)
    ids = torch.tensor([[5] * 0 + [model.config.video_token_index] * Q + [10, 11, 12]] * B)
    loss = model(**inputs, input_ids=ids, labels=ids).loss
    loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("vision_model.", "language_model.")):
            assert parameter.grad is None, name
        elif name.endswith("scorer.score.bias"):  # min-max normalised scores do not depend on a shift
            continue
        elif name.startswith(("spatial_filter.scorer.", "temporal_compression.scorer.", "frame_position_embedding")):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_generate_with_beam_search_and_save_load_round_trip(checkpoint, tmp_path):
    model = load(checkpoint, num_selected_tokens=8, memory_bank_length=2)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    processor = ReefProcessor.from_model(
        model, tokenizer, AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer"), num_frames=3
    )
    frames = [torch.randint(0, 255, (3, 32, 32, 3), dtype=torch.uint8).numpy() for _ in range(2)]
    inputs = processor(["what color is it?", "is it red?"], videos=frames)
    assert (inputs["input_ids"] == tokenizer.video_token_id).sum(1).tolist() == [Q, Q]
    assert processor.video_token_count(1000) == Q
    generated = model.generate(**inputs, num_beams=5, max_new_tokens=4, do_sample=False)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is ReefForConditionalGeneration
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    assert torch.equal(loaded.generate(**inputs, num_beams=5, max_new_tokens=4, do_sample=False), generated)

    video_id = tokenizer.video_token_id
    short = {**inputs, "input_ids": inputs["input_ids"][:, 1:], "attention_mask": inputs["attention_mask"][:, 1:]}
    assert (short["input_ids"] == video_id).sum(1).tolist() == [Q - 1, Q - 1]
    with pytest.raises(ValueError, match=rf"exactly {Q} `<video>` tokens .* got \[{Q - 1}, {Q - 1}\] in 2 prompts"):
        model(**short)
    with pytest.raises(ValueError, match=rf"exactly {Q} `<video>` tokens"):
        model.generate(**short, max_new_tokens=2)
    one_prompt = {**inputs, "input_ids": inputs["input_ids"][:1], "attention_mask": inputs["attention_mask"][:1]}
    with pytest.raises(ValueError, match="for 2 videos; got .* in 1 prompts"):
        model(**one_prompt)


def test_bad_inputs_raise_clear_errors(checkpoint):
    with pytest.raises(ValueError, match=r"`num_selected_tokens` must be in \[1, 16\]"):
        ReefForConditionalGeneration.from_pretrained(checkpoint, num_selected_tokens=17)
    with pytest.raises(ValueError, match="`topk_sigma` must be > 0"):
        ReefConfig(topk_sigma=0.0)
    with pytest.raises(ValueError, match="`alpha` must be in"):
        ReefConfig(alpha=-0.1)
    with pytest.raises(ValueError, match="must equal `vision_config.hidden_size`"):
        ReefConfig(vision_config={"hidden_size": 64}, qformer_config={"encoder_hidden_size": 32})
    with pytest.raises(ValueError, match="`memory_bank_length` must be >= 1"):
        ReefConfig(memory_bank_length=0)
    for override, message in (
        ({"topk_sigma": 0.0}, "`topk_sigma` must be > 0"),  # overrides land after `__post_init__`
        ({"alpha": 1.5}, "`alpha` must be in"),
        ({"memory_bank_length": 0}, "`memory_bank_length` must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            ReefForConditionalGeneration.from_pretrained(checkpoint, **override)
    model = load(checkpoint, num_selected_tokens=4, num_frames=6, max_num_frames=8)
    inputs = video_inputs(checkpoint)
    with pytest.raises(ValueError, match="between 1 and `max_num_frames` = 8 frames"):
        model.get_video_features(**dict(inputs, pixel_values=inputs["pixel_values"][:, :0]))
    with pytest.raises(ValueError, match="between 1 and `max_num_frames` = 8 frames"):
        model.get_video_features(**dict(inputs, pixel_values=torch.randn(B, 9, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"must be \[B, T, 3, H, W\]"):
        model.get_video_features(**dict(inputs, pixel_values=inputs["pixel_values"][:, 0]))
    with pytest.raises(ValueError, match=r"one instruction per video: 2 videos, got shape \(1, "):
        model.get_video_features(**dict(inputs, qformer_input_ids=inputs["qformer_input_ids"][:1]))
