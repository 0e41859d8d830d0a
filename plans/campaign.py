"""The closed loop as one Bluesky plan: suggest, measure, analyse, ingest, repeat.

``campaign`` drives any optimiser with the ``suggest(n)`` / ``ingest(results)`` /
``best()`` / ``state()`` protocol (``core.protocols.Optimizer``; it never imports ``optimizer``) on a
``devices.Bench``:

* a proposal's doping selects a film: an existing film of the stage's library within
  ``film_doping_tol`` (a sample change, seconds), else, if the bench can make films,
  an operator makes one (``new_film_doping`` + ``new_film_request``: hours);
* a film comes out of the lab with its own doping, not the one asked for: every new film is
  measured (``plans.absorption.measure_film_doping``: its white-light absorption, its own run
  tagged ``campaign_uid`` and ``film_trial_index``) before its first trial, and a film measured
  in this campaign (``film_dopings``, e.g. read back by a resume) is matched to proposals by
  its measured doping and never measured again. Each ``TrialRecord`` carries the requested
  doping and the film's measured doping with its error (the optimiser models the measured
  one). A film whose measurement fails is a ``failed`` trial ("film not measured: <reason>")
  and is never used: no trial is measured blind;
* a nested trial (params without a fluence) is an adaptive ``ase_fluence_scan`` at the
  proposed stripe length; a joint trial is one ``ase_point`` acquisition at the proposed
  fluence and stripe length;
* every measurement is its own run whose start document carries ``campaign_uid``,
  ``trial_index`` and the proposal; the campaign's own run (run key ``"campaign"``, open
  alongside) records each proposal, outcome and the model's state as events in its
  ``proposals``, ``outcomes`` and ``model`` streams;
* a failed measurement (device fault, NaN data, analysis error) becomes a ``failed`` or
  ``infeasible`` result with its reason, never a number; a breaker stops the campaign
  when more than ``max_failure_fraction`` of at least ``breaker_min_trials`` trials fail;
* it stops at the lab-time budget (``lab_clock``: seconds, e.g. the twin's lab clock or
  wall time on the bench), the trial budget or when a threshold at or below the target
  is measured, and returns a summary; proposals of the last batch left unmeasured are
  recorded ``abandoned`` (their indices are never used again);
* proposals the optimiser already holds as pending when the campaign starts (a resumed
  campaign's proposals that were recorded but never measured, ``Optimizer.mark_pending``)
  are measured first, under their own trial indices, before anything new is suggested;
* a ``checkpoint`` message precedes every trial: a deferred pause (``RE.request_pause(
  defer=True)``, the first Ctrl+C) stops there, between trials, and ``RE.resume()``
  continues without re-doing anything, so the data equal an uninterrupted campaign's;
* ``fault_hook(point, trial_index)`` (fault injection, tests only) is called at named
  points of every trial: ``"proposed"`` (its proposal recorded, nothing measured),
  ``"measuring"`` (the first event of its measurement run saved, no stop document yet),
  ``"measured"`` (the run's stop document emitted, the result not yet ingested or
  recorded) and ``"recording"`` (inside the record's ``outcomes`` event: created, not
  saved). It may return a plan to run there (e.g. ``bps.sleep``), or None.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator, RequestAbort, RequestStop

from core.protocols import OPTIMIZER_METHODS, Optimizer
from core.trial import FILM_NOT_MEASURED, FilmDoping, Proposal, TrialRecord, proposal_row
from plans.absorption import measure_film_doping
from plans.analysis import AbsorptionError, AnalysisError
from plans.measurements import ase_fluence_scan, ase_point

__all__ = ["FILM_NOT_MEASURED", "CampaignStop", "FilmDoping", "campaign", "fit_rejection", "mount_film"]


def _film_columns(requested: float, film: FilmDoping | None) -> dict:
    """A ``TrialRecord``'s film doping fields: requested (when its film was made, else by this trial), and
    measured when the film was."""
    out = {"requested_doping": requested}
    if film is not None:
        if math.isfinite(film.requested):
            out["requested_doping"] = film.requested
        out.update(measured_doping=film.doping, measured_doping_err=film.doping_err, absorption_uid=film.absorption_uid)
    return out


class CampaignStop(RuntimeError):
    """The campaign's breaker tripped (too many failed trials)."""


class _Recorder:
    """Signals of the campaign run's streams (one set per stream: bluesky wants the same objects)."""

    def __init__(self) -> None:
        self._signals: dict[str, dict] = {}

    def record(self, stream: str, values: dict, before_save=None):
        """One event of ``stream`` (numbers and strings; dicts and lists as JSON); ``before_save``:
        a plan (or None) run once the event is created and read, before it is saved."""
        from ophyd import Signal

        signals = self._signals.setdefault(stream, {})
        for key, value in values.items():
            if isinstance(value, dict | list):
                value = json.dumps(value, sort_keys=True, default=str)
            elif isinstance(value, bool):
                value = int(value)
            elif value is None:
                value = math.nan
            if key not in signals:
                signals[key] = Signal(name=key, value=value)
            else:
                signals[key].put(value)
        yield from bps.create(name=stream)
        for sig in signals.values():
            yield from bps.read(sig)
        if before_save is not None:
            yield from before_save
        yield from bps.save()


def _in_campaign_run(plan):
    return bpp.set_run_key_wrapper(plan, "campaign")


FAULT_POINTS = ("proposed", "measuring", "measured", "recording")


def _at(fault_hook, point: str, trial_index: int):
    """Call the fault hook at ``point`` and run the plan it returns (if any)."""
    if fault_hook is None:
        return
    plan = fault_hook(point, trial_index)
    if plan is not None:
        yield from plan


def _after_first_event(plan, then):
    """``plan`` with ``then()`` (a plan) run right after its first ``save`` (its first event)."""
    done = False

    def mutate(msg):
        nonlocal done
        if msg.command == "save" and not done:
            done = True
            return None, then()
        return None, None

    return bpp.plan_mutator(plan, mutate)


def fit_rejection(outcome: dict, max_rel_err: float) -> str:
    """Why a scan's fitted threshold is not a result ('' if it is one): not a finite positive number,
    or an uncertainty that is not finite or larger than ``max_rel_err`` of the threshold."""
    if "threshold_uJ_cm2" not in outcome:
        return ""  # a joint trial's single acquisition: no fit to judge
    thr = float(outcome["threshold_uJ_cm2"])
    err = float(outcome.get("threshold_err_uJ_cm2", math.nan))
    if not (math.isfinite(thr) and thr > 0):
        return f"fit rejected: the threshold {thr!r} uJ/cm^2 is not a positive number"
    if not (math.isfinite(err) and err >= 0):
        return f"fit rejected: threshold {thr:.4g} uJ/cm^2 has no finite uncertainty ({err!r})"
    if err > max_rel_err * thr:
        return (
            f"fit rejected: threshold {thr:.4g} +- {err:.3g} uJ/cm^2, a relative error of {err / thr:.3g} "
            f"(allowed up to {max_rel_err:g}: max_threshold_rel_err)"
        )
    return ""


def _film_id(bench, doping: float, tol: float, eligible, dopings=None, exclude=()) -> str | None:
    """An existing film of this doping (electrons/dot) the campaign may use: its measured doping
    (``dopings``: id -> electrons/dot) when it has one, else its library doping; never one of ``exclude``."""
    dopings = dopings or {}
    best, best_diff = None, math.inf
    for entry in bench.stage.library.values():
        if entry.kind != "film" or (eligible is not None and entry.id not in eligible) or entry.id in exclude:
            continue
        diff = abs(float(dopings.get(entry.id, entry.doping)) - doping)
        if diff <= tol and diff < best_diff:
            best, best_diff = entry.id, diff
    return best


def mount_film(
    bench, doping: float, tol: float, eligible, can_make_films: bool, *, dopings=None, exclude=()
) -> MsgGenerator[tuple[str, bool]]:
    """Mount a library film of this doping (electrons/dot) within ``tol``, among ``eligible`` ids (None: any),
    else have one made (``can_make_films``); return ``(sample_id, made_now)``.

    ``dopings``: films' measured dopings (id -> electrons/dot), matched in place of their library
    doping; ``exclude``: ids never to use (a film whose doping could not be measured)."""
    sample_id = _film_id(bench, doping, tol, eligible, dopings, exclude)
    if sample_id is not None:
        return sample_id, False
    if not can_make_films:
        raise ValueError(f"no film of doping {doping:g} electrons/dot in the library and this bench cannot make films")
    yield from bps.mv(bench.stage.new_film_doping, float(doping))
    yield from bps.mv(bench.stage.new_film_request, 1)
    new_id = yield from bps.rd(bench.stage.sample)
    if new_id not in bench.stage.library:
        bench.stage.library[new_id] = bench.config.new_film_entry(new_id, float(doping))
    if eligible is not None:
        eligible.add(new_id)
    return new_id, True


def campaign(
    bench,
    optimizer,
    *,
    campaign_uid: str,
    lab_clock: Callable[[], float],
    budget_lab_h: float | None = None,
    max_trials: int | None = None,
    target_threshold_uJ_cm2: float | None = None,
    lab_time_used_s: float = 0.0,
    trials_done: int = 0,
    abandoned_done: int = 0,
    films: list[str] | None = None,
    can_make_films: bool = True,
    film_doping_tol: float = 0.02,
    scan_args: dict | None = None,
    point_args: dict | None = None,
    max_threshold_rel_err: float = 0.5,
    max_failure_fraction: float = 0.5,
    breaker_min_trials: int = 5,
    progress: Callable[[dict], None] | None = None,
    md: dict | None = None,
    fault_hook: Callable[[str, int], object] | None = None,
    film_dopings: dict[str, FilmDoping] | None = None,
    unusable_films: set[str] | None = None,
):
    """Run the closed loop until a budget or the target is reached; return the campaign's summary.

    ``lab_time_used_s``, ``trials_done`` and ``abandoned_done`` carry over what a resumed campaign
    already spent. The summary's ``trials`` counts trials measured or attempted on the bench (a
    run opened for them), ``abandoned`` the proposals left unmeasured (their indices spent): the
    same counts ``gainloop campaign status`` reads back from the catalog.
    ``films``: library ids the campaign may measure (default: every film).
    ``scan_args`` / ``point_args``: extra arguments of ``ase_fluence_scan`` / ``ase_point``.
    ``max_threshold_rel_err``: a scan whose fitted threshold has a larger relative error (or
    none that is a finite positive number) is a ``failed`` trial ("fit rejected"), its numbers
    kept in the record but never given to the optimiser as a result; it is not re-measured.
    ``fault_hook``: fault injection at the points of ``FAULT_POINTS`` (tests only; see the module doc).
    ``film_dopings``: films already measured (id -> ``FilmDoping``; a resumed campaign's), never
    measured again; ``unusable_films``: ids of films whose measurement failed, never used. The
    plan adds the films it measures (or fails to) to both.
    """
    if not isinstance(optimizer, Optimizer):
        lacking = [m for m in OPTIMIZER_METHODS if not callable(getattr(optimizer, m, None))]
        raise TypeError(
            f"the campaign's optimiser {type(optimizer).__name__} is not a core.protocols.Optimizer "
            f"(lacks {lacking or ['strategy', 'seed']})"
        )
    if budget_lab_h is None and max_trials is None and target_threshold_uJ_cm2 is None:
        raise ValueError("a campaign needs a stop: budget_lab_h, max_trials or target_threshold_uJ_cm2")
    if budget_lab_h is not None and not (math.isfinite(budget_lab_h) and budget_lab_h > 0):
        raise ValueError(f"budget_lab_h must be a positive number of hours, got {budget_lab_h!r}")
    if max_trials is not None and max_trials < 1:
        raise ValueError(f"max_trials must be >= 1, got {max_trials!r}")
    eligible = set(films) if films is not None else None
    measured: dict[str, FilmDoping] = film_dopings if film_dopings is not None else {}
    unusable: set[str] = unusable_films if unusable_films is not None else set()
    scan_args = dict(scan_args or {})
    point_args = dict(point_args or {})
    summary = {
        "campaign_uid": campaign_uid,
        "trials": trials_done,
        "failures": 0,
        "abandoned": abandoned_done,
        "lab_hours": lab_time_used_s / 3600.0,
        "stopped_by": "",
        "trial_uids": [],
        "films_measured": len(measured),
    }
    start_md = {
        "plan_name": "campaign",
        "campaign_uid": campaign_uid,
        "strategy": optimizer.strategy,
        "seed": optimizer.seed,
        "budget_lab_h": budget_lab_h,
        "max_trials": max_trials,
        "target_threshold_uJ_cm2": target_threshold_uJ_cm2,
        "resumed_at_trial": trials_done,
        **(md or {}),
    }
    t0 = lab_clock()
    film_failures: dict[str, str] = {}
    _library_ids = {e.id for e in bench.config.stage.library}  # films of known doping (the bench file's)
    recorder = _Recorder()
    _record = recorder.record

    def used_s() -> float:
        return lab_time_used_s + (lab_clock() - t0)

    def failures() -> int:
        return sum(r.status == "failed" for r in optimizer.history())

    def stop_reason() -> str:
        if budget_lab_h is not None and used_s() >= budget_lab_h * 3600.0:
            return "lab-time budget"
        if max_trials is not None and summary["trials"] >= max_trials:
            return "trial budget"
        best = optimizer.best()
        if target_threshold_uJ_cm2 is not None and best and best["threshold_uJ_cm2"] <= target_threshold_uJ_cm2:
            return "target reached"
        n = len(optimizer.history())
        if n >= breaker_min_trials and failures() > max_failure_fraction * n:
            return "breaker"
        return ""

    def trial(proposal: Proposal):
        """Mount or make the film, measure, judge the fit: the trial's ``TrialRecord``."""
        params = proposal.params
        index = proposal.trial_index
        trial_md = {
            "campaign_uid": campaign_uid,
            "trial_index": index,
            "proposal": proposal.as_dict(),
            "lab_time_used_s": used_s(),
        }
        t_start = lab_clock()
        status, outcome, reason, uid, sample_id, new_film = "completed", {}, "", "", "", False
        film: FilmDoping | None = None
        requested = float(params["doping"])
        try:
            sample_id, new_film = yield from mount_film(
                bench,
                requested,
                film_doping_tol,
                eligible,
                can_make_films,
                dopings={k: v.doping for k, v in measured.items()},
                exclude=unusable,
            )
            trial_md["new_film"] = new_film
            film = measured.get(sample_id)
            if new_film or (film is None and sample_id not in _library_ids):  # made here or in an earlier session
                film = yield from measure_film(sample_id, index, float(bench.stage.library[sample_id].doping))
                if film is None:  # never used blind
                    return (yield from film_failed(proposal, t_start, sample_id, new_film, requested))
            if film is not None:
                trial_md["film_doping"] = film.as_dict()
            if "fluence_uJ_cm2" in params:
                measure = ase_point(
                    bench,
                    sample_id,
                    fluence_uJ_cm2=float(params["fluence_uJ_cm2"]),
                    stripe_length_um=float(params["stripe_length_um"]),
                    md=trial_md,
                    **point_args,
                )
            else:
                measure = ase_fluence_scan(
                    bench, sample_id, stripe_length_um=float(params["stripe_length_um"]), md=trial_md, **scan_args
                )
            if fault_hook is not None:
                measure = _after_first_event(measure, lambda: _at(fault_hook, "measuring", index))
            result = yield from measure
            uid = result.pop("uid")
            outcome = result
            rejected = fit_rejection(outcome, max_threshold_rel_err)
            if rejected:
                status, reason = "failed", rejected
        except (RequestAbort, RequestStop):
            raise
        except AnalysisError as exc:
            status, reason = "infeasible", f"no ASE threshold found: {exc}"
        except Exception as exc:  # device faults, refused setpoints, NaN readbacks: recorded, never fed as numbers
            status, reason = "failed", f"{type(exc).__name__}: {exc}"
        yield from _at(fault_hook, "measured", index)
        return TrialRecord(
            proposal,
            status=status,
            outcome=outcome,
            reason=reason,
            lab_time_s=lab_clock() - t_start,
            sample_id=sample_id or "",
            new_film=new_film,
            run_uid=uid or "",
            **_film_columns(requested, film),
        )

    def measure_film(sample_id: str, index: int, requested: float):
        """The mounted new film's doping (``FilmDoping``; ``requested``: what it was made to have, its
        library doping), or None when it could not be measured (the film is then unusable and the
        failure recorded in ``film_failures``)."""
        film_md = {"campaign_uid": campaign_uid, "film_trial_index": index, "requested_doping": requested}
        try:
            m = yield from measure_film_doping(bench, md=film_md)
        except (RequestAbort, RequestStop):
            raise
        except AbsorptionError as exc:
            why = f"{exc.reason} ({exc.detail})"
        except Exception as exc:  # device faults, refused setpoints: the film is not measured either
            why = f"{type(exc).__name__}: {exc}"
        else:
            film = FilmDoping(float(m.doping_e_per_dot), float(m.doping_err_e_per_dot), requested, str(m.uid))
            measured[sample_id] = film
            summary["films_measured"] = len(measured)
            return film
        unusable.add(sample_id)
        film_failures[sample_id] = why
        return None

    def film_failed(proposal: Proposal, t_start: float, sample_id: str, new_film: bool, requested: float):
        yield from _at(fault_hook, "measured", proposal.trial_index)
        return TrialRecord(
            proposal,
            status="failed",
            reason=f"{FILM_NOT_MEASURED}: {film_failures[sample_id]}",
            lab_time_s=lab_clock() - t_start,
            sample_id=sample_id,
            new_film=new_film,
            requested_doping=requested,
        )

    def record_proposal(p: Proposal, replayed: bool):
        yield from _in_campaign_run(_record("proposals", proposal_row(p, replayed=replayed)))

    def record_outcome(record: TrialRecord):
        """Give the trial to the optimiser, then store it (with the campaign's lab time and best after it)."""
        optimizer.ingest([record.result])
        best = optimizer.best()
        record = replace(
            record,
            campaign_lab_time_s=used_s(),
            best_threshold_uJ_cm2=best["threshold_uJ_cm2"] if best else math.nan,
        )
        yield from _in_campaign_run(
            _record("outcomes", record.to_row(), before_save=_at(fault_hook, "recording", record.trial_index))
        )
        return record

    def abandon(proposals, why: str):
        """Record proposals that will not be measured as ``abandoned`` (their indices are spent)."""
        for p in proposals:
            yield from record_outcome(TrialRecord(p, status="abandoned", reason=why))
            summary["abandoned"] += 1

    def loop():
        replay = list(optimizer.pending())  # a resumed campaign's recorded, never measured proposals
        while not (reason := stop_reason()):
            if replay:
                proposals, replayed, replay = replay, True, []
            else:
                proposals, replayed = optimizer.suggest(), False
            for p in proposals:
                yield from record_proposal(p, replayed)
            for k, p in enumerate(proposals):
                yield from _at(fault_hook, "proposed", p.trial_index)
                yield from bps.checkpoint()  # a deferred pause stops here, between trials
                record = yield from trial(p)
                yield from record_outcome(record)
                summary["trials"] += 1
                summary["failures"] = failures()
                summary["lab_hours"] = used_s() / 3600.0
                if record.run_uid:
                    summary["trial_uids"].append(record.run_uid)
                yield from _in_campaign_run(
                    _record("model", {"trial_index": p.trial_index, "state": optimizer.state()})
                )
                if progress is not None:
                    progress({**summary, "best": optimizer.best()})
                if why := stop_reason():
                    yield from abandon(proposals[k + 1 :], f"campaign stopped ({why}) before measuring it")
                    break
        if replay:  # stopped before the replayed proposals could be measured
            yield from abandon(replay, f"campaign stopped ({reason}) before measuring it")
        summary["stopped_by"] = reason
        summary["best"] = optimizer.best()
        if reason == "breaker":
            n = len(optimizer.history())
            raise CampaignStop(
                f"campaign {campaign_uid} stopped: {failures()} of {n} trials failed "
                f"(more than {max_failure_fraction:.0%}); last reason: "
                f"{next((r.reason for r in reversed(optimizer.history()) if r.status == 'failed'), '')}"
            )

    def close(exit_status: str, reason: str = ""):
        yield from _in_campaign_run(bps.close_run(exit_status=exit_status, reason=reason))

    def on_error(exc):
        if isinstance(exc, RequestAbort | RequestStop):
            return  # the RunEngine closes the record with its own exit status and reason (e.g. "abort")
        return (yield from close("fail", f"{type(exc).__name__}: {exc}"))

    yield from _in_campaign_run(bps.open_run(md=start_md))
    yield from bpp.contingency_wrapper(loop(), except_plan=on_error, else_plan=lambda: close("success"))
    return summary
