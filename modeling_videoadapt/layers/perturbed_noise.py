"""The reproducible Gaussian noise of the perturbed top-k (`perturbed_topk.py`).

Block b of `NOISE_BLOCK_ROWS` rows is `normal_` on a float32 [rows_in_block, n, N] slice from a `torch.Generator` on
the scores' device seeded with `block_seed(seed, b)`, so the noise of a row does not depend on how rows are chunked.

Shape legend: R rows, n noise samples, N tokens per row.
"""

import torch


__all__ = ["NOISE_BLOCK_ROWS", "block_seed", "perturbed_noise"]

NOISE_BLOCK_ROWS = 8
_SEED_STRIDE = 0x9E3779B97F4A7C15  # golden-ratio increment: nearby user seeds get unrelated block seeds


def block_seed(seed: int, block: int) -> int:
    """Seed of noise block `block` (rows [block * NOISE_BLOCK_ROWS, ...)): (seed + block * 0x9E37...15) mod 2**64."""
    return (seed + block * _SEED_STRIDE) % 2**64


def _fill_noise(out: torch.Tensor, seed: int, first_row: int) -> torch.Tensor:
    """Fill float32 out [c, n, N] with the noise of rows first_row..first_row + c (first_row on a block boundary)."""
    generator = torch.Generator(device=out.device)
    for start in range(0, out.shape[0], NOISE_BLOCK_ROWS):
        generator.manual_seed(block_seed(seed, (first_row + start) // NOISE_BLOCK_ROWS))
        out[start : start + NOISE_BLOCK_ROWS].normal_(generator=generator)
    return out


def perturbed_noise(
    seed: int, rows: int, num_samples: int, num_tokens: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The standard normal noise Z float32 [rows, num_samples, num_tokens] that the layer draws for `seed`."""
    empty = torch.empty(rows, num_samples, num_tokens, dtype=torch.float32, device=device)
    return _fill_noise(empty, seed, 0)


def _resolve_seed(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is None:
        device = generator.device if generator is not None else "cpu"
        return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=device).item())
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"`seed` must be an int or None, got {type(seed).__name__}; pass e.g. `seed=0`.")
    return seed % 2**64
