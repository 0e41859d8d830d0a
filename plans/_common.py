"""What every measurement plan shares: metadata, the run wrapper, acquisitions, the analysis stream.

A plan collects the readings of its ``primary`` stream in a ``PrimaryData`` as it
goes and, at the end, calls its analysis function on them: the *same* function a
replay calls on the stored ``primary`` stream (``plans.registry``), so live and
replayed results are equal by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import FailedStatus

from devices import PutRefusedError
from plans._suspenders import INTERRUPTION_STREAM, interruptible, trigger_then_read
from plans.safety import fluence_guard

__all__ = [
    "INTERRUPTION_STREAM",
    "UNITS",
    "PrimaryData",
    "acquire",
    "analysis_event",
    "checked_first",
    "closing_shutter",
    "counts_per_s",
    "measurement",
    "mount",
    "park_pump",
]

#: Units of the quantities in gainloop's plans (recorded in every start document).
UNITS = {
    "fluence": "uJ/cm^2",
    "stripe_length": "um",
    "doping": "electrons/dot",
    "integrated": "counts",
    "spectrum": "counts",
    "exposure": "s",
    "wavelength": "nm",
    "fwhm": "nm",
    "threshold": "uJ/cm^2",
    "gnet": "1/cm",
    "polarizer_angle": "deg",
    "ta_delay": "ps",
    "ta_signal": "|d(alpha)/alpha0|",
    "lifetime": "ps",
    "lab_time": "s",
}

#: Pixels on each side of the peak summed for a peak intensity.
PEAK_HALF_WIDTH_PX = 2


class PrimaryData:
    """The readings of a run's primary stream as columns, in event order (live side of a replay)."""

    def __init__(self) -> None:
        self._columns: dict[str, list] = {}

    def add(self, reading: dict) -> None:
        for key, value in reading.items():
            self._columns.setdefault(key, []).append(value["value"])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._columns.items()}


def checked_first(plan):
    """``plan`` (a generator) with the code before its first message run now: its argument checks.

    Every gainloop plan checks all its arguments before it yields anything, so a bad argument
    raises here, before a RunEngine (or a catalog, or a bench) is involved. The returned
    generator yields that first message, then the rest of ``plan`` (values and exceptions sent
    in are passed through).
    """
    try:
        first = next(plan)
    except StopIteration as stop:
        return _done(stop.value)
    return _continued(plan, first)


def _done(value):
    return value
    yield  # a generator that yields nothing


def _continued(plan, first):
    msg = first
    while True:
        try:
            resp = yield msg
        except GeneratorExit:
            plan.close()
            raise
        except BaseException as exc:
            try:
                msg = plan.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                msg = plan.send(resp)
            except StopIteration as stop:
                return stop.value


def measurement(
    bench,
    plan_name: str,
    plan_args: dict,
    dimension,
    md: dict | None,
    body: Callable,
    *,
    resume_delay_s: float | None = None,
):
    """Run ``body(results)`` as one run with the standard metadata (the user's ``md`` last),
    every fluence checked and the pump made safe at the end, however the run ends (shutter
    closed and fluence parked before its stop document: ``closing_shutter``); return
    ``{"uid", **results}``.

    ``dimension``: the device (or signal) whose readback is the scan's x axis (for the
    hints BestEffortCallback and LiveTable use). The run waits out interlock and
    pump-power interruptions (``plans._suspenders.interruptible``): it suspends, takes an
    acquisition they touched again, resumes ``resume_delay_s`` after the signal is back
    (default ``[interlock].resume_delay_s`` of the bench file) and records each in the
    ``interruptions`` stream.
    """
    dims = dimension if isinstance(dimension, list | tuple) else [dimension]
    fields = [name for d in dims for name in (d.hints["fields"] if hasattr(d, "hints") else [d.name])]
    start_md = {
        "plan_name": plan_name,
        "plan_args": plan_args,
        "units": UNITS,
        "hints": {"dimensions": [(fields, "primary")]},
        **bench.describe_sample(plan_args["sample_id"]),
        **(md or {}),
    }
    results: dict[str, float] = {}
    delay = bench.config.interlock.resume_delay_s if resume_delay_s is None else resume_delay_s
    plan = bpp.run_wrapper(
        closing_shutter(bench, interruptible(bench, body(results), resume_delay_s=delay)), md=start_md
    )
    uid = yield from fluence_guard(plan, [bench.pump.fluence, bench.pump], bench.config.bench.fluence_limit_uJ_cm2)
    return {"uid": uid, **results}


def counts_per_s(data: dict[str, np.ndarray], *, at_peak: bool = False) -> np.ndarray:
    """Per event: counts per second (integrated, or summed around the peak pixel); NaN where saturated."""
    exposure = np.asarray(data["spectrometer_exposure"], dtype=float)
    saturated = np.asarray(data["spectrometer_saturated"]).astype(bool)
    if at_peak:
        spectra = np.atleast_2d(np.asarray(data["spectrometer_spectrum"], dtype=float))
        counts = np.empty(spectra.shape[0])
        for k, spectrum in enumerate(spectra):
            if not np.any(np.isfinite(spectrum)):
                counts[k] = math.nan
                continue
            i = int(np.nanargmax(spectrum))
            lo, hi = max(i - PEAK_HALF_WIDTH_PX, 0), i + PEAK_HALF_WIDTH_PX + 1
            counts[k] = float(np.sum(spectrum[lo:hi]))
    else:
        counts = np.asarray(data["spectrometer_integrated"], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = counts / exposure
    return np.where(saturated | ~np.isfinite(rate), math.nan, rate)


def acquire(bench, exposure_s: float, primary: PrimaryData, *, extra=(), max_tries: int = 4):
    """Trigger and read the spectrometer (its exposure is a read field), the pump and the slit as one event.

    On saturation the exposure is cut tenfold and the read repeated (every read is
    an event; saturated ones are skipped by the analysis). An acquisition an interlock or
    pump-power interruption touched is taken again (``trigger_then_read``). Returns the
    last reading.
    """
    spec = bench.spectrometer
    exp = exposure_s
    reading = {}
    for _ in range(max_tries):
        if spec.exposure.get() != exp:  # (each plan step costs; most reads keep the exposure)
            yield from bps.mv(spec.exposure, exp)
        reading = yield from trigger_then_read([spec, bench.pump, bench.slit, *extra], triggers=[spec])
        primary.add(reading)
        if not bool(reading[spec.saturated.name]["value"]):
            break
        exp = max(exp / 10.0, bench.config.spectrometer.exposure_min_s)
    return reading


def mount(bench, sample_id: str, stripe_length_um: float | None = None):
    yield from bps.mv(bench.stage, sample_id)
    if stripe_length_um is not None:
        yield from bps.mv(bench.slit, stripe_length_um)


def park_pump(bench):
    """Close the pump shutter, then park the fluence setpoint at ``[pump].fluence_min_uJ_cm2`` (uJ/cm^2).

    A closed shutter is what keeps the sample and the people safe: if closing fails, the
    error stands. A refused park (e.g. a non-zero minimum while the interlock is open) is
    not an error: the shutter is closed and the IOC refuses the fluence for the same reason.
    """
    yield from bps.mv(bench.pump.shutter, 0)
    try:
        yield from bps.mv(bench.pump.fluence, float(bench.config.pump.fluence_min_uJ_cm2))
    except FailedStatus as exc:
        if not isinstance(exc.__cause__, PutRefusedError):
            raise


def closing_shutter(bench, plan):
    """``plan`` followed, however it ends (success, error, abort), by ``park_pump``."""
    return bpp.finalize_wrapper(plan, park_pump(bench))


def analysis_event(results: dict):
    """Record analysis results as one event of an ``analysis`` stream (numbers only)."""
    from ophyd import Signal

    signals = [Signal(name=key, value=float(value), kind="hinted") for key, value in results.items()]
    yield from bps.create(name="analysis")
    for sig in signals:
        yield from bps.read(sig)
    yield from bps.save()
