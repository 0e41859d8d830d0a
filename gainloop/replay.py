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

from core.errors import GainloopError
from gainloop.catalog import Catalog

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


def _children(container) -> dict:
    """The children of a Tiled container, metadata and structure included, in one search request.

    (``list(container.items())`` would first ask the server for the count: a second request.)
    """
    return {key: child for key, child in container.items()}


@dataclass(frozen=True)
class _StoredStream:
    """One stored event stream read back in one pass: event order, values and timestamps per data key."""

    seq_num: np.ndarray
    time: np.ndarray
    #: data key -> values in event order (scalar columns 1-D, waveforms 2-D)
    columns: dict[str, np.ndarray]
    #: data key -> the reading's timestamps in event order (when stored)
    timestamps: dict[str, np.ndarray]


def _read_stream(stream, *, arrays: bool = True) -> _StoredStream | None:
    """The stream's table(s) and array nodes, each read with one request (None: no event was stored);
    ``arrays`` False: the table(s) only (the scalar readings, no waveform).

    The stream's parts come from one search request; scalar readings are the columns of
    its ``internal`` table (``internal_0``, ``internal_1``... when TiledWriter split a wide
    table), waveforms its array nodes, whose rows are in event (``seq_num``) order.
    """
    parts = _children(getattr(stream, "base", stream))
    tables = [parts.pop(k) for k in sorted(parts) if parts[k].structure_family == "table"]
    if not tables:
        return None
    frames = [t.read() for t in tables]
    raw = {col: frame[col].to_numpy() for frame in frames for col in frame.columns}
    order = np.argsort(raw["seq_num"], kind="stable")
    columns: dict[str, np.ndarray] = {}
    timestamps: dict[str, np.ndarray] = {}
    for key, values in raw.items():
        if key.startswith("ts_"):
            timestamps[key[3:]] = values[order]
        elif key not in ("seq_num", "time"):
            columns[key] = values[order]
    for key, client in parts.items() if arrays else ():
        columns[key] = np.asarray(client.read())
    return _StoredStream(raw["seq_num"][order], raw["time"][order], columns, timestamps)


def stream_columns(stream, *, arrays: bool = True) -> dict[str, np.ndarray]:
    """A stored event stream as ``{data key: array in event order}`` (the live ``PrimaryData`` layout);
    ``arrays`` False: the scalar readings only (one request fewer per waveform, e.g. a spectrum)."""
    stored = _read_stream(stream, arrays=arrays)
    return {} if stored is None else dict(stored.columns)


def _value(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _per_event(values: np.ndarray) -> list:
    """A column as one value per event: Python scalars, or the waveform's row (numpy) per event."""
    if values.ndim > 1:
        return list(values)
    if values.dtype.kind == "O":
        return [_value(v) for v in values]
    return values.tolist()


def _stream_documents(stream, stream_name: str, run_start_uid: str | None, stored: _StoredStream | None):
    """(time, order, name, document) of the stream's descriptors and events (one dict built per event)."""
    from bluesky_tiled_plugins.exporters import build_descriptor_docs

    # the same helper as the client's ``stream.descriptors``, without its request for the parent run
    name = stream.metadata.get("stream_name") or stream_name
    descriptors = sorted(build_descriptor_docs(dict(stream.metadata), name, run_start_uid), key=lambda d: d["time"])
    out: list[tuple[float, int, str, dict]] = [(d["time"], 0, "descriptor", dict(d)) for d in descriptors]
    if stored is None:
        return out
    keys = list(stored.columns)
    times = stored.time.astype(float).tolist()
    if keys:
        data_rows = zip(*(_per_event(stored.columns[k]) for k in keys), strict=True)
        ts_rows = zip(
            *(stored.timestamps[k].astype(float).tolist() if k in stored.timestamps else times for k in keys),
            strict=True,
        )
    else:  # events without data keys
        data_rows = ts_rows = [()] * len(times)
    first = descriptors[0]["uid"]
    later = [(d["time"], d["uid"]) for d in descriptors[1:]]
    seq_nums = stored.seq_num.astype(np.int64).tolist()
    for seq_num, t, row, ts in zip(seq_nums, times, data_rows, ts_rows, strict=True):
        descriptor = first
        for d_time, d_uid in later:
            if d_time <= t:
                descriptor = d_uid
        event = {
            "uid": f"event-{descriptor}-{seq_num}",
            "descriptor": descriptor,
            "seq_num": seq_num,
            "time": t,
            "data": dict(zip(keys, row, strict=True)),
            "timestamps": dict(zip(keys, ts, strict=True)),
            "filled": {},
        }
        out.append((t, 1, "event", event))
    return out


def _streams(run) -> dict:
    """The run's event streams by name (sorted), from one search request."""
    children = _children(run.base)
    streams = children.get("streams")
    if streams is not None and "BlueskyEventStream" not in {s.name for s in streams.specs}:
        children = _children(streams)  # the older layout, with a "streams" namespace
    return dict(sorted(children.items()))


def _stored_documents(run, stored: dict) -> Iterator[tuple[str, dict]]:
    """The run's documents in emission order; ``stored`` receives each stream's data (read once)."""
    start = run.metadata["start"]
    yield "start", dict(start)
    streams = _streams(run)
    stored.update({name: _read_stream(stream) for name, stream in streams.items()})
    docs = [
        doc
        for name, stream in streams.items()
        for doc in _stream_documents(stream, name, start.get("uid"), stored[name])
    ]
    docs.sort(key=lambda x: (x[0], x[1]))
    for _, _, name, doc in docs:
        yield name, doc
    if run.metadata.get("stop") is not None:
        yield "stop", dict(run.metadata["stop"])


def run_documents(run) -> Iterator[tuple[str, dict]]:
    """The run's documents in emission order: start, descriptors and events (by time), stop.

    Each stream is read with one request per table and per waveform (plus one search
    for its parts); the run's streams with one search.
    """
    yield from _stored_documents(run, {})


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
    stored: dict[str, _StoredStream | None] = {}  # each stream read once: documents, then analysis
    n_docs = n_events = 0
    for name, doc in _stored_documents(run, stored):
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
    if "primary" not in stored:
        raise ReplayError(f"run {uid} has no primary stream to analyse")
    primary = stored["primary"]
    columns = {} if primary is None else dict(primary.columns)
    results = PLANS[plan_name].analyse(columns, start.get("plan_args", {}))
    stored_results = {}
    if stored.get("analysis") is not None:
        stored_results = {k: float(v[-1]) for k, v in stored["analysis"].columns.items()}
    result = {"uid": start["uid"], **results}
    return ReplayResult(result=result, stored=stored_results, n_documents=n_docs, n_events=n_events, start=dict(start))
