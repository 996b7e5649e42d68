"""Batched temporal-aligned cross-attention vs the official per-sample loop, at PAVE's shapes.

    python bench/pave_attention.py [--device cpu|cuda] [--repeats 5] [--batch 8] [--dtype float32]

Both run the same `TemporalAlignedCrossAttention` weights in the official configuration (values tied to k_proj, no
output projection, hidden 512, 4 heads, no RoPE) on the same inputs:

- ours: the layer as shipped (`fold_projections="auto"`), one call, all samples batched (B * Tq attention batches).
  Per call it takes the cheaper path by its FLOP model: standard (project queries, gather chunks + key-padding mask,
  SDPA) for 3D, folded for audio (q_proj folded into each frame's 4 one-token keys: the queries are never
  projected; `videoadapt/layers/folded_attention.py`);
- loop: the official code's way (`VideoCrossAttentionWith3DRope`), re-implemented step for step: a Python loop over
  samples with batch 1 inside the attention; per sample, q and k projections plus a second k projection for the
  values (the official code's tied-value bug); the key time axis is reshaped into Tq chunks when Tq divides it, else
  copied chunk by chunk into zero buffers padded to the longest chunk, with a key-padding mask repeated over the
  query tokens; SDPA. Ours projects the tied keys once and reuses them as values.

Cases: "3d" (queries 32 frames x 196 tokens, keys 32 x 576 LLaVA-3D tokens, all samples 32 steps) and "audio"
(queries 32 x 196, keys up to 120 x 1 ImageBind clips, lengths 120, 111, ..., 57 in one batch).

Time: best of `--repeats` forward passes under no_grad, after one warm-up, alternating ours and loop. Peak
memory: on CUDA, the rise of `torch.cuda.max_memory_allocated` over the allocated memory before the call; on CPU,
each measurement runs in a fresh subprocess that resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), runs
one forward pass, and reports VmHWM minus the RSS just before the call (falls back to `ru_maxrss` where clear_refs
is unavailable). FLOPs: analytic, from the shapes (matmuls only, 2 per multiply-add: projections, folding, scores,
weighted sums); `flops_ratio` = loop / ours bounds the speedup of matmul-bound runs. Ratios are loop / ours (above 1:
ours is faster, smaller or cheaper). The last line is JSON.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn

from videoadapt.layers.folded_attention import cross_attention_flops, is_foldable_linear
from videoadapt.layers.temporal_chunks import chunk_sizes
from videoadapt.layers.temporal_cross_attention import TemporalAlignedCrossAttention


HIDDEN, HEADS, TQ, NQ = 512, 4, 32, 196
CASES = {"3d": (32, 576), "audio": (120, 1)}  # name: (Tk, Nk)


def make_case(name: str, batch: int, device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    tk, nk = CASES[name]
    layer = TemporalAlignedCrossAttention(HIDDEN, HEADS, tie_value_to_key=True, output_projection=False)
    layer = layer.to(device=device, dtype=dtype).eval()
    queries = torch.randn(batch, TQ, NQ, HIDDEN, device=device, dtype=dtype)
    keys = torch.randn(batch, tk, nk, HIDDEN, device=device, dtype=dtype)
    lengths = torch.tensor([tk if name == "3d" else tk - 9 * i for i in range(batch)], device=device)
    keys[torch.arange(tk, device=device) >= lengths[:, None]] = 0
    return layer, queries, keys, lengths


def loop_forward(layer: TemporalAlignedCrossAttention, queries, keys, lengths) -> torch.Tensor:
    """The official way, step for step: a loop over samples with batch 1 inside the attention."""
    _, tq, nq, dim = queries.shape
    nk, h, d = keys.shape[2], layer.num_heads, layer.head_dim
    outs = []
    for b, length in enumerate(lengths.tolist()):
        q = layer.q_proj(queries[b : b + 1]).view(tq, nq, h, d).transpose(1, 2)  # [Tq, H, Nq, d]
        side = keys[b : b + 1, :length]
        k = layer.k_proj(side).view(length, nk, h, d)
        v = layer.k_proj(side).view(length, nk, h, d)  # the official code projects the values again with k_linear
        if length % tq == 0:  # chunks by reshape, no mask
            k, v = (t.reshape(tq, (length // tq) * nk, h, d) for t in (k, v))
            mask = None
        else:  # zero buffers filled chunk by chunk, and a key-padding mask repeated over the query tokens
            sizes = chunk_sizes(length, tq)
            k_pad, v_pad = (k.new_zeros(tq, max(sizes), nk, h, d) for _ in range(2))
            for i, (k_chunk, v_chunk) in enumerate(zip(k.split(sizes), v.split(sizes))):
                k_pad[i, : sizes[i]], v_pad[i, : sizes[i]] = k_chunk, v_chunk
            k, v = (t.view(tq, -1, h, d) for t in (k_pad, v_pad))
            limit = torch.tensor(sizes, device=k.device)[:, None] * nk
            mask = (torch.arange(k.shape[1], device=k.device) < limit)[:, None, None].repeat(1, 1, nq, 1)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [Tq, H, Cmax*Nk, d]
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=layer.scaling)
        outs.append(layer.o_proj(out.transpose(1, 2).reshape(1, tq, nq, dim)))
    return torch.cat(outs)


def loop_flops(layer: TemporalAlignedCrossAttention, queries, keys, lengths) -> int:
    """Analytic FLOPs of `loop_forward`: per sample, q projection, two k projections of the L valid steps, and
    attention over that sample's own longest chunk (official configuration: no output projection)."""
    _, tq, nq, dim = queries.shape
    nk, total = keys.shape[2], 0
    for length in lengths.tolist():
        cols = -(-length // tq) * nk  # ceil(L / Tq) key steps per chunk (padded to the longest chunk)
        total += 2 * dim * dim * (tq * nq + 2 * length * nk) + 2 * 2 * tq * nq * cols * dim
    return total


def ours_flops(layer: TemporalAlignedCrossAttention, queries, keys, lengths) -> tuple[int, str]:
    """Analytic FLOPs of the layer's call and the path it takes ("standard" or "folded")."""
    batch, tq, nq, _ = queries.shape
    shapes = (batch, tq, nq, keys.shape[1], keys.shape[2], -(-int(lengths.max()) // tq))
    path = "folded" if layer.use_folded(*shapes) else "standard"
    flops = cross_attention_flops(
        *shapes, layer.hidden_size, layer.num_heads, untied_values=not layer.tie_value_to_key,
        output_projection=is_foldable_linear(layer.o_proj),
    )  # fmt: skip
    return flops[path], path


def run_variant(variant: str, layer, queries, keys, lengths) -> torch.Tensor:
    with torch.no_grad():
        if variant == "ours":
            return layer(queries, keys, lengths)
        return loop_forward(layer, queries, keys, lengths)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_times(inputs, repeats: int, device: str) -> dict[str, float]:
    """Best wall time of each variant; runs alternate between the variants so that machine noise hits both alike."""
    times = {"ours": [], "loop": []}
    for variant in times:
        run_variant(variant, *inputs)  # warm-up
    for _ in range(repeats):
        for variant, runs in times.items():
            synchronize(device)
            t0 = time.perf_counter()
            run_variant(variant, *inputs)
            synchronize(device)
            runs.append(time.perf_counter() - t0)
    return {variant: min(runs) for variant, runs in times.items()}


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_here(variant: str, inputs, device: str) -> int:
    """Peak bytes above the memory held just before one forward pass, measured in this process."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_variant(variant, *inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _rss_bytes("VmRSS")
        run_variant(variant, *inputs)
        return _rss_bytes("VmHWM") - base
    except OSError:
        base = _rss_bytes("VmRSS")
        run_variant(variant, *inputs)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def peak_memory(case: str, variant: str, args) -> int:
    if args.device.startswith("cuda"):
        inputs = make_case(case, args.batch, args.device, getattr(torch, args.dtype))
        run_variant(variant, *inputs)  # warm-up (kernels, workspaces)
        return peak_memory_here(variant, inputs, args.device)
    cmd = [sys.executable, __file__, "--measure-memory", case, variant, "--batch", str(args.batch)]
    cmd += ["--dtype", args.dtype]
    return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--measure-memory", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    if args.measure_memory:  # child process: one CPU peak-memory measurement
        case, variant = args.measure_memory
        print(peak_memory_here(variant, make_case(case, args.batch, "cpu", dtype), "cpu"))
        return

    figures, max_diff = {}, 0.0
    header = f"{'case':<8}{'variant':<8}{'path':<10}{'GFLOP':>8}{'best of ' + str(args.repeats) + ' (ms)':>18}"
    header += f"{'peak mem (MiB)':>16}"
    rows = []
    for case in CASES:
        inputs = make_case(case, args.batch, args.device, dtype)
        max_diff = max(max_diff, (run_variant("ours", *inputs) - run_variant("loop", *inputs)).abs().max().item())
        ours, path = ours_flops(*inputs)
        flops, paths = {"ours": ours, "loop": loop_flops(*inputs)}, {"ours": path, "loop": "loop"}
        seconds = best_times(inputs, args.repeats, args.device)
        result = {variant: (seconds[variant], peak_memory(case, variant, args)) for variant in seconds}
        for variant, (sec, mem) in result.items():
            rows.append(
                f"{case:<8}{variant:<8}{paths[variant]:<10}{flops[variant] / 1e9:>8.2f}{sec * 1e3:>18.1f}"
                f"{mem / 2**20:>16.1f}"
            )
        del inputs
        figures[f"speedup_{case}"] = round(result["loop"][0] / result["ours"][0], 3)
        figures[f"flops_ratio_{case}"] = round(flops["loop"] / flops["ours"], 3)
        figures[f"path_{case}"] = path
        figures[f"gflops_{case}"] = {v: round(flops[v] / 1e9, 3) for v in flops}
        figures[f"mem_ratio_{case}"] = round(result["loop"][1] / max(result["ours"][1], 1), 3)
        figures[f"peak_mem_mib_{case}"] = {v: round(result[v][1] / 2**20, 1) for v in result}

    print(
        f"device {args.device}, {args.dtype}, batch {args.batch}, hidden {HIDDEN}, heads {HEADS}, {torch.__version__}"
    )
    print(header)
    print("\n".join(rows))
    figures["max_abs_diff"] = max_diff
    figures.update(device=args.device, dtype=args.dtype, batch=args.batch, repeats=args.repeats)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
