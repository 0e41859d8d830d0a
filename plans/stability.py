"""Long-term stability as a Bluesky plan: hours of operation at 10 kHz just above threshold.

``stability_run`` mounts a sample (a DFB laser or a film), takes dark frames with the
shutter closed, then pumps it just above its threshold and integrates its output in
back-to-back acquisitions of ``interval_s`` each, until ``duration_h`` hours of
*pumped* time have been recorded (the sum of the exposures, which is what counts for
photo-stability: an interruption closes the shutter and stops the clock). The twin's
lab clock advances by the exposures without sleeping, so hours pass in seconds.

Interruptions. Like every measurement (``plans._common.measurement``, ``plans._suspenders``),
the run has suspenders on the interlock permit and on the pump's power-OK signal: when
either drops the RunEngine suspends, waits until it is back (plus ``resume_delay_s``),
re-establishes the pump (fluence, shutter: the interlock closes it) and resumes. An
acquisition that an interruption may have touched - the signal dropped, or a suspension
began, after its exposure started, or the shutter reads closed when it ends - is
discarded before anything is saved and taken again (``trigger_then_read``), so the
``primary`` stream's ``seq_num`` runs 1..n with no gap or repeat and holds only whole
exposures. Each interruption is recorded as an event of an ``interruptions`` stream
(which signal, wall-clock start, duration in s), and the ``primary`` stream carries the
running count and total duration with every event, so ``analyse_stability_run`` - a pure
function of the stored ``primary`` columns, the same in replay - reports them too.

Analysis: dark-subtracted output rate (counts/s) per acquisition at the middle of its
exposure in pumped time; its trend, a running mean over ``smoothing_s`` centred on each
point (the lab's 30-minute means); the initial level from a straight line through the
first ``smoothing_s`` extrapolated to t = 0; the largest fractional drop of the trend below
it, and the pumped hours until the trend first falls 10 % below it (``inf`` if it never
does), each with a 1-sigma error from the acquisitions' scatter (and, for the time, the
acquisition length).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from bluesky import Msg
from bluesky.utils import MsgGenerator

from devices import check_exposure
from plans._common import PrimaryData, analysed, measurement
from plans._suspenders import INTERRUPTION_STREAM, Computed
from plans.analysis import AnalysisError
from plans.safety import check_fluence
from plans.stubs import mount, set_together, trigger_then_read

__all__ = [
    "DARK_KEY",
    "INTERRUPTED_KEY",
    "INTERRUPTIONS_KEY",
    "INTERRUPTION_STREAM",
    "analyse_stability_run",
    "stability_run",
]

#: Data keys of the plan's own columns in the primary stream.
DARK_KEY = "stability_dark"
INTERRUPTIONS_KEY = "stability_interruptions"
INTERRUPTED_KEY = "stability_interrupted_s"
#: Fractional drop of the output whose time is reported.
DROP_LEVEL = 0.10


# ----------------------------------------------------------------------------- analysis


def _robust_scatter(y: np.ndarray) -> float:
    """1-sigma point scatter of a slowly varying series: MAD of second differences / sqrt(6)."""
    if y.size < 5:
        return float(np.std(y)) if y.size > 1 else 0.0
    d2 = y[2:] - 2.0 * y[1:-1] + y[:-2]
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0))


def analyse_stability_run(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """Duration, output level and its decline from the stored primary columns of a ``stability_run``.

    Keys: ``duration_h`` (pumped hours recorded), ``pulses``, ``repetition_rate_kHz``,
    ``fluence_mean_uJ_cm2``, ``mean_counts_per_s`` (dark-subtracted), ``drop_fraction_max``
    and ``drop_fraction_max_err`` (largest fractional drop of the trend below the initial
    level), ``hours_to_10pct_drop`` and ``hours_to_10pct_drop_err`` (``inf`` and NaN when the
    trend never falls 10 % below the initial level), ``interruptions`` and
    ``interrupted_s`` (suspensions recorded up to the last acquisition, total wall-clock s).
    """
    need = ["spectrometer_integrated", "spectrometer_exposure", "spectrometer_saturated", "pump_shutter", DARK_KEY]
    missing = [k for k in need if k not in data]
    if missing:
        raise AnalysisError(f"stability data lack the columns {', '.join(missing)}")
    counts = np.asarray(data["spectrometer_integrated"], dtype=float)
    exposure = np.asarray(data["spectrometer_exposure"], dtype=float)
    saturated = np.asarray(data["spectrometer_saturated"]).astype(bool)
    shutter = np.asarray(data["pump_shutter"], dtype=float) == 1
    dark = np.asarray(data[DARK_KEY], dtype=float) == 1
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = counts / exposure
    usable = np.isfinite(rate) & ~saturated
    dark_ok = dark & usable
    dark_rate = float(np.mean(rate[dark_ok])) if np.any(dark_ok) else 0.0

    pumped = ~dark & shutter & np.isfinite(exposure) & (exposure > 0)
    if np.count_nonzero(pumped) == 0:
        raise AnalysisError("the stability run has no acquisition with the pump on")
    e = exposure[pumped]
    t_end = np.cumsum(e)
    t_mid = t_end - 0.5 * e
    signal = rate[pumped] - dark_rate
    good = usable[pumped]
    t, r = t_mid[good], signal[good]
    n_pts = t.size
    smoothing = float(plan_args["smoothing_s"])
    if n_pts < 5:
        raise AnalysisError(f"the stability run has {n_pts} unsaturated acquisitions with the pump on; need 5")

    rep = np.asarray(data["pump_repetition_rate"], dtype=float)[pumped] if "pump_repetition_rate" in data else None
    fluence = np.asarray(data["pump_fluence"], dtype=float)[pumped] if "pump_fluence" in data else None
    results: dict[str, float] = {
        "duration_h": float(t_end[-1]) / 3600.0,
        "pulses": float(np.sum(e * rep * 1e3)) if rep is not None else math.nan,
        "repetition_rate_kHz": float(np.mean(rep)) if rep is not None else math.nan,
        "fluence_mean_uJ_cm2": float(np.mean(fluence)) if fluence is not None else math.nan,
        "mean_counts_per_s": float(np.mean(r)),
    }

    sigma = _robust_scatter(r)
    # trend: running mean centred on each point
    lo = np.searchsorted(t, t - 0.5 * smoothing, side="left")
    hi = np.searchsorted(t, t + 0.5 * smoothing, side="right")
    csum = np.r_[0.0, np.cumsum(r)]
    n_win = hi - lo
    trend = (csum[hi] - csum[lo]) / n_win
    trend_err = sigma / np.sqrt(n_win)
    # initial level: a line through the first smoothing window, at t = 0
    first = t <= max(smoothing, t[min(2, n_pts - 1)])
    tf, rf = t[first], r[first]
    if tf.size >= 3 and np.ptp(tf) > 0:
        tc = float(np.mean(tf))
        sxx = float(np.sum((tf - tc) ** 2))
        slope = float(np.sum((tf - tc) * (rf - np.mean(rf))) / sxx)
        level0 = float(np.mean(rf) - slope * tc)
        level0_err = sigma * math.sqrt(1.0 / tf.size + tc**2 / sxx)
    else:
        level0, level0_err = float(np.mean(rf)), sigma / math.sqrt(tf.size)
    if not level0 > 0:
        raise AnalysisError(f"the initial output level is {level0:.3g} counts/s after the dark; no signal to follow")

    drop = 1.0 - trend / level0
    k = int(np.argmax(drop))
    results["drop_fraction_max"] = float(drop[k])
    results["drop_fraction_max_err"] = math.hypot(trend_err[k] / level0, trend[k] * level0_err / level0**2)

    target = (1.0 - DROP_LEVEL) * level0
    below = np.nonzero(trend < target)[0]
    if below.size == 0:
        results["hours_to_10pct_drop"] = math.inf
        results["hours_to_10pct_drop_err"] = math.nan
    else:
        j = int(below[0])
        step = float(np.median(e))
        if j == 0:
            t_cross, t_err = float(t[0]), math.hypot(float(t[0]), step / math.sqrt(12.0))
        else:
            y0, y1 = float(trend[j - 1]), float(trend[j])
            dt = float(t[j] - t[j - 1])
            t_cross = float(t[j - 1] + (y0 - target) * dt / (y0 - y1))
            rate_of_fall = (y0 - y1) / dt  # counts/s per s, > 0
            level_err = math.hypot(float(max(trend_err[j - 1], trend_err[j])), (1.0 - DROP_LEVEL) * level0_err)
            t_err = math.hypot(level_err / rate_of_fall, step / math.sqrt(12.0))
        results["hours_to_10pct_drop"] = t_cross / 3600.0
        results["hours_to_10pct_drop_err"] = t_err / 3600.0

    interruptions = np.asarray(data.get(INTERRUPTIONS_KEY, np.zeros(1)), dtype=float)
    interrupted = np.asarray(data.get(INTERRUPTED_KEY, np.zeros(1)), dtype=float)
    results["interruptions"] = float(np.max(interruptions)) if interruptions.size else 0.0
    results["interrupted_s"] = float(np.max(interrupted)) if interrupted.size else 0.0
    return results


def stability_run(
    bench,
    sample_id: str,
    *,
    fluence_uJ_cm2: float | None = None,
    threshold_uJ_cm2: float | None = None,
    above_threshold_factor: float = 1.1,
    duration_h: float = 8.0,
    interval_s: float = 60.0,
    smoothing_s: float = 1800.0,
    n_dark: int = 2,
    resume_delay_s: float = 5.0,
    md: dict | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """Output of ``sample_id`` over ``duration_h`` pumped hours at the pump's repetition rate (10 kHz).

    The pump fluence is ``fluence_uJ_cm2``, or ``threshold_uJ_cm2`` x ``above_threshold_factor``
    (just above the lasing or ASE threshold; give one of the two). Each acquisition integrates
    ``interval_s`` (within the spectrometer's exposure range; cut tenfold after a saturated
    one); ``smoothing_s`` is the running-mean window of the trend; ``n_dark`` dark frames are
    taken first with the shutter closed; after an interlock or pump-power interruption the
    run resumes ``resume_delay_s`` after the signal is back.

    Returns ``{"uid", **analyse_stability_run(...)}`` and records the results in the run's
    ``analysis`` stream.
    """
    cfg = bench.config
    limit = cfg.bench.fluence_limit_uJ_cm2
    if (fluence_uJ_cm2 is None) == (threshold_uJ_cm2 is None):
        raise ValueError("give either fluence_uJ_cm2 or threshold_uJ_cm2 (with above_threshold_factor), not both")
    if fluence_uJ_cm2 is None:
        thr = check_fluence(threshold_uJ_cm2, limit)
        factor = _number(above_threshold_factor, "above_threshold_factor")
        if not (thr > 0 and factor > 1.0):
            raise ValueError(
                f"threshold_uJ_cm2 must be > 0 and above_threshold_factor > 1 (just above threshold), "
                f"got {threshold_uJ_cm2!r} and {above_threshold_factor!r}"
            )
        fluence = check_fluence(thr * factor, limit)
    else:
        fluence = check_fluence(fluence_uJ_cm2, limit)
    if not fluence > 0:
        raise ValueError("the pump fluence of a stability run must be > 0 uJ/cm^2")
    hours = _number(duration_h, "duration_h")
    interval = _number(interval_s, "interval_s")
    check_exposure(interval, cfg)
    smoothing = _number(smoothing_s, "smoothing_s")
    delay = _number(resume_delay_s, "resume_delay_s")
    if not hours > 0:
        raise ValueError(f"duration_h must be > 0 hours, got {duration_h!r}")
    if hours * 3600.0 < 5 * interval:
        raise ValueError(
            f"duration_h = {hours:g} h holds fewer than 5 acquisitions of interval_s = {interval:g} s; "
            "lengthen the run or shorten the interval"
        )
    if not interval <= smoothing <= hours * 3600.0:
        raise ValueError(
            f"smoothing_s must lie between interval_s ({interval:g} s) and the duration ({hours * 3600.0:g} s), "
            f"got {smoothing_s!r}"
        )
    if not delay >= 0:
        raise ValueError(f"resume_delay_s must be >= 0 s, got {resume_delay_s!r}")
    if isinstance(n_dark, bool) or not isinstance(n_dark, int | np.integer) or n_dark < 0:
        raise ValueError(f"n_dark must be a whole number >= 0, got {n_dark!r}")
    cfg.library_entry(sample_id)  # a clear error for a sample that is not mounted
    plan_args = {
        "sample_id": sample_id,
        "fluence_uJ_cm2": fluence,
        "threshold_uJ_cm2": None if threshold_uJ_cm2 is None else float(threshold_uJ_cm2),
        "above_threshold_factor": None if threshold_uJ_cm2 is None else float(above_threshold_factor),
        "duration_h": hours,
        "interval_s": interval,
        "smoothing_s": smoothing,
        "n_dark": int(n_dark),
        "resume_delay_s": delay,
    }
    exposure_min = cfg.spectrometer.exposure_min_s

    def inner(results: dict[str, float]) -> MsgGenerator[None]:
        guard = yield Msg("checkpoint")  # the run's Interruptions (plans._suspenders)
        phase = {"pumping": False}
        primary = PrimaryData()
        dark_sig = Computed(lambda: 0 if phase["pumping"] else 1, name=DARK_KEY)
        count_sig = Computed(lambda: guard.count if guard is not None else 0, name=INTERRUPTIONS_KEY)
        total_sig = Computed(lambda: guard.total_s if guard is not None else 0.0, name=INTERRUPTED_KEY)
        spec, pump = bench.spectrometer, bench.pump
        objs = [spec, pump, pump.repetition_rate, dark_sig, count_sig, total_sig]
        yield from mount(bench, sample_id)
        yield from set_together(pump.shutter, 0)
        yield from set_together(spec.exposure, interval)
        for _ in range(plan_args["n_dark"]):
            primary.add((yield from trigger_then_read(objs, triggers=[spec])))
        phase["pumping"] = True
        yield from set_together(pump.fluence, fluence)
        yield from set_together(pump.shutter, 1)
        exposure, pumped_s = interval, 0.0
        while pumped_s < hours * 3600.0:
            reading = yield from trigger_then_read(objs, triggers=[spec])
            primary.add(reading)
            pumped_s += float(reading[spec.exposure.name]["value"])
            if bool(reading[spec.saturated.name]["value"]) and exposure / 10.0 >= exposure_min:
                exposure /= 10.0
                yield from set_together(spec.exposure, exposure)
        yield from analysed(results, analyse_stability_run, primary, plan_args)

    start_md = {"hints": {"dimensions": [(["time"], "primary")]}}
    md_all = {**start_md, **(md or {})}
    return (
        yield from measurement(
            bench, "stability_run", plan_args, bench.spectrometer, md_all, inner, resume_delay_s=delay
        )
    )


def _number(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return v
