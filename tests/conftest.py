"""Shared fixtures: the shipped presets, and a path to the shared reference (if present)."""

from __future__ import annotations

import os
from pathlib import Path

# With several xdist workers sharing the cores, one math thread each (torch, BLAS) -- and in
# the subprocesses they start -- avoids oversubscribing the cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import pytest

from twin.presets import load_presets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def presets():
    return load_presets()


@pytest.fixture(scope="session")
def setup(presets):
    return presets.setup


@pytest.fixture
def RE():
    """A fresh RunEngine for each test (plans return their results)."""
    from bluesky import RunEngine

    return RunEngine({}, call_returns_result=True)
