"""`gainloop catalog serve`: a real Tiled server on the machine's PostgreSQL, behind an API key.

One server per module (a subprocess on 127.0.0.1, a free port, a fresh uniquely named
database that is dropped at the end). Skipped only when no PostgreSQL listens on
127.0.0.1:5432.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from gainloop.catalog import Catalog
from gainloop.catalog_server import CatalogServerError, ServerSettings, mask_password, startup_line

PG_HOST, PG_PORT = "127.0.0.1", 5432
SECRET_ENV = ("GAINLOOP_TILED_API_KEY", "TILED_SINGLE_USER_API_KEY", "TILED_API_KEY", "GAINLOOP_POSTGRES_URI")
START_TIMEOUT_S = 60.0


def _pg_listening() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    return {**env, **extra}


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "gainloop.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else _clean_env(),
    )


async def _pg(sql: str, password: str | None = None) -> None:
    import asyncpg

    auth = f"postgres:{password}" if password else "postgres"
    conn = await asyncpg.connect(f"postgresql://{auth}@{PG_HOST}:{PG_PORT}/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _trust_accepts_a_password(password: str) -> bool:
    """Whether the server takes any password for postgres (trust auth), so a URI can carry one."""
    try:
        asyncio.run(_pg("SELECT 1", password))
        return True
    except Exception:
        return False


class Server:
    def __init__(self, proc, url, api_key, postgres_uri, password, out: Path, err: Path):
        self.proc, self.url, self.api_key = proc, url, api_key
        self.postgres_uri, self.password = postgres_uri, password
        self._out, self._err = out, err

    @property
    def output(self) -> str:
        return self._out.read_text() + self._err.read_text()


def _start(postgres_uri: str | None, data_dir: Path | None, logs: Path, env: dict[str, str], *, config=None):
    """Start ``gainloop catalog serve`` (the options, or ``config``: ``(file, port)``); wait for /healthz."""
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    with out.open("w") as fo, err.open("w") as fe:
        if config is None:
            port = _free_port()
            args = ["catalog", "serve", "--postgres", postgres_uri, "--port", str(port), "--data-dir", str(data_dir)]
        else:
            path, port = config
            args = ["catalog", "serve", "--config", str(path)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "gainloop.cli", *args],
            stdout=fo,
            stderr=fe,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(trust_env=False) as client:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}): {out.read_text()} {err.read_text()}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the server did not start in {START_TIMEOUT_S} s: {err.read_text()}")
            try:
                if client.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    return proc, url, out, err


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def database():
    """A fresh PostgreSQL database (and a password the URI can carry if auth is trust), dropped at the end."""
    if not _pg_listening():
        pytest.skip(f"no PostgreSQL listening on {PG_HOST}:{PG_PORT} (the catalog server needs one)")
    name = f"gainloop_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    password = "pgSecret" + secrets.token_hex(8)
    password = password if _trust_accepts_a_password(password) else None
    auth = f"postgres:{password}" if password else "postgres"
    try:
        yield f"postgresql://{auth}@{PG_HOST}:{PG_PORT}/{name}", password
    finally:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def server(database, tmp_path_factory):
    """`gainloop catalog serve` with a generated key (read back from its start-up line)."""
    postgres_uri, password = database
    logs = tmp_path_factory.mktemp("server")
    proc, url, out, err = _start(postgres_uri, logs / "data", logs, _clean_env())
    try:
        startup = out.read_text().splitlines()[0]
        assert startup.startswith(f"gainloop catalog: Tiled server at {url} on ")
        api_key = startup.rsplit("shown only now): ", 1)[1].strip()
        assert len(api_key) == 64 and api_key.isalnum()
        yield Server(proc, url, api_key, postgres_uri, password, out, err)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def measured(server, tmp_path_factory):
    """One `gainloop measure` run stored through the server with the key in $TILED_API_KEY."""
    data_dir = tmp_path_factory.mktemp("client")
    proc = _cli(
        "measure", "ase_fluence_scan", "--sample", "cas_doped-film", "--twin", "--catalog", server.url,
        "--data-dir", str(data_dir), "--json",
        env=_clean_env(TILED_API_KEY=server.api_key),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), data_dir, proc


# anonymous and wrong-key reads and writes (401): tests/faults/test_security.py


def test_measure_stores_the_run_through_the_server(server, measured):
    out, data_dir, _ = measured
    assert 60 < out["threshold_uJ_cm2"] < 130
    assert out["catalog"] == server.url
    with Catalog(server.url, data_dir_path=data_dir, api_key=server.api_key) as cat:
        run = cat.run(out["uid"])
        assert {"primary", "analysis"} <= set(run)
        assert run.metadata["start"]["plan_name"] == "ase_fluence_scan"
        assert run.metadata["stop"]["exit_status"] == "success"
        primary = run["primary"].read()
        assert len(primary["pump_fluence"]) > 5
        stored = run["analysis"].read()
        assert float(stored["threshold_uJ_cm2"].values[0]) == pytest.approx(out["threshold_uJ_cm2"])


def test_event_tables_live_in_postgresql(server, measured):
    import asyncpg

    async def tables():
        conn = await asyncpg.connect(server.postgres_uri, timeout=5)
        try:
            return [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")]
        finally:
            await conn.close()

    assert any(name.startswith("table_") for name in asyncio.run(tables()))


def test_secrets_never_reach_the_logs_or_the_run(server, measured):
    out, data_dir, client_proc = measured
    # a key in a query string (as a browser link would carry it) is redacted in the access log
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(f"{server.url}/api/v1/metadata/?api_key={server.api_key}").status_code == 200
    time.sleep(0.3)  # let the access log line reach the file
    first, *rest = server.output.splitlines()
    assert server.api_key in first  # printed once, at start-up (it was generated)
    after = "\n".join(rest)
    assert server.api_key not in after
    assert "api_key=[redacted]" in after
    assert "(singleuser)" in after  # the writes really went through the log
    assert server.api_key not in client_proc.stdout + client_proc.stderr
    if server.password:
        assert server.password not in server.output
        assert mask_password(server.postgres_uri) in first
    with Catalog(server.url, data_dir_path=data_dir, api_key=server.api_key) as cat:
        stored = json.dumps(dict(cat.run(out["uid"]).metadata), default=str)
    assert server.api_key not in stored
    if server.password:
        assert server.password not in stored


def test_serve_takes_the_server_table_of_the_config(database, tmp_path):
    postgres_uri, password = database
    no_password = postgres_uri.replace(f"postgres:{password}@", "postgres@") if password else postgres_uri
    port, key = _free_port(), secrets.token_hex(16)
    path = tmp_path / "gainloop.toml"
    path.write_text(
        f"[server]\npostgres_uri = '{no_password}'\nhost = '127.0.0.1'\nport = {port}\n"
        f"data_dir = '{tmp_path / 'arrays'}'\napi_key_env = 'LAB_CATALOG_KEY'\n"
    )
    proc, url, out, _err = _start(None, None, tmp_path, _clean_env(LAB_CATALOG_KEY=key), config=(path, port))
    try:
        assert url == f"http://127.0.0.1:{port}"  # the file's port and interface
        first = out.read_text().splitlines()[0]
        assert "API key from $LAB_CATALOG_KEY" in first and key not in first
        with httpx.Client(trust_env=False, timeout=5) as client:
            assert client.get(f"{url}/api/v1/metadata/").status_code == 401
            ok = client.get(f"{url}/api/v1/metadata/", headers={"Authorization": f"Apikey {key}"})
            assert ok.status_code == 200
    finally:
        _stop(proc)
    assert (tmp_path / "arrays").is_dir()  # the file's data folder


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\npostgres_uri = 'postgresql://u:hunter2@h/db'\n", "must not carry a password"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\napi_key_env = 'not a name'\n", "server.api_key_env"),
    ],
)
def test_a_bad_server_table_is_refused_before_anything_starts(tmp_path, text, message):
    path = tmp_path / "gainloop.toml"
    path.write_text(text)
    proc = _cli("catalog", "serve", "--config", str(path), timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr


def test_only_a_generated_key_is_shown_at_start_up(tmp_path):
    key = secrets.token_hex(16)
    from_env = ServerSettings.resolve(data_dir=tmp_path, environ={"GAINLOOP_TILED_API_KEY": key})
    line = startup_line(from_env, "http://127.0.0.1:8000")
    assert key not in line and "API key from $GAINLOOP_TILED_API_KEY" in line
    generated = ServerSettings.resolve(data_dir=tmp_path, environ={})
    assert generated.api_key in startup_line(generated, "http://127.0.0.1:8000")


def test_unreachable_postgresql_is_a_one_line_error(tmp_path):
    port = _free_port()  # nothing listens there
    proc = _cli(
        "catalog", "serve", "--postgres", f"postgresql://postgres:pw@127.0.0.1:{port}/gainloop",
        "--port", "0", "--data-dir", str(tmp_path), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot reach PostgreSQL at postgresql://postgres:***@127.0.0.1:")
    assert "start it or pass --postgres URI" in lines[0]
    assert "Traceback" not in proc.stderr


def test_settings_resolve_and_never_show_secrets(tmp_path):
    s = ServerSettings.resolve(
        "postgres://u:hunter2@db.example:5433/runs", data_dir=tmp_path, environ={"TILED_SINGLE_USER_API_KEY": "abc123"}
    )
    assert s.catalog_uri == "postgresql+asyncpg://u:hunter2@db.example:5433/runs"
    assert s.tabular_uri == "postgresql://u:hunter2@db.example:5433/runs"
    assert s.postgres_display == "postgresql://u:***@db.example:5433/runs"
    assert (s.api_key, s.api_key_source, s.host, s.port) == ("abc123", "$TILED_SINGLE_USER_API_KEY", "127.0.0.1", 8000)
    assert "hunter2" not in repr(s) and "abc123" not in repr(s)
    env = {"GAINLOOP_TILED_API_KEY": "first1", "TILED_SINGLE_USER_API_KEY": "second2"}
    assert ServerSettings.resolve(data_dir=tmp_path, environ=env).api_key == "first1"
    assert ServerSettings.resolve(data_dir=tmp_path, api_key="flag3", environ=env).api_key_source == "--api-key"
    generated = ServerSettings.resolve(data_dir=tmp_path, environ={})
    assert generated.api_key_source == "generated" and len(generated.api_key) == 64
    assert generated.postgres_uri == "postgresql://postgres@127.0.0.1:5432/gainloop"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"postgres": "mysql://x@h/db"}, "the scheme must be postgresql://"),
        ({"postgres": "postgresql://postgres@127.0.0.1:5432/"}, "name the database"),
        ({"postgres": "postgresql://postgres@127.0.0.1:99999/db"}, "bad PostgreSQL URI"),
        ({"api_key": "not-alnum"}, "letters and digits only"),
        ({"port": 70000}, "out of range"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(CatalogServerError, match=message):
        ServerSettings.resolve(data_dir=tmp_path, environ={}, **kwargs)
