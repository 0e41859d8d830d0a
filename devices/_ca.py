"""Channel Access plumbing: control layer, put-with-completion that reports refusals, one-shot statuses.

Why not ``EpicsSignal.put(..., use_complete=True)``: through ophyd's caproto
control layer the completion callback is called without the server's status, and
caproto's threading client drops the ``ErrorResponse`` an IOC sends when it
refuses a put (e.g. the twin's interlock), so a refused setpoint would look like
success or hang. ``put_notify`` writes with notification itself and hands the
server's answer (success, refusal with the IOC's reason) to the caller; a small,
idempotent hook on caproto's circuit manager delivers error responses, and only
for writes started here. With the pyepics control layer the refusal is detected
by reading the setpoint back after completion.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Callable

import numpy as np
import ophyd
from ophyd.status import Status

from ._errors import BenchConnectionError, DeviceTimeoutError, PutRefusedError

__all__ = ["Completion", "ensure_control_layer", "put_notify"]


def ensure_control_layer() -> str:
    """Use pyepics if it is installed, otherwise ophyd's caproto control layer; returns its name."""
    want = "pyepics" if importlib.util.find_spec("epics") is not None else "caproto"
    if ophyd.cl.name != want:
        ophyd.set_cl(want)
    return ophyd.cl.name


class Completion:
    """An ophyd ``Status`` finished exactly once: by ``finish()``, ``fail(exc)`` or its own timeout.

    On timeout the status fails with ``DeviceTimeoutError(message())`` and ``on_timeout``
    (e.g. stop the motor) runs. Later calls are ignored, so racing callbacks are harmless.
    """

    def __init__(
        self,
        obj,
        timeout: float | None,
        message: Callable[[], str],
        on_timeout: Callable[[], None] | None = None,
    ):
        self.status = Status(obj)
        self._lock = threading.Lock()
        self._done = False
        self._message = message
        self._on_timeout = on_timeout
        self._timer = None
        if timeout is not None and math.isfinite(timeout):
            self._timer = threading.Timer(max(float(timeout), 0.0), self._expire)
            self._timer.daemon = True
            self._timer.start()

    @property
    def done(self) -> bool:
        return self._done

    def _claim(self) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = True
        if self._timer is not None:
            self._timer.cancel()
        return True

    def finish(self) -> None:
        if self._claim():
            self.status.set_finished()

    def fail(self, exc: BaseException) -> None:
        if self._claim():
            self.status.set_exception(exc)

    def _expire(self) -> None:
        try:
            msg = self._message()
        except Exception as exc:  # the message must never hide the timeout
            msg = f"operation timed out ({exc!r} while describing it)"
        if self._claim():
            self.status.set_exception(DeviceTimeoutError(msg))
            if self._on_timeout is not None:
                self._on_timeout()


# --------------------------------------------------------------------------- caproto error delivery
_hook_lock = threading.Lock()
_hook_installed = False


class _Reply:
    """Callback of a write started by ``put_notify`` (the hook recognises it by type)."""

    __slots__ = ("handler",)

    def __init__(self, handler: Callable[[object], None]):
        self.handler = handler

    def __call__(self, response) -> None:
        self.handler(response)


def _install_error_delivery() -> None:
    """Deliver a server's ErrorResponse to the waiting ``_Reply`` (caproto ignores it otherwise)."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        import caproto as ca
        from caproto.threading.client import VirtualCircuitManager

        original = VirtualCircuitManager._process_command

        def _process_command(self, command):
            if isinstance(command, ca.ErrorResponse):
                request = command.original_request
                if request.command == ca.WriteNotifyRequest.ID:
                    info = self.ioids.get(request.parameter2)
                    callback = info.get("callback") if info else None
                    if isinstance(callback, _Reply):
                        self.ioids.pop(request.parameter2, None)
                        self.user_callback_executor.submit(callback, command)
            return original(self, command)

        VirtualCircuitManager._process_command = _process_command
        _hook_installed = True


def _ca_data(value, native_type):
    import caproto as ca

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str):
        if native_type in ca.char_types:
            return value.encode("latin-1") + b"\0"
        return (value.encode("latin-1"),)
    if np.ndim(value) == 0:
        return (value,)
    return value


def _server_message(response) -> str:
    import caproto as ca

    if isinstance(response, ca.ErrorResponse):
        # the payload is the original request's header, then the text (caproto's
        # ``error_message`` misses it on received messages)
        payload = b"".join(bytes(b) for b in response.buffers[1:])[16:]
        text = payload.rstrip(b"\0").decode("latin-1", "replace").strip()
        return text.removeprefix("Python exception:").strip() or response.status.description
    return f"{response.status.name} ({response.status.description})"


def _reason_from(pvname: str | None) -> str:
    """The bench's explanation of a refusal (``IL:Message``), or '' if it cannot be read."""
    if not pvname:
        return ""
    try:
        pv = ophyd.cl.get_pv(pvname)
        pv.wait_for_connection(timeout=1.0)
        value = pv.get(as_string=True, use_monitor=False, timeout=1.0)
    except Exception:
        return ""
    return str(value or "").strip()


def put_notify(
    signal,
    value,
    on_reply: Callable[[BaseException | None], None],
    *,
    timeout: float | None,
    connection_timeout: float,
    reason_pv: str | None = None,
) -> None:
    """Write ``value`` to ``signal``'s setpoint PV with completion; ``on_reply(None | PutRefusedError)``.

    A refusal's message carries the server's status or error text and, if
    ``reason_pv`` is given (the bench's ``IL:Message``), what it says. Raises
    ``BenchConnectionError`` at once if the PV is not connected within
    ``connection_timeout``. ``on_reply`` runs in a control-layer thread; if the
    server never answers it is not called (the caller's ``Completion`` times out).
    """
    pvname = signal.setpoint_pvname
    try:
        signal.wait_for_connection(timeout=connection_timeout)
    except TimeoutError:
        raise BenchConnectionError(
            f"{signal.name}: PV {pvname} is not connected (waited {connection_timeout:g} s); nothing was sent"
        ) from None

    def refused(detail: str) -> PutRefusedError:
        reason = _reason_from(reason_pv)
        text = f"{pvname} refused {value!r}: {detail}"
        if reason and reason not in detail:
            text += f"; {reason_pv}: {reason}"
        return PutRefusedError(text)

    pv = signal._write_pv
    cpv = getattr(pv, "_caproto_pv", None)
    if cpv is None:
        _put_verified(signal, pv, value, on_reply, timeout, refused)
        return
    _install_error_delivery()

    def handle(response) -> None:
        import caproto as ca

        try:
            if isinstance(response, ca.WriteNotifyResponse) and response.status.success:
                result = None
            else:
                result = refused(_server_message(response))
        except Exception as exc:  # never leave the caller waiting for its timeout
            result = exc
        on_reply(result)

    wait_s = None if timeout is None else float(timeout) + 1.0
    data = _ca_data(value, cpv.channel.native_data_type)
    cpv.write(data, wait=False, callback=_Reply(handle), notify=True, timeout=wait_s)


def _put_verified(signal, pv, value, on_reply, timeout, refused) -> None:
    """Other control layers (pyepics): put with completion, then compare the setpoint read back."""

    def check() -> None:
        try:
            got = pv.get(use_monitor=False, timeout=5.0)
            same = got == value if isinstance(value, str) else bool(np.allclose(got, value, rtol=1e-9, atol=0))
            on_reply(None if same else refused(f"the setpoint reads {got!r} after the put"))
        except Exception as exc:
            on_reply(exc)

    def done(*args, **kwargs) -> None:
        threading.Thread(target=check, daemon=True).start()

    pv.put(value, use_complete=True, callback=done, timeout=timeout)
