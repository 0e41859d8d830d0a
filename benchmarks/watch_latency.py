"""Watch latency: how soon ``gainloop watch``'s page shows a trial after its stop document, and what the
server costs while it follows a campaign that is idle.

Real processes: ``gainloop catalog serve`` on PostgreSQL (behind an API key), ``gainloop campaign run
--twin`` writing into it, ``gainloop watch`` reading it, and the page open in headless Chromium
(``harness/browser.py``). The page notes, for every trial, the moment it first showed it finished
(``window.gainloopShown``, the browser's clock = the machine's); the trial's stop document carries
the moment its run ended (the RunEngine's clock, the same machine's). The delay is the difference,
for each trial that ended after the page was open.

Idle: the campaign waits ``--idle-s`` seconds once trial 3 is proposed (``$GAINLOOP_FAULT_INJECT``
``stall``: the plan sleeps, nothing is written); meanwhile the watch server's CPU time (all its
threads: the catalog's subscription, its safety poll, the page's open request) over
``--idle-window-s`` seconds, as a fraction of one core.

The delay is split: the stop document until the server's view has the trial (the catalog's event and
the server's read of the campaign: ``read_campaign`` and the page's view), and the rest (the page's
open request answered, the page drawn). A machine others are using slows the catalog server and the
reads most.

Prints a table and, with --json, one JSON object on the last line: ``median_s`` and ``p95_s``
(target <= 2 s), ``idle_cpu_share`` (target <= 0.05 of one core), the delays, how the watch followed
the catalog (its subscription or a poll) and the trials.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the harness (harness/) and the packages of this checkout

IDLE_TRIAL = 3


def _cpu_s(proc) -> float:
    """CPU seconds of the watch server and its children (the posterior's process)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except Exception:  # a child gone meanwhile
            continue
        total += t.user + t.system
    return total


def measure(trials: int, idle_s: float, idle_window_s: float, seed: int) -> dict:
    import numpy as np
    import psutil

    from gainloop.catalog import Catalog
    from gainloop.records import read_campaign
    from harness.browser import Browser
    from harness.faults import FaultEnv
    from harness.watch import first_campaign_uid, start_campaign, start_watch, stop

    with tempfile.TemporaryDirectory(prefix="gainloop-watch-bench-") as tmp, FaultEnv(Path(tmp) / "services") as env:
        work = Path(tmp)
        server = env.tiled_server()
        # trial 1 waits for the page to open; trial IDLE_TRIAL waits while the idle CPU is measured
        stalls = {1: 8.0, IDLE_TRIAL: idle_s}
        campaign = start_campaign(
            server.url, server.api_key, work / "campaign", max_trials=trials, seed=seed, stalls=stalls
        )
        watch = None
        try:
            uid = first_campaign_uid(server.url, server.api_key, campaign, timeout_s=120)
            watch = start_watch(server.url, server.api_key, work / "watch", campaign_uid=uid)
            with Browser() as browser:
                browser.open(watch.url + "?api_key=" + server.api_key)
                browser.wait("document.body.dataset.version", 60)
                opened = time.time()
                follow = browser.eval("document.getElementById('follow-text').textContent")
                # idle: trial IDLE_TRIAL proposed and waiting, trials before it shown, follow-up reads done
                # and the posterior map drawn for that state (its fit is work, not idling)
                browser.wait(f"Number(document.body.dataset.trialsShown) >= {IDLE_TRIAL}", 120)
                browser.wait(f"document.body.dataset.posteriorNext === '{IDLE_TRIAL}'", 60)
                time.sleep(2.0)
                proc = psutil.Process(watch.proc.pid)
                c0, t0 = _cpu_s(proc), time.monotonic()
                time.sleep(idle_window_s)
                c1, t1 = _cpu_s(proc), time.monotonic()
                idle_share = (c1 - c0) / (t1 - t0)
                still_idle = int(browser.eval("Number(document.body.dataset.trialsShown)")) == IDLE_TRIAL
                browser.wait("document.body.dataset.running === '0'", 600)
                if campaign.wait(timeout=120) != 0:
                    raise SystemExit(
                        f"error: the campaign failed: {(work / 'campaign' / 'campaign.out').read_text()[-2000:]}"
                    )
                browser.wait(f"Number(document.body.dataset.trialsShown) === {trials}", 30)
                shown = {int(k): float(v) for k, v in browser.eval("window.gainloopShown").items()}
                follow_state = browser.eval("fetch('/api/state').then((r) => r.json()).then((s) => s.follow)")
                published = {int(k): float(v) for k, v in follow_state["first_published"].items()}
                errors = browser.console_errors()
            with Catalog(server.url, api_key=server.api_key, data_dir_path=work / "reader") as cat:
                stored = read_campaign(cat, uid)
                stops = {}
                for r in stored.records:
                    run = stored.trial_run(r.trial_index)
                    if run is not None and run.metadata.get("stop"):
                        stops[r.trial_index] = float(run.metadata["stop"]["time"])
        finally:
            stop(campaign)
            if watch is not None:
                watch.stop()
    delays = {k: shown[k] - stops[k] for k in sorted(stops) if k in shown and stops[k] > opened}
    values = list(delays.values())
    to_server = [published[k] - stops[k] for k in delays if k in published]
    return {
        "median_s": statistics.median(values) if values else None,
        "p95_s": float(np.percentile(values, 95)) if values else None,
        "max_s": max(values) if values else None,
        "idle_cpu_share": idle_share,
        "idle_window_s": idle_window_s,
        "idle_window_had_no_new_trial": still_idle,
        "delays_s": {str(k): round(v, 3) for k, v in delays.items()},
        "to_server_median_s": statistics.median(to_server) if to_server else None,
        "server_read_median_s": follow_state["median_read_s"],
        "reads": follow_state["reads"],
        "trials": trials,
        "trials_timed": len(values),
        "follow": follow,
        "console_errors": errors,
        "campaign_uid": uid,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials of the campaign (default 10)")
    parser.add_argument("--idle-s", type=float, default=40.0, help="how long the campaign waits at trial 3, s")
    parser.add_argument("--idle-window-s", type=float, default=10.0, help="CPU measured over this many s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args(argv)
    if args.trials < IDLE_TRIAL + 3:
        parser.error(f"--trials must be at least {IDLE_TRIAL + 3}")
    if args.idle_s < args.idle_window_s + 6:
        parser.error("--idle-s must exceed --idle-window-s by at least 6 s")
    from harness.browser import chromium_path

    if chromium_path() is None:
        raise SystemExit("error: no chromium binary (Debian package `chromium`): the page is timed in a real browser")
    r = measure(args.trials, args.idle_s, args.idle_window_s, args.seed)
    rows = [
        ("trials timed (ended after the page opened)", f"{r['trials_timed']} of {r['trials']}"),
        ("stop document -> page shows the trial, median", f"{r['median_s']:.3f} s (target <= 2 s)"),
        ("stop document -> page shows the trial, p95", f"{r['p95_s']:.3f} s (target <= 2 s)"),
        ("stop document -> page shows the trial, max", f"{r['max_s']:.3f} s"),
        ("  of which stop document -> the server's view has it, median", f"{r['to_server_median_s']:.3f} s"),
        ("  one read of the campaign by the server, median of the last 20", f"{r['server_read_median_s']:.3f} s"),
        (
            f"watch server CPU while idle-following ({r['idle_window_s']:g} s, with its children)",
            f"{100 * r['idle_cpu_share']:.2f} % of one core (target <= 5 %)",
        ),
        ("how the page followed", r["follow"]),
        ("console errors on the page", str(len(r["console_errors"]))),
    ]
    width = max(len(k) for k, _ in rows)
    print("gainloop watch: latency and idle cost")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("  per trial (s): " + ", ".join(f"{k}: {v:.3f}" for k, v in r["delays_s"].items()))
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
