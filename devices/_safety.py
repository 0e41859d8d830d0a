"""The bench made safe: shutter closed, pump parked; a heartbeat for the exits nobody sees.

``make_safe(bench)`` closes the pump shutter and parks the fluence setpoint at
``[pump].fluence_min_uJ_cm2`` (0 by default) directly on the devices, outside any
plan: the service calls it after every RunEngine call, whatever ended it, as the
last line of defence behind each plan's own cleanup. Each step is tried on its
own (a refused or failed fluence put does not keep the shutter open) and what
could not be done is reported, never raised.

``Heartbeat`` covers what no code of the client can see: a SIGKILL, a crashed PC,
a pulled network cable. While a bench is connected, a thread writes an increasing
counter (1, 2, ... wrapping below 2**31) to the bench file's ``[pump].watchdog`` PV
every ``watchdog_timeout_s / 4`` wall seconds; the bench's IOC closes the shutter
when the counter has not changed for ``watchdog_timeout_s`` while the shutter is
open (the PV contract is in ``docs/pvs.md``). ``stop(disarm=True)`` writes 0, which
tells the IOC that this client left on purpose with the shutter closed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

__all__ = ["Heartbeat", "SafeReport", "make_safe"]

log = logging.getLogger(__name__)

#: Wall seconds each step of ``make_safe`` may take (a put with completion).
SAFE_TIMEOUT_S = 5.0
#: Wall seconds between heartbeats while the watchdog PV does not take them (disconnected).
RETRY_S = 0.25


@dataclass(frozen=True)
class SafeReport:
    """What ``make_safe`` did: the shutter confirmed closed, the fluence parked, and what failed."""

    shutter_closed: bool
    fluence_parked: bool
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.shutter_closed and self.fluence_parked

    def describe(self) -> str:
        """One line for a log or the console."""
        if self.ok:
            return "shutter closed, pump fluence parked"
        return "; ".join(self.problems)


def _value(signal) -> float:
    try:
        return float(signal.get(use_monitor=False))
    except TypeError:  # signals without monitors (the twin's) take no such keyword
        return float(signal.get())


def make_safe(bench, *, timeout_s: float = SAFE_TIMEOUT_S) -> SafeReport:
    """Close the pump shutter, then park the fluence setpoint at ``[pump].fluence_min_uJ_cm2`` (uJ/cm^2).

    Works on the EPICS and the twin's devices alike. Never raises: a step that fails is
    in ``problems`` (with the IOC's reason), and ``shutter_closed`` is True only when the
    shutter reads 0 afterwards.
    """
    pump = bench.pump
    problems: list[str] = []
    closed = False
    try:
        if _value(pump.shutter) != 0:
            pump.shutter.set(0).wait(timeout=timeout_s)
        closed = _value(pump.shutter) == 0
        if not closed:
            problems.append("the shutter still reads open after it was closed")
    except Exception as exc:
        problems.append(f"could not close the shutter: {type(exc).__name__}: {exc}")
    park = float(bench.config.pump.fluence_min_uJ_cm2)
    parked = False
    try:
        pump.fluence.set(park).wait(timeout=timeout_s)
        parked = True
    except Exception as exc:
        problems.append(f"could not park the fluence at {park:g} uJ/cm^2: {type(exc).__name__}: {exc}")
    return SafeReport(closed, parked, tuple(problems))


class Heartbeat:
    """Refreshes the bench's watchdog PV from a thread of the control layer while the bench is connected.

    ``signal``: an ophyd ``EpicsSignal`` of the watchdog PV; ``timeout_s``: the bench
    file's ``[pump].watchdog_timeout_s`` (the counter is written every quarter of it).
    """

    def __init__(self, signal, timeout_s: float, *, thread_class=threading.Thread):
        self.signal = signal
        self.timeout_s = float(timeout_s)
        self.period_s = self.timeout_s / 4.0
        self.beats = 0
        self._stop = threading.Event()
        self._thread = thread_class(target=self._run, name=f"heartbeat {signal.name}", daemon=True)

    @property
    def pvname(self) -> str:
        return str(getattr(self.signal, "pvname", self.signal.name))

    def start(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def _beat(self) -> bool:
        self.beats = self.beats % (2**31 - 2) + 1
        try:
            self.signal.put(self.beats, use_complete=False)
        except Exception as exc:  # the IOC away: its watchdog will act; keep trying
            log.debug("heartbeat %s not written: %s", self.pvname, exc)
            return False
        return True

    def _run(self) -> None:
        wait = self.period_s
        while not self._stop.wait(wait):
            # after a failed beat (the IOC away), try again soon: it beats as soon as the PV is back
            wait = self.period_s if self._beat() else min(self.period_s, RETRY_S)

    def stop(self, *, disarm: bool) -> None:
        """Stop refreshing; ``disarm``: write 0 (the client leaves with the shutter closed)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.period_s + 1.0)
        if disarm:
            try:
                self.signal.put(0, use_complete=False)
            except Exception as exc:
                log.debug("heartbeat %s not disarmed: %s", self.pvname, exc)
