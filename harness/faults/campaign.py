"""Campaign process faults (issue 7, items 1, 2 and 8) and the resume-time fluence checks.

* ``scenario_sigkill`` (item 1, with item 2 at its ``measuring`` point): a real
  ``gainloop campaign run`` on the twin against a Tiled server on PostgreSQL, killed
  with SIGKILL at each point of ``points`` in turn (each ``campaign resume`` is killed
  at the next point, through ``$GAINLOOP_FAULT_INJECT``), then resumed to the end;
  the catalog alone must give every trial index once, no index measured twice, the
  killed trials failed with their reason and every measurement run that got its stop
  document used. While the run of the trial killed mid-measurement is left without a
  stop document, the readers (``campaign status``, ``replay`` of that run, ``report``)
  are run on it.
* ``scenario_pause_resume``, ``scenario_abort`` (item 8): in-process, a fresh RunEngine
  on the twin; a deferred pause then ``RE.resume()`` gives the data of an uninterrupted
  campaign of the same seeds; ``RE.abort()`` mid-trial leaves that trial's run
  ``abort`` and, on resume, the trial ``abandoned`` and its index spent.
* ``scenario_three_sigints`` (item 8): three SIGINTs to a real ``gainloop campaign run``
  mid-measurement: the process ends with one line and status 130, the open runs get
  their stop documents (``abort``).
* ``scenario_resume_fluence`` (security): a stored config or a stored proposal above
  the bench's fluence limit is refused on resume, nothing measured; a stored proposal
  within the limit is replayed as stored.

Seeds are fixed; the twin runs in-process in the campaign (no IOC).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import FaultFigures
from ._env import FaultEnv, clean_env

__all__ = [
    "SCENARIOS",
    "CampaignFigures",
    "scenario_abort",
    "scenario_pause_resume",
    "scenario_resume_fluence",
    "scenario_sigkill",
    "scenario_three_sigints",
]

KILL_POINTS = ("proposed", "measuring", "measured", "recording")
SMALL_SCAN = {"n_coarse": 6, "n_fine": 4}  # in-process campaigns: short scans


def _twin_for(cfg):
    """The in-process twin a campaign of ``cfg`` runs on (its noise seed)."""
    from sim.devices import default_twin_bench_path, twin_bench_devices

    return twin_bench_devices(default_twin_bench_path(), seed=cfg.twin_seed)


PROCESS_TIMEOUT_S = 600.0


@dataclass
class CampaignFigures(FaultFigures):
    """``FaultFigures`` plus what the scenario observed (for the tests' specific assertions)."""

    observed: dict = field(default_factory=dict)


# ------------------------------------------------------------------ helpers
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gainloop.cli", *args]


def _catalog(server, data_dir: Path):
    from gainloop.catalog import Catalog

    return Catalog(server.url, data_dir_path=data_dir, api_key=server.api_key)


def _runs_of(cat, campaign_uid: str) -> list:
    from tiled.queries import Key

    return list(cat.client.search(Key("start.campaign_uid") == campaign_uid).values())


def _campaign_uids(cat) -> set[str]:
    from tiled.queries import Key

    return {r.start["campaign_uid"] for r in cat.client.search(Key("start.plan_name") == "campaign").values()}


def _trial_runs(cat, campaign_uid: str) -> list:
    return [r for r in _runs_of(cat, campaign_uid) if "trial_index" in r.start]


def _stop(run) -> dict | None:
    return run.metadata.get("stop")


def _columns(run, stream: str) -> dict:
    from gainloop.replay import stream_columns

    return {k: list(v) for k, v in stream_columns(run[stream]).items()} if stream in run else {}


def _analysis(run) -> dict:
    cols = _columns(run, "analysis")
    return {k: float(v[-1]) for k, v in cols.items()}


def _doubled(runs) -> int:
    """Trial indices measured by more than one run (each extra run counts)."""
    counts: dict[int, int] = {}
    for r in runs:
        counts[r.start["trial_index"]] = counts.get(r.start["trial_index"], 0) + 1
    return sum(n - 1 for n in counts.values() if n > 1)


def _one_line_error(stderr: str) -> bool:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return len(lines) >= 1 and "Traceback" not in stderr and len(lines[-1]) > 10


# ------------------------------------------------------------------ item 1 (+ item 2)
def scenario_sigkill(
    workdir: Path,
    env: FaultEnv,
    *,
    points: tuple[str, ...] = KILL_POINTS,
    seed: int = 2,
    readers: bool = True,
) -> CampaignFigures:
    """Kill ``gainloop campaign run`` / ``resume`` with SIGKILL at each of ``points`` (in turn), resume to the end.

    The k-th process is killed at ``points[k]`` of the trial it is then on (the first at
    trial 0; ``proposed`` and ``measuring`` stay on the same trial, the others move on);
    a last ``campaign resume`` finishes the campaign (one trial past the last killed).
    ``readers``: while a run is left without a stop document (after ``measuring``), run
    ``campaign status``, ``replay`` of that run and ``report`` on it (item 2).
    """
    from gainloop.campaign import FAULT_ENV, prepare_campaign, rebuild_trials

    for p in points:
        if p not in KILL_POINTS:
            raise ValueError(f"unknown kill point {p!r}; allowed: {', '.join(KILL_POINTS)}")
    server = env.tiled_server()
    data_dir = workdir / "data"
    common = ["--catalog", server.url, "--data-dir", str(data_dir), "--json"]
    figures = CampaignFigures(fault="campaign SIGKILL at " + ", ".join(points))
    checks, observed = figures.checks, figures.observed

    # which trial each kill lands on: a kill before the trial's run ends leaves it to be measured
    # again (proposed: replayed) or spent (measuring: failed); after its stop document it is done
    kills, trial = [], 0
    for p in points:
        kills.append((p, trial))
        if p != "proposed":
            trial += 1
    n_trials = trial + 1  # the final resume measures one more trial

    with _catalog(server, data_dir) as cat:
        before = _campaign_uids(cat)
    uid = None
    ended_runs: dict[str, int] = {}  # uid -> trial index of every measurement run seen with a stop document
    resume_s: list[float] = []
    for k, (point, index) in enumerate(kills):
        args = (
            ["campaign", "run", "--seed", str(seed), "--max-trials", str(n_trials), *common]
            if uid is None
            else ["campaign", "resume", uid, "--max-trials", str(n_trials), *common]
        )
        t0 = time.monotonic()
        proc = subprocess.run(
            _cli(*args),
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT_S,
            env=clean_env(TILED_API_KEY=server.api_key, **{FAULT_ENV: f"sigkill@{point}:{index}"}),
        )
        if uid is not None:
            resume_s.append(time.monotonic() - t0)
        checks[f"{point}:{index} killed by SIGKILL"] = proc.returncode == -signal.SIGKILL
        if proc.returncode != -signal.SIGKILL:
            figures.detail = f"process {k} ended {proc.returncode}: {proc.stderr[-2000:]}"
            return figures
        with _catalog(server, data_dir) as cat:
            if uid is None:
                new = _campaign_uids(cat) - before
                checks["the killed run left one campaign record"] = len(new) == 1
                if len(new) != 1:
                    return figures
                uid = new.pop()
            runs = _trial_runs(cat, uid)
            for r in runs:
                if _stop(r) is not None:
                    ended_runs[r.start["uid"]] = r.start["trial_index"]
            mine = [r for r in runs if r.start["trial_index"] == index]
            state = {"runs": len(mine), "stopped": [(_stop(r) or {}).get("exit_status") for r in mine]}
            if point == "proposed":
                _, trials, _, _ = rebuild_trials(cat, uid)
                from gainloop.campaign import stored_campaign

                pending = stored_campaign(cat, uid).pending
                state["pending"] = [p.trial_index for p in pending]
                state["pending_params"] = {p.trial_index: p.params for p in pending}
                checks[f"proposed:{index} left a recorded proposal and no run"] = (
                    not mine and index in state["pending"] and index not in [t.trial_index for t in trials]
                )
            elif point == "measuring":
                checks[f"measuring:{index} left a run without a stop document"] = state["stopped"] == [None]
                if readers and mine and state["stopped"] == [None]:
                    observed["readers"] = _readers(workdir, server, data_dir, uid, mine[0].start["uid"])
                    for name, ok in observed["readers"]["checks"].items():
                        checks[f"reader {name}"] = ok
            else:  # measured / recording: the run ended, its outcome was never recorded
                checks[f"{point}:{index} left a finished run without a recorded outcome"] = state["stopped"] == [
                    "success"
                ] and index not in _recorded_outcomes(cat, uid)
            observed.setdefault("states", {})[f"{point}:{index}"] = state

    # the final resume: no fault
    t0 = time.monotonic()
    proc = subprocess.run(
        _cli("campaign", "resume", uid, "--max-trials", str(n_trials), *common),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        env=clean_env(TILED_API_KEY=server.api_key),
    )
    figures.recovery_s = time.monotonic() - t0
    resume_s.append(figures.recovery_s)
    checks["final resume succeeded"] = proc.returncode == 0
    if proc.returncode != 0:
        figures.detail = f"final resume ended {proc.returncode}: {proc.stderr[-2000:]}"
        return figures
    observed["summary"] = json.loads(proc.stdout.strip().splitlines()[-1])
    observed["campaign_uid"] = uid
    observed["resume_s"] = resume_s

    with _catalog(server, data_dir) as cat:
        _, trials, _, _ = rebuild_trials(cat, uid)
        runs = _trial_runs(cat, uid)
        by_index = {t.trial_index: t for t in trials}
        observed["trials"] = [t.as_dict() for t in trials]  # as JSON, like the figures
        observed["runs"] = [
            {"uid": r.start["uid"], "trial_index": r.start["trial_index"], "stop": (_stop(r) or {}).get("exit_status")}
            for r in runs
        ]
        figures.trials_lost = sum(1 for i in range(n_trials) if i not in by_index)
        figures.trials_doubled = _doubled(runs)
        # every run that got its stop document is still there, and its outcome is the one used
        present = {r.start["uid"]: r for r in runs}
        lost = 0
        for run_uid, index in ended_runs.items():
            run = present.get(run_uid)
            t = by_index.get(index)
            if run is None or t is None or t.status != "completed":
                lost += 1
                continue
            analysis = _analysis(run)
            if not math.isclose(t.outcome.get("threshold_uJ_cm2", math.nan), analysis["threshold_uJ_cm2"]):
                lost += 1
        figures.documents_lost = lost
        for point, index in kills:
            t = by_index.get(index)
            status, reason = (t.status, t.reason) if t is not None else ("", "")
            if point == "proposed":
                pending = observed["states"][f"proposed:{index}"]["pending_params"].get(index)
                replayed = [r for r in runs if r.start["trial_index"] == index]
                checks[f"proposed:{index} replayed the stored proposal under its index"] = (
                    len(replayed) == 1 and replayed[0].start["proposal"]["params"] == pending
                )
            elif point == "measuring":
                checks[f"measuring:{index} recorded failed with its reason"] = (
                    status == "failed" and "interrupted" in reason
                )
            else:
                checks[f"{point}:{index} completed from its run, not re-measured"] = status == "completed"
        # item 2: the interrupted trial never reaches the GP
        stored_cfg = rebuild_trials(cat, uid)[0]
        prepared = prepare_campaign(cat, resume_uid=uid, fault_hook=lambda *a: None, bench=_twin_for(stored_cfg))
        prepared.plan.close()
        opt = prepared.optimizer
        data = opt.training_data() if hasattr(opt, "training_data") else None
        completed = [t for t in trials if t.status == "completed"]
        failed = [t for t in trials if t.status == "failed"]
        if data is not None:
            X = data["X"].tolist()
            observed["gp_rows"] = len(X)
            checks["the GP trains on the completed trials only"] = len(X) == len(completed) and all(
                opt._unit(t.params) not in X for t in failed
            )
    figures.detail = (
        f"{n_trials} trials, kills at {', '.join(f'{p}:{i}' for p, i in kills)}; "
        f"resume wall times {', '.join(f'{s:.1f}' for s in resume_s)} s"
    )
    return figures


def _recorded_outcomes(cat, campaign_uid: str) -> set[int]:
    from tiled.queries import Key

    out: set[int] = set()
    for rec in cat.client.search(Key("start.campaign_uid") == campaign_uid).values():
        if rec.start.get("plan_name") == "campaign":
            out.update(int(i) for i in _columns(rec, "outcomes").get("trial_index", []))
    return out


def _readers(workdir: Path, server, data_dir: Path, campaign_uid: str, run_uid: str) -> dict:
    """``campaign status``, ``replay`` of the run without a stop document, ``report``: none may crash.

    ``replay`` runs as a subprocess (its stderr must be one line, no traceback); ``campaign
    status`` and ``report`` run the same CLI in this process (typer's runner, which reports
    any exception), to spare two interpreter start-ups.
    """
    from typer.testing import CliRunner

    from gainloop.cli import app

    env = clean_env(TILED_API_KEY=server.api_key)
    common = ["--catalog", server.url, "--data-dir", str(data_dir), "--api-key", server.api_key]
    out: dict = {"checks": {}}
    runner = CliRunner()
    status = runner.invoke(app, ["campaign", "status", campaign_uid, *common, "--json"])
    out["status"] = {"returncode": status.exit_code, "exception": repr(status.exception)}
    ok = status.exit_code == 0 and status.exception is None
    if ok:
        s = json.loads(status.stdout.strip().splitlines()[-1])
        out["status"]["json"] = s
        ok = s["failures"] >= 1 and s["campaign_uid"] == campaign_uid
    out["checks"]["campaign status counts the interrupted trial as failed"] = ok
    replay = subprocess.run(
        _cli("replay", run_uid, "--catalog", server.url, "--data-dir", str(data_dir)),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        env=env,
    )
    out["replay"] = {"returncode": replay.returncode, "stderr": replay.stderr[-2000:]}
    out["checks"]["replay of the run says what is wrong in one line"] = replay.returncode not in (
        0,
        1,
    ) and _one_line_error(replay.stderr)
    report_dir = workdir / "report"
    report = runner.invoke(app, ["report", campaign_uid, "--out", str(report_dir), *common])
    out["report"] = {"returncode": report.exit_code, "exception": repr(report.exception)}
    out["checks"]["report is written"] = (
        report.exit_code == 0 and report.exception is None and (report_dir / "index.html").is_file()
    )
    return out


# ------------------------------------------------------------------ item 8 (in-process)
def _config(seed: int, max_trials: int, strategy: str = "nested"):
    from gainloop.campaign import CampaignConfig

    return CampaignConfig(
        strategy=strategy, seed=seed, budget_lab_h=None, max_trials=max_trials, twin_seed=seed, scan_args=SMALL_SCAN
    )


def _run_engine(cat):
    from bluesky import RunEngine

    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(cat.campaign_writer())
    return RE


def _pause_at(point: str, trial_index: int, *, defer: bool):
    """A fault hook whose plan message pauses the RunEngine at ``point`` of ``trial_index``."""
    from bluesky import Msg

    def hook(p: str, index: int):
        if (p, index) == (point, trial_index):
            return iter([Msg("pause", None, defer=defer)])
        return None

    return hook


def _trial_data(cat, campaign_uid: str) -> dict[int, dict]:
    """Per trial index: params, the primary stream's columns (readings) and the analysis."""
    out = {}
    for r in _trial_runs(cat, campaign_uid):
        cols = _columns(r, "primary")
        out[r.start["trial_index"]] = {
            "params": r.start["proposal"]["params"],
            "primary": {k: v for k, v in cols.items() if not k.endswith("timestamp")},
            "analysis": _analysis(r),
            "stop": (_stop(r) or {}).get("exit_status"),
        }
    return out


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN (readings of a saturated or dark event)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "tolist") and hasattr(b, "tolist"):
        return _same(a.tolist(), b.tolist())
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def scenario_pause_resume(workdir: Path, env: FaultEnv, *, seed: int = 4, trials: int = 2) -> CampaignFigures:
    """A deferred pause requested mid-measurement of trial 0, then ``RE.resume()``: same data as uninterrupted.

    "Same data": for every trial index, the same proposal, the same primary-stream readings
    (every column but the timestamps, e.g. fluence readbacks and spectra, equal bit for bit
    on the twin's fixed seed) and the same analysis. A deferred pause is taken at the next
    checkpoint (inside the scan, before an acquisition), so nothing is re-taken. A hard
    pause mid-acquisition would rewind to that checkpoint and re-take the reading
    (bluesky's rewind), drawing new noise: not "the same data", and not tested here.
    """
    from bluesky.utils import RunEngineInterrupted

    from gainloop.campaign import prepare_campaign

    server = env.tiled_server()
    figures = CampaignFigures(fault="pause / resume")
    checks, observed = figures.checks, figures.observed
    with _catalog(server, workdir / "data") as cat:
        ref = prepare_campaign(
            cat, _config(seed, trials), fault_hook=lambda *a: None, bench=_twin_for(_config(seed, trials))
        )
        result = _run_engine(cat)(ref.plan)
        checks["uninterrupted campaign succeeded"] = result.exit_status == "success"

        RE = _run_engine(cat)
        paused = prepare_campaign(
            cat,
            _config(seed, trials),
            fault_hook=_pause_at("measuring", 0, defer=True),
            bench=_twin_for(_config(seed, trials)),
        )
        try:
            RE(paused.plan)
            checks["the RunEngine paused"] = False
            return figures
        except RunEngineInterrupted:
            observed["state_when_paused"] = RE.state
            at_pause = _trial_data(cat, paused.campaign_uid)
            observed["trials_when_paused"] = {i: d["stop"] for i, d in at_pause.items()}
        checks["the RunEngine paused"] = observed["state_when_paused"] == "paused"
        # the next checkpoint after the request is inside trial 0's scan (before an acquisition)
        checks["paused mid-measurement (trial 0's run open, trial 1 not begun)"] = observed["trials_when_paused"] == {
            0: None
        }
        t0 = time.monotonic()
        result = RE.resume()
        figures.recovery_s = time.monotonic() - t0
        checks["resumed campaign succeeded"] = result.exit_status == "success"
        checks["RunEngine idle at the end"] = RE.state == "idle"
        a, b = _trial_data(cat, ref.campaign_uid), _trial_data(cat, paused.campaign_uid)
        observed["uninterrupted"], observed["paused"] = a, b
        figures.trials_lost = sum(1 for i in a if i not in b)
        figures.trials_doubled = _doubled(_trial_runs(cat, paused.campaign_uid))
        checks["same trial indices"] = sorted(a) == sorted(b) == list(range(trials))
        checks["same proposals"] = all(_same(a[i]["params"], b.get(i, {}).get("params")) for i in a)
        checks["same readings"] = all(_same(a[i]["primary"], b.get(i, {}).get("primary")) for i in a)
        checks["same analysis"] = all(_same(a[i]["analysis"], b.get(i, {}).get("analysis")) for i in a)
        figures.documents_lost = sum(
            len(a[i]["primary"].get("pump_fluence", [])) - len(b.get(i, {}).get("primary", {}).get("pump_fluence", []))
            for i in a
        )
    figures.detail = f"{trials} trials, deferred pause during trial 0, resumed"
    return figures


def scenario_abort(workdir: Path, env: FaultEnv, *, seed: int = 5, trials: int = 2) -> CampaignFigures:
    """``RE.abort()`` while trial 1 is measuring; the campaign resumed to ``trials + 1`` trials."""
    from bluesky.utils import RunEngineInterrupted

    from gainloop.campaign import prepare_campaign, rebuild_trials, run_campaign

    server = env.tiled_server()
    figures = CampaignFigures(fault="abort")
    checks, observed = figures.checks, figures.observed
    aborted = trials - 1
    with _catalog(server, workdir / "data") as cat:
        RE = _run_engine(cat)
        prepared = prepare_campaign(
            cat,
            _config(seed, trials),
            fault_hook=_pause_at("measuring", aborted, defer=False),
            bench=_twin_for(_config(seed, trials)),
        )
        uid = prepared.campaign_uid
        observed["campaign_uid"] = uid
        try:
            RE(prepared.plan)
            checks["the RunEngine paused mid-trial"] = False
            return figures
        except RunEngineInterrupted:
            checks["the RunEngine paused mid-trial"] = RE.state == "paused"
        result = RE.abort(reason="operator abort")
        observed["abort_result"] = {"exit_status": result.exit_status, "reason": result.reason}
        checks["RunEngine idle after abort"] = RE.state == "idle"
        runs = {r.start["trial_index"]: r for r in _trial_runs(cat, uid)}
        record = [r for r in _runs_of(cat, uid) if r.start.get("plan_name") == "campaign"]
        observed["aborted_run_stop"] = _stop(runs[aborted]) if aborted in runs else None
        observed["record_stop"] = _stop(record[0]) if record else None
        checks["the aborted trial's run ended abort"] = (observed["aborted_run_stop"] or {}).get(
            "exit_status"
        ) == "abort"
        checks["the campaign record ended abort"] = (observed["record_stop"] or {}).get("exit_status") == "abort"
        t0 = time.monotonic()
        summary = run_campaign(cat, resume_uid=uid, budgets={"max_trials": trials + 1})
        figures.recovery_s = time.monotonic() - t0
        _, got, _, _ = rebuild_trials(cat, uid)
        observed["trials"] = [t.as_dict() for t in got]  # as JSON, like the figures
        observed["summary"] = summary
        by_index = {t.trial_index: t for t in got}
        t = by_index.get(aborted)
        checks["the aborted trial is abandoned with its reason"] = (
            t is not None and t.status == "abandoned" and "abort" in t.reason
        )
        runs_after = _trial_runs(cat, uid)
        checks["the aborted index is measured once only"] = [r.start["trial_index"] for r in runs_after].count(
            aborted
        ) == 1
        proposed_after = []
        for rec in _runs_of(cat, uid):
            if rec.start.get("plan_name") == "campaign" and rec.start.get("resumed_at_trial", 0) > 0:
                proposed_after += [int(i) for i in _columns(rec, "proposals").get("trial_index", [])]
        observed["proposed_after_resume"] = proposed_after
        checks["the aborted index is never proposed again"] = aborted not in proposed_after and bool(proposed_after)
        aborted_params = t.params if t is not None else None
        observed["aborted_params_proposed_again"] = [
            u.trial_index for u in got if u.trial_index != aborted and u.params == aborted_params
        ]
        checks["the aborted conditions are never proposed again"] = not observed["aborted_params_proposed_again"]
        figures.trials_lost = sum(1 for i in range(trials + 1) if i not in by_index)
        figures.trials_doubled = _doubled(runs_after)
    figures.detail = f"abort during trial {aborted}, resumed to {trials + 1} trials"
    return figures


# ------------------------------------------------------------------ item 8: three SIGINTs (subprocess)
def scenario_three_sigints(
    workdir: Path,
    env: FaultEnv,
    *,
    seed: int = 3,
    stall_s: float = 120.0,
    gap_s: float = 0.3,
    keep_pressing_s: float | None = None,
) -> CampaignFigures:
    """Three SIGINTs (``gap_s`` apart) to ``gainloop campaign run`` while trial 0 is measuring.

    ``$GAINLOOP_FAULT_INJECT`` stalls the measurement (``stall=...@measuring:0``, a RunEngine
    sleep that a pause cuts short) so that the signals land mid-run. ``keep_pressing_s``:
    after the three, one more SIGINT every that many seconds until the process has exited
    (a user holding Ctrl+C down: signals land in the abort and in the interpreter's shutdown).
    """
    from gainloop.campaign import FAULT_ENV

    server = env.tiled_server()
    data_dir = workdir / "data"
    common = ["--catalog", server.url, "--data-dir", str(data_dir), "--json"]
    figures = CampaignFigures(fault="three SIGINTs")
    checks, observed = figures.checks, figures.observed
    with _catalog(server, data_dir) as cat:
        before = _campaign_uids(cat)
        proc = subprocess.Popen(
            _cli("campaign", "run", "--seed", str(seed), "--max-trials", "2", *common),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(TILED_API_KEY=server.api_key, **{FAULT_ENV: f"stall={stall_s:g}@measuring:0"}),
        )
        try:
            uid, run = None, None
            deadline = time.monotonic() + PROCESS_TIMEOUT_S
            while run is None and time.monotonic() < deadline and proc.poll() is None:
                new = _campaign_uids(cat) - before
                if new:
                    uid = next(iter(new))
                    runs = [r for r in _trial_runs(cat, uid) if r.start["trial_index"] == 0]
                    run = runs[0] if runs and "primary" in runs[0] else None
                if run is None:
                    time.sleep(0.2)
            checks["trial 0 was measuring when the signals came"] = run is not None and _stop(run) is None
            if run is None:
                figures.detail = f"trial 0 never started: {proc.stderr.read() if proc.poll() is not None else ''}"
                return figures
            t0 = time.monotonic()
            for _ in range(3):
                proc.send_signal(signal.SIGINT)
                time.sleep(gap_s)
            pressed = 3
            while keep_pressing_s is not None and proc.poll() is None and time.monotonic() - t0 < PROCESS_TIMEOUT_S:
                proc.send_signal(signal.SIGINT)
                pressed += 1
                time.sleep(keep_pressing_s)
            observed["sigints_sent"] = pressed
            out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
            figures.recovery_s = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        observed.update(returncode=proc.returncode, stdout=out, stderr=err, campaign_uid=uid)
        checks["exit status 130"] = proc.returncode == 130
        err_lines = [ln for ln in err.strip().splitlines() if ln.startswith("interrupted:")]
        checks["one line says it was interrupted and how to resume"] = (
            len(err_lines) == 1 and f"gainloop campaign resume {uid}" in err_lines[0] and "Traceback" not in err
        )
        checks["nothing but JSON on stdout (bluesky's notices on stderr)"] = out.strip() == ""
        runs = _runs_of(cat, uid)
        stops = {
            ("record" if r.start.get("plan_name") == "campaign" else r.start["trial_index"]): (_stop(r) or {}).get(
                "exit_status"
            )
            for r in runs
        }
        observed["stops"] = stops
        checks["every open run got its stop document, exit_status abort"] = stops == {"record": "abort", 0: "abort"}
        figures.documents_lost = sum(1 for v in stops.values() if v is None)
    figures.detail = f"{observed['sigints_sent']} SIGINTs during trial 0"
    return figures


# ------------------------------------------------------------------ security: fluence on resume
def _tampered_record(cat, cfg_dict: dict, proposals: list[dict]) -> str:
    """Write a campaign record (start document with ``cfg_dict``, ``proposals`` events) as a campaign
    would, left without outcomes (a process killed after proposing); return its campaign uid."""
    import uuid

    import bluesky.plan_stubs as bps

    from plans.campaign import _Recorder

    uid = str(uuid.uuid4())

    def plan():
        yield from bps.open_run(md={"plan_name": "campaign", "campaign_uid": uid, "config": cfg_dict})
        rec = _Recorder()
        for p in proposals:
            yield from rec.record(
                "proposals",
                {
                    "trial_index": p["trial_index"],
                    "params": p["params"],
                    "predicted": p.get("predicted", {}),
                    "expected_cost_s": p.get("expected_cost_s", 0.0),
                    "acquisition_value": p.get("acquisition_value", math.nan),
                    "replayed": False,
                },
            )
        yield from bps.close_run()

    _run_engine(cat)(plan())
    return uid


def scenario_resume_fluence(workdir: Path, env: FaultEnv, *, seed: int = 6) -> CampaignFigures:
    """Stored configs and proposals above the bench's fluence limit are refused on resume; a valid one is replayed."""
    from gainloop.campaign import CampaignError, prepare_campaign, rebuild_trials, run_campaign

    server = env.tiled_server()
    figures = CampaignFigures(fault="resume above the fluence limit")
    checks, observed = figures.checks, figures.observed
    with _catalog(server, workdir / "data") as cat:
        nested_cfg = _config(seed, 1)
        probe = prepare_campaign(cat, nested_cfg, fault_hook=lambda *a: None, bench=_twin_for(nested_cfg))
        probe.plan.close()
        limit = probe.bench.config.bench.fluence_limit_uJ_cm2
        good = probe.optimizer.suggest()[0].as_dict()
        over = {**good, "params": {**good["params"], "fluence_uJ_cm2": 10.0 * limit}}
        nested = nested_cfg.as_dict()
        within = {**good, "params": {**good["params"], "fluence_uJ_cm2": 0.5 * limit}}
        cases = {
            "stored config fluence_max above the limit": ({**nested, "fluence_max_uJ_cm2": 10.0 * limit}, []),
            "stored scan_args fluence above the limit": (
                {**nested, "scan_args": {**SMALL_SCAN, "fluence_max_uJ_cm2": 10.0 * limit}},
                [],
            ),
            "stored proposal carrying a fluence above the limit": (nested, [over]),
            "stored nested proposal carrying a fluence": (nested, [within]),
        }
        observed["limit_uJ_cm2"] = limit
        observed["refusals"] = {}
        for name, (cfg_dict, props) in cases.items():
            uid = _tampered_record(cat, cfg_dict, props)
            try:
                run_campaign(cat, resume_uid=uid)
                message = None
            except CampaignError as exc:
                message = str(exc)
            measured = _trial_runs(cat, uid)
            observed["refusals"][name] = {"message": message, "runs": len(measured)}
            checks[f"{name}: refused, nothing measured"] = message is not None and not measured
        # the control: a stored proposal within the limit is replayed as stored
        uid = _tampered_record(cat, nested, [good])
        run_campaign(cat, resume_uid=uid)
        runs = _trial_runs(cat, uid)
        _, trials, _, _ = rebuild_trials(cat, uid)
        observed["replayed"] = {
            "runs": [r.start["proposal"]["params"] for r in runs],
            "trials": [t.as_dict() for t in trials],
        }
        checks["a stored proposal within the limit is measured as stored"] = (
            len(runs) == 1 and runs[0].start["proposal"]["params"] == good["params"] and trials[0].trial_index == 0
        )
    figures.detail = f"{len(cases)} tampered records refused; bench limit {limit:g} uJ/cm^2"
    return figures


SCENARIOS = {
    "campaign_sigkill": scenario_sigkill,
    "run_without_stop": lambda workdir, env, **o: scenario_sigkill(workdir, env, points=("measuring",), **o),
    "pause_resume": scenario_pause_resume,
    "abort": scenario_abort,
    "three_sigints": scenario_three_sigints,
    "resume_fluence": scenario_resume_fluence,
}
