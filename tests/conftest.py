"""Shared fixtures: the shipped presets, and a path to the shared reference (if present)."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.presets import load_presets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def presets():
    return load_presets()


@pytest.fixture(scope="session")
def setup(presets):
    return presets.setup
