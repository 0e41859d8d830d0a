"""Bluesky documents in tests: a RunEngine's documents as emitted, one stream's events and columns.

``collect(RE)`` subscribes for the rest of the test; ``run_and_collect(RE, plan)`` runs one plan and
returns its documents only. ``events(docs)`` and ``one(docs, name)`` pick documents out of either;
``by_run(docs)`` groups documents of several runs by their run's uid.
"""

from __future__ import annotations

import numpy as np


def collect(RE) -> list[tuple[str, dict]]:
    """A list that receives every (name, document) the RunEngine emits from now on."""
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def run_and_collect(RE, plan) -> list[tuple[str, dict]]:
    """Run ``plan`` on ``RE`` and return every (name, document) of that run, in emission order."""
    docs: list[tuple[str, dict]] = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def events(docs) -> list[dict]:
    """Every event document, of all streams, in emission order."""
    return [d for n, d in docs if n == "event"]


def one(docs, name: str) -> dict:
    """The only document named ``name`` (e.g. ``"descriptor"`` of a one-stream run); fails if not exactly one."""
    found = [d for n, d in docs if n == name]
    assert len(found) == 1, f"expected one {name}, got {len(found)}"
    return found[0]


def stream_events(docs, name: str) -> list[dict]:
    """Events of one stream, in emission order."""
    uids = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == name}
    return [d for n, d in docs if n == "event" and d["descriptor"] in uids]


def event_columns(events) -> dict[str, np.ndarray]:
    """The stream's columns rebuilt from its event documents (what a replay has)."""
    return {key: np.asarray([ev["data"][key] for ev in events]) for key in events[0]["data"]}


def by_run(docs: list[tuple[str, dict]]) -> dict[str, list[tuple[str, dict]]]:
    """Documents of one or more runs grouped by run uid, each run's in their order."""
    runs: dict[str, list[tuple[str, dict]]] = {}
    run_of_descriptor: dict[str, str] = {}
    for name, doc in docs:
        if name == "start":
            run = doc["uid"]
        elif name == "descriptor":
            run = run_of_descriptor[doc["uid"]] = doc["run_start"]
        elif name == "stop":
            run = doc["run_start"]
        else:
            run = run_of_descriptor[doc["descriptor"]]
        runs.setdefault(run, []).append((name, doc))
    return runs
