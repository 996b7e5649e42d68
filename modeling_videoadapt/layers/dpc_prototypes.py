"""Cluster prototypes for DPC-KNN: weighted averages of the members (uniform or exp(rho * delta) weights) and
DynFocus's multi-level spatial prototypes (S-DPC: 256 tokens -> 16 -> 6, I = 22).

Shape legend: B batch, M points per sample, D channels, L clusters, I prototypes of all levels together.
Prototypes carry gradients to the points; the clustering itself (`dpc_knn`) runs under no_grad.
"""

from typing import Literal, NamedTuple

import torch

from videoadapt.layers.dpc_knn import DPCResult, _check_count, _check_per_point, _check_points, dpc_knn


__all__ = [
    "MultiLevelPrototypes",
    "density_weights",
    "merge_clusters",
    "multi_level_prototypes",
    "prototype_weights",
    "uniform_weights",
]

Weighting = Literal["uniform", "exp_score"]
PrototypeOrder = Literal["grouped", "levels"]


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
