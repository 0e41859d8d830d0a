"""The service config file: validated with errors that name the key; CLI options win over it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gainloop.config import ConfigError, load_config

from .conftest import REPO


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
