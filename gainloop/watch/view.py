"""What the watch page shows of a campaign, as plain JSON-able data, from the one reader (``read_campaign``).

``campaign_view(catalog, stored)`` turns a ``StoredCampaign`` into the page's data (units in the
keys: uJ/cm^2, um, electrons/dot, h): the campaign's state (running or ended, where it runs),
budgets (lab hours used of the budget, trials), the trials (threshold with its error, lab hours
at the trial's end, the best so far), the films made, the failures with their reasons, the next
proposal and why it was chosen, the latest fluence scan with its kink fit, and the prior panel's
state (absent: campaigns carry no twin prior yet). ``posterior_png`` draws the posterior map with
the report's figure code (``gainloop.report.figures``), the next proposal marked on it.

A trial whose run has no stop document while the campaign's record run is open is *being
measured* (``read_campaign`` reads it as interrupted, which it is only once the campaign has
stopped); it is shown as ``measuring`` and never drawn as a failure.
"""

from __future__ import annotations

import io
import math
import time

import numpy as np

from gainloop.queueserver import ITEM_UID_KEY
from gainloop.records import INTERRUPTED_REASON, StoredCampaign

__all__ = ["PRIOR_ABSENT", "campaign_view", "kink_lines", "posterior_inputs", "posterior_png"]

#: What the prior panel says until campaigns carry a twin prior.
PRIOR_ABSENT = (
    "No twin prior: this campaign's optimiser started from its measurements alone, so there is no prior to "
    "compare them with. The panel fills in once campaigns carry the twin's prediction as their prior."
)


def _num(v) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def campaign_state(stored: StoredCampaign) -> dict:
    """Running or ended, and where: the last record run's stop document and the queueserver item, if any."""
    last = stored.record_runs[-1]
    stop = last.metadata.get("stop")
    first_start = stored.record_runs[0].start
    item = last.start.get(ITEM_UID_KEY)
    return {
        "running": stop is None,
        "exit_status": None if stop is None else str(stop.get("exit_status", "")),
        "stop_reason": None if stop is None else str(stop.get("reason") or ""),
        "started": _num(first_start.get("time")),
        "ended": None if stop is None else _num(stop.get("time")),
        "sessions": len(stored.record_runs),
        "qserver_item_uid": str(item) if item else None,
        "runs_in": "queueserver" if item else "terminal",
    }


def _measuring(stored: StoredCampaign, running: bool) -> set[int]:
    """Trial indices being measured now: no stop document on their run while the campaign runs."""
    if not running:
        return set()
    session_start = stored.record_runs[-1].start["time"]
    out = set()
    for r in stored.records:
        if r.status == "failed" and r.reason == INTERRUPTED_REASON:
            run = stored.trial_run(r.trial_index)
            if run is not None and run.start["time"] >= session_start:
                out.add(r.trial_index)
    return out


def _trial_row(r, measuring: set[int]) -> dict:
    thr = r.outcome.get("threshold_uJ_cm2") if r.status == "completed" else None
    status = "measuring" if r.trial_index in measuring else r.status
    params = r.params
    return {
        "trial_index": r.trial_index,
        "status": status,
        "reason": "" if status == "measuring" else r.reason,
        "stripe_length_um": _num(params.get("stripe_length_um")),
        "doping": _num(params.get("doping")),
        "measured_doping": _num(r.measured_doping),
        "measured_doping_err": _num(r.measured_doping_err),
        "sample_id": r.sample_id,
        "new_film": r.new_film,
        "threshold_uJ_cm2": _num(thr),
        "threshold_err_uJ_cm2": _num(r.outcome.get("threshold_err_uJ_cm2")) if thr is not None else None,
        "lab_h": _num(r.campaign_lab_time_s / 3600.0),
        "run_uid": r.run_uid,
    }


def _films(stored: StoredCampaign) -> list[dict]:
    """Films the campaign's trials used: id, doping (measured where it was, else as proposed), made here or not."""
    films: dict[str, dict] = {}
    for r in stored.records:
        if not r.sample_id:
            continue
        doping = r.measured_doping if r.doping_measured else float(r.params.get("doping", math.nan))
        films[r.sample_id] = {"id": r.sample_id, "doping": _num(doping), "measured": r.doping_measured}
    return list(films.values())


def next_proposal(stored: StoredCampaign, measuring: set[int], state: dict) -> dict | None:
    """The proposal the campaign measures next (or is measuring): its conditions and why it was chosen.

    Why: the optimiser's cost-weighted acquisition value ``a = ln(EI) - ln(cost / scan cost)``
    (``optimizer``'s nested strategy), i.e. EI per lab hour = ``exp(a) / scan hours``, EI
    in units of ln threshold (a relative improvement); NaN for an initial-design point. The film:
    the one its run mounted, else an existing film within the cost model's doping tolerance, else
    a new film.
    """
    if not state["running"]:
        return None
    from optimizer import CostModel

    candidates = [r.proposal for r in stored.records if r.trial_index in measuring] + list(stored.pending)
    if not candidates:
        return None
    p = min(candidates, key=lambda q: q.trial_index)
    joint = "fluence_uJ_cm2" in p.params
    cost = CostModel()
    scan_h = cost.measurement_s(joint=joint) / 3600.0
    value = _num(p.acquisition_value)
    ei_per_h = math.exp(value) / scan_h if value is not None else None
    expected_h = _num(p.expected_cost_s / 3600.0)
    film: dict
    run = stored.trial_run(p.trial_index) if p.trial_index in measuring else None
    doping = float(p.params.get("doping", math.nan))
    if run is not None:
        sid = str(run.start.get("sample_id", ""))
        film = {"id": sid, "new": bool(run.start.get("new_film", False))}
    else:
        tol = cost.film_doping_tol
        near = [f for f in _films(stored) if f["doping"] is not None and abs(f["doping"] - doping) <= tol]
        film = {"id": near[0]["id"], "new": False} if near else {"id": "", "new": True}
    if film["new"]:
        film["why"] = (
            f"needs a new film of doping {doping:.2f} electrons/dot (made by an operator, then its doping measured "
            f"from its absorption: about {cost.new_film_s / 3600.0:.0f} lab h on the twin's cost model)"
        )
    elif film["id"]:
        film["why"] = f"on the existing film {film['id']}"
    else:
        film["why"] = "on an existing film"
    if value is None:
        why = "an initial-design point (space-filling, chosen before the model), not by expected improvement"
    else:
        why = (
            f"the highest expected improvement per lab hour: {ei_per_h:.3g} (ln threshold per lab h) "
            f"at an expected cost of {expected_h:.3g} lab h"
        )
    return {
        "trial_index": p.trial_index,
        "stripe_length_um": _num(p.params.get("stripe_length_um")),
        "doping": _num(doping),
        "fluence_uJ_cm2": _num(p.params.get("fluence_uJ_cm2")),
        "measuring": p.trial_index in measuring,
        "acquisition_value": value,
        "ei_per_lab_h": _num(ei_per_h),
        "expected_cost_h": expected_h,
        "predicted_threshold_uJ_cm2": _num(p.predicted.get("threshold_uJ_cm2")),
        "predicted_threshold_err_uJ_cm2": _num(p.predicted.get("threshold_err_uJ_cm2")),
        "film": film,
        "why": why,
    }


def kink_lines(fluence: np.ndarray, rate: np.ndarray, threshold: float) -> list[list[list[float]]]:
    """The kink fit as line segments ``[[[F, I], [F, I]], ...]`` (uJ/cm^2, counts/s), from the plan's own
    fit (``plans.analysis.kink_threshold``: its slopes below and above the break) through the stored
    threshold; empty if the data give no fit."""
    from plans.analysis import AnalysisError, kink_threshold

    try:
        fit = kink_threshold(fluence, rate)
    except AnalysisError:
        return []
    x, y = np.log10(fluence), np.log10(rate)
    x0 = math.log10(threshold)
    # the hinge's level at the break: the median offset, slopes fixed, of the reads within half a decade of it
    near = np.abs(x - x0) < 0.5
    model = np.where(x < x0, fit.slope_below * (x - x0), fit.slope_above * (x - x0))
    c = float(np.median((y - model)[near] if near.any() else y - model))
    lo = float(x.min())
    # the steep segment up to the brightest read (a saturation segment beyond it is not drawn)
    hi = min(float(x.max()), x0 + (float(y.max()) - c) / fit.slope_above) if fit.slope_above > 0 else float(x.max())
    seg = []
    if lo < x0:
        seg.append([[10**lo, 10 ** (c + fit.slope_below * (lo - x0))], [10**x0, 10**c]])
    if hi > x0:
        seg.append([[10**x0, 10**c], [10**hi, 10 ** (c + fit.slope_above * (hi - x0))]])
    return seg


def latest_scan(
    stored: StoredCampaign, measuring: set[int], cache: dict | None = None, *, read: bool = True
) -> dict | None:
    """The latest finished trial's fluence scan: its reads (unsaturated, counts/s vs uJ/cm^2), the stored
    threshold with its error and the kink fit's lines. ``cache``: run uid -> scan (a finished run's
    data never change); ``read`` False: the latest scan in the cache, nothing read from the catalog."""
    from gainloop.replay import stream_columns
    from plans.analysis import input_output

    for r in sorted(stored.records, key=lambda r: -r.trial_index):
        if r.trial_index in measuring or not r.run_uid:
            continue
        if cache is not None and r.run_uid in cache:
            return cache[r.run_uid]
        if not read:
            continue
        run = stored.trial_run(r.trial_index)
        if run is None or "primary" not in run:
            continue
        data = stream_columns(run["primary"], arrays=False)  # the scalar readings: no spectrum is drawn
        if data.get("pump_fluence") is None or not len(data["pump_fluence"]):
            continue
        fluence, rate = input_output(data)
        n_sat = int(np.sum(np.asarray(data["spectrometer_saturated"]).astype(bool)))
        thr = _num(r.outcome.get("threshold_uJ_cm2")) if r.status == "completed" else None
        err = _num(r.outcome.get("threshold_err_uJ_cm2")) if thr is not None else None
        scan = {
            "trial_index": r.trial_index,
            "run_uid": r.run_uid,
            "status": r.status,
            "reason": r.reason,
            "stripe_length_um": _num(r.params.get("stripe_length_um")),
            "fluence_uJ_cm2": [float(v) for v in fluence],
            "counts_per_s": [float(v) for v in rate],
            "saturated_left_out": n_sat,
            "threshold_uJ_cm2": thr,
            "threshold_err_uJ_cm2": err,
            "kink": kink_lines(fluence, rate, thr) if thr is not None and fluence.size >= 6 else [],
        }
        if cache is not None:
            cache[r.run_uid] = scan
        return scan
    return None


def campaign_view(stored: StoredCampaign, *, scan_cache: dict | None = None, read_scan: bool = True) -> dict:
    """The page's data of the campaign (see the module doc); JSON-able, no secret in it. ``read_scan``
    False: the latest fluence scan already in ``scan_cache`` (no request to the catalog)."""
    from gainloop.campaign import CampaignConfig

    cfg = CampaignConfig.from_dict(stored.config)
    state = campaign_state(stored)
    measuring = _measuring(stored, state["running"])
    trials = [_trial_row(r, measuring) for r in stored.records]
    best = None
    for t in sorted((t for t in trials if t["lab_h"] is not None), key=lambda t: (t["lab_h"], t["trial_index"])):
        if t["threshold_uJ_cm2"] is not None and (best is None or t["threshold_uJ_cm2"] < best["threshold_uJ_cm2"]):
            best = t
        t["best_so_far_uJ_cm2"] = None if best is None else best["threshold_uJ_cm2"]
        t["best_so_far_err_uJ_cm2"] = None if best is None else best["threshold_err_uJ_cm2"]
    failures = [
        {"trial_index": t["trial_index"], "status": t["status"], "reason": t["reason"], "run_uid": t["run_uid"]}
        for t in trials
        if t["status"] in ("failed", "infeasible", "abandoned")
    ]
    measured = [t for t in trials if t["status"] != "measuring"]
    return {
        "campaign_uid": stored.campaign_uid,
        "strategy": cfg.strategy,
        "seed": cfg.seed,
        "material": cfg.material,
        "devices": cfg.bench_file or "the digital twin",
        "lab_clock": stored.lab_clock,
        "state": state,
        "budget": {
            "lab_h_used": stored.lab_time_used_s / 3600.0,
            "lab_h_budget": _num(cfg.budget_lab_h),
            "trials": len([t for t in measured if t["status"] != "abandoned" or t["run_uid"]]),
            "max_trials": cfg.max_trials,
            "target_threshold_uJ_cm2": _num(cfg.target_threshold_uJ_cm2),
        },
        "films_made": [{"id": f["id"], "doping": _num(f["doping"])} for f in stored.films_made],
        "films": _films(stored),
        "failures": failures,
        "trials": trials,
        "best": best,
        "next": next_proposal(stored, measuring, state),
        "scan": latest_scan(stored, measuring, scan_cache, read=read_scan),
        "prior": {"available": False, "note": PRIOR_ABSENT},
        "read_at": time.time(),
    }


def posterior_inputs(stored: StoredCampaign, next_prop: dict | None) -> dict:
    """What ``posterior_png`` needs, as plain picklable data (it runs in a process of its own): the config,
    the trial records but the next one's, the fluence limit each trial's run recorded, the next proposal."""
    skip = set() if next_prop is None else {next_prop["trial_index"]}
    records, limits = [], {}
    for r in stored.records:
        if r.trial_index in skip:
            continue
        records.append(r)
        run = stored.trial_run(r.trial_index)
        if run is not None and "fluence_limit_uJ_cm2" in run.start:
            limits[r.trial_index] = float(run.start["fluence_limit_uJ_cm2"])
    return {"config": dict(stored.config), "records": records, "limits": limits, "next": next_prop}


#: The last posterior fitted in this process: (config, the trials it was fitted on) -> grid (a redraw for
#: a new next proposal on the same trials reuses it).
_FITTED: dict = {}


def posterior_png(inputs: dict) -> tuple[bytes | None, str, int]:
    """(PNG of the posterior map or None, its caption or why there is none, thresholds it was fitted on),
    from ``posterior_inputs``.

    The report's GP posterior (``gainloop.report.figures.gp_posterior``: the nested optimiser refitted
    on the measured trials) drawn by the report's ``draw_posterior``, every proposal numbered by its
    trial index, the next one ringed in red with its number."""
    from types import SimpleNamespace

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gainloop.campaign import CampaignConfig
    from gainloop.report import figures as plots
    from gainloop.report.trials import ReportTrial

    cfg = CampaignConfig.from_dict(inputs["config"])
    limits = inputs["limits"]
    trials = [
        ReportTrial(
            r,
            SimpleNamespace(start={"fluence_limit_uJ_cm2": limits[r.trial_index]}) if r.trial_index in limits else None,
        )
        for r in inputs["records"]
    ]
    key = (repr(sorted(inputs["config"].items())), repr([r.to_row() for r in inputs["records"]]))
    if key in _FITTED:
        post, why = _FITTED[key]
    else:
        post, why = plots.gp_posterior(cfg, [t.record.result for t in trials], trials)
        _FITTED.clear()
        _FITTED[key] = (post, why)
    if post is None:
        return None, why, 0
    next_prop = inputs["next"]
    n = int(sum(math.isfinite(t.threshold) for t in trials))
    best = min((t for t in trials if math.isfinite(t.threshold)), key=lambda t: t.threshold, default=None)
    fig = Figure(dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    plots.draw_posterior(fig, post, trials, best)
    if next_prop is not None and next_prop.get("stripe_length_um") and next_prop.get("doping") is not None:
        for ax in fig.axes[:2]:
            x, y = next_prop["stripe_length_um"], next_prop["doping"]
            ax.plot(x, y, "o", ms=14, mfc="none", mec="red", mew=2.0)
            ax.annotate(
                f"next: {next_prop['trial_index']}",
                (x, y),
                xytext=(8, -14),
                textcoords="offset points",
                fontsize="small",
                color="red",
                fontweight="bold",
                bbox={"facecolor": "white", "edgecolor": "red", "alpha": 0.85, "pad": 1.5},
            )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    fig.clear()
    caption = post["caption"] + (
        f" Red ring: the next proposal (trial {next_prop['trial_index']})." if next_prop is not None else ""
    )
    return buf.getvalue(), caption, n
