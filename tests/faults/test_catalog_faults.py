"""Faults 3, 4 and 10: the Tiled server down mid-run, duplicate ingestion, load from four writers.

Each test runs its scenario (``harness/faults/catalog.py``) against a real Tiled
server on the machine's PostgreSQL (skipped, naming it, when PostgreSQL is absent).
"""

from __future__ import annotations

import pytest

from harness.faults.catalog import scenario_duplicate_ingestion, scenario_load, scenario_tiled_down_mid_run

pytestmark = pytest.mark.slow(seconds=100)  # one of the longest modules: it runs early (tests/conftest.py)


def test_server_down_mid_run_loses_no_document_and_the_drain_completes_the_runs(run_scenario):
    # trial 0's run is cut by the outage, trial 1 runs while the server is down, trial 2 after its restart
    figures = run_scenario(scenario_tiled_down_mid_run, trials=3, stop_trial=0, stop_event=3, restart_trial=2)
    assert figures.checks["server_was_stopped_and_restarted"], figures.detail
    assert figures.checks["the_drain_met_the_outage_and_said_so"], figures.detail
    assert figures.checks["the_user_is_told_how_to_upload"], figures.detail
    assert figures.checks["no_traceback_from_the_outage"], figures.detail
    assert figures.checks["every_run_drained_by_its_process_or_the_next_start"], figures.detail
    assert figures.checks["no_run_drained_twice_or_conflicting"], figures.detail
    assert figures.checks["every_emitted_document_is_stored_equal"], figures.detail
    assert figures.checks["upload_after_the_drain_does_nothing"], figures.detail
    assert figures.checks["a_complete_run_in_the_spool_is_skipped"], figures.detail
    assert figures.checks["catalog_unchanged_by_later_uploads"], figures.detail
    assert figures.checks["one_stored_run_per_emitted_run"], figures.detail
    assert figures.checks["no_trial_counted_failed_by_the_campaign"], figures.detail
    assert figures.documents_lost == 0 and figures.trials_lost == 0 and figures.trials_doubled == 0
    assert figures.ok, figures


def test_duplicate_ingestion_keeps_one_run_per_uid_quietly(run_scenario):
    figures = run_scenario(scenario_duplicate_ingestion, trials=2)
    assert figures.checks["one_run_per_uid"], figures.detail
    assert figures.checks["replayed_runs_all_skipped"], figures.detail
    assert figures.checks["stored_runs_equal_emitted"], figures.detail
    assert figures.checks["no_duplicate_outcome_rows"], figures.detail
    assert figures.checks["training_rows_one_per_trial"], figures.detail
    assert figures.checks["no_log_line_above_info"] and figures.checks["no_python_warning"], figures.detail
    assert figures.checks["no_backup_file"], figures.detail
    assert figures.ok, figures


def test_runs_from_four_writer_processes_are_all_stored_and_readable(run_scenario):
    # the benchmark runs the scenario's default, 1000 runs; every run's metadata is checked, every 5th stream read
    figures = run_scenario(scenario_load, n_runs=100, n_writers=4, read_every=5)
    assert figures.checks["zero_errors"], figures.detail
    assert figures.checks["every_run_written"] and figures.checks["every_run_stored_once"], figures.detail
    assert figures.checks["every_run_readable"], figures.detail
    assert figures.documents_lost == 0
    assert figures.ok, figures
