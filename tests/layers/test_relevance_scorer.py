"""REEF relevance scorer: literal per-token reference, masking, min-max normalisation, gradients, errors."""

import pytest
import torch
import torch.nn.functional as F

from videoadapt.layers.relevance_scorer import RelevanceScorer, min_max_normalize


EPS = 1e-5


def _reference_scores(scorer: RelevanceScorer, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Literal loop: token by token, layer 1 -> mean over valid tokens -> layer 2 -> min-max over valid tokens."""
    norm, fc1, _ = scorer.local
    B, N, _ = tokens.shape
    out = torch.zeros(B, N, dtype=tokens.dtype)
    for b in range(B):
        valid = [n for n in range(N) if mask[b, n]]
        if not valid:
            continue
        local = {n: F.gelu(fc1(norm(tokens[b, n]))) for n in valid}
        glob = sum(local[n] for n in valid) / len(valid)
        raw = {n: scorer.score(torch.cat([local[n], glob])).item() for n in valid}
        low, high = min(raw.values()), max(raw.values())
        for n in valid:
            out[b, n] = (raw[n] - low) / (high - low + EPS)
    return out


@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_literal_reference(with_mask):
    torch.manual_seed(0)
    scorer = RelevanceScorer(12, hidden=5)
    tokens = torch.randn(3, 9, 12)
    mask = torch.ones(3, 9, dtype=torch.bool)
    if with_mask:
        mask = torch.rand(3, 9) > 0.4
        mask[0, :] = True  # one full row
        mask[1, :] = False
        mask[1, 4] = True  # one row with a single valid token
    with torch.no_grad():
        got = scorer(tokens, mask if with_mask else None)
        ref = _reference_scores(scorer, tokens, mask)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert got.shape == (3, 9)


def test_scores_span_zero_to_one_and_invalid_tokens_are_zero():
    torch.manual_seed(1)
    scorer = RelevanceScorer(8)
    assert scorer.hidden == 4 and scorer.score.in_features == 8
    tokens = torch.randn(4, 16, 8)
    mask = torch.rand(4, 16) > 0.3
    mask[:, :2] = True
    with torch.no_grad():
        scores, raw = scorer(tokens, mask, return_raw=True)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    assert bool((scores[~mask] == 0).all()) and bool((raw[~mask] == 0).all())
    for b in range(4):
        valid_raw = raw[b][mask[b]]
        valid = scores[b][mask[b]]
        assert valid[valid_raw.argmin()] == 0
        span = valid_raw.max() - valid_raw.min()
        torch.testing.assert_close(valid.max(), span / (span + EPS))


def test_invalid_tokens_do_not_influence_valid_scores():
    torch.manual_seed(2)
    scorer = RelevanceScorer(6, hidden=3)
    tokens = torch.randn(2, 10, 6)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 7:] = False
    changed = tokens.clone()
    changed[:, 7:] = 100 * torch.randn(2, 3, 6)
    with torch.no_grad():
        a, b = scorer(tokens, mask), scorer(changed, mask)
        cut = scorer(tokens[:, :7])
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a[:, :7], cut)
    # without the mask the padding changes the global mean and the range
    with torch.no_grad():
        assert not torch.allclose(scorer(tokens)[:, :7], scorer(changed)[:, :7])


def test_global_mean_is_used():
    """Two sets that share token 0 but differ elsewhere give token 0 different raw scores (layer 2 sees the mean)."""
    torch.manual_seed(3)
    scorer = RelevanceScorer(4, hidden=4)
    tokens = torch.randn(2, 5, 4)
    tokens[1, 0] = tokens[0, 0]
    with torch.no_grad():
        _, raw = scorer(tokens, return_raw=True)
    assert not torch.allclose(raw[0, 0], raw[1, 0])


def test_min_max_normalize_reference_and_empty_rows():
    torch.manual_seed(4)
    scores = torch.randn(2, 3, 7)
    mask = torch.rand(2, 3, 7) > 0.5
    mask[0, 0] = False  # a row without any valid entry
    mask[1, 2] = True
    got = min_max_normalize(scores, mask)
    for i in range(2):
        for j in range(3):
            vals = [scores[i, j, k].item() for k in range(7) if mask[i, j, k]]
            for k in range(7):
                want = (scores[i, j, k].item() - min(vals)) / (max(vals) - min(vals) + EPS) if mask[i, j, k] else 0.0
                assert got[i, j, k].item() == pytest.approx(want, abs=1e-6)
    full = min_max_normalize(scores)
    torch.testing.assert_close(full, min_max_normalize(scores, torch.ones_like(mask)))
    torch.testing.assert_close(min_max_normalize(torch.full((1, 4), 3.0)), torch.zeros(1, 4))


def test_empty_row_has_finite_gradient():
    scores = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[False] * 5, [True, True, False, True, False]])
    out = min_max_normalize(scores, mask)
    assert bool((out[0] == 0).all())
    out.sum().backward()
    assert bool(torch.isfinite(scores.grad).all()) and bool((scores.grad[0] == 0).all())


def test_gradcheck():
    torch.manual_seed(5)
    scorer = RelevanceScorer(5, hidden=3).double()
    tokens = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    assert torch.autograd.gradcheck(lambda x: scorer(x, mask), (tokens,))
    scores = scorer(tokens.detach(), mask)
    scores.sum().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in scorer.parameters())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: RelevanceScorer(0), ValueError, "`dim` must be >= 1"),
        (lambda: RelevanceScorer(8, hidden=0), ValueError, "`hidden` must be >= 1"),
        (lambda: RelevanceScorer(8)(torch.randn(2, 3, 7)), ValueError, r"`tokens` must be \[B, N, D\] with D = 8"),
        (lambda: RelevanceScorer(8)(torch.randn(3, 8)), ValueError, "`tokens` must be"),
        (lambda: RelevanceScorer(8)(torch.randn(2, 3, 8), torch.ones(2, 3)), TypeError, "bool tensor"),
        (lambda: RelevanceScorer(8)(torch.randn(2, 3, 8), torch.ones(2, 4).bool()), ValueError, r"\[2, 3\]"),
        (lambda: min_max_normalize(torch.randn(2, 3), torch.ones(3).bool()), ValueError, "`mask` must have shape"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
