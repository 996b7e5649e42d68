"""Shared fixtures: tiny random checkpoints of the real transformers base classes, built offline once per session."""

from pathlib import Path

import pytest

from videoadapt.testing.tiny_models import build_all_tiny_checkpoints


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Family name (see `TINY_FAMILIES`) -> checkpoint folder, loadable with `from_pretrained`."""
    return build_all_tiny_checkpoints(tmp_path_factory.mktemp("tiny_checkpoints"))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The tiny models of the suite run fastest on one intra-op thread (and do not slow down when the CI machine's
    cores are busy: with two threads, a tiny matmul waits for a busy core)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
