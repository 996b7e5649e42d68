"""DPC-KNN: batched version vs a literal per-sample reference, ties, blobs, masks, prototypes, gradients, errors."""

import math

import pytest
import torch

from videoadapt.layers.dpc_knn import dpc_knn
from videoadapt.layers.dpc_prototypes import (
    density_weights,
    merge_clusters,
    multi_level_prototypes,
    prototype_weights,
    uniform_weights,
)


# literal reference: one sample, Python loops over points, float64 arithmetic


def _dist(x, i, j, s):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j])) / s)


def ref_dpc(points, valid, L, k, s=None, include_self=True, order="score"):
    """points [M, D], valid list[bool] -> (centers, assign, rho, delta) as Python lists (-1 / 0 for padding)."""
    x = points.double().tolist()
    M, s = len(x), s or len(x[0])
    idx = [i for i in range(M) if valid[i]]
    rho, delta = [0.0] * M, [0.0] * M
    for i in idx:
        sq = sorted(_dist(x, i, j, s) ** 2 for j in idx if include_self or j != i)
        near = sq[:k]
        rho[i] = math.exp(-sum(near) / len(near)) if near else 1.0
    d_max = max(_dist(x, a, b, s) for a in idx for b in idx)
    for i in idx:
        denser = [j for j in idx if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        delta[i] = min(_dist(x, i, j, s) for j in denser) if denser else d_max
    score = [rho[i] * delta[i] for i in range(M)]
    centers = sorted(idx, key=lambda i: (-score[i], i))[:L]
    if order == "position":
        centers = sorted(centers)
    assign = [-1] * M
    for i in idx:
        near_c = min(range(len(centers)), key=lambda c: (_dist(x, i, centers[c], s), c))
        assign[i] = centers.index(i) if i in centers else near_c
    return centers + [-1] * (L - len(centers)), assign, rho, delta


def ref_merge(points, assign, L, weights):
    """Weighted average per cluster with explicit loops -> [L, D] tensor (zeros for empty clusters)."""
    out = torch.zeros(L, points.shape[-1], dtype=torch.float64)
    for c in range(L):
        members = [i for i, a in enumerate(assign) if a == c]
        if members:
            mass = sum(weights[i] for i in members)
            out[c] = sum(weights[i] * points[i].double() for i in members) / mass
    return out


def _random_batch(seed=0, B=4, M=37, D=8, counts=(37, 20, 5, 1)):
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn(B, M, D, generator=gen, dtype=torch.float64)
    mask = torch.zeros(B, M, dtype=torch.bool)
    for b, n in enumerate(counts):
        mask[b, torch.randperm(M, generator=gen)[:n]] = True  # valid points scattered, not a prefix
    return points, mask


def _check_against_reference(points, mask, L, k, **kwargs):
    out = dpc_knn(points, L, k, mask=mask, **kwargs)
    s, self_, order = kwargs.get("distance_normaliser"), kwargs.get("include_self", True), kwargs.get("center_order")
    for b in range(points.shape[0]):
        centers, assign, rho, delta = ref_dpc(points[b], mask[b].tolist(), L, k, s, self_, order or "score")
        assert out.centers[b].tolist() == centers
        assert out.assign[b].tolist() == assign
        assert int(out.num_clusters[b]) == min(L, int(mask[b].sum()))
        torch.testing.assert_close(out.rho[b], torch.tensor(rho, dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(out.delta[b], torch.tensor(delta, dtype=torch.float64), atol=1e-6, rtol=0)
    return out


# clustering


@pytest.mark.parametrize("L,k", [(1, 1), (3, 4), (6, 9), (10, 40), (40, 5)])
@pytest.mark.parametrize("center_order", ["score", "position"])
def test_matches_reference_with_masks(L, k, center_order):
    points, mask = _random_batch()
    out = _check_against_reference(points, mask, L, k, center_order=center_order)
    assert out.centers.shape == (4, L) and out.assign.shape == (4, 37) and out.score.shape == (4, 37)
    torch.testing.assert_close(out.score, out.rho * out.delta)
    assert not out.rho.requires_grad


@pytest.mark.parametrize("kwargs", [{"include_self": False}, {"distance_normaliser": 2.5}, {"exact_distances": False}])
def test_matches_reference_options(kwargs):
    points, mask = _random_batch(seed=1)
    _check_against_reference(points, mask, 5, 4, **kwargs)


def test_no_mask_equals_all_valid_and_float32_agrees():
    points, _ = _random_batch(seed=2)
    full = dpc_knn(points, 6, 5)
    masked = dpc_knn(points, 6, 5, mask=torch.ones(4, 37))
    for a, b in zip(full, masked):
        assert torch.equal(a, b)
    single = dpc_knn(points.float(), 6, 5)
    assert torch.equal(single.assign, full.assign) and torch.equal(single.centers, full.centers)
    assert single.rho.dtype == torch.float32


def test_padding_content_is_ignored():
    points, mask = _random_batch(seed=3)
    garbage = points.masked_fill(~mask[..., None], float("nan"))
    clean, dirty = dpc_knn(points, 5, 4, mask=mask), dpc_knn(garbage, 5, 4, mask=mask)
    for a, b in zip(clean, dirty):
        assert torch.equal(a, b)
    assert (dirty.assign[~mask] == -1).all() and (dirty.rho[~mask] == 0).all() and (dirty.score[~mask] == 0).all()
    assert merge_clusters(garbage, dirty.assign, 5)[0].isfinite().all()


def test_fewer_valid_points_than_clusters():
    points, mask = _random_batch(seed=4, counts=(37, 3, 1, 0))
    out = dpc_knn(points, 5, 3, mask=mask)
    assert out.num_clusters.tolist() == [5, 3, 1, 0]
    assert (out.centers[1, 3:] == -1).all() and (out.centers[3] == -1).all() and (out.assign[3] == -1).all()
    assert sorted(out.assign[1][mask[1]].tolist()) == [0, 1, 2]  # each valid point is its own centre


def test_ties_are_broken_by_index():
    same = torch.ones(2, 6, 3)
    out = dpc_knn(same, 3, 2)  # all densities, scores and distances tie
    assert out.centers.tolist() == [[0, 1, 2]] * 2
    assert out.assign.tolist() == [[0, 1, 2, 0, 0, 0]] * 2
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # four equally dense corners
    points = torch.cat([square, square, square[:2]])[None].double()  # duplicates: 0-4, 1-5-8, 2-6, 3-7
    for L, k in [(2, 3), (4, 2), (5, 4)]:
        out = _check_against_reference(points, torch.ones(1, 10, dtype=torch.bool), L, k)
        assert (dpc_knn(points.repeat(3, 1, 1), L, k).assign == out.assign).all()  # same answer in every row
    assert out.centers[0, :4].tolist() == [0, 1, 2, 3]  # lowest duplicate of each corner wins


def test_seeded_noise_is_reproducible_and_tiny():
    points, mask = _random_batch(seed=5)
    plain = dpc_knn(points, 4, 3, mask=mask)
    a = dpc_knn(points, 4, 3, mask=mask, generator=torch.Generator().manual_seed(7))
    b = dpc_knn(points, 4, 3, mask=mask, generator=torch.Generator().manual_seed(7))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    diff = (a.rho - plain.rho)[mask]
    assert (diff >= 0).all() and (diff <= 1e-6 + 1e-12).all() and (diff > 0).any()


def test_well_separated_blobs_are_recovered():
    gen = torch.Generator().manual_seed(6)
    sizes, means = [12, 10, 8, 7], 20 * torch.eye(4, 8)
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    perm = torch.randperm(37, generator=gen)
    points = (means[labels] + 0.1 * torch.randn(37, 8, generator=gen))[perm][None].repeat(2, 1, 1)
    labels = labels[perm]
    for out in (dpc_knn(points, 4, 5), dpc_knn(points, 4, 5, center_order="position")):
        assign = out.assign[0]
        for blob in range(4):  # one cluster per blob, exactly the blob's points
            ids = assign[labels == blob].unique()
            assert ids.numel() == 1 and int((assign == ids).sum()) == sizes[blob]
        assert torch.equal(out.assign[0], out.assign[1])
    assert out.centers[0].tolist() == sorted(out.centers[0].tolist())


def test_paper_frame_distance_via_normaliser():
    gen = torch.Generator().manual_seed(8)
    frames = torch.randn(1, 9, 4, 3, generator=gen, dtype=torch.float64)  # T = 9 frames of P = 4 tokens
    out = dpc_knn(frames.flatten(2), 3, 3, distance_normaliser=4)
    for t in range(9):  # rho_t = exp(-(1/C) sum over the C nearest t' of (1/P) ||f_t - f_t'||_F^2)
        sq = sorted(float(((frames[0, t] - frames[0, u]) ** 2).sum()) / 4 for u in range(9))
        assert math.isclose(float(out.rho[0, t]), math.exp(-sum(sq[:3]) / 3), rel_tol=1e-9)


def test_half_precision_clusters_in_float32():
    points, mask = _random_batch(seed=9)
    low = points.bfloat16()
    out = dpc_knn(low, 5, 4, mask=mask)
    ref = dpc_knn(low.float(), 5, 4, mask=mask)
    assert torch.equal(out.assign, ref.assign) and out.rho.dtype == torch.float32
    protos, _ = merge_clusters(low, out.assign, 5)
    assert protos.dtype == torch.bfloat16


# prototypes


@pytest.mark.parametrize("weighting", ["uniform", "exp_score"])
def test_prototypes_equal_reference_weighted_average(weighting):
    points, mask = _random_batch(seed=10)
    out = dpc_knn(points, 6, 4, mask=mask)
    weights = prototype_weights(out, weighting)
    protos, nonempty = merge_clusters(points, out.assign, 6, weights)
    assert protos.shape == (4, 6, 8) and nonempty.tolist() == (out.centers >= 0).tolist()
    for b in range(4):
        assign = out.assign[b].tolist()
        if weighting == "uniform":
            raw = [1.0] * 37
        else:
            raw = [math.exp(r * d) for r, d in zip(*ref_dpc(points[b], mask[b].tolist(), 6, 4)[2:])]
        torch.testing.assert_close(protos[b], ref_merge(points[b], assign, 6, raw), atol=1e-9, rtol=0)
    sums = torch.zeros(4, 7, dtype=weights.dtype).scatter_add_(1, out.assign + 1, weights)[:, 1:]
    torch.testing.assert_close(sums, nonempty.to(sums.dtype))  # weights sum to 1 in every cluster


def test_exp_weights_do_not_overflow():
    gen = torch.Generator().manual_seed(11)
    points = torch.cat([torch.zeros(1, 5, 4), 100 + torch.randn(1, 5, 4, generator=gen)], dim=1)  # delta ~ 200
    out = dpc_knn(points, 2, 3, distance_normaliser=1.0)
    assert not torch.exp(out.score).isfinite().all()  # the naive weights overflow in float32
    protos, _ = merge_clusters(points, out.assign, 2, density_weights(out.score, out.assign, 2))
    ref = dpc_knn(points.double(), 2, 3, distance_normaliser=1.0)
    expected, _ = merge_clusters(points.double(), ref.assign, 2, torch.exp(ref.score))
    assert protos.isfinite().all()
    torch.testing.assert_close(protos.double(), expected, atol=1e-4, rtol=1e-6)


def test_uniform_weights_and_empty_clusters():
    assign = torch.tensor([[0, 0, 2, -1, 2, 2]])
    torch.testing.assert_close(uniform_weights(assign, 3), torch.tensor([[0.5, 0.5, 1 / 3, 0.0, 1 / 3, 1 / 3]]))
    points = torch.arange(12.0).view(1, 6, 2)
    protos, nonempty = merge_clusters(points, assign, 3)
    assert nonempty.tolist() == [[True, False, True]]
    torch.testing.assert_close(protos, torch.tensor([[[1.0, 2.0], [0.0, 0.0], [22 / 3, 25 / 3]]]))


def test_gradients_reach_the_points():
    points, mask = _random_batch(seed=12)
    points.requires_grad_(True)
    out = dpc_knn(points, 5, 4, mask=mask)
    weights = prototype_weights(out, "exp_score")
    protos, _ = merge_clusters(points, out.assign, 5, weights)
    probe = torch.randn(4, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((protos * probe).sum(), points)
    expected = torch.zeros_like(points)
    for b in range(4):
        for i in range(37):
            if out.assign[b, i] >= 0:
                expected[b, i] = weights[b, i] * probe[b, out.assign[b, i]]
    torch.testing.assert_close(grad, expected)
    w = torch.rand(2, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assign = torch.tensor([[0, 1, 1, -1, 0, 2], [2, 2, 2, 2, 0, 0]])
    assert torch.autograd.gradcheck(lambda x, w: merge_clusters(x, assign, 4, w)[0], (x, w))


# multi-level spatial prototypes (S-DPC)


def _ref_multi_level(tokens, valid, weighting, order):
    c1, a1, rho1, delta1 = ref_dpc(tokens, valid, 16, 8)
    w1 = [math.exp(r * d) if weighting == "exp_score" else 1.0 for r, d in zip(rho1, delta1)]
    p1 = ref_merge(tokens, a1, 16, w1)
    c2, a2, rho2, delta2 = ref_dpc(p1, [c >= 0 for c in c1], 6, 3)
    w2 = [math.exp(r * d) if weighting == "exp_score" else 1.0 for r, d in zip(rho2, delta2)]
    p2 = ref_merge(p1, a2, 6, w2)
    n1, n2 = sum(c >= 0 for c in c1), sum(c >= 0 for c in c2)
    if order == "levels":
        rows = [p1[j] for j in range(n1)] + [p2[v] for v in range(n2)]
    else:
        rows = []
        for v in range(n2):
            rows += [p2[v]] + [p1[j] for j in range(n1) if a2[j] == v]
    return torch.stack(rows + [torch.zeros(tokens.shape[-1], dtype=torch.float64)] * (22 - len(rows)))


@pytest.mark.parametrize("weighting", ["uniform", "exp_score"])
@pytest.mark.parametrize("order", ["grouped", "levels"])
def test_multi_level_matches_reference(weighting, order):
    tokens, mask = _random_batch(seed=13, B=3, M=40, counts=(40, 10, 4))
    out = multi_level_prototypes(tokens, weighting=weighting, order=order, mask=mask)
    assert out.prototypes.shape == (3, 22, 8) and out.mask.sum(-1).tolist() == [22, 16, 8]
    for b in range(3):
        expected = _ref_multi_level(tokens[b], mask[b].tolist(), weighting, order)
        torch.testing.assert_close(out.prototypes[b], expected, atol=1e-9, rtol=0)
    assert out.mask.tolist() == (out.level >= 0).tolist() == (out.group >= 0).tolist()
    if order == "grouped":  # group ids ascend, each group starts with its level-1 (coarse) prototype
        first = torch.cat([torch.ones(3, 1, dtype=torch.bool), out.group[:, 1:] != out.group[:, :-1]], 1) & out.mask
        assert (out.level[first] == 1).all() and int((out.level == 1).sum()) == int(first.sum())


def test_multi_level_gradient_and_errors():
    tokens = torch.randn(2, 30, 8, requires_grad=True)
    out = multi_level_prototypes(tokens)
    out.prototypes.sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="`levels` and `ks`"):
        multi_level_prototypes(tokens, levels=(16, 6), ks=(8,))
    with pytest.raises(ValueError, match="`order`"):
        multi_level_prototypes(tokens, order="tree")
    with pytest.raises(ValueError, match="`levels`"):
        multi_level_prototypes(tokens, levels=(16, 0))


# errors


def test_errors():
    points = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="`num_clusters`.*>= 1"):
        dpc_knn(points, 0, 2)
    with pytest.raises(ValueError, match="`k`.*>= 1"):
        dpc_knn(points, 2, 0)
    with pytest.raises(ValueError, match=r"`points`.*\[B, M, D\]"):
        dpc_knn(points[0], 2, 2)
    with pytest.raises(ValueError, match="`mask`.*\\[2, 5\\]"):
        dpc_knn(points, 2, 2, mask=torch.ones(2, 4))
    with pytest.raises(TypeError, match="`points`.*floating"):
        dpc_knn(points.long(), 2, 2)
    with pytest.raises(ValueError, match="`distance_normaliser`"):
        dpc_knn(points, 2, 2, distance_normaliser=0)
    with pytest.raises(ValueError, match="`center_order`"):
        dpc_knn(points, 2, 2, center_order="time")
    with pytest.raises(ValueError, match="M >= 1"):
        dpc_knn(torch.randn(2, 0, 3), 2, 2)
    with pytest.raises(ValueError, match="`assign`.*`num_clusters`"):
        merge_clusters(points, torch.full((2, 5), 3), 3)
    with pytest.raises(ValueError, match="`weights`"):
        merge_clusters(points, torch.zeros(2, 5, dtype=torch.long), 3, torch.ones(2, 4))
    with pytest.raises(ValueError, match="`weighting`"):
        prototype_weights(dpc_knn(points, 2, 2), "softmax")
