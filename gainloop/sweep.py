"""Offline optimisation at scale: many campaigns on the twin at once, on a Dask cluster.

One task is one offline campaign (strategy, seed, presets file) on the in-process
twin, run by ``gainloop.campaign.run_campaign`` on a Dask worker. Where its documents go:

* a Tiled server (``--catalog URI``, e.g. ``gainloop catalog serve`` on PostgreSQL): each
  worker writes its campaigns itself, concurrently with the others, through its own spool
  (``gainloop.spool``, in the data folder: one per host, shared safely by its workers) and
  its drain, and the task ends once its runs are in the catalog (``Catalog.settle``). The
  workers get the URI and the API key with the task (in memory, never on disk);
* the embedded catalog (one SQLite file behind one in-process server, one machine): the
  worker's RunEngine's documents go to a list that the task returns, and the client spools
  each campaign's documents as soon as its task finishes (while the other campaigns still
  run); its drain writes them, and the sweep ends once all are in the catalog.

Either way a campaign's runs reach the catalog exactly once, and everything is readable
when the sweep returns.

Each campaign is an independent replica: its twin (seed, presets) starts from the films as
made, whatever the catalog already holds. (``gainloop campaign run --twin`` continues the
photo-damage that stored runs left on the twin's films; a sweep's campaigns share one catalog
and the twin's film ids, so continuing it would make a campaign's result depend on the
catalog's history and, with several workers, on which campaign ran first.) The same sweep
gives the same results on 1 or N workers, into any catalog.

A campaign that fails (an error in the campaign, a worker that dies) is a row with
its reason, never dropped; whatever documents it produced are stored.

Servers: the default ``LocalCluster`` (scheduler and workers, one thread each) binds
127.0.0.1 unless another interface is named; an existing cluster is reached by the
scheduler's address, and an address where no scheduler answers within a few seconds
is an error that says what to start.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import GainloopError
from core.protocols import STRATEGIES

__all__ = [
    "STRATEGIES",
    "SchedulerUnreachableError",
    "SubmittedSweep",
    "SweepError",
    "SweepTask",
    "catalog_target",
    "collect_sweep",
    "dask_client",
    "parse_seeds",
    "parse_strategies",
    "run_sweep",
    "run_task",
    "store_documents",
    "submit_sweep",
    "sweep_tasks",
    "worker_catalog",
]

SHIPPED = "shipped"  # the presets label of the shipped presets file


class SweepError(GainloopError):
    """A sweep cannot be started (bad strategies, seeds or presets; no cluster to run on)."""


class SchedulerUnreachableError(SweepError):
    """No Dask scheduler answers at the given address."""


# ------------------------------------------------------------------ what to run
def _split(values: list[str | int] | str | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (comma-separated and repeated options alike)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for value in values for v in str(value).split(",") if v.strip()]


def parse_strategies(values: list[str] | str | None) -> list[str]:
    """Strategy names (comma-separated or repeated), each one of ``STRATEGIES``, duplicates dropped."""
    names = _split(values)
    if not names:
        raise SweepError(f"no strategy given; allowed: {', '.join(STRATEGIES)}")
    for name in names:
        if name not in STRATEGIES:
            raise SweepError(f"unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    return list(dict.fromkeys(names))


def parse_seeds(values: list[str | int] | str | None) -> list[int]:
    """Seeds: non-negative integers and inclusive ranges ``A-B``, comma-separated or repeated."""
    seeds: list[int] = []
    for item in _split(values):
        lo, sep, hi = item.partition("-")
        try:
            rng = range(int(lo), int(hi) + 1) if sep else [int(item)]
        except ValueError:
            raise SweepError(
                f"bad seed {item!r}; allowed: non-negative integers and ranges like 0-9, comma-separated"
            ) from None
        if sep and int(hi) < int(lo):
            raise SweepError(f"bad seed range {item!r}: the end is below the start")
        seeds.extend(rng)
    if not seeds:
        raise SweepError("no seed given; e.g. --seeds 0,1,2 or --seeds 0-9")
    return list(dict.fromkeys(seeds))


@dataclass(frozen=True)
class SweepTask:
    """One campaign of a sweep: what the worker runs (plain data, sent to the worker)."""

    strategy: str
    seed: int
    presets_label: str  # "shipped" or the presets file as given
    config: dict  # CampaignConfig.as_dict()
    presets: object | None = field(default=None, repr=False)  # twin.presets.PresetFile; None: the shipped one


def _check_presets_fit_the_twin(presets, label: str) -> None:
    """Every film on the twin's stage (and the new films) must map onto a sample of the presets file."""
    from devices import load_bench
    from sim.devices import default_twin_bench_path
    from sim.engine import TwinBench

    bench = load_bench(default_twin_bench_path())
    try:
        TwinBench(bench, presets=presets)
        presets.get(bench.twin.new_film_preset)
    except GainloopError as exc:
        raise SweepError(f"presets file {label} does not fit the twin's bench: {exc}") from None


def sweep_tasks(
    strategies: list[str],
    seeds: list[int],
    presets: list[str | Path] | None = None,
    *,
    base_config=None,
    overrides: dict | None = None,
) -> list[SweepTask]:
    """The sweep's campaigns: every presets file x strategy x seed, in that order.

    ``base_config``: a ``gainloop.config.GainloopConfig`` (budgets, limits; default: the
    defaults); ``overrides``: ``CampaignConfig`` values that win over it (None: not given).
    ``presets``: presets files (default: the shipped one), each read and checked here.
    """
    from gainloop.config import GainloopConfig
    from twin.presets import load_presets

    conf = base_config if base_config is not None else GainloopConfig()
    if conf.bench.file is not None:
        raise SweepError(
            f"a sweep runs on the twin, but the config names a bench file ({conf.bench.file}); "
            "remove [bench] file from the config"
        )
    files: list[tuple[str, object | None]] = []
    for path in presets or [None]:
        if path is None:
            files.append((SHIPPED, None))
            continue
        pf = load_presets(path)
        _check_presets_fit_the_twin(pf, str(path))
        files.append((str(path), pf))
    tasks = []
    for (label, pf), strategy, seed in itertools.product(files, strategies, seeds):
        values = {k: v for k, v in (overrides or {}).items() if v is not None}
        values.update(strategy=strategy, seed=seed)  # the twin's noise seed follows unless the config fixes it
        cfg = conf.campaign_config(**values)
        tasks.append(SweepTask(strategy, seed, label, cfg.as_dict(), pf))
    return tasks


# ------------------------------------------------------------------ on the worker
class _DocumentList:
    """Stands in for the catalog in ``run_campaign``: its writer keeps the documents in order."""

    location = "the sweep task's document list"

    def __init__(self) -> None:
        self.documents: list[tuple[str, dict]] = []

    def _append(self, name: str, doc: dict) -> None:
        self.documents.append((name, doc))

    def writer(self, fsync_each=False):
        return self._append

    def campaign_writer(self):
        return self._append


def _campaign_uid(documents: list[tuple[str, dict]]) -> str | None:
    for name, doc in documents:
        if name == "start" and doc.get("plan_name") == "campaign":
            return doc.get("campaign_uid")
    return None


#: Catalogs open in this worker process, by (uri, data folder): one connection and one spool drain each.
_WORKER_CATALOGS: dict[tuple, object] = {}

#: Dask's statistical profiler of a worker (``sys._current_frames()`` every 10 ms, on its event loop).
WORKER_PROFILE_KEY = "distributed.worker.profile.enabled"


def _stop_worker_profiler() -> None:
    """Stop this Dask worker's statistical profiler (Python < 3.12), before the catalog's drain starts here.

    CPython before 3.12 deadlocks when the garbage collector frees a ``threading.local`` while
    ``sys._current_frames()`` holds the interpreter's thread-list lock (gh-106883: the collector
    runs inside it, the ``local``'s clean-up takes the same lock). The drain's TiledWriter leaves
    such objects to the collector (event_model's routers), and the worker's profiler calls
    ``sys._current_frames()`` every 10 ms: sweeps into ``gainloop catalog serve`` hung, the
    worker's event loop stuck with the GIL, its drain thread waiting for it. A LocalCluster's
    workers start without the profiler (``dask_client``); a worker of another cluster has it
    stopped here, on its event loop, by the first task that writes into a catalog."""
    import sys

    if sys.version_info >= (3, 12):
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not on a Dask worker
        return
    for name in ("profile", "profile-cycle"):
        callback = worker.periodic_callbacks.get(name)
        if callback is not None:
            worker.loop.add_callback(callback.stop)


def worker_catalog(target: dict):
    """The catalog a sweep worker writes into (``target`` of ``catalog_target``): opened once per worker
    process and kept open (its spool in the target's data folder, shared by the host's workers, and its drain)."""
    from gainloop.catalog import Catalog

    key = (target["uri"], target.get("data_dir"))
    cat = _WORKER_CATALOGS.get(key)
    if cat is None:
        cat = Catalog(target["uri"], data_dir_path=target.get("data_dir"), api_key=target.get("api_key"))
        _WORKER_CATALOGS[key] = cat
    return cat


def run_task(task: SweepTask, target: dict | None = None) -> dict:
    """Run one campaign here (on a worker); return its summary, its documents and any error.

    ``target``: ``{"uri", "api_key", "data_dir"}`` of a Tiled server the worker writes the campaign
    into itself (its documents are then not returned: ``documents`` is empty and ``stored`` the number
    of runs written); None: the documents are returned for the client to store.

    Returns ``{"summary": dict | None, "error": str | None, "documents": [(name, doc), ...], "stored": int,
    "host": str, "pid": int, "started": float, "finished": float, "cpu_s": float, "store_s": float}``
    (``started`` and ``finished`` in epoch seconds; ``cpu_s`` the CPU time of the worker process
    meanwhile; ``store_s`` the wall time waiting for the drain at the end).
    """
    import socket

    from bluesky import RunEngine

    from gainloop.campaign import CampaignConfig, run_campaign
    from gainloop.running import open_bench

    started, cpu0 = time.time(), time.process_time()
    sink = _DocumentList()
    summary, error, stored, store_s = None, None, 0, 0.0
    # a Dask worker runs tasks on threads of its own, where there is no Ctrl+C to catch (and
    # signal handlers cannot be installed): a RunEngine without bluesky's SIGINT handler there
    on_main = threading.current_thread() is threading.main_thread()
    RE = RunEngine({}, call_returns_result=True, **({} if on_main else {"context_managers": []}))
    try:
        if target is not None:
            _stop_worker_profiler()
        catalog = sink if target is None else worker_catalog(target)
        runs: list[str] = []
        RE.subscribe(lambda name, doc: runs.append(doc["uid"]) if name == "start" else None)
        cfg = CampaignConfig.from_dict(task.config)
        # the bench opened here, not by run_campaign: a sweep's campaign starts from the films as made (its
        # seed's twin), never from the photo-damage other campaigns' runs in the same catalog left on films
        # of the same ids (restore_film_doses), which would make a result depend on the catalog's history
        # and, with several workers, on which campaign ran first
        with open_bench(cfg.bench_file, seed=cfg.twin_seed, presets=task.presets) as bench:
            summary = run_campaign(catalog, cfg, presets=task.presets, RE=RE, bench=bench)
        if target is not None:
            t0 = time.perf_counter()
            catalog.settle(uids=runs)
            store_s, stored = time.perf_counter() - t0, len(runs)
    except Exception as exc:  # recorded as the campaign's outcome, with its reason
        error = f"{type(exc).__name__}: {exc}"
    return {
        "summary": summary,
        "error": error,
        "documents": sink.documents,
        "stored": stored,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "finished": time.time(),
        "cpu_s": time.process_time() - cpu0,
        "store_s": store_s,
    }


# ------------------------------------------------------------------ on the client
def store_documents(catalog, documents: list[tuple[str, dict]]):
    """Spool one campaign's documents, in the order they were emitted, for the catalog; the writer
    (``writer.flush()`` waits for their drain)."""
    writer = catalog.writer()
    for name, doc in documents:
        writer(name, doc)
    return writer


def catalog_target(catalog) -> dict | None:
    """What a worker needs to write into ``catalog`` itself (a Tiled server), or None (the embedded one)."""
    if getattr(catalog, "uri", None) is None:
        return None
    return {"uri": catalog.uri, "api_key": catalog.api_key, "data_dir": str(catalog.data_dir)}


@contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    host: str = "127.0.0.1",
    timeout_s: float = 5.0,
    workers_timeout_s: float = 10.0,
) -> Iterator:
    """A ``distributed.Client``: on a new ``LocalCluster`` (``scheduler=None``) or on the scheduler at that address.

    The LocalCluster has ``workers`` processes (default: the machine's cores) of one
    thread each; scheduler, workers and the dashboard bind ``host`` on free ports.
    Both are stopped on exit. An existing cluster is left running; its scheduler must answer
    within ``timeout_s`` and have a worker within ``workers_timeout_s``.
    """
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler is None:
        n = workers if workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise SweepError(f"--workers must be at least 1, got {n}")
        try:
            with dask.config.set({WORKER_PROFILE_KEY: False}):  # (see _stop_worker_profiler)
                cluster = LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    host=host,
                    scheduler_port=0,
                    dashboard_address=f"{host}:0",
                    silence_logs=logging.ERROR,
                )
        except Exception as exc:  # the interface cannot be bound, workers cannot start
            raise SweepError(f"cannot start a local Dask cluster on {host}: {exc}") from None
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    hint = (
        "start one with `dask scheduler --host 127.0.0.1` (and `dask worker ADDRESS`) or omit --scheduler "
        "(and the config's [sweep] scheduler)"
    )
    try:
        client = Client(scheduler, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError):
        raise SchedulerUnreachableError(
            f"cannot reach the Dask scheduler at {scheduler} (no answer within {timeout_s:g} s): {hint}"
        ) from None
    except ValueError as exc:
        raise SchedulerUnreachableError(
            f"bad Dask scheduler address {scheduler!r} ({exc}); expected e.g. tcp://127.0.0.1:8786"
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=workers_timeout_s)
        except (TimeoutError, OSError):
            raise SweepError(
                f"the Dask scheduler at {scheduler} has no workers (none within {workers_timeout_s:g} s): "
                f"start one with `dask worker {scheduler}`"
            ) from None
        yield client
    finally:
        client.close()


def _row(task: SweepTask, out: dict) -> dict:
    """One line of the summary table (units in the keys)."""
    summary = out.get("summary") or {}
    best = summary.get("best") or {}

    def num(value):
        return None if value is None else float(value)

    return {
        "strategy": task.strategy,
        "seed": task.seed,
        "presets": task.presets_label,
        "threshold_uJ_cm2": num(best.get("threshold_uJ_cm2")),
        "threshold_err_uJ_cm2": num(best.get("threshold_err_uJ_cm2")),
        "stripe_length_um": num(best.get("stripe_length_um")),
        "doping": num(best.get("doping")),
        "lab_hours": num(summary.get("lab_hours")),
        "trials": summary.get("trials"),
        "failures": summary.get("failures"),
        "stopped_by": summary.get("stopped_by"),
        "campaign_uid": summary.get("campaign_uid") or _campaign_uid(out.get("documents") or []),
        "error": out.get("error"),
        "campaign_s": out["finished"] - out["started"] if "started" in out else None,
    }


@dataclass
class SubmittedSweep:
    """A sweep's campaigns running on the cluster (``futures`` in the order of ``tasks``)."""

    tasks: list[SweepTask]
    futures: list
    submitted: float  # time.perf_counter() at submission


def submit_sweep(client, tasks: list[SweepTask], target: dict | None = None) -> SubmittedSweep:
    """Start every campaign on the cluster (one task each); nothing waits here. ``target``: the
    Tiled server the workers write into themselves (``catalog_target``); None: they return documents."""
    t0 = time.perf_counter()
    futures = [client.submit(run_task, task, target, pure=False) for task in tasks]
    return SubmittedSweep(list(tasks), futures, t0)


def collect_sweep(
    catalog,
    sweep: SubmittedSweep,
    *,
    on_done: Callable[[dict, int, int], None] | None = None,
) -> dict:
    """Store each campaign in the catalog as soon as it finishes; return the rows and timings.

    Returns ``{"rows": [...] (in the order of tasks), "wall_s", "campaigns_s", "store_s"}``:
    ``wall_s`` from submission to the last campaign in the catalog, ``campaigns_s`` from the first
    campaign's start to the last one's end on the workers, ``store_s`` the client's time spooling
    documents returned by the workers and waiting for their drain. ``on_done(row, done, total)``
    follows each campaign.
    """
    from distributed import as_completed

    index = {future: k for k, future in enumerate(sweep.futures)}
    rows: list[dict | None] = [None] * len(sweep.tasks)
    store_s, spans = 0.0, []
    writers = []
    for done, future in enumerate(as_completed(sweep.futures), start=1):
        k = index.pop(future)
        try:
            out = future.result()
        except Exception as exc:  # the worker died, or cannot import gainloop
            out = {"summary": None, "documents": [], "error": f"the task failed on the cluster: {exc!r}"}
        finally:
            future.release()
        if "started" in out:
            spans.append((out["started"], out["finished"]))
        if out["documents"]:
            t_store = time.perf_counter()
            try:
                writers.append((k, out, store_documents(catalog, out["documents"])))
            except Exception as exc:
                reason = f"cannot store the campaign's documents in the catalog at {catalog.location}: {exc}"
                out["error"] = f"{out['error']}; {reason}" if out["error"] else reason
            store_s += time.perf_counter() - t_store
        rows[k] = _row(sweep.tasks[k], out)
        if on_done is not None:
            on_done(rows[k], done, len(rows))
    t_store = time.perf_counter()
    for k, _out, writer in writers:  # everything readable when the sweep returns
        try:
            writer.flush()
        except Exception as exc:
            reason = f"the catalog at {catalog.location} has not taken the campaign's runs: {exc}"
            rows[k]["error"] = f"{rows[k]['error']}; {reason}" if rows[k]["error"] else reason
    store_s += time.perf_counter() - t_store
    sweep.futures.clear()
    campaigns_s = max(e for _, e in spans) - min(s for s, _ in spans) if spans else math.nan
    wall_s = time.perf_counter() - sweep.submitted
    return {"rows": rows, "wall_s": wall_s, "campaigns_s": campaigns_s, "store_s": store_s}


def run_sweep(
    catalog,
    tasks: list[SweepTask],
    client,
    *,
    on_done: Callable[[dict, int, int], None] | None = None,
) -> dict:
    """Run every task on the cluster and store each campaign as it finishes (``collect_sweep``'s result):
    the workers write into a Tiled server themselves, or return their documents for the embedded catalog."""
    return collect_sweep(catalog, submit_sweep(client, tasks, catalog_target(catalog)), on_done=on_done)
