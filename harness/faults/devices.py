"""Device faults (issue 7, items 5-7): a stuck slit motor, bad readbacks, interlock and pump-power drops.

Each scenario runs real parts: the twin's caproto IOC as a subprocess (``gainloop twin
serve``) with the bench's ophyd devices connected over Channel Access on the loopback,
or the in-process twin devices; a fresh RunEngine; the measurement plans and the
campaign plan with a real optimiser. None needs PostgreSQL or Redis.

* ``stuck_motor``: the slit never finishes a move. A plan that moves it ends with
  exit_status "fail" and a reason naming the motor and the timeout; a campaign with the
  fault on is stopped by its breaker after 5 trials, saying why; no failed trial reaches
  the optimiser's training data.
* ``bad_readbacks``: NaN, inf, missing, text (string) and negative (out-of-range) readbacks
  from the IOC, one campaign trial under each. Every trial is recorded failed with a reason
  naming the PV or the bad value; the optimiser's training tensors hold only finite values of
  completed trials; the next proposals (after the faults are cleared and trials complete)
  stay inside the search space. Missing and string readbacks come from IOC reboots (the
  record of ``SPEC:Integrated`` not loaded, or loaded as a ``stringin``): the scenario waits
  until the bench's devices have reconnected (``reboot_ioc``) before the next trial.
* ``interlock_every_plan``: the interlock permit or the pump power drops during an
  exposure of each of the eight acquiring plans (in-process twin): each run completes,
  every stream's seq_num runs 1..n, the touched exposure is taken again, the
  interruption is recorded; a campaign trial interrupted so completes (it waits).
* ``interlock_ioc``: the same over the IOC: the permit is tripped through its PV during
  an ASE scan and restored a moment later.

The scenarios over the IOC take ``control_layer`` (the bench file's ``[bench].control_layer``:
``auto``, ``pyepics`` or ``caproto``) and name the layer used at the end of their detail. Their IOCs
are on the process's CA ports (``harness.ioc.pool_ports``): pyepics's libca reads its
environment once per process, and ``benchmarks/fault_matrix.py`` runs them one after the other.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from harness.documents import collect as _collect

from . import FaultEnv, FaultFigures

__all__ = [
    "SCENARIOS",
    "fast_ca_searches",
    "reboot_ioc",
    "scenario_bad_readbacks",
    "scenario_interlock_every_plan",
    "scenario_interlock_ioc",
    "scenario_stuck_motor",
]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_BENCH = REPO / "examples" / "twin_bench.toml"
FILM = "cas_doped-film"
FILM_DOPING = 7.4
DFB = "cas_doped-dfb"
#: Search space of the scenario campaigns (the film library's one doping level).
STRIPE_UM = (100.0, 4000.0)
FLUENCE_UJ_CM2 = (10.0, 3000.0)
#: A small ASE scan per trial (no fine points): a trial is a few ms of wall time on the IOC.
SCAN_ARGS = {"n_coarse": 12, "n_fine": 8, "fluence_min_uJ_cm2": 10.0, "fluence_max_uJ_cm2": 3000.0}


def bench_file(
    workdir: Path,
    *,
    prefix: str,
    resume_delay_s: float = 0.05,
    slit_speed_um_per_s: float = 50000.0,
    control_layer: str = "auto",
):
    """The example bench file under ``prefix``, with a fast slit (50 mm/s: moves of a few ms at the twin's
    time scale of 1000), a 0.5 s slit timeout margin, short device timeouts, a short resume delay and
    ophyd's ``control_layer``."""
    text = EXAMPLE_BENCH.read_text()
    text = text.replace('prefix = "GL:"', f'prefix = "{prefix}"\ncontrol_layer = "{control_layer}"')
    speed = f"speed_um_per_s = {slit_speed_um_per_s!r}\nmove_timeout_margin_s = 0.5"
    text = re.sub(r"speed_um_per_s = [0-9.]+", speed, text)
    text = text.replace("move_timeout_s = 120.0", "move_timeout_s = 10.0")
    text = text.replace("exposure_max_s = 60.0", "exposure_max_s = 60.0\nacquire_timeout_s = 5.0")
    text += f"\n[interlock]\nresume_delay_s = {resume_delay_s!r}\n"
    path = workdir / f"bench-{prefix.strip(':')}.toml"
    path.write_text(text)
    return path


def _prefix() -> str:
    return f"F{uuid.uuid4().hex[:8]}:"


def _runs(docs) -> list[dict]:
    """Per run: start, stop and events by stream name."""
    runs: dict[str, dict] = {}
    desc: dict[str, tuple[str, str]] = {}
    for name, doc in docs:
        if name == "start":
            runs[doc["uid"]] = {"start": doc, "stop": None, "streams": {}}
        elif name == "descriptor":
            desc[doc["uid"]] = (doc["run_start"], doc["name"])
            runs[doc["run_start"]]["streams"].setdefault(doc["name"], [])
        elif name == "event":
            run, stream = desc[doc["descriptor"]]
            runs[run]["streams"][stream].append(doc)
        elif name == "stop":
            runs[doc["run_start"]]["stop"] = doc
    return list(runs.values())


def _gap_free(run: dict) -> bool:
    return all([ev["seq_num"] for ev in evs] == list(range(1, len(evs) + 1)) for evs in run["streams"].values())


def _optimizer(bench, seed: int):
    from optimizer import LabState, SearchSpace, make_optimizer

    space = SearchSpace(
        fluence_uJ_cm2=FLUENCE_UJ_CM2,
        stripe_length_um=STRIPE_UM,
        doping=[FILM_DOPING],
        fluence_limit_uJ_cm2=bench.config.bench.fluence_limit_uJ_cm2,
    )
    return make_optimizer(
        "nested", space, seed=seed, lab_state=LabState(current_doping=FILM_DOPING, films=(FILM_DOPING,))
    )


def _campaign_plan(bench, opt, *, max_trials: int, breaker_min_trials: int = 5, clock=None):
    """The campaign plan on ``bench`` with ``opt`` until ``max_trials`` trials in all (those already in
    ``opt``'s history count)."""
    from plans.campaign import campaign

    return campaign(
        bench,
        opt,
        campaign_uid=str(uuid.uuid4()),
        lab_clock=clock or time.monotonic,
        max_trials=max_trials,
        trials_done=len(opt.history()),
        films=[FILM],
        can_make_films=False,
        scan_args=SCAN_ARGS,
        breaker_min_trials=breaker_min_trials,
    )


def _in_space(params: dict) -> bool:
    length, doping = float(params["stripe_length_um"]), float(params["doping"])
    ok = STRIPE_UM[0] <= length <= STRIPE_UM[1] and doping == FILM_DOPING
    if "fluence_uJ_cm2" in params:
        ok = ok and FLUENCE_UJ_CM2[0] <= float(params["fluence_uJ_cm2"]) <= FLUENCE_UJ_CM2[1]
    return ok


def _training_finite(opt) -> tuple[int, bool]:
    """(rows of threshold training data, every training tensor finite)."""
    data = opt.training_data()
    finite = all(bool(np.all(np.isfinite(t.numpy()))) for t in data.values())
    return int(data["X"].shape[0]), finite


# --------------------------------------------------------------------------------- 5: stuck motor
def scenario_stuck_motor(
    workdir: Path, env: FaultEnv | None = None, *, seed: int = 0, control_layer: str = "auto"
) -> FaultFigures:
    """The slit never completes a move (IOC fault ``stuck_motor``): the run fails saying so; the breaker
    stops a campaign after 5 failed trials; no failed trial reaches the optimiser."""
    from bluesky import RunEngine

    from devices import connect_bench, load_bench
    from harness.ioc import caput, pool_ports, twin_ioc
    from plans.campaign import CampaignStop
    from plans.measurements import vsl_scan

    prefix = _prefix()
    path = bench_file(workdir, prefix=prefix, control_layer=control_layer)
    checks: dict[str, bool] = {}
    detail = ""
    with pool_ports(), twin_ioc(path, time_scale=1000.0, prefix=prefix, args=["--seed", str(seed)]) as ioc:
        bench = connect_bench(load_bench(path))
        try:
            caput(ioc.pv("SIM:Fault-StuckMotor"), 1)
            # a plan that moves the slit
            RE = RunEngine({}, call_returns_result=True)
            docs = _collect(RE)
            error = None
            try:
                RE(vsl_scan(bench, FILM, fluence_uJ_cm2=2200.0, stripe_lengths_um=[400, 600, 800, 1200, 1600]))
            except Exception as exc:
                error = exc
            (run,) = _runs(docs)
            stop = run["stop"] or {}
            reason = str(stop.get("reason", ""))
            checks["plan_failed"] = error is not None and stop.get("exit_status") == "fail"
            checks["reason_names_motor_and_timeout"] = (
                "slit" in reason and "did not reach 400 um within" in reason and "stuck motor" in reason
            )
            checks["no_event_saved"] = not run["streams"].get("primary")
            # a campaign with the fault on for every trial
            opt = _optimizer(bench, seed)
            RE2 = RunEngine({}, call_returns_result=True)
            docs2 = _collect(RE2)
            stopped = None
            try:
                RE2(_campaign_plan(bench, opt, max_trials=12))
            except CampaignStop as exc:
                stopped = exc
            history = opt.history()
            n_rows, finite = _training_finite(opt)
            message = str(stopped or "")
            checks["breaker_stopped_after_5"] = stopped is not None and len(history) == 5
            checks["breaker_says_why"] = (
                "5 of 5 trials failed" in message and "more than 50%" in message and "stuck motor" in message
            )
            checks["failed_trials_recorded_with_reasons"] = all(
                r.status == "failed"
                and "DeviceTimeoutError: slit:" in r.reason
                and "stuck motor" in r.reason
                and ("did not reach" in r.reason or "still moving" in r.reason)
                for r in history
            )
            checks["nothing_reaches_the_optimiser"] = n_rows == 0 and finite
            records = [r for r in _runs(docs2) if r["start"].get("plan_name") == "campaign"]
            outcomes = records[0]["streams"].get("outcomes", []) if records else []
            checks["outcomes_recorded"] = [ev["data"]["status"] for ev in outcomes] == ["failed"] * 5
            checks["campaign_run_failed_with_reason"] = bool(records) and "CampaignStop" in str(
                (records[0]["stop"] or {}).get("reason", "")
            )
            statuses = ", ".join(f"{r.status}: {r.reason[:60]}" for r in history)
            detail = f"run: {reason[:90]}; campaign: {message[:120]}; trials: {statuses}; "
            detail += f"control layer {bench.control_layer}"
        finally:
            caput(ioc.pv("SIM:Fault-StuckMotor"), 0)
            bench.destroy()
    lost = sum(1 for ok in (checks.get("outcomes_recorded"),) if not ok)
    return FaultFigures(fault="stuck_motor", trials_lost=lost, checks=checks, detail=detail)


# --------------------------------------------------------------------------------- 6: bad readbacks
#: IOC fault PV -> what the trial's reason must say, in order ({integrated}: the full name of SPEC:Integrated).
BAD_READBACKS = {
    "SIM:Fault-NaN": ("ReadbackError: spectrometer_integrated ({integrated}) read back nan",),
    "SIM:Fault-Inf": ("ReadbackError: spectrometer_integrated ({integrated}) read back inf",),
    "SIM:Fault-Missing": ("ReadbackError: spectrometer_integrated ({integrated}) is missing: no reading",),
    "SIM:Fault-String": ("ReadbackError: spectrometer_integrated ({integrated}) read back '", " counts': not a number"),
    "SIM:Fault-OutOfRange": ("ReadbackError: pump_fluence (", "PUMP:Fluence-RB) read back -", "below 0 uJ/cm^2"),
}
#: The faults that reboot the IOC (on and off), and the PV each leaves disconnected while on.
REBOOTING_FAULTS = {"SIM:Fault-Missing": "SPEC:Integrated", "SIM:Fault-String": None}
#: Recovery trials once the faults are cleared.
RECOVERY_TRIALS = 2


@contextlib.contextmanager
def fast_ca_searches(max_interval_s: float = 0.5):
    """Cap caproto's client search back-off (``CAPROTO_CLIENT_MAX_RETRY_SEARCHES_INTERVAL_SEC``, 5 s)
    inside the block. After an IOC reboot caproto's threading client re-sends the lost PVs' searches
    only once its doubling interval has reached that cap (~8 s with the default); at 0.5 s the bench
    reconnects about 1.3 s after the IOC is back. Read live by caproto's search thread."""
    from caproto.client import common

    saved = common.MAX_RETRY_SEARCHES_INTERVAL
    common.MAX_RETRY_SEARCHES_INTERVAL = float(max_interval_s)
    try:
        yield
    finally:
        common.MAX_RETRY_SEARCHES_INTERVAL = saved


def reboot_ioc(ioc, bench, fault_pv: str, value: int, *, missing: str | None = None, timeout_s: float = 90.0):
    """Put ``fault_pv`` (a fault that reboots the IOC) and wait until the bench's devices saw their PVs go and
    come back -- every signal connected again except the one of PV ``missing`` -- and the slit's monitors
    (done-move, readback) post again: a move started before its done-move monitor is back would miss the
    move's start. Raises ``TimeoutError`` saying what did not come back."""
    from harness.ioc import caput

    gone = ioc.pv(missing) if missing else None
    signals = [
        w.item
        for dev in bench.devices().values()
        for w in dev.walk_signals()
        if gone is None or getattr(w.item, "pvname", None) != gone
    ]
    # the lab clock and the heartbeat too: a plan started before the heartbeat's channel is back
    # would have its shutter closed by the IOC's watchdog (pyepics reconnects up to 10 s late)
    signals += [s for s in (bench.clock, getattr(bench.heartbeat, "signal", None)) if s is not None]
    monitors = {"dmov": 0, "rbv": 0}
    subs = [
        (
            bench.slit.motor_done_move,
            bench.slit.motor_done_move.subscribe(lambda **kw: _bump(monitors, "dmov"), run=False),
        ),
        (bench.slit.user_readback, bench.slit.user_readback.subscribe(lambda **kw: _bump(monitors, "rbv"), run=False)),
    ]
    probe = bench.spectrometer.acquire
    deadline = time.monotonic() + timeout_s
    try:
        caput(ioc.pv(fault_pv), value)
        while probe.connected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{fault_pv} = {value}: the IOC did not reboot within {timeout_s:g} s")
            time.sleep(0.005)
        dark = dict(monitors)
        while not (all(s.connected for s in signals) and all(monitors[k] > dark[k] for k in monitors)):
            if time.monotonic() > deadline:
                away = [s.name for s in signals if not s.connected]
                raise TimeoutError(
                    f"{fault_pv} = {value}: not back from the reboot within {timeout_s:g} s: {away or 'slit monitors'}"
                )
            time.sleep(0.005)
    finally:
        for sig, cid in subs:
            sig.unsubscribe(cid)


def _bump(counts: dict, key: str) -> None:
    counts[key] += 1


def scenario_bad_readbacks(
    workdir: Path, env: FaultEnv | None = None, *, seed: int = 1, control_layer: str = "auto"
) -> FaultFigures:
    """NaN, inf, missing, string and negative readbacks from the IOC: the trial measured under each is
    recorded failed with a reason naming the PV or the bad value, none reaches the optimiser; once the
    faults are cleared trials complete and the next proposals stay in the search space."""
    from bluesky import RunEngine

    from devices import connect_bench, load_bench
    from harness.ioc import caput, pool_ports, twin_ioc

    prefix = _prefix()
    path = bench_file(workdir, prefix=prefix, control_layer=control_layer)
    checks: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    with (
        fast_ca_searches(),
        pool_ports(),
        twin_ioc(path, time_scale=1000.0, prefix=prefix, args=["--seed", str(seed)]) as ioc,
    ):
        bench = connect_bench(load_bench(path))
        try:
            opt = _optimizer(bench, seed)
            done = 0
            for pv, named in BAD_READBACKS.items():
                pattern = ".*".join(re.escape(part.format(integrated=ioc.pv("SPEC:Integrated"))) for part in named)
                rebooting = pv in REBOOTING_FAULTS
                if rebooting:
                    reboot_ioc(ioc, bench, pv, 1, missing=REBOOTING_FAULTS[pv])
                else:
                    caput(ioc.pv(pv), 1)
                try:
                    RE = RunEngine({}, call_returns_result=True)
                    RE(_campaign_plan(bench, opt, max_trials=done + 1, breaker_min_trials=100))
                finally:
                    if rebooting:
                        reboot_ioc(ioc, bench, pv, 0)
                    else:
                        caput(ioc.pv(pv), 0)
                done += 1
                last = opt.history()[-1]
                reasons[pv] = last.reason
                checks[f"{pv}: failed, reason names the value"] = (
                    len(opt.history()) == done
                    and last.status == "failed"
                    and re.search(pattern, last.reason) is not None
                )
                n_rows, finite = _training_finite(opt)
                checks[f"{pv}: nothing reaches the optimiser"] = n_rows == 0 and finite
            # the faults cleared: trials are measured again (completed, or infeasible with a reason), the
            # model sees only the finite values of the completed ones
            RE = RunEngine({}, call_returns_result=True)
            RE(_campaign_plan(bench, opt, max_trials=done + RECOVERY_TRIALS, breaker_min_trials=100))
            recovered = opt.history()[done:]
            completed = [r for r in opt.history() if r.status == "completed"]
            n_rows, finite = _training_finite(opt)
            checks["recovered: trials measured again"] = (
                len(recovered) == RECOVERY_TRIALS
                and all(r.status != "failed" for r in recovered)
                and len(completed) >= 1
            )
            checks["training data: only completed trials, all finite"] = n_rows == len(completed) and finite
            proposals = opt.suggest(3)
            checks["next proposals in bounds"] = len(proposals) == 3 and all(_in_space(p.params) for p in proposals)
            checks["every proposal made was in bounds"] = all(_in_space(r.params) for r in opt.history())
        finally:
            bench.destroy()
    failed = sum(1 for r in opt.history() if r.status == "failed")
    lost = 0 if failed == len(BAD_READBACKS) else abs(failed - len(BAD_READBACKS))
    detail = "; ".join(f"{pv.split('-')[-1]}: {why[:160]}" for pv, why in reasons.items())
    detail += "; then: " + ", ".join(f"{r.status} {r.reason[:60]}" for r in opt.history()[len(BAD_READBACKS) :])
    detail += f"; control layer {bench.control_layer}"
    return FaultFigures(fault="bad_readbacks", trials_lost=lost, checks=checks, detail=detail)


# --------------------------------------------------------------------------------- 7: interlock
def _twin(workdir: Path, seed: int):
    import tomllib

    from devices import parse_bench
    from sim.devices import twin_bench_devices

    text = bench_file(workdir, prefix="GL:", slit_speed_um_per_s=500.0).read_text()
    return twin_bench_devices(parse_bench(tomllib.loads(text), "fault-suite bench"), seed=seed)


def _every_plan(bench):
    """(name, plan factory, detector) of every acquiring plan, with arguments small enough to be quick."""
    from plans.lasing import lasing_spectrum, lasing_threshold, polarization_scan
    from plans.measurements import ase_fluence_scan, ase_point, vsl_scan
    from plans.pump_probe import pump_probe
    from plans.stability import stability_run
    from twin.dfb import dfb_threshold_uJ_cm2

    engine = bench.engine
    dfb = engine.sample_for(bench.config.library_entry(DFB))
    thr = float(dfb_threshold_uJ_cm2(dfb))
    kappa = float(engine.excitons_per_uJ_cm2("core-film"))
    spec, ta = bench.spectrometer, bench.ta
    return [
        ("ase_fluence_scan", lambda: ase_fluence_scan(bench, FILM), spec),
        (
            "vsl_scan",
            lambda: vsl_scan(bench, FILM, fluence_uJ_cm2=2200.0, stripe_lengths_um=np.linspace(10, 40, 16)),
            spec,
        ),
        ("ase_point", lambda: ase_point(bench, FILM, fluence_uJ_cm2=1500.0, stripe_length_um=1000.0), spec),
        ("lasing_threshold", lambda: lasing_threshold(bench, DFB, n_coarse=10, n_fine=12), spec),
        ("lasing_spectrum", lambda: lasing_spectrum(bench, DFB, fluence_uJ_cm2=1.5 * thr, n_spectra=3), spec),
        ("polarization_scan", lambda: polarization_scan(bench, DFB, fluence_uJ_cm2=1.5 * thr), spec),
        (
            "pump_probe",
            lambda: pump_probe(
                bench,
                "core-film",
                excitons_per_uJ_cm2=kappa,
                parts=("threshold",),
                n_coarse=10,
                n_fine=6,
            ),
            ta,
        ),
        (
            "stability_run",
            lambda: stability_run(
                bench, DFB, threshold_uJ_cm2=thr, duration_h=0.25, interval_s=60.0, smoothing_s=300.0
            ),
            spec,
        ),
    ]


class _Dropper:
    """Drops a signal (0) as the ``at``-th exposure of ``detector`` starts; a timer restores it (1)."""

    def __init__(self, signal, detector, at: int, for_s: float = 0.15):
        self.signal, self.detector, self.at, self.for_s = signal, detector, at, for_s
        self.triggers = 0
        self.timer: threading.Timer | None = None
        self.restored_at = math.nan

    def restore(self) -> None:
        self.signal.put(1)
        self.restored_at = time.time()

    def __call__(self, msg) -> None:
        if msg.command == "trigger" and msg.obj is self.detector:
            self.triggers += 1
            if self.triggers == self.at:
                self.signal.put(0)
                self.timer = threading.Timer(self.for_s, self.restore)
                self.timer.start()


def scenario_interlock_every_plan(workdir: Path, env: FaultEnv | None = None, *, seed: int = 2) -> FaultFigures:
    """The interlock permit (or, every other plan, the pump power) drops during the 3rd exposure (ase_point:
    its first) of every acquiring plan on the in-process twin; then a campaign trial is interrupted the same way."""
    from bluesky import RunEngine

    from plans._suspenders import INTERRUPTION_STREAM

    checks: dict[str, bool] = {}
    recoveries: list[float] = []
    doubled = lost = 0
    notes = []
    names = [name for name, _, _ in _every_plan(_twin(workdir, seed))]
    for k, name in enumerate(names):
        bench = _twin(workdir, seed)
        _, make, detector = _every_plan(bench)[k]
        which = "interlock_permit" if k % 2 == 0 else "pump_power_ok"
        signal = bench.interlock.permit if k % 2 == 0 else bench.pump.power_ok
        RE = RunEngine({}, call_returns_result=True)
        docs = _collect(RE)
        dropper = _Dropper(signal, detector, at=1 if name == "ase_point" else 3)
        RE.msg_hook = dropper
        result = RE(make())
        if dropper.timer is not None:
            dropper.timer.join()
        (run,) = _runs(docs)
        primary = run["streams"].get("primary", [])
        records = [ev["data"] for ev in run["streams"].get(INTERRUPTION_STREAM, [])]
        pumped = [ev["data"] for ev in primary if ev["data"].get("stability_dark", 0) == 0]
        checks[f"{name}: run completed"] = result.exit_status == "success" and run["stop"]["exit_status"] == "success"
        checks[f"{name}: seq_num gap-free"] = _gap_free(run)
        # the touched exposure is taken again; a suspension landing after the re-take began replays it once
        checks[f"{name}: touched exposure taken again"] = len(primary) + 1 <= dropper.triggers <= len(primary) + 2
        checks[f"{name}: interruption recorded"] = [r["interruption_signal"] for r in records] == [which]
        checks[f"{name}: no dark event"] = all(d["pump_shutter"] == 1 for d in pumped)
        doubled += max(0, len(primary) - len({ev["seq_num"] for ev in primary}))
        after = [ev["time"] for ev in primary if ev["time"] > dropper.restored_at]
        if after:
            recoveries.append(after[0] - dropper.restored_at)
        notes.append(f"{name} {len(primary)} ev")
    # a campaign trial interrupted mid-scan waits and completes
    bench = _twin(workdir, seed)
    opt = _optimizer(bench, seed)
    RE = RunEngine({}, call_returns_result=True)
    docs = _collect(RE)
    dropper = _Dropper(bench.interlock.permit, bench.spectrometer, at=5)
    RE.msg_hook = dropper
    RE(_campaign_plan(bench, opt, max_trials=1, clock=bench.lab_time_s))
    if dropper.timer is not None:
        dropper.timer.join()
    history = opt.history()
    trials = [r for r in _runs(docs) if "trial_index" in r["start"]]
    checks["campaign: interrupted trial completed"] = [r.status for r in history] == ["completed"]
    checks["campaign: interruption recorded in the trial's run"] = (
        len(trials) == 1 and len(trials[0]["streams"].get(INTERRUPTION_STREAM, [])) == 1 and _gap_free(trials[0])
    )
    lost += sum(1 for r in history if r.status != "completed")
    return FaultFigures(
        fault="interlock_every_plan",
        trials_lost=lost,
        trials_doubled=doubled,
        recovery_s=float(np.median(recoveries)) if recoveries else math.nan,
        checks=checks,
        detail=", ".join(notes),
    )


def scenario_interlock_ioc(
    workdir: Path, env: FaultEnv | None = None, *, seed: int = 3, control_layer: str = "auto"
) -> FaultFigures:
    """Over the IOC: ``IL:Permit`` is put to 0 through CA during the 4th exposure of an ASE scan and back to 1
    0.3 s later; the run completes with gap-free seq_num, the exposure taken again, the interruption
    recorded."""
    from bluesky import RunEngine

    from devices import connect_bench, load_bench
    from harness.ioc import caget, caput, pool_ports, twin_ioc
    from plans._suspenders import INTERRUPTION_STREAM
    from plans.measurements import ase_fluence_scan

    prefix = _prefix()
    path = bench_file(workdir, prefix=prefix, resume_delay_s=0.1, control_layer=control_layer)
    checks: dict[str, bool] = {}
    with pool_ports(), twin_ioc(path, time_scale=1000.0, prefix=prefix, args=["--seed", str(seed)]) as ioc:
        bench = connect_bench(load_bench(path))
        try:
            RE = RunEngine({}, call_returns_result=True)
            docs = _collect(RE)
            state = {"n": 0, "restored": math.nan}
            timers = []

            def restore():
                caput(ioc.pv("IL:Permit"), 1)
                state["restored"] = time.time()

            def hook(msg):
                if msg.command == "trigger" and msg.obj is bench.spectrometer:
                    state["n"] += 1
                    if state["n"] == 4:
                        caput(ioc.pv("IL:Permit"), 0, wait=False)  # the IOC closes the shutter at once
                        timers.append(threading.Timer(0.3, restore))
                        timers[-1].start()

            RE.msg_hook = hook
            result = RE(ase_fluence_scan(bench, FILM, **SCAN_ARGS))
            for t in timers:
                t.join()
            (run,) = _runs(docs)
            primary = run["streams"].get("primary", [])
            records = [ev["data"] for ev in run["streams"].get(INTERRUPTION_STREAM, [])]
            checks["run completed"] = result.exit_status == "success"
            checks["seq_num gap-free"] = _gap_free(run) and len(primary) >= 8
            checks["touched exposure taken again"] = state["n"] >= len(primary) + 1
            checks["no dark event"] = all(ev["data"]["pump_shutter"] == 1 for ev in primary)
            checks["interruption recorded"] = [r["interruption_signal"] for r in records] == ["interlock_permit"]
            checks["permit back"] = caget(ioc.pv("IL:Permit")) == 1
            after = [ev["time"] for ev in primary if ev["time"] > state["restored"]]
            recovery = after[0] - state["restored"] if after else math.nan
        finally:
            bench.destroy()
    return FaultFigures(
        fault="interlock_ioc",
        recovery_s=recovery,
        checks=checks,
        detail=f"{len(primary)} events, {state['n']} exposures; control layer {bench.control_layer}",
    )


SCENARIOS = {
    "stuck_motor": scenario_stuck_motor,
    "bad_readbacks": scenario_bad_readbacks,
    "interlock_every_plan": scenario_interlock_every_plan,
    "interlock_ioc": scenario_interlock_ioc,
}
