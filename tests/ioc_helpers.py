"""Run the twin's IOC (``gainloop twin serve``) as a real subprocess on the loopback, for tests.

API
---
``EXAMPLE_BENCH``
    Path of ``examples/twin_bench.toml`` (prefix ``GL:``).
``free_port() -> int``
    A TCP+UDP port free on 127.0.0.1 right now.
``ca_environment(server_port, repeater_port) -> dict[str, str]``
    The ``EPICS_CA_*`` variables that keep a CA client (and the IOC) on 127.0.0.1 with
    those ports: ``EPICS_CA_ADDR_LIST=127.0.0.1``, ``EPICS_CA_AUTO_ADDR_LIST=NO``,
    ``EPICS_CA_SERVER_PORT``, ``EPICS_CA_REPEATER_PORT``.
``start_twin_ioc(bench=EXAMPLE_BENCH, *, time_scale=1000.0, prefix=None, args=(),
startup_timeout=30.0, wait=True, server_port=None, repeater_port=None)``
    Start ``python -m gainloop.cli twin serve --bench BENCH --time-scale X --port P [args...]``
    with fresh free ports and return a ``TwinIOCProcess``; with ``wait`` it returns once
    ``SIM:LabTime`` answers, raising ``IOCStartError`` (with the IOC's output) if the
    process exits or does not answer in time.
``TwinIOCProcess``
    ``.proc`` (``subprocess.Popen``), ``.prefix``, ``.server_port``, ``.repeater_port``,
    ``.env`` (its ``ca_environment``), ``.pv(name)`` (prefix + name), ``.stdout()`` /
    ``.stderr()`` (output so far), ``.wait_ready(timeout)``, ``.stop(timeout=5.0)``
    (SIGTERM, then SIGKILL; returns the exit status; idempotent), ``.close()`` (``stop``
    and delete the captured output; call it if you used ``start_twin_ioc`` directly).
``twin_ioc(..., set_environ=True)``
    Context manager: ``start_twin_ioc(bench, **kwargs)`` on entry, ``close`` on exit; with ``set_environ``
    ``os.environ`` holds the IOC's ``ca_environment`` inside the block (restored after),
    so caproto clients -- and ophyd's caproto control layer -- find it (caproto's
    clients read ``EPICS_CA_ADDR_LIST``/``EPICS_CA_SERVER_PORT`` at every search, so
    one process can talk to several IOCs of a session one after the other).
``twin_ioc_module``
    A module-scoped pytest fixture (import it into a test module) yielding a running
    ``TwinIOCProcess`` of ``EXAMPLE_BENCH`` at time scale 1000, environment set.
CA helpers (caproto's sync client, no repeater; the environment must be set):
``caget(name, timeout=2.0)`` (a scalar as a Python number, an array as ``numpy``; a
CHAR-waveform string PV as ``str``), ``caput(name, value, timeout=5.0, wait=True)``
(raises ``PutRefused`` if the IOC answers the put with a failure status -- it answers a
refused put-with-completion with ECA_PUTFAIL, as rsrv does -- and
``caproto.CaprotoTimeoutError`` if it does not complete in time, e.g. while paused).

String PVs (``STAGE:Sample-*``, ``STAGE:Kind-RB``, ``IL:Message``) are CHAR waveforms;
``caget`` decodes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_BENCH = REPO / "examples" / "twin_bench.toml"

__all__ = [
    "EXAMPLE_BENCH",
    "IOCStartError",
    "PutRefused",
    "TwinIOCProcess",
    "ca_environment",
    "caget",
    "caput",
    "free_port",
    "start_twin_ioc",
    "twin_ioc",
    "twin_ioc_module",
]


class IOCStartError(RuntimeError):
    """The IOC exited or did not answer in time."""


class PutRefused(RuntimeError):
    """The IOC answered a put with a failure status (ECA_PUTFAIL)."""


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def ca_environment(server_port: int, repeater_port: int) -> dict[str, str]:
    return {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(server_port),
        "EPICS_CA_REPEATER_PORT": str(repeater_port),
    }


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def caget(name: str, timeout: float = 2.0):
    """Read one PV (caproto sync client, no repeater)."""
    from caproto import ChannelType
    from caproto.sync.client import read

    resp = read(name, timeout=timeout, repeater=False)
    data = resp.data
    if resp.data_type in (ChannelType.CHAR, ChannelType.TIME_CHAR):
        return np.asarray(data, dtype=np.uint8).tobytes().split(b"\0", 1)[0].decode("latin-1")
    if resp.data_type in (ChannelType.STRING, ChannelType.TIME_STRING):
        return data[0].decode("latin-1")
    if len(data) == 1:
        return data[0].item() if hasattr(data[0], "item") else data[0]
    return np.asarray(data)


def caput(name: str, value, timeout: float = 5.0, wait: bool = True):
    """Write one PV; with ``wait`` (put with completion) raise ``PutRefused`` on a failure status."""
    from caproto.sync.client import write

    if isinstance(value, str):
        value = np.frombuffer(value.encode("latin-1") + b"\0", dtype=np.uint8)
    resp = write(name, value, notify=wait, timeout=timeout, repeater=False)
    if wait and not resp.status.success:
        raise PutRefused(f"put {name} = {value!r} refused: {resp.status.name}")
    return resp


@dataclass
class TwinIOCProcess:
    proc: subprocess.Popen
    prefix: str
    server_port: int
    repeater_port: int
    env: dict[str, str]
    _out: Path = field(repr=False)
    _err: Path = field(repr=False)

    def pv(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0, probe: str = "SIM:LabTime") -> None:
        """Return once ``probe`` answers a CA read (the environment is set for the read)."""
        deadline = time.monotonic() + timeout
        with _environ(self.env):
            while True:
                if self.proc.poll() is not None:
                    raise IOCStartError(
                        f"IOC exited with status {self.proc.returncode}:\n{self.stderr()}\n{self.stdout()}"
                    )
                try:
                    caget(self.pv(probe), timeout=0.5)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise IOCStartError(
                            f"IOC did not answer {self.pv(probe)} within {timeout} s:\n{self.stderr()}"
                        ) from None
                    time.sleep(0.1)

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def close(self) -> None:
        """``stop``, then delete the captured output."""
        self.stop()
        shutil.rmtree(self._out.parent, ignore_errors=True)


def start_twin_ioc(
    bench: str | Path = EXAMPLE_BENCH,
    *,
    time_scale: float = 1000.0,
    prefix: str | None = None,
    args: Sequence[str] = (),
    startup_timeout: float = 30.0,
    wait: bool = True,
    server_port: int | None = None,
    repeater_port: int | None = None,
) -> TwinIOCProcess:
    """Start the IOC on free loopback ports (see the module docstring)."""
    server_port = server_port or free_port()
    repeater_port = repeater_port or free_port()
    env = ca_environment(server_port, repeater_port)
    if prefix is None:
        from devices.config import load_bench

        prefix = load_bench(bench).bench.prefix
    cmd = [sys.executable, "-m", "gainloop.cli", "twin", "serve", "--bench", str(bench)]
    cmd += ["--time-scale", repr(float(time_scale)), "--port", str(server_port), "--prefix", prefix, *args]
    tmp = Path(tempfile.mkdtemp(prefix="gainloop-ioc-"))
    out, err = tmp / "stdout", tmp / "stderr"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=fo, stderr=fe)
    ioc = TwinIOCProcess(proc, prefix, server_port, repeater_port, env, out, err)
    if wait:
        ioc.wait_ready(startup_timeout)
    return ioc


@contextlib.contextmanager
def twin_ioc(bench: str | Path = EXAMPLE_BENCH, *, set_environ: bool = True, **kwargs) -> Iterator[TwinIOCProcess]:
    """``start_twin_ioc(bench, **kwargs)``; stopped at exit; ``os.environ`` set inside."""
    ioc = start_twin_ioc(bench, **kwargs)
    try:
        with _environ(ioc.env) if set_environ else contextlib.nullcontext():
            yield ioc
    finally:
        ioc.close()


@pytest.fixture(scope="module")
def twin_ioc_module() -> Iterator[TwinIOCProcess]:
    with twin_ioc() as ioc:
        yield ioc


def bound_addresses(port: int, kind: str = "tcp") -> set[str]:
    """Local addresses of the sockets bound to ``port``: TCP ones listening (``kind="tcp"``), or UDP ones."""
    import psutil

    found = set()
    for conn in psutil.net_connections(kind=kind):
        if conn.laddr and conn.laddr.port == port and (kind != "tcp" or conn.status == psutil.CONN_LISTEN):
            found.add(conn.laddr.ip)
    return found
