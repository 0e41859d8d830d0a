"""Plan overhead: one acquisition through RunEngine + twin devices + the catalog's writer, against a bare count;
and what storing a run costs.

Side by side in one process, each path on its own fresh ``RunEngine``:

* **gainloop acquisition + spool** (``per_acq_ms``): a run of N acquisitions as every gainloop
  measurement plan takes them, ``plans.stubs.acquire`` (the spectrometer triggered; it, the pump
  and the slit read into one event; exposure checked first) on ``sim.devices.twin_bench_devices``
  (film mounted, shutter open, exposure 0.01 lab s: the lab clock, no sleeping), the RunEngine
  subscribed to ``Catalog(...).writer()`` of an embedded catalog in a temporary folder: the spool
  (``gainloop.spool``), drained into the catalog by its background thread. Each timed run starts
  once the drain has taken the previous ones (``Catalog.settle``), so the drain of one run does not
  land in the next run's time; its lag (stop document written -> run complete in the catalog) is
  reported (``lag_median_s``);
* **bp.count of the same devices + spool** (``per_acq_bp_count_ms``, ``ratio_bp_count``):
  ``bp.count([spectrometer, pump, slit], num=N)``, the same events through bluesky's own plan stubs
  (each of which builds a ``bluesky.utils.Plan`` that formats the call stack: the gap between the
  two rows, see ``--profile``);
* for reference, **twin + TiledWriter inline** (``inline_writer_ms``): the gainloop acquisitions
  with the RunEngine subscribed to a ``TiledWriter`` of the same catalog directly (what the
  RunEngine paid before the spool: every request to Tiled in its own thread);
* **bare count** (``bare_count_ms``): ``bp.count([ophyd.sim.det], num=N)``, no subscriber;
* for the breakdown: the gainloop acquisitions without a writer, ``ophyd.sim.det`` with the
  writer, and the twin's trigger + read called directly (no RunEngine).

Each figure is the wall time of a run divided by its events (the run's open and close are
included, spread over its events), after a warm-up run; the paths are timed in
interleaved rounds and the median round is reported. ``ratio`` = per_acq_ms / bare_count_ms.

For the breakdown, also: ``bp.count([det1, det2, motor1])`` of three ``ophyd.sim``
devices (the RunEngine's cost of three devices, without the twin), and 2-event runs of
the twin + writer and the bare count, which split each path into a cost per run (open,
close; for the writer its HTTP requests to the embedded server) and a cost per event
(``(T(N) - T(2)) / (N - 2)``): ``ratio_per_event`` is the ratio of long runs.

Replay (``replay_events_per_s``): a ``count`` run of M events (``ophyd.sim`` det +
motor + a 512-pixel spectrum, the spectrometer's shape) is written into the catalog
(documents composed with event_model and fed to the writer: M RunEngine events would
take minutes), then ``list(gainloop.replay.run_documents(catalog.run(uid)))`` is
timed together with dispatching the documents through a trivial callback: events
per wall second, Tiled reads included (median of the repeats). For reference: the
Tiled reads alone, the writer's ingest of the same documents, the same documents
from memory to the callback, and the live rate 1 / per_acq_ms.

Storage (``storage_cpu_s_per_run``, ``drain_runs_per_s``): ``--storage-runs`` runs of the
twin's ``count`` (``--storage-events`` events each, recorded once from a RunEngine) are
written into a fresh catalog two ways, each timed with the process accounting (CPU seconds
of this process, which holds the embedded server and the writer, from ``time.process_time``;
for a Tiled server in its own process, plus that process's CPU from ``psutil``):

* ``spool``: through ``Catalog.writer()`` (the spool and its drain) until the catalog holds
  them all (``Catalog.settle``): the drain's throughput in runs/s and documents/s, and the
  CPU per run;
* ``before``: what the RunEngine's writer did before the spool, per run one "is this uid
  stored?" request and a new ``TiledWriter``, into a server as it was then (FastAPI rebuilding
  every dependency's ``Dependant`` on every request; ``gainloop.embedded.cache_request_dependants``
  keeps them, unless ``GAINLOOP_TILED_DEPENDANT_CACHE=0``; for the embedded catalog this process's
  server is put back as it was for the time of that measurement, on PostgreSQL a second server is
  started without it).

Each also counts the HTTP requests the server served per run (the lines of its own access log during
the measurement; ``req/run``) and the CPU per request (writer + server CPU seconds per run / requests per
run; ``CPU ms/req``): what a run costs is requests x cost per request.

Both into the embedded catalog and, with PostgreSQL on 127.0.0.1:5432, into a
``gainloop catalog serve`` on PostgreSQL (skipped, saying so, without it; PostgreSQL's own
backends are not counted).

Prints a table and, with --json, one JSON object on the last line: ``per_acq_ms``,
``bare_count_ms``, ``ratio``, ``per_acq_bp_count_ms``, ``ratio_bp_count``, ``replay_events_per_s``,
``storage_cpu_s_per_run``, ``drain_runs_per_s``, ``storage_requests_per_run`` (the embedded catalog; the
``postgres_*`` keys for the server) and the breakdown. ``--profile`` adds cProfile's view of one
``bp.count`` run of the twin + writer (the RunEngine's thread).

Targets: ratio <= 2x (storage issue; 3x before); replay >= 1e4 events/s; storage CPU per run
at most a third of ``before``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import math
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import event_model
import numpy as np
from bluesky import RunEngine
from ophyd.sim import SynSignal, det, det1, det2, motor, motor1

from gainloop.catalog import Catalog
from gainloop.replay import run_documents, stream_columns
from plans.stubs import acquire
from sim.devices import default_twin_bench_path, twin_bench_devices

RATIO_TARGET = 2.0
REPLAY_TARGET = 1e4
SAMPLE = "cas_doped-film"

#: Where --profile looks (label: (file path suffix, function)); cumulative times, overlapping.
PROFILE_SPOTS = {
    "twin physics (TwinBench.acquire)": ("sim/engine.py", "acquire"),
    "jsonschema validation (event_model, TiledWriter)": ("jsonschema/validators.py", "validate"),
    "  numpy array repr (jsonschema error messages)": ("numpy/_core/arrayprint.py", "array2string"),
    "traceback.format_stack (bluesky Plan objects)": ("traceback.py", "format_stack"),
    "TiledWriter (all documents)": ("writing/tiled_writer.py", "__call__"),
    "  of which HTTP requests to the server": ("httpx/_client.py", "request"),
    "  of which copy.deepcopy (TiledWriter's RunNormalizer)": ("copy.py", "deepcopy"),
    "ophyd status objects (StatusBase.__init__)": ("ophyd/status.py", "__init__"),
    "typing.Protocol isinstance checks (bluesky)": ("typing.py", "__instancecheck__"),
}


def _twin_bench(seed: int, exposure_s: float, fluence: float):
    bench = twin_bench_devices(default_twin_bench_path(), seed=seed)
    bench.stage.set(SAMPLE).wait(10)
    bench.slit.set(1000.0).wait(10)
    bench.spectrometer.exposure.put(exposure_s)
    bench.pump.fluence.set(fluence).wait(10)
    bench.pump.shutter.put(1)
    return bench


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _run_engine(*subscribers) -> RunEngine:
    RE = RunEngine({})
    for cb in subscribers:
        RE.subscribe(cb)
    return RE


class _Acquisitions:
    """A run of ``n`` gainloop acquisitions (``plans.stubs.acquire``) of the twin bench; counts its events."""

    def __init__(self, bench, exposure_s: float) -> None:
        self.bench = bench
        self.exposure_s = exposure_s
        self.events = 0

    def add(self, reading: dict) -> None:  # plans.stubs.Collector
        self.events += 1

    def plan(self, n: int):
        yield from bps.open_run({"plan_name": "acquisitions", "num_points": n})
        for _ in range(n):
            yield from acquire(self.bench, self.exposure_s, self)
        yield from bps.close_run()


def _timed_run(RE: RunEngine, detectors, n: int, cat: Catalog | None = None) -> float:
    """Wall seconds per event of one run of ``n`` acquisitions (after the drain of earlier runs):
    ``bp.count(detectors, num=n)``, or gainloop's acquisitions when ``detectors`` is an ``_Acquisitions``."""
    if cat is not None:
        cat.settle()
    if isinstance(detectors, _Acquisitions):
        before = detectors.events
        t0 = time.perf_counter()
        RE(detectors.plan(n))
        return (time.perf_counter() - t0) / (detectors.events - before)
    t0 = time.perf_counter()
    RE(bp.count(detectors, num=n))
    return (time.perf_counter() - t0) / n


def _timed_direct(bench, n: int) -> float:
    """Wall seconds per acquisition of the twin's devices without a RunEngine (what bp.count asks of them)."""
    devs = [bench.spectrometer, bench.pump, bench.slit]
    t0 = time.perf_counter()
    for _ in range(n):
        for d in devs:
            d.trigger().wait(10)
        for d in devs:
            d.read()
    return (time.perf_counter() - t0) / n


def _profile_run(RE: RunEngine, detectors: list, n: int, top: int) -> None:
    """cProfile one run in the RunEngine's event-loop thread (where the plan, the devices and the writer run)."""
    pr = cProfile.Profile()
    ready = threading.Event()

    def toggle(on: bool) -> None:
        pr.enable() if on else pr.disable()
        ready.set()

    RE.loop.call_soon_threadsafe(toggle, True)
    ready.wait(10)
    ready.clear()
    t0 = time.perf_counter()
    RE(bp.count(detectors, num=n))
    wall = time.perf_counter() - t0
    RE.loop.call_soon_threadsafe(toggle, False)
    ready.wait(10)

    st = pstats.Stats(pr)
    cum = dict.fromkeys(PROFILE_SPOTS, 0.0)
    for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        path = path.replace(os.sep, "/")
        for label, (suffix, name) in PROFILE_SPOTS.items():
            if path.endswith(suffix) and func == name:
                cum[label] = max(cum[label], ct)
    print(
        f"\nprofile of one bp.count run of the twin devices + spool, {n} events, "
        f"{1e3 * wall / n:.2f} ms/event wall (RunEngine thread;"
    )
    print("the embedded server's own thread is seen as time waiting on HTTP; the spots overlap):")
    for label, ct in cum.items():
        print(f"  {label:<50} {1e3 * ct / n:>8.2f} ms/event ({100 * ct / wall:3.0f}%)")
    print(f"\ntop {top} functions by cumulative time:")
    st.sort_stats("cumulative").print_stats(top)


def _write_replay_run(cat: Catalog, n_events: int, seed: int) -> tuple[str, list[tuple[str, dict]], float]:
    """Write a ``count`` of det + motor + a 512-pixel spectrum straight into the catalog's writer.

    The documents are composed with event_model from the devices' describe() and
    read() (what the RunEngine would emit, without it, to keep the fixture fast);
    the spectrum is a list per event, stored as the same (n, 512) float64 array.
    Returns (uid, the documents, the writer's ingest rate in events per second).
    """
    rng = np.random.default_rng(seed)
    spectrum = SynSignal(func=lambda: rng.random(512).tolist(), name="spectrum")
    devices = [det, motor, spectrum]
    data_keys, configuration, object_keys = {}, {}, {}
    for dev in devices:
        data_keys.update(dev.describe())
        object_keys[dev.name] = list(dev.describe())
        configuration[dev.name] = {
            "data": {k: v["value"] for k, v in dev.read_configuration().items()},
            "timestamps": {k: v["timestamp"] for k, v in dev.read_configuration().items()},
            "data_keys": dev.describe_configuration(),
        }
    run = event_model.compose_run(metadata={"plan_name": "count", "detectors": [d.name for d in devices]})
    stream = run.compose_descriptor(
        name="primary", data_keys=data_keys, object_keys=object_keys, configuration=configuration
    )
    docs = [("start", run.start_doc), ("descriptor", stream.descriptor_doc)]
    for seq_num in range(1, n_events + 1):
        data, timestamps = {}, {}
        for dev in devices:
            dev.trigger()
            for key, reading in dev.read().items():
                data[key], timestamps[key] = reading["value"], reading["timestamp"]
        docs.append(("event", stream.compose_event(data=data, timestamps=timestamps, seq_num=seq_num, validate=False)))
    docs.append(("stop", run.compose_stop()))
    writer = cat.writer()
    t0 = time.perf_counter()
    for name, doc in docs:
        writer(name, doc)
    return run.start_doc["uid"], docs, n_events / (time.perf_counter() - t0)


def _replay_rate(cat: Catalog, uid: str) -> tuple[float, int]:
    """(events per wall second, events) of reading the run back through Tiled and dispatching its documents."""
    n_events = 0

    def callback(name: str, doc: dict) -> None:
        nonlocal n_events
        n_events += name == "event"

    t0 = time.perf_counter()
    docs = list(run_documents(cat.run(uid)))
    for name, doc in docs:
        callback(name, doc)
    return n_events / (time.perf_counter() - t0), n_events


def _read_rate(cat: Catalog, uid: str, n_events: int) -> float:
    """Events per wall second of the Tiled reads alone (the primary stream's columns and arrays)."""
    t0 = time.perf_counter()
    cols = stream_columns(cat.run(uid)["primary"])
    rate = n_events / (time.perf_counter() - t0)
    if len(cols["spectrum"]) != n_events:
        raise RuntimeError(f"stored spectrum has {len(cols['spectrum'])} rows, the run {n_events} events")
    return rate


# ------------------------------------------------------------------ storage: CPU per run, drain throughput
def _recorded_runs(dets: list, k: int, n_events: int) -> list[list[tuple[str, dict]]]:
    """The documents of ``k`` twin ``count`` runs of ``n_events`` events (a RunEngine, no writer)."""
    RE = RunEngine({})
    runs: list[list[tuple[str, dict]]] = []
    RE.subscribe(lambda name, doc: (runs.append([]) if name == "start" else None, runs[-1].append((name, doc))))
    for _ in range(k):
        RE(bp.count(dets, num=n_events))
    return runs


def _fresh_uids(runs: list[list[tuple[str, dict]]]) -> list[list[tuple[str, dict]]]:
    """The same runs under new uids (start, descriptors, events, stop), for a catalog that holds the first."""
    import uuid

    out = []
    for docs in runs:
        new: dict[str, str] = {}

        def uid(old: str, new: dict = new) -> str:
            return new.setdefault(old, str(uuid.uuid4()))

        copy = []
        for name, doc in docs:
            doc = dict(doc)
            doc["uid"] = uid(doc["uid"])
            for ref in ("run_start", "descriptor"):
                if ref in doc:
                    doc[ref] = uid(doc[ref])
            copy.append((name, doc))
        out.append(copy)
    return out


class _Accounting:
    """CPU seconds of this process (and of a server process, by pid) between ``start`` and ``stop``."""

    def __init__(self, server_pid: int | None = None) -> None:
        import psutil

        self.server = psutil.Process(server_pid) if server_pid else None

    def _now(self) -> tuple[float, float]:
        server = 0.0
        if self.server is not None:
            t = self.server.cpu_times()
            server = t.user + t.system + t.children_user + t.children_system
        return time.process_time(), server

    def __enter__(self) -> _Accounting:
        self.t0, (self.c0, self.s0) = time.perf_counter(), self._now()
        return self

    def __exit__(self, *exc) -> None:
        c1, s1 = self._now()
        self.wall_s, self.cpu_s, self.server_cpu_s = time.perf_counter() - self.t0, c1 - self.c0, s1 - self.s0


def _store_before(cat: Catalog, runs: list) -> None:
    """What the RunEngine's writer did per run before the spool: the "is it stored?" request, then TiledWriter."""
    from bluesky_tiled_plugins import TiledWriter

    client = cat.client
    for docs in runs:
        cat.stored_state(docs[0][1]["uid"])
        writer = TiledWriter(client)
        for name, doc in docs:
            writer(name, doc)


def _store_spool(cat: Catalog, runs: list) -> None:
    writer = cat.writer()
    for docs in runs:
        for name, doc in docs:
            writer(name, doc)
    writer.flush()


class _UncachedDependants:
    """This process's servers as they were before gainloop cached FastAPI's dependants (for ``before``)."""

    def __enter__(self):
        import fastapi.dependencies.utils as utils

        self.utils, self.cached = utils, utils.get_dependant
        utils.get_dependant = getattr(self.cached, "original", self.cached)

    def __exit__(self, *exc):
        self.utils.get_dependant = self.cached


def _served_requests(logs: list[Path]) -> int:
    """HTTP requests the server logged so far: the lines of its access log(s) naming one (``GET /api/... HTTP/1.1``)."""
    n = 0
    for path in logs:
        with contextlib.suppress(FileNotFoundError), open(path, errors="replace") as f:
            n += sum(1 for line in f if " HTTP/1." in line)
    return n


def _storage(
    cat: Catalog,
    runs: list,
    server_pid: int | None,
    before_cat: Catalog | None = None,
    before_pid=None,
    *,
    access_logs=None,
    before_access_logs=None,
):
    """CPU per run (writer + server), throughput and requests served per run, as before the spool and with
    it, on the same runs (new uids). ``before_cat``: a catalog served as before (a server started without the
    dependant cache); None: ``cat``, with this process's (embedded) server made as before for the time of that
    measurement. ``access_logs`` (``before_access_logs``): a function giving the paths of the access log(s) of
    ``cat``'s (``before_cat``'s) server, whose lines count the requests (None: not counted)."""
    out = {}
    n_docs = sum(len(d) for d in runs)
    for label, store in (("before", _store_before), ("spool", _store_spool)):
        target, pid = (before_cat or cat, before_pid) if label == "before" else (cat, server_pid)
        logs = (before_access_logs or access_logs) if label == "before" else access_logs
        as_before = _UncachedDependants() if label == "before" and before_cat is None else contextlib.nullcontext()
        with as_before:
            store(target, _fresh_uids(runs[:2]))  # warm-up: the drain's client, the server's caches
            fresh = _fresh_uids(runs)
            time.sleep(0.2)  # (the warm-up's last access-log lines)
            served = _served_requests(logs()) if logs else 0
            with _Accounting(pid) as acc:
                store(target, fresh)
            time.sleep(0.2)  # (a log line is written once its response is sent)
            served = _served_requests(logs()) - served if logs else None
        missing = [d[0][1]["uid"] for d in fresh if target.stored_state(d[0][1]["uid"]).state != "complete"]
        if missing:
            raise RuntimeError(f"{label}: {len(missing)} runs not complete in the catalog, e.g. {missing[0]}")
        out[label] = {
            "cpu_s_per_run": (acc.cpu_s + acc.server_cpu_s) / len(runs),
            "writer_cpu_s_per_run": acc.cpu_s / len(runs),
            "server_cpu_s_per_run": acc.server_cpu_s / len(runs),
            "runs_per_s": len(runs) / acc.wall_s,
            "documents_per_s": n_docs / acc.wall_s,
            "requests_per_run": None if served is None else served / len(runs),
        }
    return out


def _postgres_storage(runs: list, tmp: str) -> tuple[dict | None, str]:
    """``_storage`` against ``gainloop catalog serve`` on PostgreSQL: ``before`` into a server started as before
    (FastAPI's dependants per request), the spool into one as now (None and why, without PostgreSQL)."""
    from gainloop.embedded import DEPENDANT_CACHE_ENV

    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:
        sys.path.insert(0, repo)  # the harness (harness/: a Tiled server on PostgreSQL)
    from harness.faults import FaultEnv, ServiceMissing

    try:
        with FaultEnv(os.path.join(tmp, "postgres")) as env:
            cache = os.environ.get(DEPENDANT_CACHE_ENV)
            os.environ[DEPENDANT_CACHE_ENV] = "0"
            try:
                old = env.tiled_server(shared=False)
            finally:
                os.environ.pop(DEPENDANT_CACHE_ENV)
                if cache is not None:
                    os.environ[DEPENDANT_CACHE_ENV] = cache
            new = env.tiled_server(shared=False)
            with (
                Catalog(old.url, data_dir_path=os.path.join(tmp, "pg-old"), api_key=old.api_key) as before,
                Catalog(new.url, data_dir_path=os.path.join(tmp, "pg-new"), api_key=new.api_key) as cat,
            ):
                return (
                    _storage(
                        cat,
                        runs,
                        new.proc.pid,
                        before,
                        old.proc.pid,
                        access_logs=lambda: sorted(new.log_dir.glob("*.txt")),
                        before_access_logs=lambda: sorted(old.log_dir.glob("*.txt")),
                    ),
                    "",
                )
    except ServiceMissing as exc:
        return None, str(exc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="acquisitions (events) per timed run")
    parser.add_argument("--warmup", type=int, default=10, help="events of the untimed warm-up run of each path")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--replay-events", type=int, default=2000, help="events in the replayed run")
    parser.add_argument("--exposure", type=float, default=0.01, help="spectrometer exposure (lab s)")
    parser.add_argument("--fluence", type=float, default=1500.0, help="pump fluence (uJ/cm^2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage-runs", type=int, default=30, help="runs written per storage measurement")
    parser.add_argument("--storage-events", type=int, default=10, help="events of each of those runs")
    parser.add_argument("--no-postgres", action="store_true", help="skip the Tiled server on PostgreSQL")
    parser.add_argument("--profile", action="store_true", help="also cProfile one twin + writer run")
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed by --profile")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    if min(args.n, args.repeats, args.replay_events, args.warmup, args.storage_runs, args.storage_events) < 1:
        parser.error("--n, --warmup, --repeats, --replay-events, --storage-runs and --storage-events must be >= 1")

    bench = _twin_bench(args.seed, args.exposure, args.fluence)
    twin_dets = [bench.spectrometer, bench.pump, bench.slit]
    gainloop_acq = _Acquisitions(bench, args.exposure)

    with tempfile.TemporaryDirectory(prefix="gainloop-bench-") as tmp, Catalog(data_dir_path=tmp) as cat:
        # name: (run engine, detectors) -- each a fresh RunEngine; "direct" has none
        from bluesky_tiled_plugins import TiledWriter

        paths = {
            "twin_writer": (_run_engine(cat.writer()), gainloop_acq),
            "bare": (_run_engine(), [det]),
            "twin_count_writer": (_run_engine(cat.writer()), twin_dets),
            "twin_inline": (_run_engine(TiledWriter(cat.new_client())), gainloop_acq),
            "twin": (_run_engine(), gainloop_acq),
            "bare_writer": (_run_engine(cat.writer()), [det]),
            "three_sim": (_run_engine(), [det1, det2, motor1]),
            "direct": (None, None),
        }
        short = ("twin_writer", "bare")  # also timed on 2-event runs: cost per run and per event
        for RE, dets in paths.values():  # warm-up: imports, catalog nodes, caches
            _ = _timed_direct(bench, args.warmup) if RE is None else _timed_run(RE, dets, args.warmup, cat)
        per_event: dict[str, list[float]] = {k: [] for k in paths}
        short_run: dict[str, list[float]] = {k: [] for k in short}
        lags: list[float] = []  # stop -> readable, of the twin + spool runs of N events
        for _ in range(args.repeats):
            for key, (RE, dets) in paths.items():
                n_lags = len(cat.spool.lag_s)
                per_event[key].append(_timed_direct(bench, args.n) if RE is None else _timed_run(RE, dets, args.n, cat))
                if key == "twin_writer":
                    cat.settle()
                    lags += cat.spool.lag_s[n_lags:]
                if key in short:
                    short_run[key].append(2 * _timed_run(RE, dets, 2, cat))
        ms = {k: 1e3 * statistics.median(v) for k, v in per_event.items()}
        split = {}  # key: (ms per event, ms per run)
        for key in short:
            t_n, t_2 = ms[key] * args.n, 1e3 * statistics.median(short_run[key])
            marginal = (t_n - t_2) / (args.n - 2) if args.n > 2 else math.nan
            split[key] = (marginal, t_2 - 2 * marginal)
        per_event_ratio = split["twin_writer"][0] / split["bare"][0]

        if args.profile:
            _profile_run(paths["twin_count_writer"][0], twin_dets, args.n, args.profile_top)

        cat.settle()
        uid, docs, ingest_rate = _write_replay_run(cat, args.replay_events, args.seed)
        seen = 0

        def count_events(name: str, doc: dict) -> None:
            nonlocal seen
            seen += name == "event"

        t0 = time.perf_counter()
        for name, doc in docs:
            count_events(name, doc)
        memory_rate = seen / (time.perf_counter() - t0)
        rates, read_rates = [], []
        for _ in range(args.repeats):
            rate, n_events = _replay_rate(cat, uid)
            if n_events != args.replay_events:
                raise RuntimeError(f"replay streamed {n_events} events, the run has {args.replay_events}")
            rates.append(rate)
            read_rates.append(_read_rate(cat, uid, args.replay_events))
        replay_rate = statistics.median(rates)
        read_rate = statistics.median(read_rates)

        runs = _recorded_runs(twin_dets, args.storage_runs, args.storage_events)
        with tempfile.TemporaryDirectory(prefix="gainloop-bench-") as tmp2, Catalog(data_dir_path=tmp2) as fresh:
            storage = _storage(fresh, runs, None, access_logs=lambda: [Path(fresh.location) / "access.log"])
        postgres, no_postgres = (None, "--no-postgres") if args.no_postgres else _postgres_storage(runs, tmp)

    ratio = ms["twin_writer"] / ms["bare"]
    result = {
        "per_acq_ms": ms["twin_writer"],
        "bare_count_ms": ms["bare"],
        "ratio": ratio,
        "per_acq_bp_count_ms": ms["twin_count_writer"],
        "ratio_bp_count": ms["twin_count_writer"] / ms["bare"],
        "replay_events_per_s": replay_rate,
        "storage_cpu_s_per_run": storage["spool"]["cpu_s_per_run"],
        "drain_runs_per_s": storage["spool"]["runs_per_s"],
        "drain_documents_per_s": storage["spool"]["documents_per_s"],
        "storage_cpu_s_per_run_before": storage["before"]["cpu_s_per_run"],
        "storage_cpu_ratio": storage["spool"]["cpu_s_per_run"] / storage["before"]["cpu_s_per_run"],
        "storage_requests_per_run": storage["spool"]["requests_per_run"],
        "storage_requests_per_run_before": storage["before"]["requests_per_run"],
        "lag_median_s": statistics.median(lags) if lags else None,
        "lag_max_s": max(lags) if lags else None,
        "inline_writer_ms": ms["twin_inline"],
        "postgres": postgres,
        "postgres_storage_cpu_s_per_run": postgres and postgres["spool"]["cpu_s_per_run"],
        "postgres_drain_runs_per_s": postgres and postgres["spool"]["runs_per_s"],
        "postgres_requests_per_run": postgres and postgres["spool"]["requests_per_run"],
        "storage_runs": args.storage_runs,
        "storage_events": args.storage_events,
        "per_acq_no_writer_ms": ms["twin"],
        "twin_direct_ms": ms["direct"],
        "bare_writer_ms": ms["bare_writer"],
        "overhead_ratio": (ms["twin_writer"] - ms["direct"]) / ms["bare"],
        "three_sim_devices_ms": ms["three_sim"],
        # (null with --n 2: no events beyond the 2-event run to split on)
        "per_acq_per_event_ms": _finite_or_none(split["twin_writer"][0]),
        "per_acq_per_run_ms": _finite_or_none(split["twin_writer"][1]),
        "bare_count_per_event_ms": _finite_or_none(split["bare"][0]),
        "bare_count_per_run_ms": _finite_or_none(split["bare"][1]),
        "ratio_per_event": _finite_or_none(per_event_ratio),
        "replay_reads_events_per_s": read_rate,
        "writer_ingest_events_per_s": ingest_rate,
        "memory_dispatch_events_per_s": memory_rate,
        "n": args.n,
        "replay_events": args.replay_events,
        "repeats": args.repeats,
    }
    ok_ratio = ratio <= RATIO_TARGET
    ok_replay = replay_rate >= REPLAY_TARGET

    print(f"\nplan overhead: ms per acquisition (run wall time / {args.n} events, median of {args.repeats} rounds)")
    print(f"{'path':<52} {'ms/event':>10}")
    rows = [
        ("RunEngine + gainloop acquire + spool    [per_acq]", "twin_writer"),
        ("RunEngine + ophyd.sim det, no writer    [bare_count]", "bare"),
        ("  RunEngine + bp.count(twin devices) + spool", "twin_count_writer"),
        ("  RunEngine + gainloop acquire + TiledWriter inline", "twin_inline"),
        ("  RunEngine + gainloop acquire, no writer", "twin"),
        ("  RunEngine + ophyd.sim det + spool", "bare_writer"),
        ("  twin trigger + read, no RunEngine", "direct"),
        ("  RunEngine + 3 ophyd.sim devices, no writer", "three_sim"),
    ]
    for label, key in rows:
        print(f"{label:<52} {ms[key]:>10.3f}")
    print(f"ratio per_acq / bare_count: {ratio:.1f}x (target <= {RATIO_TARGET:g}x: {'met' if ok_ratio else 'MISSED'})")
    print(
        f"ratio bp.count(twin devices) + spool / bare_count: {result['ratio_bp_count']:.1f}x "
        "(the same events through bluesky's plan stubs)"
    )
    print(
        "breakdown per acquisition: twin physics and devices "
        f"{ms['direct']:.2f} ms, RunEngine over the twin {ms['twin'] - ms['direct']:.2f} ms, "
        f"spool {ms['twin_writer'] - ms['twin']:.2f} ms "
        f"(on ophyd.sim det: {ms['bare_writer'] - ms['bare']:.2f} ms)"
    )
    print(f"ratio without the twin's physics, (per_acq - direct) / bare_count: {result['overhead_ratio']:.1f}x")
    print(
        f"per run + per event (with 2-event runs): per_acq {split['twin_writer'][1]:.0f} ms + "
        f"{split['twin_writer'][0]:.2f} ms, bare_count {split['bare'][1]:.1f} ms + {split['bare'][0]:.2f} ms; "
        f"ratio per event (long runs): {per_event_ratio:.1f}x"
    )
    print(f"\nreplay of a {args.replay_events}-event run (det + motor + 512-px spectrum), median of {args.repeats}")
    print(f"{'path':<52} {'events/s':>10}")
    print(f"{'Tiled reads + run_documents + callback  [replay]':<52} {replay_rate:>10.3e}")
    print(f"{'  Tiled reads alone (stream_columns)':<52} {read_rate:>10.3e}")
    print(f"{'  the same documents into TiledWriter (ingest)':<52} {ingest_rate:>10.3e}")
    print(f"{'  the same documents from memory to the callback':<52} {memory_rate:>10.3e}")
    print(f"{'  live: gainloop acquire + spool (1/per_acq)':<52} {1e3 / ms['twin_writer']:>10.3e}")
    print(f"replay target >= {REPLAY_TARGET:.0e} events/s: {'met' if ok_replay else 'MISSED'}")
    if lags:
        print(
            f"\nstop document -> run readable in the embedded catalog ({len(lags)} runs of {args.n} events): "
            f"median {statistics.median(lags):.3f} s, max {max(lags):.3f} s (target: median <= 1 s)"
        )
    print(
        f"\nstorage of {args.storage_runs} twin count runs of {args.storage_events} events "
        "(CPU: this process + the server process; PostgreSQL's backends not counted)"
    )
    print(
        f"{'catalog':<26} {'path':<8} {'CPU s/run':>10} {'writer':>8} {'server':>8} {'runs/s':>8} {'docs/s':>8} "
        f"{'req/run':>8} {'CPU ms/req':>10}"
    )
    for where, figures in (("embedded (SQLite)", storage), ("Tiled on PostgreSQL", postgres)):
        if figures is None:
            print(f"{where:<26} skipped: {no_postgres}")
            continue
        for label in ("before", "spool"):
            f = figures[label]
            reqs = f["requests_per_run"]
            per_req = f"{1e3 * f['cpu_s_per_run'] / reqs:>10.1f}" if reqs else f"{'-':>10}"
            print(
                f"{where:<26} {label:<8} {f['cpu_s_per_run']:>10.3f} {f['writer_cpu_s_per_run']:>8.3f} "
                f"{f['server_cpu_s_per_run']:>8.3f} {f['runs_per_s']:>8.1f} {f['documents_per_s']:>8.0f} "
                f"{'-' if reqs is None else f'{reqs:.1f}':>8} {per_req}"
            )
        r = figures["spool"]["cpu_s_per_run"] / figures["before"]["cpu_s_per_run"]
        print(f"{'':<26} spool / before: {r:.2f} (target <= 0.33: {'met' if r <= 1 / 3 else 'MISSED'})")
    if not all(math.isfinite(v) and v > 0 for v in (ms["twin_writer"], ms["bare"], replay_rate)):
        raise RuntimeError(f"non-finite or non-positive result: {result}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
