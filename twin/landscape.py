"""The optimisation landscape: ASE threshold versus stripe length and doping.

The twin's threshold F_th(L, <n_e>) (``twin.ase.ase_threshold_uJ_cm2``) has an
interior minimum, each side for a physical reason:

* short stripes: the gain-length product for the ASE onset must be built over
  a short length, so the gain, and the fluence, must be high;
* long stripes: the pump line is Gaussian along its length, so the ends of a
  long stripe are pumped weakly and absorb what the centre amplifies (and the
  charged-exciton Auger decay eats more of the inversion during the longer ASE
  transit);
* light doping: Pauli blocking of the 1S absorption is weak, so many excitons
  per dot are needed (up to <N_th> = 4 for neutral dots);
* heavy doping: as the 1S level fills, electrons spill into 1P (Poisson
  statistics), adding intraband absorption, and the trion Auger rate grows as
  n(n + 1), shortening the gain lifetime.

A stripe is feasible only if its threshold fluence can be delivered: the laser's
pulse energy caps fluence x pumped area (``twin.ase.max_fluence_uJ_cm2``), and no
fluence may exceed the setup's limit or the film's damage fluence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from .ase import ase_threshold_uJ_cm2, max_fluence_uJ_cm2
from .occupancy import doping_range
from .presets import Sample, SetupParams

__all__ = ["Optimum", "feasible_threshold", "find_optimum", "threshold_map"]


@dataclass(frozen=True)
class Optimum:
    """The lowest feasible ASE threshold of a sample and where it is."""

    threshold_uJ_cm2: float
    stripe_length_um: float
    doping: float
    sample: str

    def as_dict(self) -> dict:
        return {
            "threshold_uJ_cm2": self.threshold_uJ_cm2,
            "stripe_length_um": self.stripe_length_um,
            "doping": self.doping,
            "sample": self.sample,
        }


def feasible_threshold(stripe_length_um, doping, sample: Sample, setup: SetupParams) -> np.ndarray:
    """ASE threshold (uJ/cm^2), ``inf`` where it cannot be reached safely with the laser's pulse energy."""
    thr = ase_threshold_uJ_cm2(stripe_length_um, doping, sample, setup)
    cap = np.minimum(max_fluence_uJ_cm2(stripe_length_um, setup), sample.damage.damage_fluence_uJ_cm2)
    return np.where(thr <= cap, thr, np.inf)


def threshold_map(sample: Sample, setup: SetupParams, n_length: int = 60, n_doping: int = 60):
    """Feasible threshold on a grid: (stripe lengths um (log-spaced), dopings, thresholds [doping, length])."""
    lengths = np.geomspace(setup.stripe_length_min_um, setup.stripe_length_max_um, n_length)
    lo, hi = doping_range(sample.degeneracy, sample.doping_distribution)
    dopings = np.linspace(lo, hi, n_doping)
    thr = feasible_threshold(lengths[None, :], dopings[:, None], sample, setup)
    return lengths, dopings, thr


def find_optimum(sample: Sample, setup: SetupParams, name: str = "") -> Optimum:
    """Dense grid search of the model, then a bounded local refinement from the best grid point."""
    lengths, dopings, thr = threshold_map(sample, setup)
    if not np.any(np.isfinite(thr)):
        raise ValueError(f"sample {name!r} reaches no ASE threshold within the setup's pulse energy and limits")
    j, i = np.unravel_index(np.argmin(thr), thr.shape)
    lo, hi = doping_range(sample.degeneracy, sample.doping_distribution)
    log_lo, log_hi = np.log(setup.stripe_length_min_um), np.log(setup.stripe_length_max_um)

    def objective(p):
        length = float(np.exp(np.clip(p[0], log_lo, log_hi)))
        d = float(np.clip(p[1], lo, hi))
        v = float(feasible_threshold(length, d, sample, setup))
        return v if np.isfinite(v) else 1e12

    x0 = np.array([np.log(lengths[i]), dopings[j]])
    res = optimize.minimize(
        objective,
        x0,
        method="Nelder-Mead",
        options={"xatol": 1e-4, "fatol": 1e-6, "initial_simplex": x0 + np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.05]])},
    )
    best = res.x if res.fun <= thr[j, i] else x0
    length = float(np.exp(np.clip(best[0], log_lo, log_hi)))
    d = float(np.clip(best[1], lo, hi))
    return Optimum(float(feasible_threshold(length, d, sample, setup)), length, d, name)
