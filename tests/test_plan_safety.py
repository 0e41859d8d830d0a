"""The plan-level fluence check alone stops an over-limit fluence (device has no limit here)."""

from __future__ import annotations

import math

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
from ophyd.sim import SynAxis, det

from plans.safety import FluenceLimitError, fluence_guard


@pytest.fixture
def fluence():
    # a plain simulated axis: it would accept anything, so only the plan check protects it
    return SynAxis(name="fluence")


def test_allowed_fluence_goes_through(RE, fluence):
    RE(fluence_guard(bps.mv(fluence, 120.0), [fluence], 3000.0))
    assert fluence.readback.get() == pytest.approx(120.0)


@pytest.mark.parametrize("bad", [3000.5, 1e9, -1.0, math.nan, math.inf])
def test_over_limit_or_invalid_fluence_never_reaches_the_device(RE, fluence, bad):
    RE(bps.mv(fluence, 50.0))
    with pytest.raises(FluenceLimitError, match="refused by the plan"):
        RE(fluence_guard(bps.mv(fluence, bad), [fluence], 3000.0))
    assert fluence.readback.get() == pytest.approx(50.0)


def test_a_scan_stops_before_its_first_over_limit_point(RE, fluence):
    seen = []
    with pytest.raises(FluenceLimitError):
        RE(fluence_guard(bp.scan([det], fluence, 1000.0, 4000.0, 4), [fluence], 3000.0), lambda n, d: seen.append(n))
    # 1000 and 2000 were measured, 3000 is allowed, 4000 was refused before any move
    assert fluence.readback.get() == pytest.approx(3000.0)
    assert seen.count("event") == 3


def test_other_devices_are_not_checked(RE, fluence):
    other = SynAxis(name="slit")
    RE(fluence_guard(bps.mv(other, 5000.0), [fluence], 3000.0))
    assert other.readback.get() == pytest.approx(5000.0)


def test_bad_limit_is_refused(fluence):
    inner = bps.mv(fluence, 1.0)
    with pytest.raises(FluenceLimitError, match="positive"):
        fluence_guard(inner, [fluence], math.nan)
    inner.close()
