"""REEF's adapter cost vs selection off (MA-LMM), its memory in video length, and its top-K layer vs the reference.

    python bench/reef_flops.py [--device cpu|cuda] [--frames-long 1000] [--memory-qformer-layers N] [--quick]

Model: `ReefForConditionalGeneration` with random weights at the paper's sizes: EVA ViT-g output of 257 x 1408 tokens
per frame (image 224, patch 14), 32 query tokens, BERT-base Q-Former (768 wide, 12 layers, cross-attention every 2
layers, intermediate 3072, 12 heads), memory bank length 10, 20 frames, 100 kept spatial tokens (+ CLS), alpha 0.7,
16 instruction tokens into the Q-Former, language projection 768 -> 4096 (Vicuna-7B's width). Neither the vision
tower nor the LLM is counted, so both are cut to the bone: the ViT has 0 encoder layers (patch embedding + final norm,
still 257 x 1408 out; `--vision-layers` adds some), the LLM has 0 layers and a 32-word vocabulary.

1. FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one `get_video_features` call (eval, no_grad, batch 1,
   20 frames, eager attention so that the attention matmuls are counted on every device). Adapter = everything but
   the vision tower: the counter's total minus the vision tower's module total. Split by module: Q-Former
   cross-attention / self-attention (with its query memory bank) / feed-forward, STF (relevance scorer; top-K has no
   matmul), RTC (temporal scorer; the merges are elementwise), language projection. The counter counts matmuls,
   convolutions and attention kernels (2 FLOPs per multiply-add); norms, softmax, cosines and merges are not counted
   (about 0.2% here, estimated from the shapes). Baseline: the same model with selection off
   (`num_selected_tokens=None, alpha=1.0`: MA-LMM-equivalent; all 257 tokens, per-position merges). It still runs
   the STF scorer, whose output nothing uses, so `gflops_ma_lmm` also reports the baseline without it.
2. Peak memory of REEF, `--frames-long` (1000) vs 20 frames (inference, no_grad, batch 1, max_num_frames >= both),
   two metrics, each in its own run after a warm-up call on memory_bank_length + 2 frames, the model and the inputs
   existing before the call: "process" = on CUDA, the rise of `torch.cuda.max_memory_allocated` over the allocated
   memory before the call; on CPU, a fresh subprocess resets the kernel's peak-RSS mark (`/proc/self/clear_refs` <-
   "5") and reports VmHWM minus the RSS just before the call (ru_maxrss where clear_refs is unavailable); the
   median of `--memory-repeats` (5) such runs, lengths interleaved, since the heap's peak varies by +-10 MiB from
   run to run whatever the length (measured: 35.0, 42.6, 32.9, 30.3 MiB at 20, 50, 100, 200 frames). "tensors" =
   the peak of the bytes of tensor storages created during the call and alive together (`LiveTensorPeak`, a
   dispatch mode: what the model holds, whatever the allocator keeps; on CPU also in a fresh subprocess). The
   Q-Former depth of this part is `--memory-qformer-layers` (default: 1 on CPU, a layer with cross-attention, the
   query memory bank and both feed-forwards; 12 on CUDA); the token counts are the paper's.
3. The perturbed top-K layer (forward + backward, n = 500, k = 100 of 256) vs the literal reference (STTS's one-hot
   [R, n, k, N]): `measure_topk` of bench/topk_memory.py at its 4 GiB row rule; ratios are reference / ours.

`--quick` runs tiny sizes and measures memory in this process (for the test). The last printed line is one JSON
object; `main(argv)` returns the same dict.
"""

import argparse
import dataclasses
import importlib.util
import json
import re
import resource
import statistics
import subprocess
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from videoadapt.configuration.configuration_reef import ReefConfig
from videoadapt.modeling_reef import ReefForConditionalGeneration


TOPK_BENCH = Path(__file__).resolve().with_name("topk_memory.py")
QFORMER_VOCAB, LLM_VOCAB = 64, 32
COMPONENTS = (
    "qformer_cross_attention",
    "qformer_self_attention",
    "qformer_ffn",
    "spatial_filter",
    "temporal_compression",
    "language_projection",
    "other",
)
_QFORMER_PARTS = {  # child of a Q-Former layer -> component
    "crossattention": "qformer_cross_attention",
    "attention": "qformer_self_attention",
    "intermediate_query": "qformer_ffn",
    "output_query": "qformer_ffn",
    "intermediate": "qformer_ffn",
    "output": "qformer_ffn",
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Model and input sizes of one run (defaults: the paper's MSVD-QA setting)."""

    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1408
    vision_heads: int = 16
    vision_intermediate: int = 6144
    vision_layers: int = 0
    qformer_width: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_intermediate: int = 3072
    cross_attention_frequency: int = 2
    num_query_tokens: int = 32
    text_tokens: int = 16
    llm_width: int = 4096
    llm_heads: int = 32
    memory_bank_length: int = 10
    frames: int = 20
    num_selected_tokens: int = 100
    alpha: float = 0.7
    topk_rows: int | None = None  # None: topk_memory.py's 4 GiB rule
    topk_k: int = 100
    topk_samples: int = 500


PAPER = Sizes()
QUICK = Sizes(
    image_size=32, patch_size=8, vision_width=32, vision_heads=4, vision_intermediate=64, qformer_width=32,
    qformer_layers=2, qformer_heads=4, qformer_intermediate=64, num_query_tokens=4, text_tokens=5, llm_width=64,
    llm_heads=4, memory_bank_length=3, frames=6, num_selected_tokens=6, topk_rows=8, topk_k=10, topk_samples=50,
)  # fmt: skip


# --------------------------------------------------------------------------------------------- model and inputs


def reef_config(sizes: Sizes, selection: bool = True, max_num_frames: int = 120) -> ReefConfig:
    """REEF (`selection`) or the same model with selection off (num_selected_tokens=None, alpha=1.0)."""
    vision = dict(
        hidden_size=sizes.vision_width, image_size=sizes.image_size, patch_size=sizes.patch_size,
        num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
        intermediate_size=sizes.vision_intermediate, initializer_range=0.02,
    )  # fmt: skip
    qformer = dict(
        hidden_size=sizes.qformer_width, num_hidden_layers=sizes.qformer_layers,
        num_attention_heads=sizes.qformer_heads, intermediate_size=sizes.qformer_intermediate,
        cross_attention_frequency=sizes.cross_attention_frequency, encoder_hidden_size=sizes.vision_width,
        vocab_size=QFORMER_VOCAB,
    )  # fmt: skip
    text = dict(
        model_type="llama", hidden_size=sizes.llm_width, num_hidden_layers=0, num_attention_heads=sizes.llm_heads,
        intermediate_size=64, vocab_size=LLM_VOCAB,
    )  # fmt: skip
    return ReefConfig(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=sizes.num_query_tokens,
        num_frames=sizes.frames,
        max_num_frames=max(max_num_frames, sizes.frames),
        memory_bank_length=sizes.memory_bank_length,
        num_selected_tokens=sizes.num_selected_tokens if selection else None,
        alpha=sizes.alpha if selection else 1.0,
    )


def build_model(
    config: ReefConfig, device: str, attn_implementation: str | None = None
) -> ReefForConditionalGeneration:
    """Random weights (seed 0), eval mode."""
    torch.manual_seed(0)
    model = ReefForConditionalGeneration._from_config(config, attn_implementation=attn_implementation)
    return model.to(device).eval()


def video_inputs(sizes: Sizes, frames: int, device: str) -> dict[str, torch.Tensor]:
    """One video: pixel_values [1, frames, 3, S, S] and a random instruction of `text_tokens` Q-Former tokens."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, frames, 3, sizes.image_size, sizes.image_size, generator=gen)
    ids = torch.randint(1, QFORMER_VOCAB, (1, sizes.text_tokens), generator=gen)
    return {
        "pixel_values": pixels.to(device),
        "qformer_input_ids": ids.to(device),
        "qformer_attention_mask": torch.ones_like(ids).to(device),
    }


# --------------------------------------------------------------------------------------------- 1. FLOPs


def count_adapter_flops(model: ReefForConditionalGeneration, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """FLOPs of one `get_video_features` call: "total", "vision_tower", "adapter" (= total - vision tower) and the
    adapter's split over `COMPONENTS` ("other": adapter FLOPs outside the named modules)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.get_video_features(**inputs)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    # the counter names modules called outside a parent's forward by their class: model.X is "<class of X>"
    root = {
        part: type(getattr(model, part)).__name__
        for part in ("vision_model", "qformer", "spatial_filter", "temporal_compression", "language_projection")
    }
    if len(set(root.values())) != len(root):
        raise RuntimeError(f"two REEF parts share a class name, the count cannot tell them apart: {root}")
    flops = dict.fromkeys(COMPONENTS, 0)
    layer_child = re.compile(rf"^{re.escape(root['qformer'])}\.encoder\.layer\.\d+\.(\w+)$")
    for name, count in per_module.items():
        match = layer_child.match(name)
        if match and match.group(1) in _QFORMER_PARTS:
            flops[_QFORMER_PARTS[match.group(1)]] += count
    for part in ("spatial_filter", "temporal_compression", "language_projection"):
        flops[part] = per_module.get(root[part], 0)
    total, vision = per_module.get("Global", 0), per_module.get(root["vision_model"], 0)
    flops["other"] = total - vision - sum(flops.values())
    return {"total": total, "vision_tower": vision, "adapter": total - vision, **flops}


def measure_flops(sizes: Sizes, device: str) -> dict[str, dict[str, int]]:
    """`count_adapter_flops` of REEF ("reef") and of the same model with selection off ("baseline")."""
    result = {}
    for label, selection in (("reef", True), ("baseline", False)):
        model = build_model(reef_config(sizes, selection), device, attn_implementation="eager")
        result[label] = count_adapter_flops(model, video_inputs(sizes, sizes.frames, device))
        del model
    return result


# --------------------------------------------------------------------------------------------- 2. memory


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of the tensor storages created by ops while active and alive at the same time (allocator-free).

    A storage counts from the op that creates it until it is freed; views and in-place results share an input's
    storage and are not counted again; tensors that existed before (inputs, weights) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}  # storage address -> bytes
        self.current = self.peak = 0

    def _free(self, address: int) -> None:
        self.current -= self.live.pop(address, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            address, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or address in inputs or address in self.live:
                continue
            self.live[address] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, address)
        return out


MEMORY_METRICS = ("process", "tensors")


def peak_memory_here(sizes: Sizes, frames: int, max_num_frames: int, device: str, metric: str = "process") -> int:
    """Peak bytes of one no_grad `get_video_features` call of REEF on `frames` frames, in this process, after a
    warm-up call on memory_bank_length + 2 frames. `metric` "process": CPU, VmHWM minus the RSS just before the call;
    CUDA, max_memory_allocated minus the allocated memory before it. "tensors": `LiveTensorPeak` over the call."""
    if metric not in MEMORY_METRICS:
        raise ValueError(f"`metric` must be one of {MEMORY_METRICS}, got {metric!r}.")
    model = build_model(reef_config(sizes, True, max_num_frames), device)
    inputs = video_inputs(sizes, frames, device)
    warm_up = {**inputs, "pixel_values": inputs["pixel_values"][:, : sizes.memory_bank_length + 2]}
    with torch.no_grad():
        model.get_video_features(**warm_up)  # kernels, thread pools, allocator pools, a few merges
        if metric == "tensors":
            with LiveTensorPeak() as tracker:
                model.get_video_features(**inputs)
            return tracker.peak
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            model.get_video_features(**inputs)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = _status_bytes("VmRSS")
            model.get_video_features(**inputs)
            return _status_bytes("VmHWM") - base
        except OSError:
            base = _status_bytes("VmRSS")
            model.get_video_features(**inputs)
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def peak_memory(
    sizes: Sizes, frames: int, max_num_frames: int, device: str, metric: str = "process", in_process: bool = False
) -> int:
    """`peak_memory_here`, in a fresh subprocess on CPU unless `in_process` (sizes travel as JSON)."""
    if in_process or device.startswith("cuda"):
        return peak_memory_here(sizes, frames, max_num_frames, device, metric)
    cmd = [sys.executable, __file__, "--measure-memory", json.dumps(dataclasses.asdict(sizes))]
    cmd += [str(frames), str(max_num_frames), metric]
    return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def measure_memory(sizes: Sizes, lengths: tuple[int, int], args: argparse.Namespace) -> tuple[dict, dict]:
    """Peak memory for each video length: "tensors" once (deterministic), "process" `args.memory_repeats` times,
    lengths interleaved, median kept (the CPU heap's peak varies by +-10 MiB from run to run). Returns
    ({frames: {metric: bytes}}, {frames: [process bytes of every run]})."""
    max_frames = max(lengths)
    runs: dict[int, list[int]] = {frames: [] for frames in lengths}
    for _ in range(args.memory_repeats):
        for frames in lengths:
            runs[frames].append(peak_memory(sizes, frames, max_frames, args.device, "process", in_process=args.quick))
    memory = {
        frames: {
            "process": int(statistics.median(runs[frames])),
            "tensors": peak_memory(sizes, frames, max_frames, args.device, "tensors", in_process=args.quick),
        }
        for frames in lengths
    }
    return memory, runs


# --------------------------------------------------------------------------------------------- 3. top-K layer


def load_topk_bench():
    """bench/topk_memory.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_topk_memory", TOPK_BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_topk_layer(sizes: Sizes, device: str, repeats: int, in_process: bool = False) -> dict:
    """`measure_topk` of ours and the literal reference; peak memory in this process when `in_process`."""
    topk = load_topk_bench()
    rows = sizes.topk_rows or topk.reference_rows(k=sizes.topk_k, num_samples=sizes.topk_samples)
    variants = ("ours", "reference")
    result = topk.measure_topk(
        device, rows, variants, repeats, sizes.topk_k, sizes.topk_samples, memory=not in_process
    )
    if in_process:
        result["peak_bytes"] = {
            v: topk.peak_memory_here(v, rows, device, sizes.topk_k, sizes.topk_samples) for v in variants
        }
    return result


# --------------------------------------------------------------------------------------------- report


def _gflops(flops: int) -> float:
    return round(flops / 1e9, 3)


def _ratio(long: int, short: int) -> float:
    return round(long / max(short, 1), 3)


def _print_table(sizes: Sizes, flops: dict, memory: dict, topk: dict, figures: dict) -> None:
    tokens = (sizes.image_size // sizes.patch_size) ** 2 + 1
    print(
        f"REEF adapter, device {figures['device']}, torch {torch.__version__}: {sizes.frames} frames of {tokens} x "
        f"{sizes.vision_width} ViT tokens, {sizes.num_query_tokens} queries, Q-Former {sizes.qformer_layers} x "
        f"{sizes.qformer_width}, {sizes.text_tokens} instruction tokens, bank {sizes.memory_bank_length}, "
        f"K {sizes.num_selected_tokens}, alpha {sizes.alpha}"
    )
    print(f"{'GFLOPs':<28}{'REEF':>12}{'selection off':>16}")
    for key in (*COMPONENTS, "adapter", "vision_tower"):
        name = {"adapter": "adapter total", "vision_tower": "vision tower (not counted)"}.get(key, key)
        print(f"{name:<28}{flops['reef'][key] / 1e9:>12.3f}{flops['baseline'][key] / 1e9:>16.3f}")
    print(
        f"flops_reduction {figures['flops_reduction']:.1%} (vs MA-LMM without the unused STF scorer: "
        f"{figures['flops_reduction_vs_ma_lmm']:.1%})"
    )
    process = "VmHWM - RSS" if figures["device"] == "cpu" else "max allocated"
    print(f"{'peak memory (MiB)':<28}{'frames':>12}{process:>16}{'live tensors':>14}", end="")
    print(f"   (Q-Former {figures['memory_qformer_layers']} layers)")
    for frames, peak in memory.items():
        print(f"{'':<28}{frames:>12}{peak['process'] / 2**20:>16.1f}{peak['tensors'] / 2**20:>14.1f}")
    ratios = figures["memory_ratio_1000_vs_20"], figures["memory_ratio_1000_vs_20_tensors"]
    print(f"{'ratio long / short':<28}{'':>12}{ratios[0]:>16.3f}{ratios[1]:>14.3f}")
    print(f"{'top-K fwd+bwd':<28}{'rows':>12}{'ms':>16}{'MiB':>12}")
    for variant in ("reference", "ours"):
        ms, mib = topk["time_s"][variant] * 1e3, topk["peak_bytes"][variant] / 2**20
        print(f"{variant:<28}{topk['rows']:>12}{ms:>16.1f}{mib:>12.1f}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames-long", type=int, default=None, help="long video (default 1000; 24 with --quick)")
    parser.add_argument("--memory-qformer-layers", type=int, default=None, help="default: 1 on CPU, all on CUDA")
    parser.add_argument("--vision-layers", type=int, default=None, help="ViT encoder layers (not counted; default 0)")
    parser.add_argument("--repeats", type=int, default=3, help="top-K timing: best of this many")
    parser.add_argument(
        "--memory-repeats",
        type=int,
        default=None,
        help="process peak memory: median of this many (default 5 on CPU, 1 on CUDA or with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, memory measured in this process")
    parser.add_argument(
        "--measure-memory", nargs=4, metavar=("SIZES", "FRAMES", "MAX", "METRIC"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def _check_args(args: argparse.Namespace, sizes: Sizes) -> None:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`--device` is {args.device!r} but CUDA is not available; use `--device cpu`.")
    if args.frames_long < sizes.frames:
        raise ValueError(
            f"`--frames-long` must be >= {sizes.frames} (the short video's frames), got {args.frames_long}; raise it."
        )
    if not 1 <= args.memory_qformer_layers <= sizes.qformer_layers:
        raise ValueError(
            f"`--memory-qformer-layers` must be in [1, {sizes.qformer_layers}] (the Q-Former's depth), got "
            f"{args.memory_qformer_layers}."
        )
    if args.vision_layers < 0:
        raise ValueError(f"`--vision-layers` must be >= 0, got {args.vision_layers}.")
    if args.repeats < 1:
        raise ValueError(f"`--repeats` must be >= 1, got {args.repeats}.")
    if args.memory_repeats < 1:
        raise ValueError(f"`--memory-repeats` must be >= 1, got {args.memory_repeats}.")


def main(argv: list[str] | None = None) -> dict:
    """Run the three measurements, print the table and the JSON line; return the JSON object as a dict."""
    args = _parse(argv)
    if args.measure_memory:  # child process: one CPU peak-memory measurement
        sizes_json, frames, max_num_frames, metric = args.measure_memory
        peak = peak_memory_here(Sizes(**json.loads(sizes_json)), int(frames), int(max_num_frames), "cpu", metric)
        print(peak)
        return {"peak_bytes": peak}

    sizes = QUICK if args.quick else PAPER
    args.frames_long = args.frames_long if args.frames_long is not None else (24 if args.quick else 1000)
    if args.memory_qformer_layers is None:
        args.memory_qformer_layers = sizes.qformer_layers if args.device.startswith("cuda") else 1
    args.vision_layers = args.vision_layers if args.vision_layers is not None else sizes.vision_layers
    if args.memory_repeats is None:
        args.memory_repeats = 1 if args.quick or args.device.startswith("cuda") else 5
    _check_args(args, sizes)
    sizes = dataclasses.replace(sizes, vision_layers=args.vision_layers)

    flops = measure_flops(sizes, args.device)
    memory_sizes = dataclasses.replace(sizes, qformer_layers=args.memory_qformer_layers)
    memory, memory_runs = measure_memory(memory_sizes, (sizes.frames, args.frames_long), args)
    topk = measure_topk_layer(sizes, args.device, args.repeats, in_process=args.quick)

    reef, base = flops["reef"]["adapter"], flops["baseline"]["adapter"]
    ma_lmm = base - flops["baseline"]["spatial_filter"]
    figures = {
        "gflops_reef": _gflops(reef),
        "gflops_baseline": _gflops(base),
        "flops_reduction": round(1 - reef / base, 4),
        "gflops_ma_lmm": _gflops(ma_lmm),
        "flops_reduction_vs_ma_lmm": round(1 - reef / ma_lmm, 4),
        "gflops_components": {label: {c: _gflops(f[c]) for c in COMPONENTS} for label, f in flops.items()},
        "gflops_vision_tower_excluded": _gflops(flops["reef"]["vision_tower"]),
        "flops": flops,
        "memory_ratio_1000_vs_20": _ratio(memory[args.frames_long]["process"], memory[sizes.frames]["process"]),
        "memory_ratio_1000_vs_20_tensors": _ratio(
            memory[args.frames_long]["tensors"], memory[sizes.frames]["tensors"]
        ),
        "memory_frames": [sizes.frames, args.frames_long],
        "peak_mem_mib": {str(f): {k: round(b / 2**20, 1) for k, b in peak.items()} for f, peak in memory.items()},
        "peak_mem_mib_runs": {str(f): [round(b / 2**20, 1) for b in runs] for f, runs in memory_runs.items()},
        "memory_repeats": args.memory_repeats,
        "memory_qformer_layers": args.memory_qformer_layers,
        "memory_measured_in": "subprocess" if not args.quick and args.device == "cpu" else "process",
        "topk_speedup": round(topk["time_s"]["reference"] / topk["time_s"]["ours"], 2),
        "topk_memory_ratio": round(topk["peak_bytes"]["reference"] / max(topk["peak_bytes"]["ours"], 1), 2),
        "topk_rows": topk["rows"],
        "topk_time_ms": {v: round(s * 1e3, 2) for v, s in topk["time_s"].items()},
        "topk_peak_mem_mib": {v: round(b / 2**20, 1) for v, b in topk["peak_bytes"].items()},
        "topk_max_abs_diff_y": topk["max_abs_diff_y"],
        "topk_max_abs_diff_grad": topk["max_abs_diff_grad"],
        "sizes": dataclasses.asdict(sizes),
        "device": args.device,
        "quick": args.quick,
        "torch": torch.__version__,
    }
    _print_table(sizes, flops, memory, topk, figures)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
