"""Wall time of one campaign trial over Channel Access against the same trial in-process.

The same nested campaign (same seed, same trials: gainloop's parity) runs twice: on the twin's
in-process devices, and over CA on the twin's IOC (``gainloop twin serve`` in a subprocess on
127.0.0.1, at ``--time-scale``: lab seconds per wall second). Documents go to memory (the catalog's
cost is the same either way and is measured by ``plan_overhead.py``). Per trial it takes the wall
time between two progress reports of the campaign plan, and for the CA trial the *floor*: the lab
time the IOC spent in the trial's operations (exposures, slit travel, sample changes) divided by
the time scale -- the wall time a perfect client would need. What is left above the floor is the
client's and the wire's (ours to cut).

Prints a table (median over the trials) and, with --json, one JSON object on the last line:
``inprocess_trial_s``, ``ca_trial_s``, ``ca_floor_s``, ``ca_overhead_s`` (= ca - floor),
``ca_over_inprocess`` (ratio), ``trials``, ``time_scale``, ``same_results`` (the two campaigns gave
the same trials and thresholds).

Usage: python benchmarks/trial_wall_time.py [--trials 6] [--time-scale 100] [--seed 0] [--layer caproto] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class _Memory:
    """Stands in for the catalog: keeps the documents."""

    location = "memory"

    def __init__(self) -> None:
        self.documents: list[tuple[str, dict]] = []

    def campaign_writer(self):
        return lambda name, doc: self.documents.append((name, doc))


def _campaign(bench, trials: int, seed: int) -> tuple[list[float], list[float], dict]:
    """Run the campaign on ``bench``: per-trial wall seconds, per-trial lab seconds, and its summary."""
    from bluesky import RunEngine

    from gainloop.campaign import CampaignConfig, run_campaign

    marks: list[tuple[float, float]] = []

    def progress(summary: dict) -> None:
        marks.append((time.perf_counter(), bench.lab_time_s()))

    cfg = CampaignConfig(strategy="nested", seed=seed, twin_seed=seed, budget_lab_h=None, max_trials=trials)
    RE = RunEngine({}, call_returns_result=True, context_managers=[])
    start = (time.perf_counter(), bench.lab_time_s())
    summary = run_campaign(_Memory(), cfg, bench=bench, RE=RE, progress=progress)
    points = [start, *marks]
    wall = [b[0] - a[0] for a, b in itertools.pairwise(points)]
    lab = [b[1] - a[1] for a, b in itertools.pairwise(points)]
    return wall, lab, summary


def main(argv: list[str] | None = None) -> int:
    from devices import connect_bench, parse_bench
    from sim.devices import default_twin_bench_path, twin_bench_devices
    from sim.ioc_process import twin_ioc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--time-scale", type=float, default=100.0, help="the IOC's lab seconds per wall second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer", default="caproto", choices=("caproto", "pyepics"), help="ophyd's control layer")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    local = twin_bench_devices(default_twin_bench_path(), seed=args.seed)
    wall_local, _, sum_local = _campaign(local, args.trials, args.seed)
    bench_file = default_twin_bench_path()
    with twin_ioc(bench_file, time_scale=args.time_scale, args=("--seed", str(args.seed)), cwd=REPO):
        data = tomllib.loads(bench_file.read_text())
        data["bench"]["control_layer"] = args.layer
        bench = connect_bench(parse_bench(data, str(bench_file)))
        try:
            wall_ca, lab_ca, sum_ca = _campaign(bench, args.trials, args.seed)
        finally:
            bench.make_safe()
            bench.destroy()
    floor = [lab / args.time_scale for lab in lab_ca]
    med = statistics.median
    out = {
        "inprocess_trial_s": round(med(wall_local), 3),
        "ca_trial_s": round(med(wall_ca), 3),
        "ca_floor_s": round(med(floor), 3),
        "ca_overhead_s": round(med([w - f for w, f in zip(wall_ca, floor, strict=True)]), 3),
        "ca_over_inprocess": round(med(wall_ca) / med(wall_local), 2),
        "trials": args.trials,
        "time_scale": args.time_scale,
        "layer": args.layer,
        "same_results": sum_local["best"] == sum_ca["best"] and sum_local["lab_hours"] == sum_ca["lab_hours"],
    }
    print(f"campaign of {args.trials} nested trials, seed {args.seed}; IOC at time scale {args.time_scale:g}")
    print(f"{'':34s} {'median s':>9s}   per trial")
    print(f"{'in-process twin':34s} {out['inprocess_trial_s']:9.3f}   " + " ".join(f"{w:.2f}" for w in wall_local))
    print(f"{'over CA (' + args.layer + ')':34s} {out['ca_trial_s']:9.3f}   " + " ".join(f"{w:.2f}" for w in wall_ca))
    print(
        f"{'  of which the IOC lab time (floor)':34s} {out['ca_floor_s']:9.3f}   " + " ".join(f"{f:.2f}" for f in floor)
    )
    print(f"{'  client and wire (above the floor)':34s} {out['ca_overhead_s']:9.3f}")
    print(f"CA / in-process: {out['ca_over_inprocess']:.2f}x; same trials and best both ways: {out['same_results']}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
