"""Synthetic truth for calibration tests and benchmarks: a twin bench whose hidden preset is perturbed,
measured with the real plans into a real catalog.

``perturbed_truth(presets, sample, seed)`` draws factors for several film and Auger parameters (tens of
percent, inside their physical ranges); ``measure_runs(catalog, truth, n_runs, seed)`` measures ASE
fluence scans and VSL scans of the library film on the twin bench with that truth (the plans, the
RunEngine, the catalog writer: as a bench would), returning the run uids; ``measure_ta_run`` a pump-probe run
of that film and ``measure_lasing_run`` a ``lasing_threshold`` run of the DFB device made of the same dots
(``DFB``). ``LASING_PERTURBED`` are the parameters a DFB's output depends on, for a truth drawn with
``perturbed_truth(..., keys=...)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.presets import PHYSICAL_RANGES, PresetFile, get_parameter, with_parameters

__all__ = [
    "BENCH_FILE",
    "DFB",
    "FILM",
    "LASING_PERTURBED",
    "PERTURBED",
    "measure_lasing_run",
    "measure_runs",
    "measure_ta_run",
    "perturbed_truth",
    "stripe_range_um",
]

BENCH_FILE = Path(__file__).resolve().parents[1] / "examples" / "twin_bench.toml"
#: The library film the runs are measured on, and its preset sample.
FILM = "cas_doped-film"
SAMPLE = "cas_doped"
#: Parameters the truth differs in (``<table>.<key>``): the ones ASE and VSL runs of one film constrain.
PERTURBED: tuple[str, ...] = (
    "film.absorbed_fraction_1030",
    "film.alpha0_per_cm",
    "film.waveguide_loss_per_cm",
    "film.saturation_intensity",
    "auger.tau_xx_ps",
)
#: The library DFB device of the same preset sample (its film is made of the same dots as ``FILM``).
DFB = "cas_doped-dfb"
#: Parameters a truth for lasing runs differs in: the film's gain, its waveguide loss and the exciton yield, which
#: the DFB's output depends on, and the stripe film's absorption, which with the yield sets a stripe's <N> (stripe
#: runs alone see only their product). Not the intraband losses: at one doping a lasing run sees only the total
#: loss, as the identifiability analysis says.
LASING_PERTURBED: tuple[str, ...] = (
    "film.absorbed_fraction_1030",
    "film.alpha0_per_cm",
    "film.waveguide_loss_per_cm",
    "exciton_yield",
)
#: The designs of the runs, in turn: ("ase", stripe length um) or ("vsl", fluence uJ/cm^2).
_DESIGNS = (("ase", 800.0), ("vsl", 300.0), ("ase", 2000.0), ("ase", 300.0), ("vsl", 200.0))
_VSL_LENGTHS_UM = (50.0, 100.0, 200.0, 300.0, 400.0, 600.0)


def perturbed_truth(
    presets: PresetFile, seed: int, *, spread: float = 0.3, keys: tuple[str, ...] = PERTURBED
) -> PresetFile:
    """The presets with every parameter ``keys`` (default ``PERTURBED``) of the sample scaled by a factor uniform
    in [1 - spread, 1 + spread] away from 1 by at least spread/3 (seeded), clipped to its physical range."""
    rng = np.random.default_rng([seed, 0xCA1])
    values = {}
    for key in keys:
        name = f"{SAMPLE}.{key}"
        size = rng.uniform(spread / 3.0, spread)
        factor = 1.0 + size * rng.choice([-1.0, 1.0])
        rng_ = PHYSICAL_RANGES[key]
        values[name] = float(np.clip(get_parameter(presets, name) * factor, rng_.lo, rng_.hi))
    return with_parameters(presets, values)


def measure_runs(catalog, truth: PresetFile, n_runs: int, seed: int) -> list[str]:
    """Measure ``n_runs`` stripe runs (ASE fluence scans and VSL scans in turn) of ``FILM`` on the twin
    bench whose hidden presets are ``truth``, into ``catalog``; returns their uids in order."""
    from bluesky import RunEngine

    from plans.analysis import AnalysisError
    from plans.measurements import ase_fluence_scan, vsl_scan
    from sim.devices import twin_bench_devices

    bench = twin_bench_devices(BENCH_FILE, seed=seed, presets=truth)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(catalog.writer())
    uids = []
    for i in range(n_runs):
        kind, value = _DESIGNS[i % len(_DESIGNS)]
        if kind == "ase":
            plan = ase_fluence_scan(bench, FILM, stripe_length_um=value)
        else:
            plan = vsl_scan(bench, FILM, fluence_uJ_cm2=value, stripe_lengths_um=list(_VSL_LENGTHS_UM))
        try:
            uids.append(RE(plan).plan_result["uid"])
        except AnalysisError:
            continue  # the run is stored as failed (its analysis found no threshold or gain); a calibration skips it
    return uids


def measure_ta_run(
    catalog, truth: PresetFile, seed: int, parts: tuple[str, ...] = ("threshold", "biexciton", "gain_lifetime")
) -> str:
    """Measure one pump-probe (TA) run of ``FILM`` on the twin bench whose hidden presets are ``truth``, into
    ``catalog`` (kappa: the film's own, as a lab measures it by absorption); returns its uid."""
    from bluesky import RunEngine

    from plans.pump_probe import pump_probe
    from sim.devices import twin_bench_devices

    bench = twin_bench_devices(BENCH_FILE, seed=seed, presets=truth)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(catalog.writer())
    kappa = bench.excitons_per_uJ_cm2(FILM)
    return RE(pump_probe(bench, FILM, excitons_per_uJ_cm2=kappa, parts=parts)).plan_result["uid"]


def measure_lasing_run(catalog, truth: PresetFile, seed: int, **plan_args) -> str:
    """Measure one ``lasing_threshold`` run of the DFB device ``DFB`` on the twin bench whose hidden presets are
    ``truth``, into ``catalog`` (``plan_args``: the plan's keyword arguments, e.g. ``n_coarse``, ``n_fine``,
    ``fluence_max_uJ_cm2``); returns its uid."""
    from bluesky import RunEngine

    from plans.lasing import lasing_threshold
    from sim.devices import twin_bench_devices

    bench = twin_bench_devices(BENCH_FILE, seed=seed, presets=truth)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(catalog.writer())
    return RE(lasing_threshold(bench, DFB, **plan_args)).plan_result["uid"]


def stripe_range_um(n_runs: int) -> tuple[float, float]:
    """The stripe lengths (um) the first ``n_runs`` designs cover."""
    lengths = []
    for kind, value in _DESIGNS[: max(n_runs, 1)]:
        lengths.extend([value] if kind == "ase" else _VSL_LENGTHS_UM)
    return min(lengths), max(lengths)
