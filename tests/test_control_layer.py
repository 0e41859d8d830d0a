"""ophyd's control layer of the bench (``[bench].control_layer``) and what the devices need of each layer.

The devices over Channel Access are tested under both layers in ``test_devices_epics.py``,
``test_safety_device.py`` and ``faults/test_device_faults.py`` (the ``control_layer`` fixture). Here: the
bench-file key and how a layer is chosen or refused, the read-back comparison used where a layer hands no
put status, the data a put through libca sends, and ``gainloop measure`` under pyepics end to end (a user's
report: a traceback comparing the read-back of a char waveform, the sample stage's status failed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest

from devices import BenchConfigError, BenchConnectionError, LimitError, _ca, connect_bench, parse_bench
from devices._ca import _as_text, _same, ensure_control_layer, resolve_control_layer
from harness.ioc import EXAMPLE_BENCH, REPO, twin_ioc

PYEPICS = importlib.util.find_spec("epics") is not None
NO_PYEPICS = "pyepics is not installed: pip install pyepics==3.5.10 (the test extra)"


def _bench_dict(**bench) -> dict:
    data = tomllib.loads(EXAMPLE_BENCH.read_text())
    data["bench"].update(bench)
    return data


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``importlib.util.find_spec`` say ``modules`` are not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        _ca.importlib.util, "find_spec", lambda name, *args: None if name in modules else real(name, *args)
    )


# ---------------------------------------------------------------- the bench file
def test_control_layer_key_is_auto_by_default_and_names_a_layer():
    assert parse_bench(_bench_dict()).bench.control_layer == "auto"
    for layer in ("auto", "pyepics", "caproto"):
        assert parse_bench(_bench_dict(control_layer=layer)).bench.control_layer == layer
    with pytest.raises(BenchConfigError, match=r"bench\.control_layer: Input should be 'auto', 'pyepics' or 'caproto'"):
        parse_bench(_bench_dict(control_layer="epics"))


def test_the_example_bench_file_documents_the_key():
    text = EXAMPLE_BENCH.read_text()
    (line,) = [line for line in text.splitlines() if "control_layer" in line]
    assert line.startswith('# control_layer = "auto"') and "pyepics" in line and "caproto" in line


def test_sample_ids_must_fit_an_epics_string():
    data = _bench_dict()
    data["stage"]["library"][0]["id"] = "f" * 40
    with pytest.raises(BenchConfigError) as err:
        parse_bench(data)
    assert f"sample id {'f' * 40!r} has 40 characters; at most 39 fit the stage's sample PVs" in str(err.value)
    data["stage"]["library"][0]["id"] = "f" * 39
    assert parse_bench(data).stage.library[0].id == "f" * 39


# ---------------------------------------------------------------- choosing the layer
@pytest.mark.parametrize(
    ("env", "installed", "expected"),
    [
        (None, True, "pyepics"),  # ophyd's own order: pyepics if installed ...
        (None, False, "caproto"),  # ... else caproto
        ("caproto", True, "caproto"),  # $OPHYD_CONTROL_LAYER first
        ("pyepics", True, "pyepics"),
        ("any", True, "pyepics"),  # ophyd's "any": its order
    ],
)
def test_auto_is_what_ophyd_itself_does(monkeypatch, env, installed, expected):
    if env is None:
        monkeypatch.delenv("OPHYD_CONTROL_LAYER", raising=False)
    else:
        monkeypatch.setenv("OPHYD_CONTROL_LAYER", env)
    if not installed:
        _hide(monkeypatch, "epics")
    assert resolve_control_layer("auto") == expected
    assert resolve_control_layer("caproto") == "caproto" and resolve_control_layer("pyepics") == "pyepics"


def test_a_layer_asked_for_but_not_installed_is_a_clear_error(monkeypatch):
    import ophyd

    _hide(monkeypatch, "epics")
    before = ophyd.cl.name
    with pytest.raises(BenchConnectionError) as err:
        connect_bench(parse_bench(_bench_dict(prefix="NOTHERE:", control_layer="pyepics")))
    assert str(err.value) == (
        "control_layer = 'pyepics': the Python package pyepics is not installed here; install it "
        "(pip install pyepics) or set [bench] control_layer = 'caproto' in the bench file"
    )
    monkeypatch.setenv("OPHYD_CONTROL_LAYER", "pyepics")  # auto, told by the environment
    with pytest.raises(BenchConnectionError, match=r"control_layer = 'auto' \(-> pyepics\): .*pip install pyepics"):
        connect_bench(parse_bench(_bench_dict(prefix="NOTHERE:")))
    _hide(monkeypatch, "epics", "caproto")
    with pytest.raises(BenchConnectionError, match=r"package caproto is not installed.*pip install caproto"):
        ensure_control_layer("caproto")
    assert ophyd.cl.name == before  # nothing was switched


@pytest.mark.skipif(not PYEPICS, reason=NO_PYEPICS)
def test_the_bench_files_layer_wins_and_switching_back_works(ca_pool, monkeypatch):
    """``control_layer = "pyepics"`` with ``$OPHYD_CONTROL_LAYER`` = caproto: pyepics (the file wins); the
    next bench, on auto, is caproto again, and the first bench's signals keep their layer."""
    import ophyd

    monkeypatch.setenv("OPHYD_CONTROL_LAYER", "caproto")
    cfg = parse_bench(_bench_dict(prefix="NOTHERE:", control_layer="pyepics", connection_timeout_s=0.3))
    try:
        with pytest.raises(BenchConnectionError, match=r"did not connect within 0\.3 s"):
            connect_bench(cfg)
        assert ophyd.cl.name == "pyepics"
        with pytest.raises(BenchConnectionError, match=r"did not connect within 0\.3 s"):
            connect_bench(parse_bench(_bench_dict(prefix="NOTHERE:", connection_timeout_s=0.3)))
        assert ophyd.cl.name == "caproto"
    finally:
        ophyd.set_cl("caproto")


# ---------------------------------------------------------------- what a layer without put status compares
@pytest.mark.parametrize(
    ("got", "value", "same"),
    [
        ("cas-dfb", "cas-dfb", True),  # DBR_STRING
        ("cas-dfb", "cas-film", False),
        (np.frombuffer(b"cas-dfb\0\0\0", dtype=np.uint8), "cas-dfb", True),  # a char waveform, NUL-padded
        (np.array([99, 97, 115], dtype=np.int8), "cas", True),  # signed chars (pyepics)
        (np.array([99, 97, 115]), "cas-dfb", False),
        (np.array(["cas-dfb"]), "cas-dfb", True),  # an array of one string
        (b"cas-dfb\0", "cas-dfb", True),
        (["Open"], "Open", True),  # an enum read as its string
        (1, 1, True),  # an enum (or int) read as a number
        (0, 1, False),
        (100.0, 100.0, True),
        (100.0 * (1 + 1e-12), 100.0, True),
        (101.0, 100.0, False),
        (np.array([1.0, 2.0, 0.0]), [1.0, 2.0], True),  # a waveform longer than what was written
        (np.array([1.0]), [1.0, 2.0], False),
        (float("nan"), 1.0, False),
        ("1.0", 1.0, False),  # text where a number was written
        (None, 1.0, False),
    ],
)
def test_read_back_comparison(got, value, same):
    assert _same(got, value) is same


def test_text_of_string_pv_values():
    assert _as_text(np.frombuffer(b"ok\0junk", dtype=np.uint8)) == "ok"
    assert _as_text(np.array([1.5, 2.5])) is None and _as_text(3.0) is None and _as_text(np.array([300, 1])) is None


@pytest.mark.skipif(not PYEPICS, reason=NO_PYEPICS)
def test_libca_put_data():
    """What a put through libca sends: text as DBR_STRING (at most 39 characters) or, to a char waveform, as
    chars with the terminator; integers in the channel's integer type; other numbers as DBR_DOUBLE."""
    from epics import dbr

    ftype, count, data = _ca._libca_data("cas-dfb", dbr.STRING, 1, "PV")
    assert (ftype, count, data[0].value) == (dbr.STRING, 1, b"cas-dfb")
    ftype, count, data = _ca._libca_data("cas-dfb", dbr.CHAR, 256, "PV")
    assert (ftype, count, bytes(bytearray(x & 0xFF for x in data))) == (dbr.CHAR, 8, b"cas-dfb\0")
    with pytest.raises(LimitError, match=r"PV: 'xxxx.*' has 40 characters; .* at most 39; nothing was sent"):
        _ca._libca_data("x" * 40, dbr.STRING, 1, "PV")
    assert _ca._libca_data("x" * 40, dbr.CHAR, 256, "PV")[1] == 41  # a char waveform holds it
    ftype, count, data = _ca._libca_data(True, dbr.ENUM, 1, "PV")
    assert (ftype, count, data[0]) == (dbr.ENUM, 1, 1)
    ftype, count, data = _ca._libca_data(np.int64(3), dbr.LONG, 1, "PV")
    assert (ftype, count, data[0]) == (dbr.LONG, 1, 3)
    ftype, count, data = _ca._libca_data(2.5, dbr.LONG, 1, "PV")  # not an integer: the server converts
    assert (ftype, count, data[0]) == (dbr.DOUBLE, 1, 2.5)
    ftype, count, data = _ca._libca_data(np.nan, dbr.DOUBLE, 1, "PV")
    assert ftype == dbr.DOUBLE and np.isnan(data[0])
    ftype, count, data = _ca._libca_data([1.0, 2.0, 3.0], dbr.DOUBLE, 2, "PV")
    assert (ftype, count, list(data)) == (dbr.DOUBLE, 2, [1.0, 2.0])


# ---------------------------------------------------------------- the user's command under pyepics
@pytest.mark.skipif(not PYEPICS, reason=NO_PYEPICS)
def test_measure_runs_under_pyepics_end_to_end(tmp_path, ca_pool):
    """`gainloop measure ase_fluence_scan --bench FILE` with ``control_layer = "pyepics"`` against the twin's
    IOC (with ``$OPHYD_CONTROL_LAYER`` = caproto: the file wins): the run completes on libca (mapped into the
    command's process), and libca registers with the loopback repeater on the repeater port (the pool's)
    instead of starting a caRepeater."""
    import psutil

    from gainloop.catalog import Catalog

    prefix = f"CL{os.getpid()}:"
    bench = tmp_path / "bench.toml"
    text = EXAMPLE_BENCH.read_text()
    assert text.count('prefix = "GL:"') == 1
    bench.write_text(text.replace('prefix = "GL:"', f'prefix = "{prefix}"\ncontrol_layer = "pyepics"'))
    cmd = [sys.executable, "-m", "gainloop.cli", "measure", "ase_fluence_scan", "--sample", "cas_doped-film"]
    cmd += ["--bench", str(bench), "--data-dir", str(tmp_path / "data"), "--json"]
    started = time.time()
    with twin_ioc(bench, time_scale=1e4, prefix=prefix, set_environ=False) as ioc:
        assert ioc.repeater_port == ca_pool.repeater.port
        registrations = ca_pool.repeater.registrations
        env = {**os.environ, **ioc.env, "OPHYD_CONTROL_LAYER": "caproto"}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        libca = False
        while proc.poll() is None and not libca:
            try:
                libca = any("libca" in os.path.basename(m.path) for m in psutil.Process(proc.pid).memory_maps())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert libca, "the command never loaded libca: it did not run on pyepics"
    assert "Traceback" not in err and "caRepeater" not in err, err
    assert ca_pool.repeater.registrations > registrations
    assert _repeaters_on(ca_pool.repeater.port, since=started) == []  # none was started, none outlives the test
    result = json.loads(out.strip().splitlines()[-1])
    assert 60 < result["threshold_uJ_cm2"] < 130
    with Catalog(data_dir_path=tmp_path / "data") as cat:
        run = cat.run(result["uid"])
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run.metadata["start"]["sample_id"] == "cas_doped-film"


def _repeaters_on(port: int, since: float) -> list[str]:
    """Repeater processes (caRepeater, caproto-repeater) started since ``since`` for repeater port ``port``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "cmdline", "create_time"]):
        try:
            line = " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])
            if proc.info["create_time"] < since - 1 or "repeater" not in line.lower():
                continue
            if proc.environ().get("EPICS_CA_REPEATER_PORT") == str(port):
                found.append(line)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


class _FakePV:
    def __init__(self, name: str, layer: _FakeLayer):
        self.name, self.layer, self.nelm = name, layer, 256

    def wait_for_connection(self, timeout):
        return not self.name.endswith("$") or self.layer.long_strings

    def get(self, **kwargs):
        return self.layer.text if self.name.endswith("$") else self.layer.text[:39]


class _FakeLayer:
    name = "fake"

    def __init__(self, text: str, long_strings: bool):
        self.text, self.long_strings, self.asked = text, long_strings, []

    def get_pv(self, name):
        self.asked.append(name)
        return _FakePV(name, self)


def test_the_reason_is_read_whole_from_the_long_string_else_from_the_pv(monkeypatch):
    monkeypatch.setattr(_ca, "_no_long_string", set())
    reason = "refused fluence 5000 uJ/cm^2: above the limit of 3000 uJ/cm^2"
    lsi = _FakeLayer(reason, long_strings=True)
    assert _ca._reason_from(lsi, "B:IL:Message", connect_timeout=0.1) == reason
    assert lsi.asked == ["B:IL:Message.VAL$"]
    plain = _FakeLayer(reason, long_strings=False)  # an IOC without IL:Message.VAL$
    assert _ca._reason_from(plain, "C:IL:Message", connect_timeout=0.1) == reason[:39]
    assert _ca._reason_from(plain, "C:IL:Message", connect_timeout=0.1) == reason[:39]
    assert plain.asked == ["C:IL:Message.VAL$", "C:IL:Message", "C:IL:Message"]  # not tried again
    assert _ca._long_string_name("C:IL:Msg.DESC") == "C:IL:Msg.DESC$"
    assert _ca._reason_from(plain, None) == ""


# ---------------------------------------------------------------- caproto's search sockets
def _shared_with_a_reuse_socket(sock) -> bool:
    """Whether another socket made as caproto makes its UDP sockets (SO_REUSEADDR, SO_REUSEPORT) can bind
    the port ``sock`` was given: what a second CA client's ephemeral bind can land on (devices/_ca.py)."""
    import socket

    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", sock.getsockname()[1]))
        return True
    except OSError:
        return False
    finally:
        other.close()


_SEARCH_SOCKET = """
import caproto, socket, sys
if sys.argv[1] == "bench":
    from devices import connect_bench  # noqa: F401 -- what a gainloop command imports
    from devices._ca import ensure_control_layer
    ensure_control_layer("caproto")
sock = caproto.bcast_socket()
sock.bind(("", 0))
print(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
"""


def test_caproto_search_sockets_get_a_port_of_their_own():
    """Two CA clients on one machine must not share a UDP search port (the IOCs' replies to one went to the
    other, and its search timed out against a live IOC): a search socket bound to port 0 is exclusive, while
    a socket bound to a chosen port keeps caproto's reuse options."""
    import socket

    import caproto

    exclusive = caproto.bcast_socket()  # the suite installs exclusive_search_ports (tests/conftest.py)
    exclusive.bind(("127.0.0.1", 0))
    fixed = caproto.bcast_socket()
    fixed.bind(("127.0.0.1", 0))
    port = fixed.getsockname()[1]
    fixed.close()
    fixed = caproto.bcast_socket()
    fixed.bind(("127.0.0.1", port))
    try:
        assert not _shared_with_a_reuse_socket(exclusive)
        assert fixed.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert _shared_with_a_reuse_socket(fixed)  # the kernel shares reuse sockets' ports: the hazard
    finally:
        exclusive.close()
        fixed.close()
    # in a new process: caproto alone gives the shared kind; choosing the caproto layer fixes it
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    got = {}
    for how in ("caproto", "bench"):
        out = subprocess.run(
            [sys.executable, "-c", _SEARCH_SOCKET, how], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr
        got[how] = tuple(int(x) != 0 for x in out.stdout.split())
    assert got == {"caproto": (True, True), "bench": (False, False)}
