"""The twin's IOC as a child process on the loopback: start it on a free port, wait until it serves, stop it.

A benchmark or a test that talks to the twin over Channel Access needs a real IOC in a process of
its own (``gainloop twin serve``), bound to 127.0.0.1 only, on ports no other IOC of the machine
uses, and a client environment that finds it there and nowhere else. This module is that part::

    from sim.ioc_process import twin_ioc

    with twin_ioc(time_scale=1000.0) as ioc:  # os.environ holds ioc.env inside the block
        bench = devices.connect_bench(cfg)    # finds ioc.pv("PUMP:Fluence-SP") on ioc.server_port
        ...
    # the IOC has been stopped (SIGTERM, then SIGKILL) and its captured output deleted

``start_twin_ioc`` returns a ``TwinIOCProcess`` without touching ``os.environ``; call its
``close`` when done. A start that fails (the IOC exits, or its probe PV does not answer within
``startup_timeout_s``) raises ``IOCStartError`` with the IOC's output, the process stopped.

The IOC is the installed command, run as ``python -m gainloop.cli twin serve`` with this
interpreter, so it is the same code as the caller's (no import of the service layer here).
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import GainloopError

__all__ = [
    "LOOPBACK",
    "READY_PROBE",
    "IOCStartError",
    "TwinIOCProcess",
    "ca_environment",
    "environ",
    "free_port",
    "start_twin_ioc",
    "twin_ioc",
]

#: The only address the IOC binds and its clients search.
LOOPBACK = "127.0.0.1"
#: The PV (relative to the prefix) whose answer to a CA read means the IOC serves.
READY_PROBE = "SIM:LabTime"


class IOCStartError(GainloopError, RuntimeError):
    """The IOC process exited, or did not answer its probe PV in time; the message has its output."""


def free_port(host: str = LOOPBACK, *, attempts: int = 50) -> int:
    """A port free for both TCP and UDP on ``host`` at the time of the call (CA uses both on one number).

    Raises ``RuntimeError`` if ``attempts`` ports given by the system for TCP were all taken for UDP.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        return port
    raise RuntimeError(f"no port free for both TCP and UDP on {host} in {attempts} attempts")


def ca_environment(server_port: int, repeater_port: int) -> dict[str, str]:
    """The ``EPICS_CA_*`` variables of a client (or server) kept on the loopback with these ports.

    ``EPICS_CA_ADDR_LIST`` is 127.0.0.1 alone with ``EPICS_CA_AUTO_ADDR_LIST=NO``: searches never
    leave the machine, and find only the server on ``server_port``.
    """
    return {
        "EPICS_CA_ADDR_LIST": LOOPBACK,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(server_port),
        "EPICS_CA_REPEATER_PORT": str(repeater_port),
    }


@contextlib.contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` inside the block, every variable restored (or removed) after."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _probe(pvname: str, timeout_s: float) -> None:
    """One CA read of ``pvname`` (caproto's sync client, no repeater); raises if it does not answer."""
    from caproto.sync.client import read

    read(pvname, timeout=timeout_s, repeater=False)


@dataclass
class TwinIOCProcess:
    """A running ``gainloop twin serve`` child process and how to reach it.

    ``env`` is the client environment (``EPICS_CA_*``) that finds this IOC; ``pv(name)`` is the
    full name of a PV given relative to ``prefix``. The IOC's standard output and error go to the
    files ``stdout_path`` and ``stderr_path`` (read with ``stdout()`` / ``stderr()`` at any time), in
    a directory of their own that ``close`` deletes.
    """

    proc: subprocess.Popen
    prefix: str
    server_port: int
    repeater_port: int
    env: dict[str, str]
    stdout_path: Path
    stderr_path: Path
    on_close: Callable[[], None] | None = field(default=None, repr=False)

    def pv(self, name: str) -> str:
        """The full PV name of ``name`` (relative to the prefix, e.g. ``"PUMP:Fluence-SP"``)."""
        return f"{self.prefix}{name}"

    def stdout(self) -> str:
        """What the IOC has written to its standard output so far."""
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        """What the IOC has written to its standard error so far (its log)."""
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 30.0, probe: str = READY_PROBE) -> None:
        """Return once ``probe`` answers a CA read under ``env``.

        Raises ``IOCStartError`` with the IOC's output if the process exits first or ``probe`` does
        not answer within ``timeout_s`` wall seconds (the process is then stopped).
        """
        deadline = time.monotonic() + timeout_s
        with environ(self.env):
            while True:
                if self.proc.poll() is not None:
                    raise IOCStartError(
                        f"the IOC exited with status {self.proc.returncode}:\n{self.stderr()}\n{self.stdout()}"
                    )
                try:
                    _probe(self.pv(probe), timeout_s=0.5)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise IOCStartError(
                            f"the IOC did not answer {self.pv(probe)} within {timeout_s} s:\n{self.stderr()}"
                        ) from None
                    time.sleep(0.1)

    def stop(self, timeout_s: float = 5.0) -> int:
        """Stop the IOC and return its exit status: SIGTERM (an orderly stop), then SIGKILL if it has
        not exited after ``timeout_s`` wall seconds. Stopping a stopped IOC returns its status again."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        return self.proc.returncode

    def close(self) -> None:
        """``stop``, delete the directory of the captured output and call ``on_close`` (once)."""
        self.stop()
        shutil.rmtree(self.stdout_path.parent, ignore_errors=True)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


def start_twin_ioc(
    bench: str | Path | None = None,
    *,
    time_scale: float = 1000.0,
    prefix: str | None = None,
    args: Sequence[str] = (),
    startup_timeout_s: float = 30.0,
    wait: bool = True,
    server_port: int | None = None,
    repeater_port: int | None = None,
    client_env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> TwinIOCProcess:
    """Start ``python -m gainloop.cli twin serve`` for ``bench`` on the loopback and return it.

    ``bench`` is a bench file (default: the twin's shipped one, ``sim.devices.default_twin_bench_path``);
    ``time_scale`` is lab seconds per wall second; ``prefix`` the PV prefix (default the bench file's);
    ``args`` more options of ``twin serve`` (``--seed N``, ``--fault NAME``, ...). The server port and
    the repeater port are free ports unless given; ``client_env`` replaces their ``ca_environment``
    (e.g. an address list naming several servers) and is the child's environment too, on top of this
    process's. With ``wait`` it returns once the IOC serves (``TwinIOCProcess.wait_ready``), else at
    once. ``cwd`` is the child's working directory (default this process's).
    """
    from devices.config import load_bench
    from sim.devices import default_twin_bench_path

    bench = Path(bench) if bench is not None else default_twin_bench_path()
    if prefix is None:
        prefix = load_bench(bench).bench.prefix
    server_port = server_port or free_port()
    repeater_port = repeater_port or free_port()
    env = dict(client_env) if client_env is not None else ca_environment(server_port, repeater_port)
    cmd = [sys.executable, "-m", "gainloop.cli", "twin", "serve", "--bench", str(bench)]
    cmd += ["--time-scale", repr(float(time_scale)), "--port", str(server_port), "--prefix", prefix, *args]
    output_dir = Path(tempfile.mkdtemp(prefix="gainloop-ioc-"))
    stdout_path, stderr_path = output_dir / "stdout", output_dir / "stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=err)
    ioc = TwinIOCProcess(proc, prefix, server_port, repeater_port, env, stdout_path, stderr_path)
    if wait:
        try:
            ioc.wait_ready(startup_timeout_s)
        except BaseException:
            ioc.close()
            raise
    return ioc


@contextlib.contextmanager
def twin_ioc(bench: str | Path | None = None, *, set_environ: bool = True, **kwargs) -> Iterator[TwinIOCProcess]:
    """``start_twin_ioc(bench, **kwargs)`` for the block, closed at its end.

    With ``set_environ``, ``os.environ`` holds the IOC's ``env`` inside the block (restored after),
    so that CA clients made there (caproto's, ophyd's devices) find it.
    """
    ioc = start_twin_ioc(bench, **kwargs)
    try:
        with environ(ioc.env) if set_environ else contextlib.nullcontext():
            yield ioc
    finally:
        ioc.close()
