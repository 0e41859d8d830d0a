"""Sweep scaling, end to end: the same sweep of offline campaigns on a LocalCluster of 1 worker, then 2,
each campaign stored in the catalog by the worker that ran it, everything readable at the end.

The sweep (default: nested and random x seeds 0-7, 6 trials each: 16 campaigns) runs exactly as
``gainloop sweep --catalog URI`` runs it: ``gainloop.sweep.run_task`` on the workers, each worker
writing its campaign's runs through its own spool and drain into one Tiled server on PostgreSQL
(``gainloop catalog serve --processes P``, P = ``--server-processes``, default 2, with the machine's
Redis as their streaming cache; started here on a fresh database; a task ends once its runs are in
the catalog). Without PostgreSQL on 127.0.0.1:5432 it says so and runs the embedded mode instead
(workers return documents, the client spools them into the embedded catalog).

Timed, each with 1 and 2 workers (workers warmed up first with one small campaign each):

* ``campaigns + storage``: from submitting the sweep until every task returned (each task's
  storage inside it);
* ``end to end``: that, plus checking that every campaign's runs are in the catalog, complete
  (one search per campaign; every run's stop document).

Measured costs per campaign (CPU seconds, process accounting): the worker process (campaign,
spool and drain), the Tiled server process (``psutil``), and the wall seconds a task waits for
its drain. From them, a projection of the speedup on 8 and 32 workers with one Tiled server and
with one server per 4 workers behind one PostgreSQL, and which resource saturates first
(PostgreSQL's own CPU is not measured: where the projection leans on it, it says so).

Prints tables and, with --json, one JSON object on the last line: ``speedup`` (campaigns +
storage, 1 worker over 2), ``end_to_end_speedup`` (target >= 1.7x on 2 cores), the wall times,
the costs and the projection, and whether both runs gave the same results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from gainloop.catalog import Catalog
from gainloop.sweep import (
    catalog_target,
    dask_client,
    parse_seeds,
    parse_strategies,
    run_task,
    store_documents,
    submit_sweep,
    sweep_tasks,
)


def _server_cpu(pid: int | None) -> float:
    """CPU seconds of the server: its process and every process under it (``--processes N``: the server
    processes, alive, whose time the parent's ``children_*`` does not hold until they end)."""
    if pid is None:
        return 0.0
    import psutil

    parent = psutil.Process(pid)
    total = 0.0
    for p in [parent, *parent.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _check_readable(cat: Catalog, outs: list[dict]) -> tuple[int, list[str]]:
    """(runs found complete, problems): every campaign's runs in the catalog with their stop documents."""
    from tiled.queries import Key

    problems, n = [], 0
    for out in outs:
        uid = out["summary"]["campaign_uid"]
        runs = cat.client.search(Key("start.campaign_uid") == uid)
        found = {k: r.metadata for k, r in runs.items()}
        expected = out["stored"] or sum(1 for name, _ in out["documents"] if name == "start")
        if len(found) != expected:
            problems.append(f"campaign {uid}: {len(found)} runs stored, {expected} written")
        problems += [f"run {k}: no stop document" for k, md in found.items() if not md.get("stop")]
        n += len(found)
    return n, problems


def _one_sweep(workers: int, tasks, warm_up, cat: Catalog, server_pid: int | None) -> dict:
    target = catalog_target(cat)
    with dask_client(workers=workers) as client:
        addresses = list(client.scheduler_info()["workers"])
        warm = [client.submit(run_task, warm_up, target, pure=False, workers=[a]) for a in addresses]
        client.gather(warm)
        s0 = _server_cpu(server_pid)
        t0 = time.perf_counter()
        submitted = submit_sweep(client, tasks, target)
        outs = client.gather(submitted.futures)
        if target is None:  # embedded: the client spools what the workers return
            for w in [store_documents(cat, o["documents"]) for o in outs]:
                w.flush()
        campaigns_s = time.perf_counter() - t0
        n_runs, problems = _check_readable(cat, outs)
        total_s = time.perf_counter() - t0
        server_cpu_s = _server_cpu(server_pid) - s0
    errors = [o["error"] for o in outs if o["error"]]
    if errors or problems:
        raise SystemExit(f"error: the sweep with {workers} worker(s) failed: {(errors + problems)[0]}")
    task_wall = sum(o["finished"] - o["started"] for o in outs)
    return {
        "workers": workers,
        "campaigns_s": campaigns_s,
        "total_s": total_s,
        "best": [o["summary"]["best"]["threshold_uJ_cm2"] for o in outs],
        "runs": n_runs,
        "campaign_mean_s": task_wall / len(outs),
        "worker_cpu_s_per_campaign": sum(o["cpu_s"] for o in outs) / len(outs),
        "drain_wait_s_per_campaign": sum(o["store_s"] for o in outs) / len(outs),
        "server_cpu_s_per_campaign": server_cpu_s / len(outs),
        "cpu_share": sum(o["cpu_s"] for o in outs) / task_wall,
    }


def _projection(one: dict) -> list[dict]:
    """Speedup over 1 worker on N workers (a core each), with one Tiled server process (at most one core of
    work) or one server process per 4 workers (``catalog serve --processes``, or several servers) behind one
    PostgreSQL; the resource that saturates first.

    Campaigns per second: the workers can do N / (worker CPU per campaign), S server processes S / (server
    CPU per campaign); the sweep goes at the smaller rate. 1 worker: the same with N = S = 1 (the server on
    the other core)."""
    worker = one["worker_cpu_s_per_campaign"]  # campaign + spool + drain, in the worker process
    server = max(one["server_cpu_s_per_campaign"], 1e-9)
    rate_1 = min(1 / worker, 1 / server)
    rows = []
    for n in (8, 32):
        for servers in (1, max(1, n // 4)):
            rate_workers, rate_servers = n / worker, servers / server
            rate = min(rate_workers, rate_servers)
            rows.append(
                {
                    "workers": n,
                    "server_processes": servers,
                    "speedup": rate / rate_1,
                    "bottleneck": "the workers (campaign CPU)"
                    if rate_workers <= rate_servers
                    else (
                        "the Tiled server process" if servers == 1 else "the Tiled server processes (then PostgreSQL)"
                    ),
                    "server_load": rate * server / servers,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="nested,random", help="comma-separated strategies")
    parser.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-3 or 0,1,2")
    parser.add_argument("--max-trials", type=int, default=6, help="trials of each campaign")
    parser.add_argument("--embedded", action="store_true", help="the embedded catalog, not a server on PostgreSQL")
    parser.add_argument(
        "--server-processes",
        type=int,
        default=2,
        help="processes of the Tiled server (catalog serve --processes; more than 1 needs the machine's Redis)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()

    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:
        sys.path.insert(0, repo)  # the harness (harness/: a Tiled server on PostgreSQL)
    from harness.faults import FaultEnv, ServiceMissing

    tasks = sweep_tasks(
        parse_strategies(args.strategies), parse_seeds(args.seeds), overrides={"max_trials": args.max_trials}
    )
    (warm_up,) = sweep_tasks(["random"], [99], overrides={"max_trials": 1})
    runs, mode = {}, "embedded"
    with tempfile.TemporaryDirectory() as tmp, FaultEnv(os.path.join(tmp, "env")) as env:
        for workers in (1, 2):
            folder = os.path.join(tmp, f"data_{workers}")
            server = None
            if not args.embedded:
                try:
                    server = env.tiled_server(shared=False, processes=args.server_processes)
                    plural = "es" if args.server_processes > 1 else ""
                    mode = f"Tiled on PostgreSQL ({args.server_processes} server process{plural})"
                except ServiceMissing as exc:
                    print(f"no Tiled server on PostgreSQL ({exc}): the embedded catalog instead")
            if server is None:
                with Catalog(data_dir_path=folder) as cat:
                    runs[workers] = _one_sweep(workers, tasks, warm_up, cat, None)
            else:
                os.environ["GAINLOOP_DATA_DIR"] = folder  # the workers' spool (one per host)
                with Catalog(server.url, data_dir_path=folder, api_key=server.api_key) as cat:
                    runs[workers] = _one_sweep(workers, tasks, warm_up, cat, server.proc.pid)
                server.stop()
    one, two = runs[1], runs[2]
    projection = _projection(one)
    result = {
        "catalog": mode,
        "server_processes": args.server_processes if mode != "embedded" else None,
        "campaigns": len(tasks),
        "trials_each": args.max_trials,
        "runs": one["runs"],
        "campaigns_1w_s": one["campaigns_s"],
        "campaigns_2w_s": two["campaigns_s"],
        "total_1w_s": one["total_s"],
        "total_2w_s": two["total_s"],
        "speedup": one["campaigns_s"] / two["campaigns_s"],
        "end_to_end_speedup": one["total_s"] / two["total_s"],
        "campaign_mean_1w_s": one["campaign_mean_s"],
        "campaign_mean_2w_s": two["campaign_mean_s"],
        "worker_cpu_s_per_campaign": one["worker_cpu_s_per_campaign"],
        "server_cpu_s_per_campaign": one["server_cpu_s_per_campaign"],
        "drain_wait_s_per_campaign_1w": one["drain_wait_s_per_campaign"],
        "drain_wait_s_per_campaign_2w": two["drain_wait_s_per_campaign"],
        "cpu_share_1w": one["cpu_share"],
        "cpu_share_2w": two["cpu_share"],
        "projection": projection,
        "same_results": one["best"] == two["best"],
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    print(
        f"sweep: {len(tasks)} campaigns ({args.strategies} x seeds {args.seeds}, {args.max_trials} trials each), "
        f"{one['runs']} runs, into {mode}; each worker stores its own campaigns"
    )
    print(f"{'':40s}{'1 worker':>12s}{'2 workers':>12s}{'speedup':>10s}")
    for label, key in (("campaigns + storage (s)", "campaigns_s"), ("end to end, all readable (s)", "total_s")):
        a, b = one[key], two[key]
        print(f"{label:40s}{a:>12.1f}{b:>12.1f}{a / b:>9.2f}x")
    print(
        f"{'one campaign incl. its drain, mean (s)':40s}{one['campaign_mean_s']:>12.2f}{two['campaign_mean_s']:>12.2f}"
        f"   (CPU share of its worker: {one['cpu_share']:.2f} / {two['cpu_share']:.2f})"
    )
    print(
        f"{'waiting for its drain, mean (s)':40s}{one['drain_wait_s_per_campaign']:>12.2f}"
        f"{two['drain_wait_s_per_campaign']:>12.2f}"
    )
    print(f"end-to-end speedup of 2 workers over 1: {result['end_to_end_speedup']:.2f}x   (target: >= 1.7x)")
    print(f"same results with 1 and 2 workers: {result['same_results']}")
    for a, b, task in zip(one["best"], two["best"], tasks, strict=True):
        if a != b:
            print(f"  differs: {task.strategy} seed {task.seed}: best threshold {a!r} (1 worker), {b!r} (2 workers)")
    print(
        f"\ncosts per campaign (1 worker): worker process {one['worker_cpu_s_per_campaign']:.2f} CPU s "
        f"(campaign + spool + drain), Tiled server {one['server_cpu_s_per_campaign']:.2f} CPU s "
        "(PostgreSQL's backends not counted)"
    )
    print(f"{'projection':<12}{'workers':>8}{'server procs':>13}{'speedup':>9}{'server load':>13}  first to saturate")
    for row in projection:
        print(
            f"{'':<12}{row['workers']:>8}{row['server_processes']:>13}{row['speedup']:>8.1f}x"
            f"{row['server_load']:>12.0%}  {row['bottleneck']}"
        )
    print(f"machine: {result['cpus']} CPUs, load average {result['load_average_1min']:.1f} at the end")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
