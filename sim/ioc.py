"""The twin's EPICS IOC: the bench file's PVs (``docs/pvs.md``) served by caproto on one ``TwinBench``.

Run it with ``gainloop twin serve --bench FILE`` (see ``gainloop twin serve --help``), or
from Python::

    ioc = build_ioc(load_bench("examples/twin_bench.toml"), time_scale=1000)
    serve(ioc, interfaces=["127.0.0.1"], port=5064, list_pvs=True)   # blocks

One IOC session is one engine: the lab clock, the photo-damage each film has taken
and the films made this session live as long as the process.

Time. Every operation advances the engine's lab clock by what it takes on the bench
(an exposure, 1 s of TA averaging, a slit move's travel, a sample change, hours for a
new film) and the IOC awaits that lab time / ``time_scale`` of wall time
(``asyncio.sleep``; the event loop never blocks) before it completes: ``time_scale`` = 1
is real time, 1000 runs the lab a thousand times faster. The clock only advances by
operations (idle wall time does not count), so ``SIM:LabTime`` after an acquisition is
exactly the exposure later. ``SIM:TimeScale`` can be changed while serving (> 0).

Put completion. ``SPEC:Acquire``, ``TA:Acquire``, ``STAGE:Sample-SP``,
``STAGE:NewFilm-Request``, ``ABS:SampleIn`` (the film into or out of the white-light beam,
``[absorption].sample_in_move_s`` of lab time) and the slit's ``.VAL`` complete their CA put
(the put callback / ``wait=True``) only when the operation is done and its data posted. The
acquire and request PVs read 1 while busy and 0 when done; a put of 0 does nothing.
An operation started by a put runs to its end even if the client goes away.

Refusals. A put the bench refuses fails, the stored value does not change, and
``IL:Message`` says why. Refused are: ``PUMP:Fluence-SP`` above the bench's
``fluence_limit_uJ_cm2`` (its ``DRVH``/``HOPR`` and CA control limit), NaN or negative,
or non-zero while ``IL:Permit`` = 0; opening ``PUMP:Shutter`` without permit; a slit move
beyond ``.HLM``/``.LLM``; an unknown sample id; an exposure, TA delay or new-film doping
outside its range. A put with completion (``WRITE_NOTIFY``) is answered as EPICS's rsrv
answers a failed one: a ``WRITE_NOTIFY`` reply with status ``ECA_PUTFAIL`` (caproto's
clients return that reply -- check ``response.status.success``; libca hands the status to
its put callback, which pyepics's own ``put`` drops: ``devices._ca`` reads it from libca);
a plain put gets caproto's ``CA_PROTO_ERROR``. The reason, whole, is in ``IL:Message.VAL$``.
``IL:Permit`` = 0 closes the shutter. ``PUMP:PowerOK`` is writable so that a test can
drop it for suspenders.

Network. Only the given interfaces are bound (default 127.0.0.1); when they are all
loopback, beacons stay on the loopback too (``EPICS_CAS_BEACON_ADDR_LIST``, unless set),
sent to ``EPICS_CA_REPEATER_PORT`` as EPICS base does.

Strings. ``STAGE:Sample-SP``, ``STAGE:Sample-RB``, ``STAGE:Kind-RB`` and ``IL:Message``
are EPICS strings (native DBR_STRING, as ``stringin``/``stringout`` records), so any CA
client shows them as text (``caproto-get GL:STAGE:Sample-RB``, ``caget``); a string holds
at most 39 characters (40 bytes with the terminator), which every sample id does (the
bench file's ids are checked, the twin's new films are ``film-NNN-neD.DD``).
``IL:Message`` behaves as EPICS's ``lsi`` (long string input) record: read as DBR_STRING
it gives the first 39 characters of the message; its long-string form
``IL:Message.VAL$`` (a CHAR array of up to ``STRING_MAX`` characters: ``caget -S``,
``caproto-get -S``) gives the whole message. The devices read a refusal's reason from it.

Faults (``IOC_FAULTS``; switched by the ``SIM:Fault-*`` PVs, int 0/1, or ``--fault``):

* ``pause`` (``SIM:Fault-Pause``): every put except to ``SIM:*`` PVs, and every
  operation in progress, waits until the pause is lifted (reads still answer; a slit
  move freezes where it is). The waiting puts then complete.
* ``disconnect`` (``SIM:Fault-Disconnect``): the CA server is torn down -- listeners
  and search sockets closed, every client's circuit closed -- for ``disconnect_s`` of
  wall time, then served again on the same port with the same engine
  (``sim._ioc_server``); the PV reads 0 again afterwards. Operations in progress carry on.
* ``stuck_motor`` (``SIM:Fault-StuckMotor``): slit moves make no progress (``.DMOV``
  stays 0, ``.MOVN`` 1) until the fault is cleared (the move then continues) or stopped.
* ``saturated_detector`` (``SIM:Fault-Saturated``): every pixel of the next spectra at
  the full well, ``SPEC:Saturated`` = 1 (the engine's fault).
* ``nan_readback`` (``SIM:Fault-NaN``): spectra, their statistics, ``TA:dAlpha``,
  ``PUMP:Fluence-RB`` and ``PUMP:PulseEnergy-RB`` read NaN.
* ``inf_readback`` (``SIM:Fault-Inf``): the next spectra, their integrated counts,
  ``TA:dAlpha``, ``PUMP:Fluence-RB`` and ``PUMP:PulseEnergy-RB`` read +inf (an overflowed
  or divided-by-zero readback of a driver).
* ``out_of_range_readback`` (``SIM:Fault-OutOfRange``): ``PUMP:Fluence-RB`` and
  ``PUMP:PulseEnergy-RB`` read negative (a power meter with a wrong zero): a number, but
  not one a fluence can be.
* ``missing_readback`` (``SIM:Fault-Missing``): the IOC reboots (every circuit closed, the
  server away for ``REBOOT_S`` of wall time, as under ``disconnect``) and comes back without
  the record of ``SPEC:Integrated`` -- its database file failed to load: searches for it go
  unanswered and a client's channel to it stays disconnected, every other PV reconnects.
  Clearing the fault reboots the IOC again with the record loaded.
* ``string_readback`` (``SIM:Fault-String``): the IOC reboots with ``SPEC:Integrated``
  loaded as a ``stringin`` record (native DBR_STRING) instead of an ``ai``: clients
  reconnect to a PV whose value is text, the integrated counts as the camera software
  formats them (``'1.234e+05 counts'``). Clearing the fault reboots with the ``ai`` again.
  (A CA server cannot change a channel's native type under a connected client: a
  mis-typed record reaches clients only through a reboot, and so it does here.)
  With both faults on, the record is missing.

A fault PV put to the value it already has changes nothing (no reboot).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TextIO

import numpy as np
from caproto import CaprotoError, ChannelString, ChannelType, SkipWrite, native_type
from caproto.server import PVGroup, PvpropertyDouble, PvpropertyStringRO, pvproperty

from core.errors import GainloopError, ParameterError
from devices.config import BenchConfig
from sim._ioc_motor import SlitMotor, install_field_putters
from sim._ioc_server import PortInUse, supervise
from sim.engine import InterlockError, TwinBench

__all__ = [
    "DEFAULT_DISCONNECT_S",
    "IOC_FAULTS",
    "REBOOT_S",
    "SIM_PVS",
    "STRING_MAX",
    "IOCServeError",
    "TwinIOC",
    "build_ioc",
    "normalise_fault",
    "serve",
]

log = logging.getLogger("gainloop.ioc")

#: Longest message (characters) of ``IL:Message`` (its long string ``IL:Message.VAL$``).
STRING_MAX = 256
#: Longest text of a DBR_STRING (40 bytes with the terminator).
_DBR_STRING_MAX = 39
#: Default wall time (s) the PVs stay away under the ``disconnect`` fault.
DEFAULT_DISCONNECT_S = 5.0
#: Wall time (s) the PVs stay away while the IOC reboots (``missing_readback``, ``string_readback``).
REBOOT_S = 0.3

#: Fault name -> (its SIM PV, the engine's fault of that name or None if the IOC's own).
IOC_FAULTS: dict[str, tuple[str, str | None]] = {
    "pause": ("SIM:Fault-Pause", None),
    "disconnect": ("SIM:Fault-Disconnect", None),
    "stuck_motor": ("SIM:Fault-StuckMotor", "stuck_motor"),
    "saturated_detector": ("SIM:Fault-Saturated", "saturated_detector"),
    "nan_readback": ("SIM:Fault-NaN", "nan_readback"),
    "inf_readback": ("SIM:Fault-Inf", None),
    "out_of_range_readback": ("SIM:Fault-OutOfRange", None),
    "missing_readback": ("SIM:Fault-Missing", None),
    "string_readback": ("SIM:Fault-String", None),
}
_FAULT_ALIASES = {
    "stuck": "stuck_motor",
    "saturated": "saturated_detector",
    "nan": "nan_readback",
    "inf": "inf_readback",
    "out_of_range": "out_of_range_readback",
    "missing": "missing_readback",
    "string": "string_readback",
}

#: The twin-only PVs (relative to the prefix), served besides the bench file's.
SIM_PVS = ("SIM:LabTime", "SIM:TimeScale", *(pv for pv, _ in IOC_FAULTS.values()))

_TA_AVERAGING_S = 1.0


class IOCServeError(GainloopError):
    """The IOC cannot serve (an interface that is not this host's, a port it cannot bind ...)."""


def normalise_fault(name: str) -> str:
    """The canonical fault name for ``name`` (``stuck-motor``, ``nan`` ... accepted)."""
    key = name.strip().lower().replace("-", "_")
    key = _FAULT_ALIASES.get(key, key)
    if key not in IOC_FAULTS:
        raise ParameterError(f"unknown fault {name!r}; known faults: {', '.join(IOC_FAULTS)}")
    return key


def _scalar(value) -> float:
    if isinstance(value, (list, tuple, np.ndarray)):
        value = value[0]
    return float(value)


def _text(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    return str(value).replace("\x00", "").strip()


def _check_time_scale(x: float) -> float:
    x = float(x)
    if not (math.isfinite(x) and 0 < x <= 1e9):
        raise ParameterError(f"time scale must be a number of lab seconds per wall second in (0, 1e9], got {x!r}")
    return x


class _LongStringRO(PvpropertyStringRO):
    """A read-only string PV as EPICS's ``lsi`` record: read as DBR_STRING it gives the first 39
    characters (and its terminator), read as a long string (``NAME.VAL$``, a CHAR array) the whole text."""

    async def _read(self, data_type):
        metadata, values = await super()._read(data_type)
        if isinstance(data_type, ChannelType) and native_type(data_type) == ChannelType.STRING:
            values = type(values)(v[:_DBR_STRING_MAX] for v in values)
        return metadata, values


class _CheckedDouble(PvpropertyDouble):
    """A double whose putter does every check itself (caproto's DRVL/DRVH check is skipped,
    so that a refusal can be explained in IL:Message before the put fails)."""

    async def verify_value(self, value):
        return await self.putter(self, value)


class TwinIOC(PVGroup):
    """The PVs of one bench on one ``TwinBench``. Build it with ``build_ioc`` (its PV names
    come from the bench file); ``pvdb`` is what caproto serves."""

    def __init__(
        self,
        *args,
        bench: TwinBench,
        time_scale: float = 1.0,
        disconnect_s: float = DEFAULT_DISCONNECT_S,
        faults: Iterable[str] = (),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.bench = bench
        self.time_scale = _check_time_scale(time_scale)
        if not (math.isfinite(disconnect_s) and disconnect_s >= 0):
            raise ParameterError(f"disconnect time must be >= 0 s, got {disconnect_s!r}")
        self.disconnect_s = float(disconnect_s)
        self.faults = {normalise_fault(f) for f in faults}
        self.bench.state.faults |= {IOC_FAULTS[f][1] for f in self.faults if IOC_FAULTS[f][1]}
        self.unpaused = asyncio.Event()
        if "pause" not in self.faults:
            self.unpaused.set()
        self.disconnect_requested = asyncio.Event()
        if "disconnect" in self.faults:
            self.disconnect_requested.set()
        #: set to reboot the IOC (the server goes away for ``reboot_s``), e.g. with a record missing
        self.reboot_requested = asyncio.Event()
        self.reboot_s = REBOOT_S
        # SPEC:Integrated as a mis-typed (stringin) record loads it under ``string_readback``
        self.integrated_text = ChannelString(value="0 counts", max_length=40)
        self.stage_idle = asyncio.Event()
        self.stage_idle.set()
        self._locks = {k: asyncio.Lock() for k in ("spec", "ta", "stage")}
        self._tasks: set[asyncio.Task] = set()
        #: the watchdog ([pump].watchdog): armed by a heartbeat other than 0, time of the last one (monotonic s)
        self.watchdog_armed = False
        self.heartbeat_at = time.monotonic()
        self.slit_motor = SlitMotor(self, self.slit)

    # ------------------------------------------------------------------ helpers
    async def gate(self) -> None:
        """Wait while the IOC is paused (fault)."""
        await self.unpaused.wait()

    async def say(self, message: str) -> None:
        """Put a refusal or interlock event into IL:Message."""
        self.bench.state.message = message
        if message != "ok":
            log.info("%s", message)
        await self.il_message.write(message[:STRING_MAX], verify_value=False)

    async def _refuse(self, message: str, exc_type: type[Exception] = ParameterError):
        await self.say(message)
        raise exc_type(message)

    async def lab_sleep(self, lab_seconds: float) -> None:
        """Await ``lab_seconds`` of lab time in wall time (lab time / time scale)."""
        if lab_seconds > 0:
            await asyncio.sleep(lab_seconds / self.time_scale)

    async def _w(self, channel, value) -> None:
        await channel.write(value, verify_value=False)

    def _nan(self) -> bool:
        return "nan_readback" in self.bench.state.faults

    def _bad(self, value: float, *, signed: bool = False) -> float:
        """A readback as the readback faults make it (NaN, +inf, negative for ``signed`` ones)."""
        if self._nan():
            return math.nan
        if "inf_readback" in self.faults:
            return math.inf
        if signed and "out_of_range_readback" in self.faults:
            return -abs(value) - 1.0
        return value

    async def post_clock_and_pump(self) -> None:
        """Post the lab clock and the pump's readbacks (they drift with the clock)."""
        b, s = self.bench, self.bench.state
        await self._w(self.lab_time, b.lab_time_s)
        fluence = s.fluence_uJ_cm2 * float(b.drift.factor(b.lab_time_s))
        await self._w(self.fluence_rb, self._bad(fluence, signed=True))
        await self._w(self.pulse_energy_rb, self._bad(b.pulse_energy_uJ(), signed=True))
        await self._w(self.shutter, int(s.shutter_open))
        await self._w(self.power_ok, int(s.power_ok))
        await self._w(self.permit, int(s.permit))

    async def post_stage(self) -> None:
        entry = self.bench.current()
        await self._w(self.sample_rb, entry.id)
        await self._w(self.doping_rb, entry.doping)
        await self._w(self.period_rb, entry.grating_period_nm or 0.0)
        await self._w(self.kind_rb, entry.kind)
        neutral = self.bench.neutral_reference()
        await self._w(self.neutral_abs, np.asarray(neutral.total, dtype=float))
        await self._w(self.neutral_1s_abs, np.asarray(neutral.one_s, dtype=float))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _operate(self, instance, value, coro: Coroutine[Any, Any, Any]):
        """Post ``value`` now, run ``coro`` to its end (even if the client goes away), then
        complete the put without writing the value again."""
        await self._w(instance, value)
        await asyncio.shield(self._spawn(coro))
        raise SkipWrite

    async def initialise(self) -> None:
        """Post every PV's value and limits from the engine (before serving)."""
        b, s, cfg = self.bench, self.bench.state, self.bench.config
        limit = b.fluence_limit_uJ_cm2
        await self._post_limits(self.fluence_sp, 0.0, limit)
        fields = self.fluence_sp.field_inst
        for ch, v in (
            (fields.drive_high_limit, limit),
            (fields.drive_low_limit, 0.0),
            (fields.high_operating_range, limit),
            (fields.low_operating_range, 0.0),
        ):
            await self._w(ch, v)
        await self._w(fields.engineering_units, "uJ/cm^2")
        await self._w(self.fluence_sp, s.fluence_uJ_cm2)
        await self._w(self.rep_rate_rb, b.presets.setup.pump_repetition_rate_kHz)
        await self.slit_motor.initialise()
        await self._w(self.sample_sp, s.sample_id)
        await self.post_stage()
        await self._w(self.busy, 0)
        sp = cfg.spectrometer
        await self._post_limits(self.exposure, sp.exposure_min_s, sp.exposure_max_s)
        await self._w(self.exposure, s.exposure_s)
        await self._w(self.wavelength, np.asarray(b.wavelength_nm, dtype=float))
        await self._w(self.spectrum, np.zeros(sp.pixels))
        ta = cfg.transient_absorption
        await self._post_limits(self.delay_sp, ta.delay_min_ps, ta.delay_max_ps)
        await self._w(self.delay_sp, s.ta_delay_ps)
        await self._w(self.delay_rb, s.ta_delay_ps)
        await self._w(self.pump_excitons, s.ta_pump_excitons)
        await self._w(self.angle_sp, s.polarizer_deg)
        await self._w(self.angle_rb, s.polarizer_deg)
        await self._w(self.il_message, s.message)
        await self._w(self.lamp_shutter, int(s.lamp_shutter_open))
        await self._w(self.lamp_ok, int(s.lamp_ok))
        await self._w(self.sample_in, int(s.sample_in_beam))
        await self._w(self.time_scale_pv, self.time_scale)
        for name, (_, engine_fault) in IOC_FAULTS.items():
            on = name in self.faults or (engine_fault is not None and engine_fault in s.faults)
            await self._w(self._fault_pv(name), int(on))
        await self.post_clock_and_pump()
        if self.bench.config.pump.watchdog is not None:
            self._spawn(self.watchdog_loop())

    @staticmethod
    async def _post_limits(pv, lo: float, hi: float) -> None:
        """Post ``lo``..``hi`` as the control and display limits of ``pv``."""
        await pv.write_metadata(lower_ctrl_limit=lo, upper_ctrl_limit=hi, lower_disp_limit=lo, upper_disp_limit=hi)

    def _fault_pv(self, name: str):
        return getattr(self, f"fault_{name}")

    def served_pvdb(self) -> dict[str, Any]:
        """The PVs the server serves now: ``pvdb`` with ``SPEC:Integrated`` missing
        (``missing_readback``) or a string record (``string_readback``)."""
        pvdb = dict(self.pvdb)
        name = self.integrated.pvname
        if "missing_readback" in self.faults:
            del pvdb[name]
        elif "string_readback" in self.faults:
            pvdb[name] = self.integrated_text
        return pvdb

    def record_fault_note(self) -> str:
        """What the record faults do to ``SPEC:Integrated`` now (for the log of a reboot)."""
        name = self.integrated.pvname
        if "missing_readback" in self.faults:
            return f"{name} not loaded (missing_readback fault)"
        if "string_readback" in self.faults:
            return f"{name} loaded as a stringin record (string_readback fault)"
        return f"{name} loaded as an ai record"

    async def _post_integrated(self, value: float) -> None:
        await self._w(self.integrated, value)
        await self._w(self.integrated_text, f"{value:.4g} counts")

    async def disconnect_done(self) -> None:
        """Called by the server when it is back after a disconnection."""
        self.faults.discard("disconnect")
        await self._w(self.fault_disconnect, 0)

    async def _within(self, value, lo: float, hi: float, refusal: Callable[[float], str]) -> float:
        """A setpoint put: its number (once not paused) if finite and within ``lo``..``hi``, else refused
        with ``refusal(number)``."""
        v = _scalar(value)
        await self.gate()
        if not (math.isfinite(v) and lo <= v <= hi):
            await self._refuse(refusal(v))
        return v

    async def _on_request(self, instance, value, operation: Callable[[Any], Coroutine[Any, Any, None]]):
        """A put to an acquire PV: 1 runs ``operation(instance)`` to its end (``_operate``), 0 does nothing."""
        if not _scalar(value):
            return 0
        await self.gate()
        await self._operate(instance, 1, operation(instance))

    async def _acquisition(self, acquire, lock: str, take: Callable[[], tuple[Any, float]], post) -> None:
        """Once no stage move is under way and not paused: ``take()`` an acquisition (its result and the lab
        time it takes), wait that lab time, then ``post(result)``; ``acquire`` reads 0 after, however it ends."""
        try:
            async with self._locks[lock]:
                await self.stage_idle.wait()
                await self.gate()
                result, lab_s = take()
                await self.post_clock_and_pump()
                await self.lab_sleep(lab_s)
                await self.gate()
                await post(result)
        finally:
            await self._w(acquire, 0)

    # ------------------------------------------------------------------ pump and interlock
    async def _put_fluence(self, instance, value):
        f = _scalar(value)
        await self.gate()
        try:
            self.bench.set_fluence(f)
        except InterlockError as exc:
            await self._refuse(str(exc), InterlockError)
        await self.say(self.bench.state.message)
        await self._w(instance, f)
        await self.post_clock_and_pump()
        raise SkipWrite

    async def _put_shutter(self, instance, value):
        await self.gate()
        try:
            self.bench.set_shutter(bool(_scalar(value)))
        except InterlockError as exc:
            await self._refuse(str(exc), InterlockError)
        if self.bench.state.shutter_open:
            self.heartbeat_at = time.monotonic()  # a client opening the shutter is alive: a heartbeat
        await self.post_clock_and_pump()
        return int(self.bench.state.shutter_open)

    async def _put_power_ok(self, instance, value):
        await self.gate()
        ok = bool(_scalar(value))
        if self.bench.state.power_ok and not ok:
            await self.say("pump power not OK")
        self.bench.state.power_ok = ok
        return int(ok)

    async def _put_permit(self, instance, value):
        await self.gate()
        permit = bool(_scalar(value))
        was = self.bench.state.permit
        self.bench.set_permit(permit)
        if permit != was:
            await self.say(self.bench.state.message if not permit else "interlock permit restored")
        await self.post_clock_and_pump()
        return int(self.bench.state.permit)

    async def _refuse_limit_field(self, instance, value):
        if _scalar(value) == _scalar(instance.value):
            return value  # caproto writes a linked field's value back on every read (HOPR/LOPR)
        await self._refuse("the fluence limit comes from the bench file and cannot be changed over CA")

    # ------------------------------------------------------------------ watchdog
    async def _put_watchdog(self, instance, value):
        """A heartbeat: any value but 0 refreshes (and arms) the watchdog, 0 disarms it. Never gated."""
        beat = int(_scalar(value))
        self.heartbeat_at = time.monotonic()
        self.watchdog_armed = beat != 0
        return beat

    async def watchdog_loop(self) -> None:
        """Close the shutter and park the pump when an armed heartbeat is older than the bench's
        ``[pump].watchdog_timeout_s`` (wall seconds) while the shutter is open."""
        timeout_s = self.bench.config.pump.watchdog_timeout_s
        while True:
            await asyncio.sleep(min(0.1, timeout_s / 10.0))
            stale_s = time.monotonic() - self.heartbeat_at
            if not (self.watchdog_armed and self.bench.state.shutter_open and stale_s > timeout_s):
                continue
            self.bench.set_shutter(False)
            self.bench.set_fluence(0.0)
            await self._w(self.fluence_sp, 0.0)
            await self.say(f"watchdog: no heartbeat for {stale_s:.1f} s: shutter closed")
            log.warning("watchdog: no heartbeat for %.1f s (limit %g s): shutter closed, fluence 0", stale_s, timeout_s)
            await self.post_clock_and_pump()

    # ------------------------------------------------------------------ slit
    async def _put_slit(self, instance, value):
        await self.gate()
        await self.slit_motor.put_val(value)

    # ------------------------------------------------------------------ stage
    async def _put_sample(self, instance, value):
        sample_id = _text(value)
        await self.gate()
        if sample_id not in self.bench.library:
            ids = ", ".join(self.bench.library)
            await self._refuse(f"refused sample {sample_id!r}: not in the library ({ids})")
        await self._operate(instance, sample_id, self._stage_op(lambda: self.bench.select_sample(sample_id)))

    async def _put_new_film_doping(self, instance, value):
        return await self._within(
            value, 0.0, math.inf, lambda d: f"refused new-film doping {d!r}: must be a finite number >= 0 electrons/dot"
        )

    async def _put_new_film(self, instance, value):
        if not _scalar(value):
            return 0
        await self.gate()
        doping = float(self.new_film_doping.value)

        def make() -> float:
            _, dt = self.bench.make_film(doping)
            return dt

        await self._operate(instance, 1, self._stage_op(make, done=instance))

    async def _stage_op(self, op: Callable[[], float], done=None) -> None:
        async with self._locks["stage"]:
            await self.gate()
            self.stage_idle.clear()
            await self._w(self.busy, 1)
            try:
                try:
                    dt = op()
                except GainloopError as exc:
                    await self._refuse(str(exc))
                await self.post_clock_and_pump()
                await self.lab_sleep(dt)
                await self.gate()
                await self._w(self.sample_sp, self.bench.state.sample_id)
                await self.post_stage()
                await self.post_clock_and_pump()
            finally:
                await self._w(self.busy, 0)
                self.stage_idle.set()
                if done is not None:
                    await self._w(done, 0)

    # ------------------------------------------------------------------ spectrometer
    async def _put_exposure(self, instance, value):
        sp = self.bench.config.spectrometer
        lo, hi = sp.exposure_min_s, sp.exposure_max_s
        e = await self._within(value, lo, hi, lambda e: f"refused exposure {e!r} s: allowed {lo:g} to {hi:g} s")
        self.bench.state.exposure_s = e
        return e

    async def _put_spec_acquire(self, instance, value):
        return await self._on_request(instance, value, self._acquire_spectrum)

    async def _acquire_spectrum(self, acquire) -> None:
        def take():
            acq = self.bench.acquire()
            return acq, acq.exposure_s

        await self._acquisition(acquire, "spec", take, self._post_spectrum)

    async def _post_spectrum(self, acq) -> None:
        inf = "inf_readback" in self.faults
        counts = np.asarray(acq.counts, dtype=float)
        await self._w(self.spectrum, np.full_like(counts, math.inf) if inf else counts)
        await self._post_integrated(math.inf if inf else acq.integrated)
        await self._w(self.peak_wavelength, acq.peak_wavelength_nm)
        await self._w(self.fwhm, acq.fwhm_nm)
        await self._w(self.saturated, int(acq.saturated))

    # ------------------------------------------------------------------ white light (absorption)
    async def _put_lamp_shutter(self, instance, value):
        await self.gate()
        self.bench.set_lamp_shutter(bool(_scalar(value)))
        return int(self.bench.state.lamp_shutter_open)

    async def _put_lamp_ok(self, instance, value):
        await self.gate()
        ok = bool(_scalar(value))
        if self.bench.state.lamp_ok and not ok:
            await self.say("white-light lamp not OK")
        self.bench.state.lamp_ok = ok
        return int(ok)

    async def _put_sample_in(self, instance, value):
        """Move the film into (1) or out of (0) the white-light beam; the put completes when it is there."""
        inside = bool(_scalar(value))
        await self.gate()
        async with self._locks["stage"]:
            dt = self.bench.set_sample_in_beam(inside)
            await self.post_clock_and_pump()
            await self.lab_sleep(dt)
            await self.gate()
        return int(inside)

    # ------------------------------------------------------------------ polariser, TA
    async def _put_angle(self, instance, value):
        a = _scalar(value)
        await self.gate()
        if not math.isfinite(a):
            await self._refuse(f"refused polariser angle {a!r}")
        self.bench.state.polarizer_deg = a
        await self._w(self.angle_rb, a)
        return a

    async def _put_delay(self, instance, value):
        ta = self.bench.config.transient_absorption
        lo, hi = ta.delay_min_ps, ta.delay_max_ps
        d = await self._within(value, lo, hi, lambda d: f"refused TA delay {d!r} ps: allowed {lo:g} to {hi:g} ps")
        self.bench.state.ta_delay_ps = d
        await self._w(self.delay_rb, d)
        return d

    async def _put_pump_excitons(self, instance, value):
        n = await self._within(value, 0, 100, lambda n: f"refused TA pump level {n!r}: allowed 0 to 100 excitons/dot")
        self.bench.state.ta_pump_excitons = n
        return n

    async def _put_ta_acquire(self, instance, value):
        return await self._on_request(instance, value, self._acquire_ta)

    async def _acquire_ta(self, acquire) -> None:
        async def post(value: float) -> None:
            await self._w(self.ta_signal, math.inf if "inf_readback" in self.faults else value)

        await self._acquisition(acquire, "ta", lambda: (self.bench.acquire_ta(_TA_AVERAGING_S), _TA_AVERAGING_S), post)

    # ------------------------------------------------------------------ SIM
    async def _put_time_scale(self, instance, value):
        try:
            self.time_scale = _check_time_scale(_scalar(value))
        except ParameterError as exc:
            await self._refuse(str(exc))
        return self.time_scale

    async def _set_fault(self, name: str, value) -> int:
        on = bool(_scalar(value))
        engine_fault = IOC_FAULTS[name][1]
        if engine_fault is not None:
            (self.bench.state.faults.add if on else self.bench.state.faults.discard)(engine_fault)
        (self.faults.add if on else self.faults.discard)(name)
        log.warning("fault %s %s", name, "on" if on else "off")
        return int(on)

    async def _put_fault(self, name: str, value) -> int:
        """A put to the SIM PV of fault ``name``: switch the fault, then do what switching it does."""
        before = self.served_pvdb().get(self.integrated.pvname)
        on = await self._set_fault(name, value)
        if name == "pause":
            (self.unpaused.clear if on else self.unpaused.set)()
        elif name == "disconnect" and on:
            self.disconnect_requested.set()
        elif name in ("nan_readback", "inf_readback", "out_of_range_readback"):
            await self.post_clock_and_pump()
        elif name in ("missing_readback", "string_readback"):
            if self.served_pvdb().get(self.integrated.pvname) is not before:
                self.reboot_requested.set()
        return on


def _ioc_class(cfg: BenchConfig) -> type[TwinIOC]:
    """A ``TwinIOC`` subclass whose pvproperties carry the bench file's PV names."""
    T = TwinIOC
    p, sl, st, sp = cfg.pump, cfg.slit, cfg.stage, cfg.spectrometer
    po, ta, il, ab = cfg.polarizer, cfg.transient_absorption, cfg.interlock, cfg.absorption

    def ro(name, value=0.0, **kw):
        return pvproperty(name=name, value=value, read_only=True, **kw)

    def text(name, put=None, read_only=None):  # DBR_STRING, as a stringin/stringout record
        return pvproperty(name=name, value="", dtype=ChannelType.STRING, put=put, read_only=read_only)

    def checked(name, value, put, units, precision, **kw):  # a double whose putter does every check
        return pvproperty(name=name, value=value, dtype=_CheckedDouble, put=put, units=units, precision=precision, **kw)

    def fault(name):  # the SIM PV of fault ``name``
        async def put(group, instance, value):
            return await group._put_fault(name, value)

        return pvproperty(name=IOC_FAULTS[name][0], value=0, put=put)

    fluence = checked(
        p.fluence_setpoint, 0.0, T._put_fluence, "uJ/cm^2", 3, record="ao", doc="peak fluence setpoint (interlocked)"
    )
    for field in ("drive_high_limit", "drive_low_limit", "high_operating_range", "low_operating_range"):
        getattr(fluence.fields, field).putter(_refuse_limit_field)
    slit = checked(sl.motor, 1000.0, T._put_slit, "um", 1, record="motor", doc="stripe length (motor record)")
    install_field_putters(slit)
    props: dict[str, Any] = {
        "fluence_sp": fluence,
        "fluence_rb": ro(p.fluence_readback, units="uJ/cm^2", precision=3),
        "pulse_energy_rb": ro(p.pulse_energy_readback, units="uJ", precision=5),
        "shutter": pvproperty(name=p.shutter, value=0, put=T._put_shutter),
        "rep_rate_rb": ro(p.repetition_rate_readback, units="kHz", precision=3),
        "power_ok": pvproperty(name=p.power_ok, value=1, put=T._put_power_ok),
        "slit": slit,
        "sample_sp": text(st.sample_setpoint, put=T._put_sample),
        "sample_rb": text(st.sample_readback, read_only=True),
        "doping_rb": ro(st.doping_readback, units="e/dot", precision=3),
        "period_rb": ro(st.grating_period_readback, units="nm", precision=2),
        "kind_rb": text(st.kind_readback, read_only=True),
        "busy": ro(st.busy, value=0),
        "new_film_doping": pvproperty(
            name=st.new_film_doping, value=0.0, put=T._put_new_film_doping, units="e/dot", precision=3
        ),
        "new_film_request": pvproperty(name=st.new_film_request, value=0, put=T._put_new_film),
        "exposure": checked(sp.exposure, 1.0, T._put_exposure, "s", 4),
        "spec_acquire": pvproperty(name=sp.acquire, value=0, put=T._put_spec_acquire),
        "spectrum": ro(sp.spectrum, value=[0.0] * sp.pixels, dtype=float, max_length=sp.pixels, units="counts"),
        "wavelength": ro(sp.wavelength, value=[0.0] * sp.pixels, dtype=float, max_length=sp.pixels, units="nm"),
        "integrated": ro(sp.integrated, units="counts", precision=1),
        "peak_wavelength": ro(sp.peak_wavelength, units="nm", precision=3),
        "fwhm": ro(sp.fwhm, units="nm", precision=3),
        "saturated": ro(sp.saturated, value=0),
        "angle_sp": pvproperty(name=po.angle_setpoint, value=0.0, put=T._put_angle, units="deg", precision=2),
        "angle_rb": ro(po.angle_readback, units="deg", precision=2),
        "delay_sp": checked(ta.delay_setpoint, 0.0, T._put_delay, "ps", 3),
        "delay_rb": ro(ta.delay_readback, units="ps", precision=3),
        "pump_excitons": pvproperty(
            name=ta.pump_excitons, value=1.0, put=T._put_pump_excitons, units="exc/dot", precision=3
        ),
        "ta_acquire": pvproperty(name=ta.acquire, value=0, put=T._put_ta_acquire),
        "ta_signal": ro(ta.signal, precision=5),
        "permit": pvproperty(name=il.permit, value=1, put=T._put_permit),
        "il_message": pvproperty(
            name=il.message, value="", dtype=_LongStringRO, long_string_max_length=STRING_MAX, doc="lsi record"
        ),
        "lamp_shutter": pvproperty(name=ab.lamp_shutter, value=0, put=T._put_lamp_shutter, doc="white-light shutter"),
        "lamp_ok": pvproperty(name=ab.lamp_ok, value=1, put=T._put_lamp_ok, doc="1 while the lamp is lit"),
        "sample_in": pvproperty(name=ab.sample_in, value=1, put=T._put_sample_in, doc="film in the white light"),
        "neutral_abs": ro(
            ab.neutral_absorbance, value=[0.0] * sp.pixels, dtype=float, max_length=sp.pixels, units="OD"
        ),
        "neutral_1s_abs": ro(
            ab.neutral_1s_absorbance, value=[0.0] * sp.pixels, dtype=float, max_length=sp.pixels, units="OD"
        ),
        "lab_time": ro("SIM:LabTime", units="s", precision=3),
        "time_scale_pv": pvproperty(name="SIM:TimeScale", value=1.0, put=T._put_time_scale, units="s/s"),
        **{f"fault_{name}": fault(name) for name in IOC_FAULTS},
    }
    if p.watchdog is not None:
        props["watchdog"] = pvproperty(name=p.watchdog, value=0, put=T._put_watchdog, doc="client heartbeat")
    names = [prop.pvspec.name for prop in props.values()]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ParameterError(f"the bench file gives several PVs the same name: {', '.join(dup)}")
    return type(TwinIOC)("TwinIOC_" + re.sub(r"\W", "_", cfg.bench.name), (TwinIOC,), props)


async def _refuse_limit_field(fields, instance, value):
    return await fields.parent.group._refuse_limit_field(instance, value)


def build_ioc(
    cfg: BenchConfig,
    *,
    bench: TwinBench | None = None,
    prefix: str | None = None,
    time_scale: float = 1.0,
    seed: int | None = None,
    faults: Iterable[str] = (),
    disconnect_s: float = DEFAULT_DISCONNECT_S,
) -> TwinIOC:
    """The IOC of bench file ``cfg`` on a new ``TwinBench`` (or ``bench``); PV names are
    ``prefix`` (default the file's ``[bench].prefix``) + the file's names."""
    bench = bench if bench is not None else TwinBench(cfg, seed=seed)
    cls = _ioc_class(cfg)
    return cls(
        prefix=cfg.bench.prefix if prefix is None else prefix,
        bench=bench,
        time_scale=time_scale,
        disconnect_s=disconnect_s,
        faults=faults,
    )


def _check_interfaces(interfaces: Sequence[str]) -> list[str]:
    out = []
    for addr in interfaces:
        try:
            out.append(str(ipaddress.IPv4Address(addr.strip())))
        except ValueError:
            raise ParameterError(f"--interface {addr!r} is not an IPv4 address (e.g. 127.0.0.1 or 0.0.0.0)") from None
    if not out:
        raise ParameterError("no interface to serve on")
    return out


def _configure_environment(interfaces: Sequence[str], port: int | None) -> None:
    """Keep beacons on the loopback when serving only there (unless the user set them)."""
    import os

    if all(ipaddress.IPv4Address(a).is_loopback for a in interfaces):
        if "EPICS_CAS_BEACON_ADDR_LIST" not in os.environ:
            os.environ["EPICS_CAS_BEACON_ADDR_LIST"] = " ".join(sorted(set(interfaces)))
            os.environ["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] = "NO"
    if "EPICS_CAS_BEACON_PORT" not in os.environ and "EPICS_CA_REPEATER_PORT" in os.environ:
        os.environ["EPICS_CAS_BEACON_PORT"] = os.environ["EPICS_CA_REPEATER_PORT"]
    if port is not None:
        os.environ["EPICS_CA_SERVER_PORT"] = str(port)


class _QuietRefusals(logging.Filter):
    """caproto logs every failed put with a traceback (a refusal is already in IL:Message and
    our own log), and every beacon no repeater listens to (beacons are best-effort)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Invalid write request") or msg.startswith("Failed to send beacon"))


def serve(
    ioc: TwinIOC,
    *,
    interfaces: Sequence[str] = ("127.0.0.1",),
    port: int | None = None,
    list_pvs: bool = False,
    out: TextIO | None = None,
) -> None:
    """Serve ``ioc`` until SIGINT/SIGTERM (blocks). Binds only ``interfaces`` (default the
    loopback); ``port`` is the CA server port (default EPICS_CA_SERVER_PORT, else 5064): if it is
    in use on an interface (another IOC, any TCP listener) ``IOCServeError`` says so, nothing is served.
    With ``list_pvs`` every served PV name is printed (one a line) before serving."""
    out = out if out is not None else sys.stdout
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s gainloop-ioc %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    interfaces = _check_interfaces(interfaces)
    if port is not None and not (0 < int(port) < 65536):
        raise ParameterError(f"--port must be 1..65535, got {port!r}")
    _configure_environment(interfaces, port)
    for name in ("caproto", "caproto.circ", "caproto.ctx"):
        logging.getLogger(name).addFilter(_QuietRefusals())
    if list_pvs:
        served = ioc.served_pvdb()
        out.write(f"# {len(served)} PVs\n")
        for name in served:
            out.write(name + "\n")
        out.flush()

    def ready(actual_port: int) -> None:
        out.write(
            f"# serving bench {ioc.bench.config.bench.name!r} on {','.join(interfaces)} port {actual_port} "
            f"(time scale {ioc.time_scale:g})\n"
        )
        out.flush()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await ioc.initialise()
        await supervise(ioc, interfaces=interfaces, port=port, stop=stop, on_ready=ready)

    try:
        asyncio.run(main())
    except PortInUse as exc:
        raise IOCServeError(
            f"cannot serve bench {ioc.bench.config.bench.name!r} (PV prefix {ioc.prefix}) on {exc.interface} "
            f"port {exc.port}: the port is in use (another IOC?); choose another with --port"
        ) from None
    except (OSError, CaprotoError) as exc:
        why = f"{exc} ({exc.__cause__})" if exc.__cause__ is not None else str(exc)
        raise IOCServeError(f"cannot serve on {', '.join(interfaces)} (port {port or 'default'}): {why}") from None
