"""Transient absorption (pump-probe) as a Bluesky plan: gain threshold, biexciton Auger lifetime, gain lifetime.

``pump_probe`` records |d(alpha)/alpha0| of the band-edge absorption at the gain peak
versus the pump's <N> (excitons per dot) at one early delay, and versus the delay at
fixed pumps, in one run, and analyses it with ``analyse_pump_probe`` (pure; the same
function a replay calls on the stored ``primary`` stream, see ``plans.registry``):

* **gain threshold** ``gain_threshold_N``: the <N> at which the band-edge absorption
  reaches transparency, alpha = 0, i.e. |d(alpha)| = alpha of the unpumped sample, at
  ``threshold_delay_ps``. A coarse log sweep of the pump is followed by points about the
  crossing; a parabola fitted to the points within ~30 % of it gives <N_th> and its error.
* **biexciton Auger lifetime** ``biexciton_lifetime_ps``: delay scans at a weak and a
  strong pump; the weak trace, scaled to the strong one at late delays, is subtracted
  and an exponential fitted to the multiexciton remainder (``plans.analysis.biexciton_lifetime``)
  from 1.5x the delay at which it has fallen to 1/e, where tri-excitons have decayed; the
  shift from the fit started at 1/e is added to the error. Meant for undoped films: in
  doped dots the remainder mixes in the faster charged biexcitons.
* **gain lifetime** ``gain_lifetime_ps``: a delay scan at a pump above threshold; the
  delay at which alpha/alpha0 returns from negative (net gain) to 0
  (``plans.analysis.gain_lifetime``), first on a coarse grid, then with points about it.

Units and conventions. The TA instrument's ``signal`` is d(alpha)/alpha0 with alpha0 the
band-edge absorption of the *neutral* unexcited film; a film with <n_e> doping electrons
per dot (``doping``, from its bleach) absorbs alpha_unpumped/alpha0 = 1 - <n_e>/g
(g = ``band_edge_degeneracy``, 8 for PbS), so alpha/alpha0 = 1 - <n_e>/g + signal.

<N> is *measured*: the power meter's fluence readback (``pump_fluence``) times the film's
``excitons_per_uJ_cm2`` (kappa = <N>/F = sigma_1030 / h nu for a dilute film, A_1030 / (h nu
n_area) for a film). kappa is a property of each film (absorbance, thickness, packing) with
no universal default: the plan requires it. The TA pump level is set to kappa x the
fluence setpoint and read with every event (``ta_pump_excitons``); the analysis adds the
rms disagreement between it and kappa x the readback (pump drift) as a systematic error
of the <N> scale. The error of kappa itself is not included (``gain_threshold_uJ_cm2``
states the threshold without it).

Every event is taken with ``trigger_then_read`` (``plans.stubs``): a suspension or
pause before the acquisition is complete re-takes it, an acquisition an interlock or
pump-power interruption touched is taken again, and a complete one is saved exactly once
(no repeated or missing ``seq_num``, which bluesky's plain rewind to the previous
checkpoint could give).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from bluesky.utils import MsgGenerator
from ophyd import Signal

from devices import check_delay, check_pump_excitons
from plans._common import PrimaryData, analysed, measurement
from plans.analysis import AnalysisError, biexciton_lifetime, first_where, gain_lifetime
from plans.safety import check_fluence
from plans.stubs import mount, set_together, trigger_then_read

__all__ = [
    "PARTS",
    "SERIES",
    "SERIES_KEY",
    "analyse_pump_probe",
    "pump_probe",
]

#: What ``pump_probe`` can measure (its ``parts`` argument).
PARTS = ("threshold", "biexciton", "gain_lifetime")
#: Data key of the column saying which series an event belongs to, and its codes.
SERIES_KEY = "pump_probe_series"
SERIES = {"threshold": 0, "auger_low": 1, "auger_high": 2, "gain": 3}

#: <N> range of the default threshold sweep, and the default pumps of the Auger traces (excitons/dot).
_SWEEP_N = (0.05, 12.0)
_AUGER_N = (0.3, 3.0)
#: Default gain-lifetime pump in units of the measured threshold.
_GAIN_PUMP_OVER_THRESHOLD = 3.0
#: Fractional half-width of the pump window fitted about the threshold; minimum points in it.
_THRESHOLD_WINDOW = 0.3
_THRESHOLD_MIN_POINTS = 6


# ----------------------------------------------------------------------------- analysis


def _mean_by_delay(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average the readings taken at the same delay (repeats, retakes); delays sorted."""
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    keys = np.round(t, 6)
    uniq, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse, weights=y, minlength=uniq.size)
    counts = np.bincount(inverse, minlength=uniq.size)
    return uniq, sums / counts


class _Columns:
    """The stored primary columns of a pump-probe run, in the analysis's quantities."""

    def __init__(self, data: dict[str, np.ndarray], plan_args: dict):
        missing = [k for k in (SERIES_KEY, "ta_delay", "ta_signal", "pump_fluence") if k not in data]
        if missing:
            raise AnalysisError(f"pump-probe data lack the columns {', '.join(missing)}")
        kappa = float(plan_args["excitons_per_uJ_cm2"])
        g = float(plan_args["band_edge_degeneracy"])
        self.series = np.asarray(data[SERIES_KEY], dtype=float)
        self.delay = np.asarray(data["ta_delay"], dtype=float)
        self.signal = np.asarray(data["ta_signal"], dtype=float)
        self.fluence = np.asarray(data["pump_fluence"], dtype=float)
        self.kappa = kappa
        self.n_measured = kappa * self.fluence
        self.n_set = np.asarray(data["ta_pump_excitons"], dtype=float) if "ta_pump_excitons" in data else None
        #: alpha/alpha0 at the gain peak (alpha0: neutral unexcited film)
        self.alpha = (1.0 - float(plan_args["doping"]) / g) + self.signal
        self.alpha_unpumped = 1.0 - float(plan_args["doping"]) / g

    def select(self, series: str) -> np.ndarray:
        return self.series == SERIES[series]

    def pump_scale_rel_err(self, sel: np.ndarray) -> float:
        """Relative rms disagreement of kappa x fluence readback with the TA pump level set (the <N> scale)."""
        if self.n_set is None:
            return 0.0
        ok = sel & np.isfinite(self.n_set) & (self.n_set > 0) & np.isfinite(self.n_measured)
        if not np.any(ok):
            return 0.0
        return float(np.sqrt(np.mean((self.n_measured[ok] / self.n_set[ok] - 1.0) ** 2)))


def _parabola_root(x: np.ndarray, y: np.ndarray, guess: float) -> tuple[float, float]:
    """Root of a least-squares parabola through (x, y) near ``guess``, with its 1-sigma error.

    The noise is estimated from the residuals (n - 3 degrees of freedom), so the error
    also covers a parabola that does not quite fit; the error is scaled up by the
    Student-t factor sqrt(dof/(dof - 2)) for a noise estimated from few points.
    """
    dof = x.size - 3
    if dof < 3:
        raise AnalysisError(f"a parabola through {x.size} points leaves too few to estimate the noise; need 6")
    xc, half = float(np.mean(x)), float(np.ptp(x)) / 2.0
    u = (x - xc) / half
    design = np.stack([np.ones_like(u), u, u * u], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    c0, c1, c2 = (float(c) for c in coef)
    resid = y - design @ coef
    sigma2 = float(np.dot(resid, resid)) / (dof - 2)  # (RSS/dof) x dof/(dof - 2)
    v = (guess - xc) / half
    for _ in range(60):
        slope = c1 + 2.0 * c2 * v
        if slope == 0.0:
            raise AnalysisError("the threshold fit is flat at the crossing; add pump levels about the threshold")
        dv = (c0 + c1 * v + c2 * v * v) / slope
        v -= dv
        if abs(dv) < 1e-12:
            break
    slope = c1 + 2.0 * c2 * v
    cov = sigma2 * np.linalg.inv(design.T @ design)
    grad = -np.array([1.0, v, v * v]) / slope
    err = math.sqrt(max(float(grad @ cov @ grad), 0.0)) * half
    return xc + v * half, err


def _transparency_crossing(n: np.ndarray, alpha: np.ndarray) -> tuple[float, float]:
    """<N> at which alpha/alpha0 falls through 0 (1-sigma error), from the points about the crossing."""
    ok = np.isfinite(n) & np.isfinite(alpha) & (n > 0)
    n, alpha = n[ok], alpha[ok]
    order = np.argsort(n, kind="stable")
    n, alpha = n[order], alpha[order]
    if n.size < _THRESHOLD_MIN_POINTS:
        raise AnalysisError(f"the threshold sweep needs at least {_THRESHOLD_MIN_POINTS} pump levels, got {n.size}")
    if alpha[0] < 0.0:
        raise AnalysisError(
            f"the sample is already transparent at the lowest pump (<N> = {n[0]:.3g}); lower the minimum fluence"
        )
    j = first_where(
        alpha < 0.0,
        f"|d(alpha)| never reaches the unpumped absorption (no transparency up to <N> = {n[-1]:.3g}); "
        "raise the maximum fluence",
    )
    guess = float(n[j - 1] - alpha[j - 1] * (n[j] - n[j - 1]) / (alpha[j] - alpha[j - 1]))
    root, err = guess, math.inf
    for _ in range(3):
        dist = np.abs(np.log(n / root))
        window = dist <= math.log1p(_THRESHOLD_WINDOW)
        if np.count_nonzero(window) < _THRESHOLD_MIN_POINTS:
            window = dist <= np.sort(dist)[_THRESHOLD_MIN_POINTS - 1]
        new_root, err = _parabola_root(n[window], alpha[window], root)
        if not (n[window][0] <= new_root <= n[window][-1]) or not math.isfinite(err):
            raise AnalysisError(
                f"the threshold fit does not cross transparency within <N> = {n[window][0]:.3g}..{n[window][-1]:.3g}; "
                "add pump levels about the threshold"
            )
        converged = abs(new_root - root) < 1e-9 * root
        root = new_root
        if converged:
            break
    return root, err


def _analyse_threshold(cols: _Columns) -> dict[str, float]:
    sel = cols.select("threshold")
    root, stat = _transparency_crossing(cols.n_measured[sel], cols.alpha[sel])
    err = math.hypot(stat, root * cols.pump_scale_rel_err(sel))
    return {
        "gain_threshold_N": root,
        "gain_threshold_err_N": err,
        "gain_threshold_uJ_cm2": root / cols.kappa,
        "gain_threshold_err_uJ_cm2": err / cols.kappa,
    }


def _analyse_biexciton(cols: _Columns) -> dict[str, float]:
    t_hi, high = _mean_by_delay(cols.delay[cols.select("auger_high")], cols.signal[cols.select("auger_high")])
    t_lo, low = _mean_by_delay(cols.delay[cols.select("auger_low")], cols.signal[cols.select("auger_low")])
    if t_hi.size < 8 or t_lo.size < 8:
        raise AnalysisError(
            f"the biexciton lifetime needs two delay scans of at least 8 delays, got {t_lo.size} and {t_hi.size}"
        )
    if t_lo[0] > t_hi[0] or t_lo[-1] < t_hi[-1]:
        raise AnalysisError("the weak-pump delay scan must span the strong-pump one")
    low_on_high = np.interp(t_hi, t_lo, low)
    first = biexciton_lifetime(t_hi, high, low_on_high)
    # Tri- and higher excitons (tau_3 ~ tau_XX/3) still decay in the early fit window and
    # shorten tau; a fit started 1.5x as late is nearly free of them. Report it, with the
    # shift between the two fits as a systematic error.
    late = biexciton_lifetime(
        t_hi,
        high,
        low_on_high,
        normalize_from_ps=first.normalize_from_ps,
        fit_from_ps=1.5 * first.fit_from_ps,
    )
    err = math.hypot(late.tau_err_ps, late.tau_ps - first.tau_ps)
    return {"biexciton_lifetime_ps": late.tau_ps, "biexciton_lifetime_err_ps": err}


def _gain_trace(cols: _Columns) -> tuple[np.ndarray, np.ndarray]:
    sel = cols.select("gain")
    return _mean_by_delay(cols.delay[sel], cols.alpha[sel])


def _analyse_gain_lifetime(cols: _Columns) -> dict[str, float]:
    t, alpha = _gain_trace(cols)
    fit = gain_lifetime(t, alpha)
    sel = cols.select("gain")
    return {
        "gain_lifetime_ps": fit.tau_ps,
        "gain_lifetime_err_ps": fit.tau_err_ps,
        "gain_lifetime_pump_N": float(np.nanmean(cols.n_measured[sel])),
    }


_ANALYSES = {
    "threshold": _analyse_threshold,
    "biexciton": _analyse_biexciton,
    "gain_lifetime": _analyse_gain_lifetime,
}


def analyse_pump_probe(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """Gain threshold <N>, biexciton Auger lifetime (ps) and gain lifetime (ps), each with its
    1-sigma error, from the stored primary columns of a ``pump_probe`` run (those of
    ``plan_args["parts"]``).

    Keys: ``gain_threshold_N``, ``gain_threshold_err_N``, ``gain_threshold_uJ_cm2``,
    ``gain_threshold_err_uJ_cm2``; ``biexciton_lifetime_ps``, ``biexciton_lifetime_err_ps``;
    ``gain_lifetime_ps``, ``gain_lifetime_err_ps``, ``gain_lifetime_pump_N``.
    Raises ``AnalysisError`` if a part cannot be analysed (saying what to change).
    """
    cols = _Columns(data, plan_args)
    results: dict[str, float] = {}
    for part in plan_args["parts"]:
        results.update(_ANALYSES[part](cols))
    return results


# ----------------------------------------------------------------------------- plan


def _count(value, what: str, minimum: int) -> int:
    """``value`` as an int if it is a whole number >= ``minimum``, else a ``ValueError`` saying so."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _finite_list(values, what: str, *, min_points: int) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a sequence of numbers, got {values!r}") from None
    if len(out) < min_points:
        raise ValueError(f"{what} needs at least {min_points} values, got {len(out)}")
    return out


def _check_delays(delays, what: str, cfg, *, min_points: int) -> list[float]:
    out = _finite_list(delays, what, min_points=min_points)
    for d in out:
        if not (math.isfinite(d) and d >= 0):
            raise ValueError(
                f"{what}: delay {d!r} ps is not allowed; delays must be finite and >= 0 ps (after the pump)"
            )
        check_delay(d, cfg)
    if len(set(out)) < min_points:
        raise ValueError(f"{what} needs at least {min_points} distinct delays")
    return out


def _default_gain_delays() -> list[float]:
    return [float(x) for x in np.r_[np.arange(0.0, 100.0, 5.0), np.geomspace(100.0, 3000.0, 20)]]


def pump_probe(
    bench,
    sample_id: str,
    *,
    excitons_per_uJ_cm2: float,
    parts=PARTS,
    fluence_min_uJ_cm2: float | None = None,
    fluence_max_uJ_cm2: float | None = None,
    n_coarse: int = 16,
    n_fine: int = 16,
    threshold_delay_ps: float = 2.0,
    auger_fluences_uJ_cm2=None,
    auger_delays_ps=None,
    gain_fluence_uJ_cm2: float | None = None,
    gain_delays_ps=None,
    n_fine_gain: int = 16,
    band_edge_degeneracy: int = 8,
    md: dict | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """Transient absorption of a film: |d(alpha)/alpha0| versus <N> and versus delay.

    ``excitons_per_uJ_cm2``: the film's kappa = <N>/F at the pump wavelength (required).
    ``parts``: any of ``"threshold"``, ``"biexciton"``, ``"gain_lifetime"``.

    * threshold: ``n_coarse`` fluences log-spaced over ``fluence_min_uJ_cm2``..
      ``fluence_max_uJ_cm2`` (default: <N> = 0.05..12, capped at the bench limit), then
      ``n_fine`` about the crossing, all at ``threshold_delay_ps``;
    * biexciton: delay scans ``auger_delays_ps`` (default 0..3000 ps in 20 ps steps) at
      ``auger_fluences_uJ_cm2`` = (weak, strong) (default: <N> = 0.3 and 3);
    * gain_lifetime: delay scan at ``gain_fluence_uJ_cm2`` (default: 3x the measured
      threshold fluence), on ``gain_delays_ps`` (default 0..100 ps in 5 ps, then log-spaced
      to 3 ns), then ``n_fine_gain`` delays within +-25 % of the end of gain.

    Returns ``{"uid", **analyse_pump_probe(...)}`` and records the results in the run's
    ``analysis`` stream.
    """
    cfg = bench.config
    limit = cfg.bench.fluence_limit_uJ_cm2
    try:
        kappa = float(excitons_per_uJ_cm2)
    except (TypeError, ValueError):
        kappa = math.nan
    if not (math.isfinite(kappa) and kappa > 0):
        raise ValueError(
            f"excitons_per_uJ_cm2 must be the film's <N>/F, a finite number > 0 excitons/dot per uJ/cm^2, "
            f"got {excitons_per_uJ_cm2!r}"
        )
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown or len(set(parts)) != len(parts):
        raise ValueError(f"parts must be distinct values from {', '.join(PARTS)}; got {parts!r}")

    def fluence_ok(f, what: str) -> float:
        value = check_fluence(f, limit)
        try:
            check_pump_excitons(kappa * value, cfg)
        except ValueError as exc:
            raise ValueError(
                f"{what}: <N> = kappa x {value:g} uJ/cm^2 is outside the TA pump's range ({exc})"
            ) from None
        return value

    entry = cfg.library_entry(sample_id)
    g = _count(band_edge_degeneracy, "band_edge_degeneracy", 1)
    if not entry.doping < g:
        raise ValueError(f"band_edge_degeneracy must exceed the doping {entry.doping:g} electrons/dot, got {g}")
    plan_args: dict = {
        "sample_id": sample_id,
        "excitons_per_uJ_cm2": kappa,
        "parts": list(parts),
        "doping": float(entry.doping),
        "band_edge_degeneracy": g,
    }
    if "threshold" in parts:
        f_lo = _SWEEP_N[0] / kappa if fluence_min_uJ_cm2 is None else fluence_min_uJ_cm2
        f_hi = min(_SWEEP_N[1] / kappa, limit) if fluence_max_uJ_cm2 is None else fluence_max_uJ_cm2
        f_lo, f_hi = fluence_ok(f_lo, "fluence_min_uJ_cm2"), fluence_ok(f_hi, "fluence_max_uJ_cm2")
        if not (0 < f_lo < f_hi):
            raise ValueError(
                f"the fluence range must satisfy 0 < min < max <= {limit:g} uJ/cm^2, got {f_lo!r}..{f_hi!r}"
            )
        (thr_delay,) = _check_delays([threshold_delay_ps], "threshold_delay_ps", cfg, min_points=1)
        plan_args.update(
            fluence_min_uJ_cm2=f_lo,
            fluence_max_uJ_cm2=f_hi,
            n_coarse=_count(n_coarse, "n_coarse", _THRESHOLD_MIN_POINTS),
            n_fine=_count(n_fine, "n_fine", 0),
            threshold_delay_ps=thr_delay,
        )
    if "biexciton" in parts:
        pair = [a / kappa for a in _AUGER_N] if auger_fluences_uJ_cm2 is None else auger_fluences_uJ_cm2
        pair = _finite_list(pair, "auger_fluences_uJ_cm2", min_points=2)
        if len(pair) != 2:
            raise ValueError(f"auger_fluences_uJ_cm2 must be (weak, strong), got {auger_fluences_uJ_cm2!r}")
        weak, strong = (fluence_ok(f, "auger_fluences_uJ_cm2") for f in pair)
        if not 0 < weak < strong:
            raise ValueError(f"auger_fluences_uJ_cm2 must satisfy 0 < weak < strong, got {weak!r}, {strong!r}")
        delays = np.linspace(0.0, 3000.0, 151) if auger_delays_ps is None else auger_delays_ps
        plan_args.update(
            auger_fluences_uJ_cm2=[weak, strong],
            auger_delays_ps=_check_delays(delays, "auger_delays_ps", cfg, min_points=12),
        )
    if "gain_lifetime" in parts:
        if gain_fluence_uJ_cm2 is None and "threshold" not in parts:
            raise ValueError("gain_fluence_uJ_cm2 is needed when the threshold is not measured in the same run")
        gf = None if gain_fluence_uJ_cm2 is None else fluence_ok(gain_fluence_uJ_cm2, "gain_fluence_uJ_cm2")
        if gf is not None and gf <= 0:
            raise ValueError("gain_fluence_uJ_cm2 must be > 0 uJ/cm^2")
        delays = _default_gain_delays() if gain_delays_ps is None else gain_delays_ps
        plan_args.update(
            gain_fluence_uJ_cm2=gf,
            gain_delays_ps=_check_delays(delays, "gain_delays_ps", cfg, min_points=5),
            n_fine_gain=_count(n_fine_gain, "n_fine_gain", 0),
        )

    start_md: dict = {
        "hints": {"dimensions": [([bench.ta.delay.name], "primary"), ([bench.pump.fluence.name], "primary")]}
    }
    twin_md = bench.describe_sample(sample_id).get("twin")
    if twin_md is not None:  # the twin's own kappa, next to its other parameters of the sample
        start_md["twin"] = {**twin_md, "excitons_per_uJ_cm2": bench.excitons_per_uJ_cm2(sample_id)}

    def inner(results: dict[str, float]) -> MsgGenerator[None]:
        yield from mount(bench, sample_id)
        primary = PrimaryData()
        series = Signal(name=SERIES_KEY, value=-1, kind="normal")
        now = {"fluence": None, "delay": None, "series": None}
        objs = [bench.ta, bench.ta.pump_excitons, bench.pump, series]

        def point(code: str, fluence: float, delay: float) -> MsgGenerator[None]:
            moves = []
            if now["fluence"] != fluence:
                moves += [bench.pump.fluence, fluence, bench.ta.pump_excitons, kappa * fluence]
            if now["delay"] != delay:
                moves += [bench.ta.delay, delay]
            if now["series"] != SERIES[code]:
                moves += [series, SERIES[code]]
            if moves:
                yield from set_together(*moves)
            if now["fluence"] is None:
                yield from set_together(bench.pump.shutter, 1)  # once the first fluence is set
            now.update(fluence=fluence, delay=delay, series=SERIES[code])
            primary.add((yield from trigger_then_read(objs, triggers=[bench.ta])))

        threshold_fluence = None
        if "threshold" in parts:
            f_lo, f_hi = plan_args["fluence_min_uJ_cm2"], plan_args["fluence_max_uJ_cm2"]
            for f in np.geomspace(f_lo, f_hi, plan_args["n_coarse"]):
                yield from point("threshold", float(f), plan_args["threshold_delay_ps"])
            try:
                coarse = _analyse_threshold(_Columns(primary.arrays(), plan_args))["gain_threshold_uJ_cm2"]
            except AnalysisError:
                coarse = None  # the analysis at the end says what is wrong
            if coarse is not None and plan_args["n_fine"] > 0:
                lo = max(coarse / (1 + _THRESHOLD_WINDOW), f_lo)
                hi = min(coarse * (1 + _THRESHOLD_WINDOW), f_hi)
                for f in np.linspace(lo, hi, plan_args["n_fine"]):
                    yield from point("threshold", float(f), plan_args["threshold_delay_ps"])
            threshold_fluence = coarse
        if "biexciton" in parts:
            for code, f in zip(("auger_low", "auger_high"), plan_args["auger_fluences_uJ_cm2"], strict=True):
                for t in plan_args["auger_delays_ps"]:
                    yield from point(code, f, t)
        if "gain_lifetime" in parts:
            gf = plan_args["gain_fluence_uJ_cm2"]
            if gf is None:
                if threshold_fluence is None:
                    _analyse_threshold(_Columns(primary.arrays(), plan_args))  # raises, saying why
                gf = min(_GAIN_PUMP_OVER_THRESHOLD * threshold_fluence, limit, 100.0 / kappa)
            for t in plan_args["gain_delays_ps"]:
                yield from point("gain", gf, t)
            if plan_args["n_fine_gain"] > 0:
                try:
                    coarse_t = gain_lifetime(*_gain_trace(_Columns(primary.arrays(), plan_args))).tau_ps
                except AnalysisError:
                    coarse_t = None
                if coarse_t is not None:
                    lo, hi = 0.75 * coarse_t, min(1.25 * coarse_t, cfg.transient_absorption.delay_max_ps)
                    for t in np.linspace(lo, hi, plan_args["n_fine_gain"]):
                        yield from point("gain", gf, float(t))
        yield from analysed(results, analyse_pump_probe, primary, plan_args)

    md_all = {**start_md, **(md or {})}
    return (yield from measurement(bench, "pump_probe", plan_args, bench.ta.delay, md_all, inner))
