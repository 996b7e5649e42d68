"""DPC-KNN: density-peaks clustering with k nearest neighbours (the Chat-UniVi / TCFormer variant used by DynFocus),
batched and deterministic, plus weighted cluster prototypes and DynFocus's multi-level spatial prototypes (S-DPC).

Shape legend: B batch, M points per sample (frames for T-DPC, tokens for S-DPC), D channels, L clusters,
I prototypes of all levels together (16 + 6 = 22 for S-DPC).

Per sample, over its valid points only:
    d_ij    = ||x_i - x_j||_2 / sqrt(s), s = `distance_normaliser` (None -> D, Chat-UniVi's cdist / sqrt(C))
    rho_i   = exp(-mean of d_ij^2 over the k nearest j, i itself included as in the official topk)
    delta_i = min d_ij over the j denser than i; for the densest point, the largest d_ij of the sample
    centres = top-L of rho * delta; each point joins its nearest centre, each centre itself.
DynFocus's T-DPC uses d^2 = (1/P) ||f_t - f_t'||_F^2 for frames of P tokens: pass frames flattened to
[B, T, P * D] with `distance_normaliser=P` (for unit-variance features d^2 ~ 2D, so rho underflows to 0 unless the
features are normalised; s = P * D keeps d^2 ~ 2). Its S-DPC (`Merger`) uses Chat-UniVi's s = D.

Determinism: "denser" is rho_j > rho_i, or equal rho and j < i; equal scores rank the lower index first; a point
equally near two centres joins the lower cluster id. Chat-UniVi's tie-breaking noise (rho += U(0, 1) * 1e-6) is
applied only when a `generator` is given. Densities and scores are compared as log rho and log rho + log delta
(the same order as rho * delta), so the ranking survives exp underflow when distances are large.
Clustering runs under no_grad; prototypes (weighted averages) carry gradients to the points.
"""

import math
from typing import Literal, NamedTuple

import torch


__all__ = [
    "DPCResult",
    "MultiLevelPrototypes",
    "density_weights",
    "dpc_knn",
    "merge_clusters",
    "multi_level_prototypes",
    "prototype_weights",
    "uniform_weights",
]

CenterOrder = Literal["score", "position"]
Weighting = Literal["uniform", "exp_score"]
PrototypeOrder = Literal["grouped", "levels"]


class DPCResult(NamedTuple):
    """Output of `dpc_knn`. Cluster ids are positions in `centers`.

    centers: long [B, L], point index of each centre (by score descending or by position); -1 past `num_clusters`.
    assign: long [B, M], cluster id in [0, num_clusters) of each point; -1 for masked points.
    num_clusters: long [B], min(L, number of valid points) per sample.
    rho, delta, score: [B, M] density, distance to a denser point, rho * delta; 0 for masked points.
    """

    centers: torch.Tensor
    assign: torch.Tensor
    num_clusters: torch.Tensor
    rho: torch.Tensor
    delta: torch.Tensor
    score: torch.Tensor


class MultiLevelPrototypes(NamedTuple):
    """Output of `multi_level_prototypes`.

    prototypes: [B, I, D], I = sum(levels); masked slots are zero.
    mask: bool [B, I], False on slots of clusters that do not exist (fewer valid tokens than a level's count).
    level: long [B, I], 0 for the finest level; -1 on masked slots.
    group: long [B, I], cluster id at the coarsest level that the prototype belongs to; -1 on masked slots.
    results: the `DPCResult` of every level (level l clusters the prototypes of level l - 1).
    """

    prototypes: torch.Tensor
    mask: torch.Tensor
    level: torch.Tensor
    group: torch.Tensor
    results: tuple[DPCResult, ...]


# validation


def _check_points(points: torch.Tensor, name: str = "points") -> None:
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        got = points.dtype if isinstance(points, torch.Tensor) else type(points).__name__
        raise TypeError(f"`{name}` must be a floating-point tensor [B, M, D], got {got}; cast it with `.float()`.")
    if points.dim() != 3:
        raise ValueError(f"`{name}` must have shape [B, M, D] (3 dims), got {tuple(points.shape)}; reshape it.")


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}; pass a positive count.")


def _check_per_point(tensor: torch.Tensor | None, points: torch.Tensor, name: str) -> None:
    if tensor is not None and tuple(tensor.shape) != tuple(points.shape[:2]):
        raise ValueError(f"`{name}` must have shape [B, M] = {list(points.shape[:2])}, got {list(tensor.shape)}.")


# clustering


def _distances(x: torch.Tensor, normaliser: float, exact: bool) -> torch.Tensor:
    """Scaled Euclidean distances [B, M, M]; `exact` = direct differences (symmetric, 0 for duplicates)."""
    if exact:
        return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(normaliser)
    sq = (x * x).sum(-1)  # [B, M]
    d2 = (sq[:, :, None] + sq[:, None, :] - 2 * x @ x.mT).clamp_min(0)
    d2 = (d2 + d2.mT) / 2
    d2.diagonal(dim1=1, dim2=2).zero_()
    return (d2 / normaliser).sqrt()


def _log_density(dist: torch.Tensor, valid: torch.Tensor, k: int, include_self: bool) -> torch.Tensor:
    """log rho [B, M] = -mean squared distance to the min(k, candidates) nearest valid points."""
    M = dist.shape[-1]
    candidate = valid[:, None, :].expand_as(dist)  # [B, M(i), M(j)]
    if not include_self:
        candidate = candidate & ~torch.eye(M, dtype=torch.bool, device=dist.device)
    sq = torch.where(candidate, dist.square(), torch.inf)
    nearest = sq.topk(min(k, M), dim=-1, largest=False).values  # [B, M, k'], inf past the candidates
    total = torch.where(nearest.isfinite(), nearest, 0).sum(-1)
    count = candidate.sum(-1).clamp(max=k).clamp_min(1)
    return -total / count


def _delta(dist: torch.Tensor, log_rho: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Distance [B, M] to the nearest denser valid point (ties: lower index is denser); the sample's max if none."""
    idx = torch.arange(dist.shape[-1], device=dist.device)
    lr_i, lr_j = log_rho[:, :, None], log_rho[:, None, :]
    denser = (lr_j > lr_i) | ((lr_j == lr_i) & (idx[None, :] < idx[:, None]))  # [B, M(i), M(j)]
    denser = denser & valid[:, None, :]
    d_max = dist.masked_fill(~(valid[:, :, None] & valid[:, None, :]), 0).amax(dim=(1, 2))  # [B]
    delta = dist.masked_fill(~denser, torch.inf).amin(-1)
    return torch.where(delta.isinf(), d_max[:, None], delta)


def dpc_knn(
    points: torch.Tensor,
    num_clusters: int,
    k: int,
    mask: torch.Tensor | None = None,
    distance_normaliser: float | None = None,
    center_order: CenterOrder = "score",
    include_self: bool = True,
    exact_distances: bool = True,
    generator: torch.Generator | None = None,
) -> DPCResult:
    """Cluster every sample's points with DPC-KNN (no Python loop over the batch; no gradients).

    Args:
        points: float [B, M, D]. Half precision is clustered in float32.
        num_clusters: L >= 1. A sample with fewer valid points gets one cluster per point (`num_clusters` output).
        k: neighbours for the density, >= 1; clamped per sample to the available valid points.
        mask: [B, M], nonzero = valid. Masked points never become centres, never count as neighbours, get id -1.
        distance_normaliser: s in d = ||x_i - x_j|| / sqrt(s); None -> D (Chat-UniVi). T-DPC of the paper: P.
        center_order: "score" (descending rho * delta, the official order) or "position" (ascending point index,
            e.g. events in temporal order). Cluster ids follow this order.
        include_self: count the point itself (distance 0) among its k neighbours, as the official code does.
        exact_distances: direct differences (symmetric, exact zeros for duplicates); False uses the faster Gram
            matrix (x @ x^T), which can reorder near-ties.
        generator: when given, add Chat-UniVi's U(0, 1) * 1e-6 noise to rho (seeded tie-breaking).

    Returns:
        `DPCResult` (centers [B, L], assign [B, M], num_clusters [B], rho / delta / score [B, M]).
    """
    _check_points(points)
    _check_count(num_clusters, "num_clusters")
    _check_count(k, "k")
    _check_per_point(mask, points, "mask")
    if center_order not in ("score", "position"):
        raise ValueError(f'`center_order` must be "score" or "position" (temporal order), got {center_order!r}.')
    if distance_normaliser is not None and not distance_normaliser > 0:
        raise ValueError(f"`distance_normaliser` must be > 0 (or None for D), got {distance_normaliser!r}.")
    B, M, D = points.shape
    if M < 1:
        raise ValueError(f"`points` must hold at least one point (M >= 1), got shape {tuple(points.shape)}.")
    device = points.device
    with torch.no_grad():
        valid = torch.ones(B, M, dtype=torch.bool, device=device) if mask is None else mask.to(device).bool()
        x = points.detach().masked_fill(~valid[..., None], 0)  # padding content never matters
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        dist = _distances(x, float(distance_normaliser or D), exact_distances)  # [B, M, M]
        log_rho = _log_density(dist, valid, k, include_self)
        if generator is not None:
            noise = torch.rand(B, M, generator=generator, device=generator.device, dtype=x.dtype).to(device)
            log_rho = torch.log(log_rho.exp() + noise * 1e-6)
        log_rho = log_rho.masked_fill(~valid, -torch.inf)
        delta = _delta(dist, log_rho, valid).masked_fill(~valid, 0)
        rho = log_rho.exp()
        # rank: valid points by log(rho * delta) (delta = 0 -> the lowest finite key), then masked points
        key = (log_rho + delta.log()).clamp_min(torch.finfo(x.dtype).min).masked_fill(~valid, -torch.inf)
        ranked = key.sort(dim=-1, descending=True, stable=True).indices  # [B, M]

        count = valid.sum(-1).clamp(max=num_clusters)  # [B]
        slot_ok = torch.arange(num_clusters, device=device)[None, :] < count[:, None]  # [B, L]
        centers = ranked.new_full((B, num_clusters), M)
        centers[:, : min(num_clusters, M)] = ranked[:, :num_clusters]
        centers = centers.masked_fill(~slot_ok, M)
        if center_order == "position":
            centers = centers.sort(dim=-1).values  # unused slots (= M) go last
        # nearest centre (first minimum = lower cluster id), then each centre to itself
        rows = dist.gather(1, centers.clamp(max=M - 1)[:, :, None].expand(B, num_clusters, M))  # [B, L, M]
        assign = rows.masked_fill(~slot_ok[:, :, None], torch.inf).argmin(dim=1)  # [B, M]
        ids = torch.arange(num_clusters, device=device).expand(B, num_clusters)
        assign = torch.cat([assign, assign.new_zeros(B, 1)], dim=1).scatter(1, centers, ids)[:, :M]
        assign = assign.masked_fill(~valid, -1)
        centers = centers.masked_fill(~slot_ok, -1)
        score = rho * delta
    return DPCResult(centers, assign, count, rho, delta, score)


# prototypes


def _membership(assign: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """bool [B, M, L], True where point m belongs to cluster l."""
    return assign[..., None] == torch.arange(num_clusters, device=assign.device)


def merge_clusters(
    points: torch.Tensor, assign: torch.Tensor, num_clusters: int, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted average of each cluster's members (differentiable w.r.t. `points` and `weights`).

    Args:
        points: float [B, M, D].
        assign: long [B, M], cluster ids in [0, num_clusters); -1 = belongs to no cluster.
        num_clusters: L.
        weights: non-negative [B, M], or None for the plain mean. Any per-cluster scale cancels out.

    Returns:
        prototypes [B, L, D] (zeros for empty clusters) and nonempty bool [B, L].
    """
    _check_points(points)
    _check_count(num_clusters, "num_clusters")
    _check_per_point(assign, points, "assign")
    _check_per_point(weights, points, "weights")
    if assign.numel() and int(assign.max()) >= num_clusters:
        raise ValueError(
            f"`assign` holds cluster ids up to {int(assign.max())} but `num_clusters` is {num_clusters}; "
            "pass the number of clusters used by the clustering."
        )
    work = points.float() if points.dtype in (torch.float16, torch.bfloat16) else points
    work = work.masked_fill((assign < 0)[..., None], 0)  # unassigned rows (padding) never reach a prototype
    member = _membership(assign, num_clusters)  # [B, M, L]
    w = member.to(work.dtype)
    if weights is not None:
        w = w * weights.to(work.dtype)[..., None]
    mass = w.sum(1)  # [B, L]
    total = w.mT @ work  # [B, L, D], a deterministic matmul rather than atomic scatter-adds
    prototypes = total / torch.where(mass > 0, mass, 1)[..., None]
    return prototypes.to(points.dtype), member.any(1)


def uniform_weights(assign: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """1 / cluster size for each point [B, M] (0 where assign = -1): the official code's plain mean."""
    member = _membership(assign, num_clusters)
    size = member.sum(1).clamp_min(1)  # [B, L]
    return (member / size[:, None, :]).sum(-1)


def density_weights(score: torch.Tensor, assign: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """exp(score) normalised within each cluster [B, M] (0 where assign = -1): the appendix's exp(rho * delta).

    Computed as a per-cluster softmax (the cluster's max score subtracted before exp): the same weighted average as
    raw exp(rho * delta) weights, without overflow for large delta.
    """
    member = _membership(assign, num_clusters)  # [B, M, L]
    score = score.float() if score.dtype in (torch.float16, torch.bfloat16) else score
    peak = score[..., None].masked_fill(~member, -torch.inf).amax(1)  # [B, L]
    own_peak = (member * torch.where(peak.isfinite(), peak, 0)[:, None, :]).sum(-1)  # [B, M]
    e = torch.exp(score - own_peak).masked_fill(assign < 0, 0)
    mass = (member * e[..., None]).sum(1)  # [B, L]
    return e / (member * mass[:, None, :]).sum(-1).clamp_min(torch.finfo(e.dtype).tiny)


def prototype_weights(result: DPCResult, weighting: Weighting) -> torch.Tensor:
    """Per-point merge weights [B, M] for `merge_clusters`: "uniform" (official code) or "exp_score" (appendix)."""
    if weighting == "uniform":
        return uniform_weights(result.assign, result.centers.shape[1])
    if weighting == "exp_score":
        return density_weights(result.score, result.assign, result.centers.shape[1])
    raise ValueError(f'`weighting` must be "uniform" or "exp_score", got {weighting!r}.')


def multi_level_prototypes(
    tokens: torch.Tensor,
    levels: tuple[int, ...] = (16, 6),
    ks: tuple[int, ...] = (8, 3),
    weighting: Weighting = "exp_score",
    order: PrototypeOrder = "grouped",
    mask: torch.Tensor | None = None,
    **dpc_kwargs,
) -> MultiLevelPrototypes:
    """DynFocus S-DPC: cluster tokens into levels[0] prototypes, those into levels[1], ...; return all of them.

    Args:
        tokens: float [B, N, D] (one frame per sample for S-DPC: N = 256 patch tokens).
        levels: clusters per level (DynFocus: 256 -> 16 -> 6, I = 22).
        ks: neighbours per level (DynFocus: 8, 3).
        weighting: "exp_score" (appendix B.3, exp(rho * delta); default) or "uniform" (official `merge_tokens`).
        order: "grouped" (default; for two levels the official `Merger.group` order: for each coarse cluster v, its
            prototype, then its finer member prototypes by cluster id; with more levels, the coarsest cluster's
            prototype, then its members level by level, coarser first) or "levels" (all of level 0, then level 1, ...).
        mask: [B, N], nonzero = valid token.
        **dpc_kwargs: passed to `dpc_knn` (distance_normaliser, center_order, include_self, ...).

    Returns:
        `MultiLevelPrototypes` with prototypes [B, I, D], I = sum(levels); masked (missing-cluster) slots last.
    """
    _check_points(tokens, "tokens")
    if len(levels) == 0 or len(levels) != len(ks):
        raise ValueError(f"`levels` and `ks` must be non-empty and of equal length, got {levels!r} and {ks!r}.")
    if order not in ("grouped", "levels"):
        raise ValueError(f'`order` must be "grouped" or "levels", got {order!r}.')
    for name, value in [("levels", v) for v in levels] + [("ks", v) for v in ks]:
        _check_count(value, name)
    points, valid = tokens, mask
    protos, masks, results = [], [], []
    for num, k in zip(levels, ks):
        result = dpc_knn(points, num, k, mask=valid, **dpc_kwargs)
        points, valid = merge_clusters(points, result.assign, num, prototype_weights(result, weighting))
        protos, masks, results = protos + [points], masks + [valid], results + [result]
    # coarsest-level group of every prototype: follow the assignments upwards
    B, device = tokens.shape[0], tokens.device
    groups = [torch.arange(levels[-1], device=device).expand(B, -1).masked_fill(~masks[-1], -1)]
    for result in reversed(results[1:]):
        parent = groups[0]
        groups.insert(0, parent.gather(1, result.assign.clamp_min(0)).masked_fill(result.assign < 0, -1))
    level = torch.cat([torch.full_like(g, i) for i, g in enumerate(groups)], dim=1)  # [B, I]
    group, ok = torch.cat(groups, dim=1), torch.cat(masks, dim=1)
    width, depth = max(levels), len(levels)
    index = torch.cat([torch.arange(n, device=device).expand(B, -1) for n in levels], dim=1)
    if order == "grouped":  # (group, coarser level first, cluster id)
        key = (group * depth + (depth - 1 - level)) * width + index
    else:  # (level, cluster id)
        key = level * width + index
    key = torch.where(ok, key, depth * width * (max(levels) + 1) + torch.arange(key.shape[1], device=device))
    perm = key.argsort(dim=1, stable=True)  # [B, I]
    prototypes = torch.cat(protos, dim=1).gather(1, perm[..., None].expand(-1, -1, tokens.shape[-1]))
    ok = ok.gather(1, perm)  # missing clusters are already zero (`merge_clusters`)
    level = level.gather(1, perm).masked_fill(~ok, -1)
    return MultiLevelPrototypes(prototypes, ok, level, group.gather(1, perm), tuple(results))
