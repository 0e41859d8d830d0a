"""Lasing measurements of a DFB device as Bluesky plans: threshold, spectrum and polarisation.

Each plan follows ``plans.measurements``: it takes a ``devices.Bench`` (EPICS or
the in-process twin), checks its arguments before anything moves (a DFB device
from the bench's library, fluences within the bench limit), measures, analyses
its own ``primary`` stream with its ``analyse_*`` function (pure, in
``plans.analysis`` with its line and threshold fits; the same one a replay calls
on the stored stream, see ``plans.registry``) and records the result in an
``analysis`` stream. ``plans._common.measurement`` adds the standard
metadata (plan name and arguments, sample id and doping, twin or bench, units,
hints), checks every fluence sent and closes the shutter at the end.

The pump spot on a DFB is uniform (no stripe), so the slit is not moved. The
analyser stays in front of the spectrometer; the threshold and spectrum plans set
it parallel to the lasing polarisation (0 deg) unless told otherwise, and every
event records its angle. The spectra plans read the spectrometer's wavelength
axis (a configuration signal) into every event, so a replay has it next to the
counts.

How each quantity is measured, and what its uncertainty holds:

``lasing_threshold``
    Integrated output (counts/s) versus the power meter's fluence: a coarse log
    sweep, then a linear sweep around the kink. The kink of the log-log curve
    (``plans.analysis.kink_threshold``) locates the turn-on (``kink_onset_uJ_cm2``);
    the threshold is the breakpoint of a continuous fit on linear axes around it
    (spontaneous emission linear below, the lasing output rising above with a
    curvature term for gain saturation) - the intercept of the above-threshold
    output with the spontaneous line, the classic L-L threshold, at which the
    round-trip gain equals the loss. Its uncertainty: the fit's covariance
    (scaled by the residuals), the spread of the breakpoint over five fit windows
    (systematic), and no less than a quarter of the local fluence step / sqrt(3).
    (The log-log onset sits a few per cent below: the lasing output only clears
    the spontaneous emission once the device already lases.)

``lasing_spectrum``
    Repeated spectra at one fluence. A Lorentzian on a linear background is
    fitted to the pixels around the highest peak of each unsaturated spectrum:
    the centre is the lasing wavelength, the FWHM the linewidth (as measured: the
    spectrometer's response beyond its pixels is not deconvolved, so on a bench
    whose slit function is wider than a pixel the width is an upper bound). The
    line is about one pixel wide, so how the pixels record it matters; the fit is
    made with the line sampled at the pixel centres, and again integrated over
    each pixel: the difference is the instrument systematic. Uncertainty: the
    statistical error of the mean over spectra (or of the fit), the fit-window
    systematic (+-2 and +4 pixels) and the instrument systematic, in quadrature.

``polarization_scan``
    Integrated output (counts/s) versus analyser angle at one fluence (the angles
    forward, then back: a linear drift of the pump cancels), fitted with
    Malus's law plus an unpolarised part (``plans.analysis.polarization_ratio``):
    ratio (I_par - I_perp)/(I_par + I_perp) of everything collected (line and PL
    background), as the paper defines it. Uncertainty: the fit's, and the
    instrument systematic of the lasing line's counts (its area if the pixels
    integrate it instead of sampling it at their centres), in quadrature.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import MsgGenerator

from devices import check_angle, check_exposure
from plans._common import PrimaryData, analysed, measurement
from plans.analysis import (
    THRESHOLD_FIT_MIN_POINTS,
    AnalysisError,
    analyse_lasing_spectrum,
    analyse_lasing_threshold,
    analyse_polarization_scan,
    input_output,
    kink_threshold,
)
from plans.safety import check_fluence
from plans.stubs import acquire, mount, pump_on

__all__ = [
    "DEFAULT_ANALYSER_ANGLES_DEG",
    "analyse_lasing_spectrum",
    "analyse_lasing_threshold",
    "analyse_polarization_scan",
    "lasing_spectrum",
    "lasing_threshold",
    "polarization_scan",
]

#: Analyser angles of a polarisation scan by default (deg): 0 to 170 in steps of 10.
DEFAULT_ANALYSER_ANGLES_DEG = tuple(float(a) for a in range(0, 180, 10))
#: The sweeps of ``lasing_threshold`` after the coarse one, in units of the kink located so far: a
#: geometric one bracketing the coarse kink, then a linear one over the fit windows
#: (``plans.analysis.THRESHOLD_WINDOWS``).
BRACKET_SWEEP = (0.5, 2.0)
FINE_SWEEP = (0.55, 1.6)

# ---------------------------------------------------------------------------------------------
# argument checks


def _require_dfb(bench, sample_id: str, plan_name: str) -> None:
    """A ``ValueError`` unless ``sample_id`` is a DFB device of the bench's library."""
    entry = bench.config.library_entry(sample_id)  # BenchConfigError (a ValueError) naming the library
    if entry.kind != "dfb":
        dfbs = [e.id for e in bench.config.stage.library if e.kind == "dfb"]
        raise ValueError(
            f"{plan_name} measures a DFB laser, but {sample_id!r} is a {entry.kind}; "
            f"DFB devices on this bench: {', '.join(dfbs) or 'none'}"
        )


def _positive_fluence(value, limit: float, what: str = "fluence") -> float:
    f = check_fluence(value, limit)
    if f <= 0:
        raise ValueError(f"{what} must be above 0 uJ/cm^2 (the pump must be on); allowed: up to {limit:g} uJ/cm^2")
    return f


def _check_exposure(exposure_s, bench) -> float:
    check_exposure(exposure_s, bench.config)
    return float(exposure_s)


def _check_angle(angle_deg, bench) -> float:
    check_angle(angle_deg, bench.config)
    return float(angle_deg)


class _AsEventData:
    """A configuration signal read as event data (its own root, so ``trigger_and_read`` keeps it)."""

    def __init__(self, signal):
        self._signal = signal
        self.name = signal.name
        self.parent = None

    def read(self):
        return self._signal.read()

    def describe(self):
        return self._signal.describe()


# ---------------------------------------------------------------------------------------------
# plans


def lasing_threshold(
    bench,
    sample_id: str,
    *,
    fluence_min_uJ_cm2: float = 10.0,
    fluence_max_uJ_cm2: float | None = None,
    n_coarse: int = 12,
    n_fine: int = 20,
    exposure_s: float = 3.0,
    analyser_angle_deg: float = 0.0,
    md: dict | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """Lasing threshold of a DFB device from its input-output curve.

    A coarse log sweep from ``fluence_min_uJ_cm2`` to ``fluence_max_uJ_cm2`` (default:
    the bench limit) locates the kink; ``n_fine // 2`` points over ``BRACKET_SWEEP`` x
    that kink (geometric) refine it, and ``n_fine`` points spaced linearly over
    ``FINE_SWEEP`` x the refined kink follow. Returns ``{"uid", "threshold_uJ_cm2",
    "threshold_err_uJ_cm2", "kink_onset_uJ_cm2", "kink_onset_err_uJ_cm2"}``
    (``analyse_lasing_threshold``), also recorded in the run's ``analysis`` stream.
    """
    limit = bench.config.bench.fluence_limit_uJ_cm2
    _require_dfb(bench, sample_id, "lasing_threshold")
    f_hi = limit if fluence_max_uJ_cm2 is None else fluence_max_uJ_cm2
    f_lo = _positive_fluence(fluence_min_uJ_cm2, limit, "fluence_min_uJ_cm2")
    f_hi = _positive_fluence(f_hi, limit, "fluence_max_uJ_cm2")
    if not f_hi > f_lo:
        raise ValueError(f"fluence range must satisfy 0 < min < max <= {limit:g} uJ/cm^2, got {f_lo:g}..{f_hi:g}")
    if n_coarse < 6 or n_fine < THRESHOLD_FIT_MIN_POINTS:
        raise ValueError(
            f"lasing_threshold needs n_coarse >= 6 (to find the kink) and n_fine >= {THRESHOLD_FIT_MIN_POINTS} "
            f"(to fit the threshold), got {n_coarse} and {n_fine}"
        )
    exposure_s = _check_exposure(exposure_s, bench)
    angle = _check_angle(analyser_angle_deg, bench)
    plan_args = {
        "sample_id": sample_id,
        "fluence_min_uJ_cm2": f_lo,
        "fluence_max_uJ_cm2": f_hi,
        "n_coarse": int(n_coarse),
        "n_fine": int(n_fine),
        "exposure_s": exposure_s,
        "analyser_angle_deg": angle,
    }

    def inner(results: dict[str, float]) -> MsgGenerator[None]:
        yield from mount(bench, sample_id)
        yield from bps.mv(bench.polarizer.angle, angle)
        yield from pump_on(bench, f_lo)
        primary = PrimaryData()

        def measure(f: float) -> MsgGenerator[None]:
            yield from bps.mv(bench.pump.fluence, float(f))
            yield from acquire(bench, exposure_s, primary, extra=[bench.polarizer])

        def kink():
            try:
                return kink_threshold(*input_output(primary.arrays())).threshold
            except AnalysisError:
                return None

        for f in np.geomspace(f_lo, f_hi, n_coarse):
            yield from measure(f)
        # the coarse kink is good to about one coarse step: bracket it, then zoom in linearly
        for (lo, hi), n, space in (
            (BRACKET_SWEEP, max(n_fine // 2, 6), np.geomspace),
            (FINE_SWEEP, n_fine, np.linspace),
        ):
            located = kink()
            if located is None:
                break
            for f in space(max(lo * located, f_lo), min(hi * located, f_hi), n):
                yield from measure(f)
        yield from analysed(results, analyse_lasing_threshold, primary, plan_args)

    return (yield from measurement(bench, "lasing_threshold", plan_args, bench.pump.fluence, md, inner))


def lasing_spectrum(
    bench,
    sample_id: str,
    *,
    fluence_uJ_cm2: float,
    n_spectra: int = 3,
    exposure_s: float = 3.0,
    analyser_angle_deg: float = 0.0,
    md: dict | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """Lasing wavelength and linewidth of a DFB device at one fluence, from ``n_spectra`` spectra.

    Returns ``{"uid", "wavelength_nm", "wavelength_err_nm", "linewidth_nm",
    "linewidth_err_nm", "fluence_uJ_cm2"}`` (``analyse_lasing_spectrum``), also
    recorded in the run's ``analysis`` stream.
    """
    limit = bench.config.bench.fluence_limit_uJ_cm2
    _require_dfb(bench, sample_id, "lasing_spectrum")
    fluence = _positive_fluence(fluence_uJ_cm2, limit, "fluence_uJ_cm2")
    if not (isinstance(n_spectra, int | np.integer) and n_spectra >= 1):
        raise ValueError(f"lasing_spectrum needs n_spectra >= 1 (a whole number), got {n_spectra!r}")
    exposure_s = _check_exposure(exposure_s, bench)
    angle = _check_angle(analyser_angle_deg, bench)
    plan_args = {
        "sample_id": sample_id,
        "fluence_uJ_cm2": fluence,
        "n_spectra": int(n_spectra),
        "exposure_s": exposure_s,
        "analyser_angle_deg": angle,
    }
    axis = _AsEventData(bench.spectrometer.wavelength)

    def inner(results: dict[str, float]) -> MsgGenerator[None]:
        yield from mount(bench, sample_id)
        yield from bps.mv(bench.polarizer.angle, angle)
        yield from pump_on(bench, fluence)
        primary = PrimaryData()
        for _ in range(n_spectra):
            yield from acquire(bench, exposure_s, primary, extra=[bench.polarizer, axis])
        yield from analysed(results, analyse_lasing_spectrum, primary, plan_args)

    time_axis = SimpleNamespace(name="time")  # repeated spectra: plotted against time, as bluesky's count
    return (yield from measurement(bench, "lasing_spectrum", plan_args, time_axis, md, inner))


def polarization_scan(
    bench,
    sample_id: str,
    *,
    fluence_uJ_cm2: float,
    angles_deg=DEFAULT_ANALYSER_ANGLES_DEG,
    exposure_s: float = 3.0,
    md: dict | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """Polarisation ratio of a DFB laser's emission from an analyser scan at one fluence.

    Every angle is measured twice, going through ``angles_deg`` and back, so that a
    slow drift of the pump cancels in the fit (and its remainder shows in the
    residuals the uncertainty is scaled by).

    Returns ``{"uid", "polarization_ratio", "polarization_ratio_err",
    "polarization_angle_deg", "polarization_angle_err_deg", "fluence_uJ_cm2"}``
    (``analyse_polarization_scan``), also recorded in the run's ``analysis`` stream.
    """
    limit = bench.config.bench.fluence_limit_uJ_cm2
    _require_dfb(bench, sample_id, "polarization_scan")
    fluence = _positive_fluence(fluence_uJ_cm2, limit, "fluence_uJ_cm2")
    angles = [_check_angle(a, bench) for a in angles_deg]
    distinct = {round(a % 180.0, 6) for a in angles}
    if len(angles) < 4 or len(distinct) < 3:
        raise ValueError(
            f"polarization_scan needs at least 4 analyser angles, 3 of them distinct modulo 180 deg "
            f"(e.g. 0 to 170 in steps of 10), got {angles}"
        )
    exposure_s = _check_exposure(exposure_s, bench)
    plan_args = {
        "sample_id": sample_id,
        "fluence_uJ_cm2": fluence,
        "angles_deg": angles,
        "exposure_s": exposure_s,
    }
    axis = _AsEventData(bench.spectrometer.wavelength)

    def inner(results: dict[str, float]) -> MsgGenerator[None]:
        yield from mount(bench, sample_id)
        yield from bps.mv(bench.polarizer.angle, angles[0])
        yield from pump_on(bench, fluence)
        primary = PrimaryData()
        for a in [*angles, *reversed(angles)]:
            yield from bps.mv(bench.polarizer.angle, a)
            yield from acquire(bench, exposure_s, primary, extra=[bench.polarizer, axis])
        yield from analysed(results, analyse_polarization_scan, primary, plan_args)

    return (yield from measurement(bench, "polarization_scan", plan_args, bench.polarizer, md, inner))
