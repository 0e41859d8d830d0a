"""Bluesky documents in tests: a RunEngine's documents as emitted, one stream's events and columns."""

from __future__ import annotations

import numpy as np


def collect(RE) -> list[tuple[str, dict]]:
    """A list that receives every (name, document) the RunEngine emits from now on."""
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return docs


def stream_events(docs, name: str) -> list[dict]:
    """Events of one stream, in emission order."""
    uids = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == name}
    return [d for n, d in docs if n == "event" and d["descriptor"] in uids]


def event_columns(events) -> dict[str, np.ndarray]:
    """The stream's columns rebuilt from its event documents (what a replay has)."""
    return {key: np.asarray([ev["data"][key] for ev in events]) for key in events[0]["data"]}
