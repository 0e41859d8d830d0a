"""The service config file: validated with errors that name the key; CLI options win over it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gainloop.config import ConfigError, load_config

from .conftest import REPO

pytestmark = pytest.mark.slow(seconds=45)  # one of the longest modules: it runs early (tests/conftest.py)


def test_the_example_config_is_valid_and_gives_a_campaign_config():
    conf = load_config(REPO / "examples" / "gainloop.toml")
    cfg = conf.campaign_config(max_trials=3)
    assert cfg.strategy == "nested" and cfg.max_trials == 3 and cfg.budget_lab_h == 24.0
    assert cfg.bench_file is None and cfg.twin_seed == 0
    assert conf.catalog.api_key_env == "TILED_API_KEY"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[optimizer]\nstrategy = 'genetic'\n", "optimizer.strategy"),
        ("[budgets]\nlab_hours = -1\n", "budgets.lab_hours"),
        ("[limits]\ndoping_min = 5\ndoping_max = 2\n", "doping_max must be above doping_min"),
        ("[catalog]\napi_key = 'x'\n", "catalog.api_key: unknown key"),
        ("[optimiser]\nseed = 1\n", "optimiser: unknown key"),
        ("[budgets\n", "not valid TOML"),
        ("[qserver]\ncontrol_port = 99999\n", "qserver.control_port"),
        ("[qserver]\nredis = ''\n", "qserver.redis"),
        ("[sweep]\nstrategies = ['genetic']\n", "sweep.strategies"),
        ("[sweep]\nscheduler = 'tcp://h:8786'\nworkers = 2\n", "leave them out with a scheduler"),
        ("[sweep]\nworkers = 0\n", "sweep.workers"),
        ("[server]\nhost = ''\n", "server.host"),
        ("[server]\nprocesses = 0\n", "server.processes"),
        ("[server]\nredis_uri = 'redis://:pw@h:6379/1'\n", "redis_uri must not carry a password"),
        ("[ioc]\ninterfaces = []\n", "ioc.interfaces"),
        ("[ioc]\ntime_scale = 0\n", "ioc.time_scale"),
    ],
)
def test_a_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "gainloop.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gainloop.cli", *args], capture_output=True, text=True, timeout=600)


def test_campaign_run_takes_its_options_from_the_config_and_the_command_line_wins(tmp_path):
    path = tmp_path / "gainloop.toml"
    path.write_text(
        "[optimizer]\nstrategy = 'random'\nseed = 4\n[budgets]\nmax_trials = 5\nlab_hours = 100\n"
        f"[catalog]\ndata_dir = '{tmp_path / 'data'}'\n"
    )
    proc = _cli("campaign", "run", "--config", str(path), "--max-trials", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["trials"] == 1  # the command line won over max_trials = 5
    from gainloop.campaign import rebuild_trials
    from gainloop.catalog import Catalog

    with Catalog(data_dir_path=tmp_path / "data") as cat:  # the config's data folder was used
        cfg, trials, _, _ = rebuild_trials(cat, out["campaign_uid"])
    assert cfg.strategy == "random" and cfg.seed == 4 and len(trials) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[optimizer]\nbatch_size = 0\n", "optimizer.batch_size"),
    ],
)
def test_campaign_run_refuses_a_bad_config_before_measuring(tmp_path, text, message):
    # (a fluence above the bench's limit: tests/faults/test_security.py)
    path = tmp_path / "gainloop.toml"
    path.write_text(text + f"[catalog]\ndata_dir = '{tmp_path / 'data'}'\n")
    proc = _cli("campaign", "run", "--config", str(path), "--max-trials", "1")
    assert proc.returncode == 2
    assert message in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr


def test_every_catalog_command_takes_its_catalog_and_bench_from_the_config(tmp_path, monkeypatch):
    """measure, replay, campaign status and report read [catalog] / [bench] from --config or $GAINLOOP_CONFIG."""
    from typer.testing import CliRunner

    from gainloop.cli import app

    folder = tmp_path / "from-config"
    path = tmp_path / "gainloop.toml"
    path.write_text(f'[catalog]\ndata_dir = "{folder}"\n\n[bench]\ntwin_seed = 3\n')
    monkeypatch.delenv("GAINLOOP_DATA_DIR", raising=False)
    monkeypatch.delenv("GAINLOOP_CONFIG", raising=False)
    runner = CliRunner()
    measured = runner.invoke(
        app,
        ["measure", "ase_point", "--sample", "cas_doped-film", "--fluence", "500", "--stripe-length", "1000",
         "--config", str(path), "--json"],
    )  # fmt: skip
    assert measured.exit_code == 0, measured.output
    out = json.loads(measured.stdout.strip().splitlines()[-1])
    assert out["catalog"] == str(folder / "catalog")
    monkeypatch.setenv("GAINLOOP_CONFIG", str(path))  # the same file through the environment
    replayed = runner.invoke(app, ["replay", out["uid"], "--json"])
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.stdout.strip().splitlines()[-1])["uid"] == out["uid"]
    status = runner.invoke(app, ["campaign", "status", "no-such-campaign"])
    assert status.exit_code == 2 and str(folder / "catalog") in " ".join(status.output.split())
    bad = tmp_path / "bad.toml"
    bad.write_text("[catalog]\nurl = 'x'\n")
    refused = runner.invoke(app, ["replay", out["uid"], "--config", str(bad)])
    assert refused.exit_code == 2 and "url" in refused.output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_servers_and_the_sweep_take_their_tables_from_the_config(tmp_path, monkeypatch):
    """qserver start|reconcile read [qserver] / [bench] / [catalog]; catalog upload-backup [catalog];
    sweep [sweep] (catalog serve [server]: tests/test_catalog_server.py)."""
    from typer.testing import CliRunner

    from gainloop.cli import app

    monkeypatch.delenv("GAINLOOP_DATA_DIR", raising=False)
    monkeypatch.delenv("GAINLOOP_CONFIG", raising=False)
    dead = _free_port()  # nothing listens there: the commands that reach it name it in their error
    folder, state = tmp_path / "from-config", tmp_path / "qstate"
    path = tmp_path / "gainloop.toml"
    path.write_text(
        f'[catalog]\ndata_dir = "{folder}"\n[bench]\ntwin_seed = 7\n'
        f'[qserver]\nhost = "127.0.0.1"\ncontrol_port = 61234\ninfo_port = 61235\n'
        f'redis = "127.0.0.1:{dead}"\nredis_prefix = "lab3"\nstate_dir = "{state}"\n'
        f'[sweep]\nstrategies = ["random"]\nseeds = "0-1"\nscheduler = "tcp://127.0.0.1:{dead}"\n'
    )
    runner = CliRunner()
    started = runner.invoke(app, ["qserver", "start", "--print-command", "--config", str(path)])
    assert started.exit_code == 0, started.output
    command = started.stdout
    assert "tcp://127.0.0.1:61234" in command and "tcp://127.0.0.1:61235" in command
    assert f"127.0.0.1:{dead}" in command and "lab3" in command
    assert "GAINLOOP_TWIN_SEED=7" in command and str(folder) in command
    assert (state / "existing_plans_and_devices.yaml").is_file()
    # the command line wins
    wins = runner.invoke(app, ["qserver", "start", "--print-command", "--control-port", "61240", "--config", str(path)])
    assert wins.exit_code == 0 and "tcp://127.0.0.1:61240" in wins.stdout and "61234" not in wins.stdout

    reconciled = runner.invoke(app, ["qserver", "reconcile", "--config", str(path)])
    assert reconciled.exit_code == 2
    assert f"Redis at 127.0.0.1:{dead}" in " ".join(reconciled.output.split())

    uploaded = runner.invoke(app, ["catalog", "upload-backup", "--config", str(path), "--json"])
    assert uploaded.exit_code == 0, uploaded.output
    out = json.loads(uploaded.stdout.strip().splitlines()[-1])
    assert out["backup_dir"].startswith(str(folder)) and out["counts"]["failed"] == 0

    swept = runner.invoke(app, ["sweep", "--config", str(path)])  # strategies, seeds, scheduler: the file's
    assert swept.exit_code == 2
    assert f"127.0.0.1:{dead}" in " ".join(swept.output.split()) and "scheduler" in swept.output


def test_campaign_run_twin_wins_over_the_configs_bench_file(tmp_path):
    """--twin on the command line drives the twin even when the config names a real bench file (no IOC runs)."""
    path = tmp_path / "gainloop.toml"
    path.write_text(
        f"[bench]\nfile = '{REPO / 'examples' / 'twin_bench.toml'}'\n"
        "[optimizer]\nstrategy = 'random'\nseed = 2\n"
        f"[catalog]\ndata_dir = '{tmp_path / 'data'}'\n"
    )
    proc = _cli("campaign", "run", "--config", str(path), "--twin", "--max-trials", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["trials"] == 1 and "SIM:LabTime" not in str(out.get("lab_clock"))  # the twin's own clock, not CA
    from gainloop.campaign import rebuild_trials
    from gainloop.catalog import Catalog

    with Catalog(data_dir_path=tmp_path / "data") as cat:
        cfg, _, _, _ = rebuild_trials(cat, out["campaign_uid"])
    assert cfg.bench_file is None  # stored as a twin campaign: a resume opens the twin too
