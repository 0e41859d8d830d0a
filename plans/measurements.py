"""The paper's measurements as Bluesky plans (generators of messages; no blocking calls).

Each plan takes a ``devices.Bench`` (EPICS or the in-process twin: the same
interface), mounts the sample, measures, analyses its own data with the pure
functions of ``plans.analysis`` and records the result in an ``analysis`` stream
of the same run, so that a replay re-derives and compares it. Every plan:

* carries standard metadata: ``plan_name``, ``plan_args``, ``sample_id``,
  ``doping``, ``devices`` ("twin" with the twin's parameters, or "bench"),
  ``units`` and ``hints`` (the user's ``md`` is merged last);
* checks every fluence it sends against the bench limit (``plans.safety``), on
  top of the device's soft limit and the IOC's interlock;
* closes the pump shutter when it ends, however it ends.
"""

from __future__ import annotations

import math

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from devices import check_slit
from plans.analysis import AnalysisError, kink_threshold, vsl_gain
from plans.safety import check_fluence, fluence_guard

__all__ = ["ase_fluence_scan", "bench_metadata", "vsl_scan"]

_UNITS = {
    "fluence": "uJ/cm^2",
    "stripe_length": "um",
    "doping": "electrons/dot",
    "integrated": "counts",
    "exposure": "s",
    "threshold": "uJ/cm^2",
    "gnet": "1/cm",
}


def bench_metadata(bench, sample_id: str) -> dict:
    """Metadata about the devices and the sample: bench or twin (with the twin's parameters)."""
    entry = bench.config.library_entry(sample_id)
    md = {
        "sample_id": sample_id,
        "sample_kind": entry.kind,
        "doping": entry.doping,
        "bench_name": bench.config.bench.name,
        "fluence_limit_uJ_cm2": bench.config.bench.fluence_limit_uJ_cm2,
    }
    engine = bench.engine
    if engine is None:
        md["devices"] = "bench"
    else:
        md["devices"] = "twin"
        md["twin"] = {
            "seed": engine.seed,
            "preset": entry.preset or bench.config.twin.new_film_preset,
            "sample": engine._sample_for(entry).model_dump(mode="json"),
            "setup": engine.presets.setup.model_dump(mode="json"),
        }
    return md


def _measurement(bench, plan_name: str, plan_args: dict, dimension, md: dict | None, body):
    """Run ``body(results)`` as one run with the standard metadata (the user's ``md`` last),
    the shutter closed at the end and every fluence checked; return ``{"uid", **results}``."""
    start_md = {
        "plan_name": plan_name,
        "plan_args": plan_args,
        "units": _UNITS,
        "hints": {"dimensions": [([dimension.name], "primary")]},
        **bench_metadata(bench, plan_args["sample_id"]),
        **(md or {}),
    }
    results: dict[str, float] = {}
    plan = _closing_shutter(bench, bpp.run_wrapper(body(results), md=start_md))
    uid = yield from fluence_guard(plan, [bench.pump.fluence, bench.pump], bench.config.bench.fluence_limit_uJ_cm2)
    return {"uid": uid, **results}


#: Pixels on each side of the peak summed for the ASE-peak intensity of a VSL series.
VSL_PEAK_HALF_WIDTH_PX = 2


def _counts_per_s(reading: dict, spectrometer, exposure_s: float, at_peak: bool) -> tuple[float, bool]:
    saturated = bool(reading[spectrometer.saturated.name]["value"])
    if at_peak:
        spectrum = np.asarray(reading[spectrometer.spectrum.name]["value"], dtype=float)
        i = int(np.argmax(spectrum))
        lo, hi = max(i - VSL_PEAK_HALF_WIDTH_PX, 0), i + VSL_PEAK_HALF_WIDTH_PX + 1
        counts = float(np.sum(spectrum[lo:hi]))
    else:
        counts = float(reading[spectrometer.integrated.name]["value"])
    return counts / exposure_s, saturated


def _acquire(bench, exposure_s: float, *, at_peak: bool = False, max_tries: int = 4):
    """Trigger and read; on saturation cut the exposure tenfold and read again (every read is an event).

    Returns counts per second (integrated, or around the peak), the pump fluence the
    power meter read during the acquisition (uJ/cm^2) and the exposure used (s):
    the analysis uses stored values only, so a replay re-derives the same result.
    """
    spec = bench.spectrometer
    exp = exposure_s
    for _ in range(max_tries):
        yield from bps.mv(spec.exposure, exp)
        reading = yield from bps.trigger_and_read([spec, bench.pump, bench.slit])
        rate, saturated = _counts_per_s(reading, spec, exp, at_peak)
        if not saturated:
            return rate, float(reading[bench.pump.fluence.name]["value"]), exp
        exp = exp / 10.0
    return math.nan, math.nan, exp


def _mount(bench, sample_id: str, stripe_length_um: float | None):
    yield from bps.mv(bench.stage, sample_id)
    if stripe_length_um is not None:
        yield from bps.mv(bench.slit, stripe_length_um)


def _closing_shutter(bench, plan):
    def close():
        yield from bps.mv(bench.pump.shutter, 0)

    return bpp.finalize_wrapper(plan, close())


def _analysis_event(readings: dict):
    """Record analysis results as one event of an ``analysis`` stream (signals made on the fly)."""
    from ophyd import Signal

    signals = []
    for key, value in readings.items():
        sig = Signal(name=key, value=float(value), kind="hinted")
        signals.append(sig)
    yield from bps.create(name="analysis")
    for sig in signals:
        yield from bps.read(sig)
    yield from bps.save()


def ase_fluence_scan(
    bench,
    sample_id: str,
    *,
    stripe_length_um: float = 1000.0,
    fluence_min_uJ_cm2: float = 10.0,
    fluence_max_uJ_cm2: float | None = None,
    n_coarse: int = 12,
    n_fine: int = 16,
    exposure_s: float = 3.0,
    md: dict | None = None,
):
    """ASE input-output at a fixed stripe: a coarse log sweep, then points around the kink.

    Returns ``{"uid", "threshold_uJ_cm2", "threshold_err_uJ_cm2"}`` (and records the
    threshold in the run's ``analysis`` stream), from ``plans.analysis.kink_threshold``
    over all points.
    """
    limit = bench.config.bench.fluence_limit_uJ_cm2
    f_hi = limit if fluence_max_uJ_cm2 is None else fluence_max_uJ_cm2
    check_fluence(fluence_min_uJ_cm2, limit)
    check_fluence(f_hi, limit)
    check_slit(stripe_length_um, bench.config)
    if not (fluence_min_uJ_cm2 > 0 and f_hi > fluence_min_uJ_cm2):
        raise ValueError(
            f"fluence range must satisfy 0 < min < max <= {limit:g} uJ/cm^2, got {fluence_min_uJ_cm2!r}..{f_hi!r}"
        )
    if n_coarse < 6 or n_fine < 0:
        raise ValueError("ase_fluence_scan needs n_coarse >= 6 and n_fine >= 0")
    plan_args = {
        "sample_id": sample_id,
        "stripe_length_um": stripe_length_um,
        "fluence_min_uJ_cm2": fluence_min_uJ_cm2,
        "fluence_max_uJ_cm2": f_hi,
        "n_coarse": n_coarse,
        "n_fine": n_fine,
        "exposure_s": exposure_s,
    }

    def inner(results):
        yield from _mount(bench, sample_id, stripe_length_um)
        yield from bps.mv(bench.pump.fluence, fluence_min_uJ_cm2)
        yield from bps.mv(bench.pump.shutter, 1)
        fluences, rates = [], []

        def measure(f):
            yield from bps.mv(bench.pump.fluence, float(f))
            rate, measured_fluence, _ = yield from _acquire(bench, exposure_s)
            if math.isfinite(rate) and rate > 0 and math.isfinite(measured_fluence) and measured_fluence > 0:
                fluences.append(measured_fluence)
                rates.append(rate)

        for f in np.geomspace(fluence_min_uJ_cm2, f_hi, n_coarse):
            yield from measure(f)
        try:
            coarse = kink_threshold(fluences, rates)
        except AnalysisError:
            coarse = None
        if coarse is not None and n_fine > 0:
            lo = max(0.5 * coarse.threshold, fluence_min_uJ_cm2)
            hi = min(2.0 * coarse.threshold, f_hi)
            for f in np.geomspace(lo, hi, n_fine):
                yield from measure(f)
        fit = kink_threshold(fluences, rates)
        results.update(threshold_uJ_cm2=fit.threshold, threshold_err_uJ_cm2=fit.threshold_err)
        yield from _analysis_event(results)

    return (yield from _measurement(bench, "ase_fluence_scan", plan_args, bench.pump.fluence, md, inner))


def vsl_scan(
    bench,
    sample_id: str,
    *,
    fluence_uJ_cm2: float,
    stripe_lengths_um,
    exposure_s: float = 3.0,
    md: dict | None = None,
):
    """Stripe-length series at fixed fluence; g_net (1/cm) from the unsaturated VSL fit, with uncertainty.

    The intensity is read at the ASE peak (a few pixels around the maximum), where
    the gain is the net modal gain the fit measures.
    """
    limit = bench.config.bench.fluence_limit_uJ_cm2
    check_fluence(fluence_uJ_cm2, limit)
    lengths = [float(x) for x in stripe_lengths_um]
    if len(lengths) < 5:
        raise ValueError(f"vsl_scan needs at least 5 stripe lengths, got {len(lengths)}")
    for length in lengths:
        check_slit(length, bench.config)
    plan_args = {
        "sample_id": sample_id,
        "fluence_uJ_cm2": fluence_uJ_cm2,
        "stripe_lengths_um": lengths,
        "exposure_s": exposure_s,
    }

    def inner(results):
        yield from _mount(bench, sample_id, lengths[0])
        yield from bps.mv(bench.pump.fluence, fluence_uJ_cm2)
        yield from bps.mv(bench.pump.shutter, 1)
        used, rates = [], []
        for length in lengths:
            yield from bps.mv(bench.slit, length)
            rate, _, _ = yield from _acquire(bench, exposure_s, at_peak=True)
            if math.isfinite(rate):
                used.append(length)
                rates.append(rate)
        fit = vsl_gain(used, rates)
        results.update(gnet_per_cm=fit.gain_per_cm, gnet_err_per_cm=fit.gain_err_per_cm)
        yield from _analysis_event(results)

    return (yield from _measurement(bench, "vsl_scan", plan_args, bench.slit, md, inner))
