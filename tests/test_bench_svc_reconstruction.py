"""bench/svc_reconstruction.py at tiny sizes: the JSON report, the baselines against literal references, the data
generator's structure (shots, smoothness, determinism), errors."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

from videoadapt.layers.video_compressor import token_cosine


SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "svc_reconstruction.py"
QUICK = ["--quick", "--threads", "1"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_svc_reconstruction", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(bench, argv):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = bench.main(argv)
    return result, printed.getvalue()


@pytest.fixture(scope="module")
def report(bench):
    return run(bench, QUICK)


def test_quick_report(bench, report):
    result, printed = report
    assert json.loads(printed.strip().splitlines()[-1]) == result  # the last printed line is the JSON object
    assert result["compression"] == 64 and result["grid"] == [8, 8, 8] and result["latent_grid"] == [2, 2, 2]
    d = 1408
    conv_block = d * (d // 4) * 9 + d // 4 + (d // 4) * d * 3 + d
    assert result["params_d1408"] == 6 * conv_block and result["params_d1408_autoencoder"] == 12 * conv_block
    assert result["params_paper"] == 65_000_000 and result["avgpool_upsampling"] == "nearest"
    for key in (
        "cosine_svc",
        "cosine_avgpool",
        "cosine_avgpool_trilinear",
        "cosine_clip_mean",
        "cosine_noise_ceiling",
    ):
        assert -1.0 <= result[key] <= 1.0, key
    assert result["cosine_clip_mean"] < result["cosine_avgpool"] < result["cosine_noise_ceiling"]
    assert result["target_met"] == (result["cosine_svc"] >= 0.9)
    assert result["steps"] == 20 and result["dim"] == 16 and result["generator"]["width"] == 16
    assert result["loss_first"] > 0 and result["loss_last"] > 0
    assert "SVC (ours)" in printed and "avg-pool 4x4x4" in printed
    assert torch.get_num_threads() >= 1


def test_reported_baselines_match_a_recomputation(bench, report):
    result, _ = report
    settings = bench.ClipSettings(frames=8, grid=8, width=16)
    test = bench.synthetic_clips(4, settings, bench.TEST_SEED_OFFSET)
    pooled = test.reshape(4, 2, 4, 2, 4, 2, 4, 16).mean((2, 4, 6))  # literal 4 x 4 x 4 block means
    nearest = pooled.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert result["cosine_avgpool"] == round(token_cosine(nearest, test).mean().item(), 4)
    torch.testing.assert_close(bench.avgpool_reconstruction(test, 4), nearest, atol=1e-6, rtol=0)


def test_trilinear_baseline_interpolates_block_means(bench):
    x = torch.arange(8.0).reshape(1, 8, 1, 1, 1).expand(1, 8, 4, 4, 1).contiguous()  # a ramp in time
    out = bench.avgpool_reconstruction(x, 4, "trilinear")
    # block means 1.5 and 5.5 at block centres 1.5 and 5.5: interior frames 2..5 are on the line, the ends clamp
    expected = torch.tensor([1.5, 1.5, 2.0, 3.0, 4.0, 5.0, 5.5, 5.5])
    torch.testing.assert_close(out[0, :, 0, 0, 0], expected)


def test_generator_structure(bench):
    settings = bench.ClipSettings(frames=32, grid=16, width=12)
    a, b = bench.synthetic_clips(3, settings, seed=5), bench.synthetic_clips(3, settings, seed=5)
    assert a.shape == (3, 32, 16, 16, 12) and torch.equal(a, b)  # seeded
    assert torch.equal(bench.synthetic_clips(1, settings, seed=6)[0], a[1])  # clip i uses seed + i
    clean = bench.synthetic_clips(3, settings, seed=5, clean=True)
    assert abs((a - clean).std().item() - settings.noise) < 0.01
    # shots: the largest frame-to-frame jump of the coefficients is at a shot start; within shots they are smooth
    found_cut = False
    for seed in range(6):
        coef, starts = bench.clip_coefficients(settings, torch.Generator().manual_seed(seed))
        jumps = (coef[1:] - coef[:-1]).square().mean((1, 2, 3))  # [T - 1], jump into frame t + 1
        inside = [j for t, j in enumerate(jumps.tolist()) if t + 1 not in starts]
        if len(starts) > 1:
            found_cut = True
            assert min(jumps[s - 1].item() for s in starts[1:]) > 3 * max(inside)
        spatial = (coef[:, 1:] - coef[:, :-1]).square().mean()
        assert spatial < 0.5 * coef.var()  # neighbouring tokens are alike
    assert found_cut


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dim", "18"], r"`--dim` must be a multiple of 4 \(the bottleneck ratio\), got 18"),
        (["--frames", "6"], r"`--frames` must be a multiple of 4 \(the compression factor per axis\), got 6"),
        (["--grid", "10"], r"`--grid` must be a multiple of 4 \(the compression factor per axis\), got 10"),
        (["--steps", "0"], r"`--steps` must be >= 1, got 0"),
        (["--test-clips", "0"], r"`--test-clips` must be >= 1, got 0"),
        (["--lr", "0"], r"`--lr` must be > 0, got 0.0"),
    ],
)
def test_argument_errors(bench, argv, message):
    with pytest.raises(ValueError, match=message):
        bench.main([*QUICK, *argv])
