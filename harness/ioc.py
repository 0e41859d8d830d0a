"""The twin's IOC for tests and benchmarks: ``sim.ioc_process`` on the process's CA ports, control layers, CA helpers.

Starting, probing and stopping the IOC subprocess is ``sim.ioc_process`` (the project's public part,
which the benchmarks use too); this module adds what only the tests (and the harness's scenarios) need.

API
---
``EXAMPLE_BENCH``
    Path of ``examples/twin_bench.toml`` (prefix ``GL:``), the tests' default bench file.
``free_port``, ``ca_environment``, ``environ``, ``IOCStartError``, ``TwinIOCProcess``
    Re-exported from ``sim.ioc_process`` (see there).
``start_twin_ioc(bench=EXAMPLE_BENCH, *, time_scale=1000.0, prefix=None, args=(),
startup_timeout_s=30.0, wait=True, server_port=None, repeater_port=None)``
    ``sim.ioc_process.start_twin_ioc`` run from the repository, on fresh free ports or, inside a
    module using ``ca_pool``, on a port of the process's pool (given back when the IOC is closed).
``twin_ioc(..., set_environ=True)``
    Context manager: ``start_twin_ioc(bench, **kwargs)`` on entry, ``close`` on exit; with ``set_environ``
    ``os.environ`` holds the IOC's ``env`` inside the block (restored after),
    so caproto clients -- and ophyd's caproto control layer -- find it (caproto's
    clients read ``EPICS_CA_ADDR_LIST``/``EPICS_CA_SERVER_PORT`` at every search, so
    one process can talk to several IOCs of a session one after the other).
``bench_config(prefix, **overrides)``
    ``EXAMPLE_BENCH`` parsed under another PV prefix, with tables' values overridden.
``twin_ioc_module``
    A module-scoped pytest fixture (import it into a test module) yielding a running
    ``TwinIOCProcess`` of ``EXAMPLE_BENCH`` at time scale 1000, environment set.

Both control layers (``control_layer``, ``ca_pool``)
----------------------------------------------------
``control_layer``
    A module-scoped fixture parametrised over ``CONTROL_LAYERS`` (``caproto``, ``pyepics``;
    test ids end in ``[caproto]``/``[pyepics]``): ophyd uses that layer inside the module
    (``ophyd.set_cl``; ``$OPHYD_CONTROL_LAYER`` names it, so ``connect_bench`` with the bench
    file's ``control_layer = "auto"`` picks it), and the previous one again after it. Devices made
    under it must be destroyed within it (module-scoped fixtures depending on it are). Without
    pyepics the ``[pyepics]`` tests skip, naming it.
``use_control_layer(name, pool)``
    The same as a context manager, for a fixture of another scope or parametrisation (the device
    contract's sides: ``tests/test_device_contract.py``).
``ca_pool`` / ``process_ca_pool() -> CAPortPool``
    pyepics's libca reads ``EPICS_CA_*`` once per process, when its first channel is made, so
    one xdist worker (which runs several modules, each with IOCs on ports of their own) cannot
    point it at each new IOC. Each process therefore has one pool: ``POOL_SIZE`` server ports,
    all listed in ``EPICS_CA_ADDR_LIST`` (``127.0.0.1:PORT ...``), and one repeater port with a
    ``LoopbackRepeater`` on it; libca is made to read that environment when the pool is made
    (before any other pyepics use in the process: the suite's ``conftest.py`` keeps ophyd on
    caproto elsewhere). The module-scoped fixture ``ca_pool`` (or the context manager
    ``pool_ports()``) makes ``start_twin_ioc`` (and ``lease_server_port``) take a pool port for each
    IOC of the module (released when it is closed); the pool's ports are held (bound) while no IOC
    has them, so no other process takes one.
``LoopbackRepeater(port)``
    A CA repeater bound to 127.0.0.1 only, in a daemon thread of this process: libca registers
    with it (an empty datagram, confirmed as caRepeater does) and gets the IOCs' beacons through
    it, and, finding the repeater port taken, never starts a ``caRepeater`` process (none outlives
    the session). ``.registrations``, ``.beacons`` count what it saw; ``.close()`` stops it.
CA helpers (caproto's sync client, no repeater, search sockets on ports of their own --
``devices.exclusive_search_ports``; the environment must be set):
``caget(name, timeout=10.0)`` (a scalar as a Python number, an array as ``numpy``; a
string PV or a CHAR array as ``str``), ``caput(name, value, timeout=5.0, wait=True)``
(raises ``PutRefused`` if the IOC answers the put with a failure status -- it answers a
refused put-with-completion with ECA_PUTFAIL, as rsrv does -- and
``caproto.CaprotoTimeoutError`` if it does not complete in time, e.g. while paused).

String PVs (``STAGE:Sample-*``, ``STAGE:Kind-RB``, ``IL:Message``) are DBR_STRING (at most
39 characters); the whole text of ``IL:Message`` is its long string ``IL:Message.VAL$``
(``caget`` decodes both).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sim.ioc_process import IOCStartError, TwinIOCProcess, ca_environment, environ, free_port
from sim.ioc_process import start_twin_ioc as _start_ioc_process

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_BENCH = REPO / "examples" / "twin_bench.toml"

__all__ = [
    "CONTROL_LAYERS",
    "EXAMPLE_BENCH",
    "POOL_SIZE",
    "STRAY_DATAGRAM_ATTEMPTS",
    "CAPortPool",
    "IOCStartError",
    "LoopbackRepeater",
    "PutRefused",
    "TwinIOCProcess",
    "bench_config",
    "ca_environment",
    "ca_pool",
    "caget",
    "caput",
    "caread",
    "control_layer",
    "environ",
    "free_port",
    "lease_server_port",
    "past_stray_datagrams",
    "pool_ports",
    "process_ca_pool",
    "start_twin_ioc",
    "twin_ioc",
    "twin_ioc_module",
    "use_control_layer",
]

#: ophyd's control layers the EPICS tests run under
CONTROL_LAYERS = ("caproto", "pyepics")
#: server ports of a process's CA pool (the most IOCs one test module runs at once, with room)
POOL_SIZE = 4


class PutRefused(RuntimeError):
    """The IOC answered a put with a failure status (ECA_PUTFAIL)."""


#: attempts of a sync CA call that met a stray datagram (see ``caread``)
STRAY_DATAGRAM_ATTEMPTS = 3


def past_stray_datagrams(call):
    """``call()``, again (up to ``STRAY_DATAGRAM_ATTEMPTS`` times) when its search socket met a datagram that
    is no CA reply: on loopback, with other test processes on ephemeral ports, the socket's port may be one
    that a libca client elsewhere still sends its repeater registration to (caproto raises
    ``RemoteProtocolError`` on it); no IOC's answer is ever dropped this way."""
    from caproto import RemoteProtocolError

    for attempt in range(STRAY_DATAGRAM_ATTEMPTS):
        try:
            return call()
        except RemoteProtocolError:
            if attempt == STRAY_DATAGRAM_ATTEMPTS - 1:
                raise


def caread(name: str, timeout: float = 10.0, **kwargs):
    """caproto's sync ``read`` of one PV (no repeater; ``kwargs`` such as ``data_type`` passed on), past
    stray datagrams on its search socket: the whole response (``data``, ``data_type``, metadata)."""
    from caproto.sync.client import read

    from devices import exclusive_search_ports

    exclusive_search_ports()
    return past_stray_datagrams(lambda: read(name, timeout=timeout, repeater=False, **kwargs))


def caget(name: str, timeout: float = 10.0):
    """Read one PV (caproto sync client, no repeater): its value, text as ``str``."""
    from caproto import ChannelType

    resp = caread(name, timeout=timeout)
    data = resp.data
    if resp.data_type in (ChannelType.CHAR, ChannelType.TIME_CHAR):
        return np.asarray(data, dtype=np.uint8).tobytes().split(b"\0", 1)[0].decode("latin-1")
    if resp.data_type in (ChannelType.STRING, ChannelType.TIME_STRING):
        return data[0].decode("latin-1")
    if len(data) == 1:
        return data[0].item() if hasattr(data[0], "item") else data[0]
    return np.asarray(data)


def caput(name: str, value, timeout: float = 10.0, wait: bool = True):
    """Write one PV; with ``wait`` (put with completion) raise ``PutRefused`` on a failure status."""
    from caproto.sync.client import write

    from devices import exclusive_search_ports

    exclusive_search_ports()
    if isinstance(value, bytes):  # as a CHAR array (with its terminator); a str goes as DBR_STRING
        value = np.frombuffer(value + b"\0", dtype=np.uint8)
    resp = past_stray_datagrams(lambda: write(name, value, notify=wait, timeout=timeout, repeater=False))
    if wait and not resp.status.success:
        raise PutRefused(f"put {name} = {value!r} refused: {resp.status.name}")
    return resp


def start_twin_ioc(bench: str | Path = EXAMPLE_BENCH, *, server_port: int | None = None, **kwargs) -> TwinIOCProcess:
    """``sim.ioc_process.start_twin_ioc(bench, **kwargs)`` from the repository, on free loopback ports, or
    on a port of the process's CA pool inside a module using ``ca_pool`` (see the module docstring)."""
    pool = _POOL if _POOL is not None and _POOL.active and server_port is None else None
    if pool is None:
        return _start_ioc_process(bench, server_port=server_port, cwd=REPO, **kwargs)
    port = pool.lease()
    try:
        ioc = _start_ioc_process(
            bench,
            server_port=port,
            repeater_port=pool.repeater.port,
            client_env=pool.environment(port),
            cwd=REPO,
            **kwargs,
        )
    except BaseException:
        pool.release(port)
        raise
    ioc.on_close = functools.partial(pool.release, port)
    return ioc


@contextlib.contextmanager
def twin_ioc(bench: str | Path = EXAMPLE_BENCH, *, set_environ: bool = True, **kwargs) -> Iterator[TwinIOCProcess]:
    """``start_twin_ioc(bench, **kwargs)``; stopped at exit; ``os.environ`` set inside."""
    ioc = start_twin_ioc(bench, **kwargs)
    try:
        with environ(ioc.env) if set_environ else contextlib.nullcontext():
            yield ioc
    finally:
        ioc.close()


def bench_config(prefix: str, **overrides):
    """``EXAMPLE_BENCH`` under the PV prefix ``prefix``, with ``overrides`` (table -> {key: value}) applied."""
    from devices import parse_bench

    data = tomllib.loads(EXAMPLE_BENCH.read_text())
    data["bench"]["prefix"] = prefix
    for table, values in overrides.items():
        data.setdefault(table, {}).update(values)
    return parse_bench(data, f"{EXAMPLE_BENCH} (prefix {prefix})")


@pytest.fixture(scope="module")
def twin_ioc_module() -> Iterator[TwinIOCProcess]:
    with twin_ioc() as ioc:
        yield ioc


# ------------------------------------------------------------------ both control layers: the process's CA pool
class LoopbackRepeater:
    """A CA repeater on 127.0.0.1:``port`` only, in a daemon thread of this process (see the module docstring)."""

    def __init__(self, port: int):
        self.port = port
        self.registrations = 0
        self.beacons = 0
        self._clients: set[int] = set()
        self._closed = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind(("127.0.0.1", port))
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._run, name=f"ca-repeater-{port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import caproto as ca

        broadcaster = ca.Broadcaster(our_role=ca.SERVER)
        while not self._closed.is_set():
            try:
                data, (host, port) = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                commands = broadcaster.recv(data, (host, port))
            except Exception:
                continue
            if not commands:  # libca registers with an empty datagram (as caRepeater, confirm it)
                self._register(port)
                continue
            forward = []
            for command in commands:
                if isinstance(command, ca.RepeaterRegisterRequest):
                    self._register(port)
                elif isinstance(command, ca.Beacon):
                    self.beacons += 1
                    if command.header.parameter2 == 0:  # the server left its address to the repeater
                        command.header.parameter2 = ca.ipv4_to_int32(host)
                    forward.append(bytes(command))
            if forward:
                payload = b"".join(forward)
                for client in list(self._clients - {port}):
                    self._send(payload, client)

    def _register(self, port: int) -> None:
        import caproto as ca

        self._clients.add(port)
        self.registrations += 1
        self._send(bytes(ca.RepeaterConfirmResponse("127.0.0.1")), port)

    def _send(self, payload: bytes, port: int) -> None:
        try:
            self._sock.sendto(payload, ("127.0.0.1", port))
        except OSError:
            self._clients.discard(port)

    def close(self) -> None:
        """Stop: the thread ends, the port is closed."""
        self._closed.set()
        self._thread.join(5.0)
        self._sock.close()


def _hold(port: int) -> list[socket.socket]:
    """Bind TCP and UDP ``port`` on 127.0.0.1 (not listening), so that no other process is given it."""
    held = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        sock = socket.socket(socket.AF_INET, kind)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the TIME_WAIT of an IOC's circuits
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
    return held


class CAPortPool:
    """The CA ports of this process (see the module docstring): ``ports``, ``repeater``, ``pyepics``
    (libca reads ``environment()``; False with ``pyepics_missing`` saying why), ``active`` (inside a
    module using ``ca_pool``)."""

    def __init__(self, size: int = POOL_SIZE):
        self.repeater = _bind_repeater()
        self.ports = tuple(free_port() for _ in range(size))
        self._held = {port: _hold(port) for port in self.ports}
        self._leased: set[int] = set()
        self._lock = threading.Lock()
        self.active = False
        self.pyepics = False
        self.pyepics_missing = ""

    def environment(self, server_port: int | None = None) -> dict[str, str]:
        """``EPICS_CA_*`` of a client that finds every IOC of the pool (and of an IOC on ``server_port``)."""
        return {
            "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{port}" for port in self.ports),
            "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_SERVER_PORT": str(server_port or self.ports[0]),
            "EPICS_CA_REPEATER_PORT": str(self.repeater.port),
        }

    def lease(self) -> int:
        """A pool port no IOC has (no longer held): start a server on it, then ``release`` it."""
        with self._lock:
            free = [port for port in self.ports if port not in self._leased]
            if not free:
                raise RuntimeError(f"all {len(self.ports)} CA ports of this process's pool are in use: close an IOC")
            port = free[0]
            self._leased.add(port)
            for sock in self._held.pop(port, []):
                sock.close()
        return port

    def release(self, port: int) -> None:
        with self._lock:
            self._leased.discard(port)
            self._held[port] = _hold(port)

    def _lock_libca(self) -> None:
        """Make pyepics's libca read ``environment()`` now (it reads it once, at its first channel)."""
        import ophyd

        try:
            from epics import ca
        except ImportError as exc:
            self.pyepics_missing = f"pyepics is not installed ({exc}): pip install pyepics==3.5.10 (the test extra)"
            return
        if getattr(ca, "_chid_cache", None):
            raise RuntimeError(
                "pyepics made channels in this process before its CA environment was set: libca searches "
                "elsewhere for good (keep ophyd on caproto outside modules using ca_pool)"
            )
        previous = ophyd.cl.name
        with environ(self.environment()):
            try:
                ophyd.set_cl("pyepics")  # libca's context, as ophyd makes it (its dispatcher attaches to it)
            except ImportError as exc:
                self.pyepics_missing = f"pyepics cannot load libca: {exc}"
                return
            chid = ca.create_channel("gainloop:ca-environment-probe", connect=False, auto_cb=False)
            ca.clear_channel(chid)  # its search machinery made: the environment is read
        ophyd.set_cl(previous)
        self.pyepics = True


def _bind_repeater() -> LoopbackRepeater:
    for _ in range(20):
        try:
            return LoopbackRepeater(free_port())
        except OSError:  # taken between free_port and the bind
            continue
    raise RuntimeError("no free port on 127.0.0.1 for the CA repeater")


_POOL: CAPortPool | None = None
_POOL_LOCK = threading.Lock()


def process_ca_pool() -> CAPortPool:
    """This process's ``CAPortPool``, made (and libca pointed at it) on the first call."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            pool = CAPortPool()
            pool._lock_libca()
            _POOL = pool
        return _POOL


@contextlib.contextmanager
def lease_server_port() -> Iterator[tuple[int, dict[str, str]]]:
    """``(port, client environment)`` for a CA server of a test's own: a pool port inside a module using
    ``ca_pool``, else a free port (with a free repeater port)."""
    pool = _POOL if _POOL is not None and _POOL.active else None
    if pool is None:
        port = free_port()
        yield port, ca_environment(port, free_port())
        return
    port = pool.lease()
    try:
        yield port, pool.environment(port)
    finally:
        pool.release(port)


@contextlib.contextmanager
def pool_ports() -> Iterator[CAPortPool]:
    """Inside the block, IOCs of this process take ports of its ``CAPortPool`` (made on the first use):
    what a process that talks to several IOCs one after the other under pyepics needs."""
    pool = process_ca_pool()
    was_active, pool.active = pool.active, True
    try:
        yield pool
    finally:
        pool.active = was_active


@pytest.fixture(scope="module")
def ca_pool() -> Iterator[CAPortPool]:
    """The process's ``CAPortPool``, active in the module: its IOCs take pool ports."""
    with pool_ports() as pool:
        yield pool


@contextlib.contextmanager
def use_control_layer(name: str, pool: CAPortPool) -> Iterator[str]:
    """ophyd uses the control layer ``name`` inside the block (``$OPHYD_CONTROL_LAYER`` names it too), the
    previous one after it; under ``pyepics`` the tests skip, saying why, where ``pool`` could not load it."""
    import ophyd

    if name == "pyepics" and not pool.pyepics:
        pytest.skip(pool.pyepics_missing or "pyepics is not usable in this process")
    previous = ophyd.cl.name
    with environ({"OPHYD_CONTROL_LAYER": name}):
        ophyd.set_cl(name)
        try:
            yield name
        finally:
            ophyd.set_cl(previous)


@pytest.fixture(scope="module", params=CONTROL_LAYERS)
def control_layer(request, ca_pool) -> Iterator[str]:
    """ophyd's control layer for the module's tests, ``caproto`` then ``pyepics`` (see the module docstring)."""
    with use_control_layer(request.param, ca_pool) as name:
        yield name


def bound_addresses(port: int, kind: str = "tcp") -> set[str]:
    """Local addresses of the sockets bound to ``port``: TCP ones listening (``kind="tcp"``), or UDP ones."""
    import psutil

    found = set()
    for conn in psutil.net_connections(kind=kind):
        if conn.laddr and conn.laddr.port == port and (kind != "tcp" or conn.status == psutil.CONN_LISTEN):
            found.add(conn.laddr.ip)
    return found
