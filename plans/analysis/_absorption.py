"""A film's doping from the bleach of its first excitonic (1S) absorption, against a neutral reference.

The paper's method: the doping electrons fill the 1S level (degeneracy g = 8 in PbS) and bleach
its absorption, so <n_e> = g (1 - alpha_doped / alpha_neutral) at the 1S peak, against a neutral
(undoped) film of the same dots. Read over the whole peak rather than at one pixel, with the
film's thickness and the lamp's level not assumed, the measured absorbance (OD) is fitted as::

    A(lambda) = a * N(lambda) + c * S(lambda) + k

``N``: the neutral reference's absorbance, ``S``: its 1S band (the part doping bleaches; the
higher transitions to the blue are not bleached and fix the film's scale ``a``: its thickness and
packing relative to the reference), ``k``: a constant (the lamp's drift between the reference and
the sample reads, the substrate's reflection). Then the 1S band left is ``a + c`` of the
reference's, and::

    <n_e> = g * (-c / a)

Its uncertainty is propagated from the fit's covariance: weighted by the absorbance's
per-pixel errors (from the counts' shot noise and the dark's scatter) when given, and scaled by
the reduced chi-square when that exceeds 1 (a model that fits worse than the noise says is not
trusted more than it fits); without errors, from the residual scatter.

``analyse_absorption_spectrum`` turns the run's primary stream (dark, reference and sample
reads of the spectrometer with the lamp's readbacks) into absorbance and its errors and calls
``doping_from_absorbance``. Each way it can fail is an ``AbsorptionError`` with a ``reason``
(``ABSORPTION_REASONS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._thresholds import AnalysisError

__all__ = [
    "ABSORPTION_REASONS",
    "MAX_ABSORBANCE_OD",
    "MAX_CHI2_RED",
    "MIN_LIGHT_COUNTS",
    "AbsorptionError",
    "DopingMeasurement",
    "absorbance_from_counts",
    "analyse_absorption_spectrum",
    "doping_from_absorbance",
]

#: Why an absorption measurement can fail (``AbsorptionError.reason``).
ABSORPTION_REASONS = (
    "saturated",
    "no_light",
    "no_reference",
    "no_dark",
    "no_sample",
    "no_neutral_reference",
    "absorbance_out_of_range",
    "bad_fit",
)
#: Largest absorbance (OD) read: above it too little light gets through for a transmission measurement.
MAX_ABSORBANCE_OD = 3.0
#: Fewest counts (dark-subtracted, median over the pixels) a reference read must have: else no light.
MIN_LIGHT_COUNTS = 1000.0
#: Largest reduced chi-square of the fit: above it the spectrum is not the reference's dots bleached.
MAX_CHI2_RED = 25.0
#: Fewest usable pixels of a fit.
MIN_PIXELS = 20
_LN10 = math.log(10.0)


class AbsorptionError(AnalysisError):
    """A film's absorption that could not be measured or read, with its ``reason`` (one of ``ABSORPTION_REASONS``)."""

    def __init__(self, reason: str, detail: str):
        if reason not in ABSORPTION_REASONS:
            raise ValueError(f"unknown absorption failure reason {reason!r}; known: {', '.join(ABSORPTION_REASONS)}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"absorption measurement failed ({self.reason}): {self.detail}"


@dataclass(frozen=True)
class DopingMeasurement:
    """A film's doping from its 1S bleach: <n_e> (electrons/dot), its 1-sigma error, and the absorption run's uid.

    ``uid`` is "" when analysed offline (``doping_from_absorbance``).
    """

    doping_e_per_dot: float
    doping_err_e_per_dot: float
    uid: str


@dataclass(frozen=True)
class _Fit:
    doping: float
    doping_err: float
    scale: float
    scale_err: float
    offset_od: float
    chi2_red: float
    pixels: int


def _fit(wavelength_nm, absorbance, neutral, neutral_1s, absorbance_err, degeneracy: int) -> _Fit:
    lam = np.asarray(wavelength_nm, dtype=float).ravel()
    a_od = np.asarray(absorbance, dtype=float).ravel()
    n_od = np.asarray(neutral, dtype=float).ravel()
    s_od = np.asarray(neutral_1s, dtype=float).ravel()
    if not (isinstance(degeneracy, int | np.integer) and not isinstance(degeneracy, bool) and degeneracy >= 1):
        raise ValueError(f"degeneracy must be a whole number >= 1 (8 for PbS), got {degeneracy!r}")
    if a_od.size != lam.size:
        raise AbsorptionError("bad_fit", f"{a_od.size} absorbance values for {lam.size} wavelengths")
    if n_od.size != lam.size or s_od.size != lam.size:
        raise AbsorptionError(
            "no_neutral_reference",
            f"the neutral reference has {n_od.size} / {s_od.size} values (total / 1S band) for {lam.size} wavelengths",
        )
    if not (np.all(np.isfinite(n_od)) and np.all(np.isfinite(s_od))) or not np.any(s_od > 0) or np.all(n_od == 0):
        raise AbsorptionError(
            "no_neutral_reference",
            "the bench has no neutral reference of these dots (its 1S band is zero or not finite)",
        )
    if absorbance_err is None:
        err = np.ones_like(a_od)
        weighted = False
    else:
        err = np.asarray(absorbance_err, dtype=float).ravel()
        if err.size != lam.size:
            raise ValueError(f"{err.size} absorbance errors for {lam.size} wavelengths")
        weighted = True
    ok = np.isfinite(lam) & np.isfinite(a_od) & np.isfinite(err) & (err > 0)
    if int(ok.sum()) < MIN_PIXELS:
        raise AbsorptionError(
            "absorbance_out_of_range",
            f"only {int(ok.sum())} pixels have a finite absorbance (at least {MIN_PIXELS} needed): "
            "no light through the film?",
        )
    top = float(np.max(a_od[ok]))
    if top > MAX_ABSORBANCE_OD:
        raise AbsorptionError(
            "absorbance_out_of_range",
            f"absorbance up to {top:.3g} OD; at most {MAX_ABSORBANCE_OD:g} OD can be read by transmission",
        )
    x = np.column_stack([n_od[ok], s_od[ok], np.ones(int(ok.sum()))])
    w = 1.0 / err[ok]
    y = a_od[ok]
    xw, yw = x * w[:, None], y * w
    coef, *_ = np.linalg.lstsq(xw, yw, rcond=None)
    resid = yw - xw @ coef
    dof = max(int(ok.sum()) - 3, 1)
    chi2_red = float(resid @ resid) / dof
    try:
        cov = np.linalg.inv(xw.T @ xw)
    except np.linalg.LinAlgError:
        raise AbsorptionError("bad_fit", "the neutral reference's parts cannot be told apart on this axis") from None
    cov = cov * (chi2_red if not weighted else max(chi2_red, 1.0))
    a, c, k = (float(v) for v in coef)
    var_a = float(cov[0, 0])
    sa = math.sqrt(var_a) if var_a >= 0 else math.nan
    if not (math.isfinite(a) and math.isfinite(sa)):
        raise AbsorptionError("bad_fit", "the fit gave no finite film scale")
    if not a > 3.0 * sa or a <= 0:
        raise AbsorptionError(
            "no_sample",
            f"no film absorbs in the beam: scale {a:.3g} +- {sa:.2g} of the neutral reference",
        )
    g = float(degeneracy)
    jac = np.array([g * c / a**2, -g / a, 0.0])
    var_n = float(jac @ cov @ jac)
    doping = -g * c / a
    doping_err = math.sqrt(var_n) if var_n >= 0 else math.nan
    if not (math.isfinite(doping) and math.isfinite(doping_err)):
        raise AbsorptionError("bad_fit", "the fit gave no finite doping")
    if weighted and chi2_red > MAX_CHI2_RED:
        raise AbsorptionError(
            "bad_fit",
            f"the spectrum is not the reference's dots bleached: reduced chi-square {chi2_red:.3g} "
            f"(at most {MAX_CHI2_RED:g})",
        )
    if not (-0.5 - 5 * doping_err <= doping <= g + 0.5 + 5 * doping_err):
        raise AbsorptionError(
            "bad_fit", f"doping {doping:.3g} +- {doping_err:.2g} electrons/dot is outside 0 to {g:g} (g)"
        )
    return _Fit(doping, doping_err, a, sa, k, chi2_red, int(ok.sum()))


def doping_from_absorbance(
    wavelength_nm,
    absorbance,
    neutral_absorbance,
    neutral_1s_absorbance,
    *,
    absorbance_err=None,
    degeneracy: int = 8,
    uid: str = "",
) -> DopingMeasurement:
    """<n_e> (electrons/dot) with its 1-sigma error from a film's absorbance (OD) and the neutral reference.

    ``wavelength_nm``: the axis (nm); ``absorbance``: the film's, OD (base 10); ``neutral_absorbance``
    and ``neutral_1s_absorbance``: the neutral (undoped) film of the same dots and its 1S band, OD, on
    the same axis (on the twin: its preset undoped, ``twin.absorption.neutral_absorbance``);
    ``absorbance_err``: the absorbance's 1-sigma error per pixel (None: from the residual scatter);
    ``degeneracy``: g, the 1S level's (8 in PbS). The doping is reported as fitted (an undoped film
    may read slightly below 0 within its error). Raises ``AbsorptionError`` (``no_neutral_reference``,
    ``absorbance_out_of_range``, ``no_sample``, ``bad_fit``).
    """
    fit = _fit(wavelength_nm, absorbance, neutral_absorbance, neutral_1s_absorbance, absorbance_err, degeneracy)
    return DopingMeasurement(fit.doping, fit.doping_err, uid)


def absorbance_from_counts(
    sample_counts, reference_counts, dark_counts, *, read_var_counts2: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Absorbance (OD) and its 1-sigma error per pixel from sample, reference and dark reads of one exposure.

    A = -log10((S - D) / (R - D)); the errors from the shot noise of S and R (their counts) and the
    dark's variance ``read_var_counts2`` (counts^2 per read: read noise and dark current) in S, R and D.
    Returns (absorbance, error, usable): ``usable`` marks the pixels whose dark-subtracted reference
    is at least 10 sigma (elsewhere the absorbance is NaN).
    """
    s = np.asarray(sample_counts, dtype=float)
    r = np.asarray(reference_counts, dtype=float)
    d = np.asarray(dark_counts, dtype=float)
    sc, rc = s - d, r - d
    var_d = float(read_var_counts2)
    var_s = np.maximum(sc, 0.0) + var_d
    var_r = np.maximum(rc, 0.0) + var_d
    usable = (rc > 10.0 * np.sqrt(var_r)) & (sc > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_od = np.where(usable, -np.log10(sc / rc), math.nan)
        err = np.sqrt(var_s / sc**2 + var_r / rc**2 + var_d * (1.0 / sc - 1.0 / rc) ** 2) / _LN10
    err = np.where(usable, err, math.nan)
    return a_od, err, usable


def _robust_var(x: np.ndarray) -> float:
    """Variance of a noise-only read from its median absolute deviation (robust to a hot pixel)."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0
    mad = float(np.median(np.abs(x - np.median(x))))
    return (1.4826 * mad) ** 2


def analyse_absorption_spectrum(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """The doping (electrons/dot, with its 1-sigma error) from an absorption run's primary stream.

    The events are told apart by the lamp's readbacks: the dark with the lamp's shutter closed,
    the reference with it open and the film out of the beam, the sample with the film in it (the
    last of each counts). Counts are taken per second of each read's exposure. The neutral
    reference is the one the sample read carries (``lamp_neutral_absorbance``,
    ``lamp_neutral_1s_absorbance``); ``plan_args["degeneracy"]`` is g (default 8).
    Raises ``AbsorptionError`` with its reason.
    """
    required = ("spectrometer_spectrum", "spectrometer_exposure", "spectrometer_saturated", "lamp_shutter")
    missing = [k for k in required if k not in data]
    if missing:
        raise AbsorptionError("no_dark", f"the run has no spectrometer reads with the lamp's state ({missing})")
    n_events = len(np.asarray(data["lamp_shutter"]))
    shutter = np.asarray(data["lamp_shutter"], dtype=float).reshape(n_events)
    sample_in = np.asarray(data.get("lamp_sample_in", np.ones(n_events)), dtype=float).reshape(n_events)
    lamp_ok = np.asarray(data.get("lamp_ok", np.ones(n_events)), dtype=float).reshape(n_events)

    def last(mask: np.ndarray) -> int | None:
        hits = np.nonzero(mask)[0]
        return int(hits[-1]) if hits.size else None

    i_dark = last(shutter == 0)
    i_ref = last((shutter == 1) & (sample_in == 0))
    i_sample = last((shutter == 1) & (sample_in == 1))
    if i_dark is None:
        raise AbsorptionError("no_dark", "no dark read (lamp shutter closed) in the run")
    if i_ref is None:
        raise AbsorptionError("no_reference", "no reference read (lamp on, film out of the beam) in the run")
    if i_sample is None:
        raise AbsorptionError("no_sample", "no sample read (lamp on, film in the beam) in the run")
    saturated = np.asarray(data["spectrometer_saturated"]).astype(bool).reshape(n_events)
    bad = [name for name, i in (("dark", i_dark), ("reference", i_ref), ("sample", i_sample)) if saturated[i]]
    if bad:
        raise AbsorptionError(
            "saturated", f"the {' and '.join(bad)} read(s) saturated the detector: shorten [absorption].exposure_s"
        )
    off = [name for name, i in (("reference", i_ref), ("sample", i_sample)) if lamp_ok[i] != 1]
    if off:
        raise AbsorptionError("no_light", f"the lamp was not lit (lamp OK = 0) during the {' and '.join(off)} read")
    spectra = np.asarray(data["spectrometer_spectrum"], dtype=float)
    exposure = np.asarray(data["spectrometer_exposure"], dtype=float).reshape(n_events)
    wavelength = _axis(data, spectra.shape[-1])
    e_s, e_r, e_d = exposure[i_sample], exposure[i_ref], exposure[i_dark]
    # in counts of the sample's exposure: the dark's counts scale with the exposure, as everything else
    dark = spectra[i_dark] * (e_s / e_d)
    ref = spectra[i_ref] * (e_s / e_r)
    light = float(np.median(ref - dark))
    if not (math.isfinite(light) and light >= MIN_LIGHT_COUNTS):
        raise AbsorptionError(
            "no_light",
            f"the reference read has {light:.3g} counts per pixel above the dark (median; at least "
            f"{MIN_LIGHT_COUNTS:g} needed): is the lamp on and its light reaching the spectrometer?",
        )
    var_dark = _robust_var(spectra[i_dark])
    a_od, err, _ = absorbance_from_counts(spectra[i_sample], ref, dark, read_var_counts2=var_dark)
    neutral = data.get("lamp_neutral_absorbance")
    neutral_1s = data.get("lamp_neutral_1s_absorbance")
    if neutral is None or neutral_1s is None:
        raise AbsorptionError("no_neutral_reference", "the run carries no neutral reference of these dots")
    neutral = np.asarray(neutral, dtype=float)
    neutral_1s = np.asarray(neutral_1s, dtype=float)
    neutral = neutral[i_sample] if neutral.ndim == 2 else neutral
    neutral_1s = neutral_1s[i_sample] if neutral_1s.ndim == 2 else neutral_1s
    g = int(plan_args.get("degeneracy", 8)) if isinstance(plan_args, dict) else 8
    fit = _fit(wavelength, a_od, neutral, neutral_1s, err, g)
    return {
        "doping_e_per_dot": fit.doping,
        "doping_err_e_per_dot": fit.doping_err,
        "film_scale": fit.scale,
        "film_scale_err": fit.scale_err,
        "absorbance_offset_od": fit.offset_od,
        "chi2_red": fit.chi2_red,
    }


def _axis(data: dict[str, np.ndarray], pixels: int) -> np.ndarray:
    """The spectrometer's wavelength axis (nm) if the stream carries it, else the pixel index (the fit only
    needs the pixels to line up with the neutral reference's)."""
    lam = data.get("spectrometer_wavelength")
    if lam is not None:
        lam = np.asarray(lam, dtype=float)
        lam = lam[-1] if lam.ndim == 2 else lam
        if lam.size == pixels:
            return lam
    return np.arange(pixels, dtype=float)
