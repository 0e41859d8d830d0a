"""The optical bench as ophyd devices over EPICS, with PV names from the bench file.

``connect_bench(cfg)`` builds every device of the PV contract (``docs/pvs.md``)
and waits for their PVs; ``Bench`` is the container plans receive. The twin's
in-process devices (``sim.devices.twin_bench_devices``) return the same
container with devices of the same component names, units and errors.

Component names (and units) - the interface plans rely on:

* ``pump`` (``PumpLaser``): ``fluence`` (uJ/cm^2, setpoint ``PUMP:Fluence-SP``,
  readback ``PUMP:Fluence-RB``, hinted), ``shutter`` (0/1), ``pulse_energy`` (uJ),
  ``repetition_rate`` (kHz), ``power_ok`` (0/1)
* ``slit`` (``StripeSlit``, an ``EpicsMotor``): stripe length in um
* ``stage`` (``SampleStage``): ``set(sample_id)``, ``sample`` (id), ``doping``
  (electrons/dot), ``grating_period`` (nm, 0 for a film), ``sample_kind``
  (``film``/``dfb``; ``kind`` is taken by ophyd), ``busy``, ``request_film(doping)``,
  ``library``, ``add_film(entry)`` (a film of an earlier session back in the library)
* ``spectrometer`` (``Spectrometer``): ``exposure`` (s), ``trigger()``, ``spectrum``
  (counts), ``wavelength`` (nm), ``integrated`` (counts, hinted),
  ``peak_wavelength`` (nm), ``fwhm`` (nm), ``saturated`` (0/1)
* ``polarizer`` (``Polarizer``): ``angle`` (deg)
* ``ta`` (``TransientAbsorption``): ``delay`` (ps), ``pump_excitons``
  (excitons/dot), ``trigger()``, ``signal`` (d(alpha)/alpha0, unit 1)
* ``interlock`` (``Interlock``): ``permit`` (0/1), ``message``
* ``lamp`` (``WhiteLight``): the white-light source of the absorption measurement, read by
  the same spectrometer: ``shutter`` (0/1), ``ok`` (0/1, the lamp lit), ``sample_in`` (0/1:
  the mounted film in the white-light beam, or the beam beside it for the reference),
  ``neutral_absorbance`` and ``neutral_1s_absorbance`` (OD on the spectrometer's axis: the
  neutral reference of the mounted film's dots and its 1S band; zeros when there is none)

How faults surface: a setpoint outside the bench file's limits (or NaN) raises
``LimitError`` before anything is sent; a setpoint the IOC refuses fails the
status with ``PutRefusedError`` carrying the IOC's reason; an operation that does
not complete in time (stuck motor, paused IOC) fails with ``DeviceTimeoutError``;
an acquisition whose readbacks are NaN fails its trigger status with
``ReadbackError`` (and reading a NaN measurement raises it), as do readbacks that
are inf, text (a PV served as a string record), below their minimum (a negative
fluence) or missing (a PV gone from the IOC) -- each error names the PV and what
was read; a saturated spectrum is data (``saturated`` = 1), not an error.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import ophyd
from ophyd import Device, EpicsMotor, EpicsSignal, Signal
from ophyd import FormattedComponent as FCpt
from ophyd.positioner import PositionerBase
from ophyd.signal import EpicsSignalBase
from ophyd.status import Status
from ophyd.utils import InvalidState

from ._ca import Completion, ensure_control_layer, put_notify
from ._checks import (
    UNITS,
    check_angle,
    check_delay,
    check_doping,
    check_exposure,
    check_flag,
    check_fluence,
    check_pump_excitons,
    check_sample_id,
    check_slit,
)
from ._errors import BenchConnectionError, DeviceTimeoutError, ReadbackError
from ._safety import Heartbeat, SafeReport, make_safe
from ._signals import BenchSignal, BenchSignalRO, LabClock, fresh_measurement
from .config import BenchConfig, LibraryEntry, load_bench

__all__ = [
    "Bench",
    "BenchDevice",
    "Interlock",
    "Polarizer",
    "PumpLaser",
    "SampleLibrary",
    "SampleStage",
    "Spectrometer",
    "StripeSlit",
    "TransientAbsorption",
    "WhiteLight",
    "connect_bench",
]


def _pv_names(cfg: BenchConfig, section) -> dict[str, str]:
    """Full PV names of one bench-file table (its string-valued keys), by key."""
    return {k: cfg.pv(v) for k, v in section.model_dump().items() if isinstance(v, str)}


def _reason_pv(cfg: BenchConfig) -> str:
    """The PV where the bench explains a refusal (``IL:Message``)."""
    return cfg.pv(cfg.interlock.message)


class BenchDevice(Device):
    """A device of the bench: holds the bench file; PV names come from one of its tables."""

    _section: str = ""

    def __init__(self, bench_config: BenchConfig, *, name: str, **kwargs):
        self.bench_config = bench_config
        self._pv = _pv_names(bench_config, getattr(bench_config, self._section))
        super().__init__(prefix=bench_config.bench.prefix, name=name, **kwargs)


class PumpLaser(BenchDevice):
    """The pump: fluence through the attenuator (soft limit from the bench file), shutter, power meter."""

    _section = "pump"
    fluence = FCpt(
        BenchSignal,
        "{_pv[fluence_readback]}",
        write_pv="{_pv[fluence_setpoint]}",
        units=UNITS["fluence"],
        check=check_fluence,
        nan_ok=False,
        minimum=0.0,
        kind="hinted",
    )
    shutter = FCpt(BenchSignal, "{_pv[shutter]}", check=check_flag, kind="normal")
    pulse_energy = FCpt(
        BenchSignalRO, "{_pv[pulse_energy_readback]}", units=UNITS["pulse_energy"], nan_ok=False, minimum=0.0
    )
    repetition_rate = FCpt(
        BenchSignalRO, "{_pv[repetition_rate_readback]}", units=UNITS["repetition_rate"], kind="config"
    )
    power_ok = FCpt(BenchSignalRO, "{_pv[power_ok]}", kind="normal")

    @property
    def fluence_limit(self) -> float:
        """The bench's fluence limit (uJ/cm^2)."""
        return self.bench_config.bench.fluence_limit_uJ_cm2


class StripeSlit(EpicsMotor):
    """The slit as a motor record (stripe length, um) with the bench file's soft limits.

    ``move``/``set`` check ``[slit].min_um .. max_um`` client-side (``LimitError``,
    nothing sent), report a refused move (``PutRefusedError``) and time out with
    ``DeviceTimeoutError`` (and stop the motor) after the travel time at
    ``[slit].speed_um_per_s`` plus ``timeout_margin_s`` (``[slit].move_timeout_margin_s``)
    unless ``timeout`` is given.
    """

    def __init__(self, bench_config: BenchConfig, *, name: str, **kwargs):
        self.bench_config = bench_config
        #: wall seconds a move may take beyond its travel time at the bench file's speed
        self.timeout_margin_s = bench_config.slit.move_timeout_margin_s
        super().__init__(bench_config.pv(bench_config.slit.motor), name=name, **kwargs)

    @property
    def soft_limits(self) -> tuple[float, float]:
        return self.bench_config.slit.min_um, self.bench_config.slit.max_um

    @property
    def limits(self):
        lo, hi = self.soft_limits
        try:
            ioc_lo, ioc_hi = super().limits
        except Exception:
            return lo, hi
        if ioc_lo < ioc_hi:
            lo, hi = max(lo, ioc_lo), min(hi, ioc_hi)
        return lo, hi

    def check_value(self, pos):
        check_slit(pos, self.bench_config)
        super().check_value(pos)

    def describe(self):
        desc = super().describe()
        for key in (self.user_readback.name, self.user_setpoint.name):
            if key in desc:
                desc[key]["units"] = UNITS["stripe_length"]
        return desc

    def default_timeout(self, position: float) -> float:
        """Travel time at the bench file's speed plus ``timeout_margin_s``, s."""
        here = self.user_readback.get()
        travel = abs(float(position) - float(here)) if here is not None and math.isfinite(here) else 0.0
        return travel / self.bench_config.slit.speed_um_per_s + self.timeout_margin_s

    def _settle_previous_move(self) -> None:
        """Wait (up to ``timeout_margin_s``) until the motor's done-move monitor reports the previous
        move over, e.g. one this device stopped on a timeout: a late DMOV = 1 of that move must
        not be taken for the end of the next one (the motor would be reported there, but is not)."""
        if not self._moving:
            return
        deadline = time.monotonic() + self.timeout_margin_s
        while self._moving and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._moving:
            raise DeviceTimeoutError(
                f"{self.name}: still moving (DMOV=0) {self.timeout_margin_s:g} s after the previous move "
                "was to end: stuck motor or silent IOC; nothing was sent"
            )

    def move(self, position, wait=True, *, timeout=None, moved_cb=None, **kwargs):
        self.check_value(position)
        self._settle_previous_move()
        if timeout is None:
            timeout = self.default_timeout(position)
        self._started_moving = False
        motor_done = PositionerBase.move(self, position, moved_cb=moved_cb, timeout=None)
        status = Status(self)  # finished once the motor reports done *at the target*
        target = float(position)
        tolerance_um = max(1.0, 1e-3 * abs(target))

        def fail(exc) -> None:
            self._reset_sub(self._SUB_REQ_DONE)  # the motor's done-callback no longer finishes this status
            try:
                status.set_exception(exc)
            except InvalidState:  # finished meanwhile
                pass

        def stop_and_fail(why: str) -> None:
            self._reset_sub(self._SUB_REQ_DONE)  # a stopped motor must not count as arrived
            if status.done:
                return
            where, dmov = self.user_readback.get(), self.motor_done_move.get()
            try:  # stop before reporting, so that the plan never races a motor still under way
                self.motor_stop.put(1, wait=True, timeout=2.0)
                stopped = "motion stopped"
            except Exception as exc:
                stopped = f"the stop request failed ({exc!r})"
            fail(
                DeviceTimeoutError(
                    f"{self.name}: did not reach {target:g} um {why} (at {where:g} um, DMOV={dmov}): "
                    f"stuck motor or silent IOC; {stopped}"
                )
            )

        def expired() -> None:
            stop_and_fail(f"within {timeout:g} s")

        def arrived(st) -> None:
            if status.done:
                return
            if not st.success:
                fail(st.exception() or DeviceTimeoutError(f"{self.name}: move to {target:g} um failed"))
                return
            where = self.user_readback.get()
            if where is None or not abs(float(where) - target) <= tolerance_um:
                # a done-move of an earlier, stopped move arriving late: the motor is not there
                threading.Thread(target=stop_and_fail, args=("though reported done",), daemon=True).start()
                return
            try:
                status.set_finished()
            except InvalidState:
                pass

        motor_done.add_callback(arrived)
        timer = threading.Timer(timeout, expired)
        timer.daemon = True
        status.add_callback(lambda st: timer.cancel())
        timer.start()
        put_notify(
            self.user_setpoint,
            target,
            lambda err: None if err is None else fail(err),
            timeout=timeout,
            connection_timeout=self.bench_config.bench.connection_timeout_s,
            reason_pv=_reason_pv(self.bench_config),
        )
        if wait:
            status.wait()
        return status


class SampleLibrary:
    """What every sample stage (``SampleStage``, the twin's ``TwinSampleStage``) keeps: ``library``, the
    samples on the stage (the bench file's, plus films made this session), and the stage's timeouts."""

    bench_config: BenchConfig
    name: str

    def _open_library(self) -> None:
        #: the samples on the stage: the bench file's library, plus films made this session
        self.library: dict[str, LibraryEntry] = {e.id: e for e in self.bench_config.stage.library}

    @property
    def move_timeout_s(self) -> float:
        return self.bench_config.stage.move_timeout_s

    @property
    def new_film_timeout_s(self) -> float:
        return self.bench_config.stage.new_film_timeout_h * 3600.0

    def add_film(self, entry: LibraryEntry) -> None:
        """Put a film made in an earlier session back in ``library`` (nothing is sent to the bench).

        A resumed campaign does this for the films it made before it was interrupted
        (``BenchConfig.new_film_entry`` rebuilds their entries), so that they can be
        mounted again by id.
        """
        if not isinstance(entry, LibraryEntry):
            raise TypeError(f"{self.name}.add_film takes a devices.LibraryEntry, got {type(entry).__name__}")
        self._film_added(entry)
        self.library[entry.id] = entry

    def _film_added(self, entry: LibraryEntry) -> None:
        """Whatever else must know a film put back before it is mounted (on the bench: nothing)."""


class SampleStage(SampleLibrary, BenchDevice):
    """The sample stage: mount a library sample, or have an operator make a new film (hours)."""

    _section = "stage"
    sample = FCpt(BenchSignal, "{_pv[sample_readback]}", write_pv="{_pv[sample_setpoint]}", string=True)
    doping = FCpt(BenchSignalRO, "{_pv[doping_readback]}", units=UNITS["doping"], nan_ok=False)
    grating_period = FCpt(BenchSignalRO, "{_pv[grating_period_readback]}", units=UNITS["grating_period"])
    sample_kind = FCpt(BenchSignalRO, "{_pv[kind_readback]}", string=True)
    busy = FCpt(BenchSignalRO, "{_pv[busy]}", kind="omitted")
    new_film_doping = FCpt(
        BenchSignal, "{_pv[new_film_doping]}", units=UNITS["new_film_doping"], check=check_doping, kind="omitted"
    )
    new_film_request = FCpt(BenchSignal, "{_pv[new_film_request]}", check=check_flag, kind="omitted")

    def __init__(self, bench_config: BenchConfig, *, name: str, **kwargs):
        super().__init__(bench_config, name=name, **kwargs)
        self._open_library()

    def set(self, sample_id, *, timeout=None, **kwargs):
        """Mount ``sample_id``; the status finishes when ``Sample-RB`` reads it (timeout: move_timeout_s)."""
        check_sample_id(sample_id, self.library)
        timeout = self.move_timeout_s if timeout is None else timeout
        done = Completion(
            self,
            timeout,
            lambda: (
                f"{self.name}: sample {sample_id!r} not mounted within {timeout:g} s "
                f"(Sample-RB reads {self.sample.get()!r}, busy={self.busy.get()})"
            ),
        )
        state = {"put": False, "rb": False}
        lock = threading.Lock()

        def progress(which: str) -> None:
            with lock:
                state[which] = True
                ready = all(state.values())
            if ready:
                done.finish()

        def on_rb(value=None, **kw) -> None:
            if value == sample_id:
                progress("rb")

        cid = self.sample.subscribe(on_rb, run=True)
        done.status.add_callback(lambda st: self.sample.clear_sub(cid))
        put_notify(
            self.sample,
            sample_id,
            lambda err: progress("put") if err is None else done.fail(err),
            timeout=timeout,
            connection_timeout=self.bench_config.bench.connection_timeout_s,
            reason_pv=_reason_pv(self.bench_config),
        )
        return done.status

    def request_film(self, doping: float, *, timeout=None):
        """An operator makes a film of ``doping`` (electrons/dot) and mounts it; hours on the bench.

        Puts ``NewFilm-Doping-SP``, then ``NewFilm-Request`` = 1 with completion
        (timeout: ``new_film_timeout_h``). When done the new film's id is in
        ``sample`` and in ``library``.
        """
        check_doping(doping, self.bench_config)
        timeout = self.new_film_timeout_s if timeout is None else timeout
        d = float(doping)
        done = Completion(self, timeout, lambda: f"{self.name}: no film of doping {d:g} mounted within {timeout:g} s")
        ct = self.bench_config.bench.connection_timeout_s

        def mounted() -> None:
            try:
                new_id = self.sample.get(use_monitor=False)
                if new_id not in self.library:
                    self.library[new_id] = self.bench_config.new_film_entry(new_id, d)
            except Exception as exc:
                done.fail(exc)
            else:
                done.finish()

        def doping_set(err) -> None:
            if err is not None:
                done.fail(err)
                return
            put_notify(
                self.new_film_request,
                1,
                lambda e: threading.Thread(target=mounted, daemon=True).start() if e is None else done.fail(e),
                timeout=timeout,
                connection_timeout=ct,
                reason_pv=_reason_pv(self.bench_config),
            )

        put_notify(
            self.new_film_doping,
            d,
            doping_set,
            timeout=timeout,
            connection_timeout=ct,
            reason_pv=_reason_pv(self.bench_config),
        )
        return done.status


class _Triggered(BenchDevice):
    """A detector whose acquisition is a put of 1 with completion, followed by a NaN check."""

    def _acquire(self, acquire_signal, check, timeout: float):
        done = Completion(self, timeout, lambda: f"{self.name}: acquisition did not complete within {timeout:g} s")

        def verify() -> None:
            try:
                check()
            except ReadbackError as exc:
                done.fail(exc)
            except Exception as exc:  # a readback PV gone (disconnected, no answer)
                done.fail(ReadbackError(f"{self.name}: the acquisition could not be read back: {exc}"))
            else:
                done.finish()

        def acquired(err) -> None:
            if err is not None:
                done.fail(err)
            else:
                threading.Thread(target=verify, daemon=True).start()

        put_notify(
            acquire_signal,
            1,
            acquired,
            timeout=timeout,
            connection_timeout=self.bench_config.bench.connection_timeout_s,
            reason_pv=_reason_pv(self.bench_config),
        )
        return done.status


class Spectrometer(_Triggered):
    """The spectrometer: exposure, one acquisition per trigger, spectrum and camera statistics."""

    _section = "spectrometer"
    # the exposure used is read with every event (the analysis divides the counts by it)
    exposure = FCpt(BenchSignal, "{_pv[exposure]}", units=UNITS["exposure"], check=check_exposure, kind="hinted")
    acquire = FCpt(BenchSignal, "{_pv[acquire]}", check=check_flag, kind="omitted")
    spectrum = FCpt(BenchSignalRO, "{_pv[spectrum]}", units=UNITS["spectrum"], nan_ok=False)
    wavelength = FCpt(BenchSignalRO, "{_pv[wavelength]}", units=UNITS["wavelength"], kind="config")
    integrated = FCpt(BenchSignalRO, "{_pv[integrated]}", units=UNITS["integrated"], nan_ok=False, kind="hinted")
    peak_wavelength = FCpt(BenchSignalRO, "{_pv[peak_wavelength]}", units=UNITS["peak_wavelength"])
    fwhm = FCpt(BenchSignalRO, "{_pv[fwhm]}", units=UNITS["fwhm"])
    saturated = FCpt(BenchSignalRO, "{_pv[saturated]}")

    def trigger(self):
        """Acquire one spectrum; fails with ``ReadbackError`` if the counts come back NaN, inf, text or missing."""

        def check() -> None:
            fresh_measurement(self.integrated)
            fresh_measurement(self.spectrum)

        return self._acquire(self.acquire, check, self.bench_config.spectrometer.acquire_timeout_s)


class Polarizer(BenchDevice):
    """The analyser in front of the spectrometer (angle from the lasing polarisation, deg)."""

    _section = "polarizer"
    angle = FCpt(
        BenchSignal,
        "{_pv[angle_readback]}",
        write_pv="{_pv[angle_setpoint]}",
        units=UNITS["angle"],
        check=check_angle,
        kind="hinted",
    )


class TransientAbsorption(_Triggered):
    """Pump-probe TA: delay stage, pump level, one averaged d(alpha)/alpha0 per trigger."""

    _section = "transient_absorption"
    delay = FCpt(
        BenchSignal,
        "{_pv[delay_readback]}",
        write_pv="{_pv[delay_setpoint]}",
        units=UNITS["delay"],
        check=check_delay,
        kind="hinted",
    )
    pump_excitons = FCpt(
        BenchSignal, "{_pv[pump_excitons]}", units=UNITS["pump_excitons"], check=check_pump_excitons, kind="config"
    )
    acquire = FCpt(BenchSignal, "{_pv[acquire]}", check=check_flag, kind="omitted")
    signal = FCpt(BenchSignalRO, "{_pv[signal]}", units=UNITS["signal"], nan_ok=False, kind="hinted")

    def trigger(self):
        """Average the probe; fails with ``ReadbackError`` if d(alpha)/alpha0 comes back NaN, inf, text or missing."""

        def check() -> None:
            fresh_measurement(self.signal)

        return self._acquire(self.acquire, check, self.bench_config.spectrometer.acquire_timeout_s)


class Interlock(BenchDevice):
    """The laser-safety interlock: permit (1 = permitted) and the last refusal in words."""

    _section = "interlock"
    permit = FCpt(BenchSignal, "{_pv[permit]}", check=check_flag, kind="config")
    message = FCpt(BenchSignalRO, "{_pv[message]}", string=True, kind="omitted")


class WhiteLight(BenchDevice):
    """The white-light source of the linear absorption measurement (its light goes to the same spectrometer).

    ``shutter`` (1 = light on the sample path), ``ok`` (1 while the lamp is lit: a burnt-out or
    unpowered lamp reads 0), ``sample_in`` (1: the mounted film is in the white-light beam; 0: the
    beam passes beside it through the bare substrate, the reference; a put completes when moved),
    ``neutral_absorbance`` / ``neutral_1s_absorbance``: the bench's neutral reference of the mounted
    film's dots (absorbance, OD, on the spectrometer's axis) and its 1S band, all zeros when the bench
    has none for it.
    """

    _section = "absorption"
    shutter = FCpt(BenchSignal, "{_pv[lamp_shutter]}", check=check_flag, kind="normal")
    ok = FCpt(BenchSignalRO, "{_pv[lamp_ok]}", kind="normal")
    sample_in = FCpt(BenchSignal, "{_pv[sample_in]}", check=check_flag, kind="normal")
    neutral_absorbance = FCpt(BenchSignalRO, "{_pv[neutral_absorbance]}", units=UNITS["neutral_absorbance"])
    neutral_1s_absorbance = FCpt(BenchSignalRO, "{_pv[neutral_1s_absorbance]}", units=UNITS["neutral_1s_absorbance"])


@dataclass
class Bench:
    """Every device of one bench, its bench file and its lab clock.

    Built by ``connect_bench`` (EPICS) or ``sim.devices.twin_bench_devices`` (the
    in-process twin, a subclass with the same interface). Plans and the service use
    only this interface, never the twin's engine: ``describe_sample`` (what a run
    records about its sample), ``excitons_per_uJ_cm2`` (a film's kappa, if known),
    ``clock`` / ``lab_time_s`` / ``lab_clock_source`` (the lab clock),
    ``restore_lab_time`` (a resumed campaign's clock), ``status`` and ``make_safe``.
    """

    #: what the devices are, as runs record it (``devices`` of the start document)
    DEVICES: ClassVar[str] = "bench"
    #: the devices' names, in the order they are made and listed
    NAMES: ClassVar[tuple[str, ...]] = (
        "pump",
        "slit",
        "stage",
        "spectrometer",
        "polarizer",
        "ta",
        "interlock",
        "lamp",
    )

    config: BenchConfig
    pump: Device
    slit: Device
    stage: Device
    spectrometer: Device
    polarizer: Device
    ta: Device
    interlock: Device
    lamp: Device
    #: the twin's ``sim.engine.TwinBench`` on an in-process twin, None on EPICS; for ``sim`` and
    #: its tests only: everything else uses the methods of this class, which work on both
    engine: object | None = None
    #: ophyd's control layer of the devices (``pyepics`` or ``caproto``; ``connect_bench``), None in-process
    control_layer: str | None = None
    #: the lab clock, a read-only signal in s: ``[bench].lab_clock_pv`` if the bench file names
    #: one, else the wall clock (``LabClock.wall()``); the twin's simulated clock on the twin
    clock: Signal | None = None
    #: the thread refreshing ``[pump].watchdog``, if the bench file names one
    heartbeat: Heartbeat | None = None

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = LabClock.wall()

    @classmethod
    def build(cls, config: BenchConfig, classes: Sequence[type], source, **fields) -> Bench:
        """A bench of one device of each of ``classes`` (in the order of ``NAMES``), each made from
        ``source`` (the bench file, or the twin's engine) under its name; ``fields``: the others."""
        made = {name: c(source, name=name) for name, c in zip(cls.NAMES, classes, strict=True)}
        return cls(config=config, **made, **fields)

    def devices(self) -> dict[str, Device]:
        """The devices by name (``pump``, ``slit``, ...)."""
        return {n: getattr(self, n) for n in self.NAMES}

    # ---------------------------------------------------------------------------- samples
    def library_entry(self, sample_id: str) -> LibraryEntry:
        """The library entry of ``sample_id``: the stage's library (which holds the films made
        since the bench file was read), else the bench file's (``BenchConfigError`` naming it)."""
        library = getattr(self.stage, "library", None) or {}
        return library[sample_id] if sample_id in library else self.config.library_entry(sample_id)

    def describe_sample(self, sample_id: str) -> dict:
        """What a run records about its sample and the devices (start-document metadata).

        ``sample_id``, ``sample_kind`` (``film``/``dfb``), ``doping`` (electrons/dot), the
        bench's name and fluence limit (uJ/cm^2), and ``devices``: ``"bench"`` here,
        ``"twin"`` on the twin (which adds its own parameters of the sample under ``twin``).
        """
        entry = self.library_entry(sample_id)
        return {
            "sample_id": sample_id,
            "sample_kind": entry.kind,
            "doping": entry.doping,
            "bench_name": self.config.bench.name,
            "fluence_limit_uJ_cm2": self.config.bench.fluence_limit_uJ_cm2,
            "devices": self.DEVICES,
        }

    def excitons_per_uJ_cm2(self, sample_id: str) -> float | None:
        """The film's kappa = <N>/F at the pump wavelength (excitons/dot per uJ/cm^2), if known.

        On the bench: the library entry's ``excitons_per_uJ_cm2`` (None if the bench file
        does not give it); on the twin: the twin's own value for the sample. ``pump_probe``
        takes it as its default.
        """
        value = self.library_entry(sample_id).excitons_per_uJ_cm2
        return None if value is None else float(value)

    # ---------------------------------------------------------------------------- lab clock
    def lab_time_s(self) -> float:
        """The lab clock now, s (``clock`` read fresh; ``ReadbackError`` if its PV is gone or not a number)."""
        return float(fresh_measurement(self.clock))

    @property
    def lab_clock_source(self) -> str:
        """Which clock ``clock`` reads, in words (recorded with campaigns, shown in reports)."""
        source = getattr(self.clock, "source", None)
        return source if source is not None else f"the bench's lab-clock PV {self.clock.pvname}"

    def restore_lab_time(self, seconds: float) -> None:
        """Set the lab clock to a resumed campaign's stored lab time (s), where the clock is the bench's own.

        The lab's clock is the lab's: here nothing changes (the twin sets its simulated clock).
        """

    # ---------------------------------------------------------------------------- state
    def status(self) -> dict:
        """The bench at a glance (the queue server's ``bench_status``).

        ``bench`` (name), ``devices`` (``"bench"`` or ``"twin"``), ``fluence_limit_uJ_cm2``,
        ``fluence_setpoint_uJ_cm2``, ``sample_id``; on the twin also ``lab_time_s`` (s) and
        ``message`` (the twin's last word on a setpoint).
        """
        fluence = self.pump.fluence
        setpoint = fluence.setpoint if hasattr(fluence, "setpoint") else fluence.get()
        return {
            "bench": self.config.bench.name,
            "devices": self.DEVICES,
            "fluence_limit_uJ_cm2": float(self.config.bench.fluence_limit_uJ_cm2),
            "fluence_setpoint_uJ_cm2": float(setpoint),
            "sample_id": str(self.stage.sample.get()),
        }

    def make_safe(self) -> SafeReport:
        """Close the pump shutter and park the fluence (``devices._safety.make_safe``); never raises."""
        return make_safe(self)

    def destroy(self) -> None:
        """Release the devices' connections (and free their PV objects now: see ``connect_bench``).

        The heartbeat stops; it is disarmed (0 written) only if the shutter reads closed, so
        that the IOC's watchdog still closes a shutter this client could not."""
        if self.heartbeat is not None:
            try:
                closed = float(self.pump.shutter.get(use_monitor=False)) == 0
            except Exception:
                closed = False
            self.heartbeat.stop(disarm=closed)
        for dev in self.devices().values():
            dev.destroy()
        for sig in (self.clock, getattr(self.heartbeat, "signal", None)):
            if sig is not None:
                sig.destroy()
        gc.collect()


def _unready_pvs(dev: Device) -> tuple[list[str], list[str]]:
    """PVs of ``dev`` whose signals are not ready: (not found, found but without control metadata)."""
    missing: list[str] = []
    no_metadata: list[str] = []
    signals = [w.item for w in dev.walk_signals(include_lazy=True)] if isinstance(dev, Device) else [dev]
    for sig in signals:
        if getattr(sig, "connected", True):
            continue
        got_metadata = getattr(sig, "_received_first_metadata", {})
        for attr in ("_read_pv", "_write_pv"):
            pv = getattr(sig, attr, None)
            if pv is None:
                continue
            if not pv.connected:
                bucket = missing
            elif not got_metadata.get(pv.pvname, True):
                bucket = no_metadata
            else:
                continue
            if pv.pvname not in bucket:
                bucket.append(pv.pvname)
    return missing, no_metadata


def _shown(pvs: list[str]) -> str:
    return ", ".join(pvs)


#: The EPICS devices, by ``Bench.NAMES``.
_DEVICE_CLASSES = (
    PumpLaser,
    StripeSlit,
    SampleStage,
    Spectrometer,
    Polarizer,
    TransientAbsorption,
    Interlock,
    WhiteLight,
)


def connect_bench(cfg: BenchConfig | str | Path, *, timeout: float | None = None) -> Bench:
    """Create the bench's EPICS devices and wait until every PV is connected.

    ``cfg`` is a ``BenchConfig`` or the path of a bench file; ``timeout``
    defaults to ``[bench].connection_timeout_s``. Raises ``BenchConnectionError``
    naming the PVs that did not connect, or the package to install if the bench file's
    ``[bench].control_layer`` is not installed. The devices use that layer (ophyd's
    ``set_cl``; ``Bench.control_layer`` names it); destroy the benches of another layer first.
    """
    if not isinstance(cfg, BenchConfig):
        cfg = load_bench(cfg)
    layer = ensure_control_layer(cfg.bench.control_layer)
    timeout = cfg.bench.connection_timeout_s if timeout is None else float(timeout)
    # caproto's threading client keeps weak references to the callbacks of every PV object made
    # for a name; the PV objects of a bench destroyed earlier in this process are left to the
    # garbage collector, and if it frees them (same thread, re-entrant lock) while caproto lists a
    # PV's callbacks for the new devices, the listing fails ("dictionary changed size during
    # iteration"). Free them now, before any new PV object is made.
    gc.collect()
    bench = Bench.build(
        cfg,
        _DEVICE_CLASSES,
        cfg,
        control_layer=layer,
        clock=(
            LabClock.wall()
            if cfg.bench.lab_clock_pv is None
            else BenchSignalRO(cfg.pv(cfg.bench.lab_clock_pv), name="lab_clock", units="s", nan_ok=False)
        ),
    )
    watchdog = None
    if cfg.pump.watchdog is not None:
        watchdog = EpicsSignal(cfg.pv(cfg.pump.watchdog), name="pump_watchdog")
    epics_signals = [sig for sig in (bench.clock, watchdog) if isinstance(sig, EpicsSignalBase)]  # not the wall clock
    to_connect = [*bench.devices().values(), *epics_signals]
    deadline = time.monotonic() + timeout
    for dev in to_connect:
        try:
            dev.wait_for_connection(
                **({"all_signals": True} if isinstance(dev, Device) else {}),
                timeout=max(deadline - time.monotonic(), 0.01),
            )
        except TimeoutError:
            pass
    missing: list[str] = []
    no_metadata: list[str] = []
    for dev in to_connect:
        a, b = _unready_pvs(dev)
        missing += a
        no_metadata += b
    if missing or no_metadata:
        bench.destroy()
        if watchdog is not None:
            watchdog.destroy()
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} PV(s) did not connect within {timeout:g} s: {_shown(missing)} "
                "(is the IOC running, and are EPICS_CA_ADDR_LIST / the server port set?)"
            )
        if no_metadata:
            parts.append(
                f"{len(no_metadata)} PV(s) connected but their control metadata could not be read "
                f"(an error of the IOC serving them): {_shown(no_metadata)}"
            )
        raise BenchConnectionError(f"bench {cfg.bench.name!r}: " + "; ".join(parts))
    if watchdog is not None:
        bench.heartbeat = Heartbeat(watchdog, cfg.pump.watchdog_timeout_s, thread_class=ophyd.cl.thread_class).start()
    return bench
