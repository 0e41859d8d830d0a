"""A campaign as the catalog holds it: its config, one ``TrialRecord`` per trial, its films and lab time.

The one reader of a stored campaign, shared by ``campaign resume``, ``campaign status`` and
the report (``read_campaign``). What is stored, and where:

* the campaign's record runs (``plan_name`` ``"campaign"``, one per session: a resume opens
  another) carry the config in their start document and, per trial, one event of the
  ``proposals`` stream (``core.trial.proposal_row``) and one of the ``outcomes`` stream
  (``core.trial.TrialRecord.to_row``);
* every measurement run of a trial carries ``campaign_uid``, ``trial_index`` and the
  proposal in its start document (and, on a film whose doping was measured, ``film_doping``:
  requested and measured doping, error, absorption run);
* a new film's absorption run carries ``campaign_uid`` and ``film_trial_index`` (not a trial's run).

The films' measured dopings (``StoredCampaign.film_dopings``) come from the trial records
(``TrialRecord.measured_doping``): a resumed campaign matches proposals to them and never
measures those films again; a film whose measurement failed ("film not measured") is
``StoredCampaign.unusable_films``: never used.

A trial whose outcome was recorded is read from its ``outcomes`` event. A trial whose
measurement run exists but whose outcome was never recorded (the process died in between)
is judged by its run: no stop document -> ``failed`` (``INTERRUPTED_REASON``); ended
``abort`` -> ``abandoned`` with the abort's reason; ended ``success`` -> ``completed`` from
its own ``analysis`` stream (or ``failed`` when the fit is rejected, as the plan would have
judged it). A proposal with neither a run nor an outcome is *pending*: a resume measures it
first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from core.trial import FILM_NOT_MEASURED, FilmDoping, Proposal, TrialRecord, proposal_from_row
from gainloop.replay import stream_columns

__all__ = ["INTERRUPTED_REASON", "StoredCampaign", "read_campaign", "run_analysis", "search_runs"]

#: The reason of a trial whose measurement run has no stop document (its process was killed).
INTERRUPTED_REASON = "interrupted: the run has no stop document"

#: Measurement plans a campaign trial runs.
TRIAL_PLANS = ("ase_fluence_scan", "ase_point")


def search_runs(catalog, **start_equals) -> list:
    """Runs of the catalog whose start document has these values (e.g. ``campaign_uid=...``), by start time
    (after the drain of the spool's finished runs: ``Catalog.settle``)."""
    from tiled.queries import Key

    settle = getattr(catalog, "settle", None)
    if settle is not None:
        settle()

    results = catalog.client
    for key, value in start_equals.items():
        results = results.search(Key(f"start.{key}") == value)
    return sorted(results.values(), key=lambda r: r.start["time"])


def _rows(stream) -> list[dict]:
    """A stored event stream as one ``{data key: Python value}`` per event, in event order."""
    cols = stream_columns(stream)
    n = len(cols.get("trial_index", ()))  # none: a record cut before its first event
    return [{k: (v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in cols.items()} for i in range(n)]


def run_analysis(run) -> dict:
    """A stored measurement run's analysis (its ``analysis`` stream's last values, e.g. ``threshold_uJ_cm2``);
    {} when it has none."""
    if "analysis" not in run:
        return {}
    return {k: float(v[-1]) for k, v in stream_columns(run["analysis"]).items()}


@dataclass(frozen=True)
class StoredCampaign:
    """What the catalog holds of one campaign (see the module doc).

    ``config``: the stored ``CampaignConfig`` as a dict (the first record run's); ``records``:
    one ``TrialRecord`` per trial index, in index order; ``pending``: proposals recorded and never
    measured; ``lab_time_used_s``: lab seconds the campaign has used; ``films_made``: ``{"id",
    "doping"}`` of the films made for it; ``lab_clock``: where its lab time was read from;
    ``record_runs`` / ``trial_runs``: its record runs and its measurement runs, by start time.
    """

    campaign_uid: str
    config: Mapping
    records: tuple[TrialRecord, ...]
    pending: tuple[Proposal, ...]
    lab_time_used_s: float
    films_made: tuple[dict, ...]
    lab_clock: str
    record_runs: tuple
    trial_runs: tuple

    @property
    def film_dopings(self) -> dict[str, FilmDoping]:
        """Films whose doping the campaign measured: sample id -> ``FilmDoping`` (electrons/dot; the
        latest record of each film), in trial order."""
        out: dict[str, FilmDoping] = {}
        for r in self.records:
            if r.sample_id and r.doping_measured:
                out[r.sample_id] = FilmDoping(
                    r.measured_doping, r.measured_doping_err, r.requested_doping, r.absorption_uid
                )
        return out

    @property
    def unusable_films(self) -> set[str]:
        """Films made for the campaign whose doping could not be measured: never used."""
        return {
            r.sample_id
            for r in self.records
            if r.sample_id and r.status == "failed" and r.reason.startswith(FILM_NOT_MEASURED)
        } - set(self.film_dopings)

    @property
    def films_measured(self) -> int:
        """How many films the campaign measured (their absorption gave a doping)."""
        return len(self.film_dopings)

    @property
    def trials(self) -> list[TrialRecord]:
        """The trials: records measured or attempted on the bench (every status but a proposal abandoned
        before its run opened). The same count as the campaign plan's summary ``trials``."""
        return [r for r in self.records if r.status != "abandoned" or r.run_uid]

    def trial_run(self, trial_index: int):
        """The measurement run of a trial: the one its record names, else its last completed one,
        else its latest (None if no run was opened)."""
        runs = [
            r
            for r in self.trial_runs
            if r.start.get("plan_name") in TRIAL_PLANS and int(r.start.get("trial_index", -1)) == trial_index
        ]
        record = next((r for r in self.records if r.trial_index == trial_index), None)
        if record is not None and record.run_uid:
            named = next((r for r in runs if r.start["uid"] == record.run_uid), None)
            if named is not None:
                return named
        done = [r for r in runs if (r.metadata.get("stop") or {}).get("exit_status") == "success"]
        return (done or runs or [None])[-1]


def _stop_reason(record_runs, t: float) -> str:
    """The stop reason of the record run that was open at time ``t`` (e.g. the RunEngine's abort reason)."""
    open_then = [r for r in record_runs if r.start["time"] <= t]
    stop = open_then[-1].metadata.get("stop") if open_then else None
    return str((stop or {}).get("reason") or "")


def _judged_by_run(run, proposal: Proposal, record_runs, max_rel_err: float) -> TrialRecord:
    """The record of a trial whose run exists but whose outcome was never recorded."""
    from plans.campaign import fit_rejection

    start = run.start
    stop = run.metadata.get("stop")
    status, outcome, reason = "completed", {}, ""
    if stop is None:
        status, reason = "failed", INTERRUPTED_REASON
    elif stop.get("exit_status") == "abort":
        why = stop.get("reason") or _stop_reason(record_runs, start["time"]) or "no reason given"
        status, reason = "abandoned", f"run ended abort: {why}"
    elif stop.get("exit_status") != "success":
        status, reason = "failed", f"run ended {stop.get('exit_status')}: {stop.get('reason')}"
    else:
        outcome = run_analysis(run)
        reason = fit_rejection(outcome, max_rel_err)
        status = "failed" if reason else "completed"
    lab_s = 0.0  # how long it took is recorded with the outcome, which this trial never got
    film = dict(start.get("film_doping") or {})  # the film's measured doping, when it was measured
    return TrialRecord(
        proposal,
        status=status,
        outcome=outcome,
        reason=reason,
        lab_time_s=lab_s,
        sample_id=str(start.get("sample_id", "") or ""),
        new_film=bool(start.get("new_film", False)),
        run_uid=start["uid"],
        campaign_lab_time_s=float(start.get("lab_time_used_s", 0.0) or 0.0) + lab_s,
        requested_doping=film.get("requested_doping", proposal.params.get("doping", math.nan)),
        measured_doping=film.get("measured_doping", math.nan),
        measured_doping_err=film.get("measured_doping_err", math.nan),
        absorption_uid=film.get("absorption_uid", ""),
    )


def read_campaign(catalog, campaign_uid: str) -> StoredCampaign | None:
    """The campaign ``campaign_uid`` as stored (None if the catalog has no record run of it)."""
    record_runs = search_runs(catalog, campaign_uid=campaign_uid, plan_name="campaign")
    if not record_runs:
        return None
    config = dict(record_runs[0].start["config"])
    max_rel_err = float(config.get("max_threshold_rel_err", 0.5))
    proposals: dict[int, Proposal] = {}
    records: dict[int, TrialRecord] = {}
    for rec in record_runs:
        if "proposals" in rec:
            for row in _rows(rec["proposals"]):
                p = proposal_from_row(row)
                proposals[p.trial_index] = p
        if "outcomes" in rec:
            for row in _rows(rec["outcomes"]):
                idx = int(row["trial_index"])
                records[idx] = TrialRecord.from_row(row, proposals.get(idx))
    used_s = max((r.campaign_lab_time_s for r in records.values() if math.isfinite(r.campaign_lab_time_s)), default=0.0)
    trial_runs = [r for r in search_runs(catalog, campaign_uid=campaign_uid) if r.start.get("plan_name") != "campaign"]
    films: list[dict] = []
    measured: set[int] = set()
    for run in trial_runs:
        start = run.start
        if "trial_index" not in start:
            continue  # a run tagged with the campaign that is not one of its trials
        idx = int(start["trial_index"])
        measured.add(idx)
        if start.get("new_film"):
            films.append({"id": start["sample_id"], "doping": float(start["doping"])})
        if idx in records:
            continue  # the campaign recorded this trial's outcome (completed, infeasible, failed): it stands
        proposal = proposals.get(idx) or Proposal.from_dict(start["proposal"])
        records[idx] = _judged_by_run(run, proposal, record_runs, max_rel_err)
        used_s = max(used_s, records[idx].campaign_lab_time_s)
    pending = tuple(proposals[k] for k in sorted(proposals) if k not in records and k not in measured)
    return StoredCampaign(
        campaign_uid=campaign_uid,
        config=config,
        records=tuple(records[k] for k in sorted(records)),
        pending=pending,
        lab_time_used_s=used_s,
        films_made=tuple(films),
        lab_clock=str(record_runs[0].start.get("lab_clock", "") or ""),
        record_runs=tuple(record_runs),
        trial_runs=tuple(trial_runs),
    )
