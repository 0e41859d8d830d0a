"""Pause, resume and stop a campaign that runs in bluesky-queueserver, through the queueserver's own API.

Only where it is safe: the campaign's record run names the queue item that runs it
(``qserver_item_uid`` in its start document, ``gainloop.queueserver``), and the RE Manager at the
control address is running exactly that item now. A campaign run from a terminal (``gainloop
campaign run``), an ended one, or one the manager is not running has no controls (the page says
why). The watch server lets only requests carrying the catalog's API key act (``gainloop.watch.app``).

* pause: ``re_pause("deferred")``: the RunEngine pauses at its next checkpoint (the campaign has one
  before every trial, a fluence scan one per acquisition), no reading is cut short, and resume goes on
  from there;
* resume: ``re_resume()``;
* stop: ``re_stop()``, once paused: the campaign ends cleanly (its open runs get their stop
  documents); ``gainloop campaign resume`` continues it later.
"""

from __future__ import annotations

import threading

from core.errors import GainloopError

__all__ = ["ACTIONS", "ControlError", "QueueControl"]

ACTIONS = ("pause", "resume", "stop")


class ControlError(GainloopError):
    """A control action refused (the message says why)."""


class QueueControl:
    """A client of the RE Manager at ``control_addr`` (``tcp://HOST:PORT``), used from several threads."""

    def __init__(self, control_addr: str, *, keyed: bool) -> None:
        self.control_addr = control_addr
        self.keyed = keyed  # the watch server requires the API key (no control without it)
        self._api = None
        self._lock = threading.Lock()
        self.last_status: dict | None = None
        self.last_error = ""

    def _client(self):
        if self._api is None:
            from bluesky_queueserver_api.zmq import REManagerAPI

            self._api = REManagerAPI(zmq_control_addr=self.control_addr, timeout_recv=2.0)
        return self._api

    def poll(self) -> dict | None:
        """The manager's status now (None if it does not answer: ``last_error`` says why)."""
        with self._lock:
            try:
                status = dict(self._client().status(reload=True))
            except Exception as exc:  # a manager away, a timeout
                self.last_status, self.last_error = None, f"{type(exc).__name__}: {exc}"
                return None
            self.last_status, self.last_error = status, ""
            return status

    def state(self, view: dict) -> dict:
        """What the page may offer for the campaign of ``view``: ``available``, ``why`` (when not), the
        manager's state and the actions allowed now."""
        st = view.get("state") or {}
        out = {"available": False, "why": "", "manager_state": None, "actions": [], "address": self.control_addr}
        if view.get("loading"):
            out["why"] = "The campaign is still being read from the catalog."
            return out
        if not st.get("running"):
            out["why"] = "This campaign has ended: nothing to control."
            return out
        if st.get("runs_in") != "queueserver":
            out["why"] = "This campaign runs in a terminal (gainloop campaign run): no controls here; Ctrl+C there."
            return out
        if not self.keyed:
            out["why"] = "Controls need the catalog's API key (a Tiled server); this watch has none."
            return out
        status = self.last_status
        if status is None:
            why = self.last_error or "not asked yet"
            out["why"] = f"The queueserver at {self.control_addr} does not answer ({why})."
            return out
        out["manager_state"] = status.get("manager_state")
        if status.get("running_item_uid") != st.get("qserver_item_uid"):
            out["why"] = f"The queueserver at {self.control_addr} is not running this campaign's queue item."
            return out
        out["available"] = True
        manager = status.get("manager_state")
        if manager == "paused":
            out["actions"] = ["resume", "stop"]
        elif manager == "executing_queue" and not status.get("pause_pending"):
            out["actions"] = ["pause"]
        return out

    def act(self, action: str, view: dict) -> dict:
        """Do ``action`` (one of ``ACTIONS``) if the state allows it now; ``ControlError`` saying why not."""
        if action not in ACTIONS:
            raise ControlError(f"unknown action {action!r}; allowed: {', '.join(ACTIONS)}")
        self.poll()
        state = self.state(view)
        if not state["available"]:
            raise ControlError(state["why"])
        if action not in state["actions"]:
            raise ControlError(
                f"cannot {action} now: the manager is {state['manager_state']}"
                + ("" if action != "stop" else " (pause the campaign first)")
            )
        with self._lock:
            api = self._client()
            try:
                if action == "pause":
                    result = api.re_pause(option="deferred")
                elif action == "resume":
                    result = api.re_resume()
                else:
                    result = api.re_stop()
            except Exception as exc:  # the manager refused or did not answer
                raise ControlError(f"the queueserver refused {action}: {exc}") from None
        return {"action": action, "success": bool(dict(result).get("success", True))}

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()
                self._api = None
