"""Memory banks and merges (layers/memory_bank.py, layers/memory_merge.py): MA-LMM's compression and REEF's relevance-aware compression against literal loops, the online
containers' invariants (length, sizes, detached storage, preserved means, contiguous spans), and errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from videoadapt.layers.memory_bank import MemoryBank, QueryMemoryBank, VisualMemoryBank
from videoadapt.layers.memory_merge import (
    expected_merge,
    ma_lmm_compress,
    merge_adjacent,
    merge_bank,
    relevance_compress,
)


# ---------------------------------------------------------------------------------------------------------------------
# literal references


def _first_argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # first maximum on ties, like torch.argmax


def _merge_list(items: list[torch.Tensor], weights: list[torch.Tensor], t: int):
    """Merge item t+1 into item t by weighted average; the rest keeps its order."""
    merged = (items[t] * weights[t] + items[t + 1] * weights[t + 1]) / (weights[t] + weights[t + 1])
    return items[:t] + [merged] + items[t + 2 :], weights[:t] + [weights[t] + weights[t + 1]] + weights[t + 2 :]


def _reference_position(bank, sizes, relevance=None, alpha=1.0):
    """MA-LMM (alpha 1) / REEF per position: loops over batch and positions, cosine per position, argmax over t."""
    B, T, N, C = bank.shape
    out_bank, out_sizes = torch.empty(B, T - 1, N, C, dtype=bank.dtype), torch.empty(B, T - 1, N)
    out_rel = torch.empty(B, T - 1, N)
    for b in range(B):
        for n in range(N):
            scores = []
            for t in range(T - 1):
                cos = F.cosine_similarity(bank[b, t, n], bank[b, t + 1, n], dim=0).item()
                if relevance is None:
                    scores.append(cos)
                else:
                    irr = ((1 - relevance[b, t, n].item()) + (1 - relevance[b, t + 1, n].item())) / 2
                    scores.append(alpha * cos + (1 - alpha) * irr)
            t_star = _first_argmax(scores)
            rows, weights = _merge_list([bank[b, t, n] for t in range(T)], [sizes[b, t, n] for t in range(T)], t_star)
            out_bank[b, :, n], out_sizes[b, :, n] = torch.stack(rows), torch.stack(weights)
            if relevance is not None:
                rels, _ = _merge_list(
                    [relevance[b, t, n] for t in range(T)], [sizes[b, t, n] for t in range(T)], t_star
                )
                out_rel[b, :, n] = torch.stack(rels)
    return out_bank, out_sizes, out_rel


def _reference_frame(bank, sizes, relevance, alpha):
    """REEF per frame: one pair per sample from the flattened cosine and the per-frame relevance."""
    B, T, N, C = bank.shape
    out_bank, out_sizes = torch.empty(B, T - 1, N, C, dtype=bank.dtype), torch.empty(B, T - 1, N)
    out_rel = torch.empty(B, T - 1, *relevance.shape[2:])
    for b in range(B):
        frame_rel = [relevance[b, t].mean().item() for t in range(T)]
        scores = []
        for t in range(T - 1):
            cos = F.cosine_similarity(bank[b, t].flatten(), bank[b, t + 1].flatten(), dim=0).item()
            scores.append(alpha * cos + (1 - alpha) * ((1 - frame_rel[t]) + (1 - frame_rel[t + 1])) / 2)
        t_star = _first_argmax(scores)
        for n in range(N):
            rows, weights = _merge_list([bank[b, t, n] for t in range(T)], [sizes[b, t, n] for t in range(T)], t_star)
            out_bank[b, :, n], out_sizes[b, :, n] = torch.stack(rows), torch.stack(weights)
            if relevance.dim() == 3:
                rels, _ = _merge_list(
                    [relevance[b, t, n] for t in range(T)], [sizes[b, t, n] for t in range(T)], t_star
                )
                out_rel[b, :, n] = torch.stack(rels)
        if relevance.dim() == 2:
            rels, _ = _merge_list([relevance[b, t] for t in range(T)], [sizes[b, t].sum() for t in range(T)], t_star)
            out_rel[b] = torch.stack(rels)
    return out_bank, out_sizes, out_rel


def _random_bank(seed: int, uniform_sizes: bool, B=3, T=5, N=7, C=4):
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(B, T, N, C, generator=gen)
    sizes = torch.ones(B, T, N) if uniform_sizes else torch.randint(1, 6, (B, T, N), generator=gen).float()
    return bank, sizes, torch.rand(B, T, N, generator=gen)


def _assert_equal(*pairs):
    for got, want in pairs:
        assert got.shape == want.shape and torch.equal(got, want)


# ---------------------------------------------------------------------------------------------------------------------
# functional


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("uniform_sizes", [True, False])
def test_ma_lmm_compress_equals_literal_reference(seed, uniform_sizes):
    bank, sizes, _ = _random_bank(seed, uniform_sizes)
    got_bank, got_sizes = ma_lmm_compress(bank, sizes)
    ref_bank, ref_sizes, _ = _reference_position(bank, sizes)
    _assert_equal((got_bank, ref_bank), (got_sizes, ref_sizes))
    assert torch.equal(got_sizes.sum(1), sizes.sum(1))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("uniform_sizes", [True, False])
def test_alpha_one_position_is_ma_lmm_bit_for_bit(seed, uniform_sizes):
    bank, sizes, relevance = _random_bank(seed, uniform_sizes)
    got_bank, got_sizes, got_rel = relevance_compress(bank, sizes, relevance, alpha=1.0, mode="position")
    ma_bank, ma_sizes = ma_lmm_compress(bank, sizes)
    _assert_equal((got_bank, ma_bank), (got_sizes, ma_sizes))
    _assert_equal((got_rel, _reference_position(bank, sizes, relevance, alpha=1.0)[2]))


@pytest.mark.parametrize("uniform_sizes", [True, False])
def test_position_mode_equals_literal_reference(uniform_sizes):
    bank, sizes, relevance = _random_bank(3, uniform_sizes)
    got = relevance_compress(bank, sizes, relevance, alpha=0.7, mode="position")
    ref = _reference_position(bank, sizes, relevance, alpha=0.7)
    _assert_equal(*zip(got, ref))
    # relevance changed some choices at alpha 0.7 (otherwise this test would not exercise the relevance term)
    assert not torch.equal(got[0], ma_lmm_compress(bank, sizes)[0])


@pytest.mark.parametrize("alpha", [0.7, 0.2])
@pytest.mark.parametrize("per_token_relevance", [False, True])
@pytest.mark.parametrize("uniform_sizes", [True, False])
def test_frame_mode_equals_literal_reference(alpha, per_token_relevance, uniform_sizes):
    bank, sizes, relevance = _random_bank(4, uniform_sizes, B=8)
    if not per_token_relevance:
        relevance = relevance[..., 0]  # [B, T]
    got = relevance_compress(bank, sizes, relevance, alpha=alpha, mode="frame")
    ref = _reference_frame(bank, sizes, relevance, alpha=alpha)
    _assert_equal(*zip(got, ref))
    if alpha == 0.2:  # the relevance term decides some pairs here
        assert not torch.equal(got[1], relevance_compress(bank, sizes, relevance, alpha=1.0, mode="frame")[1])


def _frames_at_angles(*angles: float) -> torch.Tensor:
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])[None, :, None]  # [1, T, 1, 2]


@pytest.mark.parametrize("mode", ["position", "frame"])
def test_relevance_changes_the_chosen_pair(mode):
    """cos(f0, f1) = 0.9 > cos(f1, f2) = 0.8, but f2 is irrelevant: alpha 0.5 merges (1, 2), alpha 1 merges (0, 1)."""
    a1 = math.acos(0.9)
    bank = _frames_at_angles(0.0, a1, a1 + math.acos(0.8))
    sizes = torch.ones(1, 3, 1)
    relevance = torch.tensor([[1.0, 1.0, 0.0]])  # [B, T]
    # alpha 0.5: s_0 = 0.45 + 0 = 0.45, s_1 = 0.40 + 0.25 = 0.65
    new_bank, new_sizes, new_rel = relevance_compress(bank, sizes, relevance, alpha=0.5, mode=mode)
    _assert_equal((new_bank, torch.stack([bank[:, 0], (bank[:, 1] + bank[:, 2]) / 2], dim=1)))
    _assert_equal((new_sizes, torch.tensor([[[1.0], [2.0]]])))
    torch.testing.assert_close(new_rel.reshape(2), torch.tensor([1.0, 0.5]))
    plain_bank, plain_sizes, _ = relevance_compress(bank, sizes, relevance, alpha=1.0, mode=mode)
    _assert_equal((plain_sizes, torch.tensor([[[2.0], [1.0]]])))
    torch.testing.assert_close(plain_bank[0, 0, 0], (bank[0, 0, 0] + bank[0, 1, 0]) / 2)


@pytest.mark.parametrize("mode", ["position", "frame"])
def test_equal_relevance_is_the_cosine_rule(mode):
    bank, sizes, _ = _random_bank(5, uniform_sizes=False)
    cosine_rule = relevance_compress(bank, sizes, torch.rand(3, 5), alpha=1.0, mode=mode)
    for value in (0.0, 0.3, 1.0):
        equal = relevance_compress(bank, sizes, torch.full((3, 5, 7), value), alpha=0.6, mode=mode)
        _assert_equal((equal[0], cosine_rule[0]), (equal[1], cosine_rule[1]))


def test_frame_mode_merges_one_pair_for_every_token():
    """Token 0 prefers pair (0, 1), token 1 (weight 3) prefers pair (1, 2): frame mode merges (1, 2) for both."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    bank = torch.stack([torch.stack([e1, 3 * e1]), torch.stack([e1, 3 * e2]), torch.stack([e2, 3 * e2])])[None]
    sizes, relevance = torch.ones(1, 3, 2), torch.ones(1, 3)
    pos_bank, pos_sizes, _ = relevance_compress(bank, sizes, relevance, alpha=1.0, mode="position")
    _assert_equal((pos_sizes, torch.tensor([[[2.0, 1.0], [1.0, 2.0]]])))
    frame_bank, frame_sizes, _ = relevance_compress(bank, sizes, relevance, alpha=1.0, mode="frame")
    _assert_equal((frame_sizes, torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])))
    _assert_equal((frame_bank, torch.stack([bank[0, 0], torch.stack([(e1 + e2) / 2, 3 * e2])])[None]))


# ---------------------------------------------------------------------------------------------------------------------
# containers


def _replay_sizes(history: list, batch: int, tokens: int, mode: str) -> torch.Tensor:
    """Sizes rebuilt from the merge history alone (one append of size 1, then the recorded merge): [B, T, N]."""
    columns = [[[] for _ in range(tokens)] for _ in range(batch)]  # [B][N] -> list of slot sizes
    for index in history:
        for b in range(batch):
            for n in range(tokens):
                col = columns[b][n]
                col.append(1.0)
                if index is not None:
                    t = int(index[b] if mode == "frame" else index[b, n])
                    col[t : t + 2] = [col[t] + col[t + 1]]
    return torch.tensor(columns).permute(0, 2, 1)


@pytest.mark.parametrize(("mode", "alpha"), [("position", 1.0), ("position", 0.7), ("frame", 0.7), ("frame", 0.0)])
def test_bank_invariants_over_50_frames(mode, alpha):
    B, N, C, num_frames, max_length = 2, 3, 4, 50, 10
    gen = torch.Generator().manual_seed(6)
    frames = torch.randn(num_frames, B, N, C, dtype=torch.float64, generator=gen)
    relevance = torch.rand(num_frames, B, N, dtype=torch.float64, generator=gen)
    bank = MemoryBank(max_length, alpha=alpha, mode=mode)
    for t in range(num_frames):
        step = frames[t].clone().requires_grad_(True)
        bank.append(step * 1.0, relevance[t])
        assert len(bank) == min(t + 1, max_length)
    feats, sizes, rel = bank.features, bank.sizes, bank.relevance
    assert feats.shape == (B, max_length, N, C) and sizes.shape == (B, max_length, N)
    assert rel.shape == ((B, max_length) if mode == "frame" else (B, max_length, N))
    assert not feats.requires_grad and feats.grad_fn is None
    assert torch.equal(sizes.sum(1), torch.full((B, N), float(num_frames)))
    # the size-weighted mean of the bank is the mean of every appended frame
    torch.testing.assert_close((sizes[..., None] * feats).sum(1) / sizes.sum(1)[..., None], frames.mean(0))
    if mode == "frame":
        assert torch.equal(sizes, sizes[..., :1].expand_as(sizes))
    # every slot is the mean of a contiguous run of frames, and the runs tile the video in order
    frame_rel = relevance.mean(-1) if mode == "frame" else relevance
    for b in range(B):
        for n in range(N):
            ends = sizes[b, :, n].long().cumsum(0).tolist()
            for t, (start, end) in enumerate(zip([0, *ends[:-1]], ends)):
                torch.testing.assert_close(feats[b, t, n], frames[start:end, b, n].mean(0))
                want_rel = frame_rel[start:end, b].mean(0) if mode == "frame" else frame_rel[start:end, b, n].mean(0)
                got_rel = rel[b, t] if mode == "frame" else rel[b, t, n]
                torch.testing.assert_close(got_rel, want_rel)
    # the merge history: None while filling, then one index per step, which replays to the same sizes
    history = bank.merge_history
    assert len(history) == num_frames and all(h is None for h in history[:max_length])
    assert all(h.shape == ((B,) if mode == "frame" else (B, N)) for h in history[max_length:])
    assert torch.equal(_replay_sizes(history, B, N, mode), sizes)
    bank.reset()
    assert len(bank) == 0 and bank.features is None and bank.merge_history == []


def test_max_length_one_holds_the_running_mean():
    frames = torch.randn(6, 2, 3, 4, dtype=torch.float64)
    bank = VisualMemoryBank(1)
    for t in range(6):
        bank.append(frames[t], torch.rand(2, 3))
        torch.testing.assert_close(bank.features[:, 0], frames[: t + 1].mean(0))
    assert torch.equal(bank.sizes, torch.full((2, 1, 3), 6.0))


def test_query_bank_default_is_ma_lmm_step_by_step():
    gen = torch.Generator().manual_seed(7)
    states = torch.randn(9, 2, 5, 8, generator=gen)
    bank = QueryMemoryBank(4)
    ref_bank, ref_sizes = None, None
    for t in range(9):
        bank.append(states[t])
        step, ones = states[t][:, None], torch.ones(2, 1, 5)
        ref_bank = step if ref_bank is None else torch.cat([ref_bank, step], 1)
        ref_sizes = ones if ref_sizes is None else torch.cat([ref_sizes, ones], 1)
        if ref_bank.shape[1] > 4:
            ref_bank, ref_sizes = ma_lmm_compress(ref_bank, ref_sizes)
        _assert_equal((bank.features, ref_bank), (bank.sizes, ref_sizes))
    # relevance None with a relevance rule selects the same pairs as the cosine rule
    other = MemoryBank(4, alpha=0.3, mode="position")
    for t in range(9):
        other.append(states[t])
    _assert_equal((other.features, bank.features))


def test_query_bank_keys_values_source_and_mask_tiling():
    bank = QueryMemoryBank(3)
    mask = torch.tensor([0.0, 0.0, -1e4])[None, None, None].expand(2, 1, 1, 3)  # additive [B, 1, 1, N]
    assert bank.keys_values_source() is None and torch.equal(bank.tile_attention_mask(mask), mask)
    states = torch.randn(5, 2, 3, 6)
    for t in range(5):
        bank.append(states[t])
    source = bank.keys_values_source()
    assert source.shape == (2, 3 * 3, 6)
    for t in range(3):
        for n in range(3):
            assert torch.equal(source[:, t * 3 + n], bank.features[:, t, n])
    tiled = bank.tile_attention_mask(mask)
    assert tiled.shape == (2, 1, 1, 12) and all(torch.equal(tiled[..., 3 * i : 3 * i + 3], mask) for i in range(4))


def test_forced_merge_index():
    bank = QueryMemoryBank(2, mode="frame")
    for _ in range(3):
        bank.append(torch.randn(2, 4, 3), merge_index=torch.tensor([1, 0]))
    assert torch.equal(bank.sizes[..., 0], torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    assert torch.equal(bank.merge_history[-1], torch.tensor([1, 0]))


def test_rejected_append_leaves_the_bank_unchanged():
    bank = QueryMemoryBank(1)
    bank.append(torch.randn(2, 3, 4))
    before = bank.features.clone()
    for bad in ({"relevance": torch.rand(5)}, {"merge_index": torch.zeros(2).long()}):
        with pytest.raises(ValueError):
            bank.append(torch.randn(2, 3, 4), **bad)
        assert len(bank) == 1 and torch.equal(bank.features, before) and len(bank.merge_history) == 1


def test_visual_context_keeps_gradient_of_current_frame():
    bank = VisualMemoryBank(3)
    current = torch.randn(2, 4, 5, requires_grad=True)
    assert bank.context(current) is current
    for _ in range(2):
        bank.append(torch.randn(2, 4, 5), torch.rand(2))
    context = bank.context(current)
    assert context.shape == (2, 3 * 4, 5)
    assert torch.equal(context[:, :8], bank.features.flatten(1, 2)) and torch.equal(context[:, 8:], current)
    context.sum().backward()
    assert torch.equal(current.grad, torch.ones_like(current))


# ---------------------------------------------------------------------------------------------------------------------
# errors


def _full_bank(**kwargs) -> MemoryBank:
    bank = MemoryBank(1, **kwargs)
    bank.append(torch.randn(2, 3, 4))
    return bank


_BANK, _SIZES = torch.randn(2, 4, 3, 5), torch.ones(2, 4, 3)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ma_lmm_compress(_BANK[0], _SIZES[0]), r"`bank` must be \[B, T, N, C\]"),
        (lambda: ma_lmm_compress(_BANK, torch.ones(2, 4, 2)), r"`sizes` must be \[B, T, N\] = \[2, 4, 3\]"),
        (lambda: ma_lmm_compress(_BANK[:, :1], _SIZES[:, :1]), "T >= 2"),
        (lambda: relevance_compress(_BANK, _SIZES, torch.rand(2, 4), alpha=1.5), r"`alpha` must be in \[0, 1\]"),
        (lambda: relevance_compress(_BANK, _SIZES, torch.rand(2, 4), alpha=-0.1), "got -0.1"),
        (lambda: relevance_compress(_BANK, _SIZES, torch.rand(2, 4), 0.5, mode="token"), "`mode` must be one of"),
        (lambda: relevance_compress(_BANK, _SIZES, torch.rand(2, 3), alpha=0.5), r"`relevance` must be \[B, T, N\]"),
        (lambda: MemoryBank(0), "`max_length` must be an int >= 1"),
        (lambda: MemoryBank(-3), "got -3"),
        (lambda: MemoryBank(2.5), "got 2.5"),
        (lambda: MemoryBank(True), "got True"),
        (lambda: VisualMemoryBank(4, alpha=2.0), r"`alpha` must be in \[0, 1\]"),
        (lambda: QueryMemoryBank(4, mode="frames"), "`mode` must be one of"),
        (lambda: MemoryBank(3).append(torch.randn(2, 3)), r"`states` must be \[B, N, C\]"),
        (lambda: _full_bank().append(torch.randn(2, 4, 4)), r"= \[2, 3, 4\] like the states already in the bank"),
        (lambda: MemoryBank(3).append(torch.randn(2, 3, 4), torch.rand(3)), r"`relevance` must be \[B, N\]"),
        (lambda: _full_bank().append(torch.randn(2, 3, 4), merge_index=torch.tensor([0, 0])), "`merge_index` must"),
        (
            lambda: _full_bank(mode="frame").append(torch.randn(2, 3, 4), merge_index=torch.zeros(2, 3).long()),
            "'frame'",
        ),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------------------
# soft (expected) merges and banks that keep gradients


@pytest.mark.parametrize("shape", [(3, 5, 7, 4), (2, 2, 3, 1)])
def test_expected_merge_is_the_expectation_of_hard_merges(shape):
    B, T, N, C = shape
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(B, T, N, C, dtype=torch.float64, generator=gen)
    sizes = torch.randint(1, 5, (B, T, N), generator=gen).double()
    probabilities = torch.rand(B, T - 1, N, dtype=torch.float64, generator=gen).softmax(1).requires_grad_(True)
    got_x, got_w = expected_merge(x, sizes, probabilities)
    # literal: sum over pairs t of p_t * (hard merge of pair t)
    want_x, want_w = torch.zeros(B, T - 1, N, C, dtype=torch.float64), torch.zeros(B, T - 1, N, dtype=torch.float64)
    for t in range(T - 1):
        hard_x, hard_w = merge_adjacent(x, sizes, torch.full((B, N), t))
        want_x = want_x + probabilities[:, t, None, :, None] * hard_x
        want_w = want_w + probabilities[:, t, None] * hard_w
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_w, want_w)
    upstream = torch.randn_like(got_x)
    (grad,) = torch.autograd.grad((got_x * upstream).sum(), probabilities)
    (want_grad,) = torch.autograd.grad((want_x * upstream).sum(), probabilities)
    torch.testing.assert_close(grad, want_grad)


def test_expected_merge_with_one_hot_probabilities_equals_the_hard_merge_exactly():
    gen = torch.Generator().manual_seed(12)
    x, sizes = torch.randn(3, 6, 5, 4, generator=gen), torch.randint(1, 4, (3, 6, 5), generator=gen).float()
    index = torch.randint(0, 5, (3, 5), generator=gen)
    one_hot = torch.nn.functional.one_hot(index, 5).movedim(-1, 1).float()  # [B, T-1, N]
    soft, hard = expected_merge(x, sizes, one_hot), merge_adjacent(x, sizes, index)
    assert torch.equal(soft[0], hard[0]) and torch.equal(soft[1], hard[1])


@pytest.mark.parametrize("mode", ["frame", "position"])
def test_bank_compress_with_probabilities_and_kept_gradients(mode):
    B, N, C = 2, 3, 4
    gen = torch.Generator().manual_seed(13)
    bank = VisualMemoryBank(2, alpha=0.5, mode=mode, detach=False)
    frames = [torch.randn(B, N, C, generator=gen, requires_grad=True) for _ in range(3)]
    for frame in frames:
        bank.append(frame * 2.0, torch.rand(B, N, generator=gen), compress=False)
    assert len(bank) == 3 and bank.features.requires_grad and bank.merge_history == [None, None, None]
    shape = (B, 2) if mode == "frame" else (B, 2, N)
    probabilities = torch.rand(*shape, generator=gen).softmax(1).requires_grad_(True)
    before = (bank.features, bank.sizes, bank.relevance)
    bank.compress(probabilities=probabilities)
    expected = _expected_merge_reference(*before, probabilities, mode)
    for got, want in zip((bank.features, bank.sizes, bank.relevance), expected):
        torch.testing.assert_close(got, want)
    assert torch.equal(bank.merge_history[-1], probabilities.argmax(1))
    bank.features.sum().backward()
    assert all(f.grad is not None for f in frames) and probabilities.grad is not None
    with pytest.raises(ValueError, match="`probabilities` must be"):
        bank.append(torch.randn(B, N, C), compress=False)
        bank.compress(probabilities=torch.rand(B, 5))


def _expected_merge_reference(features, sizes, relevance, probabilities, mode):
    """sum_t p_t * (the hard merge of pair t) for features, sizes and relevance."""
    out = None
    for t in range(features.shape[1] - 1):
        index = torch.full(probabilities.shape[:1] + probabilities.shape[2:], t)
        hard = merge_bank(features, sizes, relevance, index)
        p = probabilities[:, t]
        weighted = [p.view(*p.shape, *([1] * (h.dim() - p.dim() - 1))).unsqueeze(1) * h for h in hard]
        out = weighted if out is None else [a + b for a, b in zip(out, weighted)]
    return out
