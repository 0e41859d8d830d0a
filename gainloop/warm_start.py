"""A warm start from stored fluence scans: ``campaign run --warm-start QUERY``.

A QUERY selects stored ``ase_fluence_scan`` runs (campaign trials or scans measured on their own,
e.g. with ``gainloop measure ase_fluence_scan``) by their start documents: comma-separated
``key=value`` pairs, e.g. ``sample_id=cas_doped-film`` or ``sample_id=cas_doped-film,since=2026-11-01``.
``since`` and ``until`` are dates (as ``gainloop runs`` reads them); every other key must equal the start
document's value (strings, or numbers where the value reads as one). Of the runs found, a warm start
keeps those that ended ``success`` with a fitted threshold the campaign would accept (its
``max_threshold_rel_err``), on a film of the campaign's material (the bench file's library says which;
a film made on request is of ``[stage] new_film_material``): each becomes one completed trial at its
stripe length (um) and its film's doping (the measured one where the film's absorption was measured,
else the library's), with the scan's threshold (uJ/cm^2).

A new campaign pins its queries to the moment it starts (``before=<Unix s>`` appended, stored in its
config), so a resume reads the same runs and never its own trials.
"""

from __future__ import annotations

import math

from core.errors import GainloopError
from core.trial import TrialResult

__all__ = ["WarmStartError", "is_run_query", "parse_run_query", "pin_run_query", "stored_scan_results"]

#: The plan whose stored runs a query selects (a nested trial's measurement).
SCAN_PLAN = "ase_fluence_scan"
#: Keys of a query that bound the runs' start time rather than match a start-document value.
TIME_KEYS = ("since", "until", "before")


class WarmStartError(GainloopError, ValueError):
    """A warm-start query that is malformed or selects nothing usable."""


def is_run_query(entry: str) -> bool:
    """Whether a ``--warm-start`` entry is a QUERY of stored runs (``key=value`` pairs) rather than a campaign uid."""
    return "=" in entry


def parse_run_query(entry: str) -> dict[str, str]:
    """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}``; ``WarmStartError`` on an empty key or value or a repeated key."""
    out: dict[str, str] = {}
    for part in entry.split(","):
        key, sep, value = part.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise WarmStartError(
                f"warm-start query {entry!r}: {part.strip()!r} is not key=value; allowed: comma-separated key=value "
                "pairs of the runs' start documents (e.g. sample_id=cas_doped-film), with since=DATE and until=DATE"
            )
        if key in out:
            raise WarmStartError(f"warm-start query {entry!r}: key {key!r} given twice")
        out[key] = value
    if "plan_name" in out and out["plan_name"] != SCAN_PLAN:
        raise WarmStartError(
            f"warm-start query {entry!r}: only {SCAN_PLAN} runs carry a threshold for the model "
            f"(plan_name={out['plan_name']})"
        )
    return out


def pin_run_query(entry: str, before_s: float) -> str:
    """The query with ``before=<before_s>`` (Unix s) appended, unless it has one: what a campaign stores."""
    query = parse_run_query(entry)
    if "before" in query:
        return entry
    return f"{entry},before={before_s:.6f}"


def _value(text: str):
    """A query value as the start document would hold it: int, float or the string itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def stored_scan_results(
    catalog,
    entry: str,
    *,
    bench_config,
    material: str | None,
    max_rel_err: float,
    exclude_run_uids: set[str] = frozenset(),
) -> list[tuple[str, TrialResult]]:
    """(run uid, completed trial) of each usable stored scan the QUERY selects (see the module doc), in time order.

    ``bench_config``: the campaign's ``devices.config.BenchConfig`` (the films' materials);
    ``material``: the campaign's; ``exclude_run_uids``: runs already in the warm start (another entry's).
    ``WarmStartError`` if the query is malformed or no usable run is left (saying what was found)."""
    from gainloop.records import run_analysis, search_runs
    from gainloop.runs import _time_bounds, _zone
    from plans.campaign import fit_rejection

    query = parse_run_query(entry)
    equals = {k: _value(v) for k, v in query.items() if k not in TIME_KEYS}
    equals["plan_name"] = SCAN_PLAN
    since = until = None
    if "since" in query or "until" in query:
        try:
            since, until = _time_bounds(query.get("since"), query.get("until"), _zone(None))
        except GainloopError as exc:
            raise WarmStartError(f"warm-start query {entry!r}: {exc}") from None
    before = float(query["before"]) if "before" in query else None
    library = {e.id: e for e in bench_config.stage.library}
    out: list[tuple[str, TrialResult]] = []
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    runs = search_runs(catalog, **equals)
    for run in runs:
        start = run.start
        t = float(start.get("time", 0.0))
        late = (until is not None and t >= until) or (before is not None and t >= before)
        if late or (since is not None and t < since):
            continue
        if start["uid"] in exclude_run_uids:
            continue
        stop = run.metadata.get("stop") or {}
        if stop.get("exit_status") != "success":
            skip(f"ended {stop.get('exit_status') or 'without a stop document'}")
            continue
        sample_id = str(start.get("sample_id", ""))
        entry_ = library.get(sample_id)
        film_material = entry_.material if entry_ is not None else bench_config.stage.new_film_material
        if entry_ is not None and entry_.kind != "film":
            skip("not a film")
            continue
        if material is not None and film_material != material:
            skip(f"of another material ({film_material})")
            continue
        outcome = run_analysis(run)
        if "threshold_uJ_cm2" not in outcome or fit_rejection(outcome, max_rel_err):
            skip("no accepted threshold fit")
            continue
        length = (start.get("plan_args") or {}).get("stripe_length_um")
        film = dict(start.get("film_doping") or {})
        doping = film.get("measured_doping", start.get("doping"))
        if length is None or doping is None or not math.isfinite(float(doping)):
            skip("no stripe length or doping recorded")
            continue
        observed, observed_err = {}, {}
        if "measured_doping" in film and math.isfinite(float(film["measured_doping"])):
            observed = {"doping": float(film["measured_doping"])}
            err = float(film.get("measured_doping_err", math.nan))
            if math.isfinite(err):
                observed_err = {"doping": err}
        out.append(
            (
                str(start["uid"]),
                TrialResult(
                    trial_index=len(out),
                    params={"stripe_length_um": float(length), "doping": float(film.get("requested_doping", doping))},
                    status="completed",
                    outcome={
                        k: float(outcome[k]) for k in ("threshold_uJ_cm2", "threshold_err_uJ_cm2") if k in outcome
                    },
                    observed_params=observed,
                    observed_err=observed_err,
                ),
            )
        )
    if not out:
        found = "; ".join(f"{n} {why}" for why, n in skipped.items())
        raise WarmStartError(
            f"warm-start query {entry!r} selects no usable {SCAN_PLAN} run of material {material!r}"
            + (f" (found {len(runs)}: {found})" if runs else " (none found)")
            + "; check the key=value pairs against `gainloop runs`"
        )
    return out
