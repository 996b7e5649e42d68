"""Differentiable top-k by perturbed maximum (Berthet et al. 2020, Cordonnier et al. 2021, STTS): the selector of
REEF (spatial token filtering) and DynFocus (key events).

Training: top-k of x + sigma * Z for n draws Z ~ N(0, 1), each sample's k positions sorted ascending (row j = the j-th
selected position), one-hot, averaged over the samples. Backward: STTS's / Google's elementwise estimate
J[r, j, m] = sum_s Y_s[r, j, m] Z[r, s, m] / (n sigma), grad_x[r, m] = sum_j g[r, j, m] J[r, j, m]; zero when
sigma <= 1e-20. Eval: exact top-k, indices sorted by position, one-hot indicators.

Memory: no [R, n, k, N] one-hot. Rows run in chunks within a byte budget, selections are scattered into Y, and J
(Y's size) is accumulated in the same pass and is all that backward keeps: noise and selections die with their chunk.

Noise: block b of `NOISE_BLOCK_ROWS` rows is `normal_` on a float32 [rows_in_block, n, N] slice from a
`torch.Generator` on x's device seeded with `block_seed(seed, b)` (`perturbed_noise` returns it), so results do not
depend on the chunk size. The default seed is drawn from torch's default generator (`torch.manual_seed` repeats runs).

Shape legend: R rows (flattened leading dims, e.g. batch * frames), N tokens per row, k selected, n noise samples,
D token channels.
"""

import math
from numbers import Real
from typing import NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from videoadapt.layers.perturbed_noise import NOISE_BLOCK_ROWS, _fill_noise, _resolve_seed, block_seed, perturbed_noise


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "NOISE_BLOCK_ROWS",
    "PerturbedTopK",
    "PerturbedTopKFunction",
    "TopKSelection",
    "block_seed",
    "extract_from_indicators",
    "extract_from_indices",
    "hard_topk",
    "perturbed_noise",
    "perturbed_topk",
]

DEFAULT_CHUNK_BYTES = 128 * 2**20
_ZERO_SIGMA = 1e-20  # at or below: hard forward, zero gradient (as STTS)


# ---------------------------------------------------------------------------------------------------------------------
# validation


def _check_scores(x: torch.Tensor, k: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"`x` (scores) must be a floating-point tensor [..., N], got {got}; cast it with `.float()`.")
    if x.dim() < 1:
        raise ValueError("`x` (scores) must have at least 1 dim [..., N] (N tokens last), got a 0-dim tensor.")
    num_tokens = x.shape[-1]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_tokens:
        raise ValueError(
            f"`k` must be an int in [1, N] = [1, {num_tokens}] (the number of tokens, x.shape[-1]), got {k!r}; "
            "lower `k` or pass more tokens."
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("`x` (scores) contains NaN or inf; top-k needs finite scores (check the scorer's output).")


def _check_sigma(sigma: float, allow_zero: bool) -> float:
    allowed = ">= 0" if allow_zero else "> 0"
    if not isinstance(sigma, Real) or isinstance(sigma, bool) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"`sigma` must be a finite number {allowed}, got {sigma!r}; typical values are 0.05-0.1.")
    if sigma == 0 and not allow_zero:
        raise ValueError(
            "`sigma` must be > 0 for the perturbed top-k, got 0; use `hard_topk` for an exact top-k "
            "(a `PerturbedTopK` module accepts sigma = 0 as the end of annealing)."
        )
    return float(sigma)


def _check_positive_int(value: int, name: str, hint: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}; {hint}.")


def _check_settings(num_samples: int, max_chunk_bytes: int) -> None:
    _check_positive_int(num_samples, "num_samples", "the papers use 500")
    _check_positive_int(max_chunk_bytes, "max_chunk_bytes", f"the default is {DEFAULT_CHUNK_BYTES}")


# ---------------------------------------------------------------------------------------------------------------------
# top-k kernels


def _sorted_topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries along the last dim, sorted by position (ascending)."""
    return scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values


def _one_hot(indices: torch.Tensor, num_tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """indices [..., k] -> one-hot [..., k, N] (no int64 intermediate)."""
    out = torch.zeros(*indices.shape, num_tokens, dtype=dtype, device=indices.device)
    return out.scatter_(-1, indices.unsqueeze(-1), 1.0)


def _chunk_rows(num_samples: int, num_tokens: int, k: int, max_chunk_bytes: int) -> int:
    """Rows per chunk: whole noise blocks whose temporaries fit `max_chunk_bytes` (at least one block)."""
    # per row: noise and perturbed scores (f32 n*N each), top-k values + indices (12 n*k), sorted indices (16 n*k),
    # noise at the picks (4 n*k)
    per_row = num_samples * (8 * num_tokens + 32 * k)
    return max(1, max_chunk_bytes // (per_row * NOISE_BLOCK_ROWS)) * NOISE_BLOCK_ROWS


def _accumulate(x, k, sigma, num_samples, seed, max_chunk_bytes, counts, jac) -> None:
    """Chunk by chunk, add each sample's selections of x float32 [R, N] to counts [R, k, N] and Z there to jac."""
    num_tokens = x.shape[1]
    step = _chunk_rows(num_samples, num_tokens, k, max_chunk_bytes)
    for start in range(0, x.shape[0], step):
        rows = slice(start, start + step)
        noise = _fill_noise(x.new_empty(x[rows].shape[0], num_samples, num_tokens), seed, start)  # [c, n, N]
        perturbed = noise * sigma
        perturbed += x[rows, None, :]
        index = _sorted_topk_indices(perturbed, k)  # [c, n, k]
        del perturbed
        index_t = index.transpose(1, 2)  # [c, k, n]: in sample s, rank j sits at position index_t[r, j, s]
        counts[rows].scatter_add_(2, index_t, x.new_ones(1, 1, 1).expand(index_t.shape))
        if jac is not None:
            jac[rows].scatter_add_(2, index_t, noise.gather(2, index).transpose(1, 2))


# ---------------------------------------------------------------------------------------------------------------------
# autograd function and functional API


def _indicators(x, k, sigma, num_samples, seed, max_chunk_bytes, with_jacobian: bool):
    """x [R, N] -> (Y [R, k, N] in x's dtype, J float32 [R, k, N] or None); sigma <= 1e-20: hard one-hot, no J."""
    rows, num_tokens = x.shape
    xf = x.float()
    if sigma <= _ZERO_SIGMA:  # every sample selects the same set
        return _one_hot(_sorted_topk_indices(xf, k), num_tokens, x.dtype), None
    counts = xf.new_zeros(rows, k, num_tokens)
    jac = xf.new_zeros(rows, k, num_tokens) if with_jacobian else None
    _accumulate(xf, k, sigma, num_samples, seed, max_chunk_bytes, counts, jac)
    if jac is not None:
        jac.div_(num_samples * sigma)
    return counts.div_(num_samples).to(x.dtype), jac


class PerturbedTopKFunction(torch.autograd.Function):
    """x [R, N] -> indicators Y [R, k, N] (x's dtype); only x receives a gradient, zero when sigma <= 1e-20.

    apply(x, k, sigma, num_samples, seed, max_chunk_bytes); arguments are not validated here (see `perturbed_topk`).
    """

    @staticmethod
    def forward(ctx, x, k, sigma, num_samples, seed, max_chunk_bytes):
        y, jac = _indicators(x, k, sigma, num_samples, seed, max_chunk_bytes, with_jacobian=True)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.save_for_backward(jac)  # None when sigma <= 1e-20
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (jac,) = ctx.saved_tensors
        if jac is None:
            grad_x = torch.zeros(ctx.x_shape, dtype=ctx.x_dtype, device=grad_y.device)
        else:  # the elementwise estimate of STTS / Google: sum_j g[r, j, m] J[r, j, m]
            grad_x = (grad_y.float() * jac).sum(1).to(ctx.x_dtype)
        return grad_x, None, None, None, None, None


def _perturbed(x, k, sigma, num_samples, seed, generator, max_chunk_bytes) -> torch.Tensor:
    _check_scores(x, k)
    _check_settings(num_samples, max_chunk_bytes)
    seed = _resolve_seed(seed, generator)
    rows = x.reshape(-1, x.shape[-1])  # [R, N]
    if torch.is_grad_enabled() and x.requires_grad:
        y = PerturbedTopKFunction.apply(rows, k, sigma, num_samples, seed, max_chunk_bytes)
    else:  # no graph: skip J
        y = _indicators(rows, k, sigma, num_samples, seed, max_chunk_bytes, with_jacobian=False)[0]
    return y.view(*x.shape[:-1], k, x.shape[-1])


def perturbed_topk(
    x: torch.Tensor,
    k: int,
    sigma: float = 0.05,
    num_samples: int = 500,
    seed: int | None = None,
    *,
    generator: torch.Generator | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Perturbed (differentiable) top-k indicators.

    Args:
        x: scores [..., N], floating point (the perturbation is computed in float32), finite.
        k: tokens to select, in [1, N].
        sigma: noise scale, > 0.
        num_samples: noise draws n, >= 1.
        seed: noise seed (see `perturbed_noise`); None draws one from `generator` (default: torch's default one).
        generator: generator the seed is drawn from when `seed` is None.
        max_chunk_bytes: budget for the temporaries of one chunk of rows (results do not depend on it).

    Returns:
        Y [..., k, N] in x's dtype: Y[..., j, m] = fraction of samples whose j-th selected position is m.
    """
    return _perturbed(x, k, _check_sigma(sigma, allow_zero=False), num_samples, seed, generator, max_chunk_bytes)


def hard_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k: x [..., N] -> (indices long [..., k] sorted by position, one-hot [..., k, N] in x's dtype)."""
    _check_scores(x, k)
    indices = _sorted_topk_indices(x.float(), k)
    return indices, _one_hot(indices, x.shape[-1], x.dtype)


def extract_from_indicators(indicators: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Soft selection: indicators [..., k, N] @ tokens [..., N, D] -> [..., k, D] (in the tokens' dtype)."""
    if indicators.shape[:-2] != tokens.shape[:-2] or indicators.shape[-1] != tokens.shape[-2]:
        raise ValueError(
            f"`indicators` [..., k, N] and `tokens` [..., N, D] must share the leading dims and N, got "
            f"{tuple(indicators.shape)} and {tuple(tokens.shape)}."
        )
    return torch.matmul(indicators.to(tokens.dtype), tokens)


def extract_from_indices(indices: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Hard selection: gather tokens [..., N, D] at indices [..., k] -> [..., k, D]."""
    if indices.shape[:-1] != tokens.shape[:-2] or indices.dtype != torch.long:
        raise ValueError(
            f"`indices` must be long [..., k] with the leading dims of `tokens` [..., N, D], got {indices.dtype} "
            f"{tuple(indices.shape)} and {tuple(tokens.shape)}."
        )
    return tokens.gather(-2, indices.unsqueeze(-1).expand(*indices.shape, tokens.shape[-1]))


# ---------------------------------------------------------------------------------------------------------------------
# module


class TopKSelection(NamedTuple):
    """indicators [..., k, N] (soft in training, one-hot in eval); indices [..., k] sorted by position (eval only)."""

    indicators: torch.Tensor
    indices: torch.Tensor | None


class PerturbedTopK(nn.Module):
    """Top-k token selector: perturbed top-k in training, hard top-k in eval.

    Args:
        k: tokens to select per row.
        num_samples: noise draws n (500 in REEF, STTS and Google's configs).
        sigma: noise scale (0.05 in STTS / Google, 0.1 in DynFocus' code). Settable: `SigmaAnnealingCallback` lowers
            it during training; at 0 the training forward is the hard top-k and the gradient is zero.
        max_chunk_bytes: budget for the temporaries of one chunk of rows.
    """

    def __init__(
        self, k: int, num_samples: int = 500, sigma: float = 0.05, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> None:
        super().__init__()
        _check_positive_int(k, "k", "it is the number of tokens to keep")
        _check_settings(num_samples, max_chunk_bytes)
        self.k, self.num_samples, self.max_chunk_bytes = k, num_samples, max_chunk_bytes
        self.sigma = sigma
        self.sigma_max = self.sigma  # the value annealing starts from

    @property
    def sigma(self) -> float:
        return self._sigma

    @sigma.setter
    def sigma(self, value: float) -> None:
        self._sigma = _check_sigma(value, allow_zero=True)

    def forward(self, scores: torch.Tensor, seed: int | None = None, k: int | None = None) -> TopKSelection:
        """scores [..., N] -> TopKSelection (indicators [..., k, N], indices [..., k] in eval, None in training).

        `k` overrides the module's k for this call (e.g. a k that depends on the number of frames)."""
        k = self.k if k is None else k
        if self.training:
            indicators = _perturbed(scores, k, self.sigma, self.num_samples, seed, None, self.max_chunk_bytes)
            return TopKSelection(indicators, None)
        indices, indicators = hard_topk(scores, k)
        return TopKSelection(indicators, indices)

    def extra_repr(self) -> str:
        return f"k={self.k}, num_samples={self.num_samples}, sigma={self.sigma}"
