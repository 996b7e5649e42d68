"""Perturbed top-k: equality with a literal reference, closed-form smoothed expectations, hard mode, memory bound,
errors, determinism."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from videoadapt.layers.perturbed_topk import (
    NOISE_BLOCK_ROWS,
    PerturbedTopK,
    TopKSelection,
    block_seed,
    extract_from_indicators,
    extract_from_indices,
    hard_topk,
    perturbed_noise,
    perturbed_topk,
)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def literal_reference(x: torch.Tensor, k: int, sigma: float, n: int, seed: int, grad_y: torch.Tensor):
    """STTS's algorithm written out: the full one-hot [R, n, k, N], its mean, and J by einsum. x [R, N]."""
    R, N = x.shape
    noise = perturbed_noise(seed, R, n, N, device=x.device)  # [R, n, N]
    perturbed = x.float()[:, None, :] + sigma * noise
    index = torch.topk(perturbed, k, dim=-1).indices.sort(dim=-1).values  # [R, n, k]
    one_hot = F.one_hot(index, N).float()  # [R, n, k, N]
    y = one_hot.mean(dim=1)
    jac = torch.einsum("rskm,rsm->rkm", one_hot, noise) / (n * sigma)
    return y, (grad_y.float() * jac).sum(dim=1)


def run_layer(x: torch.Tensor, k: int, sigma: float, n: int, seed: int, grad_y: torch.Tensor, **kwargs):
    x = x.detach().requires_grad_(True)
    y = perturbed_topk(x, k, sigma, n, seed=seed, **kwargs)
    y.backward(grad_y)
    return y.detach(), x.grad


# ---------------------------------------------------------------------------------------------------------------------
# literal reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "rows, num_tokens, k, n",
    [(3, 12, 4, 50), (9, 7, 7, 33), (11, 5, 1, 17), (17, 13, 6, 9)],  # 9, 11, 17 rows cross noise-block boundaries
)
def test_matches_literal_reference(device, rows, num_tokens, k, n):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, num_tokens, generator=gen).to(device)
    grad_y = torch.randn(rows, k, num_tokens, generator=gen).to(device)
    y, grad_x = run_layer(x, k, 0.3, n, 1234, grad_y)
    y_ref, grad_ref = literal_reference(x, k, 0.3, n, 1234, grad_y)
    assert y.shape == (rows, k, num_tokens) and grad_x.shape == (rows, num_tokens)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_x, grad_ref, atol=1e-5, rtol=1e-5)
    assert torch.all((y >= 0) & (y <= 1))
    torch.testing.assert_close(y.sum(-1), torch.ones(rows, k, device=device))


def test_leading_dims_flatten_to_rows():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, generator=gen)
    grad_y = torch.randn(2, 3, 4, 10, generator=gen)
    y, grad_x = run_layer(x, 4, 0.2, 40, 7, grad_y)
    y_flat, grad_flat = run_layer(x.view(6, 10), 4, 0.2, 40, 7, grad_y.view(6, 4, 10))
    assert y.shape == (2, 3, 4, 10) and grad_x.shape == (2, 3, 10)
    assert torch.equal(y.view(6, 4, 10), y_flat) and torch.equal(grad_x.view(6, 10), grad_flat)


def test_noise_helper_definition():
    """Block b of rows is `normal_` from a generator seeded with block_seed(seed, b)."""
    noise = perturbed_noise(5, 11, 6, 4)
    for block, start in enumerate(range(0, 11, NOISE_BLOCK_ROWS)):
        gen = torch.Generator().manual_seed(block_seed(5, block))
        rows = min(NOISE_BLOCK_ROWS, 11 - start)
        assert torch.equal(noise[start : start + rows], torch.randn(rows, 6, 4, generator=gen))
    assert block_seed(5, 0) == 5 and block_seed(5, 1) != block_seed(6, 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_scores_use_float32_perturbation(dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, generator=gen).to(dtype)
    grad_y = torch.randn(4, 3, 9, generator=gen).to(dtype)
    y, grad_x = run_layer(x, 3, 0.1, 30, 11, grad_y)
    y32, grad32 = run_layer(x.float(), 3, 0.1, 30, 11, grad_y.float())
    assert y.dtype == grad_x.dtype == dtype
    assert torch.equal(y, y32.to(dtype)) and torch.equal(grad_x, grad32.to(dtype))


# ---------------------------------------------------------------------------------------------------------------------
# smoothed expectation: closed forms


def smoothed_indicators(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact E[Y] [k, N] (float64) for N = 2, k = 1 (Phi) and N = 3, k = 2 (1-D quadrature of P(min = m))."""
    x = x.double()
    if x.numel() == 2:
        p1 = torch.special.ndtr((x[1] - x[0]) / (sigma * math.sqrt(2)))  # P(position 1 wins)
        return torch.stack([1 - p1, p1])[None]
    z = torch.linspace(-12, 12, 48001, dtype=torch.float64)
    density = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)

    def p_min(m: int) -> torch.Tensor:  # P(x_m + sigma Z_m is the smallest): others above it
        above = [torch.special.ndtr(-((x[m] - x[o]) / sigma + z)) for o in range(3) if o != m]
        return torch.trapezoid(density * above[0] * above[1], z)

    p0, p2 = p_min(0), p_min(2)
    zero = torch.zeros((), dtype=torch.float64)
    # kept {1,2} if min=0 -> ranks (1, 2); {0,2} if min=1 -> (0, 2); {0,1} if min=2 -> (0, 1)
    return torch.stack([torch.stack([1 - p0, p0, zero]), torch.stack([zero, p2, 1 - p2])])


def diagonal_partials(x: torch.Tensor, sigma: float, h: float = 1e-4) -> torch.Tensor:
    """D[j, m] = d E[Y][j, m] / d x_m by central finite differences of the exact smoothed indicators."""
    x = x.double()
    out = torch.zeros(smoothed_indicators(x, sigma).shape, dtype=torch.float64)
    for m in range(x.numel()):
        step = torch.zeros_like(x)
        step[m] = h
        out[:, m] = (smoothed_indicators(x + step, sigma) - smoothed_indicators(x - step, sigma))[:, m] / (2 * h)
    return out


def full_gradient(x: torch.Tensor, sigma: float, g: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
    """d <g, E[Y]> / d x by central finite differences (all cross terms included)."""
    x = x.double()
    grads = []
    for m in range(x.numel()):
        step = torch.zeros_like(x)
        step[m] = h
        plus, minus = smoothed_indicators(x + step, sigma), smoothed_indicators(x - step, sigma)
        grads.append(((plus - minus) * g.double()).sum() / (2 * h))
    return torch.stack(grads)


@pytest.mark.parametrize("x, k, g", [([0.2, -0.1], 1, [[0.7, -1.3]]), ([0.3, -0.2, 0.1], 2, None)])
def test_matches_closed_form_smoothed_expectation(x, k, g):
    """Forward = E[Y] and backward = sum_j g[j, m] dE[Y][j, m]/dx_m within 5 Monte-Carlo standard errors; a sign flip
    or a missing 1/sigma lies far outside."""
    sigma, n, seed = 0.5, 200_000, 2024
    x = torch.tensor(x)
    g = torch.tensor(g) if g is not None else torch.tensor([[1.0, -0.8, 0.5], [0.6, 1.2, -0.9]])
    y, grad_x = run_layer(x[None], k, sigma, n, seed, g[None])
    exact_y = smoothed_indicators(x, sigma)
    exact_grad = (g.double() * diagonal_partials(x, sigma)).sum(0)

    se_y = (exact_y * (1 - exact_y) / n).sqrt()  # Bernoulli means
    assert torch.all((y[0].double() - exact_y).abs() <= 5 * se_y + 1e-12)

    # per-sample terms of the estimator, rebuilt from the public noise: T_s[m] = Z_s[m] sum_j g[j, m] Y_s[j, m] / sigma
    noise = perturbed_noise(seed, 1, n, x.numel())[0].double()  # [n, N]
    index = torch.topk(x.double() + sigma * noise, k, dim=-1).indices.sort(dim=-1).values  # [n, k]
    picked_g = g.double().gather(1, index.T).T  # [n, k]: g[j, index[s, j]]
    terms = torch.zeros_like(noise).scatter_add_(1, index, picked_g) * noise / sigma  # [n, N]
    se_grad = terms.std(0) / math.sqrt(n)
    torch.testing.assert_close(grad_x[0].double(), terms.mean(0), atol=1e-5, rtol=1e-5)
    assert torch.all((grad_x[0].double() - exact_grad).abs() <= 5 * se_grad)
    assert torch.all((-grad_x[0].double() - exact_grad).abs() > 10 * se_grad)  # sign flip fails
    assert torch.all((sigma * grad_x[0].double() - exact_grad).abs() > 10 * se_grad)  # missing 1/sigma fails
    if k == 1:  # STTS / Google's estimate is elementwise: it is not the full gradient of <g, E[Y]>
        assert torch.all((grad_x[0].double() - full_gradient(x, sigma, g)).abs() > 10 * se_grad)


# ---------------------------------------------------------------------------------------------------------------------
# hard mode and the module


def test_hard_topk_sorted_and_equal_to_torch_topk_set():
    x = torch.randn(6, 20, generator=torch.Generator().manual_seed(4))
    indices, one_hot = hard_topk(x, 5)
    assert indices.shape == (6, 5) and one_hot.shape == (6, 5, 20) and one_hot.dtype == x.dtype
    assert torch.all(indices[:, 1:] > indices[:, :-1])
    assert torch.equal(indices, torch.topk(x, 5).indices.sort(-1).values)
    assert torch.equal(one_hot, F.one_hot(indices, 20).float())


def test_module_switches_between_perturbed_and_hard():
    layer = PerturbedTopK(3, num_samples=64, sigma=0.2)
    x = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(5))
    tokens = torch.randn(2, 4, 9, 6)
    train_out = layer(x, seed=3)
    assert isinstance(train_out, TopKSelection) and train_out.indices is None
    assert torch.equal(train_out.indicators, perturbed_topk(x, 3, 0.2, 64, seed=3))
    assert not torch.equal(train_out.indicators, train_out.indicators.round())  # soft
    layer.eval()
    eval_out = layer(x)
    indices, one_hot = hard_topk(x, 3)
    assert torch.equal(eval_out.indices, indices) and torch.equal(eval_out.indicators, one_hot)
    assert torch.equal(extract_from_indices(indices, tokens), extract_from_indicators(one_hot, tokens))
    assert torch.equal(extract_from_indices(indices, tokens)[1, 2, 0], tokens[1, 2, indices[1, 2, 0]])
    layer.train()
    assert layer(x, seed=3).indices is None
    assert "k=3, num_samples=64, sigma=0.2" in repr(layer)


def test_gradient_reaches_scorer_and_annealed_sigma_gives_zero_gradient():
    scorer = nn.Linear(6, 1)
    layer = PerturbedTopK(2, num_samples=32, sigma=0.1)
    tokens = torch.randn(3, 8, 6, generator=torch.Generator().manual_seed(6))
    selected = extract_from_indicators(layer(scorer(tokens).squeeze(-1), seed=0).indicators, tokens)
    selected.square().sum().backward()
    assert scorer.weight.grad.abs().sum() > 0 and layer.sigma_max == 0.1

    scorer.zero_grad(set_to_none=True)
    layer.sigma = 0.0  # end of annealing: hard forward, zero (not None) gradient
    out = layer(scorer(tokens).squeeze(-1)).indicators
    assert torch.equal(out, hard_topk(scorer(tokens).squeeze(-1), 2)[1])
    extract_from_indicators(out, tokens).sum().backward()
    assert torch.equal(scorer.weight.grad, torch.zeros_like(scorer.weight))

    layer.eval()  # hard mode is not differentiable
    assert not layer(scorer(tokens).squeeze(-1)).indicators.requires_grad


# ---------------------------------------------------------------------------------------------------------------------
# memory


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (elements) that any op creates, forward and backward, and the ops seen."""

    def __init__(self):
        super().__init__()
        self.largest, self.ops = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func.overloadpacket))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_intermediate_of_n_k_n_size():
    R, N, k, n = 64, 256, 100, 500
    x = torch.randn(R, N, requires_grad=True)
    budget = 32 * 2**20
    with LargestTensor() as mode:
        y = perturbed_topk(x, k, 0.05, n, seed=0, max_chunk_bytes=budget)
        y.backward(torch.ones_like(y))
    assert x.grad is not None and x.grad.shape == (R, N)
    assert {"aten.topk", "aten.scatter_add_", "aten.sum"} <= mode.ops  # forward and backward ops were seen
    # the largest tensors are Y and J [R, k, N] (one chunk's noise is 8 * n * N); the one-hot would be n times larger
    assert mode.largest == R * k * N > 8 * n * N


# ---------------------------------------------------------------------------------------------------------------------
# errors and determinism


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: perturbed_topk(x, 3, sigma=0.0), ValueError, "`sigma` must be > 0"),
        (lambda x: perturbed_topk(x, 3, sigma=-0.1), ValueError, "`sigma` must be a finite number > 0, got -0.1"),
        (lambda x: perturbed_topk(x, 3, sigma=float("nan")), ValueError, "`sigma`"),
        (lambda x: perturbed_topk(x, 11), ValueError, r"`k` must be an int in \[1, N\] = \[1, 10\].*got 11"),
        (lambda x: perturbed_topk(x, 0), ValueError, r"\[1, 10\].*got 0"),
        (lambda x: hard_topk(x, 11), ValueError, "`k`"),
        (lambda x: perturbed_topk(x, 3, num_samples=0), ValueError, "`num_samples` must be an int >= 1"),
        (lambda x: perturbed_topk(x, 3, max_chunk_bytes=0), ValueError, "`max_chunk_bytes`"),
        (lambda x: perturbed_topk(x[0, 0], 1), ValueError, "at least 1 dim"),
        (lambda x: perturbed_topk(x.long(), 3), TypeError, "floating-point"),
        (lambda x: perturbed_topk(x.tolist(), 3), TypeError, "floating-point"),
        (lambda x: perturbed_topk(x.index_fill(1, torch.tensor([2]), float("inf")), 3), ValueError, "NaN or inf"),
        (lambda x: perturbed_topk(x, 3, seed=1.5), TypeError, "`seed`"),
        (lambda x: PerturbedTopK(0), ValueError, "`k`"),
        (lambda x: PerturbedTopK(3, sigma=-1.0), ValueError, "`sigma`"),
        (lambda x: setattr(PerturbedTopK(3), "sigma", -0.5), ValueError, "`sigma`"),
        (lambda x: PerturbedTopK(11)(x), ValueError, r"\[1, 10\]"),
        (lambda x: extract_from_indicators(torch.ones(4, 3, 10), torch.ones(4, 9, 2)), ValueError, "share"),
        (lambda x: extract_from_indices(torch.ones(4, 3).long(), torch.ones(5, 10, 2)), ValueError, "leading"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(4, 10))


def test_determinism_and_chunk_invariance():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(37, 30, generator=gen)  # 37 rows: 5 noise blocks, the last partial
    grad_y = torch.randn(37, 6, 30, generator=gen)
    y_a, grad_a = run_layer(x, 6, 0.1, 40, 99, grad_y)
    y_b, grad_b = run_layer(x, 6, 0.1, 40, 99, grad_y, max_chunk_bytes=1)  # one noise block per chunk
    assert torch.equal(y_a, y_b) and torch.equal(grad_a, grad_b)
    assert not torch.equal(y_a, run_layer(x, 6, 0.1, 40, 100, grad_y)[0])
    with torch.no_grad():  # no graph: the same indicators (J is skipped)
        assert torch.equal(perturbed_topk(x.requires_grad_(True), 6, 0.1, 40, seed=99), y_a)

    torch.manual_seed(0)  # the default seed comes from torch's default generator
    first = perturbed_topk(x, 6, 0.1, 40)
    torch.manual_seed(0)
    assert torch.equal(first, perturbed_topk(x, 6, 0.1, 40))
    assert not torch.equal(first, perturbed_topk(x, 6, 0.1, 40))
