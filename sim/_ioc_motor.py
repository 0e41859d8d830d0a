"""The slit's EPICS motor record, as served by the twin's IOC (``sim.ioc``).

``SlitMotor`` gives the IOC's ``record='motor'`` pvproperty (caproto's ``MotorFields``) the
behaviour of the EPICS motor record, enough for ``ophyd.EpicsMotor`` to work unchanged:

* coordinates: the dial position is the physical stripe length (the engine's
  ``state.stripe_length_um``); user = dial x (+1 for ``DIR`` Pos, -1 for Neg) + ``OFF``.
  ``.VAL``/``.RBV``/``.HLM``/``.LLM`` are user values, ``.DVAL``/``.DRBV``/``.DHLM``/``.DLLM``
  dial values, ``.RRBV``/``.RVAL`` steps of ``.MRES``. ``SET`` = Set with ``FOFF`` = Variable
  redefines the user position by changing ``OFF`` (``EpicsMotor.set_current_position``);
  with ``FOFF`` = Frozen it is refused (a twin cannot redefine a physical stripe length).
* soft limits: ``.HLM``/``.LLM`` (initially the bench file's ``[slit]`` range) are the
  ``DRVH``/``DRVL`` control limits of ``.VAL``. A put beyond them is refused (the CA put
  fails), ``.LVIO`` goes to 1 and the reason goes to ``IL:Message``; nothing moves.
* hard limits: the bench file's ``[slit]`` range is the slit's travel. If the soft limits
  are widened beyond it, a move stops at the end of travel with ``.HLS``/``.LLS`` = 1 (and
  ``MSTA`` bit PLUS_LS/MINUS_LS), ``.VAL`` is reset to ``.RBV``, as the record would.
* motion: a put to ``.VAL`` (or ``.DVAL``, ``.RLV``, ``.TWF``/``.TWR``, ``.HOMF``/``.HOMR``)
  posts ``.DMOV`` = 0, ``.MOVN`` = 1, then moves at ``.VELO`` um/s of *lab* time: every
  tick (``TICK_S`` of wall time) the slit advances by ``VELO x tick x time_scale``, the
  engine's clock by the matching travel time, and ``.RBV``/``.DRBV``/``.RRBV`` are posted;
  at the end ``.MOVN`` = 0, ``.DMOV`` = 1. Every move, even a null one, posts ``.DMOV`` 0
  then 1. The put's completion (put-callback) fires when the move is done, like the record.
  A put while moving retargets the running move.
* ``.STOP`` = 1 or ``.SPMG`` = Stop stops at the current position and sets ``.VAL`` to
  ``.RBV``; ``.SPMG`` = Pause holds the move until Go/Move (Move returns to Pause after one
  move).
* ``.VELO`` is writable within (0, ``.VMAX``]; ``.VMAX`` is the bench file's speed. Slower
  moves cost the extra lab time. Acceleration (``.ACCL``), jogging, backlash, encoders and
  retries are not modelled; ``.CNEN`` is stored only.
* faults: with the IOC paused the motion freezes; with the engine's ``stuck_motor`` fault
  a move never progresses (``.DMOV`` stays 0, ``.MOVN`` 1) until the fault is cleared (the
  move then continues) or the move is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from caproto import SkipWrite

from core.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from sim.ioc import TwinIOC

__all__ = ["SlitMotor"]

log = logging.getLogger("gainloop.ioc")

#: Wall-clock tick of the motion loop (s): the readback is posted at most this often.
TICK_S = 0.05
#: Steps per um (``.MRES`` is its inverse).
_MRES_UM = 0.1
_PREC = 1

# motor record MSTA bits
_MSTA_DIRECTION = 1 << 0
_MSTA_DONE = 1 << 1
_MSTA_PLUS_LS = 1 << 2
_MSTA_HOME = 1 << 7
_MSTA_MOVING = 1 << 10
_MSTA_MINUS_LS = 1 << 13
_MSTA_HOMED = 1 << 14

_RUN = ("Go", "Move")


def _scalar(value) -> float:
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
        value = value[0]
    return float(value)


class SlitMotor:
    """Motor-record logic of the IOC's slit pvproperty (``instance`` has ``record='motor'``)."""

    def __init__(self, ioc: TwinIOC, instance) -> None:
        self.ioc = ioc
        self.rec = instance
        self.f = instance.field_inst
        slit = ioc.bench.config.slit
        self.travel = (slit.min_um, slit.max_um)  # hard limits (dial)
        self.vmax = slit.speed_um_per_s
        self.dial_limits = (slit.min_um, slit.max_um)  # soft limits (dial)
        self.off = 0.0
        self.sign = 1.0
        self.velo = slit.speed_um_per_s
        self.target = ioc.bench.state.stripe_length_um  # dial
        self._switch = 0  # +1 / -1 while resting on the high / low end switch (dial direction)
        self._homed = False
        self._at_home = False
        self._stop = False
        self._active = False
        self._task: asyncio.Task | None = None
        self._waiters: list[asyncio.Future] = []
        self._queued: tuple[float, asyncio.Future] | None = None
        self._tdir = 1

    # ------------------------------------------------------------------ coordinates
    @property
    def dial(self) -> float:
        return self.ioc.bench.state.stripe_length_um

    def user(self, dial: float) -> float:
        return self.sign * dial + self.off

    def to_dial(self, user: float) -> float:
        return (user - self.off) * self.sign

    def user_limits(self) -> tuple[float, float]:
        a, b = (self.user(d) for d in self.dial_limits)
        return min(a, b), max(a, b)

    # ------------------------------------------------------------------ posting
    async def _w(self, channel, value) -> None:
        await channel.write(value, verify_value=False)

    async def initialise(self) -> None:
        f = self.f
        for ch in (self.rec, f.user_readback_value, f.dial_readback_value, f.dial_desired_value):
            await ch.write_metadata(units="um", precision=_PREC)
        for ch in (f.user_high_limit, f.user_low_limit, f.dial_high_limit, f.dial_low_limit, f.user_offset):
            await ch.write_metadata(units="um", precision=_PREC)
        for ch in (f.velocity, f.max_velocity, f.base_velocity):
            await ch.write_metadata(units="um/s", precision=_PREC)
        await self.rec.write_metadata(precision=_PREC)
        await self._w(f.display_precision, _PREC)
        await self._w(f.engineering_units, "um")
        await self._w(f.motor_step_size, _MRES_UM)
        await self._w(f.max_velocity, self.vmax)
        await self._w(f.velocity, self.velo)
        await self._w(f.base_velocity, 0.0)
        await self._w(f.seconds_to_velocity, 0.0)
        await self._w(f.user_offset, self.off)
        await self._w(f.user_direction, "Pos")
        await self._w(f.offset_freeze_switch, "Variable")
        await self._w(f.set_use_switch, "Use")
        await self._w(f.stop_pause_move_go, "Go")
        await self._w(f.enable_control, "Enable")
        await self._w(f.stop, 0)
        await self._w(f.limit_violation, 0)
        await self._w(f.done_moving_to_value, 1)
        await self._w(f.motor_is_moving, 0)
        await self._w(f.motion_in_progress, 0)
        await self._w(f.direction_of_travel, 1)
        await self._w(f.tweak_step_size, 100.0)
        await self.post_all()

    async def post_all(self) -> None:
        """Post every coordinate-dependent field (after a change of OFF, DIR or the limits)."""
        f = self.f
        lo, hi = self.user_limits()
        await self._w(f.dial_high_limit, self.dial_limits[1])
        await self._w(f.dial_low_limit, self.dial_limits[0])
        await self._w(f.user_high_limit, hi)
        await self._w(f.user_low_limit, lo)
        await self._w(f.high_operating_range, hi)
        await self._w(f.low_operating_range, lo)
        await self.rec.write_metadata(
            upper_ctrl_limit=hi, lower_ctrl_limit=lo, upper_disp_limit=hi, lower_disp_limit=lo, units="um"
        )
        await self._w(f.user_offset, self.off)
        await self._w(self.rec, self.user(self.target))
        await self._w(f.dial_desired_value, self.target)
        await self._w(f.raw_desired_value, round(self.target / _MRES_UM))
        await self.post_position(moving=self._active)

    async def post_position(self, *, moving: bool) -> None:
        f = self.f
        dial = self.dial
        await self._w(f.dial_readback_value, dial)
        await self._w(f.raw_readback_value, round(dial / _MRES_UM))
        await self._w(f.user_readback_value, self.user(dial))
        high_sw = (self._switch > 0) if self.sign > 0 else (self._switch < 0)
        low_sw = (self._switch < 0) if self.sign > 0 else (self._switch > 0)
        await self._w(f.user_high_limit_switch, int(high_sw))
        await self._w(f.user_low_limit_switch, int(low_sw))
        await self._w(f.raw_high_limit_switch, int(self._switch > 0))
        await self._w(f.raw_low_limit_switch, int(self._switch < 0))
        await self._w(f.direction_of_travel, self._tdir)
        await self._w(f.at_home, int(self._at_home))
        msta = _MSTA_DIRECTION if self._tdir else 0
        msta |= _MSTA_MOVING if moving else _MSTA_DONE
        msta |= _MSTA_PLUS_LS if self._switch > 0 else 0
        msta |= _MSTA_MINUS_LS if self._switch < 0 else 0
        msta |= (_MSTA_HOMED if self._homed else 0) | (_MSTA_HOME if self._at_home else 0)
        await self._w(f.motor_status, msta)

    # ------------------------------------------------------------------ moves
    async def _refuse(self, message: str):
        await self._w(self.f.limit_violation, 1)
        await self.ioc.say(message)
        raise ParameterError(message)

    async def move_user(self, user: float) -> None:
        """Validate a user target against the soft limits, move there, return when done."""
        lo, hi = self.user_limits()
        if not math.isfinite(user) or not (lo <= user <= hi):
            await self._refuse(
                f"refused slit move to {user!r} um: outside the soft limits {lo:g} to {hi:g} um (HLM/LLM)"
            )
        await self._w(self.f.limit_violation, 0)
        await self.ioc.gate()
        await self._w(self.rec, user)
        dial = self.to_dial(user)
        await self._w(self.f.dial_desired_value, dial)
        await self._w(self.f.raw_desired_value, round(dial / _MRES_UM))
        await asyncio.shield(self.request(dial))

    def request(self, dial_target: float) -> asyncio.Future:
        """Start (or retarget) a move; the future completes when the motor is done.

        A move asked for while a stop is pending (``.STOP`` put, the running move not yet
        halted -- e.g. stuck) starts once that move has stopped: the stop is never lost.
        """
        fut = asyncio.get_running_loop().create_future()
        if self._active and self._stop:
            if self._queued is not None:
                self._waiters.append(self._queued[1])  # superseded: done when the stopping move is
            self._queued = (dial_target, fut)
            return fut
        self.target = dial_target
        self._stop = False
        self._waiters.append(fut)
        if not self._active:
            self._active = True
            self._task = asyncio.ensure_future(self._run(self._task))
        return fut

    def stop(self) -> None:
        self._stop = True

    async def _run(self, previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        f = self.f
        bench = self.ioc.bench
        hit = 0
        error: BaseException | None = None
        try:
            self._at_home = False
            await self._w(f.done_moving_to_value, 0)
            await self._w(f.motion_in_progress, 1)
            while True:
                await self.ioc.gate()
                spmg = f.stop_pause_move_go.value
                if self._stop or spmg == "Stop":
                    self.target = self.dial
                    break
                if spmg == "Pause" or "stuck_motor" in bench.state.faults:
                    await self._w(f.motor_is_moving, int(spmg != "Pause"))
                    await asyncio.sleep(TICK_S)
                    continue
                pos = self.dial
                lo, hi = self.travel
                dest = min(max(self.target, lo), hi)
                if abs(self.target - pos) > 1e-9:
                    self._tdir = int((self.target > pos) == (self.sign > 0))
                if abs(dest - pos) < 1e-9:
                    if dest != self.target:  # ran onto the end of travel
                        hit = 1 if self.target > hi else -1
                        self.target = pos
                    break
                direction = 1.0 if dest > pos else -1.0
                self._switch = 0
                await self._w(f.motor_is_moving, 1)
                scale = self.ioc.time_scale
                step_lab = min(TICK_S * scale, abs(dest - pos) / self.velo)
                await asyncio.sleep(step_lab / scale)
                if self._stop or "stuck_motor" in bench.state.faults or f.stop_pause_move_go.value not in _RUN:
                    continue  # stopped, stuck or paused during the tick: re-evaluate without moving
                new = dest if step_lab >= abs(dest - pos) / self.velo else pos + direction * self.velo * step_lab
                travel_s = bench.move_slit(new)
                bench.advance(max(0.0, abs(new - pos) / self.velo - travel_s))
                await self.post_position(moving=True)
                await self.ioc.post_clock_and_pump()
        except asyncio.CancelledError as exc:  # shutdown: finish the record, then let the cancel through
            error = exc
            raise
        except Exception as exc:  # a bug: finish the record anyway, log it below
            error = exc
        finally:
            self._active = False
            waiters, self._waiters = self._waiters, []
            self._switch = hit
            if self._stop or hit or error is not None or f.stop_pause_move_go.value == "Stop":
                self.target = self.dial
            if hit:
                await self.ioc.say(f"slit ran onto its {'high' if hit > 0 else 'low'} end of travel")
            await self._w(self.rec, self.user(self.target))
            await self._w(f.dial_desired_value, self.target)
            await self._w(f.raw_desired_value, round(self.target / _MRES_UM))
            await self._w(f.motor_is_moving, 0)
            await self._w(f.motion_in_progress, 0)
            await self.post_position(moving=False)
            await self._w(f.done_moving_to_value, 1)
            if f.stop_pause_move_go.value == "Move":
                await self._w(f.stop_pause_move_go, "Pause")
            await self.ioc.post_clock_and_pump()
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            if error is not None and not isinstance(error, asyncio.CancelledError):
                log.exception("slit motion failed", exc_info=error)
            queued, self._queued = self._queued, None
            if queued is not None and not isinstance(error, asyncio.CancelledError):
                self.target, self._stop = queued[0], False
                self._waiters.append(queued[1])
                self._active = True
                self._task = asyncio.ensure_future(self._run(None))

    # ------------------------------------------------------------------ field puts
    async def put_val(self, value) -> None:
        user = _scalar(value)
        if self.f.set_use_switch.value == "Set":
            if self.f.offset_freeze_switch.value == "Frozen":
                await self._refuse("refused SET of the slit position with FOFF=Frozen: the dial is the stripe length")
            if not math.isfinite(user):
                await self._refuse(f"refused SET of the slit position to {user!r}")
            self.off = user - self.sign * self.dial
            self.target = self.dial
            await self.post_all()
            raise SkipWrite
        await self.move_user(user)
        raise SkipWrite

    async def put_dval(self, value) -> None:
        await self.move_user(self.user(_scalar(value)))
        raise SkipWrite

    async def put_relative(self, value) -> int:
        await self.move_user(float(self.rec.value) + _scalar(value))
        return 0

    async def put_tweak(self, value, direction: float) -> int:
        if _scalar(value):
            await self.move_user(float(self.rec.value) + direction * float(self.f.tweak_step_size.value))
        return 0

    async def put_home(self, value) -> int:
        if not _scalar(value):
            return 0
        home = self.user(self.travel[0])
        await self.ioc.gate()
        await self._w(self.rec, home)
        await asyncio.shield(self.request(self.travel[0]))
        if abs(self.dial - self.travel[0]) < 1e-9:
            self._homed = self._at_home = True
            await self.post_position(moving=False)
        return 0

    async def put_stop(self, value) -> int:
        if _scalar(value):
            self.stop()
            if not self._active:
                self.target = self.dial
                await self._w(self.rec, self.user(self.target))
                await self._w(self.f.dial_desired_value, self.target)
        return 0

    async def put_spmg(self, value):
        if value == "Stop":
            self.stop()
        elif value in ("Go", "Move") and not self._active and abs(self.target - self.dial) > 1e-9:
            await self._w(self.f.stop_pause_move_go, value)
            self.request(self.target)
        return value

    async def put_user_limit(self, value, high: bool) -> None:
        v = _scalar(value)
        lo, hi = self.user_limits()
        lo, hi = (lo, v) if high else (v, hi)
        if not (math.isfinite(v) and lo < hi):
            await self._refuse(f"refused slit {'HLM' if high else 'LLM'} = {v!r}: must be finite and HLM > LLM")
        self.dial_limits = tuple(sorted((self.to_dial(lo), self.to_dial(hi))))
        await self.post_all()
        raise SkipWrite

    async def put_dial_limit(self, value, high: bool) -> None:
        v = _scalar(value)
        lo, hi = self.dial_limits
        lo, hi = (lo, v) if high else (v, hi)
        if not (math.isfinite(v) and lo < hi):
            await self._refuse(f"refused slit {'DHLM' if high else 'DLLM'} = {v!r}: must be finite and DHLM > DLLM")
        self.dial_limits = (lo, hi)
        await self.post_all()
        raise SkipWrite

    async def put_offset(self, value) -> None:
        v = _scalar(value)
        if not math.isfinite(v):
            await self._refuse(f"refused slit OFF = {v!r}")
        self.off = v
        await self.post_all()
        raise SkipWrite

    async def put_direction(self, value):
        self.sign = -1.0 if value == "Neg" else 1.0
        await self._w(self.f.user_direction, value)
        await self.post_all()
        raise SkipWrite

    async def put_operating_range(self, value, high: bool) -> float:
        v = _scalar(value)
        lo, hi = self.user_limits()
        if v == (hi if high else lo):
            return v  # caproto writes HOPR/LOPR back on every read (linked to DRVH/DRVL)
        await self._refuse("the slit's HOPR/LOPR follow HLM/LLM: put those instead")

    async def put_velocity(self, value) -> float:
        v = _scalar(value)
        if not (math.isfinite(v) and 0 < v <= self.vmax):
            await self.ioc.say(f"refused slit VELO = {v!r} um/s: allowed above 0 up to VMAX = {self.vmax:g} um/s")
            raise ParameterError(f"slit velocity {v!r} um/s outside (0, {self.vmax:g}]")
        self.velo = v
        return v


def install_field_putters(prop) -> None:
    """Route the motor-record field puts of the IOC's slit pvproperty to its ``SlitMotor``."""

    def route(field_name: str, handler):
        async def putter(fields, instance, value):
            motor = fields.parent.group.slit_motor
            await motor.ioc.gate()
            return await handler(motor, value)

        putter.__name__ = f"_slit_{field_name}_put"
        getattr(prop.fields, field_name).putter(putter)

    route("stop", SlitMotor.put_stop)
    route("stop_pause_move_go", SlitMotor.put_spmg)
    route("user_high_limit", lambda m, v: m.put_user_limit(v, True))
    route("user_low_limit", lambda m, v: m.put_user_limit(v, False))
    route("dial_high_limit", lambda m, v: m.put_dial_limit(v, True))
    route("dial_low_limit", lambda m, v: m.put_dial_limit(v, False))
    route("user_offset", SlitMotor.put_offset)
    route("user_direction", SlitMotor.put_direction)
    route("high_operating_range", lambda m, v: m.put_operating_range(v, True))
    route("low_operating_range", lambda m, v: m.put_operating_range(v, False))
    route("velocity", SlitMotor.put_velocity)
    route("dial_desired_value", SlitMotor.put_dval)
    route("relative_value", SlitMotor.put_relative)
    route("tweak_motor_forward", lambda m, v: m.put_tweak(v, 1.0))
    route("tweak_motor_reverse", lambda m, v: m.put_tweak(v, -1.0))
    route("home_forward", SlitMotor.put_home)
    route("home_reverse", SlitMotor.put_home)
