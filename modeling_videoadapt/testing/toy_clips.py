"""Short synthetic videos with audio-like side-channel features, the raw material of the tests' toy manifests."""

from pathlib import Path

import torch

from videoadapt.processors.side_channels import SideChannelFeatures
from videoadapt.processors.synthetic import random_spec, write_synthetic_video


__all__ = ["write_toy_clips"]


def write_toy_clips(root: str | Path, count: int) -> list[dict]:
    """Write `count` clips into `root`: `v{i}.mp4` (24 frames at 12 fps, 64 x 48, one cut, seed i) and
    `a{i}.safetensors` (8-d "audio" features [2, 1, 1, 8] at 0.5 s and 1.5 s, seed i). Returns, per clip, the
    manifest fields naming them: {"video": ..., "side_channels": {"audio": ...}}, relative to `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        spec = random_spec(seed=i, num_frames=24, fps=12.0, width=64, height=48, num_cuts=1, with_audio=False)
        write_synthetic_video(root / f"v{i}.mp4", spec)
        features = torch.randn(2, 1, 1, 8, generator=torch.Generator().manual_seed(i))
        SideChannelFeatures("audio", features, torch.tensor([0.5, 1.5])).save(root / f"a{i}.safetensors")
        clips.append({"video": f"v{i}.mp4", "side_channels": {"audio": f"a{i}.safetensors"}})
    return clips
