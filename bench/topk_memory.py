"""Perturbed top-k: our chunked layer vs the literal reference (STTS's one-hot [R, n, k, N]), forward + backward.

    python bench/topk_memory.py [--device cpu|cuda] [--rows R] [--repeats 3] [--full-rows 1280]

Both run REEF's sizes per row (N = 256 tokens, k = 100 kept, n = 500 samples, sigma = 0.05) on the same scores, the
same noise (`perturbed_noise`) and the same upstream gradient:

- ours: `perturbed_topk` (chunked rows, selections scattered into Y, J accumulated in the same pass, no [R, n, k, N]);
- reference: STTS's algorithm written out: the per-sample one-hot `F.one_hot(indices, N).float()` [R, n, k, N], its
  mean over n; the one-hot and the noise saved for backward, J = einsum('rskm,rsm->rkm') / (n sigma).

R defaults to the largest multiple of 8 whose reference peak (an int64 and a float32 one-hot alive together, 12 bytes
per element) stays within 4 GiB. Time: best of `--repeats` forward + backward passes after one warm-up, alternating
the variants. Peak memory: on CUDA, `torch.cuda.max_memory_allocated` minus the allocated memory before the pass; on
CPU, a fresh subprocess per measurement resets the peak-RSS mark (`/proc/self/clear_refs` <- "5"), runs one pass and
reports VmHWM minus the RSS before it (ru_maxrss where clear_refs is unavailable). Inputs exist before the baseline.
Ratios are reference / ours. The last line is JSON; `measure_topk` is importable from this file's path.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch.nn import functional as F

from videoadapt.layers.perturbed_topk import perturbed_noise, perturbed_topk


NUM_TOKENS, K, NUM_SAMPLES, SIGMA, SEED = 256, 100, 500, 0.05, 0
REEF_ROWS = 64 * 20  # batch 64 x 20 frames
REFERENCE_BUDGET = 4 * 2**30


class LiteralPerturbedTopK(torch.autograd.Function):
    """STTS's forward/backward, one-hot [R, n, k, N] materialised. x float32 [R, N] -> Y [R, k, N]."""

    @staticmethod
    def forward(ctx, x, k, sigma, num_samples, seed):
        rows, num_tokens = x.shape
        noise = perturbed_noise(seed, rows, num_samples, num_tokens, device=x.device)  # [R, n, N]
        index = torch.topk(x[:, None, :] + sigma * noise, k, dim=-1).indices.sort(dim=-1).values  # [R, n, k]
        one_hot = F.one_hot(index, num_tokens).float()  # [R, n, k, N]
        ctx.save_for_backward(one_hot, noise)
        ctx.sigma, ctx.num_samples = sigma, num_samples
        return one_hot.mean(dim=1)

    @staticmethod
    def backward(ctx, grad_y):
        one_hot, noise = ctx.saved_tensors
        jac = torch.einsum("rskm,rsm->rkm", one_hot, noise) / (ctx.num_samples * ctx.sigma)  # [R, k, N]
        return torch.einsum("rkm,rkm->rm", grad_y, jac), None, None, None, None


def reference_rows(budget: int = REFERENCE_BUDGET, k: int = K, num_samples: int = NUM_SAMPLES) -> int:
    """Largest multiple of 8 rows whose reference one-hots (12 bytes per element) fit `budget`."""
    return max(8, budget // (12 * num_samples * k * NUM_TOKENS) // 8 * 8)


def make_inputs(rows: int, device: str, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, NUM_TOKENS, generator=gen).to(device).requires_grad_(True)
    return x, torch.randn(rows, k, NUM_TOKENS, generator=gen).to(device)


def run_variant(variant: str, x: torch.Tensor, grad_y: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, ...]:
    """One forward + backward; returns (Y, grad_x)."""
    x.grad = None
    k = grad_y.shape[1]
    if variant == "ours":
        y = perturbed_topk(x, k, SIGMA, num_samples, seed=SEED)
    else:
        y = LiteralPerturbedTopK.apply(x, k, SIGMA, num_samples, SEED)
    y.backward(grad_y)
    return y.detach(), x.grad


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_here(variant: str, rows: int, device: str, k: int, num_samples: int) -> int:
    """Peak bytes above the memory held just before one forward + backward, in this process."""
    x, grad_y = make_inputs(rows, device, k)
    if device.startswith("cuda"):
        run_variant(variant, x, grad_y, num_samples)  # warm-up (kernels, workspaces)
        x.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_variant(variant, x, grad_y, num_samples)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_bytes("VmRSS")
        run_variant(variant, x, grad_y, num_samples)
        return _status_bytes("VmHWM") - base
    except OSError:
        base = _status_bytes("VmRSS")
        run_variant(variant, x, grad_y, num_samples)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def peak_memory(variant: str, rows: int, device: str, k: int = K, num_samples: int = NUM_SAMPLES) -> int:
    """Peak bytes of one forward + backward; on CPU measured in a fresh subprocess."""
    if device.startswith("cuda"):
        return peak_memory_here(variant, rows, device, k, num_samples)
    cmd = [sys.executable, __file__, "--measure-memory", variant, str(rows), str(k), str(num_samples)]
    return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def best_times(rows: int, device: str, variants: list[str], repeats: int, k: int, num_samples: int) -> dict:
    """Best wall time (s) of forward + backward per variant, alternating variants; max |diff| of Y and grad_x."""
    x, grad_y = make_inputs(rows, device, k)
    outs = {v: [t.clone() for t in run_variant(v, x, grad_y, num_samples)] for v in variants}  # warm-up
    times = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            _synchronize(device)
            t0 = time.perf_counter()
            run_variant(variant, x, grad_y, num_samples)
            _synchronize(device)
            times[variant].append(time.perf_counter() - t0)
    diff = {}
    if len(variants) == 2:
        (y_a, g_a), (y_b, g_b) = outs.values()
        diff = {"max_abs_diff_y": (y_a - y_b).abs().max().item(), "max_abs_diff_grad": (g_a - g_b).abs().max().item()}
    return {"best_s": {v: min(t) for v, t in times.items()}, **diff}


def measure_topk(
    device: str = "cpu",
    rows: int = REEF_ROWS,
    variants: tuple[str, ...] = ("ours",),
    repeats: int = 3,
    k: int = K,
    num_samples: int = NUM_SAMPLES,
    memory: bool = True,
) -> dict:
    """Time (best of `repeats`, forward + backward) and peak memory of each variant ("ours", "reference") at
    [rows, 256] scores, k kept, n samples. Returns {"rows", "device", "time_s": {variant: s}, "peak_bytes":
    {variant: bytes}} (+ max |diff| of outputs and gradients when both variants run)."""
    timing = best_times(rows, device, list(variants), repeats, k, num_samples)
    result = {"rows": rows, "device": device, "k": k, "num_samples": num_samples, "num_tokens": NUM_TOKENS}
    result["time_s"] = timing.pop("best_s")
    if memory:
        result["peak_bytes"] = {v: peak_memory(v, rows, device, k, num_samples) for v in variants}
    return {**result, **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=None, help="rows R for the comparison (default: 4 GiB rule)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-rows", type=int, default=REEF_ROWS, help="REEF's full size for ours alone")
    parser.add_argument("--measure-memory", nargs=4, metavar=("VARIANT", "ROWS", "K", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure_memory:  # child process: one CPU peak-memory measurement
        variant, rows, k, num_samples = args.measure_memory
        print(peak_memory_here(variant, int(rows), "cpu", int(k), int(num_samples)))
        return

    rows = args.rows or reference_rows()
    both = measure_topk(args.device, rows, ("ours", "reference"), args.repeats)
    full = measure_topk(args.device, args.full_rows, ("ours",), args.repeats)
    print(f"device {args.device}, N {NUM_TOKENS}, k {K}, n {NUM_SAMPLES}, sigma {SIGMA}, torch {torch.__version__}")
    print(f"{'variant':<11}{'rows':>6}{'fwd+bwd best of ' + str(args.repeats) + ' (ms)':>28}{'peak mem (MiB)':>16}")
    for result, variants in ((both, ("reference", "ours")), (full, ("ours",))):
        for v in variants:
            ms, mib = result["time_s"][v] * 1e3, result["peak_bytes"][v] / 2**20
            print(f"{v:<11}{result['rows']:>6}{ms:>28.1f}{mib:>16.1f}")
    figures = {
        "topk_speedup": round(both["time_s"]["reference"] / both["time_s"]["ours"], 2),
        "topk_memory_ratio": round(both["peak_bytes"]["reference"] / max(both["peak_bytes"]["ours"], 1), 2),
        "rows": rows,
        "time_ms": {v: round(s * 1e3, 1) for v, s in both["time_s"].items()},
        "peak_mem_mib": {v: round(b / 2**20, 1) for v, b in both["peak_bytes"].items()},
        "max_abs_diff_y": both["max_abs_diff_y"],
        "max_abs_diff_grad": both["max_abs_diff_grad"],
        "full_rows": args.full_rows,
        "ours_full_time_ms": round(full["time_s"]["ours"] * 1e3, 1),
        "ours_full_peak_mem_mib": round(full["peak_bytes"]["ours"] / 2**20, 1),
        "device": args.device,
        "repeats": args.repeats,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
