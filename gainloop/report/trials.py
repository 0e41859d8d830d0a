"""A campaign's trials as the report shows them: each ``TrialRecord`` with its measurement run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from core.trial import TrialRecord
from gainloop.records import StoredCampaign
from gainloop.replay import stream_columns
from plans.analysis import counts_per_s

__all__ = ["ReportTrial", "count_rates", "primary_stream", "report_trials"]


@dataclass(frozen=True)
class ReportTrial:
    """One trial of the report: its stored record (read as ``t.record.status``, ...), its measurement run
    (None if none opened) and what the figures derive from the two."""

    record: TrialRecord
    run: object | None = None  # BlueskyRun of the measurement
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def lab_h(self) -> float:
        """Lab hours the campaign had used when the trial ended (NaN if not recorded)."""
        return self.record.campaign_lab_time_s / 3600.0

    @property
    def threshold(self) -> float:
        """The measured threshold (uJ/cm^2) of a completed trial, else NaN."""
        v = self.record.outcome.get("threshold_uJ_cm2")
        return float(v) if v is not None and self.record.status == "completed" else math.nan

    @property
    def threshold_err(self) -> float:
        v = self.record.outcome.get("threshold_err_uJ_cm2")
        return float(v) if v is not None else math.nan

    @property
    def run_uid(self) -> str:
        return self.run.start["uid"] if self.run is not None else ""

    def primary(self) -> dict[str, np.ndarray] | None:
        """The run's stored primary stream (read once)."""
        if "primary" not in self._cache:
            self._cache["primary"] = primary_stream(self.run)
        return self._cache["primary"]


def report_trials(stored: StoredCampaign) -> list[ReportTrial]:
    """One ``ReportTrial`` per stored trial record, in trial order, with its run (``StoredCampaign.trial_run``)."""
    return [ReportTrial(r, stored.trial_run(r.trial_index)) for r in stored.records]


def primary_stream(run) -> dict[str, np.ndarray] | None:
    """A run's stored primary stream as columns (None if it has none or no pump fluence read)."""
    if run is None or "primary" not in run:
        return None
    try:
        data = stream_columns(run["primary"])
    except KeyError:
        return None
    return data if data.get("pump_fluence") is not None and len(data["pump_fluence"]) else None


def count_rates(data: dict[str, np.ndarray], *, at_peak: bool = False) -> np.ndarray:
    """Counts per second of each read (``plans.analysis.counts_per_s``)."""
    return counts_per_s(data, at_peak=at_peak)
