"""Sweep writers under load: N writer processes (a sweep's workers on one host, sharing its spool) write
their runs at once into one ``gainloop catalog serve`` on a fresh PostgreSQL database; every run is read
back and compared with what was written (``harness/sweep_load.py``, the scenario ``tests/test_sweep_load.py``
asserts on).

Each writer writes a campaign-like record run (open the whole time, streamed by the drain) and ``--runs``
trial runs of ``--events`` events (two scalars and a 32-point waveform each). Prints runs written, stored
complete, lost, doubled, the writing wall time and runs/s (all writers together, from their common start
until the last one's runs were in the catalog); with --json, one JSON object on the last line
(``runs_written``, ``runs_stored``, ``lost``, ``doubled``, ``unexpected``, ``write_s``, ``read_s``,
``runs_per_s``, ``records_streamed``, ``errors``, ``problems``, ``ok``). Exit status 1 if a run was lost
or doubled, or a writer failed; 2 if PostgreSQL is absent.

Usage: python benchmarks/sweep_load.py [--writers 4] [--runs 10] [--events 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the harness (harness/) and the packages of this checkout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4, help="writer processes (default 4)")
    parser.add_argument("--runs", type=int, default=10, help="trial runs of each writer, besides its record run")
    parser.add_argument("--events", type=int, default=5, help="events of each trial run")
    parser.add_argument("--pause-s", type=float, default=0.15, help="seconds each writer waits after a trial run")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args(argv)
    for name in ("writers", "runs", "events"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    from harness.faults import FaultEnv, ServiceMissing
    from harness.sweep_load import scenario_sweep_writers

    with tempfile.TemporaryDirectory(prefix="gainloop-sweep-load-") as tmp, FaultEnv(Path(tmp) / "env") as env:
        try:
            figures = scenario_sweep_writers(
                Path(tmp) / "load",
                env,
                n_writers=args.writers,
                runs_per_writer=args.runs,
                n_events=args.events,
                pause_s=args.pause_s,
            )
        except ServiceMissing as exc:
            print(f"error: {exc}: the load test needs a Tiled server on PostgreSQL", file=sys.stderr)
            return 2
    result = figures.as_dict()
    print(
        f"{args.writers} writer processes x ({args.runs} trial runs of {args.events} events + 1 record run) into "
        f"gainloop catalog serve on PostgreSQL, one shared spool folder"
    )
    head = (
        f"{'runs written':>12} {'stored':>7} {'lost':>5} {'doubled':>7} {'unexpected':>10} {'write s':>8} {'runs/s':>7}"
    )
    print(head)
    print("-" * len(head))
    print(
        f"{figures.runs_written:>12} {figures.runs_stored:>7} {figures.lost:>5} {figures.doubled:>7} "
        f"{figures.unexpected:>10} {figures.write_s:>8.1f} {figures.runs_per_s:>7.2f}"
    )
    print(f"record runs streamed into the catalog while open: {figures.streamed} of {args.writers}")
    load = os.getloadavg()[0]
    print(f"read back and compared in {figures.read_s:.1f} s; machine: {os.cpu_count()} CPUs, load {load:.1f}")
    for line in (figures.errors + figures.problems)[:10]:
        print(f"  {line}")
    if args.json:
        print(json.dumps(result))
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
