"""One sample's predicted figures of merit, from the noiseless model.

Lifetimes are what the TA experiment would read on the noiseless twin (the same
fits the lab uses, ``plans.analysis``): the biexciton Auger lifetime from the
high/low pump subtraction, the gain lifetime from the zero crossing of
alpha/alpha0 at 3x the gain threshold. The model's neutral-biexciton parameter
is reported beside it (``tau_xx_neutral_ps``): in partly charged films the two differ.
"""

from __future__ import annotations

import math

import numpy as np

from plans.analysis import biexciton_lifetime, gain_lifetime
from twin import dfb as dfb_model
from twin import dynamics
from twin.ase import ase_threshold_uJ_cm2
from twin.gain import check_doping, film_kappa, modal_gain_per_cm
from twin.occupancy import gain_threshold
from twin.presets import PresetFile

__all__ = ["PREDICT_STRIPE_LENGTH_UM", "predict"]

#: Stripe length at which the ASE threshold is predicted, um.
PREDICT_STRIPE_LENGTH_UM = 1000.0


def predict(presets: PresetFile, sample_id: str, doping: float | None = None) -> dict:
    """Gain threshold, ASE and DFB thresholds, g_net at 2200 uJ/cm^2 and lifetimes; units in the keys.

    * ``gain_threshold_N``: <N_th> (excitons/dot, nominal scale) where the band-edge gain is zero;
    * ``ase_threshold_uJ_cm2`` / ``ase_threshold_N``: ASE onset of a 1 mm stripe;
    * ``dfb_threshold_uJ_cm2``: lasing threshold of the sample's DFB device (null without one);
    * ``gnet_2200_per_cm``: net modal gain at the gain peak at 2200 uJ/cm^2 (uniform pumping);
    * ``tau_xx_ps``: biexciton Auger lifetime read by TA; ``tau_xx_neutral_ps``: the model's parameter;
    * ``tau_gain_ps``: gain lifetime at 3x <N_th>.
    """
    sample = presets.get(sample_id)
    d = float(sample.doping_ne if doping is None else check_doping(doping, sample))
    n_th = float(gain_threshold(d, sample.degeneracy, sample.doping_distribution, sample.exciton_yield))
    ase = float(ase_threshold_uJ_cm2(PREDICT_STRIPE_LENGTH_UM, d, sample, presets.setup))
    kappa = film_kappa(sample.film)
    dfb_thr = float(dfb_model.dfb_threshold_uJ_cm2(sample, doping=d)) if sample.dfb is not None else math.nan
    return {
        "sample": sample_id,
        "doping": d,
        "gain_threshold_N": n_th,
        "ase_threshold_uJ_cm2": ase,
        "ase_threshold_N": ase * kappa,
        "dfb_threshold_uJ_cm2": dfb_thr,
        "gnet_2200_per_cm": float(modal_gain_per_cm(2200.0 * kappa, d, sample)),
        "tau_xx_ps": _observed_biexciton_lifetime(sample, d),
        "tau_xx_neutral_ps": float(dynamics.multiexciton_lifetime_ps(2, sample)),
        "tau_gain_ps": _observed_gain_lifetime(sample, d, 3.0 * max(n_th, 0.05)),
    }


def _observed_biexciton_lifetime(sample, doping: float) -> float:
    t = np.linspace(0.0, 3000.0, 301)
    high = dynamics.ta_trace(t, 1.0, sample, doping, differential=True)
    low = dynamics.ta_trace(t, 0.1, sample, doping, differential=True)
    return float(biexciton_lifetime(t, high, low).tau_ps)


def _observed_gain_lifetime(sample, doping: float, pump_excitons: float) -> float:
    t = np.linspace(0.0, 1000.0, 1001)
    trace = dynamics.ta_trace(t, pump_excitons, sample, doping)
    if not np.any(trace < 0):
        return 0.0
    return float(gain_lifetime(t, trace, noise=1e-6).tau_ps)
