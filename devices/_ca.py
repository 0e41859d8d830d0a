"""Channel Access plumbing: control layer, put-with-completion that reports refusals, one-shot statuses.

Control layer. ``ensure_control_layer(requested)`` makes ophyd use the layer the bench
file asks for (``[bench].control_layer``): ``auto`` is what ophyd itself does (the layer
``$OPHYD_CONTROL_LAYER`` names, else pyepics if it is installed, else caproto). Signals
keep the layer they were made with (``signal.cl``), so devices of a previous layer keep
working until destroyed; destroy them before switching.

Why not ``EpicsSignal.put(..., use_complete=True)``: neither layer hands the server's
status of a put-with-completion to the callback. Through caproto's layer the completion
callback is called without it, and caproto's threading client drops the
``ErrorResponse`` an IOC sends when it refuses a put (e.g. the twin's interlock); pyepics
drops the status libca passes to its put callback. A refused setpoint would look like
success or hang. ``put_notify`` writes with notification itself and hands the server's
answer (success, refusal with the IOC's reason) to the caller:

* caproto: a small, idempotent hook on caproto's circuit manager delivers error
  responses, and only for writes started here;
* pyepics: libca's ``ca_array_put_callback`` with a callback of this module, which gets
  libca's status (``ECA_PUTFAIL`` for a refused put, whether the IOC answers with a failed
  ``WRITE_NOTIFY`` reply as rsrv does or with an error response). libca is called only in
  the channel's CA context (``_in_context``; a thread without one is attached to it, as
  pyepics's own ``PV`` methods do), and its callback, in a libca thread, only hands the
  status to a new thread of the layer's ``thread_class`` (``epics.ca.CAThread``, attached
  to the initial context), which builds the reply;
* any other layer: put with completion, then the setpoint read back and compared
  (``_same``: numbers, strings, char arrays, enums).

Search ports. caproto's clients make their UDP search socket with ``SO_REUSEADDR`` and
``SO_REUSEPORT`` and bind it to port 0. Linux hands such a socket an ephemeral port that another
live socket with the same options already has (``udp_lib_lport_inuse`` lets two reuse sockets
share it): two CA clients on one machine -- two gainloop commands, a bench and a caget -- then
share a search port, and the IOCs' replies to one of them are delivered to the other (the
same kind of report as epics-base/pvAccessCPP#128). The client whose replies go astray never
connects its PVs; the other sees datagrams of searches it never sent. ``exclusive_search_ports()``
(called whenever caproto is the layer) makes caproto's client sockets bound to port 0 drop both
options just before that bind, so the port they are given is theirs alone; a bind to a fixed
port (a repeater, a server) keeps them.

The IOC's reason is read from the bench's reason PV (``IL:Message``): its long-string form
``IL:Message.VAL$`` first (the whole text, where the PV is an EPICS string of at most 39
characters), else the PV itself (e.g. a char waveform holding the whole text).
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import socket
import threading
from collections.abc import Callable

import numpy as np
import ophyd
from ophyd.status import Status

from ._errors import BenchConnectionError, DeviceTimeoutError, LimitError, PutRefusedError

__all__ = ["Completion", "ensure_control_layer", "exclusive_search_ports", "put_notify", "resolve_control_layer"]

#: control layer -> (module to import, package to install)
_LAYER_PACKAGES = {"pyepics": ("epics", "pyepics"), "caproto": ("caproto", "caproto")}
#: the longest text an EPICS string (DBR_STRING) holds: 40 bytes with the terminator
_DBR_STRING_MAX = 39


def resolve_control_layer(requested: str = "auto") -> str:
    """The layer ``requested`` names here: ``pyepics`` or ``caproto`` as given; ``auto`` is
    ``$OPHYD_CONTROL_LAYER`` if it names one of them, else pyepics if it is installed, else caproto."""
    if requested == "auto":
        env = os.environ.get("OPHYD_CONTROL_LAYER", "").strip().lower()
        if env in _LAYER_PACKAGES:
            return env
        return "pyepics" if importlib.util.find_spec("epics") is not None else "caproto"
    if requested not in _LAYER_PACKAGES:
        raise BenchConnectionError(f"unknown control layer {requested!r}: choose auto, pyepics or caproto")
    return requested


def ensure_control_layer(requested: str = "auto") -> str:
    """Make ophyd use the control layer ``requested`` names (``resolve_control_layer``); returns its name.

    Raises ``BenchConnectionError`` naming the package to install if that layer is not installed
    (``auto`` without ``$OPHYD_CONTROL_LAYER`` falls back to caproto if pyepics cannot load libca,
    as ophyd does)."""
    name = resolve_control_layer(requested)
    module, package = _LAYER_PACKAGES[name]
    how = f"control_layer = {requested!r}" + (f" (-> {name})" if requested != name else "")
    if importlib.util.find_spec(module) is None:
        other = "caproto" if name == "pyepics" else "pyepics"
        raise BenchConnectionError(
            f"{how}: the Python package {package} is not installed here; install it "
            f"(pip install {package}) or set [bench] control_layer = {other!r} in the bench file"
        )
    if getattr(ophyd.cl, "name", None) != name:
        try:
            ophyd.set_cl(name)
        except ImportError as exc:
            fallback = requested == "auto" and name == "pyepics" and "OPHYD_CONTROL_LAYER" not in os.environ
            if not fallback:
                raise BenchConnectionError(f"{how}: ophyd cannot use {package}: {exc}") from None
            return ensure_control_layer("caproto")
    if ophyd.cl.name == "caproto":
        exclusive_search_ports()
        _close_caproto_before_shutdown()
    return ophyd.cl.name


class _ExclusiveEphemeralSocket(socket.socket):
    """A socket whose bind to port 0 clears ``SO_REUSEADDR``/``SO_REUSEPORT`` first (see the module docstring)."""

    def bind(self, address) -> None:
        if isinstance(address, tuple) and len(address) >= 2 and address[1] == 0:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            if hasattr(socket, "SO_REUSEPORT"):
                self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        super().bind(address)


_caproto_bcast_socket = None


def exclusive_search_ports() -> None:
    """From now on, caproto's CA clients in this process (ophyd's caproto layer, ``caproto.sync.client``)
    bind their UDP search sockets to ports no other socket shares (see the module docstring). Idempotent."""
    global _caproto_bcast_socket
    import caproto

    with _search_ports_lock:
        if _caproto_bcast_socket is not None:
            return
        original = caproto.bcast_socket

        def bcast_socket(socket_module=socket):
            sock = original(socket_module)
            if socket_module is not socket:  # trio's or curio's socket module: left as caproto makes it
                return sock
            return _ExclusiveEphemeralSocket(sock.family, sock.type, sock.proto, sock.detach())

        caproto.bcast_socket = bcast_socket
        _caproto_bcast_socket = original


_search_ports_lock = threading.Lock()


_caproto_close_registered = False


def _close_caproto_before_shutdown() -> None:
    """Disconnect caproto's shared client context when the interpreter shuts down, *before* the
    thread pools of ``concurrent.futures`` stop: otherwise a reply arriving in between (the IOC
    answering the last clear-channel requests of a destroyed bench) makes caproto log a traceback
    ("cannot schedule new futures after interpreter shutdown") as the command exits. Functions
    registered with ``threading._register_atexit`` run last-registered first, so this one (registered
    after ``concurrent.futures`` was imported) runs before its pools are shut down."""
    global _caproto_close_registered
    if _caproto_close_registered:
        return
    register = getattr(threading, "_register_atexit", None)  # private, but what concurrent.futures uses
    if register is None:  # pragma: no cover
        return

    def close() -> None:
        try:
            from caproto.threading.pyepics_compat import PV

            PV.default_context().disconnect(wait=False)
        except Exception:  # shutting down: nothing to report to
            pass

    register(close)
    _caproto_close_registered = True


def _layer_of(signal):
    """The control layer ``signal`` was made with (ophyd's current one if it does not say)."""
    return getattr(signal, "cl", None) or ophyd.cl


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


def _for_a_closed_channel(circuit, command) -> bool:
    """Whether a monitor update (``EventAddResponse``) is for a channel this client has already closed."""
    import caproto as ca

    event_add = circuit.event_add_commands.get(command.subscriptionid)
    channel = circuit.channels_sid.get(event_add.sid) if event_add is not None else None
    return channel is not None and channel.states[ca.CLIENT] is ca.CLOSED


def _install_error_delivery() -> None:
    """Deliver a server's ErrorResponse to the waiting ``_Reply`` (caproto ignores it otherwise), and
    drop quietly what only a client on its way out receives (a monitor update for a channel it closed,
    a reply after its callback threads stopped)."""
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
                        try:
                            self.user_callback_executor.submit(callback, command)
                        except RuntimeError:  # the executor is shut down: the process is exiting, no one waits
                            return None
            if isinstance(command, ca.EventAddResponse) and _for_a_closed_channel(self.circuit, command):
                # A monitor update already in flight when the channel was cleared (the command closing
                # its devices as it exits): nothing subscribes to it any more. Dropped quietly, instead of
                # caproto logging an 'Invalid command ... in state CLOSED' warning with a traceback.
                return None
            try:
                return original(self, command)
            except RuntimeError as exc:
                # A monitor update that lands while the interpreter shuts down (e.g. after Ctrl+C): caproto
                # cannot hand it to its callback threads any more and no one would read it. Dropped quietly,
                # instead of caproto logging a traceback and closing the circuit; anything else is raised.
                if "cannot schedule new futures" not in str(exc):
                    raise
                return None

        VirtualCircuitManager._process_command = _process_command
        _hook_installed = True


def _too_long(pvname: str, text: bytes) -> LimitError:
    return LimitError(
        f"{pvname}: {text.decode('latin-1')!r} has {len(text)} characters; an EPICS string (DBR_STRING) holds "
        f"at most {_DBR_STRING_MAX}; nothing was sent"
    )


def _ca_data(value, native_type, pvname: str = "?"):
    import caproto as ca

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str):
        raw = value.encode("latin-1")
        if native_type in ca.char_types:
            return raw + b"\0"
        if len(raw) > _DBR_STRING_MAX:
            raise _too_long(pvname, raw)
        return (raw,)
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


def _as_text(value) -> str | None:
    """``value`` read from a string PV as text (a str, bytes, a char array up to its NUL, or a
    one-element sequence of one of these); None if it is not text."""
    if isinstance(value, str):
        return value.split("\0", 1)[0]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).split(b"\0", 1)[0].decode("latin-1")
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return _as_text(value[0])
    arr = np.asarray(value) if isinstance(value, np.ndarray | list | tuple) else None
    if arr is None or arr.ndim != 1:
        return None
    if arr.dtype.kind in "SU" and arr.size == 1:
        return _as_text(arr[0].item())
    if arr.dtype.kind in "iu" and arr.size > 1 and bool(np.all((arr >= 0) & (arr < 256))):
        return _as_text(arr.astype(np.uint8).tobytes())
    return None


def _same(got, value) -> bool:
    """Whether ``got`` (a setpoint read back) is ``value`` (what was written): text is compared as
    text (DBR_STRING, char arrays, enum strings), numbers to 1e-9 relative (a waveform read back
    may be longer than what was written)."""
    if isinstance(value, (str, bytes)):
        want = value if isinstance(value, str) else value.decode("latin-1")
        return _as_text(got) == want.split("\0", 1)[0]
    try:
        a, b = np.asarray(got), np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        return False
    if a.dtype.kind not in "biuf":  # text, or no value, where a number was written
        return False
    a = a.astype(float).ravel()
    if b.size == 0 or a.size < b.size:
        return False
    return bool(np.allclose(a[: b.size], b, rtol=1e-9, atol=0))


#: reason PVs whose long-string form (``NAME.VAL$``) does not connect although the PV does
_no_long_string: set[str] = set()


def _long_string_name(pvname: str) -> str:
    """EPICS's long-string form of ``pvname``: ``REC.VAL$`` (or ``REC.FIELD$``)."""
    if pvname.endswith("$"):
        return pvname
    record_field = pvname.rsplit(":", 1)[-1]
    return f"{pvname}$" if "." in record_field else f"{pvname}.VAL$"


def _read_text(layer, pvname: str, connect_timeout: float, timeout: float) -> tuple[bool, str | None]:
    """``(connected, text)`` of ``pvname`` read now; text is None if it did not connect (within
    ``connect_timeout``) or could not be read."""
    try:
        pv = layer.get_pv(pvname)
        if pv.wait_for_connection(timeout=connect_timeout) is False:
            return False, None
    except TimeoutError:
        return False, None
    except Exception:
        return True, None
    try:
        # pyepics reads as many elements as the channel's monitor last posted unless told: ask for all
        count = pv.nelm if getattr(layer, "name", None) == "pyepics" else None
        value = pv.get(as_string=True, use_monitor=False, timeout=timeout, count=count)
    except Exception:
        return True, None
    if value is None:
        return True, None
    text = _as_text(value)
    return True, (text if text is not None else str(value)).strip()


def _reason_from(layer, pvname: str | None, connect_timeout: float = 5.0, timeout: float = 2.0) -> str:
    """The bench's explanation of a refusal (``IL:Message``), whole: its long string ``.VAL$`` if the
    IOC serves one, else the PV itself; '' if it cannot be read. A long-string form that does not
    connect while the PV itself reads is not tried again in this process."""
    if not pvname:
        return ""
    long_unconnected = False
    if pvname not in _no_long_string:
        connected, text = _read_text(layer, _long_string_name(pvname), connect_timeout, timeout)
        if text is not None:
            return text
        long_unconnected = not connected
    _, text = _read_text(layer, pvname, connect_timeout, timeout)
    if text is None:
        return ""
    if long_unconnected:
        _no_long_string.add(pvname)
    return text


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
    ``connection_timeout``, and ``LimitError`` if the value cannot be sent (text longer than an
    EPICS string PV holds). ``on_reply`` runs in a control-layer thread; if the
    server never answers (or the channel disconnects first) it is not called (the caller's
    ``Completion`` times out), under either layer.
    """
    pvname = signal.setpoint_pvname
    try:
        signal.wait_for_connection(timeout=connection_timeout)
    except TimeoutError:
        raise BenchConnectionError(
            f"{signal.name}: PV {pvname} is not connected (waited {connection_timeout:g} s); nothing was sent"
        ) from None
    layer = _layer_of(signal)

    def refused(detail: str) -> PutRefusedError:
        reason = _reason_from(layer, reason_pv, connect_timeout=connection_timeout)
        text = f"{pvname} refused {value!r}: {detail}"
        if reason and reason not in detail:
            text += f"; {reason_pv}: {reason}"
        return PutRefusedError(text)

    pv = signal._write_pv
    path = _put_path(layer, pv)
    if path == "caproto":
        _caproto_put_notify(pv._caproto_pv, pvname, value, on_reply, timeout, refused, layer.thread_class)
    elif path == "libca":
        _libca_put_notify(pv, pvname, value, on_reply, refused, layer.thread_class)
    else:
        _put_verified(pv, value, on_reply, timeout, refused, getattr(layer, "thread_class", threading.Thread))


def _put_path(layer, pv) -> str:
    """How ``put_notify`` learns the server's answer: ``caproto`` (its reply), ``libca`` (libca's put
    status) or ``read back`` (the setpoint read back after completion)."""
    if getattr(pv, "_caproto_pv", None) is not None:
        return "caproto"
    if getattr(layer, "name", None) == "pyepics" and _libca_put_available():
        return "libca"
    return "read back"


def _caproto_put_notify(cpv, pvname, value, on_reply, timeout, refused, thread_class) -> None:
    _install_error_delivery()

    def reply_refused(response) -> None:
        try:
            result = refused(_server_message(response))
        except Exception as exc:  # never leave the caller waiting for its timeout
            result = exc
        on_reply(result)

    def handle(response) -> None:
        import caproto as ca

        if isinstance(response, ca.WriteNotifyResponse) and response.status.success:
            on_reply(None)
        else:
            # not in caproto's callback thread: reading the reason connects PVs, whose callbacks run there
            thread_class(target=reply_refused, args=(response,), daemon=True).start()

    wait_s = None if timeout is None else float(timeout) + 1.0
    data = _ca_data(value, cpv.channel.native_data_type, pvname)
    cpv.write(data, wait=False, callback=_Reply(handle), notify=True, timeout=wait_s)


# --------------------------------------------------------------------------- pyepics: libca's put status
class _PendingPut:
    """A put-with-completion libca has not answered yet (ctypes keeps no reference to it: ``_pending`` does)."""

    __slots__ = ("handler", "thread_class")

    def __init__(self, handler: Callable[[int], None], thread_class):
        self.handler = handler
        self.thread_class = thread_class


_pending: set[_PendingPut] = set()
_pending_lock = threading.Lock()
_put_callback = None  # the ctypes callback given to libca: made once, never freed
#: libca statuses of a put-with-completion that are no answer of the server: the channel went away first
_NO_ANSWER = ("ECA_DISCONN", "ECA_DISCONNCHID", "ECA_CHANDESTROY")


def _libca_put_available() -> bool:
    try:
        from epics import ca, dbr

        return all(hasattr(ca, n) for n in ("libca", "field_type", "element_count", "attach_context")) and hasattr(
            dbr, "event_handler_args"
        )
    except Exception:
        return False


def _on_libca_put(args) -> None:
    """libca's put callback (a libca thread): hand the status on to a new CA thread; no libca call here."""
    try:
        token, status = args.usr, int(args.status)
        with _pending_lock:
            if token not in _pending:
                return
            _pending.discard(token)
        token.thread_class(target=token.handler, args=(status,), daemon=True).start()
    except Exception:  # an exception must not propagate into libca
        pass


def _libca_callback():
    global _put_callback
    with _pending_lock:
        if _put_callback is None:
            from epics import dbr

            _put_callback = dbr.make_callback(_on_libca_put, dbr.event_handler_args)
        return _put_callback


def _in_context(pv, fn):
    """``fn()`` with the calling thread attached to ``pv``'s CA context, as pyepics's ``PV`` methods do
    (a thread without a context is attached to it; one in another context is switched back after)."""
    from epics import ca

    current = ca.current_context()
    if current == pv.context:
        return fn()
    if current is not None:
        ca.detach_context()
    ca.attach_context(pv.context)
    try:
        return fn()
    finally:
        if current is not None:
            ca.detach_context()
            ca.attach_context(current)


def _libca_data(value, ftype: int, native_count: int, pvname: str):
    """``(dbr type, count, ctypes array)`` that write ``value`` to a channel of native type ``ftype``:
    text as DBR_STRING (or, to a char waveform, as chars with the terminator); integers as the
    channel's integer type; other numbers as DBR_DOUBLE (the server converts)."""
    from epics import dbr

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (str, bytes)):
        raw = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        if ftype == dbr.CHAR and native_count > 1:
            chars = (raw + b"\0")[:native_count]
            return dbr.CHAR, len(chars), (len(chars) * dbr.Map[dbr.CHAR])(*chars)
        if len(raw) > _DBR_STRING_MAX:
            raise _too_long(pvname, raw)
        data = (1 * dbr.Map[dbr.STRING])()
        data[0].value = raw
        return dbr.STRING, 1, data
    values = np.atleast_1d(np.asarray(value)).ravel()
    if values.dtype.kind not in "biuf" or values.size == 0:
        raise TypeError(f"{pvname}: cannot write {value!r} (not text, not numbers)")
    values = values[: max(1, native_count)]
    integral = values.dtype.kind in "biu" or bool(np.all(np.isfinite(values) & (values == np.round(values))))
    if ftype in (dbr.CHAR, dbr.SHORT, dbr.ENUM, dbr.LONG) and integral:
        return ftype, values.size, (values.size * dbr.Map[ftype])(*(int(v) for v in values))
    return dbr.DOUBLE, values.size, (values.size * dbr.Map[dbr.DOUBLE])(*(float(v) for v in values))


_status_names: dict[int, tuple[str, str]] = {}


def _libca_status(status: int) -> tuple[str, str]:
    """(name, description) of a libca status, e.g. ('ECA_PUTFAIL', 'Channel write request failed')."""
    if not _status_names:
        import caproto as ca

        for member in ca.CAStatus:
            code = member.value
            _status_names[code.code_with_severity] = (code.name, code.description)
    if status in _status_names:
        return _status_names[status]
    from epics import ca as libca

    return f"status {status}", str(libca.message(status))


def _libca_put_notify(pv, pvname, value, on_reply, refused, thread_class) -> None:
    from epics import ca, dbr

    def handle(status: int) -> None:
        name, description = _libca_status(status)
        if name in _NO_ANSWER:
            return  # as under caproto: the caller's timeout reports it
        try:
            result = None if status == dbr.ECA_NORMAL else refused(f"{name} ({description})")
        except Exception as exc:  # never leave the caller waiting for its timeout
            result = exc
        on_reply(result)

    def put() -> None:
        chid = pv.chid
        ftype, count, data = _libca_data(value, ca.field_type(chid), ca.element_count(chid), pvname)
        token = _PendingPut(handle, thread_class)
        callback = _libca_callback()
        with _pending_lock:
            _pending.add(token)
        status = ca.libca.ca_array_put_callback(ftype, count, chid, data, callback, ctypes.py_object(token))
        if status != dbr.ECA_NORMAL:
            with _pending_lock:
                _pending.discard(token)
            name, description = _libca_status(status)
            raise BenchConnectionError(f"{pvname}: libca did not send the put of {value!r}: {name} ({description})")
        ca.flush_io()

    _in_context(pv, put)


# --------------------------------------------------------------------------- other layers: read back
def _put_verified(pv, value, on_reply, timeout, refused, thread_class) -> None:
    """Put with completion, then compare the setpoint read back (``_same``)."""

    def check() -> None:
        try:
            got = pv.get(as_string=isinstance(value, (str, bytes)), use_monitor=False, timeout=5.0)
            on_reply(None if _same(got, value) else refused(f"the setpoint reads {got!r} after the put"))
        except Exception as exc:
            on_reply(exc)

    def done(*args, **kwargs) -> None:
        thread_class(target=check, daemon=True).start()

    pv.put(value, use_complete=True, callback=done, timeout=timeout)
