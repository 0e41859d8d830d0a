"""EPICS signals of the bench: contract units, client-side checks, puts that report refusals.

``BenchSignal`` (settable) and ``BenchSignalRO`` (readback) differ from ophyd's
``EpicsSignal``/``EpicsSignalRO`` in four ways:

* ``describe()`` carries the PV contract's unit (``units=`` of the component);
* readbacks are fetched fresh on every read (``auto_monitor=False``), so a read
  right after a completed put or acquisition never returns the previous value;
  subscribing still turns monitoring on (ophyd does that);
* ``read()`` of a measurement (``nan_ok=False``) raises ``ReadbackError`` on NaN, inf, text,
  no value or a value below its ``minimum``; a PV that is gone (disconnected, or missing
  from an IOC that rebooted without its record) raises it too, naming the PV;
  ``fresh_measurement(signal)`` does the same for a value read right after an acquisition;
* ``set()`` checks the value against the bench file (``check=``; ``LimitError``,
  nothing sent), then writes with completion and returns a status that fails
  with ``PutRefusedError`` (the IOC's reason) if the IOC refuses, or
  ``DeviceTimeoutError`` if it does not answer in time. ``put()`` is
  ``set().wait()`` (it raises those errors); ``put(force=True)`` skips the check.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from ophyd.signal import EpicsSignal, EpicsSignalRO, SignalRO
from ophyd.utils import DisconnectedError

from ._ca import Completion, put_notify
from ._checks import Check, require_finite
from ._errors import ReadbackError

__all__ = [
    "DEFAULT_PUT_TIMEOUT_S",
    "BenchSignal",
    "BenchSignalRO",
    "ContractReadings",
    "LabClock",
    "fresh_measurement",
]

#: Timeout of a put whose completion is immediate on the bench (setpoints), s.
DEFAULT_PUT_TIMEOUT_S = 10.0


def _bench_config(signal):
    root = signal.root
    cfg = getattr(root, "bench_config", None)
    if cfg is None:
        raise RuntimeError(f"{signal.name}: bench signals must belong to a bench device (no bench_config found)")
    return cfg


class ContractReadings:
    """Signal mixin shared by the EPICS and the twin's signals.

    ``describe()`` carries the PV contract's unit (``_units``); ``read()`` of a
    measurement (``_nan_ok`` False) raises ``ReadbackError`` on NaN or inf.
    """

    _units: str | None = None
    _nan_ok: bool = True
    #: lowest value a measurement can read (None: any), e.g. 0 for a fluence
    _minimum: float | None = None

    def _reading_source(self) -> str:
        """Where the value came from, for error messages (the PV name)."""
        return str(getattr(self, "pvname", "?"))

    def describe(self):
        desc = super().describe()
        if self._units is not None:
            desc[self.name]["units"] = self._units
        return desc

    def read(self):
        try:
            reading = super().read()
        except (TimeoutError, DisconnectedError) as exc:  # a PV gone (disconnected, or no answer)
            raise _missing(self, exc) from exc
        if self.name not in reading:
            raise ReadbackError(f"{self.name} ({self._reading_source()}) is missing from the reading")
        if not self._nan_ok:
            require_finite(
                reading[self.name]["value"],
                f"{self.name} ({self._reading_source()})",
                minimum=self._minimum,
                unit=self._units or "",
            )
        value = reading[self.name]["value"]
        if isinstance(value, np.ndarray):
            # waveforms go into documents as lists: event-model's schema check formats a
            # rejected ndarray candidate as text on every event (10 ms for a 512-px spectrum)
            reading[self.name]["value"] = value.tolist()
        return reading


def _missing(signal, exc: BaseException) -> ReadbackError:
    source = signal._reading_source() if hasattr(signal, "_reading_source") else getattr(signal, "pvname", "?")
    return ReadbackError(
        f"{signal.name} ({source}) is missing: no reading, the PV is not connected or did not answer "
        f"(gone from the IOC, or the IOC is away) ({exc})"
    )


def fresh_measurement(signal, what: str | None = None):
    """``signal``'s value read from its PV now (not a monitor's), checked as a measurement: raises
    ``ReadbackError`` naming the PV and what was read if the PV is gone (missing) or the value is
    text, no value, NaN, inf or below the signal's minimum."""
    what = what or f"{signal.name} ({getattr(signal, 'pvname', '?')})"
    try:
        value = signal.get(use_monitor=False)
    except (TimeoutError, DisconnectedError) as exc:
        raise _missing(signal, exc) from exc
    require_finite(value, what, minimum=getattr(signal, "_minimum", None), unit=getattr(signal, "_units", None) or "")
    return value


class _BenchMixin(ContractReadings):
    def _init_bench(self, units: str | None, nan_ok: bool, minimum: float | None = None) -> None:
        self._units = units
        self._nan_ok = nan_ok
        self._minimum = minimum


class BenchSignalRO(_BenchMixin, EpicsSignalRO):
    """A readback PV with its contract unit; ``nan_ok=False`` makes NaN a read error."""

    def __init__(
        self,
        read_pv,
        *,
        units: str | None = None,
        nan_ok: bool = True,
        minimum: float | None = None,
        auto_monitor=False,
        **kwargs,
    ):
        super().__init__(read_pv, auto_monitor=auto_monitor, **kwargs)
        self._init_bench(units, nan_ok, minimum)


class BenchSignal(_BenchMixin, EpicsSignal):
    """A setpoint PV (optionally with a separate readback PV), checked against the bench file."""

    def __init__(
        self,
        read_pv,
        write_pv=None,
        *,
        units: str | None = None,
        check: Check | None = None,
        nan_ok: bool = True,
        minimum: float | None = None,
        put_timeout: float = DEFAULT_PUT_TIMEOUT_S,
        auto_monitor=False,
        **kwargs,
    ):
        super().__init__(read_pv, write_pv=write_pv, auto_monitor=auto_monitor, **kwargs)
        self._init_bench(units, nan_ok, minimum)
        self._check = check
        self.put_timeout = put_timeout

    def check_value(self, value):
        if self._check is not None:
            self._check(value, _bench_config(self))
        super().check_value(value)

    def set(self, value, *, timeout=None, settle_time=None, **kwargs):
        """Check, write with completion; the status fails with the bench's reason if refused."""
        self.check_value(value)
        return self._put_status(value, self.put_timeout if timeout is None else timeout)

    def put(self, value, *, force=False, timeout=None, wait=True, **kwargs):
        """Check (unless ``force``), write with completion and (``wait``) raise if refused or late."""
        if not force:
            self.check_value(value)
        status = self._put_status(value, self.put_timeout if timeout is None else timeout)
        if wait:
            status.wait()
        return status

    def _put_status(self, value, timeout):
        pvname = self.setpoint_pvname
        done = Completion(
            self, timeout, lambda: f"{self.name}: put of {value!r} to {pvname} did not complete within {timeout:g} s"
        )
        cfg = _bench_config(self)
        put_notify(
            self,
            value,
            lambda err: done.finish() if err is None else done.fail(err),
            timeout=timeout,
            connection_timeout=cfg.bench.connection_timeout_s,
            reason_pv=cfg.pv(cfg.interlock.message),
        )
        return done.status


class LabClock(ContractReadings, SignalRO):
    """A bench's lab clock as a read-only signal, in seconds: every read asks ``now()``.

    A bench without a lab-clock PV reads the wall clock (``LabClock.wall()``, s since the
    epoch); the twin reads its simulated clock (s since its session began). ``source``
    says which, in words (it is recorded with campaigns and shown in reports). A plan
    reads it as any other signal: ``t_s = yield from bps.rd(bench.clock)``.
    """

    def __init__(self, now: Callable[[], float], *, source: str, name: str = "lab_clock", **kwargs):
        self._now = now
        #: which clock this is, in words
        self.source = source
        super().__init__(name=name, value=float(now()), **kwargs)
        self._units = "s"
        self._nan_ok = False

    @classmethod
    def wall(cls, *, name: str = "lab_clock") -> LabClock:
        """The wall clock (``time.time()``, s since the epoch)."""
        return cls(time.time, source="the wall clock", name=name)

    def _reading_source(self) -> str:
        return self.source

    def get(self, **kwargs) -> float:
        """The clock now, s (``use_monitor`` and other ``Signal.get`` arguments are accepted and moot)."""
        value = float(self._now())
        self._readback = value
        self._metadata["timestamp"] = time.time()
        return value
