"""Pure analysis of measured (or simulated) data: the same live and in replay.

Nothing here imports bluesky, the devices or the twin: the functions take arrays
with units in their names and return small frozen results.
"""

from ._lifetimes import (
    BiexcitonFit,
    ExponentialFit,
    GainLifetime,
    biexciton_lifetime,
    fit_exponential,
    gain_lifetime,
)
from ._polarization import PolarizationFit, polarization_ratio
from ._spectra import SpectralPeak, peak_shift_meV, spectral_peak
from ._thresholds import AnalysisError, Crossing, KinkFit, kink_threshold, kink_threshold_windowed, level_crossing
from ._vsl import Plateau, VslFit, plateau_level, vsl_gain

__all__ = [
    "AnalysisError",
    "BiexcitonFit",
    "Crossing",
    "ExponentialFit",
    "GainLifetime",
    "KinkFit",
    "Plateau",
    "PolarizationFit",
    "SpectralPeak",
    "VslFit",
    "biexciton_lifetime",
    "fit_exponential",
    "gain_lifetime",
    "kink_threshold",
    "kink_threshold_windowed",
    "level_crossing",
    "peak_shift_meV",
    "plateau_level",
    "polarization_ratio",
    "spectral_peak",
    "vsl_gain",
]
