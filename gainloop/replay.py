"""Replay a stored run: re-analyse it from its stored data and re-stream its documents.

``replay(catalog, uid)`` reads the run back through the Tiled client's BlueskyRun
(never from a private copy), rebuilds its documents in the order they were
emitted (start, each stream's descriptor and events, stop) for the same live
callbacks ``gainloop measure`` uses, and re-derives the plan's result with the
plan's own analysis function (``plans.registry``) from the stored ``primary``
stream and the start document's ``plan_args``: the result equals what the live
run printed, and is checked against the run's stored ``analysis`` stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from gainloop.catalog import Catalog
from gainloop.errors import GainloopError

__all__ = ["ReplayError", "ReplayResult", "replay", "run_documents", "stream_columns"]


class ReplayError(GainloopError):
    """A stored run cannot be replayed (no plan name, no stop document, unknown plan...)."""


@dataclass(frozen=True)
class ReplayResult:
    """What a replay gives: the re-derived result, the stored one, and how many documents were streamed."""

    result: dict
    stored: dict[str, float]
    n_documents: int
    n_events: int
    start: dict

    @property
    def matches(self) -> bool:
        """The re-derived numbers equal the run's stored analysis stream (to float64 round-off)."""
        for key, value in self.stored.items():
            new = self.result.get(key)
            if new is None:
                return False
            if not (math.isclose(new, value, rel_tol=1e-12, abs_tol=0.0) or (math.isnan(new) and math.isnan(value))):
                return False
        return True


def _stream_table(stream):
    """(table of scalar columns, {array key: 2-D array}) of one stored event stream."""
    base = stream.base
    table = base["internal"].read() if "internal" in base else None
    arrays = {key: np.asarray(base[key].read()) for key in base if key != "internal"}
    return table, arrays


def stream_columns(stream) -> dict[str, np.ndarray]:
    """A stored event stream as ``{data key: array in event order}`` (the live ``PrimaryData`` layout)."""
    table, arrays = _stream_table(stream)
    columns: dict[str, np.ndarray] = {}
    if table is not None:
        table = table.sort_values("seq_num")
        for key in table.columns:
            if key in ("seq_num", "time") or key.startswith("ts_"):
                continue
            columns[key] = table[key].to_numpy()
    columns.update(arrays)
    return columns


def _value(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _stream_documents(stream) -> Iterator[tuple[float, int, str, dict]]:
    descriptors = sorted(stream.descriptors, key=lambda d: d["time"])
    for d in descriptors:
        yield d["time"], 0, "descriptor", dict(d)
    table, arrays = _stream_table(stream)
    if table is None:
        return
    table = table.sort_values("seq_num").reset_index(drop=True)
    data_keys = [k for k in table.columns if k not in ("seq_num", "time") and not k.startswith("ts_")]
    records = table.to_dict(orient="list")
    for i in range(len(table)):
        t = float(records["time"][i])
        seq_num = int(records["seq_num"][i])
        descriptor = descriptors[0]["uid"]
        for d in descriptors[1:]:
            if d["time"] <= t:
                descriptor = d["uid"]
        data = {k: _value(records[k][i]) for k in data_keys}
        data.update({k: arr[i] for k, arr in arrays.items()})
        timestamps = {k: float(records[f"ts_{k}"][i]) if f"ts_{k}" in records else t for k in data}
        event = {
            "uid": f"event-{descriptor}-{seq_num}",
            "descriptor": descriptor,
            "seq_num": seq_num,
            "time": t,
            "data": data,
            "timestamps": timestamps,
            "filled": {},
        }
        yield t, 1, "event", event


def run_documents(run) -> Iterator[tuple[str, dict]]:
    """The run's documents in emission order: start, descriptors and events (by time), stop."""
    yield "start", dict(run.start)
    docs = [doc for name in run for doc in _stream_documents(run[name])]
    docs.sort(key=lambda x: (x[0], x[1]))
    for _, _, name, doc in docs:
        yield name, doc
    if run.metadata.get("stop") is not None:
        yield "stop", dict(run.stop)


def replay(catalog: Catalog, uid: str, callbacks: Iterable[Callable[[str, dict], object]] = ()) -> ReplayResult:
    """Re-stream the run's documents through ``callbacks`` and re-derive its result from stored data.

    Raises ``RunNotFoundError`` for an unknown uid, ``ReplayError`` for a run that
    is not a gainloop measurement or was interrupted before its stop document.
    """
    from plans.registry import PLANS

    run = catalog.run(uid)
    start = run.start
    plan_name = start.get("plan_name")
    if plan_name not in PLANS:
        raise ReplayError(
            f"run {uid} was made by plan {plan_name!r}, which gainloop cannot re-analyse; "
            f"known plans: {', '.join(PLANS)}"
        )
    callbacks = list(callbacks)
    n_docs = n_events = 0
    for name, doc in run_documents(run):
        for cb in callbacks:
            cb(name, doc)
        n_docs += 1
        n_events += name == "event"
    stop = run.metadata.get("stop")
    if stop is None:
        raise ReplayError(
            f"run {uid} has no stop document: it was interrupted (the process was killed mid-run); "
            "its data are incomplete and are not analysed"
        )
    if stop.get("exit_status") != "success":
        raise ReplayError(f"run {uid} ended with {stop.get('exit_status')}: {stop.get('reason') or 'no reason given'}")
    if "primary" not in run:
        raise ReplayError(f"run {uid} has no primary stream to analyse")
    results = PLANS[plan_name].analyse(stream_columns(run["primary"]), start.get("plan_args", {}))
    stored = {}
    if "analysis" in run:
        cols = stream_columns(run["analysis"])
        stored = {k: float(v[-1]) for k, v in cols.items()}
    result = {"uid": start["uid"], **results}
    return ReplayResult(result=result, stored=stored, n_documents=n_docs, n_events=n_events, start=dict(start))
