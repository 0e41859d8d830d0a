"""The twin's IOC as a Channel Access client sees it: ``gainloop twin serve`` in a subprocess on 127.0.0.1.

One IOC (time scale 1000) serves the module; tests that need real time set ``SIM:TimeScale``
and put it back. Clients are caproto's sync client (``harness.ioc``) and ophyd.
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from caproto import CaprotoError, CaprotoTimeoutError, ChannelType

from harness.ioc import EXAMPLE_BENCH, REPO, PutRefused, caget, caput, caread, twin_ioc

LIMIT = 3000.0  # examples/twin_bench.toml
SPEED = 500.0  # um/s
SCALE = 1000.0


@pytest.fixture(scope="module")
def ioc():
    with twin_ioc(EXAMPLE_BENCH, time_scale=SCALE, args=["--list-pvs"]) as running:
        yield running


@pytest.fixture
def pv(ioc):
    return ioc.pv


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def contract_pvs() -> set[str]:
    text = (REPO / "docs" / "pvs.md").read_text()
    return set(re.findall(r"`((?:PUMP|SLIT|STAGE|SPEC|POL|TA|IL|ABS|SIM):[A-Za-z0-9:\-]+)`", text))


# ---------------------------------------------------------------------------- start-up


def test_list_pvs_prints_every_pv_of_the_contract(ioc):
    expected = {ioc.pv(name) for name in contract_pvs()}
    assert len(expected) == 49  # 38 bench PVs (the watchdog, the white light among them) + 11 SIM PVs in docs/pvs.md
    listed = {line.strip() for line in ioc.stdout().splitlines() if line.strip() and not line.startswith("#")}
    assert listed == expected
    for name in expected:  # and each answers, with its control metadata (units fit DBR_CTRL's 8 chars)
        caread(name, data_type="control")


# (the IOC binds 127.0.0.1 only, TCP and UDP: tests/faults/test_security.py)


# ---------------------------------------------------------------------------- pump and interlock


def test_fluence_limit_is_the_drive_limit_and_refusals_say_why(pv):
    assert caget(pv("PUMP:Fluence-SP.DRVH")) == LIMIT
    assert caget(pv("PUMP:Fluence-SP.HOPR")) == LIMIT
    ctrl = caread(pv("PUMP:Fluence-SP"), data_type=ChannelType.CTRL_DOUBLE)
    assert ctrl.metadata.upper_ctrl_limit == LIMIT
    assert ctrl.metadata.upper_disp_limit == LIMIT

    caput(pv("PUMP:Fluence-SP"), 1000.0)
    assert caget(pv("PUMP:Fluence-SP")) == 1000.0
    for bad, reason in ((5000.0, "above the limit of 3000 uJ/cm^2"), (math.nan, "finite"), (-1.0, ">= 0")):
        with pytest.raises(PutRefused):
            caput(pv("PUMP:Fluence-SP"), bad)
        message = caget(pv("IL:Message.VAL$"))
        assert reason in message, message
        assert caget(pv("PUMP:Fluence-SP")) == 1000.0
    assert len(caget(pv("IL:Message.VAL$"))) > 40  # the whole message, as a long string

    with pytest.raises(PutRefused):
        caput(pv("PUMP:Fluence-SP.DRVH"), 1e5)
    assert caget(pv("PUMP:Fluence-SP.DRVH")) == LIMIT
    caput(pv("PUMP:Fluence-SP"), 0.0)


def test_permit_off_closes_the_shutter_and_refuses_fluence(pv):
    caput(pv("PUMP:Fluence-SP"), 100.0)
    caput(pv("PUMP:Shutter"), 1)
    assert caget(pv("PUMP:PulseEnergy-RB")) > 0
    assert caget(pv("PUMP:Fluence-RB")) == pytest.approx(100.0, rel=0.05)
    try:
        caput(pv("IL:Permit"), 0)
        assert caget(pv("PUMP:Shutter")) == 0
        assert caget(pv("PUMP:PulseEnergy-RB")) == 0.0
        assert "interlock open" in caget(pv("IL:Message.VAL$"))
        with pytest.raises(PutRefused):
            caput(pv("PUMP:Fluence-SP"), 200.0)
        assert "permit" in caget(pv("IL:Message.VAL$"))
        assert caget(pv("PUMP:Fluence-SP")) == 100.0
        with pytest.raises(PutRefused):
            caput(pv("PUMP:Shutter"), 1)
        assert caget(pv("PUMP:Shutter")) == 0
        caput(pv("PUMP:Fluence-SP"), 0.0)  # zero is allowed without permit
        assert caget(pv("PUMP:Fluence-SP")) == 0.0
    finally:
        caput(pv("IL:Permit"), 1)
    caput(pv("PUMP:Fluence-SP"), 200.0)
    assert caget(pv("PUMP:Fluence-SP")) == 200.0
    caput(pv("PUMP:Fluence-SP"), 0.0)


def test_power_ok_can_be_dropped_for_suspenders(pv):
    assert caget(pv("PUMP:PowerOK")) == 1
    caput(pv("PUMP:PowerOK"), 0)
    assert caget(pv("PUMP:PowerOK")) == 0
    caput(pv("PUMP:PowerOK"), 1)
    assert caget(pv("PUMP:PowerOK")) == 1


def test_text_pvs_are_epics_strings_a_plain_client_shows_as_text(pv):
    """STAGE:Sample-SP/-RB, STAGE:Kind-RB and IL:Message are DBR_STRING; IL:Message is an lsi record: its
    first 39 characters as DBR_STRING, the whole text as the long string IL:Message.VAL$ (a CHAR array)."""
    names = ["STAGE:Sample-SP", "STAGE:Sample-RB", "STAGE:Kind-RB", "IL:Message"]
    for name in names:
        assert caread(pv(name)).data_type == ChannelType.STRING, name
    got = subprocess.run(
        [sys.executable, "-m", "caproto.commandline.get", "--no-repeater", *(pv(n) for n in names)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    shown = {line.split()[0]: line.split(None, 1)[1].strip() for line in got.stdout.splitlines() if line.strip()}
    assert shown[pv("STAGE:Sample-RB")] == f"[{caget(pv('STAGE:Sample-RB'))}]"  # text, not [99 97 ...]
    assert shown[pv("STAGE:Kind-RB")] in ("[film]", "[dfb]")
    with pytest.raises(PutRefused):
        caput(pv("PUMP:Fluence-SP"), 5000.0)
    whole = caget(pv("IL:Message.VAL$"))
    assert whole == "refused fluence 5000 uJ/cm^2: above the limit of 3000 uJ/cm^2"
    long = caread(pv("IL:Message.VAL$"))
    assert long.data_type == ChannelType.CHAR and bytes(long.data).rstrip(b"\0").decode() == whole
    assert caget(pv("IL:Message")) == whole[:39]  # what `caget GL:IL:Message` shows: its first 39 characters
    caput(pv("PUMP:Fluence-SP"), 0.0)
    assert caget(pv("IL:Message")) == caget(pv("IL:Message.VAL$")) == "ok"


# ---------------------------------------------------------------------------- spectrometer, clock


def test_acquire_completes_when_the_spectrum_is_posted(pv):
    pixels = 512
    wl = caget(pv("SPEC:Wavelength"))
    assert wl.shape == (pixels,) and wl[0] == pytest.approx(1200.0) and wl[-1] == pytest.approx(1700.0)
    assert np.all(np.diff(wl) > 0)
    caput(pv("PUMP:Shutter"), 0)
    caput(pv("SPEC:Exposure"), 2.0)
    caput(pv("SPEC:Acquire"), 1)
    dark = caget(pv("SPEC:Integrated"))

    caput(pv("PUMP:Fluence-SP"), 2000.0)
    caput(pv("PUMP:Shutter"), 1)
    caput(pv("SIM:TimeScale"), 10.0)
    try:
        t0, lab0 = time.monotonic(), caget(pv("SIM:LabTime"))
        caput(pv("SPEC:Acquire"), 1, timeout=10)
        wall = time.monotonic() - t0
        integrated = caget(pv("SPEC:Integrated"))  # read right after the put completed
        lab = caget(pv("SIM:LabTime")) - lab0
    finally:
        caput(pv("SIM:TimeScale"), SCALE)
        caput(pv("PUMP:Shutter"), 0)
    assert wall >= 2.0 / 10.0  # the IOC awaited exposure / time scale
    assert lab == pytest.approx(2.0, abs=1e-9)
    spectrum = caget(pv("SPEC:Spectrum"))
    assert spectrum.shape == (pixels,)
    assert integrated > 100 * abs(dark) + 1e4  # the pumped spectrum, not the dark one before it
    assert spectrum.sum() == pytest.approx(integrated, rel=1e-12)
    assert 1200.0 < caget(pv("SPEC:PeakWavelength")) < 1700.0
    assert caget(pv("SPEC:FWHM")) > 0
    assert caget(pv("SPEC:Acquire")) == 0


def test_lab_clock_advances_by_the_exposure_not_wall_time(pv):
    caput(pv("SPEC:Exposure"), 45.0)
    lab0, t0 = caget(pv("SIM:LabTime")), time.monotonic()
    caput(pv("SPEC:Acquire"), 1, timeout=10)
    wall = time.monotonic() - t0
    assert caget(pv("SIM:LabTime")) - lab0 == pytest.approx(45.0, abs=1e-9)
    assert wall < 5.0  # 45 lab seconds at 1000x
    time.sleep(0.2)  # idle wall time does not count
    assert caget(pv("SIM:LabTime")) - lab0 == pytest.approx(45.0, abs=1e-9)
    caput(pv("SPEC:Exposure"), 1.0)


def test_exposure_outside_its_range_is_refused(pv):
    caput(pv("SPEC:Exposure"), 1.5)
    with pytest.raises(PutRefused):
        caput(pv("SPEC:Exposure"), 120.0)
    assert "exposure" in caget(pv("IL:Message.VAL$"))
    assert caget(pv("SPEC:Exposure")) == 1.5


def test_ta_acquire_completes_with_dalpha(pv):
    caput(pv("TA:Delay-SP"), 10.0)
    caput(pv("TA:PumpExcitons-SP"), 2.0)
    assert caget(pv("TA:Delay-RB")) == 10.0
    lab0 = caget(pv("SIM:LabTime"))
    caput(pv("TA:Acquire"), 1, timeout=10)
    signal = caget(pv("TA:dAlpha"))
    assert math.isfinite(signal) and signal < -0.1  # bleach beyond transparency at <N> = 2
    assert caget(pv("SIM:LabTime")) - lab0 == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(PutRefused):
        caput(pv("TA:Delay-SP"), 1e6)
    assert caget(pv("TA:Delay-RB")) == 10.0


# ---------------------------------------------------------------------------- slit (motor record)


def test_slit_move_completes_with_dmov_and_limits_are_refused(pv):
    slit = pv("SLIT:Length")
    assert caget(slit + ".HLM") == 4000.0 and caget(slit + ".LLM") == 10.0
    assert caget(slit + ".EGU") == "um"
    start = caget(slit + ".RBV")
    lab0 = caget(pv("SIM:LabTime"))
    caput(slit, 2500.0, timeout=10)
    assert caget(slit + ".DMOV") == 1 and caget(slit + ".MOVN") == 0
    assert caget(slit + ".RBV") == 2500.0 and caget(slit + ".VAL") == 2500.0
    assert caget(pv("SIM:LabTime")) - lab0 == pytest.approx(abs(2500.0 - start) / SPEED, abs=1e-9)
    for bad in (5000.0, 5.0):
        with pytest.raises(PutRefused):
            caput(slit + ".VAL", bad)
        assert caget(slit + ".LVIO") == 1
        assert "soft limits" in caget(pv("IL:Message.VAL$"))
        assert caget(slit + ".RBV") == 2500.0 and caget(slit + ".VAL") == 2500.0
    assert caget(slit + ".HLS") == 0 and caget(slit + ".LLS") == 0


def test_slit_stop_halts_a_move(pv):
    slit = pv("SLIT:Length")
    caput(slit, 2500.0, timeout=10)
    caput(pv("SIM:TimeScale"), 1.0)  # real time: 2490 um take 5 s
    try:
        caput(slit, 10.0, wait=False)
        assert wait_for(lambda: caget(slit + ".MOVN") == 1, 1.0)
        time.sleep(0.3)
        assert caget(slit + ".DMOV") == 0
        caput(slit + ".STOP", 1)
        assert wait_for(lambda: caget(slit + ".DMOV") == 1, 1.0)
    finally:
        caput(pv("SIM:TimeScale"), SCALE)
    rbv = caget(slit + ".RBV")
    assert 10.0 < rbv < 2500.0
    assert caget(slit + ".VAL") == pytest.approx(rbv)
    time.sleep(0.1)
    assert caget(slit + ".RBV") == rbv


def test_ophyd_epics_motor_works_unchanged(pv):
    from ophyd import EpicsMotor
    from ophyd.utils import LimitError

    motor = EpicsMotor(pv("SLIT:Length"), name="slit")
    try:
        motor.wait_for_connection(timeout=10)
        assert motor.limits == (10.0, 4000.0)
        assert motor.egu == "um"
        status = motor.set(1234.5)
        status.wait(10)
        assert status.success
        assert motor.position == pytest.approx(1234.5)
        assert caget(pv("SLIT:Length.RBV")) == pytest.approx(1234.5)
        with pytest.raises(LimitError):
            motor.set(4500.0)
        status = motor.set(1234.5)  # a null move completes too
        status.wait(10)
        assert status.success
        assert motor.position == pytest.approx(1234.5)
    finally:
        motor.destroy()


# ---------------------------------------------------------------------------- stage


def test_sample_change_completes_when_mounted(pv):
    with pytest.raises(PutRefused):
        caput(pv("STAGE:Sample-SP"), "no-such-sample")
    assert "no-such-sample" in caget(pv("IL:Message.VAL$"))
    assert caget(pv("STAGE:Sample-RB")) == "core-film"
    lab0 = caget(pv("SIM:LabTime"))
    caput(pv("STAGE:Sample-SP"), "cas-dfb", timeout=10)
    assert caget(pv("STAGE:Sample-RB")) == "cas-dfb"
    assert caget(pv("STAGE:Kind-RB")) == "dfb"
    assert caget(pv("STAGE:Period-RB")) == 860.0
    assert caget(pv("STAGE:Doping-RB")) == pytest.approx(0.47)
    assert caget(pv("STAGE:Busy")) == 0
    assert caget(pv("SIM:LabTime")) - lab0 == pytest.approx(20.0, abs=1e-9)


def test_new_film_request_completes_when_the_film_is_mounted(pv):
    caput(pv("SIM:TimeScale"), 1e5)  # 6 lab hours in 0.216 s
    try:
        caput(pv("STAGE:NewFilm-Doping-SP"), 50.0)
        with pytest.raises(PutRefused):
            caput(pv("STAGE:NewFilm-Request"), 1)
        assert "cannot be made" in caget(pv("IL:Message.VAL$"))
        caput(pv("STAGE:NewFilm-Doping-SP"), 5.0)
        lab0, t0 = caget(pv("SIM:LabTime")), time.monotonic()
        caput(pv("STAGE:NewFilm-Request"), 1, timeout=20)
        wall = time.monotonic() - t0
    finally:
        caput(pv("SIM:TimeScale"), SCALE)
    assert wall >= 6 * 3600 / 1e5
    assert caget(pv("SIM:LabTime")) - lab0 == pytest.approx(6 * 3600.0, abs=1e-6)
    film = caget(pv("STAGE:Sample-RB"))
    assert film.startswith("film-001")
    assert caget(pv("STAGE:Sample-SP")) == film
    assert caget(pv("STAGE:Doping-RB")) == 5.0
    assert caget(pv("STAGE:Kind-RB")) == "film"
    assert caget(pv("STAGE:Period-RB")) == 0.0
    assert caget(pv("STAGE:NewFilm-Request")) == 0 and caget(pv("STAGE:Busy")) == 0
    caput(pv("STAGE:Sample-SP"), "core-film", timeout=10)


# ---------------------------------------------------------------------------- faults


def test_fault_stuck_motor_never_finishes_until_cleared(pv):
    slit = pv("SLIT:Length")
    start = caget(slit + ".RBV")
    target = start + 500.0 if start < 3000 else start - 500.0
    caput(pv("SIM:Fault-StuckMotor"), 1)
    try:
        caput(slit, target, wait=False)
        time.sleep(0.5)  # 500x the 1 ms of wall time the move takes
        assert caget(slit + ".DMOV") == 0
        assert caget(slit + ".MOVN") == 1
        assert caget(slit + ".RBV") == start
    finally:
        caput(pv("SIM:Fault-StuckMotor"), 0)
    assert wait_for(lambda: caget(slit + ".DMOV") == 1, 2.0)
    assert caget(slit + ".RBV") == target


def test_fault_nan_readbacks(pv):
    caput(pv("PUMP:Fluence-SP"), 500.0)
    caput(pv("SIM:Fault-NaN"), 1)
    try:
        caput(pv("SPEC:Acquire"), 1, timeout=10)
        assert math.isnan(caget(pv("SPEC:Integrated")))
        assert np.isnan(caget(pv("SPEC:Spectrum"))).all()
        assert math.isnan(caget(pv("PUMP:Fluence-RB")))
        caput(pv("TA:Acquire"), 1, timeout=10)
        assert math.isnan(caget(pv("TA:dAlpha")))
    finally:
        caput(pv("SIM:Fault-NaN"), 0)
    caput(pv("SPEC:Acquire"), 1, timeout=10)
    assert math.isfinite(caget(pv("SPEC:Integrated")))
    assert caget(pv("PUMP:Fluence-RB")) == pytest.approx(500.0, rel=0.05)
    caput(pv("TA:Acquire"), 1, timeout=10)
    assert math.isfinite(caget(pv("TA:dAlpha")))
    caput(pv("PUMP:Fluence-SP"), 0.0)


def test_fault_inf_and_out_of_range_readbacks(pv):
    caput(pv("PUMP:Fluence-SP"), 500.0)
    caput(pv("SIM:Fault-Inf"), 1)
    try:
        caput(pv("SPEC:Acquire"), 1, timeout=10)
        assert caget(pv("SPEC:Integrated")) == math.inf
        assert np.isposinf(caget(pv("SPEC:Spectrum"))).all()
        assert caget(pv("PUMP:Fluence-RB")) == math.inf
        caput(pv("TA:Acquire"), 1, timeout=10)
        assert caget(pv("TA:dAlpha")) == math.inf
    finally:
        caput(pv("SIM:Fault-Inf"), 0)
    caput(pv("SIM:Fault-OutOfRange"), 1)
    try:
        assert caget(pv("PUMP:Fluence-RB")) < -400.0 and caget(pv("PUMP:PulseEnergy-RB")) < 0
        caput(pv("SPEC:Acquire"), 1, timeout=10)
        assert math.isfinite(caget(pv("SPEC:Integrated")))  # only the pump's readbacks
    finally:
        caput(pv("SIM:Fault-OutOfRange"), 0)
    assert caget(pv("PUMP:Fluence-RB")) == pytest.approx(500.0, rel=0.05)
    caput(pv("PUMP:Fluence-SP"), 0.0)


def _answers(name: str) -> bool:
    try:
        caget(name, timeout=0.3)
    except (CaprotoError, OSError):  # no server has it (timeout), or the circuit closing under us
        return False
    return True


def _native_type(name: str) -> ChannelType | None:
    """The PV's native type, or None if it does not answer (e.g. while the IOC reboots)."""
    try:
        return caread(name, timeout=0.5).data_type
    except (CaprotoError, OSError):
        return None


def test_fault_missing_readback_reboots_without_the_record_and_back(ioc, pv):
    integrated = pv("SPEC:Integrated")
    reboots = ioc.stderr().count("reboot: PVs gone")
    caput(pv("PUMP:Fluence-SP"), 500.0)
    caput(pv("SPEC:Acquire"), 1, timeout=10)
    assert _native_type(integrated) == ChannelType.DOUBLE
    caput(pv("SIM:Fault-Missing"), 1)
    try:
        # after the reboot (logged once the server is gone: a read timing out under load before it
        # proves nothing) every PV answers again but SPEC:Integrated (searches unanswered)
        assert wait_for(lambda: ioc.stderr().count("reboot: PVs gone") == reboots + 1, 10.0)
        assert wait_for(lambda: _answers(pv("SIM:LabTime")) and not _answers(integrated), 10.0)
        assert caget(pv("SIM:Fault-Missing")) == 1
        assert _answers(pv("SPEC:Spectrum")) and _answers(pv("PUMP:Fluence-RB"))
        caput(pv("SPEC:Acquire"), 1, timeout=10)  # the IOC still measures
        assert not _answers(integrated)
        caput(pv("SIM:Fault-Missing"), 1)  # already on: no reboot, still missing
        assert not _answers(integrated)
        assert ioc.stderr().count("reboot: PVs gone") == reboots + 1
        assert f"back with {integrated} not loaded (missing_readback fault)" in ioc.stderr()
    finally:
        caput(pv("SIM:Fault-Missing"), 0)
    assert wait_for(lambda: _answers(integrated), 10.0)  # rebooted with the record loaded
    assert _native_type(integrated) == ChannelType.DOUBLE
    assert caget(pv("SIM:Fault-Missing")) == 0
    assert ioc.stderr().count("reboot: PVs gone") == reboots + 2
    assert caget(integrated) == pytest.approx(caget(pv("SPEC:Spectrum")).sum(), rel=1e-12)
    caput(pv("PUMP:Fluence-SP"), 0.0)


def test_fault_string_readback_reboots_with_a_string_record_and_back(pv):
    integrated = pv("SPEC:Integrated")
    caput(pv("PUMP:Fluence-SP"), 500.0)
    caput(pv("SIM:Fault-String"), 1)
    try:
        assert wait_for(lambda: _native_type(integrated) == ChannelType.STRING, 10.0)
        caput(pv("SPEC:Acquire"), 1, timeout=10)
        text = caget(integrated)
        assert isinstance(text, str) and text.endswith(" counts"), text
        counts = caget(pv("SPEC:Spectrum")).sum()
        assert float(text.removesuffix(" counts")) == pytest.approx(counts, rel=1e-3)  # the value, as text
    finally:
        caput(pv("SIM:Fault-String"), 0)
    assert wait_for(lambda: _native_type(integrated) == ChannelType.DOUBLE, 10.0)
    assert caget(integrated) == pytest.approx(counts, rel=1e-12)
    caput(pv("PUMP:Fluence-SP"), 0.0)


def test_fault_saturated_detector(pv):
    caput(pv("PUMP:Shutter"), 0)
    caput(pv("SPEC:Acquire"), 1, timeout=10)
    assert caget(pv("SPEC:Saturated")) == 0
    caput(pv("SIM:Fault-Saturated"), 1)
    try:
        caput(pv("SPEC:Acquire"), 1, timeout=10)
        assert caget(pv("SPEC:Saturated")) == 1
        spectrum = caget(pv("SPEC:Spectrum"))
        assert spectrum.min() == spectrum.max() > 1e3  # every pixel at the full well
    finally:
        caput(pv("SIM:Fault-Saturated"), 0)
    caput(pv("SPEC:Acquire"), 1, timeout=10)
    assert caget(pv("SPEC:Saturated")) == 0


def test_fault_pause_hangs_puts_until_unpaused(pv):
    caput(pv("PUMP:Fluence-SP"), 10.0)
    caput(pv("SIM:Fault-Pause"), 1)
    try:
        t0 = time.monotonic()
        with pytest.raises(CaprotoTimeoutError):
            caput(pv("PUMP:Fluence-SP"), 123.0, timeout=1.0)
        assert time.monotonic() - t0 >= 1.0
        with pytest.raises(CaprotoTimeoutError):
            caput(pv("SPEC:Acquire"), 1, timeout=0.5)
        # reads still answer (while two puts wait in the paused IOC); nothing applied
        assert caget(pv("PUMP:Fluence-SP"), timeout=5.0) == 10.0
    finally:
        caput(pv("SIM:Fault-Pause"), 0)
    assert wait_for(lambda: caget(pv("PUMP:Fluence-SP")) == 123.0, 2.0)  # the waiting put went through
    assert wait_for(lambda: caget(pv("SPEC:Acquire")) == 0, 2.0)
    caput(pv("PUMP:Fluence-SP"), 0.0, timeout=2.0)
    assert caget(pv("PUMP:Fluence-SP")) == 0.0


def test_fault_disconnect_takes_the_pvs_away_and_back():
    """A second IOC (its own ports) with faults from the command line."""
    args = ["--fault", "stuck_motor", "--fault", "string", "--disconnect-s", "1.5"]
    with twin_ioc(EXAMPLE_BENCH, time_scale=SCALE, args=args) as ioc2:
        pv = ioc2.pv
        assert caget(pv("SIM:Fault-StuckMotor")) == 1
        assert caget(pv("SIM:Fault-String")) == 1
        assert caget(pv("SPEC:Integrated")) == "0 counts"  # served as a string record from the start
        assert caget(pv("SIM:Fault-Disconnect")) == 0
        caput(pv("PUMP:Fluence-SP"), 321.0)
        lab = caget(pv("SIM:LabTime"))
        caput(pv("SIM:Fault-Disconnect"), 1)
        t0 = time.monotonic()

        def answers() -> bool:
            try:
                caget(pv("PUMP:Fluence-SP"), timeout=0.3)
                return True
            except (CaprotoError, OSError):  # timeout, or the circuit closing under us
                return False

        assert wait_for(lambda: not answers(), 5.0)  # dark within the 1.5 s it stays dark (a loaded IOC goes late)
        assert wait_for(answers, 10.0)
        assert time.monotonic() - t0 >= 1.2
        assert caget(pv("PUMP:Fluence-SP")) == 321.0  # the same engine
        assert caget(pv("SIM:LabTime")) == lab
        assert caget(pv("SIM:Fault-Disconnect")) == 0


# ---------------------------------------------------------------------------- command line


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "twin", "serve", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_bench_file_is_a_clear_error_and_non_zero_exit(tmp_path):
    missing = serve("--bench", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "does not exist" in " ".join(missing.stderr.split())

    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[bench]\nname = "x"\nfluence_limit_uJ_cm2 = 100.0\nfluence_limt = 5\n\n'
        '[[stage.library]]\nid = "a"\nkind = "film"\ndoping = 0.0\n'
    )
    proc = serve("--bench", str(bad))
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2
    assert "bench.fluence_limt" in err and "unknown key" in err
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "gremlins"], "unknown fault"),
        (["--time-scale", "0"], "time scale must be"),
        (["--interface", "192.0.2.1"], "cannot serve on 192.0.2.1"),  # TEST-NET: not this host's
    ],
)
def test_bad_arguments_are_a_clear_error_and_non_zero_exit(args, message):
    proc = serve("--bench", str(EXAMPLE_BENCH), "--port", "1", *args)
    assert proc.returncode == 2
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr


def test_a_port_in_use_is_refused_and_the_first_ioc_keeps_serving(tmp_path):
    """`twin serve --port P` with P taken -- by another IOC, or by any TCP listener -- exits with status 2 and
    one line naming the bench, its PV prefix and the port; it serves nothing (caproto would silently serve
    on another port); the first IOC still serves."""
    from harness.ioc import environ

    with twin_ioc(EXAMPLE_BENCH, time_scale=SCALE, prefix="PORT1:", set_environ=False) as first:
        port = first.server_port
        second = serve("--bench", str(EXAMPLE_BENCH), "--port", str(port), "--prefix", "PORT2:")
        assert second.returncode == 2, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        expected = (
            f"error: cannot serve bench 'twin' (PV prefix PORT2:) on 127.0.0.1 port {port}: "
            "the port is in use (another IOC?); choose another with --port"
        )
        assert lines == [expected], second.stderr
        assert "# serving" not in second.stdout
        with environ(first.env):
            assert caget(first.pv("SIM:TimeScale")) == SCALE  # the first IOC still serves
            caput(first.pv("PUMP:Fluence-SP"), 12.0)
            assert caget(first.pv("PUMP:Fluence-SP")) == 12.0
        assert first.proc.poll() is None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:  # any TCP listener
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        other = serve("--bench", str(EXAMPLE_BENCH), "--port", str(port))
    assert other.returncode == 2
    assert other.stderr.strip() == (
        f"error: cannot serve bench 'twin' (PV prefix GL:) on 127.0.0.1 port {port}: "
        "the port is in use (another IOC?); choose another with --port"
    )


def test_the_ioc_logged_no_traceback(ioc):
    """Last: nothing above made the module's IOC raise where it should have refused."""
    with pytest.raises(PutRefused):
        caput(ioc.pv("PUMP:Fluence-SP"), 5000.0)
    stop = ioc.stop()
    err = ioc.stderr()
    assert "Traceback" not in err, err
    assert stop == 0, err
    assert "refused fluence 5000 uJ/cm^2" in err  # refusals are logged, one line each


def test_serve_takes_its_bench_port_prefix_and_interfaces_from_the_config(tmp_path):
    """`twin serve --config F`: [bench] file and [ioc] port, prefix, time scale, interfaces
    (the file's port wins over $EPICS_CA_SERVER_PORT; an option on the command line wins over both)."""
    from harness.ioc import TwinIOCProcess, bound_addresses, ca_environment, environ, free_port

    port, repeater, other = free_port(), free_port(), free_port()
    path = tmp_path / "gainloop.toml"
    path.write_text(
        f'[bench]\nfile = "{EXAMPLE_BENCH}"\n'
        f'[ioc]\ninterfaces = ["127.0.0.1"]\nport = {port}\nprefix = "CFG{port}:"\ntime_scale = 1000.0\n'
    )
    env = ca_environment(port, repeater)
    logs = tmp_path / "ioc"  # deleted by close()
    logs.mkdir()
    out, err = logs / "stdout", logs / "stderr"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gainloop.cli", "twin", "serve", "--config", str(path)],
            env={**os.environ, **ca_environment(other, repeater)},  # the process's own default port: not used
            stdout=fo,
            stderr=fe,
        )
    ioc = TwinIOCProcess(proc, f"CFG{port}:", port, repeater, env, out, err)
    try:
        ioc.wait_ready(30.0)
        assert bound_addresses(port, "tcp") == {"127.0.0.1"}
        assert not bound_addresses(other, "tcp")
        with environ(env):
            assert caget(ioc.pv("SIM:TimeScale")) == 1000.0
    finally:
        ioc.close()
    missing = subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "twin", "serve", "--config", str(tmp_path / "none.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_bench = tmp_path / "no_bench.toml"
    no_bench.write_text("[ioc]\ntime_scale = 10\n")
    refused = subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "twin", "serve", "--config", str(no_bench)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "no bench file" in refused.stderr


def test_a_stray_datagram_on_the_search_socket_is_read_past_a_few_times_then_raised():
    """A datagram that is no CA reply (a libca client elsewhere registering with a repeater on a port
    the sync client's socket now has) costs another attempt, never a failed read; a persistent one is raised."""
    from caproto import RemoteProtocolError

    from harness.ioc import STRAY_DATAGRAM_ATTEMPTS, past_stray_datagrams

    calls = []

    def flaky(fails: int):
        def call():
            calls.append(1)
            if len(calls) <= fails:
                raise RemoteProtocolError("Packet with bad command ID 0x18 was received")
            return "reply"

        return call

    assert past_stray_datagrams(flaky(STRAY_DATAGRAM_ATTEMPTS - 1)) == "reply"
    assert len(calls) == STRAY_DATAGRAM_ATTEMPTS
    calls.clear()
    with pytest.raises(RemoteProtocolError):
        past_stray_datagrams(flaky(STRAY_DATAGRAM_ATTEMPTS))
    assert len(calls) == STRAY_DATAGRAM_ATTEMPTS
