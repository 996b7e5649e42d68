"""Shared fixtures: tiny random checkpoints of the real transformers base classes, built offline once per session."""

from pathlib import Path

import pytest

from videoadapt.testing.tiny_models import build_all_tiny_checkpoints


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Family name (see `TINY_FAMILIES`) -> checkpoint folder, loadable with `from_pretrained`."""
    return build_all_tiny_checkpoints(tmp_path_factory.mktemp("tiny_checkpoints"))
