"""Partial plans of gainloop's measurements: mount a sample, pump it, acquire, record results, make the pump safe.

These are to gainloop's plans what ``bluesky.plan_stubs`` are to ``bluesky.plans``:
message generators that do one step of a measurement and return what it gives
(``MsgGenerator[T]``), to be composed with ``yield from`` inside a run. The whole
plans (``plans.measurements``, ``plans.lasing``, ``plans.pump_probe``,
``plans.stability``) are built from them and ``plans._common.measurement``.

Two of them replace ``bps.trigger_and_read`` for the measurement's events:
``trigger_then_read`` saves every point exactly once and whole across interlock and
pump-power interruptions (``plans._suspenders.interruptible``, which answers their
``checkpoint`` messages with its ``Interruptions``), and ``read_after_trigger`` is its
second half. Outside ``interruptible`` they behave as plain ``trigger_and_read``.

Several stubs yield ``Msg`` objects directly rather than through ``bluesky.plan_stubs``:
those stubs' bookkeeping costs more than one of the twin's acquisitions, and a
campaign makes thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import bluesky.plan_stubs as bps
from bluesky import Msg
from bluesky.protocols import Readable, Reading, Triggerable
from bluesky.utils import FailedStatus, MsgGenerator, short_uid
from ophyd import Signal

from devices import PutRefusedError

if TYPE_CHECKING:
    from plans._suspenders import Interruptions

__all__ = [
    "Collector",
    "acquire",
    "analysis_event",
    "mount",
    "park_pump",
    "pump_on",
    "read_after_trigger",
    "set_together",
    "trigger_then_read",
]


class Collector(Protocol):
    """Where a plan keeps the readings of its ``primary`` stream (``plans._common.PrimaryData``)."""

    def add(self, reading: dict[str, Reading]) -> None: ...


def set_together(*pairs) -> MsgGenerator[None]:
    """Set every (object, value) pair at once and wait for all: ``bps.mv`` as plain messages.

    ``set_together(bench.pump.fluence, 100.0, bench.ta.delay, 5.0)``; no ``@plan``
    bookkeeping, and nothing is read back (``bps.mv`` returns the statuses; this returns None).
    """
    group = short_uid("set")
    for obj, value in zip(pairs[::2], pairs[1::2], strict=True):
        yield Msg("set", obj, value, group=group)
    yield Msg("wait", None, group=group)


def mount(bench, sample_id: str, stripe_length_um: float | None = None) -> MsgGenerator[None]:
    """Mount ``sample_id`` from the bench's library and, if given, set the stripe length (um)."""
    yield from bps.mv(bench.stage, sample_id)
    if stripe_length_um is not None:
        yield from bps.mv(bench.slit, stripe_length_um)


def acquire(
    bench, exposure_s: float, primary: Collector, *, extra: Sequence[Readable] = (), max_tries: int = 4
) -> MsgGenerator[dict[str, Reading]]:
    """Trigger and read the spectrometer (its exposure is a read field), the pump and the slit as one event.

    The exposure (s) is set first unless the spectrometer already has it. On
    saturation the exposure is cut tenfold (no lower than ``[spectrometer].exposure_min_s``)
    and the read repeated, up to ``max_tries`` reads: every read is an event of
    ``primary`` (saturated ones are skipped by the analysis). An acquisition an interlock
    or pump-power interruption touched is taken again (``trigger_then_read``); ``extra``
    objects are read into the same event. Returns the last reading.
    """
    spec = bench.spectrometer
    exp = exposure_s
    reading: dict[str, Reading] = {}
    for _ in range(max_tries):
        if (yield from bps.rd(spec.exposure)) != exp:  # most reads keep the exposure: no set
            yield from bps.mv(spec.exposure, exp)
        reading = yield from trigger_then_read([spec, bench.pump, bench.slit, *extra], triggers=[spec])
        primary.add(reading)
        if not bool(reading[spec.saturated.name]["value"]):
            break
        exp = max(exp / 10.0, bench.config.spectrometer.exposure_min_s)
    return reading


def pump_on(bench, fluence_uJ_cm2: float) -> MsgGenerator[None]:
    """Set the pump fluence (uJ/cm^2), then open the shutter: the sample sees no other fluence."""
    yield from bps.mv(bench.pump.fluence, fluence_uJ_cm2)
    yield from bps.mv(bench.pump.shutter, 1)


def park_pump(bench) -> MsgGenerator[None]:
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


def analysis_event(results: dict[str, float]) -> MsgGenerator[None]:
    """Record analysis results as one event of an ``analysis`` stream (numbers only, each a hinted field)."""
    signals = [Signal(name=key, value=float(value), kind="hinted") for key, value in results.items()]
    yield from bps.create(name="analysis")
    for sig in signals:
        yield from bps.read(sig)
    yield from bps.save()


def read_after_trigger(
    objs: Sequence[Readable], name: str = "primary", *, guard: Interruptions | None = None
) -> MsgGenerator[dict[str, Reading] | None]:
    """Bundle the readings of ``objs`` into one event of ``name`` that is never re-emitted.

    Call it once the acquisition is complete. It turns rewinding off and sets a
    checkpoint *before* ``create``, so that a suspension or pause from here on resumes
    where it stopped instead of rewinding to the previous checkpoint (which would save
    the same point again under the same ``seq_num``); the rewindable state is restored
    after ``save``. A read that fails drops the event. With ``guard``, a reading an
    interruption touched is dropped too and None returned (the caller takes it again);
    records of interruptions that ended are saved after the event. Returns
    ``{data key: reading}``.

    (Messages are yielded directly: the plan stubs' ``@plan`` bookkeeping costs more
    than the twin's acquisitions.)
    """
    rewindable = yield Msg("rewindable", None, None)
    yield Msg("rewindable", None, False)
    yield Msg("checkpoint")
    yield Msg("create", None, name=name)
    reading: dict = {}
    try:
        for obj in objs:
            r = yield Msg("read", obj)
            if r is not None:
                reading.update(r)
    except BaseException:
        yield Msg("drop")
        raise
    try:
        whole = guard is None or guard.accepts(reading)
    except BaseException:  # the shutter closed behind the plan's back: the reading is not kept
        yield Msg("drop")
        raise
    yield Msg("save" if whole else "drop")
    if guard is not None:
        yield from guard.flush()
    if rewindable is not None:
        yield Msg("rewindable", None, rewindable)
    return reading if whole else None


def trigger_then_read(
    objs: Sequence[Readable], name: str = "primary", *, triggers: Sequence[Triggerable] | None = None
) -> MsgGenerator[dict[str, Reading]]:
    """``trigger_and_read`` that saves every point exactly once and whole, even across interruptions.

    A checkpoint precedes the trigger, so a suspension (or pause) during the acquisition
    rewinds to it and takes the point again; once the acquisition is complete the
    readings are saved by ``read_after_trigger``. Inside ``interruptible`` an acquisition
    an interruption touched is dropped and taken again once the pump is back as the plan
    left it. ``triggers``: the objects to trigger (default: every one of ``objs`` that
    has a ``trigger`` method). Unlike ``bps.trigger_and_read`` the objects are not
    deduplicated, so a component of a device that is not in the device's ``read()`` (a
    configuration signal) can be read with it.
    """
    to_trigger = [o for o in objs if hasattr(o, "trigger")] if triggers is None else list(triggers)
    while True:
        guard = yield Msg("checkpoint")
        if guard is not None and guard.pump_stale():
            yield from guard.restore_pump()
            guard = yield Msg("checkpoint")
        group = short_uid("trigger")
        if guard is not None:
            yield Msg("trigger", guard.mark, group=group)
        for obj in to_trigger:
            yield Msg("trigger", obj, group=group)
        if to_trigger or guard is not None:
            yield Msg("wait", None, group=group)
        reading = yield from read_after_trigger(objs, name, guard=guard)
        if reading is not None:
            return reading
