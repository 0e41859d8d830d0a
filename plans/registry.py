"""Every measurement plan by name, with the pure function that analyses its stored data.

``PLANS[name].analyse(primary, plan_args)`` takes the run's ``primary`` stream as
columns (``{data key: array in event order}``) and the start document's
``plan_args``, and returns the results the plan recorded in its ``analysis``
stream. The plan calls the same function live, so a replay re-derives exactly
what was printed live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from plans import measurements
from plans._common import checked_first

__all__ = ["PLANS", "PlanSpec", "plan_spec"]


@dataclass(frozen=True)
class PlanSpec:
    """One measurement plan: ``plan(bench, sample_id, **kwargs)`` and ``analyse(primary, plan_args)``."""

    name: str
    plan: Callable
    analyse: Callable[[dict[str, np.ndarray], dict], dict[str, float]]
    description: str

    def start(self, bench, sample_id: str, **kwargs):
        """The plan on ``bench`` with its arguments already checked: a bad one raises here (``ValueError``,
        ``devices.LimitError``), before any run is opened or anything sent (``plans._common.checked_first``)."""
        return checked_first(self.plan(bench, sample_id, **kwargs))


PLANS: dict[str, PlanSpec] = {}


def _register(name: str, plan: Callable, analyse: Callable, description: str) -> None:
    PLANS[name] = PlanSpec(name, plan, analyse, description)


_register(
    "ase_fluence_scan",
    measurements.ase_fluence_scan,
    measurements.analyse_ase_fluence_scan,
    "ASE input-output at a fixed stripe: threshold_uJ_cm2",
)
_register("vsl_scan", measurements.vsl_scan, measurements.analyse_vsl_scan, "VSL series: gnet_per_cm")
_register(
    "ase_point",
    measurements.ase_point,
    measurements.analyse_ase_point,
    "one acquisition at a fluence and stripe length: counts_per_s, fwhm_nm",
)


def plan_spec(name: str) -> PlanSpec:
    """The plan called ``name``, or a ``KeyError`` naming the plans there are."""
    try:
        return PLANS[name]
    except KeyError:
        raise KeyError(f"unknown plan {name!r}; available: {', '.join(PLANS)}") from None


from plans import lasing  # noqa: E402

_register(
    "lasing_threshold",
    lasing.lasing_threshold,
    lasing.analyse_lasing_threshold,
    "DFB input-output: threshold_uJ_cm2 (linear-axes kink), kink_onset_uJ_cm2 (log-log)",
)
_register(
    "lasing_spectrum",
    lasing.lasing_spectrum,
    lasing.analyse_lasing_spectrum,
    "DFB spectra at one fluence: wavelength_nm, linewidth_nm (Lorentzian fit)",
)
_register(
    "polarization_scan",
    lasing.polarization_scan,
    lasing.analyse_polarization_scan,
    "analyser scan of a DFB laser: polarization_ratio, polarization_angle_deg",
)

from plans import pump_probe, stability  # noqa: E402

_register(
    "pump_probe",
    pump_probe.pump_probe,
    pump_probe.analyse_pump_probe,
    "transient absorption: gain_threshold_N (transparency at threshold_delay_ps), "
    "biexciton_lifetime_ps, gain_lifetime_ps",
)
_register(
    "stability_run",
    stability.stability_run,
    stability.analyse_stability_run,
    "hours at 10 kHz just above threshold: duration_h, drop_fraction_max, hours_to_10pct_drop, interruptions",
)

from plans import absorption  # noqa: E402

_register(
    "absorption_spectrum",
    absorption.absorption_spectrum,
    absorption.analyse_absorption_spectrum,
    "white-light dark, reference and sample over the 1S peak: doping_e_per_dot from the bleach",
)
