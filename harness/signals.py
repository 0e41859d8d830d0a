"""Real signals at random moments against gainloop's commands on the twin's IOC, over Channel Access.

One *trial* starts a command (``gainloop measure``, ``gainloop campaign run``, or a queue item
in ``gainloop qserver start``) against a running twin IOC, sends it a signal at a moment of its
life, and then checks what a scientist at the bench cares about:

* the pump shutter reads closed -- at once after the command exited, or, after SIGKILL (which no
  code can see), within the IOC's watchdog time (``[pump].watchdog_timeout_s``) plus a margin;
* every run the command opened has its stop document, except those of a SIGKILLed process,
  which ``gainloop campaign status`` reports as interrupted;
* the exit status says what happened: 130 (SIGINT), 143 (SIGTERM), -9 (SIGKILL), or 0 if the
  command ended before the signal came.

``SIGNALS``: ``SIGINT`` (one Ctrl+C), ``SIGINT_HELD`` (Ctrl+C every 20 ms until the process
exits: a key held down), ``SIGTERM``, ``SIGKILL``. Used by tests/test_bench_signals.py (a few
moments) and benchmarks/signal_matrix.py (many).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.ioc import EXAMPLE_BENCH, caget

SIGNALS = ("SIGINT", "SIGINT_HELD", "SIGTERM", "SIGKILL")
COMMANDS = ("measure", "campaign", "queue")
#: Wall seconds the IOC's watchdog waits (examples/twin_bench.toml) and the margin allowed on top.
WATCHDOG_S = 5.0
WATCHDOG_MARGIN_S = 3.0
EXIT_CODES = {"SIGINT": 130, "SIGINT_HELD": 130, "SIGTERM": 143, "SIGKILL": -9}
INTERRUPTED = "interrupted: the run has no stop document"
#: Wall seconds within which a command must have exited after SIGINT or SIGTERM (the plan's cleanup,
#: its stop documents and the catalog's closing included).
STOP_WITHIN_S = 20.0


@dataclass
class SignalTrial:
    """What one signal at one moment did."""

    command: str
    signal: str
    moment_s: float
    anchor: str = "start"  # what the moment counts from: the command's start, or the shutter opening
    exit_code: int | None = None
    ended_before_signal: bool = False
    completed_anyway: bool = False  # the signal came as the plan ended: it finished, whole (exit 0)
    exit_after_signal_s: float | None = None
    shutter_open_at_signal: bool | None = None  # read just before the signal was sent
    shutter_closed: bool = False
    shutter_closed_after_s: float | None = None
    runs: int = 0
    runs_without_stop: int = 0
    interrupted_reported: bool | None = None  # SIGKILL: resume/status say the open trial was interrupted
    problems: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("output")
        d["ok"] = self.ok
        return d


def _cli_env(ioc, data_dir: Path) -> dict[str, str]:
    from harness.faults._env import clean_env

    return clean_env(**ioc.env, GAINLOOP_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")


def command_argv(command: str, bench_file: Path = EXAMPLE_BENCH) -> list[str]:
    """The command a trial runs (the IOC's bench file; a small campaign)."""
    base = [sys.executable, "-m", "gainloop.cli"]
    if command == "measure":
        return [*base, "measure", "ase_fluence_scan", "--sample", "cas_doped-film", "--bench", str(bench_file)]
    if command == "campaign":
        return [*base, "campaign", "run", "--bench", str(bench_file), "--max-trials", "3", "--seed", "0"]
    raise ValueError(f"unknown command {command!r}; allowed: measure, campaign (queue: run_queue_trial)")


def _send(proc: subprocess.Popen, sig: str, *, group: bool = False) -> None:
    """Send ``sig`` to the process (``SIGINT_HELD``: every 20 ms until it exits, at most 30 s)."""
    kill = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    if sig == "SIGINT_HELD":
        deadline = time.monotonic() + 30.0
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                kill(signal.SIGINT)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        return
    try:
        kill(getattr(signal, sig))
    except ProcessLookupError:
        pass


def _shutter_after(ioc, sig: str) -> tuple[bool, float | None]:
    """Whether the shutter reads closed: at once (one read), or within the watchdog time after SIGKILL."""
    t0 = time.monotonic()
    limit = WATCHDOG_S + WATCHDOG_MARGIN_S if sig == "SIGKILL" else 0.0
    while True:
        try:
            closed = int(caget(ioc.pv("PUMP:Shutter"), timeout=2.0)) == 0
        except Exception:
            closed = False
        waited = time.monotonic() - t0
        if closed:
            return True, waited
        if waited > limit:
            return False, None
        time.sleep(0.1)


def _check_runs(trial: SignalTrial, data_dir: Path, *, catalog_uri: str | None = None, api_key=None) -> None:
    """Every stored run has its stop document, except after SIGKILL (then the campaign's status says
    the open trial was interrupted)."""
    from gainloop.campaign import campaign_status
    from gainloop.catalog import Catalog

    with Catalog(catalog_uri, data_dir_path=data_dir, api_key=api_key, warn_pending_backup=False) as cat:
        runs = list(cat.client.values())
        trial.runs = len(runs)
        open_runs = [r for r in runs if not r.metadata.get("stop")]
        trial.runs_without_stop = len(open_runs)
        if trial.signal != "SIGKILL" and open_runs:
            names = ", ".join(f"{r.start['uid'][:8]} ({r.start.get('plan_name')})" for r in open_runs)
            trial.problems.append(f"{len(open_runs)} run(s) without a stop document: {names}")
        if trial.signal == "SIGKILL" and open_runs:
            campaigns = {r.start.get("campaign_uid") for r in open_runs} - {None}
            if not campaigns:
                trial.interrupted_reported = None  # a measurement run: nothing to resume
            for uid in campaigns:
                status = campaign_status(cat, uid)
                open_trials = {int(r.start["trial_index"]) for r in open_runs if "trial_index" in r.start}
                reported = {t["trial_index"] for t in status["failed_trials"] if t["reason"] == INTERRUPTED}
                trial.interrupted_reported = open_trials <= reported
                if not trial.interrupted_reported:
                    trial.problems.append(
                        f"campaign {uid[:8]}: trials {sorted(open_trials)} without a stop document are not "
                        f"reported interrupted ({status['failed_trials']})"
                    )
        if trial.signal == "SIGKILL" and len(open_runs) > 2:
            trial.problems.append(f"{len(open_runs)} runs without a stop document after one SIGKILL")


def _finish(trial: SignalTrial, proc: subprocess.Popen, ioc, started: float, exited_s: float) -> None:
    trial.exit_code = proc.returncode
    trial.shutter_closed, trial.shutter_closed_after_s = _shutter_after(ioc, trial.signal)
    if not trial.shutter_closed:
        trial.problems.append(
            "the shutter reads OPEN after the command ended"
            + (f" (and {WATCHDOG_S + WATCHDOG_MARGIN_S:g} s later)" if trial.signal == "SIGKILL" else "")
        )
    if trial.ended_before_signal:
        expected = {0}
    else:  # (a signal landing as the plan ends lets it finish: every run whole, the shutter closed)
        expected = {EXIT_CODES[trial.signal]} | ({0} if trial.signal != "SIGKILL" else set())
        trial.completed_anyway = trial.exit_code == 0
    if trial.exit_code not in expected:
        trial.problems.append(f"exit status {trial.exit_code}, expected one of {sorted(expected)}")
    if trial.exit_after_signal_s is not None and trial.exit_after_signal_s > STOP_WITHIN_S:
        trial.problems.append(f"the command went on {trial.exit_after_signal_s:.1f} s after the signal")


def _shutter_reads_open(ioc) -> bool | None:
    try:
        return int(caget(ioc.pv("PUMP:Shutter"), timeout=1.0)) == 1
    except Exception:
        return None


def _wait_for_open_shutter(ioc, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Poll the shutter until it reads open (the plan is pumping) or the command exits."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if int(caget(ioc.pv("PUMP:Shutter"), timeout=1.0)) == 1:
                return True
        except Exception:
            pass
        time.sleep(0.02)
    return False


def run_trial(
    ioc,
    command: str,
    sig: str,
    moment_s: float,
    workdir: Path,
    *,
    after_shutter_opens: bool = False,
    timeout_s: float = 120.0,
) -> SignalTrial:
    """``command`` (measure or campaign) against ``ioc``; ``sig`` ``moment_s`` wall seconds after its start
    (``after_shutter_opens``: after the shutter first read open, i.e. while a plan pumps the sample)."""
    if sig not in SIGNALS:
        raise ValueError(f"unknown signal {sig!r}; allowed: {', '.join(SIGNALS)}")
    data_dir = Path(workdir) / f"{command}-{sig}-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir(parents=True)
    trial = SignalTrial(command, sig, round(moment_s, 3), anchor="shutter open" if after_shutter_opens else "start")
    log = data_dir / "output.txt"
    with log.open("w") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            command_argv(command), stdout=out, stderr=subprocess.STDOUT, env=_cli_env(ioc, data_dir), cwd=data_dir
        )
        try:
            if after_shutter_opens and _wait_for_open_shutter(ioc, proc, timeout_s):
                started = time.monotonic()
            while proc.poll() is None and time.monotonic() - started < moment_s:
                time.sleep(0.01)
            trial.ended_before_signal = proc.poll() is not None
            if not trial.ended_before_signal:
                trial.shutter_open_at_signal = _shutter_reads_open(ioc)
                sent = time.monotonic()
                _send(proc, sig)
            proc.wait(timeout=timeout_s)
            if not trial.ended_before_signal:
                trial.exit_after_signal_s = round(time.monotonic() - sent, 3)
        except subprocess.TimeoutExpired:
            trial.problems.append(f"the command did not exit within {timeout_s:g} s of the signal")
            proc.kill()
            proc.wait()
    trial.output = log.read_text(errors="replace")[-4000:]
    _finish(trial, proc, ioc, started, time.monotonic() - started)
    _check_runs(trial, data_dir)
    if sig != "SIGKILL" and "Traceback" in trial.output:
        trial.problems.append("a traceback in the output")
    return trial


# ------------------------------------------------------------------ a queue item
def run_queue_trial(
    ioc, sig: str, moment_s: float, workdir: Path, *, redis_addr: str = "127.0.0.1:6379"
) -> SignalTrial:
    """``gainloop qserver start --bench`` on ``ioc``; an ``ase_fluence_scan`` item runs; ``sig`` reaches
    the ``gainloop qserver start`` process ``moment_s`` wall seconds after the item started."""
    from harness.faults.queueserver import Manager

    trial = SignalTrial("queue", sig, round(moment_s, 3), anchor="item start")
    workdir = Path(workdir) / f"queue-{sig}-{uuid.uuid4().hex[:8]}"
    manager = Manager(
        workdir, catalog_url=None, api_key=None, redis_addr=redis_addr, extra_env=dict(ioc.env), bench=EXAMPLE_BENCH
    )
    try:
        manager.start()
        manager.open_environment()
        from bluesky_queueserver_api import BPlan

        manager.api.item_add(BPlan("ase_fluence_scan", sample_id="cas_doped-film", stripe_length_um=800.0))
        manager.api.queue_start()
        t0 = time.monotonic()
        while manager.api.status()["manager_state"] != "executing_queue" and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        started = time.monotonic()
        while time.monotonic() - started < moment_s and manager.api.status()["manager_state"] == "executing_queue":
            time.sleep(0.02)
        trial.ended_before_signal = manager.api.status()["manager_state"] != "executing_queue"
        manager.close_api()
        if not trial.ended_before_signal:
            trial.shutter_open_at_signal = _shutter_reads_open(ioc)
            _send(manager.proc, sig)
        else:  # the item ended: stop the manager as an operator would (the status code is then 130)
            _send(manager.proc, "SIGINT")
        try:
            manager.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            trial.problems.append("gainloop qserver start did not exit within 90 s of the signal")
            manager.kill()
        if trial.ended_before_signal:
            trial.exit_code = manager.proc.returncode
            trial.shutter_closed, trial.shutter_closed_after_s = _shutter_after(ioc, "SIGINT")
            if not trial.shutter_closed:
                trial.problems.append("the shutter reads OPEN after the queue item ended")
        else:
            _finish(trial, manager.proc, ioc, started, time.monotonic() - started)
        trial.output = manager.log()[-4000:]
        if sig == "SIGKILL":  # the manager (PR_SET_PDEATHSIG) and its worker follow the killed command
            manager.kill()
        _check_runs(trial, manager.data_dir)
    finally:
        manager.stop()
        manager.delete_redis_keys()
    return trial


def summarise(trials: list[SignalTrial]) -> list[dict]:
    """One row per (command, signal): moments tried, shutter closed, runs without a stop document."""
    rows: dict[tuple[str, str], dict] = {}
    for t in trials:
        row = rows.setdefault(
            (t.command, t.signal),
            {
                "command": t.command,
                "signal": t.signal,
                "moments": 0,
                "ended_before_signal": 0,
                "completed_anyway": 0,
                "shutter_closed": 0,
                "max_close_s": 0.0,
                "runs": 0,
                "runs_without_stop": 0,
                "problems": 0,
            },
        )
        row["moments"] += 1
        row["ended_before_signal"] += int(t.ended_before_signal)
        row["completed_anyway"] += int(t.completed_anyway)
        row["shutter_closed"] += int(t.shutter_closed)
        if t.shutter_closed_after_s is not None:
            row["max_close_s"] = max(row["max_close_s"], round(t.shutter_closed_after_s, 2))
        row["runs"] += t.runs
        row["runs_without_stop"] += t.runs_without_stop
        row["problems"] += len(t.problems)
    return list(rows.values())


def trials_json(trials: list[SignalTrial]) -> str:
    return json.dumps([t.as_dict() for t in trials])
