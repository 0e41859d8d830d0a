"""ASE input-output and VSL measurements as Bluesky plans (generators of messages; no blocking calls).

Each plan takes a ``devices.Bench`` (EPICS or the in-process twin: the same
interface), mounts the sample, measures, analyses its own primary stream with
its ``analyse_*`` function (pure; the same one a replay calls on the stored
stream, see ``plans.registry``) and records the result in an ``analysis`` stream
of the same run. Every plan (``plans._common.measurement``):

* carries standard metadata: ``plan_name``, ``plan_args``, ``sample_id``,
  ``doping``, ``devices`` ("twin" with the twin's parameters, or "bench"),
  ``units`` and ``hints`` (the user's ``md`` is merged last);
* checks every fluence it sends against the bench limit (``plans.safety``), on
  top of the device's soft limit and the IOC's interlock;
* closes the pump shutter when it ends, however it ends.
"""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import MsgGenerator

from devices import check_exposure, check_slit
from plans._common import PrimaryData, analysed, measurement
from plans.analysis import (
    AnalysisError,
    counts_per_s,
    input_output,
    kink_threshold,
    kink_threshold_windowed,
    vsl_gain,
)
from plans.safety import check_fluence
from plans.stubs import acquire, mount, pump_on

__all__ = [
    "analyse_ase_fluence_scan",
    "analyse_ase_point",
    "analyse_vsl_scan",
    "ase_fluence_scan",
    "ase_point",
    "vsl_scan",
]


def _whole(n) -> bool:
    return isinstance(n, int | np.integer) and not isinstance(n, bool)


def analyse_ase_fluence_scan(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """ASE threshold (uJ/cm^2) from the kink of the input-output curve; its uncertainty includes the
    fit-window systematic of a smooth onset (``kink_threshold_windowed``)."""
    fit = kink_threshold_windowed(*input_output(data))
    return {"threshold_uJ_cm2": fit.threshold, "threshold_err_uJ_cm2": fit.threshold_err}


def analyse_vsl_scan(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """Net modal gain g_net (1/cm) from the unsaturated part of the VSL series, read at the ASE peak."""
    rate = counts_per_s(data, at_peak=True)
    length = np.asarray(data["slit"], dtype=float)
    ok = np.isfinite(rate) & np.isfinite(length)
    fit = vsl_gain(length[ok], rate[ok])
    return {"gnet_per_cm": fit.gain_per_cm, "gnet_err_per_cm": fit.gain_err_per_cm}


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
) -> MsgGenerator[dict[str, Any]]:
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
    if not (_whole(n_coarse) and _whole(n_fine) and n_coarse >= 6 and n_fine >= 0):
        raise ValueError(
            f"ase_fluence_scan needs whole numbers n_coarse >= 6 and n_fine >= 0, got {n_coarse!r} and {n_fine!r}"
        )
    check_exposure(exposure_s, bench.config)
    plan_args = {
        "sample_id": sample_id,
        "stripe_length_um": stripe_length_um,
        "fluence_min_uJ_cm2": fluence_min_uJ_cm2,
        "fluence_max_uJ_cm2": f_hi,
        "n_coarse": n_coarse,
        "n_fine": n_fine,
        "exposure_s": exposure_s,
    }

    def inner(results: dict[str, float]) -> MsgGenerator[None]:
        yield from mount(bench, sample_id, stripe_length_um)
        yield from pump_on(bench, fluence_min_uJ_cm2)
        primary = PrimaryData()

        def measure(f: float) -> MsgGenerator[None]:
            yield from bps.mv(bench.pump.fluence, float(f))
            yield from acquire(bench, exposure_s, primary)

        for f in np.geomspace(fluence_min_uJ_cm2, f_hi, n_coarse):
            yield from measure(f)
        try:
            coarse = kink_threshold(*input_output(primary.arrays()))
        except AnalysisError:
            coarse = None
        if coarse is not None and n_fine > 0:
            lo = max(0.5 * coarse.threshold, fluence_min_uJ_cm2)
            hi = min(2.0 * coarse.threshold, f_hi)
            for f in np.geomspace(lo, hi, n_fine):
                yield from measure(f)
        yield from analysed(results, analyse_ase_fluence_scan, primary, plan_args)

    return (yield from measurement(bench, "ase_fluence_scan", plan_args, bench.pump.fluence, md, inner))


def vsl_scan(
    bench,
    sample_id: str,
    *,
    fluence_uJ_cm2: float,
    stripe_lengths_um,
    exposure_s: float = 3.0,
    md: dict | None = None,
) -> MsgGenerator[dict[str, Any]]:
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
    check_exposure(exposure_s, bench.config)
    plan_args = {
        "sample_id": sample_id,
        "fluence_uJ_cm2": fluence_uJ_cm2,
        "stripe_lengths_um": lengths,
        "exposure_s": exposure_s,
    }

    def inner(results: dict[str, float]) -> MsgGenerator[None]:
        yield from mount(bench, sample_id, lengths[0])
        yield from pump_on(bench, fluence_uJ_cm2)
        primary = PrimaryData()
        for length in lengths:
            yield from bps.mv(bench.slit, length)
            yield from acquire(bench, exposure_s, primary)
        yield from analysed(results, analyse_vsl_scan, primary, plan_args)

    return (yield from measurement(bench, "vsl_scan", plan_args, bench.slit, md, inner))


def analyse_ase_point(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """One acquisition: output (counts/s), emission FWHM (nm) and the fluence measured (uJ/cm^2).

    The last unsaturated read counts (the exposure was cut after a saturated one); NaN if none.
    """
    rate = counts_per_s(data)
    ok = np.nonzero(np.isfinite(rate))[0]
    if ok.size == 0:
        raise AnalysisError("every read of the acquisition saturated the detector, even at the shortest exposure")
    k = int(ok[-1])
    return {
        "counts_per_s": float(rate[k]),
        "fwhm_nm": float(np.asarray(data["spectrometer_fwhm"], dtype=float)[k]),
        "measured_fluence_uJ_cm2": float(np.asarray(data["pump_fluence"], dtype=float)[k]),
        "exposure_s": float(np.asarray(data["spectrometer_exposure"], dtype=float)[k]),
    }


def ase_point(
    bench,
    sample_id: str,
    *,
    fluence_uJ_cm2: float,
    stripe_length_um: float,
    exposure_s: float = 3.0,
    md: dict | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """One ASE acquisition at a fluence and stripe length (a joint-optimisation trial)."""
    limit = bench.config.bench.fluence_limit_uJ_cm2
    check_fluence(fluence_uJ_cm2, limit)
    if not fluence_uJ_cm2 > 0:
        raise ValueError(f"fluence must be > 0 uJ/cm^2, got {fluence_uJ_cm2!r}")
    check_slit(stripe_length_um, bench.config)
    check_exposure(exposure_s, bench.config)
    plan_args = {
        "sample_id": sample_id,
        "fluence_uJ_cm2": fluence_uJ_cm2,
        "stripe_length_um": stripe_length_um,
        "exposure_s": exposure_s,
    }

    def inner(results: dict[str, float]) -> MsgGenerator[None]:
        yield from mount(bench, sample_id, stripe_length_um)
        yield from pump_on(bench, float(fluence_uJ_cm2))
        primary = PrimaryData()
        yield from acquire(bench, exposure_s, primary)
        yield from analysed(results, analyse_ase_point, primary, plan_args)

    return (yield from measurement(bench, "ase_point", plan_args, bench.pump.fluence, md, inner))
