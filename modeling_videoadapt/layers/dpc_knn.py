"""DPC-KNN: density-peaks clustering with k nearest neighbours (the Chat-UniVi / TCFormer variant used by DynFocus),
batched and deterministic. Cluster prototypes and DynFocus's multi-level spatial prototypes (S-DPC) are in
`dpc_prototypes.py`.

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


__all__ = ["DPCResult", "dpc_knn"]

CenterOrder = Literal["score", "position"]


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
