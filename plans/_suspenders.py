"""Interlock and pump-power interruptions of a measurement: suspend, re-take, resume, record.

Every measurement plan runs under ``interruptible`` (installed by
``plans._common.measurement``):

* **Suspenders.** ``bluesky.suspenders.SuspendBoolLow`` on the interlock permit and on the
  pump's power-OK signal are installed for the run. When either drops the RunEngine
  suspends (the plan waits: a campaign does not time out or fail its trial), and resumes
  ``resume_delay_s`` after the signal is back (``[interlock].resume_delay_s`` of the bench
  file unless the plan gives one).
* **Re-takes.** An acquisition an interruption may have touched -- a low signal seen or a
  suspension begun after its exposure started, or its own reading shows the shutter
  closed (the interlock closes it) or the pump power not OK -- is discarded before it is
  saved and taken again (``plans.stubs.trigger_then_read``), so each stream's ``seq_num`` runs 1..n
  with no gap or repeat and holds only whole exposures. No extra read is made per
  event: the pump's shutter and power-OK are part of the event's own reading.
* **A shutter closed behind the plan's back.** Readings that show the shutter closed while the
  plan wants it open, with no interruption to explain it for ``CLOSED_GRACE_S`` (the bench's
  watchdog closed it after a lost heartbeat, an operator did), fail the measurement with
  ``ShutterClosedError`` and what ``IL:Message`` says: the plan does not open it again.
* **Pump.** The plan's last requested fluence and shutter are noted as its messages pass;
  when the run resumes (the suspender's post-plan), and again before the next acquisition
  if it is still not as the plan left it, the pump is set again: the fluence checked
  against the bench's limit (``plans.safety.check_fluence``) before it is sent.
  A pump setpoint the bench refuses *because* of the interruption (the interlock refuses
  fluence and shutter while the permit is off) is not a failure: it is set again then.
* **Records.** Each interruption becomes one event of the ``interruptions`` stream
  (``interruption_signal``: ``interlock_permit`` or ``pump_power_ok``,
  ``interruption_start``: wall-clock epoch s, ``interruption_duration_s``).

Errors. A device error carried by a failed status (``DeviceTimeoutError``,
``PutRefusedError``, ``ReadbackError``) is raised in the plan as itself, so the run's
stop document says what went wrong (the motor that did not arrive, the readback that
was not a number) rather than naming a status object.

How a plan step reaches the guard: the wrapper answers every ``checkpoint`` message
with the ``Interruptions`` object of the run (the RunEngine answers it with None), so
``guard = yield Msg("checkpoint")`` costs no extra message; outside ``interruptible``
it is None and the helpers behave as plain ``trigger_and_read``.
"""

from __future__ import annotations

import asyncio
import math
import time

from bluesky import Msg
from bluesky.suspenders import SuspendBoolLow
from bluesky.utils import FailedStatus, short_uid
from ophyd import Signal
from ophyd.status import Status

from core.errors import GainloopError
from devices import PutRefusedError
from plans.safety import check_fluence

__all__ = [
    "INTERRUPTION_STREAM",
    "Interruptions",
    "ShutterClosedError",
    "interruptible",
]

#: Stream of one event per interruption (signal, wall-clock start, duration).
INTERRUPTION_STREAM = "interruptions"
#: Data keys of the interruption stream.
RECORD_KEYS = ("interruption_signal", "interruption_start", "interruption_duration_s")
#: Wall seconds a closed shutter that no interruption explains is waited for (a suspender's monitor
#: may arrive after the reading that shows the shutter closed) before the measurement fails.
CLOSED_GRACE_S = 3.0
#: Wall seconds between looks at the suspenders while a re-take waits for a signal to come back.
RELEASE_POLL_S = 0.02


class ShutterClosedError(GainloopError):
    """The shutter was closed behind the plan's back (not by the interlock): the measurement stops."""


class Computed(Signal):
    """A read-only soft signal whose value is computed when it is read."""

    def __init__(self, fn, *, name: str, **kwargs):
        super().__init__(name=name, value=fn(), **kwargs)
        self._fn = fn

    def get(self, **kwargs):
        self._readback = self._fn()
        return self._readback


class _CountingSuspendBoolLow(SuspendBoolLow):
    """``SuspendBoolLow`` that also counts every low value it sees (before the RunEngine suspends)."""

    def __init__(self, signal, *, guard: Interruptions, **kwargs):
        super().__init__(signal, **kwargs)
        self._guard = guard

    def _should_suspend(self, value):
        low = super()._should_suspend(value)
        if low:
            self._guard.events += 1
        return low


class _ExposureMark:
    """Triggered with the detectors: notes the interruption counter as the exposure starts
    (a message, so that a RunEngine rewind that re-takes the exposure notes it again)."""

    def __init__(self, guard: Interruptions):
        self.name = "interruption_exposure_mark"
        self.parent = None
        self._guard = guard
        self.at_trigger = -1

    def trigger(self):
        self.at_trigger = self._guard.events
        status = Status(obj=self)
        status.set_finished()
        return status


class Interruptions:
    """What the suspenders of one measurement saw, the pump as the plan wants it, records to save."""

    def __init__(self, bench, resume_delay_s: float):
        self.bench = bench
        self.resume_delay_s = float(resume_delay_s)
        self.limit_uJ_cm2 = float(bench.config.bench.fluence_limit_uJ_cm2)
        self.events = 0  # low values seen + suspensions begun: any change means re-take
        self.count = 0  # interruptions ended
        self.total_s = 0.0
        self.open: dict[str, float] = {}
        self.pending: list[tuple[str, float, float]] = []
        self.refusals_excused = 0
        self.pump = bench.pump
        self._fluence = getattr(bench.pump, "fluence", None)
        self._shutter = getattr(bench.pump, "shutter", None)
        self.want_fluence: float | None = None
        self.want_shutter = 0
        self.pump_at = 0  # ``events`` when the plan last opened the shutter
        #: wall time (monotonic s) since which readings show the shutter closed though the plan opened
        #: it and no interruption explains it (None: not so)
        self.closed_since: float | None = None
        self.mark = _ExposureMark(self)
        self._record = {"signal": "", "start": 0.0, "duration": 0.0}
        self._record_signals = [
            Computed(lambda: self._record["signal"], name=RECORD_KEYS[0]),
            Computed(lambda: self._record["start"], name=RECORD_KEYS[1]),
            Computed(lambda: self._record["duration"], name=RECORD_KEYS[2]),
        ]
        watched = [(getattr(bench.interlock, "permit", None), "interlock_permit")]
        watched.append((getattr(bench.pump, "power_ok", None), "pump_power_ok"))
        self.suspenders = [self._suspender(sig, what, resume_delay_s) for sig, what in watched if sig is not None]

    # ---------------------------------------------------------------- suspenders
    def _suspender(self, signal, what: str, delay: float) -> SuspendBoolLow:
        def pre():
            self.events += 1
            self.open.setdefault(what, time.time())
            yield from ()

        def post():
            start = self.open.pop(what, time.time())
            duration = time.time() - start
            self.count += 1
            self.total_s += duration
            self.pending.append((what, start, duration))
            if self.want_shutter == 1 and not self.tripped():
                # the RunEngine is about to rewind and re-take the exposure: with the pump on
                yield from self._pump_on()

        return _CountingSuspendBoolLow(
            signal,
            guard=self,
            sleep=delay,
            pre_plan=pre,
            post_plan=post,
            tripped_message=f"{what} dropped: the measurement waits for it",
        )

    def tripped(self) -> bool:
        return any(s.tripped for s in self.suspenders)

    # ---------------------------------------------------------------- the pump the plan wants
    def note_set(self, msg: Msg) -> None:
        """Note the pump setpoints the plan asks for (called for every ``set`` message)."""
        if msg.obj is self._fluence and msg.args:
            self.want_fluence = msg.args[0]
        elif msg.obj is self._shutter and msg.args:
            self.want_shutter = 1 if msg.args[0] == 1 else 0
            self.pump_at = self.events

    def pump_stale(self) -> bool:
        """The plan wants the pump on and an interruption came since it was last switched on."""
        return self.want_shutter == 1 and (self.pump_at != self.events or self.tripped())

    def excuses(self, exc: BaseException) -> bool:
        """A pump setpoint refused because of an interruption the suspenders saw (set again later)."""
        if not isinstance(exc, FailedStatus) or not (self.pump_at != self.events or self.tripped()):
            return False
        status = exc.args[0] if exc.args else None
        obj = getattr(status, "obj", None)
        cause = exc.__cause__
        if obj not in (self._fluence, self._shutter) or not isinstance(cause, PutRefusedError):
            return False
        self.refusals_excused += 1
        self.pump_at = -1  # re-establish before the next acquisition
        return True

    def _pump_on(self):
        """Set the pump as the plan last asked (its fluence checked against the bench's limit)."""
        events = self.events
        group = short_uid("pump")
        if self.want_fluence is not None:
            yield Msg("set", self._fluence, check_fluence(self.want_fluence, self.limit_uJ_cm2), group=group)
        yield Msg("set", self._shutter, 1, group=group)
        yield Msg("wait", None, group=group)
        self.pump_at = events

    async def _released(self) -> None:
        """Until no watched signal is low, then the resume delay (an awaitable for ``wait_for``).

        Not ``SuspenderBase.get_futures()``: it reads ``tripped`` before taking the suspender's
        lock, so a signal restored between the two makes it wait on a new event that nothing
        will ever set (seen as a run hung after the interlock came back).
        """
        while self.tripped():
            await asyncio.sleep(RELEASE_POLL_S)
        if self.resume_delay_s > 0:
            await asyncio.sleep(self.resume_delay_s)

    def restore_pump(self):
        """Wait until the watched signals are back (and the resume delay), then set the pump again."""
        while True:
            if self.tripped():
                yield Msg("wait_for", None, [self._released])
            yield from self._pump_on()
            if not self.pump_stale():
                return

    def accepts(self, reading: dict) -> bool:
        """Whether a reading taken since the mark is whole: no interruption touched its exposure."""
        if self.mark.at_trigger != self.events or self.tripped():
            return False
        if self.want_shutter == 1:
            shutter = reading.get(getattr(self._shutter, "name", ""), None)
            if shutter is not None and shutter["value"] != 1:
                self._closed_behind_the_plans_back()
                return False
        self.closed_since = None
        power = reading.get(getattr(getattr(self.pump, "power_ok", None), "name", ""), None)
        return not (power is not None and power["value"] == 0)

    def _closed_behind_the_plans_back(self) -> None:
        """A reading shows the shutter closed though the plan opened it. The interlock does that (its
        suspender then waits it out and sets the pump again); anything else -- the bench's watchdog
        after a lost heartbeat, an operator -- is not the plan's to undo: once no interruption has
        explained it for ``CLOSED_GRACE_S``, the measurement fails with what the bench says."""
        now = time.monotonic()
        if self.tripped() or self.pump_at != self.events:
            self.closed_since = None  # an interruption explains it: the suspender's business
            return
        if self.closed_since is None:
            self.closed_since = now
            return
        if now - self.closed_since <= CLOSED_GRACE_S:
            return
        why = ""
        message = getattr(getattr(self.bench, "interlock", None), "message", None)
        if message is not None:
            try:
                why = str(message.get()).strip()
            except Exception:  # the reason is a courtesy; the error stands without it
                why = ""
        raise ShutterClosedError(
            f"the pump shutter was closed while the plan was pumping, not by the interlock (its permit stayed "
            f"on) for {now - self.closed_since:.1f} s (the bench's watchdog, an operator?)"
            + (f"; the bench says: {why}" if why and why != "ok" else "")
            + "; the measurement stops rather than open it again"
        )

    # ---------------------------------------------------------------- records
    def flush(self):
        """Save the records of the interruptions that ended (call outside an event bundle)."""
        while self.pending:
            self._record["signal"], self._record["start"], self._record["duration"] = self.pending.pop(0)
            yield Msg("create", None, name=INTERRUPTION_STREAM)
            for sig in self._record_signals:
                yield Msg("read", sig)
            yield Msg("save")


def _device_error(err: Exception) -> Exception:
    """The device's own error (timeout, refusal, bad readback) for a failed status that carries
    one, so that the run's stop document and a campaign's trial say what went wrong (a
    ``FailedStatus`` alone names only the status object)."""
    cause = err.__cause__
    if isinstance(err, FailedStatus) and isinstance(cause, GainloopError):
        return cause
    return err


def _proxy(plan, guard: Interruptions):
    """Pass ``plan``'s messages on; answer its checkpoints with ``guard``; note pump setpoints;
    excuse the pump refusals an interruption explains."""
    resp, exc = None, None
    while True:
        try:
            msg = plan.send(resp) if exc is None else plan.throw(exc)
        except StopIteration as stop:
            return stop.value
        resp, exc = None, None
        command = msg.command
        if command == "set":
            guard.note_set(msg)
        try:
            resp = yield msg
        except GeneratorExit:
            plan.close()
            raise
        except Exception as err:
            if not guard.excuses(err):
                exc = _device_error(err)
            continue
        if command == "checkpoint":
            resp = guard


def interruptible(bench, plan, *, resume_delay_s: float):
    """Run ``plan`` (the inside of a run) with the interlock and pump-power suspenders, re-takes and records."""
    delay = float(resume_delay_s)
    if not (math.isfinite(delay) and delay >= 0):
        raise ValueError(f"resume_delay_s must be a number of seconds >= 0, got {resume_delay_s!r}")
    guard = Interruptions(bench, delay)

    def body():
        result = yield from _proxy(plan, guard)
        # interruptions after the last acquisition (saved once: no rewind past here)
        rewindable = yield Msg("rewindable", None, None)
        yield Msg("rewindable", None, False)
        yield Msg("checkpoint")
        yield from guard.flush()
        yield Msg("rewindable", None, rewindable)
        return result

    from bluesky.preprocessors import suspend_wrapper

    return (yield from suspend_wrapper(body(), guard.suspenders))
