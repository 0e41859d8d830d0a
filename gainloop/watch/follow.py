"""Following a campaign in the catalog: a thread that re-reads it when it changes, and the page's waiters.

``Follower(catalog, campaign_uid)`` keeps the latest ``campaign_view`` (``snapshot()``) with a
version number that grows with every change, and the posterior map (``posterior()``), redrawn
whenever the measured trials or the next proposal change, in a process of its own at a lower
priority (the GP fit takes seconds of CPU: the page's reads and answers do not wait for it).

When to re-read:

* the catalog's own subscription (Tiled's websocket stream of the root container): a run created
  (a trial starts) or a run's metadata updated (its stop document) wakes the thread at once;
* a bounded poll besides: every ``poll_s`` (1 s) without a subscription (or once its stream
  ended), every ``SAFETY_POLL_S`` (5 s) with one. A poll costs one request (how many runs carry the
  campaign's uid) plus one per run still open (has it a stop document now?); only a change reads
  the campaign again.

After a change the campaign is read once more ``FOLLOW_UP_S`` later: the campaign records a trial's
outcome and its next proposal in its own run right after the trial's stop document. A read the
catalog's events ask for starts at once, beside any in progress (up to ``MAX_READS``: a stop
document arriving mid-read does not wait for that read); a later read's view is never replaced by
an earlier one's. Every read is ``gainloop.records.read_campaign``, the one reader of a campaign.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import statistics
import threading
import time

from gainloop.watch.view import campaign_view, posterior_inputs, posterior_png

__all__ = ["Follower"]

logger = logging.getLogger(__name__)

#: Seconds between polls when the catalog's subscription is on (a safety net: events can be missed).
SAFETY_POLL_S = 5.0
#: Seconds after a change when the campaign is read once more (its outcome and next proposal follow).
FOLLOW_UP_S = (0.4, 1.5)
#: Reads of the campaign at most in progress at once.
MAX_READS = 3
#: Seconds between asking the queueserver for its state while it runs the campaign (pause / resume show).
CONTROL_POLL_S = 0.5


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _shown(view: dict) -> dict:
    """What of a view the page shows (not when it was read, nor its version)."""
    return {k: v for k, v in view.items() if k not in ("read_at", "version")}


def _exit_with_parent(parent_pid: int, period_s: float = 1.0) -> None:
    """End this process within ``period_s`` of its parent's end (however the parent ended: stopped,
    killed): the posterior's process is the watch's, and must not outlive it."""
    import os
    import time

    while os.getppid() == parent_pid:
        time.sleep(period_s)
    os._exit(0)


def _posterior_worker(parent_pid: int) -> None:
    """The posterior's process: below the server in priority, one math thread, gone with its parent."""
    import os

    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="exit-with-watch", daemon=True).start()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        os.nice(10)
    except OSError:
        pass
    # the GP's libraries are imported here, when the follower starts, not on the first trial's
    # posterior (seconds of CPU that would otherwise compete with the reads of the first trials)
    from gainloop.report import figures  # noqa: F401
    from optimizer import make_optimizer  # noqa: F401


def _ready() -> bool:
    return True


class Follower:
    """The latest view of one campaign, kept up to date on a thread (see the module doc)."""

    def __init__(self, catalog, campaign_uid: str, *, poll_s: float = 1.0, subscribe: bool = True, control=None):
        self.catalog = catalog
        self.campaign_uid = campaign_uid
        self.poll_s = float(poll_s)
        self.control = control  # a QueueControl, or None
        self.version = 0
        self.view: dict | None = None
        self.error = ""
        self.subscribed = False
        self._want_subscription = subscribe
        self._subscription = None
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future] = set()
        self._scan_cache: dict = {}
        self._fingerprint = None
        self._open_runs: list[str] = []
        self.read_s: list[float] = []  # wall seconds of the last reads (catalog requests and the view)
        self.first_published: dict[int, float] = {}  # trial index -> when a view first had it finished (epoch s)
        self._read_pool = concurrent.futures.ThreadPoolExecutor(max_workers=MAX_READS, thread_name_prefix="watch-read")
        self._seq = 0
        self._published = 0
        self._inflight = 0
        self._again = False
        self._wanted = False
        self._read_changed = False
        self._thread: threading.Thread | None = None
        self._post_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="watch-posterior")
        self._post_process: concurrent.futures.ProcessPoolExecutor | None = None
        self._post_key = None
        self._post: dict = {"png": None, "caption": "The posterior map is being computed.", "n": 0, "version": 0}
        self.stored = None
        self.refreshes = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Follow the campaign on a thread (its first read included: the page says it is loading until
        then); ``loop``: the server's event loop, whose waiters are woken on each change."""
        self._loop = loop
        self._start_posterior_process()
        self._thread = threading.Thread(target=self._run, name="watch-follower", daemon=True)
        self._thread.start()

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The server's event loop: its waiters (``changed_after``) are woken on each change."""
        self._loop = loop

    def close(self) -> None:
        self._stop.set()
        self._poke.set()
        if self._subscription is not None:
            try:
                self._subscription.disconnect(wait=False)
            except Exception:  # the stream may already be gone with its server
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._post_pool.shutdown(wait=False, cancel_futures=True)
        self._read_pool.shutdown(wait=False, cancel_futures=True)
        if self._post_process is not None:
            self._post_process.shutdown(wait=False, cancel_futures=True)

    def _subscribe(self) -> None:
        try:
            sub = self.catalog.client.subscribe()
            sub.child_created.add_callback(self._on_event)
            sub.child_metadata_updated.add_callback(self._on_event)
            sub.stream_closed.add_callback(self._on_lost)
            sub.disconnected.add_callback(self._on_lost)
            sub.start_in_thread()
        except Exception as exc:  # a server without streaming: the poll alone follows the campaign
            logger.info("no subscription to the catalog (%s): polling every %g s", type(exc).__name__, self.poll_s)
            return
        self._subscription = sub
        self.subscribed = True

    def _on_lost(self, subscription) -> None:
        """The stream ended: from now on the poll alone follows the campaign (every ``poll_s``)."""
        self.subscribed = False
        self.poke()

    def _on_event(self, update) -> None:
        with self._lock:
            self._wanted = True
        self._poke.set()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        if self._want_subscription:
            self._subscribe()
        self._read(self._next_seq())
        follow_ups: list[float] = []
        while not self._stop.is_set():
            now = time.monotonic()
            period = SAFETY_POLL_S if self.subscribed else self.poll_s
            if self._control_active():
                period = min(period, CONTROL_POLL_S)
            wait = min([period, *(t - now for t in follow_ups)])
            self._poke.wait(timeout=max(wait, 0.0))
            if self._stop.is_set():
                return
            self._poke.clear()
            now = time.monotonic()
            with self._lock:
                wanted, self._wanted = self._wanted, False
                changed, self._read_changed = self._read_changed, False
                reading = self._inflight > 0
            if changed:
                follow_ups = [now + dt for dt in FOLLOW_UP_S]
            due = [t for t in follow_ups if t <= now]
            follow_ups = [t for t in follow_ups if t > now]
            self._poll_control()
            if not (wanted or due) and not reading:
                try:
                    wanted = self._changed()
                except Exception as exc:  # the server away for a moment: said on the page, tried again
                    self._set_error(f"cannot reach the catalog: {type(exc).__name__}: {_first_line(exc)}")
            if wanted:
                self._start_read(MAX_READS)
            elif due and not reading:  # a follow-up never queues behind a read: an event's read goes first
                self._start_read(1)

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _start_read(self, limit: int = MAX_READS) -> None:
        """A read now, beside those in progress (a stop document arriving mid-read is not kept waiting for
        it); with ``limit`` in progress, one more once one ends."""
        with self._lock:
            if self._inflight >= limit:
                self._again = True
                return
            self._inflight += 1
        self._read_pool.submit(self._read_job, self._next_seq())

    def _read_job(self, seq: int) -> None:
        try:
            self._read(seq)
        finally:
            with self._lock:
                self._inflight -= 1
                again, self._again = self._again, False
            if again and not self._stop.is_set():
                self._start_read()

    def _read(self, seq: int) -> None:
        try:
            changed = self._refresh(seq)
        except Exception as exc:  # the server away for a moment: said on the page, tried again
            self._set_error(f"cannot read the campaign: {type(exc).__name__}: {_first_line(exc)}")
            return
        if changed:
            with self._lock:
                self._read_changed = True
            self._poke.set()

    def _control_active(self) -> bool:
        """Whether the manager's state matters: a campaign running in the queueserver, controls configured."""
        st = (self.view or {}).get("state") or {}
        return self.control is not None and st.get("runs_in") == "queueserver" and bool(st.get("running"))

    def _poll_control(self) -> None:
        """The manager's state (running, paused) is on the page: a change of it is a new version."""
        if not self._control_active():
            return
        before = self.control.last_status
        now = self.control.poll()
        keys = ("manager_state", "running_item_uid", "pause_pending", "re_state")

        def pick(status):
            return None if status is None else tuple(status.get(k) for k in keys)

        if pick(before) != pick(now):
            with self._lock:
                self.version += 1
            self._wake()

    def poke(self) -> None:
        """Look again now (e.g. after a control action)."""
        with self._lock:
            self._wanted = True
        self._poke.set()

    def _changed(self) -> bool:
        """Whether the campaign's runs changed since the last read: a new run, or an open run now stopped."""
        from tiled.queries import Key

        n = len(self.catalog.client.search(Key("start.campaign_uid") == self.campaign_uid))
        stopped = []
        for uid in list(self._open_runs):
            state = self.catalog.stored_state(uid)
            if state.state == "complete":
                stopped.append(uid)
        return n != self._fingerprint or bool(stopped)

    def _set_error(self, text: str) -> None:
        with self._lock:
            if self.error == text:
                return
            self.error = text
            self.version += 1
        self._wake()

    def _refresh(self, seq: int) -> bool:
        """Read the campaign (read ``seq``); publish a new version if what the page shows changed and no later
        read has published already. True if it did."""
        from gainloop.records import read_campaign

        started = time.time()
        stored = read_campaign(self.catalog, self.campaign_uid)
        if stored is None:
            raise LookupError(f"no campaign {self.campaign_uid} in the catalog")
        runs = (*stored.record_runs, *stored.trial_runs)  # every run that carries the campaign's uid
        fingerprint = len(runs)
        open_runs = [r.start["uid"] for r in runs if r.metadata.get("stop") is None]
        # the trials first; a new fluence scan's data are read once that view is out (one more version)
        view = campaign_view(stored, scan_cache=self._scan_cache, read_scan=False)
        changed = self._publish(seq, stored, view, fingerprint, open_runs, started)
        if changed is None:
            return False  # a later read has published already
        full = campaign_view(stored, scan_cache=self._scan_cache)
        if full["scan"] != view["scan"]:
            changed = bool(self._publish(seq, stored, full, fingerprint, open_runs, None)) or changed
        return changed

    def _publish(self, seq: int, stored, view: dict, fingerprint: int, open_runs: list, started: float | None):
        """Make ``view`` (of read ``seq``) the page's, if it changed and no later read has published: True if
        it did, False if unchanged, None if a later read has published already."""
        now = time.time()
        with self._lock:
            if started is not None:  # the read's first view (a second one only adds the new scan)
                self.refreshes += 1
                self.read_s.append(now - started)
                del self.read_s[:-20]
            if seq < self._published:
                return None
            self._published = seq
            self._fingerprint, self._open_runs = fingerprint, open_runs
            self.stored = stored
            old = self.view
            same = old is not None and _shown(old) == _shown(view)
            changed = not same or bool(self.error)
            self.error = ""
            if changed:
                self.version += 1
                view["version"] = self.version
                self.view = view
                for t in view["trials"]:
                    if t["status"] != "measuring":
                        self.first_published.setdefault(t["trial_index"], now)
            elif old is not None:
                old["read_at"] = view["read_at"]
        if changed:
            self._schedule_posterior(stored, view)
            self._wake()
        return changed

    def _schedule_posterior(self, stored, view: dict) -> None:
        done = tuple(t["trial_index"] for t in view["trials"] if t["threshold_uJ_cm2"] is not None)
        nxt = view["next"]
        key = (done, None if nxt is None else nxt["trial_index"])
        if key == self._post_key:
            return
        self._post_key = key
        self._post_pool.submit(self._draw_posterior, stored, nxt, key)

    def _start_posterior_process(self) -> None:
        """The posterior's process, spawned (and its libraries imported) once, before it is needed."""
        if self._post_process is None:
            import multiprocessing

            self._post_process = concurrent.futures.ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_posterior_worker,
                initargs=(os.getpid(),),
            )
            self._post_process.submit(_ready)

    def _draw_posterior(self, stored, nxt, key) -> None:
        """Fit and draw the posterior in a process of its own, at a lower priority: the GP fit takes seconds
        of CPU, and neither the page's reads nor its answers wait for it (no shared interpreter lock)."""
        if key != self._post_key:
            return  # a newer one is queued
        try:
            self._start_posterior_process()
            png, caption, n = self._post_process.submit(posterior_png, posterior_inputs(stored, nxt)).result()
        except Exception as exc:  # a fit that fails is said, not fatal
            png, caption, n = None, f"The posterior could not be computed: {type(exc).__name__}: {exc}", 0
        with self._lock:
            self._post = {
                "png": png,
                "caption": caption,
                "n": n,
                "next": None if nxt is None else nxt["trial_index"],
                "version": self._post["version"] + 1,
            }
            self.version += 1
            if self.view is not None:
                self.view = {**self.view, "version": self.version}
        self._wake()

    # ------------------------------------------------------------------ for the server
    def snapshot(self) -> dict:
        """What the page shows now: the view, its version, the posterior's caption and version, any error."""
        with self._lock:
            view = dict(self.view or {"loading": True, "campaign_uid": self.campaign_uid})
            post = self._post
            view["version"] = self.version
            view["error"] = self.error
            view["posterior"] = {
                "version": post["version"],
                "available": post["png"] is not None,
                "caption": post["caption"],
                "n_thresholds": post["n"],
                "next": post.get("next"),
            }
            poll_s = SAFETY_POLL_S if self.subscribed else self.poll_s
            view["follow"] = {
                "subscribed": self.subscribed,
                "poll_s": poll_s,
                "reads": self.refreshes,
                "last_read_s": self.read_s[-1] if self.read_s else None,
                "median_read_s": statistics.median(self.read_s) if self.read_s else None,
                "first_published": {str(k): v for k, v in self.first_published.items()},
            }
        if self.control is not None:
            view["control"] = self.control.state(view)
        return view

    def posterior(self) -> tuple[int, bytes | None]:
        with self._lock:
            return self._post["version"], self._post["png"]

    def _wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._wake_waiters)

    def _wake_waiters(self) -> None:
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def changed_after(self, version: int, timeout_s: float) -> None:
        """Return once the version is above ``version``, or after ``timeout_s`` seconds."""
        if self.version > version:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        if self.version > version:  # changed in between
            self._waiters.discard(fut)
            return
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)
