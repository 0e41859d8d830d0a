"""Twin calibration: wall time for 5, 20 and 100 stored runs, parameter recovery and coverage.

Synthetic truth (``harness.calibration``): a twin bench whose hidden presets differ from the shipped
ones in five film and Auger parameters by 10-30 % each, measured with the real plans (ASE fluence
scans and VSL scans of the library film ``cas_doped-film``) into an embedded Tiled catalog; the
calibration (``gainloop.calibrate.select_runs`` + ``twin.calibration.calibrate``, default parameter
choice) starts from the shipped presets and sees only the stored runs.

* wall time: one truth, 100 runs measured once; the calibration on the first 5, 20 and 100 of them,
  reading the catalog included (target: <= 10 s for 20 runs on 2 cores);
* coverage: ``--seeds`` truths (one per seed) with ``--runs`` runs each: the fraction of fitted
  (identifiable) parameters whose truth lies within 2 reported standard errors (target >= 0.9), and
  the largest relative difference of the calibrated twin's ASE threshold map from the truth's over the
  stripe lengths the runs covered at the film's doping (target < 5 %).

Prints two tables and, with ``--json``, one JSON object on the last line: ``wall_s`` (number of runs ->
seconds, keys as strings; ``cpu_s`` the process's CPU seconds beside it), ``coverage``,
``threshold_map_max_rel_dev``, ``seeds``, ``runs_per_seed``, ``not_converged`` (seeds whose fit did not converge:
an error to the user, counted here rather than ending the benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the harness (harness/) and the packages of this checkout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="truths of the coverage study")
    parser.add_argument("--runs", type=int, default=4, help="stored runs per truth in the coverage study")
    parser.add_argument("--sizes", default="5,20,100", help="numbers of runs timed")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from gainloop.calibrate import select_runs
    from gainloop.catalog import Catalog
    from harness.calibration import FILM, SAMPLE, measure_runs, perturbed_truth, stripe_range_um
    from twin.calibration import CalibrationError, calibrate, threshold_map_deviation
    from twin.presets import get_parameter, load_presets

    presets = load_presets()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    # ---------------------------------------------------------------- wall time
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    rows = []
    truth = perturbed_truth(presets, seed=1000)
    with tempfile.TemporaryDirectory() as folder, Catalog(data_dir_path=folder) as cat:
        t0 = time.perf_counter()
        uids = measure_runs(cat, truth, max(sizes), seed=1000)
        measured_s = time.perf_counter() - t0
        calibrate(presets, select_runs(cat, presets, FILM, uids=uids[:1]).runs)  # imports and first calls, untimed
        for n in sizes:
            t0 = time.perf_counter()
            c0 = time.process_time()
            selected = select_runs(cat, presets, FILM, uids=uids[:n])
            result = calibrate(presets, selected.runs)
            wall[str(n)] = time.perf_counter() - t0
            cpu[str(n)] = time.process_time() - c0
            within = sum(abs(e.value - get_parameter(truth, e.name)) <= 2 * e.error for e in result.estimates)
            rows.append(
                (
                    n,
                    result.n_points,
                    wall[str(n)],
                    cpu[str(n)],
                    result.iterations,
                    result.reduced_chi2,
                    within,
                    len(result.estimates),
                )
            )
    print(f"calibration wall time (one truth; {max(sizes)} runs measured in {measured_s:.0f} s, not counted)")
    print(
        f"{'runs':>5} {'acquisitions':>12} {'wall s':>8} {'cpu s':>8} {'iterations':>10} {'red. chi2':>9} "
        f"{'within 2 sd':>11}"
    )
    for n, pts, w, c, it, chi, ok, k in rows:
        print(f"{n:>5} {pts:>12} {w:>8.2f} {c:>8.2f} {it:>10} {chi:>9.3f} {ok:>7}/{k}")

    # ---------------------------------------------------------------- coverage
    inside = total = 0
    devs = []
    failed: list[tuple[int, str]] = []
    per_param: dict[str, list[float]] = {}
    print(f"\ncoverage: {args.seeds} truths x {args.runs} runs")
    print(f"{'seed':>5} {'fitted':>6} {'within 2 sd':>11} {'max |z|':>8} {'map dev %':>9} {'fit s':>6}")
    for seed in range(args.seeds):
        truth = perturbed_truth(presets, seed=seed)
        with tempfile.TemporaryDirectory() as folder, Catalog(data_dir_path=folder) as cat:
            uids = measure_runs(cat, truth, args.runs, seed=seed)
            t0 = time.perf_counter()
            selected = select_runs(cat, presets, FILM, uids=uids)
            try:
                result = calibrate(presets, selected.runs)
            except CalibrationError as exc:  # the command says so and writes nothing: counted, not hidden
                failed.append((seed, str(exc)))
                print(f"{seed:>5} did not converge: {str(exc)[:90]}")
                continue
            fit_s = time.perf_counter() - t0
        z = []
        for e in result.estimates:
            zi = (e.value - get_parameter(truth, e.name)) / e.error
            z.append(zi)
            per_param.setdefault(e.name.split(".", 1)[1], []).append(zi)
        ok = sum(abs(v) <= 2.0 for v in z)
        inside += ok
        total += len(z)
        lengths = np.concatenate([r.stripe_length_um for r in selected.runs])
        dev = threshold_map_deviation(
            result.presets, truth, SAMPLE, (float(lengths.min()), float(lengths.max())), (7.4, 7.4)
        )
        devs.append(dev)
        print(
            f"{seed:>5} {len(z):>6} {ok:>7}/{len(z):<3} {max(abs(v) for v in z):>8.2f} {100 * dev:>9.3f} {fit_s:>6.2f}"
        )
    coverage = inside / total if total else float("nan")
    print(f"\ncoverage (fitted parameters within 2 sd of the truth): {inside}/{total} = {coverage:.3f} (target >= 0.9)")
    print(f"fits that did not converge (an error to the user, nothing written): {len(failed)}/{args.seeds}")
    for name, zs in per_param.items():
        zs_a = np.asarray(zs)
        print(f"  {name:<32} n {zs_a.size:>3}  mean z {zs_a.mean():+.2f}  sd z {zs_a.std():.2f}")
    worst = max(devs) if devs else float("nan")
    print(f"threshold map: largest relative deviation {100 * worst:.3f} % (target < 5 %)")
    print(f"stripe range of the coverage runs: {stripe_range_um(args.runs)} um, doping 7.4 electrons/dot")
    if args.json:
        print(
            json.dumps(
                {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "coverage": coverage,
                    "threshold_map_max_rel_dev": worst,
                    "seeds": args.seeds,
                    "runs_per_seed": args.runs,
                    "not_converged": len(failed),
                }
            )
        )


if __name__ == "__main__":
    main()
