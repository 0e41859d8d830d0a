"""Fixtures of the fault suite: one ``FaultEnv`` per module; a missing service skips, naming it."""

from __future__ import annotations

import pytest

from harness.faults import FaultEnv, ServiceMissing


@pytest.fixture(scope="module")
def fault_env(tmp_path_factory):
    env = FaultEnv(tmp_path_factory.mktemp("faults"))
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def run_scenario(fault_env, tmp_path):
    """``run_scenario(fn, **options)``: the scenario's ``FaultFigures``; skips if a service is missing."""

    def run(fn, **options):
        try:
            return fn(tmp_path, fault_env, **options)
        except ServiceMissing as exc:
            pytest.skip(str(exc))

    return run
