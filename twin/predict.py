"""One sample's predicted figures of merit, straight from the model (no simulated noise)."""

from __future__ import annotations

import math

from . import dfb as dfb_model
from . import dynamics
from .ase import ase_threshold_uJ_cm2
from .gain import check_doping, film_kappa, modal_gain_per_cm
from .occupancy import gain_threshold
from .presets import PresetFile

__all__ = ["PREDICT_STRIPE_LENGTH_UM", "predict"]

#: Stripe length at which the ASE threshold is predicted, um.
PREDICT_STRIPE_LENGTH_UM = 1000.0


def predict(presets: PresetFile, sample_id: str, doping: float | None = None) -> dict:
    """Gain threshold, ASE and DFB thresholds, g_net at 2200 uJ/cm^2 and lifetimes; units in the keys.

    * ``gain_threshold_N``: <N_th> (excitons/dot, nominal scale) where the band-edge gain is zero;
    * ``ase_threshold_uJ_cm2`` / ``ase_threshold_N``: ASE onset of a 1 mm stripe;
    * ``dfb_threshold_uJ_cm2``: lasing threshold of the sample's DFB device (null without one);
    * ``gnet_2200_per_cm``: net modal gain at the gain peak at 2200 uJ/cm^2 (uniform pumping);
    * ``tau_xx_ps``: biexciton Auger lifetime; ``tau_gain_ps``: gain lifetime at 3x <N_th>.
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
        "tau_xx_ps": float(dynamics.multiexciton_lifetime_ps(2, sample)),
        "tau_gain_ps": float(dynamics.gain_lifetime_ps(3.0 * max(n_th, 0.05), sample, doping=d)),
    }
