"""Leave-one-out check of the twin's parameter set against the paper's table.

For each row k of the table: refit the free parameters of the shipped presets that were
chosen to hit row k (its ``basis``, ``gainloop.reproduce.ROW_BASIS``) on the *other* rows
they affect, with the parameter's prior as a weak regulariser, then measure row k on the
refitted twin. A parameter that only row k constrains falls back to its prior: its row is
then a prediction from the prior, which is the honest out-of-sample test of a knob.
A predicted row (basis ``"predicted"``) is measured on the presets as they are: leaving it
out changes no parameter.

The refit is a small bounded least squares (``scipy.optimize.least_squares``) of the
residuals (twin - paper)/tol over the affected rows plus (p - prior)/width per parameter,
the rows measured with the same seeded protocols as ``twin reproduce``. Parameters act on
the rows of ``AFFECTS`` (their basis rows and the other rows their physics reaches), the
parameters of the other rows keep their shipped values (the basis is nearly block diagonal).

Priors (value, width, source) are what a lab would assume without the row: ``PRIORS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from core.rows import Row
from twin.presets import PHYSICAL_RANGES, PresetFile, get_parameter, with_parameters

from .reproduce import PREDICTED, ROW_BASIS, PaperNumber, load_paper_numbers, reproduce

__all__ = ["AFFECTS", "PRIORS", "LooRow", "Prior", "leave_one_out"]


@dataclass(frozen=True)
class Prior:
    """A parameter's value without the row that calibrates it: centre, width (same unit), source."""

    value: float
    width: float
    source: str


#: Priors of the free parameters (DFB ones in their own block, to change with the DFB rework).
PRIORS: dict[str, Prior] = {
    "cas.doping_ne": Prior(0.0, 0.3, "the paper: undoped film, <n_e> = 0"),
    "core.auger.tau_xx_ps": Prior(176.0, 90.0, "C/A-S tau_XX x V_core/V_cas (volume scaling, Robel 2009)"),
    "cas.auger.tau_xx_ps": Prior(706.0, 350.0, "core tau_XX x V_cas/V_core (volume scaling, Robel 2009)"),
    "core.auger.scaling_exponent": Prior(1.0, 0.1, "statistical pathway count"),
    "cas.auger.electron_fraction": Prior(0.5, 0.25, "mirror-symmetric PbS bands"),
    "core.film.absorbed_fraction_1030": Prior(0.16, 0.08, "sigma_1030 = 1e-17 cm^2 x d^3 (Moreels 2009), 120 nm"),
    "cas.film.absorbed_fraction_1030": Prior(0.20, 0.10, "sigma_1030 = 1e-17 cm^2 x d^3 (Moreels 2009), 160 nm"),
    "cas_doped.film.absorbed_fraction_1030": Prior(0.20, 0.10, "as cas: same dots, same film"),
    "cas.film.waveguide_loss_per_cm": Prior(30.0, 30.0, "CQD slab waveguides: tens of 1/cm"),
    "cas_doped.film.waveguide_loss_per_cm": Prior(30.0, 30.0, "CQD slab waveguides: tens of 1/cm"),
    "cas.spectra.ase_redshift_meV": Prior(20.0, 10.0, "X-X attraction + Stokes shift of PbS films"),
    "core.spectra.ase_redshift_meV": Prior(20.0, 10.0, "X-X attraction + Stokes shift of PbS films"),
    "cas.film.alpha0_per_cm": Prior(5000.0, 2500.0, "1S absorption of packed PbS dots (Moreels 2009)"),
    # DFB (coupled-mode theory, twin.grating); shared device parameters named by the batch's first sample
    "cas.dfb.grating_length_um": Prior(200.0, 100.0, "pumped length of the grating (pump spot 0.1-1 mm)"),
    "cas.dfb.threshold_narrowing": Prior(0.5, 0.25, "gain narrowing of a laser line at threshold (0.3-1)"),
    "cas.dfb.pl_collection": Prior(0.03, 0.03, "PL share a normal-incidence fibre collects beside the beam (1-10 %)"),
    "cas.dfb.film_index": Prior(2.5, 0.2, "PbS CQD solids at 1.6 um, n 2.3-2.7"),
    "cas_doped.dfb.film_index": Prior(2.5, 0.2, "PbS CQD solids at 1.6 um, n 2.3-2.7"),
}

#: Rows each free parameter acts on beyond its own basis rows (its physics reaches them).
AFFECTS: dict[str, tuple[str, ...]] = {
    "cas.doping_ne": ("auger_biexciton_cas", "gain_lifetime_cas", "ase_threshold_cas", "ase_threshold_N_cas"),
    "core.auger.tau_xx_ps": ("gain_lifetime_core", "ta_gain_threshold_core"),
    "cas.auger.tau_xx_ps": ("gain_lifetime_cas", "gain_lifetime_cas_doped"),
    "core.auger.scaling_exponent": ("ta_gain_threshold_core",),
    "cas.auger.electron_fraction": ("gain_lifetime_cas",),
    "cas.film.waveguide_loss_per_cm": ("ase_threshold_N_cas",),
    "cas_doped.film.waveguide_loss_per_cm": ("ase_threshold_N_cas_doped", "net_modal_gain_max_cas_doped"),
    "cas.film.absorbed_fraction_1030": ("ase_threshold_cas",),
    "cas_doped.film.absorbed_fraction_1030": ("ase_threshold_cas_doped",),
    "cas.film.alpha0_per_cm": ("net_modal_gain_saturation_cas_doped", "ase_threshold_cas_doped"),
    "cas.dfb.grating_length_um": ("dfb_lasing_threshold_cas", "dfb_lasing_threshold_N_cas_doped"),
}


@dataclass(frozen=True)
class LooRow(Row):
    """Row k measured on the twin refitted without it."""

    id: str
    paper: float
    tol: float
    full: float
    loo: float
    within_2tol: bool
    refit: str


def _prior(name: str, presets: PresetFile) -> Prior:
    """The declared prior, or (a parameter without one, e.g. after a model change) its shipped value
    with a 50 % width: then the row's out-of-sample value only tests the refit on the other rows."""
    if name in PRIORS:
        return PRIORS[name]
    value = get_parameter(presets, name)
    return Prior(value, max(abs(value) * 0.5, 1e-6), "no prior declared: the shipped value")


def _rows_of(name: str) -> set[str]:
    rows = {r for r, b in ROW_BASIS.items() if b != PREDICTED and name in b}
    return rows | set(AFFECTS.get(name, ()))


def _bounds(name: str, presets: PresetFile) -> tuple[float, float]:
    key = name.split(".", 1)[1]
    rng = PHYSICAL_RANGES.get(key)
    value = get_parameter(presets, name)
    if rng is not None:
        return rng.lo, rng.hi
    return value * 0.2, value * 5.0


def _residuals(values, names, numbers: dict[str, PaperNumber], rows: set[str], presets, seed):
    p = with_parameters(presets, dict(zip(names, (float(v) for v in values), strict=True)))
    out = []
    for r in reproduce(p, seed=seed, only=rows, numbers=[numbers[i] for i in sorted(rows)]):
        if r.id == "dfb_stability_hours":  # at-least row: penalise only a shortfall
            out.append(min(r.twin - r.paper, 0.0) if math.isfinite(r.twin) else -1e3)
        else:
            out.append((r.twin - r.paper) / r.tol if math.isfinite(r.twin) else 1e3)
    for name, v in zip(names, values, strict=True):
        prior = _prior(name, presets)
        out.append((float(v) - prior.value) / prior.width)
    return np.array(out)


def leave_one_out(presets: PresetFile, *, seed: int = 0, only: set[str] | None = None) -> list[LooRow]:
    """Leave each row out in turn, refit its parameters on the rest, measure it; one LooRow per row."""
    table = load_paper_numbers()
    numbers = {n.id: n for n in table}
    full = {r.id: r for r in reproduce(presets, seed=seed, only=only)}
    out = []
    for n in table:
        if only is not None and n.id not in only:
            continue
        basis = ROW_BASIS.get(n.id, PREDICTED)
        if basis == PREDICTED:
            value, refit = full[n.id].twin, "none (predicted)"
        else:
            names = list(basis)
            rows = set().union(*(_rows_of(x) for x in names)) - {n.id}
            x0 = np.array([_prior(x, presets).value for x in names])
            lo, hi = zip(*(_bounds(x, presets) for x in names), strict=True)
            x0 = np.clip(x0, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
            if rows:
                fit = optimize.least_squares(
                    _residuals,
                    x0,
                    bounds=(lo, hi),
                    args=(names, numbers, rows, presets, seed),
                    diff_step=0.02,
                    max_nfev=25,
                    x_scale=np.array([_prior(x, presets).width for x in names]),
                )
                x = fit.x
                refit = ", ".join(f"{nm}={v:.4g}" for nm, v in zip(names, x, strict=True)) + f" on {len(rows)} rows"
            else:
                x = x0
                refit = ", ".join(f"{nm}={v:.4g}" for nm, v in zip(names, x, strict=True)) + " (prior: no other row)"
            p = with_parameters(presets, dict(zip(names, (float(v) for v in x), strict=True)))
            value = reproduce(p, seed=seed, only={n.id})[0].twin
        if n.compare == "at_least":
            ok = math.isfinite(value) and value >= n.value
        else:
            ok = math.isfinite(value) and abs(value - n.value) <= 2.0 * n.tol
        out.append(LooRow(n.id, n.value, n.tol, full[n.id].twin, float(value), bool(ok), refit))
    return out
