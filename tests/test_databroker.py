"""``gainloop runs`` / ``gainloop.runs.list_runs``: the catalog's runs, filtered with Tiled queries, on the
embedded catalog and on a Tiled server on PostgreSQL (skipped only when none listens on 127.0.0.1:5432).

The runs are made by a real RunEngine on the in-process twin: an ASE scan and a VSL scan on one film,
an ASE scan on another sample, a run whose plan fails, and a run cut off before its stop document.
Why the module is named so: databroker was a declared dependency; what of it works on this catalog
is in the README ("databroker and this catalog"); its query types are bluesky-tiled-plugins' own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from gainloop.catalog import Catalog
from gainloop.runs import RunQueryError, bluesky_runs, broker, list_runs
from harness.faults._env import PG_HOST, PG_PORT, clean_env, free_port, listening
from plans.measurements import ase_fluence_scan, vsl_scan
from sim.devices import default_twin_bench_path, twin_bench_devices

pytestmark = pytest.mark.slow(seconds=45)  # one of the longest modules: it runs early (tests/conftest.py)


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class _Server:
    """``gainloop catalog serve`` on a fresh PostgreSQL database and a free port, with a known key."""

    def __init__(self, tmp_path):
        self.database = f"gainloop_runs_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg(f'CREATE DATABASE "{self.database}"'))
        self.api_key = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{free_port()}"
        env = clean_env()
        env["GAINLOOP_TILED_API_KEY"] = self.api_key
        self.log = tmp_path / "server.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gainloop.cli", "catalog", "serve",
                 "--postgres", f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{self.database}",
                 "--port", self.url.rsplit(":", 1)[1], "--data-dir", str(tmp_path / "server-data")],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 60.0
        with httpx.Client(trust_env=False) as client:
            while True:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"the catalog server did not start: {self.log.read_text()}")
                try:
                    if client.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))


def _failing_plan(bench):
    """A run on the twin whose plan raises after one reading: stored with exit_status "fail"."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    @bpp.run_decorator(md={"plan_name": "broken_scan", "sample_id": "cas_doped-film"})
    def inner():
        yield from bps.trigger_and_read([bench.spectrometer])
        raise RuntimeError("the plan broke on purpose")

    return (yield from inner())


class Made:
    """The catalog and what was written into it (uids in the order the runs started)."""

    def __init__(self, catalog: Catalog, where: str, cli_args: list[str]):
        self.catalog, self.where, self.cli_args = catalog, where, cli_args
        self.uids: dict[str, str] = {}
        self.times: dict[str, float] = {}


@pytest.fixture(scope="module", params=["embedded", "postgresql"])
def made(request, tmp_path_factory):
    from bluesky import RunEngine
    from event_model import compose_run

    tmp = tmp_path_factory.mktemp(request.param)
    server = None
    if request.param == "postgresql":
        if not listening(PG_HOST, PG_PORT):
            pytest.skip(f"no PostgreSQL listening on {PG_HOST}:{PG_PORT} (the catalog server needs one)")
        server = _Server(tmp)
        catalog = Catalog(server.url, data_dir_path=tmp / "client", api_key=server.api_key)
        cli_args = ["--catalog", server.url, "--api-key", server.api_key, "--data-dir", str(tmp / "client")]
    else:
        catalog = Catalog(data_dir_path=tmp / "data")
        cli_args = ["--data-dir", str(tmp / "data")]
    bench = twin_bench_devices(default_twin_bench_path(), seed=3)
    try:
        out = Made(catalog, request.param, cli_args)
        RE = RunEngine({}, call_returns_result=True)
        RE.subscribe(catalog.writer())
        starts = []
        RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
        (out.uids["ase"],) = RE(ase_fluence_scan(bench, "cas_doped-film")).run_start_uids
        lengths = [200.0, 400.0, 600.0, 800.0, 1000.0]
        vsl = vsl_scan(bench, "cas_doped-film", fluence_uJ_cm2=500.0, stripe_lengths_um=lengths)
        (out.uids["vsl"],) = RE(vsl).run_start_uids
        (out.uids["ase_other"],) = RE(ase_fluence_scan(bench, "cas-film")).run_start_uids
        with pytest.raises(RuntimeError, match="broke on purpose"):
            RE(_failing_plan(bench))
        out.uids["broken"] = starts[-1]["uid"]
        out.times = {key: doc["time"] for key, doc in zip(out.uids, starts, strict=True)}
        # a run cut off before its stop document (a killed process): start and descriptor only
        cut = compose_run(time=time.time(), metadata={"plan_name": "cut_off_scan", "sample_id": "cas_doped-film"})
        writer = catalog.writer()
        writer("start", cut.start_doc)
        writer("descriptor", cut.compose_descriptor(name="primary", data_keys={}).descriptor_doc)
        out.uids["cut"], out.times["cut"] = cut.start_doc["uid"], cut.start_doc["time"]
        yield out
    finally:
        bench.destroy()
        catalog.close()
        if server is not None:
            server.stop()


def _uids(found) -> list[str]:
    return [r.uid for r in found]


def test_every_run_is_listed_newest_first_with_its_plan_sample_and_exit_status(made):
    found = list_runs(made.catalog, timezone="UTC")
    u = made.uids
    assert _uids(found) == [u["cut"], u["broken"], u["ase_other"], u["vsl"], u["ase"]]
    by_uid = {r.uid: r for r in found}
    assert (by_uid[u["ase"]].plan, by_uid[u["ase"]].sample) == ("ase_fluence_scan", "cas_doped-film")
    assert (by_uid[u["ase_other"]].plan, by_uid[u["ase_other"]].sample) == ("ase_fluence_scan", "cas-film")
    assert by_uid[u["vsl"]].plan == "vsl_scan"
    assert [by_uid[u[k]].exit_status for k in ("ase", "vsl", "broken", "cut")] == [
        "success",
        "success",
        "fail",
        "incomplete",
    ]
    ase = by_uid[u["ase"]]
    assert ase.time_unix_s == pytest.approx(made.times["ase"])
    assert ase.time == datetime.fromtimestamp(made.times["ase"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert ase.scan_id == 1
    assert list_runs(made.catalog, limit=2) == found[:2]


def test_filters_by_plan_sample_uid_prefix_and_exit_status(made):
    u = made.uids
    assert _uids(list_runs(made.catalog, plan="ase_fluence_scan")) == [u["ase_other"], u["ase"]]
    assert _uids(list_runs(made.catalog, plan="ase_fluence_scan", sample="cas-film")) == [u["ase_other"]]
    assert list_runs(made.catalog, plan="no_such_plan") == []
    assert _uids(list_runs(made.catalog, uid=u["vsl"][:8].upper())) == [u["vsl"]]
    assert _uids(list_runs(made.catalog, uid=u["vsl"])) == [u["vsl"]]
    assert _uids(list_runs(made.catalog, status="fail")) == [u["broken"]]
    assert _uids(list_runs(made.catalog, status="incomplete")) == [u["cut"]]
    assert _uids(list_runs(made.catalog, status="success")) == [u["ase_other"], u["vsl"], u["ase"]]


def test_filters_by_start_time(made):
    u, t = made.uids, made.times
    # Unix seconds: since inclusive, until exclusive
    assert _uids(list_runs(made.catalog, since=t["vsl"], until=t["broken"])) == [u["ase_other"], u["vsl"]]
    today = datetime.fromtimestamp(t["ase"], UTC).strftime("%Y-%m-%d")
    assert len(list_runs(made.catalog, since=today, timezone="UTC")) == 5
    assert list_runs(made.catalog, until=today, timezone="UTC") == []
    assert list_runs(made.catalog, until="2020", timezone="UTC") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"since": "yesterday"}, r"bad time range \(since='yesterday'.*YYYY-MM-DD"),
        ({"since": "2026-12-02", "until": "2026-12-01"}, r"bad time range.*since must not be greater than until"),
        ({"uid": "xyz1"}, r"bad uid 'xyz1': give the start of a run's uid, at least 4 hexadecimal digits"),
        ({"uid": "ab"}, r"bad uid 'ab'"),
        ({"status": "ok"}, r"unknown exit status 'ok': give one of 'success', 'abort', 'fail', 'incomplete'"),
        ({"timezone": "Mars/Olympus"}, r"unknown time zone 'Mars/Olympus': give an IANA name"),
        ({"limit": 0}, r"limit must be at least 1, got 0"),
    ],
)
def test_a_bad_filter_is_a_clear_error(made, kwargs, message):
    with pytest.raises(RunQueryError, match=message):
        list_runs(made.catalog, **kwargs)


# The command as the gainloop CLI registers it (``app.command("runs")(runs)``), in its own process: a
# second embedded catalog opened in this process would take over tiled's process-wide API-key setting.
_CLI = """
import typer
from gainloop.cli_runs import runs

app = typer.Typer()
app.command("runs")(runs)


@app.callback()
def main() -> None:
    pass


app()
"""


def _invoke(made, *args: str) -> subprocess.CompletedProcess:
    env = clean_env()
    env["COLUMNS"] = "160"
    return subprocess.run(
        [sys.executable, "-c", _CLI, "runs", *args, *made.cli_args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_command_lists_runs_as_json_and_as_a_table(made):
    u = made.uids
    result = _invoke(made, "--plan", "ase_fluence_scan", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [r["uid"] for r in listed["runs"]] == [u["ase_other"], u["ase"]]
    assert listed["runs"][0]["sample"] == "cas-film"
    assert listed["runs"][0]["exit_status"] == "success"

    result = _invoke(made, "--uid", u["broken"][:8], "--timezone", "UTC")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if u["broken"][:8] in line)
    assert "broken_scan" in row and "cas_doped-film" in row and "fail" in row
    assert datetime.fromtimestamp(made.times["broken"], UTC).strftime("%Y-%m-%d %H:%M:%S") in row

    result = _invoke(made, "--until", "2020-01-01")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no runs match in the catalog at ")


def test_the_command_refuses_a_bad_filter_in_one_line(made):
    result = _invoke(made, "--since", "last tuesday")
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: bad time range (since='last tuesday'")


# ------------------------------------------------ databroker's query types and its v1 Broker on this catalog
def test_databrokers_query_types_need_the_bluesky_runs_view(made):
    """On the plain Tiled container they are refused (HTTP 400) or silently not applied (every run)."""
    from databroker.queries import PartialUID, ScanID, ScanIDRange, TimeRange
    from tiled.client.utils import ClientError

    plain = made.catalog.client
    try:
        count = len(plain.search(TimeRange(until="2020", timezone="UTC")))
    except ClientError as exc:
        assert "The query type 'TimeRange' is not supported on this node" in str(exc)
    else:
        assert count == 5  # not applied: no run started before 2020

    u = made.uids
    runs = bluesky_runs(made.catalog)
    assert len(runs.search(TimeRange(until="2020", timezone="UTC"))) == 0
    assert len(runs.search(TimeRange(since=made.times["ase_other"]))) == 3
    assert list(runs.search(PartialUID(u["vsl"][:8]))) == [u["vsl"]]
    assert list(runs.search(PartialUID("ffffffff"))) == []
    assert [run.metadata["start"]["uid"] for run in runs.search(ScanID(2)).values()] == [u["vsl"]]
    assert len(runs.search(ScanIDRange(1, 3))) == 2
    assert runs[u["ase_other"][:8]].metadata["start"]["sample_id"] == "cas-film"


def test_the_databroker_v1_view_finds_runs_and_reads_their_tables(made):
    from tiled.client.utils import ClientError

    u = made.uids
    db = broker(made.catalog)
    vsl = db[u["vsl"][:8]]
    assert vsl.start["plan_name"] == "vsl_scan" and vsl.stop["exit_status"] == "success"
    assert set(vsl.stream_names) == {"primary", "analysis"}
    table = vsl.table()
    primary = made.catalog.run(u["vsl"])["primary"].read()
    assert len(table) == len(primary["time"]) >= 5
    assert list(table["slit"]) == pytest.approx(list(primary["slit"].values))
    assert set(vsl.table("analysis").columns) >= {"gnet_per_cm", "gnet_err_per_cm"}
    assert db[-1].start["uid"] == u["cut"] and "exit_status" not in db[-1].stop
    assert {h.start["uid"] for h in db(plan_name="ase_fluence_scan")} == {u["ase"], u["ase_other"]}
    assert {h.start["uid"] for h in db(sample_id="cas-film")} == {u["ase_other"]}
    today = datetime.fromtimestamp(made.times["ase"], UTC).strftime("%Y-%m-%d")
    assert len(list(db(since=today))) == 5 and list(db(until="2020")) == []
    # what the README says does not work on these catalogs
    with pytest.raises(ClientError, match="406: None of the media types requested"):
        list(vsl.documents())
    with pytest.raises(NotImplementedError, match="Old-style databroker configuration is not supported"):
        type(db).from_config({})
    # the view leaves the catalog's own clients as they were: its runs still read (as replay does)
    from gainloop.replay import stream_columns

    slit = stream_columns(made.catalog.run(u["vsl"])["primary"])["slit"]
    assert list(slit) == pytest.approx(list(primary["slit"].values))
