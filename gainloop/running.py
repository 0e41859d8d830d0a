"""Running plans on a bench from a command: the bench opened and closed, every exit a safe one.

``open_bench(bench_file, seed=...)`` connects the bench of a bench file over EPICS (or
builds the in-process twin when there is none: ``gainloop.benches.bench_devices`` chooses)
and, however the block ends, makes it safe (shutter closed, fluence parked:
``devices.Bench.make_safe``) and releases it.

``run_plan(RE, plan, bench)`` runs one plan (a measurement, a campaign) and turns the
exits a command can see into a clean end:

* **Ctrl+C** (SIGINT): bluesky's own handler asks for a pause (the first press at the
  next checkpoint, more presses at once); the paused RunEngine is then *aborted*: the
  plan's cleanup runs (every measurement closes its shutter and parks its fluence before
  its stop document) and every open run gets its stop document (``exit_status`` "abort").
  Presses held down beyond bluesky's ten are counted, never raised.
* **SIGTERM** (``kill``, a service manager stopping the process): the same, at once.
* an exception in the plan or in a callback: the RunEngine runs the cleanup and closes
  the runs with ``exit_status`` "fail"; the exception goes on to the caller.

Whatever ended the plan, the bench is then made safe again directly on the devices (the
last line of defence behind the plan's cleanup; a shutter that cannot be closed is logged
as an error naming the watchdog that will close it). An interrupted plan raises
``PlanInterrupted`` (exit code 130 for Ctrl+C, 143 for SIGTERM) after its runs are closed.
For the exits nobody can see (SIGKILL, a crashed PC) the bench's IOC closes the shutter
itself when the heartbeat of ``open_bench``'s connection stops (``docs/pvs.md``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from core.errors import GainloopError

__all__ = ["PlanInterrupted", "make_bench_safe", "note_stop_signal", "open_bench", "run_plan", "signals_deferred"]

log = logging.getLogger("gainloop.bench")

#: Exit status of a command stopped by a signal (128 + its number).
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class PlanInterrupted(GainloopError):
    """Ctrl+C or SIGTERM stopped the plan; its open runs were closed (``exit_status`` "abort")."""

    def __init__(self, message: str, *, signal_name: str = "SIGINT", uids: tuple[str, ...] = ()):
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = EXIT_CODES.get(signal_name, 130)
        self.uids = uids


def make_bench_safe(bench) -> bool:
    """Close the shutter and park the fluence now; log an error if that failed. True if it is safe."""
    report = bench.make_safe()
    if report.ok:
        return True
    heartbeat = getattr(bench, "heartbeat", None)
    if not report.shutter_closed:
        if heartbeat is not None:
            then = (
                f"the bench's watchdog ({heartbeat.pvname}) closes it {heartbeat.timeout_s:g} s after this "
                "process stops its heartbeat"
            )
        else:
            then = "close it by hand (this bench file names no watchdog PV)"
        log.error("the pump shutter of bench %r may be OPEN: %s; %s", bench.config.bench.name, report.describe(), then)
    else:
        log.warning("bench %r: shutter closed, but %s", bench.config.bench.name, report.describe())
    return report.shutter_closed


@contextlib.contextmanager
def open_bench(
    bench_file: str | Path | None = None, *, twin: bool = False, seed: int | None = None, presets=None
) -> Iterator[object]:
    """The ``devices.Bench`` that ``gainloop.benches.bench_devices`` opens for these arguments (``bench_file``
    over EPICS; with ``twin`` or without a bench file, the in-process twin with noise seed ``seed`` on
    ``presets``), made safe and released when the block ends."""
    from gainloop.benches import bench_devices

    bench = bench_devices(bench_file, twin=twin, seed=seed, presets=presets)
    try:
        yield bench
    finally:
        make_bench_safe(bench)
        bench.destroy()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (main thread) while the block runs; they arrive when it ends.

    For steps that must not be cut in half by an exception from a signal handler: creating the
    embedded catalog (its database is initialised by a child process, which inherits the mask)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


#: Signals a command noted before its plan ran (``note_stop_signal``): ``run_plan`` does not start then.
_stop_signals: list[str] = []


def note_stop_signal(name: str) -> None:
    """Note that Ctrl+C or SIGTERM (``name``) reached a command before its plan ran.

    A signal handler's exception can be lost (Python ignores one raised while a finaliser
    runs), so the command's handler notes the signal here too: ``run_plan`` then refuses to
    start the plan (``PlanInterrupted``) rather than run it to its end."""
    _stop_signals.append(name)


class _Signals:
    """SIGINT and SIGTERM while a plan runs (main thread only): SIGTERM pauses the RunEngine at once;
    SIGINT beyond bluesky's own handling (more than ten presses) is only counted."""

    def __init__(self, RE) -> None:
        self.RE = RE
        self.seen: list[str] = []
        self.main = threading.current_thread() is threading.main_thread()
        self.saved: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        self.seen.extend(_stop_signals)  # noted by the command before the plan (``note_stop_signal``)
        if self.main:
            for signum, handler in ((signal.SIGINT, self._on_sigint), (signal.SIGTERM, self._on_sigterm)):
                self.saved[signum] = signal.getsignal(signum)
                signal.signal(signum, handler)
        return self

    def _on_sigint(self, signum, frame) -> None:
        # bluesky's own handler takes Ctrl+C while the plan runs and passes it here only after more
        # than ten presses; one that lands here while the RunEngine starts or stops pauses it too
        self.seen.append("SIGINT")
        threading.Thread(target=self._pause_now, daemon=True).start()

    def _on_sigterm(self, signum, frame) -> None:
        self.seen.append("SIGTERM")
        threading.Thread(target=self._pause_now, daemon=True).start()

    def _pause_now(self) -> None:
        """Pause the RunEngine at once (from a thread: bluesky refuses it on the main thread mid-run);
        retried while the RunEngine is still starting the plan."""
        from bluesky.utils import TransitionError

        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            state = self.RE.state
            if state == "running":
                with contextlib.suppress(TransitionError, RuntimeError):
                    self.RE.request_pause(defer=False)
                    return
            elif state != "idle":
                return  # pausing, paused, aborting: already stopping
            time.sleep(0.01)

    @property
    def terminated(self) -> bool:
        return "SIGTERM" in self.seen

    def restore(self, *, ignore: bool) -> None:
        """Put the previous handlers back, or (``ignore``: the caller exits now) ignore both signals."""
        if self.main:
            for signum, handler in self.saved.items():
                signal.signal(signum, signal.SIG_IGN if ignore else handler)
            self.saved.clear()

    def __exit__(self, *exc) -> None:
        self.restore(ignore=False)  # (``run_plan`` has restored them already, or ignores them)


def run_plan(RE, plan, bench, *, what: str = "the plan", exit_on_interrupt: bool = False):
    """Run ``plan`` on ``bench`` with ``RE``; abort it cleanly on Ctrl+C or SIGTERM (see the module doc).

    Returns the RunEngine's result. Raises ``PlanInterrupted`` once an interrupted plan's runs
    are closed and the bench made safe; any other error of the plan or a callback goes on to
    the caller after the same. ``exit_on_interrupt``: the caller is a command that ends with the
    plan; from the plan's end on, Ctrl+C and SIGTERM are ignored, so that no traceback of closing
    the catalog or of the interpreter's shutdown follows the command's last line (and a catalog
    is never left half-closed by a key held down).
    """
    from bluesky.utils import RunEngineInterrupted

    with _Signals(RE) as signals:
        try:
            if signals.seen:  # Ctrl+C or SIGTERM before the plan began: nothing runs
                name = "SIGTERM" if signals.terminated else "SIGINT"
                raise PlanInterrupted(f"{what} was not started: {name} arrived first", signal_name=name)
            try:
                result = RE(plan)
                if not signals.seen:
                    return result
                # a signal that landed before bluesky's handler was in place and could not pause the
                # plan: it ran to its end, whole (its runs are complete); the command stops here
                name = "SIGTERM" if signals.terminated else "SIGINT"
                raise PlanInterrupted(
                    f"{what} ended before the {name} could stop it: its runs are complete", signal_name=name
                )
            except RunEngineInterrupted:
                name = "SIGTERM" if signals.terminated else "SIGINT"
                why = "terminated (SIGTERM)" if name == "SIGTERM" else "interrupted (Ctrl+C)"
                uids: tuple[str, ...] = ()
                if not RE.state.is_idle:
                    result = RE.abort(reason=why)
                    uids = tuple(getattr(result, "run_start_uids", ()) or ())
                raise PlanInterrupted(
                    f"{what} {why}: its open runs were closed with exit_status 'abort'", signal_name=name, uids=uids
                ) from None
        finally:
            make_bench_safe(bench)
            signals.restore(ignore=exit_on_interrupt)
