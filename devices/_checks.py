"""Client-side checks and units shared by the EPICS devices and the in-process twin devices.

Every check takes the value and the bench file and raises ``LimitError`` (nothing
sent) with what was asked and what is allowed. Units are those of the PV contract
(``docs/pvs.md``); they are fixed, so devices declare them rather than trusting a
PV's EGU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from ._errors import LimitError, ReadbackError
from .config import BenchConfig, LibraryEntry

__all__ = [
    "UNITS",
    "Check",
    "check_angle",
    "check_delay",
    "check_doping",
    "check_exposure",
    "check_flag",
    "check_fluence",
    "check_pump_excitons",
    "check_sample_id",
    "check_slit",
    "require_finite",
]

#: Units of the PV contract, by device component name.
UNITS: dict[str, str] = {
    "fluence": "uJ/cm^2",
    "pulse_energy": "uJ",
    "repetition_rate": "kHz",
    "stripe_length": "um",
    "doping": "electrons/dot",
    "grating_period": "nm",
    "new_film_doping": "electrons/dot",
    "exposure": "s",
    "spectrum": "counts",
    "wavelength": "nm",
    "integrated": "counts",
    "peak_wavelength": "nm",
    "fwhm": "nm",
    "angle": "deg",
    "delay": "ps",
    "pump_excitons": "excitons/dot",
    "signal": "1",
    "neutral_absorbance": "OD",
    "neutral_1s_absorbance": "OD",
}

Check = Callable[[object, BenchConfig], None]


def _finite(value: object, what: str, unit: str) -> float:
    if isinstance(value, bool | np.bool_):
        raise LimitError(f"{what} must be a number of {unit}, got {value!r}")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LimitError(f"{what} must be a number of {unit}, got {value!r}") from None
    if not math.isfinite(v):
        raise LimitError(f"{what} must be a finite number of {unit}, got {value!r}; nothing was sent")
    return v


def _within(value: object, lo: float, hi: float, what: str, unit: str, source: str) -> float:
    v = _finite(value, what, unit)
    if not lo <= v <= hi:
        raise LimitError(
            f"{what} {v:g} {unit} is outside the soft limits {lo:g} to {hi:g} {unit} ({source}); nothing was sent"
        )
    return v


def check_fluence(value: object, cfg: BenchConfig) -> None:
    """Pump fluence (uJ/cm^2): finite, >= [pump].fluence_min_uJ_cm2, <= [bench].fluence_limit_uJ_cm2."""
    v = _finite(value, "pump fluence", "uJ/cm^2")
    lo, hi = cfg.pump.fluence_min_uJ_cm2, cfg.bench.fluence_limit_uJ_cm2
    if v > hi:
        raise LimitError(
            f"pump fluence {v:g} uJ/cm^2 is above the bench's limit of {hi:g} uJ/cm^2 "
            f"(bench.fluence_limit_uJ_cm2 of bench {cfg.bench.name!r}); nothing was sent"
        )
    if v < lo:
        raise LimitError(
            f"pump fluence {v:g} uJ/cm^2 is below the allowed minimum of {lo:g} uJ/cm^2 "
            "(pump.fluence_min_uJ_cm2; fluence cannot be negative); nothing was sent"
        )


def check_slit(value: object, cfg: BenchConfig) -> None:
    """Stripe length (um) within [slit].min_um .. max_um."""
    _within(value, cfg.slit.min_um, cfg.slit.max_um, "stripe length", "um", "slit.min_um/max_um")


def check_exposure(value: object, cfg: BenchConfig) -> None:
    """Spectrometer exposure (s) within [spectrometer].exposure_min_s .. exposure_max_s."""
    s = cfg.spectrometer
    _within(value, s.exposure_min_s, s.exposure_max_s, "exposure", "s", "spectrometer.exposure_min_s/max_s")


def check_delay(value: object, cfg: BenchConfig) -> None:
    """TA delay (ps) within [transient_absorption].delay_min_ps .. delay_max_ps."""
    t = cfg.transient_absorption
    _within(value, t.delay_min_ps, t.delay_max_ps, "TA delay", "ps", "transient_absorption.delay_min_ps/max_ps")


def check_angle(value: object, cfg: BenchConfig) -> None:
    """Analyser angle (deg): a finite number."""
    _finite(value, "analyser angle", "deg")


def check_pump_excitons(value: object, cfg: BenchConfig) -> None:
    """TA pump level <N> (excitons/dot): finite, 0 .. 100 (the TA pump's range)."""
    _within(value, 0.0, 100.0, "TA pump level", "excitons/dot", "the TA pump's range")


def check_doping(value: object, cfg: BenchConfig) -> None:
    """Doping of a new film (electrons/dot): finite, 0 .. 40 (the bench decides what it can make)."""
    _within(value, 0.0, 40.0, "film doping", "electrons/dot", "0 to 40 as in the library schema")


def check_flag(value: object, cfg: BenchConfig) -> None:
    """A 0/1 PV (shutter, permit, acquire)."""
    if isinstance(value, str) or value not in (0, 1):
        raise LimitError(f"expected 0 or 1, got {value!r}; nothing was sent")


def check_sample_id(value: object, library: Mapping[str, LibraryEntry]) -> str:
    """A sample id of the stage's library."""
    if not isinstance(value, str) or value not in library:
        ids = ", ".join(library)
        raise LimitError(f"sample {value!r} is not in the stage's library; mounted: {ids}; nothing was sent")
    return value


def require_finite(value: object, what: str, *, minimum: float | None = None, unit: str = "") -> None:
    """Raise ``ReadbackError`` unless a measurement's readback (scalar or array) is numbers, all finite
    (and, with ``minimum``, none below it): a text, ``None`` (no value), NaN, inf or an impossible
    value (a negative fluence) never passes as data."""
    if value is None or isinstance(value, str | bytes):
        raise ReadbackError(f"{what} read back {value!r}: not a number (the instrument sent no valid reading)")
    try:
        arr = np.asarray(value)
    except Exception:  # a ragged or odd object
        raise ReadbackError(f"{what} read back {value!r}: not a number") from None
    if arr.dtype.kind not in "biufc" or arr.size == 0:
        if arr.dtype.kind in "SU" and arr.size == 1:  # a string PV, as pyepics returns it (an array of one)
            value = arr.reshape(-1)[0].item()
            value = value.decode("latin-1") if isinstance(value, bytes) else value
        raise ReadbackError(f"{what} read back {value!r}: not a number (the instrument sent no valid reading)")
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        shown = f"{float(arr):g}" if arr.ndim == 0 else f"{bad} of {arr.size} values not finite"
        raise ReadbackError(f"{what} read back {shown}: the instrument returned no valid number (fault?)")
    if minimum is not None and arr.dtype.kind != "c" and np.any(arr < minimum):
        low = float(np.min(arr))
        raise ReadbackError(
            f"{what} read back {low:g} {unit}: below {minimum:g} {unit}, which it cannot be (fault?)".replace("  ", " ")
        )
