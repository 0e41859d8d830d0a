"""Queue items whose outcome the queueserver lost, checked against the catalog's stop documents.

When the RE Manager dies with its worker in the middle of a plan (killed, machine
restarted), the next manager finds the item still marked as running in Redis and moves
it to the history with ``exit_status == "unknown"`` and no run uids; bluesky-queueserver
0.0.25 assumes such an item succeeded and starts the next one. gainloop does not: an
item of unknown outcome counts as a success only once its runs are found in the catalog
(every run the profile opens carries the item's uid, ``ITEM_UID_KEY``, in its start
document) and every one of them has a stop document saying ``success``.

``read_queue_state(redis_addr, prefix)`` reads the queue, the running item and the history
straight from Redis (no manager needed); ``reconcile(history, catalog)`` gives one
``ItemOutcome`` per history item:

* ``success``: completed by the queueserver's own report, or unknown and all its runs stopped
  with ``success``;
* ``failed``: failed/aborted/halted by the queueserver's report, or unknown and a run stopped
  with another exit status;
* ``interrupted``: unknown, and a run has no stop document (it was cut off); a campaign can
  be continued with ``gainloop campaign resume CAMPAIGN_UID``;
* ``unknown``: unknown, and no run of the item is in the catalog (it may not have started,
  or its documents never arrived): run it again if it is needed;
* ``stopped``: stopped by a user (the queueserver's "stopped"); not counted as a success.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from gainloop.queueserver._profile import ITEM_UID_KEY, QueueServerError

__all__ = ["OUTCOMES", "ItemOutcome", "QueueState", "read_queue_state", "reconcile", "runs_of_item"]

OUTCOMES = ("success", "failed", "interrupted", "unknown", "stopped")
_FAILED = ("failed", "aborted", "halted")


@dataclass(frozen=True)
class ItemOutcome:
    """What became of one history item (``outcome`` one of ``OUTCOMES``)."""

    item_uid: str
    name: str
    queue_exit_status: str
    outcome: str
    run_uids: tuple[str, ...] = ()
    open_run_uids: tuple[str, ...] = ()  # runs with no stop document
    campaign_uids: tuple[str, ...] = ()
    detail: str = ""

    @property
    def counted_as_success(self) -> bool:
        return self.outcome == "success"

    def as_dict(self) -> dict:
        return {**asdict(self), "counted_as_success": self.counted_as_success}


@dataclass(frozen=True)
class QueueState:
    """The manager's state as kept in Redis: queued items, the running item ({} if none), the history."""

    queue: list[dict] = field(default_factory=list)
    running: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def _redis_client(redis_addr: str):
    import redis

    url = redis_addr if "://" in redis_addr else f"redis://{redis_addr}"
    try:
        return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True)
    except ValueError as exc:
        raise QueueServerError(
            f"bad Redis address {redis_addr!r}: {exc} (allowed: HOST:PORT or HOST:PORT/DB)"
        ) from None


def read_queue_state(redis_addr: str, prefix: str) -> QueueState:
    """The queue, running item and history the manager with this Redis name ``prefix`` keeps."""
    import redis

    client = _redis_client(redis_addr)
    base = f"{prefix}_" if prefix else ""
    try:
        queue = [json.loads(x) for x in client.lrange(f"{base}plan_queue", 0, -1)]
        running = client.get(f"{base}running_plan")
        history = [json.loads(x) for x in client.lrange(f"{base}plan_history", 0, -1)]
    except redis.RedisError as exc:
        raise QueueServerError(f"cannot read the queue from Redis at {redis_addr}: {exc}") from None
    finally:
        client.close()
    running = json.loads(running) if running else {}
    return QueueState(queue=queue, running=running if isinstance(running, dict) else {}, history=history)


def runs_of_item(catalog, item_uid: str) -> list[dict]:
    """Start and stop documents (``{"start": ..., "stop": ... or None}``) of the runs the item opened."""
    from tiled.queries import Key

    found = catalog.client.search(Key(f"start.{ITEM_UID_KEY}") == item_uid)
    runs = []
    for _, run in found.items():
        md = run.metadata
        runs.append({"start": dict(md.get("start") or {}), "stop": dict(md["stop"]) if md.get("stop") else None})
    runs.sort(key=lambda r: r["start"].get("time", 0.0))
    return runs


def _check_unknown(item: dict, catalog) -> ItemOutcome:
    uid, name = item.get("item_uid", ""), item.get("name", "")
    runs = runs_of_item(catalog, uid)
    run_uids = tuple(r["start"].get("uid", "") for r in runs)
    campaigns = tuple(dict.fromkeys(r["start"]["campaign_uid"] for r in runs if r["start"].get("campaign_uid")))
    open_runs = tuple(r["start"].get("uid", "") for r in runs if r["stop"] is None)
    common = {"item_uid": uid, "name": name, "queue_exit_status": "unknown", "run_uids": run_uids}
    if not runs:
        return ItemOutcome(
            **common,
            outcome="unknown",
            detail="no run of this item is in the catalog: it may not have started; submit it again if needed",
        )
    if open_runs:
        hint = "; continue with `gainloop campaign resume " + campaigns[0] + "`" if campaigns else ""
        return ItemOutcome(
            **common,
            outcome="interrupted",
            open_run_uids=open_runs,
            campaign_uids=campaigns,
            detail=f"{len(open_runs)} of its {len(runs)} runs have no stop document{hint}",
        )
    bad = [r for r in runs if r["stop"].get("exit_status") != "success"]
    if bad:
        statuses = sorted({str(r["stop"].get("exit_status")) for r in bad})
        return ItemOutcome(
            **common,
            outcome="failed",
            campaign_uids=campaigns,
            detail=f"{len(bad)} of its {len(runs)} runs stopped with {', '.join(statuses)}",
        )
    return ItemOutcome(
        **common,
        outcome="success",
        campaign_uids=campaigns,
        detail=f"all {len(runs)} runs stopped with success",
    )


def reconcile(history: list[dict], catalog) -> list[ItemOutcome]:
    """One ``ItemOutcome`` per history item; items of unknown outcome are checked in ``catalog``."""
    outcomes = []
    for item in history:
        result = item.get("result") or {}
        status = str(result.get("exit_status", "unknown"))
        uid, name = item.get("item_uid", ""), item.get("name", "")
        run_uids = tuple(result.get("run_uids") or ())
        if status == "unknown":
            outcomes.append(_check_unknown(item, catalog))
        elif status == "completed":
            outcomes.append(ItemOutcome(uid, name, status, "success", run_uids, detail="completed (worker report)"))
        elif status == "stopped":
            outcomes.append(ItemOutcome(uid, name, status, "stopped", run_uids, detail="stopped by a user"))
        else:
            outcome = "failed" if status in _FAILED else "unknown"
            outcomes.append(ItemOutcome(uid, name, status, outcome, run_uids, detail=str(result.get("msg", ""))[:200]))
    return outcomes
