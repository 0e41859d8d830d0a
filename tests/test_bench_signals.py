"""Signals at random moments against the commands over Channel Access: the shutter ends closed, runs closed.

A few moments per command and signal here (each trial is a real command against the twin's IOC);
``python benchmarks/signal_matrix.py`` runs many more and prints the table. The moments are drawn
from a generator seeded by the test's name, shown in the failure message with the command's output.
"""

from __future__ import annotations

import random
import zlib

import pytest

from harness.faults._env import listening
from harness.ioc import caget, caput, twin_ioc
from harness.signals import run_queue_trial, run_trial

pytestmark = pytest.mark.slow(seconds=280)  # one of the longest modules: it runs early (tests/conftest.py)

#: Wall seconds over which the moments are drawn after the shutter first opened (a plan pumping the
#: sample; at time scale 1000 a scan lasts ~1 s, a three-trial campaign ~5 s).
SPAN_S = {"measure": (0.0, 0.8), "campaign": (0.0, 4.0), "queue": (0.0, 0.8)}


@pytest.fixture(scope="module")
def ioc():
    with twin_ioc(time_scale=1000.0) as proc:
        yield proc


def _moments(name: str, command: str, n: int) -> list[float]:
    rng = random.Random(zlib.crc32(name.encode()))
    lo, hi = SPAN_S[command]
    return [rng.uniform(lo, hi) for _ in range(n)]


def _check(trial) -> None:
    assert trial.ok, f"{trial.as_dict()}\n--- output ---\n{trial.output}"


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGINT_HELD"])
@pytest.mark.parametrize("command", ["measure", "campaign"])
def test_a_signal_at_a_random_moment_leaves_the_shutter_closed_and_every_run_closed(ioc, tmp_path, command, sig):
    for moment in _moments(f"{command}-{sig}", command, 2):
        _check(run_trial(ioc, command, sig, moment, tmp_path, after_shutter_opens=True))


@pytest.mark.parametrize("command", ["measure", "campaign"])
def test_sigkill_mid_scan_the_watchdog_closes_the_shutter(ioc, tmp_path, command):
    """SIGKILL while the shutter is open: no code of the command runs, the IOC's watchdog closes it."""
    trial = run_trial(ioc, command, "SIGKILL", 0.2, tmp_path, after_shutter_opens=True)
    _check(trial)
    assert not trial.ended_before_signal and trial.shutter_open_at_signal is True
    assert trial.shutter_closed_after_s is not None and trial.shutter_closed_after_s > 1.0  # the watchdog's doing


def test_the_watchdog_acts_only_on_a_stale_heartbeat_with_the_shutter_open(ioc):
    """The PV contract of docs/pvs.md, over CA: 0 disarms; a beat arms; stale + open -> closed, fluence 0."""
    import time

    caput(ioc.pv("PUMP:Watchdog"), 0)
    caput(ioc.pv("PUMP:Fluence-SP"), 100.0)
    caput(ioc.pv("PUMP:Shutter"), 1)
    time.sleep(6.0)  # disarmed: nothing happens past the timeout
    assert caget(ioc.pv("PUMP:Shutter")) == 1
    caput(ioc.pv("PUMP:Watchdog"), 7)  # armed
    for _ in range(3):  # refreshed in time: stays open
        time.sleep(2.0)
        caput(ioc.pv("PUMP:Watchdog"), 8)
    assert caget(ioc.pv("PUMP:Shutter")) == 1
    t0 = time.monotonic()
    while caget(ioc.pv("PUMP:Shutter")) == 1 and time.monotonic() - t0 < 10.0:
        time.sleep(0.1)
    waited = time.monotonic() - t0
    assert caget(ioc.pv("PUMP:Shutter")) == 0
    assert 4.5 <= waited <= 7.0  # the 5 s of examples/twin_bench.toml
    assert caget(ioc.pv("PUMP:Fluence-SP")) == 0.0
    assert "watchdog" in str(caget(ioc.pv("IL:Message")))
    caput(ioc.pv("PUMP:Watchdog"), 0)


@pytest.mark.skipif(not listening("127.0.0.1", 6379), reason="needs Redis on 127.0.0.1:6379 (the queueserver's)")
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_to_the_queueserver_mid_item_aborts_it_cleanly(ioc, tmp_path, sig):
    lo, hi = SPAN_S["queue"]
    trial = run_queue_trial(ioc, sig, random.Random(sig).uniform(lo, hi), tmp_path)
    _check(trial)
    assert trial.runs >= 1
