"""The threshold a campaign's fluence scan reports, on the noise-free twin: the prior's measurement model.

A nested trial's threshold is not the gain model's threshold (``twin.ase.ase_threshold_uJ_cm2``,
where the modal net gain over the stripe reaches the ASE condition): it is the kink that
``plans.analysis.kink_threshold`` finds in the input-output curve of ``plans.measurements.
ase_fluence_scan`` (a coarse log sweep, then ``n_fine`` points from half to twice the coarse
kink). On a short stripe the amplified part of the output stands out of the spontaneous emission
later than the gain condition says, so the kink lies above it (on the shipped ``cas_doped`` at
doping 7.4: x1.24 at 150 um, x1.09 at 300 um); on a long stripe the output bends over early and
the kink lies a few per cent below it (x0.93 at 1500 um). A prior built from the model's threshold
therefore has the wrong length dependence, and the prior's learnable depth, fitted to a film's
stripe-length scan, exaggerates the doping dependence with it (on the shipped twin: a predicted
68 uJ/cm^2 at doping 7.85 where the scan measures 80).

``scan_threshold_ratio`` runs the scan on the twin's expected counts (``twin.instrument.
expected_stripe_counts``, no noise: the measurement model of the spectrometer, the pulse jitter
averaged) and fits its kink with the plan's own analysis, on a coarse grid of stripe length x
doping, relative to the model's threshold. ``smooth_ln_ratio`` fits that ratio with a low-order
polynomial in (ln stripe length, doping): the kink of a noise-free curve moves in small steps
as the scan's points move (a few per cent, not physics), and a polynomial keeps the prior smooth.
A bench's own kink bias follows the same analysis of its own curves; the correction is the
twin's, computed from the prior's presets (it assumes the bench's curve shapes are near the
twin's, which the prior's learnable level and depth then absorb).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from plans.analysis import AnalysisError, kink_threshold
from twin.ase import ase_threshold_uJ_cm2
from twin.instrument import expected_stripe_counts

__all__ = ["scan_threshold", "scan_threshold_ratio", "smooth_ln_ratio"]

#: ``ase_fluence_scan``'s defaults, as a campaign's scan uses them unless its ``scan_args`` say otherwise.
SCAN_DEFAULTS = {"n_coarse": 12, "n_fine": 16, "exposure_s": 3.0}


def _kink(coarse_f, coarse_counts, length, doping, exposure, sample, presets, f_lo, f_hi, n_fine) -> float:
    """The scan's kink threshold (uJ/cm^2) from its coarse sweep's expected counts, with its fine points
    added as the plan adds them; NaN where the plan's analysis finds no kink."""
    f, counts = coarse_f, coarse_counts
    try:
        kink = kink_threshold(f, counts)
        if n_fine > 0:
            fine_f = np.geomspace(max(0.5 * kink.threshold, f_lo), min(2.0 * kink.threshold, f_hi), n_fine)
            fine, _ = expected_stripe_counts(fine_f, length, doping, exposure, sample, presets.setup, presets.noise)
            kink = kink_threshold(np.r_[f, fine_f], np.r_[counts, fine])
    except AnalysisError:
        return float("nan")
    return float(kink.threshold)


def _scan_args(scan: Mapping | None) -> dict:
    return {**SCAN_DEFAULTS, **{k: v for k, v in (scan or {}).items() if k in SCAN_DEFAULTS}}


def scan_threshold(
    presets,
    sample_id: str,
    stripe_length_um: float,
    doping: float,
    fluence_min_uJ_cm2: float,
    fluence_max_uJ_cm2: float,
    scan: Mapping | None = None,
) -> float:
    """The threshold (uJ/cm^2) the campaign's scan reports on the noise-free twin of ``sample_id`` at one
    stripe length (um) and doping (e/dot); NaN where its analysis finds no kink."""
    args = _scan_args(scan)
    sample = presets.get(sample_id)
    coarse_f = np.geomspace(fluence_min_uJ_cm2, fluence_max_uJ_cm2, int(args["n_coarse"]))
    exposure = float(args["exposure_s"])
    coarse, _ = expected_stripe_counts(
        coarse_f, stripe_length_um, doping, exposure, sample, presets.setup, presets.noise
    )
    return _kink(
        coarse_f, coarse, stripe_length_um, doping, exposure, sample, presets,
        fluence_min_uJ_cm2, fluence_max_uJ_cm2, int(args["n_fine"]),
    )  # fmt: skip


def scan_threshold_ratio(
    presets,
    sample_id: str,
    stripe_length_um: np.ndarray,
    doping: np.ndarray,
    fluence_min_uJ_cm2: float,
    fluence_max_uJ_cm2: float,
    scan: Mapping | None = None,
) -> np.ndarray:
    """Kink threshold of the noise-free scan / the model's threshold, on the grid ``doping`` x
    ``stripe_length_um`` (um; shape (n_doping, n_length)); NaN where either has no threshold (no kink
    in the scan's range, or no gain). ``scan``: ``n_coarse``, ``n_fine``, ``exposure_s`` of the
    campaign's scan (``SCAN_DEFAULTS`` for the rest)."""
    args = _scan_args(scan)
    sample = presets.get(sample_id)
    lengths = np.asarray(stripe_length_um, dtype=float)
    dopings = np.asarray(doping, dtype=float)
    model = ase_threshold_uJ_cm2(lengths[None, :], dopings[:, None], sample, presets.setup)
    out = np.full((dopings.size, lengths.size), np.nan)
    coarse_f = np.geomspace(fluence_min_uJ_cm2, fluence_max_uJ_cm2, int(args["n_coarse"]))
    exposure = float(args["exposure_s"])
    # every coarse sweep in one call: (n_doping, n_length, n_coarse)
    coarse, _ = expected_stripe_counts(
        coarse_f[None, None, :], lengths[None, :, None], dopings[:, None, None], exposure, sample, presets.setup,
        presets.noise,
    )  # fmt: skip
    for i, d in enumerate(dopings):
        for j, length in enumerate(lengths):
            if np.isfinite(model[i, j]):
                thr = _kink(
                    coarse_f, coarse[i, j], length, d, exposure, sample, presets,
                    fluence_min_uJ_cm2, fluence_max_uJ_cm2, int(args["n_fine"]),
                )  # fmt: skip
                out[i, j] = thr / model[i, j]
    return out


def smooth_ln_ratio(
    stripe_length_um: np.ndarray, doping: np.ndarray, ratio: np.ndarray, at_length_um, at_doping
) -> np.ndarray:
    """ln of ``ratio`` (on the grid ``doping`` x ``stripe_length_um``, NaN where unknown) fitted by a
    polynomial, quadratic in ln stripe length and in doping with their cross term, evaluated at
    (``at_length_um``, ``at_doping``) (broadcast; outside the grid clamped to its edges). Fewer than 6
    finite points: zeros (no correction)."""
    ln_l = np.log(np.asarray(stripe_length_um, dtype=float))
    dop = np.asarray(doping, dtype=float)
    X, D = np.meshgrid(ln_l, dop)
    ok = np.isfinite(ratio) & (ratio > 0)
    at_x = np.clip(np.log(np.asarray(at_length_um, dtype=float)), ln_l.min(), ln_l.max())
    at_d = np.clip(np.asarray(at_doping, dtype=float), dop.min(), dop.max())
    at_x, at_d = np.broadcast_arrays(at_x, at_d)
    if ok.sum() < 6:
        return np.zeros(at_x.shape)
    # centred and scaled, so the least squares is well conditioned
    cx, sx = ln_l.mean(), max(np.ptp(ln_l), 1e-9)
    cd, sd = dop.mean(), max(np.ptp(dop), 1e-9)

    def basis(x, d):
        u, v = (x - cx) / sx, (d - cd) / sd
        return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)

    coef, *_ = np.linalg.lstsq(basis(X[ok], D[ok]), np.log(ratio[ok]), rcond=None)
    return basis(at_x, at_d) @ coef
