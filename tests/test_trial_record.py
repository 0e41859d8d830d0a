"""The one trial record: its film doping columns (requested, measured, error, absorption run) round trip
through the ``outcomes`` stream's row, older rows without them still read, and ``result`` gives the
optimiser the doping as measured."""

from __future__ import annotations

import json
import math

import pytest

from core.trial import FILM_COLUMNS, FilmDoping, Proposal, TrialRecord, TrialResult


def _proposal(doping=7.8):
    return Proposal(trial_index=4, params={"stripe_length_um": 1000.0, "doping": doping}, expected_cost_s=21700.0)


def _measured(**kw):
    fields = dict(
        status="completed",
        outcome={"threshold_uJ_cm2": 81.0, "threshold_err_uJ_cm2": 3.0},
        lab_time_s=21800.0,
        sample_id="film-001-ne7.80",
        new_film=True,
        run_uid="scan-uid",
        campaign_lab_time_s=22000.0,
        best_threshold_uJ_cm2=81.0,
        requested_doping=7.8,
        measured_doping=7.71,
        measured_doping_err=0.03,
        absorption_uid="abs-uid",
    )
    fields.update(kw)
    return TrialRecord(_proposal(), **fields)


def test_a_record_with_a_measured_film_round_trips_through_its_row():
    record = _measured()
    row = record.to_row()
    for column in FILM_COLUMNS:
        assert isinstance(row[column], float), column
    assert (row["requested_doping"], row["measured_doping"], row["measured_doping_err"]) == (7.8, 7.71, 0.03)
    assert row["absorption_uid"] == "abs-uid"
    back = TrialRecord.from_row(json.loads(json.dumps(row)), record.proposal)
    assert back == record
    assert back.doping_measured


def test_every_record_gives_the_same_row_keys():
    """One descriptor for the stream: a library film's record (nothing measured) has the same columns."""
    library = TrialRecord(_proposal(7.4), sample_id="cas_doped-film", requested_doping=7.4)
    abandoned = TrialRecord(_proposal(), status="abandoned", reason="stopped")
    assert set(library.to_row()) == set(_measured().to_row()) == set(abandoned.to_row())
    assert math.isnan(library.to_row()["measured_doping"]) and library.to_row()["absorption_uid"] == ""


def test_an_older_row_without_the_film_columns_still_reads():
    row = _measured().to_row()
    for column in (*FILM_COLUMNS, "absorption_uid"):
        del row[column]
    old = TrialRecord.from_row(row)
    assert math.isnan(old.requested_doping) and math.isnan(old.measured_doping)
    assert math.isnan(old.measured_doping_err) and old.absorption_uid == ""
    assert not old.doping_measured
    # a new film of an older campaign was never measured: the optimiser sees it as requested, as before
    assert old.result.observed_params == {} and old.result.observed == old.params


def test_an_even_older_json_row_still_reads():
    row = {
        "trial_index": 2,
        "params": json.dumps({"stripe_length_um": 500.0, "doping": 7.4}),
        "outcome": json.dumps({"threshold_uJ_cm2": 95.0}),
        "status": "completed",
        "trial_lab_time_s": 120.0,
        "lab_time_used_s": 900.0,
    }
    old = TrialRecord.from_row(row)
    assert old.params == {"stripe_length_um": 500.0, "doping": 7.4}
    assert math.isnan(old.measured_doping) and old.result.observed == old.params


def test_the_result_gives_the_measured_doping_with_its_error():
    result = _measured().result
    assert result.params["doping"] == 7.8  # what was requested stays the proposal's
    assert result.observed_params == {"doping": 7.71} and result.observed_err == {"doping": 0.03}
    assert result.observed["doping"] == 7.71 and result.observed_sd("doping") == 0.03


def test_a_new_film_never_measured_has_an_unknown_doping():
    record = TrialRecord(
        _proposal(),
        status="failed",
        reason="film not measured: saturated",
        sample_id="film-002-ne7.80",
        new_film=True,
        requested_doping=7.8,
    )
    assert math.isnan(record.result.observed["doping"])
    # a library film (known doping, not new) is used as requested
    library = TrialRecord(_proposal(7.4), sample_id="cas_doped-film", requested_doping=7.4)
    assert library.result.observed == library.params


def test_trial_result_dict_round_trip_keeps_what_was_observed():
    result = _measured().result
    d = json.loads(json.dumps(result.as_dict()))
    assert TrialResult.from_dict(d) == result
    plain = TrialResult(1, {"stripe_length_um": 100.0, "doping": 1.0})
    assert "observed_params" not in plain.as_dict()  # as before when nothing was observed apart
    with pytest.raises(Exception, match="observed_params must be a mapping"):
        TrialResult(1, {"doping": 1.0}, observed_params=[1.0])


def test_film_doping_as_dict_leaves_out_what_is_not_a_number():
    assert FilmDoping(7.7, 0.03, math.nan, "u").as_dict() == {
        "measured_doping": 7.7,
        "measured_doping_err": 0.03,
        "absorption_uid": "u",
    }
