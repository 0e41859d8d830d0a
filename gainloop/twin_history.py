"""The twin's films remember their history: each command continues a film's photo-damage from the catalog.

A real film is damaged by every command that pumped it. The in-process twin is built anew by each
command, so without this its films would start undamaged every time, and runs measured by separate
commands would not fit one film (a calibration accumulates a film's dose over all its stored runs).

``restore_film_doses(bench, catalog)``: for each film of the twin's library, the film's latest stored
run on this twin bench (``devices`` "twin", the bench's name) records the dose at its start (``twin.
film_dose`` in its start document); the dose its own reads added (every pulse of every read with the
shutter open, at the pump's fluence readback: ``twin.damage``, as ``gainloop.calibrate`` counts it) is
added to it, and the twin's film is given that dose. A film without such a run keeps the dose it has
(0: as made). On a real bench it does nothing (the films carry their own history).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["restore_film_doses", "run_dose_added"]


def run_dose_added(run, damage, repetition_rate_kHz: float) -> float:
    """The photo-damage dose a stored stripe run's reads added to its film (0 without a primary stream or
    the columns it needs): pulses (exposure x repetition rate) x ``twin.damage.damage_per_pulse`` at the
    pump's fluence readback, for each read with the shutter open."""
    from gainloop.replay import stream_columns
    from twin.damage import damage_per_pulse

    try:
        primary = run["primary"]
    except KeyError:
        return 0.0
    cols = stream_columns(primary, arrays=False)
    if "pump_fluence" not in cols or "spectrometer_exposure" not in cols:
        return 0.0
    fluence = np.asarray(cols["pump_fluence"], dtype=float)
    exposure = np.asarray(cols["spectrometer_exposure"], dtype=float)
    shutter = np.asarray(cols.get("pump_shutter", np.ones_like(fluence)), dtype=float)
    pulses = np.where(np.isfinite(exposure), exposure, 0.0) * repetition_rate_kHz * 1e3
    delivered = np.where((shutter > 0) & np.isfinite(fluence) & (fluence > 0), fluence, 0.0)
    return float(np.sum(pulses * damage_per_pulse(delivered, damage)))


def restore_film_doses(bench, catalog) -> dict[str, float]:
    """Give the twin's library films the doses their stored runs reached (see the module doc); returns
    {film id: dose} of the films restored ({} on a real bench, an empty history or a ``catalog`` that is not
    one to search)."""
    from tiled.queries import Key

    engine = getattr(bench, "engine", None)
    if engine is None or not hasattr(engine, "restore_film_dose"):
        return {}
    client = getattr(catalog, "client", None)  # (the drain of the spool first: Catalog.client settles)
    if client is None:  # a document sink that is not a catalog (e.g. a sweep worker's): no history to read
        return {}
    ours = client.search(Key("start.devices") == "twin").search(Key("start.bench_name") == bench.config.bench.name)
    restored: dict[str, float] = {}
    for entry in bench.config.stage.library:
        latest = list(ours.search(Key("start.sample_id") == entry.id).sort(("start.time", -1)).values().head(1))
        if not latest:
            continue
        run = latest[0]
        start_dose = (run.start.get("twin") or {}).get("film_dose")
        if start_dose is None or not math.isfinite(float(start_dose)):
            continue  # stored before films carried their dose: nothing to continue from
        sample = engine.true_sample(entry)
        added = run_dose_added(run, sample.damage, engine.presets.setup.pump_repetition_rate_kHz)
        dose = float(start_dose) + added
        engine.restore_film_dose(entry.id, dose)
        restored[entry.id] = dose
    return restored
