"""Services the fault scenarios share: a PostgreSQL database and Tiled servers on it, Redis.

``FaultEnv(workdir)`` starts nothing until asked; ``close()`` stops what it started and
drops its databases. Servers bind 127.0.0.1 on free ports.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
SECRET_ENV = ("GAINLOOP_TILED_API_KEY", "TILED_SINGLE_USER_API_KEY", "TILED_API_KEY", "GAINLOOP_POSTGRES_URI")


class ServiceMissing(RuntimeError):
    """A service the scenario needs is not running on this machine (the message names it)."""


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any secret gainloop or Tiled would pick up, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    return {**env, **extra}


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class TiledServer:
    """A ``gainloop catalog serve`` subprocess on PostgreSQL."""

    proc: subprocess.Popen
    url: str
    api_key: str
    postgres_uri: str
    port: int
    data_dir: Path
    log_dir: Path
    processes: int = 1
    redis: str | None = None

    def output(self) -> str:
        return "".join(p.read_text() for p in sorted(self.log_dir.glob("*.txt")))

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def restart(self, timeout_s: float = 60.0) -> float:
        """Start the server again on the same port, database and key; return the wall seconds it took."""
        self.stop()
        t0 = time.monotonic()
        self.proc = _spawn(
            self.postgres_uri, self.port, self.data_dir, self.log_dir, self.api_key, self.processes, self.redis
        )
        wait_healthy(self.proc, self.url, timeout_s, self.log_dir)
        return time.monotonic() - t0


def _spawn(
    postgres_uri: str,
    port: int,
    data_dir: Path,
    log_dir: Path,
    api_key: str,
    processes: int = 1,
    redis: str | None = None,
) -> subprocess.Popen:
    n = len(list(log_dir.glob("stdout*.txt")))
    out, err = (log_dir / f"stdout{n}.txt").open("w"), (log_dir / f"stderr{n}.txt").open("w")
    args = ["catalog", "serve", "--postgres", postgres_uri, "--port", str(port), "--data-dir", str(data_dir)]
    if processes > 1:
        args += ["--processes", str(processes), "--redis", redis]
    with out, err:
        return subprocess.Popen(
            [sys.executable, "-m", "gainloop.cli", *args],
            stdout=out,
            stderr=err,
            env=clean_env(GAINLOOP_TILED_API_KEY=api_key),
        )


def wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float, log_dir: Path) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False) as client:
        while True:
            if proc.poll() is not None:
                logs = "".join(p.read_text() for p in sorted(log_dir.glob("*.txt")))
                raise RuntimeError(f"the Tiled server exited ({proc.returncode}): {logs[-2000:]}")
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the Tiled server at {url} did not answer in {timeout_s} s")
            try:
                if client.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)


class FaultEnv:
    """Lazily started services for fault scenarios, under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._databases: list[str] = []
        self._servers: list[TiledServer] = []
        self._shared: TiledServer | None = None

    # -- PostgreSQL
    def postgres_database(self) -> str:
        """A fresh database on the machine's PostgreSQL (dropped on ``close``); its URI."""
        if not listening(PG_HOST, PG_PORT):
            raise ServiceMissing(f"PostgreSQL is not listening on {PG_HOST}:{PG_PORT}")
        name = f"gainloop_fault_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
        self._databases.append(name)
        return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"

    # -- Tiled
    def tiled_server(self, *, shared: bool = True, timeout_s: float = 60.0, processes: int = 1) -> TiledServer:
        """A Tiled server on a fresh PostgreSQL database, behind a generated API key.

        ``shared``: the same server for every caller of this env (cheap); else a new one
        (for scenarios that stop and restart it). ``processes`` > 1: that many server processes
        (``--processes``), sharing the machine's Redis (a database chosen by the port) as their
        streaming cache.
        """
        if shared and self._shared is not None and self._shared.proc.poll() is None:
            return self._shared
        uri = self.postgres_database()
        port = free_port()
        root = self.workdir / f"tiled-{port}"
        (root / "logs").mkdir(parents=True)
        key = secrets.token_hex(32)
        redis = None
        if processes > 1:
            self.require_redis()
            redis = f"redis://{REDIS_HOST}:{REDIS_PORT}/{1 + port % 15}"
        proc = _spawn(uri, port, root / "data", root / "logs", key, processes, redis)
        server = TiledServer(
            proc, f"http://127.0.0.1:{port}", key, uri, port, root / "data", root / "logs", processes, redis
        )
        self._servers.append(server)
        wait_healthy(proc, server.url, timeout_s, server.log_dir)
        if shared:
            self._shared = server
        return server

    # -- Redis
    @staticmethod
    def require_redis() -> None:
        if not listening(REDIS_HOST, REDIS_PORT):
            raise ServiceMissing(f"Redis is not listening on {REDIS_HOST}:{REDIS_PORT}")

    def close(self) -> None:
        for s in self._servers:
            s.stop()
        for name in self._databases:
            try:
                asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except Exception:
                pass
        self._servers.clear()
        self._databases.clear()

    def __enter__(self) -> FaultEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
