"""Pure analysis of measured (or simulated) data: the same live and in replay.

Nothing here imports bluesky, the devices or the twin: the functions take arrays
with units in their names and return small frozen results. ``counts_per_s`` and
``input_output`` turn a run's spectrometer columns into rates; the ``analyse_*``
functions of the DFB plans (``plans.lasing``) are here with their line and
threshold fits.
"""

from ._absorption import (
    ABSORPTION_REASONS,
    AbsorptionError,
    DopingMeasurement,
    absorbance_from_counts,
    analyse_absorption_spectrum,
    doping_from_absorbance,
)
from ._counts import PEAK_HALF_WIDTH_PX, counts_per_s, input_output
from ._lasing import (
    LINE_HALF_WIDTHS_PX,
    THRESHOLD_FIT_MIN_POINTS,
    THRESHOLD_WINDOWS,
    LorentzianLine,
    analyse_lasing_spectrum,
    analyse_lasing_threshold,
    analyse_polarization_scan,
    fit_lorentzian_line,
    hinge_breakpoint,
)
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
from ._thresholds import (
    AnalysisError,
    Crossing,
    KinkFit,
    first_where,
    kink_threshold,
    kink_threshold_windowed,
    level_crossing,
)
from ._vsl import Plateau, VslFit, plateau_level, vsl_gain

__all__ = [
    "ABSORPTION_REASONS",
    "LINE_HALF_WIDTHS_PX",
    "PEAK_HALF_WIDTH_PX",
    "THRESHOLD_FIT_MIN_POINTS",
    "THRESHOLD_WINDOWS",
    "AbsorptionError",
    "AnalysisError",
    "BiexcitonFit",
    "Crossing",
    "DopingMeasurement",
    "ExponentialFit",
    "GainLifetime",
    "KinkFit",
    "LorentzianLine",
    "Plateau",
    "PolarizationFit",
    "SpectralPeak",
    "VslFit",
    "absorbance_from_counts",
    "analyse_absorption_spectrum",
    "analyse_lasing_spectrum",
    "analyse_lasing_threshold",
    "analyse_polarization_scan",
    "biexciton_lifetime",
    "counts_per_s",
    "doping_from_absorbance",
    "first_where",
    "fit_exponential",
    "fit_lorentzian_line",
    "gain_lifetime",
    "hinge_breakpoint",
    "input_output",
    "kink_threshold",
    "kink_threshold_windowed",
    "level_crossing",
    "peak_shift_meV",
    "plateau_level",
    "polarization_ratio",
    "spectral_peak",
    "vsl_gain",
]
