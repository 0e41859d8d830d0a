"""Fault matrix: every fault of the fault suite, repeated, with what it lost and how long recovery took.

Runs the scenario functions of ``harness/faults`` (the same ones the fault tests
assert on) against real processes and services: the campaign CLI, the twin's IOC, a
Tiled server on the machine's PostgreSQL, the queueserver manager on Redis. Each
scenario runs once; a scenario that took less than ``--cheap-s`` seconds is repeated up
to ``--repeat`` times in all. Per fault it prints the runs, trials lost, trials doubled,
documents lost (summed over the runs; every one must be zero), the median recovery time
and whether every check of every run held. A scenario whose service is absent is
reported as not run, naming the service.

With --json, one JSON object on the last line, keyed by fault: ``runs``, ``trials_lost``,
``trials_doubled``, ``documents_lost``, ``recovery_s`` (median, null if none), ``ok``,
``skipped`` (the missing service, or null), ``wall_s``.

Usage: python benchmarks/fault_matrix.py [--repeat 3] [--cheap-s 20] [--only KEY ...] [--json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the harness (harness/) and the packages of this checkout

#: Scenario modules in the order of the issue's faults (1-2 and 8: campaign; 3, 4, 10: catalog;
#: 5-7: devices; 9: queueserver).
MODULES = ("campaign", "catalog", "devices", "queueserver")


def scenarios() -> dict[str, object]:
    found: dict[str, object] = {}
    for name in MODULES:
        module = importlib.import_module(f"harness.faults.{name}")
        for key, fn in module.SCENARIOS.items():
            if key in found:
                raise SystemExit(f"fault key {key!r} defined twice (harness/faults/{name}.py)")
            found[key] = fn
    return found


def run_matrix(selected: dict[str, object], repeat: int, cheap_s: float, workdir: Path) -> dict[str, dict]:
    from harness.faults import FaultEnv, ServiceMissing

    results: dict[str, dict] = {}
    with FaultEnv(workdir / "env") as env:
        for key, fn in selected.items():
            figures, skipped, error = [], None, None
            t_start = time.monotonic()
            for i in range(repeat):
                run_dir = workdir / f"{key}-{i}"
                run_dir.mkdir(parents=True)
                t0 = time.monotonic()
                try:
                    figures.append(fn(run_dir, env))
                except ServiceMissing as exc:
                    skipped = str(exc)
                    break
                except Exception as exc:  # a scenario that crashes is a failed row, not a crashed matrix
                    error = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc(file=sys.stderr)
                    break
                if time.monotonic() - t0 > cheap_s:
                    break
            recoveries = [f.recovery_s for f in figures if math.isfinite(f.recovery_s)]
            results[key] = {
                "runs": len(figures),
                "trials_lost": sum(f.trials_lost for f in figures),
                "trials_doubled": sum(f.trials_doubled for f in figures),
                "documents_lost": sum(f.documents_lost for f in figures),
                "recovery_s": statistics.median(recoveries) if recoveries else None,
                "ok": bool(figures) and error is None and all(f.ok for f in figures),
                "failed_checks": sorted({c for f in figures for c, ok in f.checks.items() if not ok}),
                "skipped": skipped,
                "error": error,
                "detail": figures[-1].detail if figures else "",
                "wall_s": time.monotonic() - t_start,
            }
    return results


def print_table(results: dict[str, dict]) -> None:
    w = max([len("fault"), *map(len, results)])
    head = f"{'fault':<{w}} {'runs':>4} {'lost':>5} {'doubled':>7} {'docs lost':>9} {'recovery s':>10}  ok"
    print(head)
    print("-" * len(head))
    for key, r in results.items():
        if r["skipped"]:
            print(f"{key:<{w}} {'-':>4}  not run: {r['skipped']}")
            continue
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}"
        ok = "yes" if r["ok"] else "NO"
        print(
            f"{key:<{w}} {r['runs']:>4} {r['trials_lost']:>5} {r['trials_doubled']:>7} "
            f"{r['documents_lost']:>9} {rec:>10}  {ok}"
        )
        if r["error"]:
            print(f"{'':<{w}} error: {r['error']}")
        if r["failed_checks"]:
            print(f"{'':<{w}} failed checks: {', '.join(r['failed_checks'])}")
    total = [r for r in results.values() if not r["skipped"]]
    print(
        f"\n{len(total)} faults run; lost {sum(r['trials_lost'] for r in total)}, "
        f"doubled {sum(r['trials_doubled'] for r in total)}, "
        f"documents lost {sum(r['documents_lost'] for r in total)}; "
        f"all checks held: {all(r['ok'] for r in total)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs in all of a cheap scenario (default 3)")
    parser.add_argument(
        "--cheap-s", type=float, default=20.0, help="a scenario faster than this (s) is repeated (default 20)"
    )
    parser.add_argument("--only", nargs="*", metavar="KEY", help="run only these faults")
    parser.add_argument("--list", action="store_true", help="list the fault keys and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    every = scenarios()
    if args.list:
        print("\n".join(every))
        return 0
    unknown = sorted(set(args.only or ()) - set(every))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(every)}")
    selected = {k: v for k, v in every.items() if not args.only or k in args.only}
    with tempfile.TemporaryDirectory(prefix="gainloop-faults-") as tmp:
        results = run_matrix(selected, args.repeat, args.cheap_s, Path(tmp))
    print_table(results)
    if args.json:
        print(json.dumps(results))
    return 0 if all(r["ok"] for r in results.values() if not r["skipped"]) else 1


if __name__ == "__main__":
    sys.exit(main())
