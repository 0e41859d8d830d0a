"""``gainloop twin calibrate``: the twin fitted to a sample's stored runs, written and stored.

Reads the stored stripe runs (ASE fluence scans, VSL scans, single ASE points), pump-probe (TA) runs and
DFB lasing runs (``lasing_threshold``) of one or more library samples (a film and the DFB device made of the
same dots: their runs must name one preset sample) from the catalog, turns each stripe run into a
``twin.calibration.StripeRun`` (per usable event: the pump's fluence readback, the slit, the exposure and
the integrated counts; saturated and empty reads dropped), each TA run into a ``twin.calibration.TaRun``
(per reading: the delay, the pump's <N> the plan set and the measured d(alpha)/alpha0) and each lasing run
into a ``twin.calibration.LasingRun`` (per usable event: the pump's fluence readback, the exposure, the
analyser angle and the integrated counts; saturated and empty reads dropped; the device's photo-damage
dose counted over its reads as for a film), fits the preset parameters by MAP
(``twin.calibration.calibrate``), then

* writes a presets file any twin command takes (``--presets``) whose header lists the run uids,
  the date and the fit quality (``write_presets``; an existing file is replaced only once the fit
  has succeeded);
* stores the calibration as its own run in the catalog (``store_calibration``: plan name
  ``twin_calibrate``; a ``parameters`` stream, one event per parameter with value, error and
  preset; a ``runs`` stream, one event per source run with its residuals);
* writes an HTML report with PNG figures (``gainloop.report.calibration``).

Runs of other kinds (absorption, stability, lasing spectra and polarisation scans) are not modelled by
the calibration: they are listed as skipped, and a selection with no stripe, TA or lasing run at all is an
error that says what to measure. A lasing run that lacks a column the model needs is an error naming it.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from core.errors import GainloopError

__all__ = [
    "CALIBRATION_PLANS",
    "LASING_COLUMNS",
    "LASING_PLANS",
    "STRIPE_PLANS",
    "TA_PLANS",
    "CalibrationInputError",
    "SelectedRuns",
    "lasing_run",
    "presets_toml",
    "select_runs",
    "store_calibration",
    "stripe_run",
    "ta_run",
    "write_presets",
]

#: Plans whose runs the calibration models (stripe acquisitions read by the spectrometer).
STRIPE_PLANS: tuple[str, ...] = ("ase_fluence_scan", "vsl_scan", "ase_point")
#: Plans whose runs the calibration models as TA bleach traces.
TA_PLANS: tuple[str, ...] = ("pump_probe",)
#: Plans whose runs the calibration models as a DFB device's output versus fluence (spectrometer counts).
LASING_PLANS: tuple[str, ...] = ("lasing_threshold",)
CALIBRATION_PLANS: tuple[str, ...] = STRIPE_PLANS + TA_PLANS + LASING_PLANS
#: The event columns a lasing run needs.
LASING_COLUMNS: tuple[str, ...] = (
    "pump_fluence",
    "spectrometer_exposure",
    "spectrometer_integrated",
    "spectrometer_saturated",
    "polarizer_angle",
)
#: Fewest usable acquisitions a calibration needs.
MIN_POINTS = 8


class CalibrationInputError(GainloopError):
    """The runs a calibration was asked for cannot be used (none, wrong kind, wrong sample)."""


@dataclass
class SelectedRuns:
    """The runs of a calibration: usable stripe runs and, for each skipped run, why."""

    runs: list = field(default_factory=list)  # twin.calibration.StripeRun, TaRun and LasingRun
    skipped: list[str] = field(default_factory=list)
    preset: str = ""


def _usable(start: dict, stop: dict | None) -> str | None:
    """Why a stored run cannot be used (None: it can)."""
    if stop is None:
        return "interrupted (no stop document)"
    if stop.get("exit_status") != "success":
        return f"ended with {stop.get('exit_status')}"
    if start.get("plan_name") not in CALIBRATION_PLANS:
        return f"a {start.get('plan_name')!r} run (the calibration models {', '.join(CALIBRATION_PLANS)} runs)"
    return None


def _preset_of(start: dict, presets, sample: str) -> str:
    twin = start.get("twin") or {}
    name = twin.get("preset") if isinstance(twin, dict) else None
    if name:
        return str(name)
    if sample in presets.sample:
        return sample
    raise CalibrationInputError(
        f"run {start.get('uid')} of {sample!r} does not say which preset describes its film, and {sample!r} is "
        f"not a sample of the presets ({', '.join(sorted(presets.sample))}); name the preset sample with --sample"
    )


#: A whole run uid (a UUID4 as bluesky writes it).
_WHOLE_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _doses(presets, preset: str, fluence, exposure, shutter, dose_before: float) -> tuple[np.ndarray, float]:
    """The sample's photo-damage dose before each read of a run (the pump's pulses of the reads before it,
    from ``dose_before``) and after the run: fluence in uJ/cm^2, exposure in s, shutter 1 open / 0 closed."""
    from twin.damage import damage_per_pulse

    pulses = exposure * presets.setup.pump_repetition_rate_kHz * 1e3
    delivered = np.where((shutter > 0) & np.isfinite(fluence) & (fluence > 0), fluence, 0.0)
    pulses = np.where(np.isfinite(pulses), pulses, 0.0)
    increments = pulses * damage_per_pulse(delivered, presets.get(preset).damage)
    dose = dose_before + np.concatenate([[0.0], np.cumsum(increments)[:-1]])
    return dose, float(dose_before + np.sum(increments))


def stripe_run(run, presets, sample: str, dose_before: float = 0.0):
    """The usable acquisitions of one stored stripe run as a ``StripeRun`` (None if it has none), and the
    film's photo-damage dose after it (``twin.damage``: every pulse of every read, saturated ones included,
    from ``dose_before``, the dose of the film's earlier runs)."""
    from gainloop.replay import stream_columns
    from twin.calibration import StripeRun

    start = run.start
    try:
        primary = run["primary"]  # one request ("primary" in run would be a second)
    except KeyError:
        return None, dose_before
    cols = stream_columns(primary, arrays=False)
    need = ("pump_fluence", "slit", "spectrometer_exposure", "spectrometer_integrated", "spectrometer_saturated")
    if any(k not in cols for k in need):
        return None, dose_before
    fluence = np.asarray(cols["pump_fluence"], dtype=float)
    length = np.asarray(cols["slit"], dtype=float)
    exposure = np.asarray(cols["spectrometer_exposure"], dtype=float)
    counts = np.asarray(cols["spectrometer_integrated"], dtype=float)
    saturated = np.asarray(cols["spectrometer_saturated"]).astype(bool)
    shutter = np.asarray(cols.get("pump_shutter", np.ones_like(fluence)), dtype=float)
    preset = _preset_of(start, presets, sample)
    dose, dose_after = _doses(presets, preset, fluence, exposure, shutter, dose_before)
    ok = ~saturated & np.isfinite(fluence) & np.isfinite(length) & np.isfinite(exposure) & np.isfinite(counts)
    ok &= (fluence > 0) & (length > 0) & (exposure > 0)
    if not np.any(ok):
        return None, dose_after
    doping = float(start.get("doping", math.nan))
    if not math.isfinite(doping):
        raise CalibrationInputError(f"run {start['uid']} does not record the film's doping; it cannot be calibrated on")
    stripe = StripeRun(
        uid=str(start["uid"]),
        plan=str(start.get("plan_name")),
        sample=preset,
        doping=doping,
        fluence_uJ_cm2=fluence[ok],
        stripe_length_um=length[ok],
        exposure_s=exposure[ok],
        counts=counts[ok],
        damage_dose=dose[ok],
    )
    return stripe, dose_after


def _grating_period_nm(start: dict) -> float | None:
    """The DFB device's grating period (nm) as the bench's library gives it, where the run records it (the
    twin's start document: its sample's dfb table); None: the preset's dfb table."""
    twin = start.get("twin")
    dfb = ((twin.get("sample") or {}).get("dfb") or {}) if isinstance(twin, dict) else {}
    period = dfb.get("grating_period_nm") if isinstance(dfb, dict) else None
    return None if period is None else float(period)


def lasing_run(run, presets, sample: str, dose_before: float = 0.0):
    """The usable reads of one stored DFB lasing run (``lasing_threshold``) as a ``LasingRun`` (None if it has
    none), and the device's photo-damage dose after it (every pulse of every read from ``dose_before``, as for a
    film). Per usable event: the pump's fluence readback, the exposure, the analyser angle and the integrated
    counts; saturated reads, NaNs and reads without pump dropped. ``CalibrationInputError`` for a run that lacks
    a column the model needs, or a preset sample without a dfb table."""
    from gainloop.replay import stream_columns
    from twin.calibration import LasingRun

    start = run.start
    uid = str(start.get("uid"))
    try:
        primary = run["primary"]
    except KeyError:
        return None, dose_before
    cols = stream_columns(primary, arrays=False)
    missing = [k for k in LASING_COLUMNS if k not in cols]
    if missing:
        raise CalibrationInputError(
            f"lasing run {uid} has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''} in its primary "
            f"stream (a lasing_threshold run records {', '.join(LASING_COLUMNS)}); it cannot be calibrated on: "
            "leave it out (--runs)"
        )
    preset = _preset_of(start, presets, sample)
    if presets.get(preset).dfb is None:
        raise CalibrationInputError(
            f"lasing run {uid} is of preset sample {preset!r}, which has no dfb table (the device's grating design)"
        )
    fluence = np.asarray(cols["pump_fluence"], dtype=float)
    exposure = np.asarray(cols["spectrometer_exposure"], dtype=float)
    counts = np.asarray(cols["spectrometer_integrated"], dtype=float)
    saturated = np.asarray(cols["spectrometer_saturated"]).astype(bool)
    angle = np.asarray(cols["polarizer_angle"], dtype=float)
    shutter = np.asarray(cols.get("pump_shutter", np.ones_like(fluence)), dtype=float)
    dose, dose_after = _doses(presets, preset, fluence, exposure, shutter, dose_before)
    ok = ~saturated & np.isfinite(fluence) & np.isfinite(exposure) & np.isfinite(counts) & np.isfinite(angle)
    ok &= (fluence > 0) & (exposure > 0) & (shutter > 0)
    if not np.any(ok):
        return None, dose_after
    doping = float(start.get("doping", math.nan))
    if not math.isfinite(doping):
        raise CalibrationInputError(f"run {uid} does not record the device's doping; it cannot be calibrated on")
    lasing = LasingRun(
        uid=uid,
        plan=str(start.get("plan_name")),
        sample=preset,
        doping=doping,
        fluence_uJ_cm2=fluence[ok],
        exposure_s=exposure[ok],
        counts=counts[ok],
        analyser_angle_deg=angle[ok],
        damage_dose=dose[ok],
        grating_period_nm=_grating_period_nm(start),
    )
    return lasing, dose_after


def ta_run(run, presets, sample: str):
    """The usable readings of one stored pump-probe run as a ``TaRun`` (None if it has none): per reading the
    delay (ps), the pump's <N> the plan set (``ta_pump_excitons``: kappa x the fluence setpoint) and the
    measured d(alpha)/alpha0 (``ta_signal``); readings at negative delays or with a NaN dropped."""
    from gainloop.replay import stream_columns
    from twin.calibration import TaRun

    start = run.start
    try:
        primary = run["primary"]
    except KeyError:
        return None
    cols = stream_columns(primary, arrays=False)
    if any(k not in cols for k in ("ta_delay", "ta_signal", "ta_pump_excitons")):
        return None
    delay = np.asarray(cols["ta_delay"], dtype=float)
    signal = np.asarray(cols["ta_signal"], dtype=float)
    level = np.asarray(cols["ta_pump_excitons"], dtype=float)
    ok = np.isfinite(delay) & np.isfinite(signal) & np.isfinite(level) & (delay >= 0) & (level >= 0)
    if not np.any(ok):
        return None
    plan_args = start.get("plan_args") or {}
    doping = float(start.get("doping", plan_args.get("doping", math.nan)))
    if not math.isfinite(doping):
        raise CalibrationInputError(f"run {start['uid']} does not record the film's doping; it cannot be calibrated on")
    return TaRun(
        uid=str(start["uid"]),
        plan=str(start.get("plan_name")),
        sample=_preset_of(start, presets, sample),
        doping=doping,
        delay_ps=delay[ok],
        pump_excitons=level[ok],
        signal=signal[ok],
    )


def _sample_ids(sample) -> tuple[str, ...]:
    """The library sample ids of a selection: one id, comma-separated ids or a sequence of them."""
    items = [sample] if isinstance(sample, str) else list(sample)
    ids = tuple(dict.fromkeys(p.strip() for item in items for p in str(item).split(",") if p.strip()))
    if not ids:
        raise CalibrationInputError("no sample named: give the sample id of the stored runs (e.g. cas_doped-film)")
    return ids


def select_runs(
    catalog,
    presets,
    sample,
    *,
    uids: list[str] | None = None,
    campaign: str | None = None,
    since: str | None = None,
) -> SelectedRuns:
    """The stored stripe, pump-probe and DFB lasing runs of ``sample`` (a library sample id, its ``sample_id``
    in the runs' start documents; or several, comma-separated or a sequence: e.g. a film and the DFB device
    made of the same dots, whose runs must then name one preset sample): the named ``uids`` (each must be of
    one of them), or those of a campaign, or all of them (``since`` a date).

    ``CalibrationInputError`` when no usable run is left (saying what was found and what to measure).
    """
    from gainloop.records import search_runs
    from gainloop.runs import _time_bounds, _zone

    samples = _sample_ids(sample)
    named = ", ".join(repr(s) for s in samples)
    chosen: list = []
    if uids:
        for u in uids:
            # a whole uid is fetched directly (RunNotFoundError if absent); a prefix is resolved first
            whole = _WHOLE_UID.fullmatch(str(u).strip().lower())
            run = catalog.run(whole.group(0) if whole else catalog.resolve_uid(u))
            if run.start.get("sample_id") not in samples:
                raise CalibrationInputError(
                    f"run {run.start['uid']} is of sample {run.start.get('sample_id')!r}, not {named}"
                )
            chosen.append(run)
    elif campaign:
        cuid = catalog.resolve_uid(campaign, key="campaign_uid", what="campaign")
        chosen = [r for r in search_runs(catalog, campaign_uid=cuid) if r.start.get("sample_id") in samples]
    else:
        chosen = [r for s in samples for r in search_runs(catalog, sample_id=s)]
        if since is not None:
            t_since, _ = _time_bounds(since, None, _zone(None))
            chosen = [r for r in chosen if float(r.start.get("time", 0.0)) >= t_since]
    out = SelectedRuns()
    presets_seen = set()
    chosen = sorted(chosen, key=lambda r: float(r.start.get("time", 0.0)))
    # each film's (or device's) photo-damage dose, accumulated over its runs in the order they were measured
    doses: dict[str, float] = {}
    for run in chosen:
        start, stop = run.start, run.metadata.get("stop")
        why = _usable(start, stop)
        plan = start.get("plan_name")
        sid = str(start.get("sample_id"))
        if why is None and plan in TA_PLANS:
            tr = ta_run(run, presets, sid)
            if tr is None:
                why = "no usable reading"
            else:
                out.runs.append(tr)
                presets_seen.add(tr.sample)
        elif why is None:
            read = lasing_run if plan in LASING_PLANS else stripe_run
            got, doses[sid] = read(run, presets, sid, doses.get(sid, 0.0))
            if got is None:
                why = "no usable acquisition (every read saturated or empty)"
            else:
                out.runs.append(got)
                presets_seen.add(got.sample)
        if why is not None:
            out.skipped.append(f"{str(start.get('uid'))[:8]}: {why}")
    where = f" since {since}" if since else (f" of campaign {campaign}" if campaign else "")
    if not out.runs:
        found = f" (skipped: {'; '.join(out.skipped)})" if out.skipped else ""
        first = samples[0]
        raise CalibrationInputError(
            f"no stored stripe, pump-probe or lasing runs of sample {named}{where} to calibrate on{found}; measure "
            "an ASE fluence scan "
            f"through threshold and a VSL scan above it, e.g. `gainloop measure ase_fluence_scan --sample {first}` "
            f"and `gainloop measure vsl_scan --sample {first} --fluence F -a stripe_lengths_um=[...]`, or a DFB "
            "device's `lasing_threshold`"
        )
    if len(presets_seen) > 1:
        raise CalibrationInputError(f"the runs of {named} name several presets ({', '.join(sorted(presets_seen))})")
    from twin.calibration import TaRun

    n = sum(r.signal.size if isinstance(r, TaRun) else r.counts.size for r in out.runs)
    if n < MIN_POINTS:
        raise CalibrationInputError(
            f"only {n} usable acquisitions of {named}{where}; a calibration needs at least {MIN_POINTS}: measure an "
            "ASE fluence scan through threshold"
        )
    out.preset = presets_seen.pop()
    return out


# ----------------------------------------------------------------------------- the presets file
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v!r} to TOML")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"cannot write a {type(v).__name__} to a presets file")


def _toml_tables(prefix: str, data: dict, lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append(f"\n[{prefix}]")
    for k, v in scalars.items():
        lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables.items():
        _toml_tables(f"{prefix}.{k}" if prefix else k, v, lines)


def presets_toml(presets, header: list[str]) -> str:
    """The presets as a TOML file (every parameter, units in the key names) under ``header`` comment lines."""
    lines = [f"# {h}" if h else "#" for h in header]
    _toml_tables("", presets.model_dump(mode="json", exclude_none=True), lines)
    return "\n".join(lines) + "\n"


def write_presets(result, path: Path, *, presets_source: str, when: str) -> None:
    """Write the calibrated presets to ``path`` (via a temporary file, so a failure leaves the old one)."""
    from twin.presets import load_presets

    header = [
        f"gainloop twin calibrate: sample {result.sample}, {when}",
        f"fitted on {len(result.run_uids)} stored runs ({result.n_points} acquisitions) from {presets_source}:",
        *(f"  run {uid}" for uid in result.run_uids),
        f"fit quality: chi2 {result.chi2:.1f} for {result.dof} degrees of freedom "
        f"(reduced chi2 {result.reduced_chi2:.3f})",
        "calibrated parameters (MAP +- standard error, Laplace):",
        *(f"  {e.name} = {e.value:.6g} +- {e.error:.2g} {e.unit} (was {e.preset:.6g})" for e in result.estimates),
        *(f"note: {f}" for f in result.flags),
        "",
    ]
    text = presets_toml(result.presets, header)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    try:
        load_presets(tmp)  # what we write must load
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


# ----------------------------------------------------------------------------- the calibration run
def calibration_documents(result, *, sample: str, presets_source: str, out_path: str | None) -> list[tuple[str, dict]]:
    """The calibration as a run's documents (event_model): start, the ``parameters`` and ``runs`` streams, stop."""
    from event_model import compose_run

    t0 = time.time()
    md = {
        "plan_name": "twin_calibrate",
        "plan_args": {"sample": sample, "runs": list(result.run_uids), "params": [e.name for e in result.estimates]},
        "sample_id": sample,
        "preset_sample": result.sample,
        "calibration": result.as_dict(),
        "presets_source": presets_source,
        "presets_out": out_path,
    }
    run = compose_run(time=t0, metadata=md)
    docs = [("start", run.start_doc)]
    keys = {
        "name": {"source": "calibration", "dtype": "string", "shape": []},
        "value": {"source": "calibration", "dtype": "number", "shape": []},
        "error": {"source": "calibration", "dtype": "number", "shape": []},
        "preset": {"source": "calibration", "dtype": "number", "shape": []},
    }
    desc = run.compose_descriptor(name="parameters", data_keys=keys)
    docs.append(("descriptor", desc.descriptor_doc))
    for i, e in enumerate(result.estimates):
        data = {"name": e.name, "value": e.value, "error": e.error, "preset": e.preset}
        docs.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, t0), seq_num=i + 1)))
    keys = {
        "run_uid": {"source": "calibration", "dtype": "string", "shape": []},
        "n_points": {"source": "calibration", "dtype": "integer", "shape": []},
        "chi2": {"source": "calibration", "dtype": "number", "shape": []},
        "rms_residual": {"source": "calibration", "dtype": "number", "shape": []},
    }
    desc = run.compose_descriptor(name="runs", data_keys=keys)
    docs.append(("descriptor", desc.descriptor_doc))
    for i, (uid, r) in enumerate(result.residuals.items()):
        data = {
            "run_uid": uid,
            "n_points": int(r.size),
            "chi2": float(r @ r),
            "rms_residual": float(np.sqrt(np.mean(r**2))),
        }
        docs.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, t0), seq_num=i + 1)))
    docs.append(("stop", run.compose_stop(exit_status="success", time=time.time())))
    return docs


def store_calibration(catalog, result, *, sample: str, presets_source: str, out_path: str | None) -> str:
    """Store the calibration as its own run in the catalog; returns its uid."""
    docs = calibration_documents(result, sample=sample, presets_source=presets_source, out_path=out_path)
    writer = catalog.writer()
    for name, doc in docs:
        writer(name, doc)
    return docs[0][1]["uid"]


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
