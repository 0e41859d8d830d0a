"""Doping recovery: films made on request scatter; their absorption measures what they really are.

On the in-process twin (its bench file's ``[twin]`` spreads: doping 0.1 electrons/dot by
default), an operator makes ``--films`` films at requested dopings spread over the range; each
is measured with ``plans.absorption.measure_film_doping`` (dark, reference and sample white-light
reads, the 1S bleach against the neutral reference of the preset's dots). For each film the
table shows the request, the doping the twin drew (its hidden truth, ``film_truth``), the
measured doping with its 1-sigma error, the error and the pull (measured - true) / error.
With --json, one JSON object on the last line: ``films`` (the rows), ``rms_pull``,
``max_abs_pull``, ``max_abs_error_e_per_dot``, ``mean_stated_error_e_per_dot``,
``rms_scatter_e_per_dot`` (drawn - requested), ``lab_time_per_measurement_s``, ``seed``.

An honest stated error has an rms pull near 1; the measurement is useful while its error is well
below the films' scatter (which a campaign trusting the request would carry as a bias).
"""

from __future__ import annotations

import argparse
import json
import math
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from bluesky import RunEngine

from devices import load_bench
from plans.absorption import absorption_lab_time_s, measure_film_doping
from sim.devices import default_twin_bench_path, twin_bench_devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--films", type=int, default=10, help="films to make and measure (>= 2)")
    parser.add_argument("--seed", type=int, default=0, help="the twin's seed")
    parser.add_argument("--min-doping", type=float, default=0.5, help="lowest requested doping, electrons/dot")
    parser.add_argument("--max-doping", type=float, default=7.8, help="highest requested doping, electrons/dot")
    parser.add_argument(
        "--film-scatter", type=float, default=None, help="doping spread, electrons/dot (default: the twin's)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    if args.films < 2:
        parser.error("--films must be at least 2")

    cfg = load_bench(default_twin_bench_path())
    if args.film_scatter is not None:
        cfg = cfg.model_copy(update={"twin": cfg.twin.model_copy(update={"film_doping_spread": args.film_scatter})})
    bench = twin_bench_devices(cfg, seed=args.seed)
    RE = RunEngine({}, call_returns_result=True)
    rows = []
    for requested in np.linspace(args.min_doping, args.max_doping, args.films):
        bench.stage.request_film(float(requested)).wait(1)
        film = bench.stage.sample.get()
        truth = bench.film_truth(film)
        t0 = bench.lab_time_s()
        m = RE(measure_film_doping(bench)).plan_result
        lab_s = bench.lab_time_s() - t0
        error = m.doping_e_per_dot - truth.doping_e_per_dot
        rows.append(
            {
                "film": film,
                "requested_e_per_dot": float(requested),
                "drawn_e_per_dot": truth.doping_e_per_dot,
                "measured_e_per_dot": m.doping_e_per_dot,
                "stated_error_e_per_dot": m.doping_err_e_per_dot,
                "error_e_per_dot": error,
                "pull": error / m.doping_err_e_per_dot,
                "thickness_nm": truth.thickness_nm,
                "lab_time_s": lab_s,
                "uid": m.uid,
            }
        )
    pulls = np.array([r["pull"] for r in rows])
    errors = np.array([r["error_e_per_dot"] for r in rows])
    stated = np.array([r["stated_error_e_per_dot"] for r in rows])
    scatter = np.array([r["drawn_e_per_dot"] - r["requested_e_per_dot"] for r in rows])
    result = {
        "films": rows,
        "seed": args.seed,
        "film_doping_spread_e_per_dot": cfg.twin.film_doping_spread,
        "rms_pull": math.sqrt(float(np.mean(pulls**2))),
        "max_abs_pull": float(np.max(np.abs(pulls))),
        "max_abs_error_e_per_dot": float(np.max(np.abs(errors))),
        "mean_stated_error_e_per_dot": float(np.mean(stated)),
        "rms_scatter_e_per_dot": math.sqrt(float(np.mean(scatter**2))),
        "lab_time_per_measurement_s": float(np.mean([r["lab_time_s"] for r in rows])),
        "lab_time_model_s": absorption_lab_time_s(bench),
    }
    print(
        f"doping recovery on the twin (seed {args.seed}, film doping spread "
        f"{cfg.twin.film_doping_spread:g} e/dot); dopings in electrons/dot"
    )
    print(f"{'film':18s}{'requested':>10s}{'drawn':>9s}{'measured':>18s}{'error':>9s}{'pull':>7s}{'t (nm)':>8s}")
    for r in rows:
        measured = f"{r['measured_e_per_dot']:.3f} +- {r['stated_error_e_per_dot']:.3f}"
        print(
            f"{r['film']:18s}{r['requested_e_per_dot']:>10.3f}{r['drawn_e_per_dot']:>9.3f}{measured:>18s}"
            f"{r['error_e_per_dot']:>+9.3f}{r['pull']:>+7.2f}{r['thickness_nm']:>8.1f}"
        )
    print(
        f"rms pull {result['rms_pull']:.2f} (1 = honest errors), max |pull| {result['max_abs_pull']:.2f}, "
        f"max |error| {result['max_abs_error_e_per_dot']:.3f} e/dot, "
        f"mean stated error {result['mean_stated_error_e_per_dot']:.3f} e/dot"
    )
    print(
        f"films' scatter (drawn - requested): rms {result['rms_scatter_e_per_dot']:.3f} e/dot; "
        f"lab time per measurement {result['lab_time_per_measurement_s']:g} s "
        f"(cost model: {result['lab_time_model_s']:g} s)"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
