"""Signal matrix: real signals at random moments against gainloop's commands over Channel Access.

For each command (``gainloop measure``, ``gainloop campaign run``, a queue item in ``gainloop
qserver start``) and each signal (SIGINT, SIGINT held down, SIGTERM, SIGKILL) it runs the command
against the twin's IOC (``gainloop twin serve``, a subprocess on 127.0.0.1) and sends the signal at
moments drawn uniformly over the command's life (seeded), then checks the shutter (closed at once;
after SIGKILL within the IOC's watchdog time) and the catalog (every run has its stop document but a
SIGKILLed one, which ``campaign status`` reports interrupted) -- the checks of
``harness/signals.py``, which tests/test_bench_signals.py runs at a few moments.

Prints one row per command and signal: moments tried, how many the command outlived (it ended
first), how many it let finish (the signal came as its plan ended: every run whole), shutter
closed, the longest wait for it, runs stored, runs without a stop document, problems. With
--json, one JSON object on the last line: ``{"rows": [...], "trials": [...], "moments": N,
"all_ok": bool}``.

Usage: python benchmarks/signal_matrix.py [--moments 20] [--commands measure,campaign,queue]
       [--signals SIGINT,SIGINT_HELD,SIGTERM,SIGKILL] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the harness (harness/) and the packages of this checkout

#: Wall seconds over which the moments are drawn, at the IOC's time scale of 1000: a quarter of the
#: moments from the command's start (start-up, connection, catalog), the rest from the moment the
#: shutter first reads open (the plan pumping: a scan ~1 s, three trials ~5 s); a queue item's from
#: its start.
FROM_START_S = {"measure": (0.3, 8.0), "campaign": (0.3, 8.0)}  # (the first 0.3 s: Python itself starting)
FROM_SHUTTER_S = {"measure": (0.0, 1.0), "campaign": (0.0, 5.0), "queue": (0.0, 1.0)}


def main(argv: list[str] | None = None) -> int:
    from harness.signals import COMMANDS, SIGNALS, run_queue_trial, run_trial, summarise
    from sim.ioc_process import twin_ioc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moments", type=int, default=20, help="moments per command and signal (default 20)")
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--signals", default=",".join(SIGNALS))
    ap.add_argument("--seed", type=int, default=0, help="seed of the moments")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    signals = [s.strip() for s in args.signals.split(",") if s.strip()]
    bad = [c for c in commands if c not in COMMANDS] + [s for s in signals if s not in SIGNALS]
    if bad or args.moments < 1:
        ap.error(f"unknown {bad}; commands: {', '.join(COMMANDS)}; signals: {', '.join(SIGNALS)}; moments >= 1")
    rng = random.Random(args.seed)
    trials = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gainloop-signals-") as tmp, twin_ioc(time_scale=1000.0, cwd=REPO) as ioc:
        for command in commands:
            for sig in signals:
                for k in range(args.moments):
                    if command == "queue":
                        moment = rng.uniform(*FROM_SHUTTER_S[command])
                        trial = run_queue_trial(ioc, sig, moment, Path(tmp))
                    else:
                        pumping = k % 4 != 0
                        moment = rng.uniform(*(FROM_SHUTTER_S if pumping else FROM_START_S)[command])
                        trial = run_trial(ioc, command, sig, moment, Path(tmp), after_shutter_opens=pumping)
                    trials.append(trial)
                    mark = "ok" if trial.ok else "PROBLEM: " + "; ".join(trial.problems)
                    print(
                        f"{command:9s} {sig:12s} {k + 1:3d}/{args.moments} {moment:6.2f} s after {trial.anchor}: "
                        f"exit {trial.exit_code}, "
                        f"shutter {'closed' if trial.shutter_closed else 'OPEN'}, {trial.runs} runs "
                        f"({trial.runs_without_stop} open) {mark}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if not trial.ok:
                        print(trial.output[-2500:], file=sys.stderr, flush=True)
    rows = summarise(trials)
    head = (
        f"{'command':9s} {'signal':12s} {'moments':>7s} {'ended 1st':>9s} {'finished':>8s} {'shutter closed':>14s} "
        f"{'max wait s':>10s} {'runs':>5s} {'no stop doc':>11s} {'problems':>8s}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['command']:9s} {r['signal']:12s} {r['moments']:7d} {r['ended_before_signal']:9d} "
            f"{r['completed_anyway']:8d} "
            f"{r['shutter_closed']:>9d}/{r['moments']:<4d} {r['max_close_s']:10.2f} {r['runs']:5d} "
            f"{r['runs_without_stop']:11d} {r['problems']:8d}"
        )
    all_ok = all(t.ok for t in trials)
    print(f"{len(trials)} signals sent in {time.monotonic() - t0:.0f} s; every check held: {all_ok}")
    if args.json:
        print(
            json.dumps(
                {"rows": rows, "trials": [t.as_dict() for t in trials], "moments": len(trials), "all_ok": all_ok}
            )
        )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
