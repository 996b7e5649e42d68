"""Fixtures for tests that talk to the Hub: a local `FakeHub` on 127.0.0.1, alone or with this interpreter pointed
at it (environment and import-time constants) and a fresh HF_HOME under the test's tmp_path."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from videoadapt.testing.hub_server import FakeHub, fake_hub_environment


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A started FakeHub (user "tester", token "hf_fake"), stopped after the test."""
    with FakeHub() as hub:
        yield hub


@pytest.fixture
def hub_env(fake_hub: FakeHub, tmp_path: Path) -> Iterator[FakeHub]:
    """`fake_hub`, with huggingface_hub/transformers/peft in this process using it and `tmp_path / "hf_home"`."""
    with fake_hub_environment(fake_hub, tmp_path / "hf_home") as hub:
        yield hub
