"""Campaigns as the service runs them: bench + optimiser + catalog, started, resumed and summarised.

``CampaignConfig`` is everything a campaign needs to be rebuilt: strategy, seed,
budgets, search space, films, scan settings and the twin's seed. It is stored in
the start document of the campaign's record run, so ``resume`` needs only the
catalog and the campaign uid:

* the config comes from the first record run's start document;
* the trials come from the measurement runs carrying the ``campaign_uid``, each
  judged by its own stop document and analysis stream (a run without a stop
  document was interrupted: the trial is recorded failed with that reason, and a
  trial index is never measured twice once a run of it completed), and from the
  record runs' ``outcomes`` streams for trials that failed before their run opened;
* re-ingesting them into a fresh optimiser of the same seed gives exactly the
  proposals the uninterrupted campaign would have made;
* on the twin, the films made so far and the lab clock are restored.

What a resume does with each kind of interrupted trial (nothing is lost, nothing is
measured twice):

* proposed, never started (recorded in a ``proposals`` stream, no run, no outcome): the
  stored proposal is *replayed*: measured first, under its own trial index. It is
  checked like any new proposal (inside the search space, whose fluence range lies
  within the bench's limit); a stored proposal that fails the check (e.g. a fluence
  above the limit) stops the resume with ``CampaignError`` before anything is sent;
* its run has no stop document (process killed mid-measurement): ``failed``, reason
  ``interrupted: the run has no stop document``; never fed to a model as a number;
* its run ended ``abort`` (an operator's abort, Ctrl+C): ``abandoned`` with the run's
  reason; its index stays spent and the optimiser's initial design moves past its
  conditions (they are not proposed again);
* its run ended ``success`` but its outcome was never recorded (killed after the stop
  document): ``completed`` from the run's own ``analysis`` stream, never re-measured.

The stored config is checked again on resume: its fluence range (and any fluence in
its ``scan_args``) must lie within the bench's configured limit, else ``CampaignError``.

Interruptions: ``run_campaign`` runs under bluesky's SIGINT handling. The first Ctrl+C
asks for a deferred pause (taken at the checkpoint before the next trial, so every
finished trial is recorded), a second one pauses at once. The paused RunEngine is then
aborted: every open run gets its stop document (``exit_status`` ``"abort"``), the
RunEngine ends idle and ``CampaignInterrupted`` says how to resume. Further Ctrl+C
during that clean-up are ignored.

Fault injection (tests and the fault benchmark only; nothing happens when unset): the
environment variable ``GAINLOOP_FAULT_INJECT`` holds comma-separated
``ACTION@POINT:TRIAL`` entries, ``POINT`` one of ``plans.campaign.FAULT_POINTS``
(``proposed``, ``measuring``, ``measured``, ``recording``) and ``ACTION`` ``sigkill``
(the process kills itself with SIGKILL there) or ``stall=SECONDS`` (the plan sleeps
there, in the RunEngine, so that a pause or a signal can land mid-trial). E.g.
``GAINLOOP_FAULT_INJECT="sigkill@measured:1"``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import uuid
from dataclasses import asdict, dataclass, field

from gainloop.errors import GainloopError

__all__ = [
    "FAULT_ENV",
    "CampaignConfig",
    "CampaignError",
    "CampaignInterrupted",
    "PreparedCampaign",
    "campaign_status",
    "prepare_campaign",
    "rebuild_trials",
    "run_campaign",
]

#: Environment variable of the fault-injection hook (see the module doc).
FAULT_ENV = "GAINLOOP_FAULT_INJECT"


class CampaignError(GainloopError):
    """A campaign cannot be started or resumed (unknown uid, bad config...)."""


class CampaignInterrupted(CampaignError):
    """The campaign was interrupted (Ctrl+C); its open runs were closed with exit_status "abort"."""


@dataclass
class CampaignConfig:
    """What defines a campaign (units in the names)."""

    strategy: str = "nested"
    seed: int = 0
    budget_lab_h: float | None = 24.0
    max_trials: int | None = None
    target_threshold_uJ_cm2: float | None = None
    fluence_min_uJ_cm2: float = 10.0
    fluence_max_uJ_cm2: float | None = None  # default: the bench's fluence limit
    stripe_length_min_um: float = 100.0
    stripe_length_max_um: float = 4000.0
    doping_min: float = 0.0
    doping_max: float = 7.9
    films: list[str] | None = None  # library films the campaign may use (default: twin's same-material films)
    can_make_films: bool = True
    batch_size: int = 1
    scan_args: dict = field(default_factory=dict)
    bench_file: str | None = None  # None: the twin
    twin_seed: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CampaignConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise CampaignError(f"unknown campaign settings {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**d)


def _bench(cfg: CampaignConfig):
    if cfg.bench_file is not None:
        from devices import connect_bench, load_bench

        return connect_bench(load_bench(cfg.bench_file))
    from sim.devices import default_twin_bench_path, twin_bench_devices

    return twin_bench_devices(default_twin_bench_path(), seed=cfg.twin_seed)


def _films(cfg: CampaignConfig, bench) -> list[str]:
    if cfg.films is not None:
        for f in cfg.films:
            bench.config.library_entry(f)
        return list(cfg.films)
    entries = [e for e in bench.config.stage.library if e.kind == "film"]
    if bench.engine is not None:  # films of the material new films are made of
        entries = [
            e for e in entries if (e.preset or bench.config.twin.new_film_preset) == bench.config.twin.new_film_preset
        ]
    return [e.id for e in entries]


def _optimizer(cfg: CampaignConfig, bench, films: list[str]):
    from optimizer import LabState, SearchSpace, make_optimizer

    f_hi = _fluence_max(cfg, bench)
    dopings = [bench.config.library_entry(f).doping for f in films]
    doping = (cfg.doping_min, cfg.doping_max) if cfg.can_make_films else sorted(set(dopings))
    space = SearchSpace(
        fluence_uJ_cm2=(cfg.fluence_min_uJ_cm2, f_hi),
        stripe_length_um=(cfg.stripe_length_min_um, cfg.stripe_length_max_um),
        doping=doping,
        fluence_limit_uJ_cm2=f_hi,
    )
    return make_optimizer(
        cfg.strategy,
        space,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        lab_state=LabState(current_doping=dopings[0] if dopings else None, films=tuple(dopings)),
    )


def _fluence_max(cfg: CampaignConfig, bench) -> float:
    """The campaign's highest fluence (uJ/cm^2): the config's, which may not exceed the bench's limit."""
    limit = bench.config.bench.fluence_limit_uJ_cm2
    if cfg.fluence_max_uJ_cm2 is None:
        return limit
    if not cfg.fluence_max_uJ_cm2 <= limit:
        raise CampaignError(
            f"fluence_max_uJ_cm2 = {cfg.fluence_max_uJ_cm2:g} exceeds the bench's fluence limit {limit:g} uJ/cm^2; "
            f"allowed: up to {limit:g}"
        )
    return cfg.fluence_max_uJ_cm2


def _lab_clock(bench):
    import time

    if bench.engine is not None:
        return lambda: bench.engine.lab_time_s
    return time.time


# ------------------------------------------------------------------ reading a campaign back
def _search(catalog, **equals):
    from tiled.queries import Key

    results = catalog.client
    for key, value in equals.items():
        results = results.search(Key(f"start.{key}") == value)
    return results


def _records(catalog, campaign_uid: str):
    runs = _search(catalog, campaign_uid=campaign_uid, plan_name="campaign")
    return sorted((run for run in runs.values()), key=lambda r: r.start["time"])


def _analysis(run) -> dict:
    from gainloop.replay import stream_columns

    if "analysis" not in run:
        return {}
    return {k: float(v[-1]) for k, v in stream_columns(run["analysis"]).items()}


@dataclass
class _Rebuilt:
    cfg: CampaignConfig
    trials: list[dict]  # by trial index
    used_s: float
    films: list[dict]
    pending: list[dict]  # stored proposals (as_dict form) with no run and no outcome, by trial index


def _record_reason(records, t: float) -> str:
    """The stop reason of the campaign record that was open at time ``t`` (e.g. the RunEngine's abort reason)."""
    open_then = [r for r in records if r.start["time"] <= t]
    stop = open_then[-1].metadata.get("stop") if open_then else None
    return str((stop or {}).get("reason") or "")


def _rebuild(catalog, campaign_uid: str) -> _Rebuilt:
    from gainloop.replay import stream_columns

    records = _records(catalog, campaign_uid)
    if not records:
        raise CampaignError(f"no campaign {campaign_uid!r} in the catalog at {catalog.location}")
    cfg = CampaignConfig.from_dict(records[0].start["config"])
    results: dict[int, dict] = {}
    proposals: dict[int, dict] = {}
    used_s = 0.0
    for rec in records:
        if "proposals" in rec:
            cols = stream_columns(rec["proposals"])
            for k in range(len(cols.get("trial_index", ()))):  # none: a record cut before its events
                idx = int(cols["trial_index"][k])
                proposals[idx] = {
                    "trial_index": idx,
                    "params": json.loads(cols["params"][k]),
                    "predicted": json.loads(cols["predicted"][k]),
                    "expected_cost_s": float(cols["expected_cost_s"][k]),
                    "acquisition_value": float(cols["acquisition_value"][k]),
                }
        if "outcomes" not in rec:
            continue
        cols = stream_columns(rec["outcomes"])
        for k in range(len(cols.get("trial_index", ()))):
            idx = int(cols["trial_index"][k])
            results[idx] = {
                "trial_index": idx,
                "params": json.loads(cols["params"][k]),
                "status": str(cols["status"][k]),
                "outcome": json.loads(cols["outcome"][k]),
                "reason": str(cols["reason"][k]),
                "lab_time_s": float(cols["trial_lab_time_s"][k]),
                "run_uid": str(cols["run_uid"][k]),
            }
            used_s = max(used_s, float(cols["lab_time_used_s"][k]))
    films: list[dict] = []
    runs = sorted(
        (r for r in _search(catalog, campaign_uid=campaign_uid).values() if r.start.get("plan_name") != "campaign"),
        key=lambda r: r.start["time"],
    )
    measured: set[int] = set()
    for run in runs:
        start = run.start
        if "trial_index" not in start:
            continue  # a run tagged with the campaign that is not one of its trials
        idx = int(start["trial_index"])
        measured.add(idx)
        if start.get("new_film"):
            films.append({"id": start["sample_id"], "doping": float(start["doping"])})
        if idx in results:
            continue  # the campaign recorded this trial's outcome (completed, infeasible, failed): it stands
        stop = run.metadata.get("stop")
        params = start["proposal"]["params"]
        lab_s = float(start.get("trial_lab_time_s", 0.0) or 0.0)
        if stop is None:
            res = {"status": "failed", "outcome": {}, "reason": "interrupted: the run has no stop document"}
        elif stop.get("exit_status") == "abort":
            why = stop.get("reason") or _record_reason(records, start["time"]) or "no reason given"
            res = {"status": "abandoned", "outcome": {}, "reason": f"run ended abort: {why}"}
        elif stop.get("exit_status") != "success":
            res = {
                "status": "failed",
                "outcome": {},
                "reason": f"run ended {stop.get('exit_status')}: {stop.get('reason')}",
            }
        else:
            res = {"status": "completed", "outcome": _analysis(run), "reason": ""}
        results[idx] = {"trial_index": idx, "params": params, "lab_time_s": lab_s, "run_uid": start["uid"], **res}
        used_s = max(used_s, float(start.get("lab_time_used_s", 0.0) or 0.0))
    pending = [proposals[k] for k in sorted(proposals) if k not in results and k not in measured]
    return _Rebuilt(cfg, [results[k] for k in sorted(results)], used_s, films, pending)


def rebuild_trials(catalog, campaign_uid: str) -> tuple[CampaignConfig, list[dict], float, list[dict]]:
    """(config, trial results as dicts by trial index, lab seconds used, films made) from the catalog alone.

    Each result has ``trial_index``, ``params``, ``status``, ``outcome``, ``reason``,
    ``lab_time_s`` and ``run_uid`` (its measurement run's uid, "" if none).
    """
    rb = _rebuild(catalog, campaign_uid)
    return rb.cfg, rb.trials, rb.used_s, rb.films


def _fault_hook():
    """The fault-injection hook from ``$GAINLOOP_FAULT_INJECT`` (None when unset; see the module doc)."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    from plans.campaign import FAULT_POINTS

    actions: dict[tuple[str, int], str] = {}
    for entry in spec.split(","):
        action, _, where = entry.strip().partition("@")
        point, _, index = where.partition(":")
        ok = point in FAULT_POINTS and index.isdigit()
        if action.startswith("stall="):
            try:
                ok = ok and float(action[len("stall=") :]) >= 0
            except ValueError:
                ok = False
        elif action != "sigkill":
            ok = False
        if not ok:
            raise CampaignError(
                f"{FAULT_ENV}: bad entry {entry!r}; allowed: ACTION@POINT:TRIAL with ACTION sigkill or "
                f"stall=SECONDS, POINT one of {', '.join(FAULT_POINTS)}, TRIAL a trial index"
            )
        actions[(point, int(index))] = action

    def hook(point: str, trial_index: int):
        action = actions.get((point, trial_index))
        if action is None:
            return None
        if action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        import bluesky.plan_stubs as bps

        return bps.sleep(float(action[len("stall=") :]))

    return hook


def _check_fluence_settings(cfg: CampaignConfig, bench, pending: list[dict], joint: bool, what: str) -> float:
    """The campaign's highest fluence, after checking what it would send (config, scan_args, stored proposals).

    ``what`` names the campaign in the errors (e.g. "campaign UID" on resume)."""
    limit = bench.config.bench.fluence_limit_uJ_cm2
    try:
        f_hi = _fluence_max(cfg, bench)
    except CampaignError as exc:
        raise CampaignError(f"{what}: its config is refused: {exc}; nothing was sent") from None
    for key in ("fluence_min_uJ_cm2", "fluence_max_uJ_cm2"):
        value = cfg.scan_args.get(key)
        if value is None:
            continue
        try:
            ok = math.isfinite(float(value)) and 0 < float(value) <= f_hi
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CampaignError(
                f"{what}: its config's scan_args {key} = {value!r} is outside the campaign's "
                f"fluence range; allowed: above 0, up to {f_hi:g} uJ/cm^2 (bench limit {limit:g}); nothing was sent"
            )
    for p in pending:
        params = p.get("params") or {}
        if "fluence_uJ_cm2" in params and not joint:
            raise CampaignError(
                f"{what}: stored proposal of trial {p['trial_index']} carries a fluence "
                f"({params['fluence_uJ_cm2']!r} uJ/cm^2) but its strategy {cfg.strategy!r} scans the fluence itself; "
                "refused, nothing was sent to the bench"
            )
    return f_hi


@dataclass
class PreparedCampaign:
    """A campaign ready to run: its plan (for any RunEngine), optimiser, bench and uid."""

    campaign_uid: str
    cfg: CampaignConfig
    plan: object
    optimizer: object
    bench: object
    history: list[dict]
    replayed: list[dict]


def _upload_pending_backup(catalog) -> None:
    """Write runs the writer kept in the backup (the catalog was away) before a campaign is rebuilt.

    Without them a resume would count a trial whose run went only to the backup as
    lost, and one cut off mid-write as failed. Runs still open stay in the backup.
    """
    if not catalog.pending_backup():
        return
    from gainloop.backup import upload_backup

    written = [r for r in upload_backup(catalog) if r.action in ("uploaded", "replaced")]
    if written:
        logging.getLogger(__name__).warning(
            "wrote %d run(s) from the backup %s into the catalog before resuming", len(written), catalog.backup_dir
        )


def prepare_campaign(
    catalog,
    cfg: CampaignConfig | None = None,
    *,
    resume_uid: str | None = None,
    budgets: dict | None = None,
    progress=None,
    fault_hook=None,
) -> PreparedCampaign:
    """Everything ``run_campaign`` runs, without running it: the campaign plan on a fresh bench and optimiser.

    ``fault_hook``: see ``plans.campaign`` (default: from ``$GAINLOOP_FAULT_INJECT``, None when unset).
    """
    from devices import LibraryEntry
    from gainloop.errors import ParameterError
    from plans.campaign import campaign

    history: list[dict] = []
    pending: list[dict] = []
    used_s = 0.0
    films_made: list[dict] = []
    if resume_uid is not None:
        _upload_pending_backup(catalog)
        rb = _rebuild(catalog, resume_uid)
        cfg, history, used_s, films_made, pending = rb.cfg, rb.trials, rb.used_s, rb.films, rb.pending
        for key, value in (budgets or {}).items():
            if key not in ("budget_lab_h", "max_trials", "target_threshold_uJ_cm2"):
                raise CampaignError(
                    f"cannot change {key!r} on resume; budgets allowed: budget_lab_h, max_trials, target"
                )
            if value is not None:
                setattr(cfg, key, value)
        campaign_uid = resume_uid
    else:
        if cfg is None:
            raise CampaignError("a new campaign needs a config")
        campaign_uid = str(uuid.uuid4())
    bench = _bench(cfg)
    films = _films(cfg, bench)
    initial_films = list(films)  # the optimiser starts from these; the history replays the films made since
    for f in films_made:  # films made before the interruption are on the stage
        entry = LibraryEntry(id=f["id"], kind="film", doping=f["doping"], preset=None)
        bench.stage.library[f["id"]] = entry
        if bench.engine is not None:
            bench.engine.library[f["id"]] = entry
        films.append(f["id"])
    if bench.engine is not None:
        bench.engine.lab_time_s = used_s
    what = f"campaign {campaign_uid}" if resume_uid is not None else "the new campaign"
    f_hi = _check_fluence_settings(cfg, bench, pending, cfg.strategy == "joint", what)
    opt = _optimizer(cfg, bench, initial_films)
    if history:
        opt.ingest(history)
    for p in pending:  # recorded, never measured: measured first, each checked against the search space
        try:
            opt.mark_pending([{**p, "strategy": opt.strategy}])
        except ParameterError as exc:
            raise CampaignError(
                f"campaign {campaign_uid}: stored proposal of trial {p['trial_index']} refused: {exc}; "
                "nothing was sent to the bench"
            ) from None
    attempted = sum(1 for h in history if h["status"] != "abandoned" or h.get("run_uid"))
    plan = campaign(
        bench,
        opt,
        campaign_uid=campaign_uid,
        lab_clock=_lab_clock(bench),
        budget_lab_h=cfg.budget_lab_h,
        max_trials=cfg.max_trials,
        target_threshold_uJ_cm2=cfg.target_threshold_uJ_cm2,
        lab_time_used_s=used_s,
        trials_done=attempted,
        films=films,
        can_make_films=cfg.can_make_films,
        scan_args={"fluence_min_uJ_cm2": cfg.fluence_min_uJ_cm2, "fluence_max_uJ_cm2": f_hi, **cfg.scan_args},
        progress=progress,
        md={"config": cfg.as_dict()},
        fault_hook=fault_hook if fault_hook is not None else _fault_hook(),
    )
    return PreparedCampaign(campaign_uid, cfg, plan, opt, bench, history, pending)


def run_campaign(
    catalog,
    cfg: CampaignConfig | None = None,
    *,
    resume_uid: str | None = None,
    budgets: dict | None = None,
    progress=None,
    exit_on_interrupt: bool = False,
) -> dict:
    """Start a campaign (``cfg``) or resume one (``resume_uid``); return its summary.

    ``budgets``: on resume, new ``budget_lab_h`` / ``max_trials`` / ``target_threshold_uJ_cm2``
    (the totals over the whole campaign) in place of the stored ones. Ctrl+C ends it with
    ``CampaignInterrupted`` once its open runs are closed (see the module doc).
    ``exit_on_interrupt``: the caller exits after ``CampaignInterrupted`` (the CLI); from then
    on Ctrl+C is ignored instead of going back to the previous handler, so that a key held
    down cannot break the closing of the catalog or the interpreter's shutdown with a traceback.
    """
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted

    prepared = prepare_campaign(catalog, cfg, resume_uid=resume_uid, budgets=budgets, progress=progress)
    campaign_uid = prepared.campaign_uid
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(catalog.campaign_writer())
    # bluesky's SIGINT handler turns Ctrl+C into pauses while the plan runs and calls the handler
    # it found after more than ten; this one (also in force while aborting) only counts them
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    sigints: list[int] = []
    if main:
        signal.signal(signal.SIGINT, lambda signum, frame: sigints.append(signum))
    interrupted = False
    try:
        try:
            result = RE(prepared.plan)
        except RunEngineInterrupted:
            interrupted = True
            if not RE.state.is_idle:
                RE.abort(reason="interrupted (Ctrl+C)")
            raise CampaignInterrupted(
                f"campaign {campaign_uid} interrupted (Ctrl+C): its open runs were closed with exit_status "
                f"'abort'; continue it with `gainloop campaign resume {campaign_uid}`"
            ) from None
    finally:
        if main:
            signal.signal(signal.SIGINT, signal.SIG_IGN if interrupted and exit_on_interrupt else previous)
    if result.exit_status != "success":
        raise CampaignError(f"campaign {campaign_uid} ended with {result.exit_status}: {result.reason}")
    opt = prepared.optimizer
    summary = dict(result.plan_result)
    summary["best"] = opt.best()
    summary["trials"] = len(opt.history())
    summary["failures"] = sum(r.status == "failed" for r in opt.history())
    return summary


def campaign_status(catalog, campaign_uid: str) -> dict:
    """Best conditions so far, lab time used, trials and failures, from the catalog alone."""
    cfg, history, used_s, films = rebuild_trials(catalog, campaign_uid)
    done = [
        h
        for h in history
        if h["status"] == "completed" and math.isfinite(h["outcome"].get("threshold_uJ_cm2", math.nan))
    ]
    best = min(done, key=lambda h: h["outcome"]["threshold_uJ_cm2"], default=None)
    return {
        "campaign_uid": campaign_uid,
        "strategy": cfg.strategy,
        "best": None
        if best is None
        else {
            "threshold_uJ_cm2": best["outcome"]["threshold_uJ_cm2"],
            "threshold_err_uJ_cm2": best["outcome"].get("threshold_err_uJ_cm2"),
            "stripe_length_um": best["params"]["stripe_length_um"],
            "doping": best["params"]["doping"],
            "trial_index": best["trial_index"],
        },
        "lab_hours": used_s / 3600.0,
        "trials": len(history),
        "failures": sum(h["status"] == "failed" for h in history),
        "films_made": len(films),
    }
