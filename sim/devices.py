"""The twin bench as in-process hardware: ophyd devices driving one ``TwinBench``, no EPICS.

``twin_bench_devices(cfg)`` returns the same ``devices.Bench`` container as
``devices.connect_bench`` with devices of the same component names, kinds and
units, the same client-side soft limits and the same errors (imported from
``devices``). Every status is finished when it is returned: the engine's lab
clock advances by what the operation takes on the bench (a slit move its travel
time, an acquisition its exposure, a new film hours) and no wall time passes.

The engine's refusals map onto the errors of the EPICS devices: a setpoint the
bench refuses (interlock, out of the engine's range) fails the status with
``PutRefusedError`` (``put`` raises it), a stuck slit motor fails the move with
``DeviceTimeoutError`` (what the EPICS slit reports when the motor never
arrives), NaN readbacks fail the trigger with ``ReadbackError``.

Because the IOC (``sim.ioc``) drives the same engine, the same seed and the same
sequence of operations give the same numbers in-process and over Channel Access.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device
from ophyd.positioner import PositionerBase
from ophyd.signal import Signal
from ophyd.status import DeviceStatus
from ophyd.utils import ReadOnlyError

from core.errors import ParameterError
from devices import (
    UNITS,
    Bench,
    BenchConfig,
    ContractReadings,
    DeviceTimeoutError,
    LabClock,
    LibraryEntry,
    PutRefusedError,
    check_angle,
    check_delay,
    check_doping,
    check_exposure,
    check_flag,
    check_fluence,
    check_pump_excitons,
    check_sample_id,
    check_slit,
    load_bench,
    require_finite,
)
from devices.bench import SampleLibrary
from twin.presets import PresetFile, load_presets

from .engine import Acquisition, InterlockError, TwinBench

__all__ = [
    "TwinBenchDevices",
    "TwinInterlock",
    "TwinPolarizer",
    "TwinPumpLaser",
    "TwinSampleStage",
    "TwinSignal",
    "TwinSpectrometer",
    "TwinStripeSlit",
    "TwinTransientAbsorption",
    "TwinWhiteLight",
    "default_twin_bench_path",
    "twin_bench_devices",
]


# DeviceStatus, not Status(obj): ophyd's Status puts str(obj) (a Device's whole repr, ~0.2 ms)
# into its trace attributes when it finishes; DeviceStatus records the name and class only.
def _finished(obj) -> DeviceStatus:
    st = DeviceStatus(obj)
    st.set_finished()
    return st


def _failed(obj, exc: BaseException) -> DeviceStatus:
    st = DeviceStatus(obj, call_stop_on_failure=False)  # a refusal: nothing is moving
    st.set_exception(exc)
    return st


@contextmanager
def _refusing(what: str, value, error: type[Exception]) -> Iterator[None]:
    """The engine refusing ``value`` (its ``error`` inside) as a put refused by ``what``: ``PutRefusedError``."""
    try:
        yield
    except error as exc:
        raise PutRefusedError(f"{what} refused {value!r}: {exc}") from None


class TwinSignal(ContractReadings, Signal):
    """A signal whose value lives in the engine: ``getter``/``setter`` name methods of its device,
    or ``state`` names a float field of the engine's state (``twin.state``) it reads and writes.

    Same behaviour as ``devices``' ``BenchSignal``: contract units in ``describe()``,
    ``check`` against the bench file before anything reaches the engine
    (``LimitError``), ``set()`` returns a finished status (failed with
    ``PutRefusedError`` if the engine refuses), ``put()`` raises, ``read()`` of a
    measurement (``nan_ok=False``) raises ``ReadbackError`` on NaN.
    """

    def __init__(
        self,
        *,
        getter: str | None = None,
        setter: str | None = None,
        state: str | None = None,
        setpoint: str | None = None,
        check=None,
        units: str | None = None,
        nan_ok: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._getter, self._setter, self._setpoint_getter, self._state = getter, setter, setpoint, state
        self._check, self._units, self._nan_ok = check, units, nan_ok

    @property
    def write_access(self) -> bool:
        return self._setter is not None or self._state is not None

    @property
    def setpoint(self):
        """The setpoint (the engine's, for a signal whose readback differs)."""
        return getattr(self.parent, self._setpoint_getter)() if self._setpoint_getter else self.get()

    def get(self, **kwargs):
        if self._state is not None:
            value = float(getattr(self.parent.twin.state, self._state))
        else:
            value = getattr(self.parent, self._getter)()
        self._readback = value
        self._metadata["timestamp"] = time.time()
        return value

    def check_value(self, value):
        if self._check is not None:
            self._check(value, self.root.bench_config)
        super().check_value(value)

    def put(self, value, *, force=False, timestamp=None, metadata=None, **kwargs):
        if not self.write_access:
            raise ReadOnlyError(f"{self.name} is a readback")
        if not force:
            self.check_value(value)
        if self._state is not None:
            setattr(self.parent.twin.state, self._state, float(value))
        else:
            getattr(self.parent, self._setter)(value)
        super().put(self.get(), force=True, timestamp=timestamp, metadata=metadata)

    def set(self, value, *, timeout=None, settle_time=None, **kwargs):
        self.check_value(value)
        try:
            self.put(value, force=True)
        except (PutRefusedError, DeviceTimeoutError) as exc:
            return _failed(self, exc)
        return _finished(self)

    def _reading_source(self) -> str:
        return "twin"

    def describe(self):
        self.get()
        return super().describe()


class _TwinDevice(Device):
    def __init__(self, twin: TwinBench, *, name: str, **kwargs):
        self.twin = twin
        self.bench_config: BenchConfig = twin.config
        super().__init__(name=name, **kwargs)


class TwinPumpLaser(_TwinDevice):
    """In-process ``PumpLaser``: fluence (setpoint x the laser's drift as readback), shutter, power meter."""

    fluence = Cpt(
        TwinSignal,
        getter="_fluence_rb",
        setter="_set_fluence",
        setpoint="_fluence_sp",
        check=check_fluence,
        units=UNITS["fluence"],
        nan_ok=False,
        kind="hinted",
    )
    shutter = Cpt(TwinSignal, getter="_shutter", setter="_set_shutter", check=check_flag, kind="normal")
    pulse_energy = Cpt(TwinSignal, getter="_pulse_energy", units=UNITS["pulse_energy"], nan_ok=False)
    repetition_rate = Cpt(TwinSignal, getter="_rep_rate", units=UNITS["repetition_rate"], kind="config")
    # writable as the IOC's PUMP:PowerOK is, so a test can drop the pump power in-process
    power_ok = Cpt(TwinSignal, getter="_power_ok", setter="_set_power_ok", check=check_flag, kind="normal")

    @property
    def fluence_limit(self) -> float:
        return self.bench_config.bench.fluence_limit_uJ_cm2

    def _fluence_sp(self) -> float:
        return self.twin.state.fluence_uJ_cm2

    def _nan(self) -> bool:
        return "nan_readback" in self.twin.state.faults  # as the IOC: the power meter reads NaN too

    def _fluence_rb(self) -> float:
        if self._nan():
            return math.nan
        return self.twin.state.fluence_uJ_cm2 * float(self.twin.drift.factor(self.twin.lab_time_s))

    def _set_fluence(self, value) -> None:
        with _refusing("pump fluence", value, InterlockError):
            self.twin.set_fluence(float(value))

    def _shutter(self) -> int:
        return int(self.twin.state.shutter_open)

    def _set_shutter(self, value) -> None:
        with _refusing("pump shutter", value, InterlockError):
            self.twin.set_shutter(bool(value))

    def _pulse_energy(self) -> float:
        return math.nan if self._nan() else self.twin.pulse_energy_uJ()

    def _rep_rate(self) -> float:
        return float(self.twin.presets.setup.pump_repetition_rate_kHz)

    def _power_ok(self) -> int:
        return int(self.twin.state.power_ok)

    def _set_power_ok(self, value) -> None:
        self.twin.state.power_ok = bool(value)


class TwinStripeSlit(Device, PositionerBase):
    """In-process ``StripeSlit``: the motor record's main fields; a move advances the lab clock."""

    user_readback = Cpt(TwinSignal, getter="_rbv", units=UNITS["stripe_length"], kind="hinted")
    user_setpoint = Cpt(
        TwinSignal, getter="_val", setter="_move_to", check=check_slit, units=UNITS["stripe_length"], kind="normal"
    )
    user_offset = Cpt(TwinSignal, getter="_zero", kind="config")
    user_offset_dir = Cpt(TwinSignal, getter="_zero_int", kind="config")
    velocity = Cpt(TwinSignal, getter="_velo", kind="config")
    acceleration = Cpt(TwinSignal, getter="_zero", kind="config")
    motor_egu = Cpt(TwinSignal, getter="_egu", kind="config")
    motor_is_moving = Cpt(TwinSignal, getter="_zero_int", kind="omitted")
    motor_done_move = Cpt(TwinSignal, getter="_one", kind="omitted")
    high_limit_travel = Cpt(TwinSignal, getter="_hlm", kind="omitted")
    low_limit_travel = Cpt(TwinSignal, getter="_llm", kind="omitted")
    motor_stop = Cpt(TwinSignal, getter="_zero_int", setter="_stop", kind="omitted")

    def __init__(self, twin: TwinBench, *, name: str, **kwargs):
        self.twin = twin
        self.bench_config: BenchConfig = twin.config
        self._target = twin.state.stripe_length_um
        super().__init__(name=name, **kwargs)
        self.user_readback.name = self.name
        self._set_position(self._rbv())

    # fields
    def _rbv(self) -> float:
        return float(self.twin.state.stripe_length_um)

    def _val(self) -> float:
        return float(self._target)

    def _velo(self) -> float:
        return float(self.bench_config.slit.speed_um_per_s)

    def _hlm(self) -> float:
        return float(self.bench_config.slit.max_um)

    def _llm(self) -> float:
        return float(self.bench_config.slit.min_um)

    def _egu(self) -> str:
        return UNITS["stripe_length"]

    def _zero(self) -> float:
        return 0.0

    def _zero_int(self) -> int:
        return 0

    def _one(self) -> int:
        return 1

    def _stop(self, value) -> None:
        pass

    def _move_to(self, value) -> None:
        st = self.move(value, wait=False)
        if st.exception() is not None:
            raise st.exception()

    # positioner
    @property
    def egu(self) -> str:
        return UNITS["stripe_length"]

    @property
    def limits(self) -> tuple[float, float]:
        return self.bench_config.slit.min_um, self.bench_config.slit.max_um

    soft_limits = limits

    @property
    def moving(self) -> bool:
        return False

    def check_value(self, pos):
        check_slit(pos, self.bench_config)

    def move(self, position, wait=True, *, timeout=None, moved_cb=None, **kwargs):
        """Move to ``position`` um; the clock advances by the travel time; a stuck motor times out."""
        self.check_value(position)
        target = float(position)
        status = PositionerBase.move(self, target, moved_cb=moved_cb, timeout=None)
        self._target = target
        start = self._rbv()
        try:
            self.twin.move_slit(target)
        except InterlockError as exc:
            self._reset_sub(self._SUB_REQ_DONE)
            status.set_exception(
                DeviceTimeoutError(f"{self.name}: did not reach {target:g} um (at {start:g} um): {exc}; motion stopped")
            )
            return status
        self._set_position(self._rbv())
        self._done_moving(success=True)
        return status

    def stop(self, *, success=False):
        pass


class TwinSampleStage(SampleLibrary, _TwinDevice):
    """In-process ``SampleStage``: a move or a new film advances the lab clock (s or hours)."""

    sample = Cpt(TwinSignal, getter="_sample", setter="_mount")
    doping = Cpt(TwinSignal, getter="_doping", units=UNITS["doping"], nan_ok=False)
    grating_period = Cpt(TwinSignal, getter="_period", units=UNITS["grating_period"])
    sample_kind = Cpt(TwinSignal, getter="_sample_kind")
    busy = Cpt(TwinSignal, getter="_busy", kind="omitted")
    new_film_doping = Cpt(
        TwinSignal,
        getter="_new_doping",
        setter="_set_new_doping",
        check=check_doping,
        units=UNITS["new_film_doping"],
        kind="omitted",
    )
    new_film_request = Cpt(TwinSignal, getter="_busy", setter="_request", check=check_flag, kind="omitted")

    def __init__(self, twin: TwinBench, *, name: str, **kwargs):
        super().__init__(twin, name=name, **kwargs)
        self._open_library()
        self._pending_doping = 0.0

    def _film_added(self, entry: LibraryEntry) -> None:
        """A film put back goes into the twin's library too, made of the bench file's
        ``[twin].new_film_preset`` (``TwinBench.add_film``)."""
        self.twin.add_film(entry)

    def _sample(self) -> str:
        return self.twin.state.sample_id

    def _doping(self) -> float:
        return float(self.twin.current().doping)

    def _period(self) -> float:
        p = self.twin.current().grating_period_nm
        return 0.0 if p is None else float(p)

    def _sample_kind(self) -> str:
        return self.twin.current().kind

    def _busy(self) -> int:
        return 0

    def _new_doping(self) -> float:
        return self._pending_doping

    def _set_new_doping(self, value) -> None:
        self._pending_doping = float(value)

    def _mount(self, sample_id) -> None:
        with _refusing("sample stage", sample_id, ParameterError):
            self.twin.select_sample(sample_id)

    def _request(self, value) -> None:
        if int(value) != 1:
            return
        with _refusing("new film", self._pending_doping, ParameterError):
            new_id, _ = self.twin.make_film(self._pending_doping)
        self.library[new_id] = self.twin.library[new_id]

    def set(self, sample_id, *, timeout=None, **kwargs):
        """Mount ``sample_id`` (from ``library``); the clock advances by the stage move."""
        check_sample_id(sample_id, self.library)
        try:
            self._mount(sample_id)
        except PutRefusedError as exc:
            return _failed(self, exc)
        return _finished(self)

    def request_film(self, doping: float, *, timeout=None):
        """An operator makes a film of ``doping`` and mounts it; the clock advances by hours."""
        check_doping(doping, self.bench_config)
        self._pending_doping = float(doping)
        try:
            self._request(1)
        except PutRefusedError as exc:
            return _failed(self, exc)
        return _finished(self)


class TwinSpectrometer(_TwinDevice):
    """In-process ``Spectrometer``: a trigger exposes the camera (lab clock += exposure)."""

    # hinted: read with every event (the analysis divides the counts by it) and shown live
    exposure = Cpt(TwinSignal, state="exposure_s", check=check_exposure, units=UNITS["exposure"], kind="hinted")
    acquire = Cpt(TwinSignal, getter="_zero", setter="_acquire", check=check_flag, kind="omitted")
    spectrum = Cpt(TwinSignal, getter="_spectrum", units=UNITS["spectrum"], nan_ok=False)
    wavelength = Cpt(TwinSignal, getter="_wavelength", units=UNITS["wavelength"], kind="config")
    integrated = Cpt(TwinSignal, getter="_integrated", units=UNITS["integrated"], nan_ok=False, kind="hinted")
    peak_wavelength = Cpt(TwinSignal, getter="_peak", units=UNITS["peak_wavelength"])
    fwhm = Cpt(TwinSignal, getter="_fwhm", units=UNITS["fwhm"])
    saturated = Cpt(TwinSignal, getter="_saturated")

    def __init__(self, twin: TwinBench, *, name: str, **kwargs):
        super().__init__(twin, name=name, **kwargs)
        self.last: Acquisition | None = None

    def _zero(self) -> int:
        return 0

    def _acquire(self, value) -> None:
        if int(value) == 1:
            with _refusing("spectrometer", value, ParameterError):
                self.last = self.twin.acquire()

    def _spectrum(self) -> np.ndarray:
        return np.zeros(self.twin.wavelength_nm.size) if self.last is None else self.last.counts

    def _wavelength(self) -> np.ndarray:
        return self.twin.wavelength_nm

    def _integrated(self) -> float:
        return 0.0 if self.last is None else float(self.last.integrated)

    def _peak(self) -> float:
        return 0.0 if self.last is None else float(self.last.peak_wavelength_nm)

    def _fwhm(self) -> float:
        return 0.0 if self.last is None else float(self.last.fwhm_nm)

    def _saturated(self) -> int:
        return 0 if self.last is None else int(self.last.saturated)

    def trigger(self):
        """Acquire one spectrum; fails with ``ReadbackError`` if the counts come back NaN."""
        try:
            self._acquire(1)
            require_finite(self._integrated(), f"{self.name}_integrated (twin)")
            require_finite(self._spectrum(), f"{self.name}_spectrum (twin)")
        except Exception as exc:
            return _failed(self, exc)
        return _finished(self)


class TwinPolarizer(_TwinDevice):
    """In-process ``Polarizer``."""

    angle = Cpt(TwinSignal, state="polarizer_deg", check=check_angle, units=UNITS["angle"], kind="hinted")


class TwinTransientAbsorption(_TwinDevice):
    """In-process ``TransientAbsorption``: a trigger averages the probe (lab clock += 1 s)."""

    delay = Cpt(TwinSignal, state="ta_delay_ps", check=check_delay, units=UNITS["delay"], kind="hinted")
    pump_excitons = Cpt(
        TwinSignal, state="ta_pump_excitons", check=check_pump_excitons, units=UNITS["pump_excitons"], kind="config"
    )
    acquire = Cpt(TwinSignal, getter="_zero", setter="_acquire", check=check_flag, kind="omitted")
    signal = Cpt(TwinSignal, getter="_signal", units=UNITS["signal"], nan_ok=False, kind="hinted")

    def __init__(self, twin: TwinBench, *, name: str, **kwargs):
        super().__init__(twin, name=name, **kwargs)
        self._last = 0.0

    def _zero(self) -> int:
        return 0

    def _acquire(self, value) -> None:
        if int(value) == 1:
            self._last = float(self.twin.acquire_ta())

    def _signal(self) -> float:
        return self._last

    def trigger(self):
        """Average the probe; fails with ``ReadbackError`` if d(alpha)/alpha0 comes back NaN."""
        try:
            self._acquire(1)
            require_finite(self._last, f"{self.name}_signal (twin)")
        except Exception as exc:
            return _failed(self, exc)
        return _finished(self)


class TwinInterlock(_TwinDevice):
    """In-process ``Interlock``: opening it (permit 0) closes the shutter and refuses fluence."""

    permit = Cpt(TwinSignal, getter="_permit", setter="_set_permit", check=check_flag, kind="config")
    message = Cpt(TwinSignal, getter="_message", kind="omitted")

    def _permit(self) -> int:
        return int(self.twin.state.permit)

    def _set_permit(self, value) -> None:
        self.twin.set_permit(bool(value))

    def _message(self) -> str:
        return self.twin.state.message


class TwinWhiteLight(_TwinDevice):
    """In-process ``WhiteLight``: the lamp's shutter, lamp OK (writable, so that a test can switch the
    lamp off), the film in or out of its beam (lab clock += ``[absorption].sample_in_move_s``) and the
    neutral reference of the mounted film's dots (its preset undoped: ``TwinBench.neutral_reference``)."""

    shutter = Cpt(TwinSignal, getter="_shutter", setter="_set_shutter", check=check_flag, kind="normal")
    ok = Cpt(TwinSignal, getter="_ok", setter="_set_ok", check=check_flag, kind="normal")
    sample_in = Cpt(TwinSignal, getter="_sample_in", setter="_set_sample_in", check=check_flag, kind="normal")
    neutral_absorbance = Cpt(TwinSignal, getter="_neutral", units=UNITS["neutral_absorbance"])
    neutral_1s_absorbance = Cpt(TwinSignal, getter="_neutral_1s", units=UNITS["neutral_1s_absorbance"])

    def _shutter(self) -> int:
        return int(self.twin.state.lamp_shutter_open)

    def _set_shutter(self, value) -> None:
        self.twin.set_lamp_shutter(bool(value))

    def _ok(self) -> int:
        return int(self.twin.state.lamp_ok)

    def _set_ok(self, value) -> None:
        self.twin.state.lamp_ok = bool(value)

    def _sample_in(self) -> int:
        return int(self.twin.state.sample_in_beam)

    def _set_sample_in(self, value) -> None:
        self.twin.set_sample_in_beam(bool(value))

    def _neutral(self) -> np.ndarray:
        return self.twin.neutral_reference().total

    def _neutral_1s(self) -> np.ndarray:
        return self.twin.neutral_reference().one_s


@dataclass
class TwinBenchDevices(Bench):
    """The in-process twin's ``devices.Bench``: the same interface, answered by its engine (``engine``).

    The sample's description carries the twin's parameters of it, the lab clock is the
    engine's simulated one (s since the session began) and can be set back to a resumed
    campaign's, and the status adds that clock and the engine's last message.
    """

    DEVICES = "twin"

    def describe_sample(self, sample_id: str) -> dict:
        """``devices.Bench.describe_sample`` and, under ``twin``: the seed, the preset, the sample's
        parameters as requested (``TwinBench.sample_for``: the preset with the entry's doping) and the
        optical setup. A film made on request really is as drawn around that (``film_truth``): the truth
        stays out of the run's metadata, as it would on a bench."""
        md = super().describe_sample(sample_id)
        entry = self.library_entry(sample_id)
        engine: TwinBench = self.engine
        md["twin"] = {
            "seed": engine.seed,
            "preset": entry.preset or self.config.twin.new_film_preset,
            "sample": engine.sample_for(entry).model_dump(mode="json"),
            "setup": engine.presets.setup.model_dump(mode="json"),
            # the film's photo-damage dose at the start of the run: a later command continues from it
            "film_dose": engine.film_dose(sample_id),
        }
        return md

    def film_truth(self, film_id: str):
        """What a film really is (``sim.engine.FilmTruth``: true doping, thickness, loss): the twin's hidden
        truth, for tests and benchmarks only (a plan never sees it)."""
        return self.engine.film_truth(film_id)

    def excitons_per_uJ_cm2(self, sample_id: str) -> float:
        """The twin's own kappa of the sample (excitons/dot per uJ/cm^2): what its films absorb.

        A sample not in the library is a ``BenchConfigError`` naming the library, as on the bench.
        """
        self.library_entry(sample_id)
        return float(self.engine.excitons_per_uJ_cm2(sample_id))

    def restore_lab_time(self, seconds: float) -> None:
        """Set the twin's simulated lab clock to ``seconds`` (a resumed campaign's lab time used)."""
        self.engine.set_lab_time(seconds)

    def status(self) -> dict:
        """``devices.Bench.status`` and the twin's ``lab_time_s`` (s) and last ``message``."""
        status = super().status()
        status["lab_time_s"] = float(self.engine.lab_time_s)
        status["message"] = str(self.engine.state.message)
        return status


#: The in-process devices, by ``devices.Bench.NAMES``.
_DEVICE_CLASSES = (
    TwinPumpLaser,
    TwinStripeSlit,
    TwinSampleStage,
    TwinSpectrometer,
    TwinPolarizer,
    TwinTransientAbsorption,
    TwinInterlock,
    TwinWhiteLight,
)


def default_twin_bench_path() -> Path:
    """The twin's bench file shipped with the package (the same as ``examples/twin_bench.toml``)."""
    from importlib import resources

    return Path(str(resources.files("sim") / "data" / "twin_bench.toml"))


def twin_bench_devices(
    cfg: BenchConfig | str | Path,
    seed: int | None = None,
    presets: PresetFile | str | Path | None = None,
) -> Bench:
    """The twin bench as in-process devices: a ``devices.Bench`` (``TwinBenchDevices``) driving one ``TwinBench``.

    ``cfg``: a ``BenchConfig`` or a bench file; ``seed``: overrides ``[twin].seed``;
    ``presets``: a ``PresetFile`` or a presets TOML (default: the bench file's, else the shipped one).
    """
    if not isinstance(cfg, BenchConfig):
        cfg = load_bench(cfg)
    if presets is not None and not isinstance(presets, PresetFile):
        presets = load_presets(presets)
    twin = TwinBench(cfg, presets=presets, seed=seed)
    return TwinBenchDevices.build(
        cfg,
        _DEVICE_CLASSES,
        twin,
        engine=twin,
        clock=LabClock(lambda: twin.lab_time_s, source="the twin's simulated lab clock"),
    )
