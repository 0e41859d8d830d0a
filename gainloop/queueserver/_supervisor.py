"""``gainloop qserver start`` stays in front of the RE Manager, so that Ctrl+C and SIGTERM stop it safely.

bluesky-queueserver's own answer to SIGINT or SIGTERM is to SIGKILL its worker: a plan
running on the bench would end without its cleanup (shutter open, run without its stop
document) until the bench's watchdog closes the shutter. So the command does not hand
itself over to ``start-re-manager``; it starts it as a child and, on the first Ctrl+C or
SIGTERM, stops it in order through its own 0MQ API:

1. a running plan is paused at once (``re_pause immediate``) and aborted (``re_abort``: the
   plan's cleanup closes the shutter, each open run gets its stop document, ``exit_status``
   "abort"; the worker's RunEngine makes the bench safe again once it is idle);
2. the queue is stopped and the environment closed (the worker leaves the bench);
3. the manager is asked to stop; SIGTERM, then SIGKILL, if it does not within its time.

The child ignores SIGINT (a Ctrl+C at the terminal reaches the whole process group: only
this process acts on it) and is sent SIGTERM by the kernel if this process dies (Linux:
``PR_SET_PDEATHSIG``), so a killed ``gainloop qserver start`` does not leave a manager
behind. Exit status: the manager's own, or 130 (Ctrl+C) / 143 (SIGTERM) after an orderly stop.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable

__all__ = ["stop_manager", "supervise_manager"]

log = logging.getLogger("gainloop.qserver")

#: Wall seconds each step of the orderly stop may take before the next one is tried.
STEP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the child, before ``exec``: ignore SIGINT; SIGTERM when the parent dies (Linux)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: a killed supervisor leaves the manager running
        pass


def stop_manager(
    control_addr: str,
    *,
    step_timeout_s: float = STEP_TIMEOUT_S,
    say: Callable[[str], None],
    server_private_key: str | None = None,
) -> bool:
    """Abort a running plan, stop the queue, close the environment and stop the manager at ``control_addr``.

    Returns True if the manager answered every step. ``say`` gets one line per step taken.
    ``server_private_key``: the manager's 0MQ key (``QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER``), if
    its socket is encrypted.
    """
    from bluesky_queueserver import generate_zmq_public_key
    from bluesky_queueserver_api.zmq import REManagerAPI

    public = generate_zmq_public_key(server_private_key) if server_private_key else None
    api = REManagerAPI(
        zmq_control_addr=control_addr, timeout_recv=step_timeout_s, timeout_send=step_timeout_s, zmq_public_key=public
    )
    try:
        status = api.status()
        state = status.get("manager_state")
        if state in ("executing_queue", "executing_task", "paused"):
            if state != "paused":
                say("pausing the running plan")
                api.re_pause("immediate")
                api.wait_for_idle_or_paused(timeout=step_timeout_s)
            if api.status().get("manager_state") == "paused":
                say("aborting it: its cleanup closes the shutter, its runs get their stop documents")
                api.re_abort()
                api.wait_for_idle(timeout=step_timeout_s)
        if api.status().get("queue_stop_pending"):
            api.queue_stop_cancel()
        if api.status().get("worker_environment_exists"):
            say("closing the worker environment")
            api.environment_close()
            api.wait_for_idle(timeout=step_timeout_s)
        api.send_request(method="manager_stop", params={"option": "safe_on"})
        return True
    except Exception as exc:  # the manager does not answer: the caller falls back to signals
        say(f"the manager did not complete an orderly stop ({type(exc).__name__}: {exc})")
        return False
    finally:
        api.close()


def supervise_manager(argv: list[str], env: dict[str, str], control_addr: str, *, say: Callable[[str], None]) -> int:
    """Run the manager (``argv``) as a child until it exits; on Ctrl+C or SIGTERM stop it in order.

    Returns the exit status for the command.
    """
    proc = subprocess.Popen(argv, env=env, preexec_fn=_child_setup)
    received: list[str] = []
    wake = threading.Event()

    def on_signal(signum, frame) -> None:
        received.append(signal.Signals(signum).name)
        wake.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while proc.poll() is None and not received:
            wake.wait(0.2)
        if not received:
            return int(proc.returncode)
        name = received[0]
        say(f"{name}: stopping the RE Manager in order")
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # held down or repeated: the stop below is under way
        orderly = stop_manager(control_addr, say=say, server_private_key=env.get("QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER"))
        deadline = time.monotonic() + (STEP_TIMEOUT_S if orderly else 5.0)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            say("the manager is still running: SIGTERM")
            proc.terminate()
            try:
                proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                say("the manager is still running: SIGKILL (the bench's watchdog closes the shutter)")
                proc.kill()
                proc.wait()
        return 143 if name == "SIGTERM" else 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not received:  # (after a stop the command exits: Ctrl+C held down stays ignored until then)
            for s, handler in previous.items():
                signal.signal(s, handler)
