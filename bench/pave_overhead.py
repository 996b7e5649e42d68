"""Parameter and FLOP overhead of a PAVE patch on LLaVA-OneVision 0.5B and 7B, counted on the meta device.

    python bench/pave_overhead.py [--sizes 0.5b 7b]

Nothing is downloaded and no weight is allocated: each base is built as `PaveForConditionalGeneration` from the
published sizes (SigLIP so400m/14 at 384 px with 26 layers and no pooling head; Qwen2-0.5B 896/4864/24 layers/14
heads/2 KV heads/vocab 151936, tied embeddings; Qwen2-7B 3584/18944/28/28/4/152064, untied) under
`torch.device("meta")`. Patches are added with the library's own `add_patch` (which injects the paper's LoRA, r=64
on q/k/v/o/gate/up/down of every LLM layer, through peft) on the same meta device, so every parameter count below
is the numel of real modules. The LoRA count is checked against r * (in + out) summed over the target projections.

Patches, at the paper's sizes (hidden 512, 4 heads, 2 layers, FFN 1024, output MLP 1024):
    audio: side channel 1024-d, 1x1 tokens per step, K = 120 steps (2 minutes of ImageBind clips at 1 per second);
    3d:    side channel 1024-d, 24x24 tokens per step, 32 steps (LLaVA-3D features, 32 x 576 tokens).
Each in two modes: `paper` (the library defaults: queries are the projected LLM-space video tokens, separate value
projection, attention output projection, RoPE) and `official` (`PavePatchConfig.official`: queries are the 1152-d
pre-projector SigLIP features, values reuse the key projection, no output projection, no RoPE).

Parameters: fusion = every parameter of the patch module; base = every parameter of the base model (vision tower,
projector, LLM; tied embeddings counted once); "% params" = fusion / base * 100; bf16 bytes = 2 * fusion.
Anchors (docs: the official PAVEModuleV5 instantiated): 7B 2-layer 8,996,352 and 0.5B 6,235,776, of which
525,312 are the never-used `v_linear` (2 layers x (512 * 512 + 512)); an official-mode patch must have exactly the
anchor minus v_linear. Both anchors are for a 1024-d side channel with 2 layers, which is the official `_3d`,
`_3d_7B`, `V5_1_3` and AVSD-7B configs alike. Our `3d` patch also carries `position_3d` (an xyz MLP, 3 -> 512 -> 512,
264,704 parameters) that neither the paper's patch nor the official code has; it is reported apart.

FLOPs (one multiply-add = 2 FLOPs; matmuls only: LayerNorm, GELU, softmax, RoPE and bias adds are left out):

    patch, with Nq = 32 * 196 query tokens, E = 512, Dq the query width (LLM hidden in paper mode, 1152 in
    official mode), C = 1024 side channels, Nk_in = steps * h * w side tokens, Nk = max(steps, 32) * h * w side
    tokens after time upsampling, A = sum over the 32 query frames of 196 * (keys in that frame's chunk), D = LLM
    hidden, F = FFN 1024, M = MLP 1024, L = 2 layers:
        query proj      2 * Nq * Dq * E
        side proj       2 * Nk_in * C * E
        position_3d     2 * Nk_in * (3 * E + E * E)                 (3d only)
        per layer       2 * Nq * E * E                              q proj
                        2 * Nk * E * E                              k proj
                        2 * Nk * E * E                              v proj (0 when values reuse the k projection)
                        2 * A * E + 2 * A * E                       scores q k^T and the weighted sum over the chunk
                        2 * Nq * E * E                              o proj (0 without output projection)
                        2 * Nq * E * F + 2 * Nq * F * E             FFN
        output MLP      2 * Nq * E * M + 2 * Nq * M * D
    A counts the chunk's real keys (no padding slots). The official code computes the values with a second call of
    `k_linear`; ours reuses the key projection, so the official code spends L * 2 * Nk * E * E more than the
    official mode counted here (shown as "official code").

    LLM prefill of n = 32 * 196 video tokens + 40 text tokens = 6312 (the paper's count, appendix B.5):
        2 * P_mm * n  +  4 * layers * n^2 * (heads * head_dim)  +  2 * D * vocab
    where P_mm is the weight count of the 7 projections of every decoder layer (the LLM's matmul parameters), the
    second term is q k^T and the weighted sum over the full n x n score matrix (as LLM-Viewer, which the paper uses,
    counts prefill; causal masking would halve it), and the last term is the LM head on the last position.
    This gives 98.4 TFLOPs (7B) and 7.94 TFLOPs (0.5B) against the paper's 98.53 and 8.01. "% FLOPs" = patch / LLM
    prefill * 100. The vision tower is left out, as in the paper; LoRA adds no FLOPs once merged (the official
    loader merges it).

The last line is one JSON object. Headline keys (`patch_params_7b`, `patch_pct_params_7b`, `patch_pct_flops_7b`,
`patch_params_05b`, ...) are the audio patch in paper mode (the library defaults); `*_official` keys are the audio
patch in official mode; `*_3d_*` keys the 3d patch; `rows` holds every row of the table. Percentages are in percent.
"""

import argparse
import json
import re
import sys
import time
from typing import Any

import torch
from torch import nn

from videoadapt.configuration.configuration_pave import PaveConfig, PavePatchConfig
from videoadapt.layers.temporal_chunks import chunk_sizes
from videoadapt.modeling_pave import PaveForConditionalGeneration, PavePatch
from videoadapt.pave_patches import LORA_TARGET_MODULES, default_lora_config


SIGLIP = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=26,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
    vision_use_head=False,
)
QWEN2 = {
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
SIZES = tuple(QWEN2)
FRAMES, TOKENS_PER_FRAME, TEXT_TOKENS = 32, 196, 40
PATCH_SIZES = dict(hidden_size=512, num_attention_heads=4, num_layers=2, ffn_size=1024, output_mlp_size=1024)
SIDE_CHANNELS = {  # name: (side_channel, channels, (h, w) tokens per step, steps)
    "audio": ("audio", 1024, (1, 1), 120),
    "3d": ("3d", 1024, (24, 24), 32),
}
MODES = ("paper", "official")
LORA_RANK = 64

# Official PAVEModuleV5 (1024-d side channel, 2 layers), instantiated; v_linear is built but never used.
OFFICIAL_PARAMS = {"0.5b": 6_235_776, "7b": 8_996_352}
OFFICIAL_V_LINEAR = 525_312
# The paper's tables: total params, LLaVA-OV-FT trainable (= LoRA), PAVE trainable (LoRA + patch), prefill TFLOPs
# of the base and of the patch (appendix B.5).
PAPER = {
    "0.5b": dict(base=0.9e9, lora=35.2e6, trainable=41.4e6, llm_tflops=8.01, patch_tflops={"audio": 0.07, "3d": 0.12}),
    "7b": dict(
        base=8.2e9, lora=161.5e6, trainable=170.5e6, llm_tflops=98.53, patch_tflops={"audio": 0.10, "3d": 0.15}
    ),
}


# ------------------------------------------------------------------------------------------------ the base model


def build_base(size: str) -> PaveForConditionalGeneration:
    """LLaVA-OneVision of the published sizes as a PAVE model, on the meta device (no weights allocated)."""
    text = QWEN2[size]
    config = PaveConfig(
        vision_config={"model_type": "siglip_vision_model", **SIGLIP},
        text_config={"model_type": "qwen2", **text},
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    with torch.device("meta"):
        model = PaveForConditionalGeneration(config)
    tied = model.lm_head.weight is model.model.language_model.embed_tokens.weight
    if tied != text["tie_word_embeddings"]:
        raise RuntimeError(
            f"{size}: lm_head tied to the embeddings is {tied}, expected {text['tie_word_embeddings']}."
        )
    return model


def _patch_built_on_cpu(config: PavePatchConfig, **kwargs: Any) -> PavePatch:
    """`PavePatch`, built on the CPU even inside a meta-device context (`add_patch` then moves it to the model's meta
    device). Its 3D RoPE tables use `repeat_interleave`, which has no meta kernel; the patch itself is small."""
    with torch.device("cpu"):
        return PavePatch(config, **kwargs)


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_targets(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers the paper's LoRA wraps (q/k/v/o/gate/up/down of every LLM decoder layer)."""
    pattern = re.compile(LORA_TARGET_MODULES)
    return [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]


def base_counts(model: PaveForConditionalGeneration) -> dict[str, int]:
    inner = model.model
    counts = {
        "vision": numel(inner.vision_tower),
        "projector": numel(inner.multi_modal_projector),
        "llm": numel(nn.ModuleList([inner.language_model, model.lm_head])),  # shared weights once
        "total": numel(model),
    }
    counts["newline"] = counts["total"] - counts["vision"] - counts["projector"] - counts["llm"]
    targets = lora_targets(model)
    counts["llm_matmul"] = sum(m.weight.numel() for m in targets)
    counts["lora_expected"] = sum(LORA_RANK * (m.in_features + m.out_features) for m in targets)
    counts["lora_targets"] = len(targets)
    return counts


def llm_prefill_flops(model: PaveForConditionalGeneration, matmul_params: int) -> int:
    """2 * P_mm * n + 4 * layers * n^2 * (heads * head_dim) + 2 * D * vocab (see the module docstring)."""
    text = model.config.text_config
    n = FRAMES * TOKENS_PER_FRAME + TEXT_TOKENS
    attention_width = model.model.language_model.layers[0].self_attn.q_proj.out_features  # heads * head_dim
    quadratic = 4 * text.num_hidden_layers * n * n * attention_width
    return 2 * matmul_params * n + quadratic + 2 * text.hidden_size * text.vocab_size


# ------------------------------------------------------------------------------------------------------ the patch


def patch_flops(config: PavePatchConfig, steps: int) -> dict[str, int]:
    """Forward FLOPs of one patch, matmuls only, per component (formulas in the module docstring)."""
    nq, e = FRAMES * TOKENS_PER_FRAME, config.hidden_size
    h, w = config.side_channel_grid
    nk_in = steps * h * w
    upsampled = max(steps, FRAMES)  # `upsample_time` stretches a short side channel to one step per frame
    nk = upsampled * h * w
    pairs = sum(TOKENS_PER_FRAME * size * h * w for size in chunk_sizes(upsampled, FRAMES))
    layer = {
        "q_proj": 2 * nq * e * e,
        "k_proj": 2 * nk * e * e,
        "v_proj": 0 if config.tie_value_to_key else 2 * nk * e * e,
        "attention": 2 * pairs * e * 2,
        "o_proj": 2 * nq * e * e if config.attention_output_projection else 0,
        "ffn": 2 * nq * e * config.ffn_size * 2,
    }
    flops = {
        "query_proj": 2 * nq * config.query_dim * e,
        "side_proj": 2 * nk_in * config.side_channel_dim * e,
        "position_3d": 2 * nk_in * (3 * e + e * e) if config.side_channel == "3d" else 0,
        **{f"layers.{k}": v * config.num_layers for k, v in layer.items()},
        "output_mlp": 2 * nq * e * config.output_mlp_size + 2 * nq * config.output_mlp_size * config.output_dim,
    }
    flops["total"] = sum(flops.values())
    # the official code projects the values with a second `k_linear` call
    flops["official_code_total"] = flops["total"] + (
        config.num_layers * 2 * nk * e * e if config.tie_value_to_key else 0
    )
    return flops


def patch_param_groups(patch: nn.Module) -> dict[str, int]:
    groups: dict[str, int] = {}
    for name, parameter in patch.named_parameters():
        parts = name.split(".")
        key = ".".join(["layers", parts[2]] if parts[0] == "layers" else parts[:1])
        groups[key] = groups.get(key, 0) + parameter.numel()
    return groups


def measure_size(size: str) -> list[dict[str, Any]]:
    """Every (side channel, mode) row for one base size."""
    model = build_base(size)
    model.patch_class = _patch_built_on_cpu  # instance attribute: only this model's `add_patch` uses it
    base = base_counts(model)
    llm_flops = llm_prefill_flops(model, base["llm_matmul"])
    rows = []
    for channel, (kind, channels, grid, steps) in SIDE_CHANNELS.items():
        for mode in MODES:
            name = f"{channel.replace('3d', 'three_d')}_{mode}"
            before = numel(model)
            with torch.device("meta"):
                config = model.patch_config_for(
                    kind, channels, official=mode == "official", side_channel_grid=list(grid), **PATCH_SIZES
                )
                patch = model.add_patch(name, config, default_lora_config(r=LORA_RANK))
            fusion = numel(patch)
            lora = sum(p.numel() for p in model.patch_parameters(name)) - fusion
            if numel(model) - before != fusion + lora:
                raise RuntimeError(f"{size} {name}: the model grew by {numel(model) - before}, not {fusion + lora}.")
            if lora != base["lora_expected"]:
                expected = base["lora_expected"]
                raise RuntimeError(
                    f"{size} {name}: peft injected {lora} LoRA parameters, r*(in+out) gives {expected}."
                )
            groups = patch_param_groups(patch)
            flops = patch_flops(config, steps)
            anchor = OFFICIAL_PARAMS[size] - OFFICIAL_V_LINEAR if mode == "official" else None
            rows.append(
                dict(
                    size=size,
                    side_channel=channel,
                    mode=mode,
                    side_tokens=f"{steps}x{grid[0] * grid[1]}",
                    fusion_params=fusion,
                    position_3d_params=groups.get("position_3d", 0),
                    fusion_params_without_position_3d=fusion - groups.get("position_3d", 0),
                    official_anchor_without_v_linear=anchor,
                    matches_official=None if anchor is None else fusion - groups.get("position_3d", 0) == anchor,
                    param_groups=groups,
                    lora_params=lora,
                    lora_targets=base["lora_targets"],
                    trainable_params=fusion + lora,
                    base_params=base["total"],
                    base_breakdown={k: base[k] for k in ("vision", "projector", "llm", "newline")},
                    pct_params=100 * fusion / base["total"],
                    bf16_bytes=2 * fusion,
                    patch_flops=flops["total"],
                    patch_flops_official_code=flops["official_code_total"] if mode == "official" else None,
                    flop_groups={k: v for k, v in flops.items() if not k.endswith("total") and v},
                    llm_prefill_flops=llm_flops,
                    pct_flops=100 * flops["total"] / llm_flops,
                    paper_patch_tflops=PAPER[size]["patch_tflops"][channel],
                    paper_llm_tflops=PAPER[size]["llm_tflops"],
                )
            )
    return rows


# -------------------------------------------------------------------------------------------------------- report


def _m(value: float) -> str:
    return f"{value / 1e6:,.3f}M"


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'size':<5} {'patch':<5} {'mode':<8} {'side':>6} {'fusion params':>14} {'official-v_lin':>14} "
        f"{'LoRA':>12} {'base':>15} {'%params':>8} {'bf16 MB':>8} {'patch GF':>9} {'paper GF':>8} "
        f"{'LLM TF':>7} {'paper TF':>8} {'%FLOPs':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        anchor = "-" if r["official_anchor_without_v_linear"] is None else f"{r['official_anchor_without_v_linear']:,}"
        lines.append(
            f"{r['size']:<5} {r['side_channel']:<5} {r['mode']:<8} {r['side_tokens']:>6} {r['fusion_params']:>14,} "
            f"{anchor:>14} {r['lora_params']:>12,} {r['base_params']:>15,} "
            f"{r['pct_params']:>8.4f} {r['bf16_bytes'] / 1e6:>8.2f} {r['patch_flops'] / 1e9:>9.2f} "
            f"{r['paper_patch_tflops'] * 1e3:>8.0f} {r['llm_prefill_flops'] / 1e12:>7.2f} "
            f"{r['paper_llm_tflops']:>8.2f} {r['pct_flops']:>7.4f}"
        )
    return "\n".join(lines)


def format_checks(rows: list[dict[str, Any]]) -> str:
    lines = []
    for size in dict.fromkeys(r["size"] for r in rows):
        ours = [r for r in rows if r["size"] == size]
        first, paper = ours[0], PAPER[size]
        b = first["base_breakdown"]
        lines.append(
            f"{size}: base {first['base_params']:,} (vision {b['vision']:,}, projector {b['projector']:,}, LLM "
            f"{b['llm']:,}, newline {b['newline']:,}); paper {paper['base'] / 1e9:.1f}B"
        )
        lines.append(
            f"{size}: LoRA r={LORA_RANK} on {first['lora_targets']} projections: {first['lora_params']:,} "
            f"(paper {_m(paper['lora'])}); LoRA + official patch with v_linear "
            f"{first['lora_params'] + OFFICIAL_PARAMS[size]:,} (paper trainable {_m(paper['trainable'])})"
        )
        for r in ours:
            if r["mode"] != "official":
                continue
            verdict = "OK" if r["matches_official"] else "MISMATCH"
            extra = f" + position_3d {r['position_3d_params']:,} = {r['fusion_params']:,}" * bool(
                r["position_3d_params"]
            )
            lines.append(
                f"{size} {r['side_channel']} official mode: {r['fusion_params_without_position_3d']:,}{extra}; "
                f"official {OFFICIAL_PARAMS[size]:,} - v_linear {OFFICIAL_V_LINEAR:,} = "
                f"{r['official_anchor_without_v_linear']:,} -> {verdict}; FLOPs as the official code runs them "
                f"(second k_linear for values): {r['patch_flops_official_code'] / 1e9:.2f} GF"
            )
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by = {(r["size"], r["side_channel"], r["mode"]): r for r in rows}
    for size in dict.fromkeys(r["size"] for r in rows):
        tag = size.replace(".", "")
        for channel, mode, suffix in (
            ("audio", "paper", ""),
            ("audio", "official", "_official"),
            ("3d", "paper", "_3d"),
            ("3d", "official", "_3d_official"),
        ):
            r = by[(size, channel, mode)]
            out[f"patch_params{suffix}_{tag}"] = r["fusion_params"]
            out[f"patch_pct_params{suffix}_{tag}"] = round(r["pct_params"], 6)
            out[f"patch_flops{suffix}_{tag}"] = r["patch_flops"]
            out[f"patch_pct_flops{suffix}_{tag}"] = round(r["pct_flops"], 6)
            out[f"patch_bf16_bytes{suffix}_{tag}"] = r["bf16_bytes"]
        out[f"patch_params_3d_official_without_position_3d_{tag}"] = by[(size, "3d", "official")][
            "fusion_params_without_position_3d"
        ]
        out[f"official_anchor_without_v_linear_{tag}"] = OFFICIAL_PARAMS[size] - OFFICIAL_V_LINEAR
        out[f"official_matches_{tag}"] = all(
            r["matches_official"] for r in rows if r["size"] == size and r["mode"] == "official"
        )
        out[f"lora_params_{tag}"] = by[(size, "audio", "paper")]["lora_params"]
        out[f"base_params_{tag}"] = by[(size, "audio", "paper")]["base_params"]
        out[f"llm_prefill_flops_{tag}"] = by[(size, "audio", "paper")]["llm_prefill_flops"]
    out["rows"] = [
        {k: v for k, v in r.items() if k not in ("param_groups", "flop_groups", "base_breakdown")} for r in rows
    ]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = [row for size in args.sizes for row in measure_size(size)]
    print(format_table(rows))
    print()
    print(format_checks(rows))
    for r in rows:
        groups = ", ".join(f"{k} {v:,}" for k, v in r["param_groups"].items())
        flops = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in r["flop_groups"].items())
        print(f"{r['size']} {r['side_channel']} {r['mode']}: params [{groups}]; GFLOPs [{flops}]")
    result = summary(rows)
    result["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result, separators=(",", ":")))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
