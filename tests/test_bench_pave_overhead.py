"""bench/pave_overhead.py: parameter and FLOP overhead of PAVE patches on LLaVA-OneVision 0.5B and 7B (meta device)."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "pave_overhead.py"


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("bench_pave_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(overhead):
    """(returned dict, printed text) of one run over both sizes: all on the meta device, a few seconds."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = overhead.main([])
    return result, printed.getvalue()


def test_official_mode_matches_the_official_counts_minus_v_linear(report):
    result, _ = report
    assert result["patch_params_official_05b"] == 6_235_776 - 525_312 == 5_710_464
    assert result["patch_params_official_7b"] == 8_996_352 - 525_312 == 8_471_040
    # the 3d patch is the same module plus our xyz position MLP (3 -> 512 -> 512), which the official code lacks
    for tag in ("05b", "7b"):
        assert result[f"patch_params_3d_official_without_position_3d_{tag}"] == result[f"patch_params_official_{tag}"]
        assert (
            result[f"patch_params_3d_official_{tag}"] - result[f"patch_params_official_{tag}"]
            == 3 * 512 + 512 + 512 * 512 + 512
        )
        assert result[f"official_matches_{tag}"] is True


def test_lora_counts_match_the_paper(report):
    result, _ = report
    assert result["lora_params_7b"] == 161_480_704  # r * (in + out) over 28 layers x 7 projections; paper 161.5M
    assert result["lora_params_05b"] == 35_192_832  # paper 35.2M
    assert abs(result["lora_params_7b"] - 161.5e6) / 161.5e6 < 1e-3
    assert abs(result["lora_params_05b"] - 35.2e6) / 35.2e6 < 1e-3


def test_json_keys_and_sane_percentages(report):
    result, out = report
    assert json.loads(out.strip().splitlines()[-1]) == result  # the last printed line is the JSON object
    for key in ("patch_params_7b", "patch_pct_params_7b", "patch_pct_flops_7b", "patch_params_05b", "lora_params_7b"):
        assert key in result
    for tag in ("05b", "7b"):
        for suffix in ("", "_official"):  # the audio patch
            assert 0 < result[f"patch_pct_params{suffix}_{tag}"] < 1
            assert 0 < result[f"patch_pct_flops{suffix}_{tag}"] < 1
    for suffix in ("", "_official", "_3d", "_3d_official"):  # the paper's ~0.1% holds for 7B
        assert 0.05 < result[f"patch_pct_params{suffix}_7b"] < 0.2
        assert 0.05 < result[f"patch_pct_flops{suffix}_7b"] < 0.25
    # the LLM prefill count lands near the paper's LLM-Viewer numbers (98.53 and 8.01 TFLOPs)
    assert abs(result["llm_prefill_flops_7b"] / 98.53e12 - 1) < 0.01
    assert abs(result["llm_prefill_flops_05b"] / 8.01e12 - 1) < 0.02
    assert result["patch_bf16_bytes_official_7b"] == 2 * result["patch_params_official_7b"]
