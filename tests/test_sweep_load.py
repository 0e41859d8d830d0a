"""Issue 17, item 3: four sweep writer processes write into one ``gainloop catalog serve`` on PostgreSQL
at once, through the spool of the host's data folder they share (``gainloop.sweep.worker_catalog``, as
``run_task`` opens it): no run lost, none doubled, every run complete.

The scenario (``harness/sweep_load.py``) starts the server on a free 127.0.0.1 port and a fresh
database (dropped at the end); it is skipped, naming it, only when no PostgreSQL listens on
127.0.0.1:5432. ``benchmarks/sweep_load.py`` runs the same scenario and prints its figures.
"""

from __future__ import annotations

import pyarrow
import pytest

from gainloop.catalog import Catalog
from harness.documents import by_run
from harness.faults import FaultEnv, ServiceMissing
from harness.sweep_load import expected_runs, read_back, scenario_sweep_writers

pytestmark = pytest.mark.slow(seconds=45)

WRITERS, RUNS_EACH, EVENTS = 4, 5, 5
PAUSE_S = 0.3  # after each trial: the record run stays open longer than the drain's stream_after_s (1 s)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with FaultEnv(tmp_path_factory.mktemp("env")) as fault_env:
        yield fault_env


@pytest.fixture(scope="module")
def figures(env, tmp_path_factory):
    try:
        return scenario_sweep_writers(
            tmp_path_factory.mktemp("load"),
            env,
            n_writers=WRITERS,
            runs_per_writer=RUNS_EACH,
            n_events=EVENTS,
            pause_s=PAUSE_S,
        )
    except ServiceMissing as exc:
        pytest.skip(str(exc))


def test_four_writer_processes_lose_and_double_no_run(figures):
    assert figures.writers == WRITERS
    assert figures.runs_written == WRITERS * (RUNS_EACH + 1)  # a record run and its trial runs per writer
    assert figures.errors == [], figures.errors  # no exception, warning, log line, run left in the spool
    assert figures.problems == [], figures.problems[:5]
    assert (figures.lost, figures.doubled, figures.unexpected) == (0, 0, 0)
    assert figures.runs_stored == figures.runs_written  # each run read back complete and equal to what was written
    assert figures.streamed == WRITERS  # every record run was in the catalog while open: the streamed path too
    assert figures.ok
    print(
        f"{figures.runs_written} runs from {WRITERS} writers in {figures.write_s:.1f} s ({figures.runs_per_s:.1f} "
        f"runs/s), read back in {figures.read_s:.1f} s"
    )


def test_the_reader_sees_a_doubled_row_and_a_missing_run(figures, env, tmp_path):
    """The checks above can fail: one stored row appended twice is a doubled run, a deleted run a lost one."""
    server = env.tiled_server()
    with Catalog(server.url, data_dir_path=tmp_path, api_key=server.api_key) as cat:
        from tiled.queries import Key

        found = dict(cat.client.search(Key("start.plan_name") == "load_trial").items())
        (tag,) = {run.metadata["start"]["load_tag"] for run in found.values()}
        expected = {}
        for w in range(WRITERS):
            expected.update(by_run(expected_runs(tag, 17, w, RUNS_EACH, EVENTS)))
        first, second = sorted(found)[:2]
        table = found[first]["primary"].base["internal"]
        table.append_partition(0, pyarrow.Table.from_pandas(table.read().head(1), preserve_index=False))
        found[second].delete(recursive=True, external_only=False)
        stored, lost, doubled, unexpected, problems = read_back(cat, tag, expected)
    assert (lost, doubled, unexpected) == (1, 1, 0), problems
    assert stored == len(expected) - 2
    assert any(first in p and "twice" in p for p in problems) and any(second in p for p in problems), problems
