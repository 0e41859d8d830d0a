"""Device faults over EPICS and in-process (issue 7, items 5-7): stuck slit motor and the campaign breaker,
bad readbacks from the IOC, interlock and pump-power drops in every acquiring plan.

Each test runs a scenario of ``harness/faults/devices.py`` (real IOC subprocess or in-process twin,
real RunEngine, plans and optimiser) and asserts on its figures and on every specific check it made. The
scenarios over Channel Access run under both of ophyd's control layers (``control_layer``: ids end in
``[caproto]``/``[pyepics]``)."""

from __future__ import annotations

import pytest

from harness.faults.devices import (
    scenario_bad_readbacks,
    scenario_interlock_every_plan,
    scenario_interlock_ioc,
    scenario_stuck_motor,
)

pytestmark = pytest.mark.slow(seconds=70)  # one of the longest modules: it runs early (tests/conftest.py)


def _failed(figures) -> list[str]:
    return [name for name, ok in figures.checks.items() if not ok]


def test_stuck_slit_motor_fails_the_run_and_the_breaker_stops_the_campaign(run_scenario, control_layer):
    figures = run_scenario(scenario_stuck_motor, control_layer=control_layer)
    assert _failed(figures) == [], figures.detail
    assert figures.detail.endswith(f"; control layer {control_layer}")
    assert set(figures.checks) >= {
        "plan_failed",
        "reason_names_motor_and_timeout",
        "breaker_stopped_after_5",
        "breaker_says_why",
        "failed_trials_recorded_with_reasons",
        "nothing_reaches_the_optimiser",
    }
    assert figures.ok and figures.trials_lost == 0


def test_bad_readbacks_never_reach_the_optimiser_and_proposals_stay_in_bounds(run_scenario, control_layer):
    figures = run_scenario(scenario_bad_readbacks, control_layer=control_layer)
    assert _failed(figures) == [], figures.detail
    assert figures.detail.endswith(f"; control layer {control_layer}")
    assert len(figures.checks) == 2 * 5 + 4  # NaN, inf, missing, string, out-of-range; recovery
    kinds = {name.split(":")[1] for name in figures.checks if name.startswith("SIM:")}
    assert kinds == {"Fault-NaN", "Fault-Inf", "Fault-Missing", "Fault-String", "Fault-OutOfRange"}
    assert "is missing: no reading" in figures.detail and " counts': not a number" in figures.detail
    assert figures.ok and figures.trials_lost == 0


def test_interlock_and_pump_power_drops_in_every_plan_are_waited_out(run_scenario):
    figures = run_scenario(scenario_interlock_every_plan)
    assert _failed(figures) == [], figures.detail
    plans = {name.split(":")[0] for name in figures.checks if not name.startswith("campaign")}
    assert plans == {
        "ase_fluence_scan",
        "vsl_scan",
        "ase_point",
        "lasing_threshold",
        "lasing_spectrum",
        "polarization_scan",
        "pump_probe",
        "stability_run",
    }
    assert figures.ok and figures.trials_lost == 0 and figures.trials_doubled == 0
    assert figures.recovery_s >= 0


def test_interlock_tripped_over_channel_access_mid_scan_is_waited_out(run_scenario, control_layer):
    figures = run_scenario(scenario_interlock_ioc, control_layer=control_layer)
    assert _failed(figures) == [], figures.detail
    assert figures.detail.endswith(f"; control layer {control_layer}")
    assert len(figures.checks) == 6 and figures.ok
    assert figures.recovery_s == pytest.approx(figures.recovery_s)  # a number: an event came after the restore
