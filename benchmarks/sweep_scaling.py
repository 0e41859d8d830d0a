"""Sweep scaling: the same sweep of offline campaigns on a LocalCluster of 1 worker, then 2.

The sweep (default: nested and random x seeds 0-7, 6 trials each: 16 campaigns, ~20 s of
campaigns on one worker; with 2 trials each, ~6 s, the ratio swung between 1.64x and 1.97x
from run to run on a quiet machine, scheduling noise of a phase that short) runs
exactly as ``gainloop sweep`` runs it: ``gainloop.sweep.run_task`` on the workers (one
campaign each, its documents shipped back), then ``store_documents`` into an embedded
catalog. The two phases are timed apart:

* ``campaigns``: from submitting the sweep until every campaign's documents are back in
  the client (the part the Dask workers share; workers are warmed up first with one
  small campaign each, so imports are not timed);
* ``store``: writing every document into the embedded catalog (one Tiled server in the
  client process: it does not scale with the workers).

A campaign's mean wall time and the CPU share its worker got (CPU time / wall time) show
whether the workers had a core each: on a machine others are using, they do not.

Prints a table and, with --json, one JSON object on the last line: ``speedup`` (the
campaigns phase, 1 worker over 2; target >= 1.8x), ``end_to_end_speedup`` (campaigns +
store), wall times of each phase, and whether both runs gave the same results.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from gainloop.catalog import Catalog
from gainloop.sweep import (
    dask_client,
    parse_seeds,
    parse_strategies,
    run_task,
    store_documents,
    submit_sweep,
    sweep_tasks,
)


def _one_sweep(workers: int, tasks, warm_up, data_dir: str) -> dict:
    with dask_client(workers=workers) as client:
        addresses = list(client.scheduler_info()["workers"])
        warm = [client.submit(run_task, warm_up, pure=False, workers=[a]) for a in addresses]
        client.gather(warm)
        t0 = time.perf_counter()
        submitted = submit_sweep(client, tasks)
        outs = client.gather(submitted.futures)
        campaigns_s = time.perf_counter() - t0
    errors = [o["error"] for o in outs if o["error"]]
    if errors:
        raise SystemExit(f"error: a campaign of the sweep failed: {errors[0]}")
    with Catalog(data_dir_path=data_dir) as cat:
        t0 = time.perf_counter()
        for out in outs:
            store_documents(cat, out["documents"])
        store_s = time.perf_counter() - t0
    best = [o["summary"]["best"]["threshold_uJ_cm2"] for o in outs]
    task_wall = sum(o["finished"] - o["started"] for o in outs)
    return {
        "workers": workers,
        "campaigns_s": campaigns_s,
        "store_s": store_s,
        "total_s": campaigns_s + store_s,
        "best": best,
        "campaign_mean_s": task_wall / len(outs),
        "cpu_share": sum(o["cpu_s"] for o in outs) / task_wall,  # 1.0: each worker had a core to itself
        "documents": sum(len(o["documents"]) for o in outs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="nested,random", help="comma-separated strategies")
    parser.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-3 or 0,1,2")
    parser.add_argument("--max-trials", type=int, default=6, help="trials of each campaign")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()

    tasks = sweep_tasks(
        parse_strategies(args.strategies), parse_seeds(args.seeds), overrides={"max_trials": args.max_trials}
    )
    (warm_up,) = sweep_tasks(["random"], [99], overrides={"max_trials": 1})
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            runs[workers] = _one_sweep(workers, tasks, warm_up, os.path.join(tmp, f"catalog_{workers}"))
    one, two = runs[1], runs[2]
    result = {
        "campaigns": len(tasks),
        "trials_each": args.max_trials,
        "documents": one["documents"],
        "campaigns_1w_s": one["campaigns_s"],
        "campaigns_2w_s": two["campaigns_s"],
        "store_1w_s": one["store_s"],
        "store_2w_s": two["store_s"],
        "total_1w_s": one["total_s"],
        "total_2w_s": two["total_s"],
        "speedup": one["campaigns_s"] / two["campaigns_s"],
        "end_to_end_speedup": one["total_s"] / two["total_s"],
        "campaign_mean_1w_s": one["campaign_mean_s"],
        "campaign_mean_2w_s": two["campaign_mean_s"],
        "cpu_share_1w": one["cpu_share"],
        "cpu_share_2w": two["cpu_share"],
        "same_results": one["best"] == two["best"],
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    print(f"sweep: {len(tasks)} campaigns ({args.strategies} x seeds {args.seeds}, {args.max_trials} trials each)")
    print(f"{'':34s}{'1 worker':>12s}{'2 workers':>12s}{'speedup':>10s}")
    for label, key in (("campaigns on the cluster (s)", "campaigns"), ("store in the catalog (s)", "store")):
        a, b = one[f"{key}_s"], two[f"{key}_s"]
        print(f"{label:34s}{a:>12.1f}{b:>12.1f}{a / b:>9.2f}x")
    print(f"{'end to end (s)':34s}{one['total_s']:>12.1f}{two['total_s']:>12.1f}{result['end_to_end_speedup']:>9.2f}x")
    print(
        f"{'one campaign, mean (s)':34s}{one['campaign_mean_s']:>12.2f}{two['campaign_mean_s']:>12.2f}"
        f"   (CPU share of its worker: {one['cpu_share']:.2f} / {two['cpu_share']:.2f})"
    )
    print(f"speedup of 2 workers over 1 on the campaigns: {result['speedup']:.2f}x   (target: >= 1.8x)")
    print(f"same results with 1 and 2 workers: {result['same_results']}")
    print(f"machine: {result['cpus']} CPUs, load average {result['load_average_1min']:.1f} at the end")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
