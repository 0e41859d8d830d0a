"""What every measurement plan shares: the run wrapper with its metadata, argument checks first.

``measurement`` opens the run with the standard metadata (``UNITS``, hints, the
bench's ``describe_sample``), checks every fluence sent, waits out interruptions and
makes the pump safe however the run ends (``closing_shutter``). A plan collects the
readings of its ``primary`` stream in a ``PrimaryData`` as it goes (``plans.stubs.acquire``)
and, at the end, calls its analysis function on them: the *same* function a replay
calls on the stored ``primary`` stream (``plans.registry``), so live and replayed
results are equal by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import MsgGenerator

from plans._suspenders import interruptible
from plans.safety import fluence_guard
from plans.stubs import analysis_event, park_pump

__all__ = [
    "UNITS",
    "PrimaryData",
    "analysed",
    "checked_first",
    "closing_shutter",
    "measurement",
]

T = TypeVar("T")

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


class PrimaryData:
    """The readings of a run's primary stream as columns, in event order (live side of a replay)."""

    def __init__(self) -> None:
        self._columns: dict[str, list] = {}

    def add(self, reading: dict) -> None:
        """Append the values of one event's reading (``{data key: {"value": ..., ...}}``)."""
        for key, value in reading.items():
            self._columns.setdefault(key, []).append(value["value"])

    def arrays(self) -> dict[str, np.ndarray]:
        """The columns so far, ``{data key: array in event order}`` (as a replay reads the stored stream)."""
        return {k: np.asarray(v) for k, v in self._columns.items()}


def analysed(
    results: dict[str, float], analyse: Callable[[dict[str, np.ndarray], dict], dict], primary: PrimaryData, plan_args
) -> MsgGenerator[None]:
    """A plan's last step: ``results`` updated with ``analyse(primary.arrays(), plan_args)`` (the function a
    replay calls on the stored primary stream) and recorded as the run's ``analysis`` event."""
    results.update(analyse(primary.arrays(), plan_args))
    yield from analysis_event(results)


def checked_first(plan: MsgGenerator[T]) -> MsgGenerator[T]:
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


def _done(value: T) -> Generator[Any, Any, T]:
    return value
    yield  # a generator that yields nothing


def _continued(plan: MsgGenerator[T], first) -> MsgGenerator[T]:
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
    body: Callable[[dict[str, float]], MsgGenerator[None]],
    *,
    resume_delay_s: float | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """Run ``body(results)`` as one run with the standard metadata (``bench.describe_sample``; the user's ``md`` last),
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


def closing_shutter(bench, plan: MsgGenerator[T]) -> MsgGenerator[T]:
    """``plan`` followed, however it ends (success, error, abort), by ``park_pump``."""
    return bpp.finalize_wrapper(plan, park_pump(bench))
