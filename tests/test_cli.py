"""The gainloop CLI as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from twin.presets import default_presets_path


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "gainloop.cli", *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}\n{proc.stdout}")
    return proc


@pytest.fixture(scope="module")
def reproduce_json():
    proc = run("twin", "reproduce", "--json")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_reproduce_json_lists_every_row_with_its_keys(reproduce_json):
    assert len(reproduce_json) >= 27
    for row in reproduce_json:
        assert set(row) == {"id", "sample", "unit", "paper", "twin", "tol", "ok", "basis"}
        assert row["ok"] is True, row
        basis = row["basis"]
        assert basis == "predicted" or (isinstance(basis, list) and basis and all(isinstance(b, str) for b in basis))


def test_reproduce_table_is_readable(reproduce_json):
    proc = run("twin", "reproduce")  # stdout a pipe: rich would squeeze the table into 80 columns
    assert "ase_threshold_cas_doped" in proc.stdout
    lines = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") > 2}
    for row in reproduce_json:  # each row whole on one line, with its numbers and its basis
        line = lines[row["id"]]
        cells = [c.strip() for c in line.split("│")[1:-1]]
        assert cells[3:7] == [f"{row['paper']:g}", f"{row['twin']:.4g}", f"{row['tol']:g}", "pass"], line
        assert cells[7] == ("predicted" if row["basis"] == "predicted" else "calibrated: " + ", ".join(row["basis"]))
    assert "numbers reproduced within tolerance" in proc.stdout
    assert "free parameters for" in proc.stdout and "predicted" in proc.stdout


def test_predict_json_has_the_keys_with_units():
    out = json.loads(run("twin", "predict", "--sample", "cas_doped", "--json").stdout)
    for key in (
        "gain_threshold_N",
        "ase_threshold_uJ_cm2",
        "dfb_threshold_uJ_cm2",
        "gnet_2200_per_cm",
        "tau_xx_ps",
        "tau_gain_ps",
    ):
        assert isinstance(out[key], float), key
    assert 0.3 < out["gain_threshold_N"] < 0.6
    assert out["tau_gain_ps"] == pytest.approx(280.0, rel=0.1)
    cas = json.loads(run("twin", "predict", "--sample", "cas", "--json").stdout)
    assert cas["tau_xx_ps"] == pytest.approx(485.0, rel=0.05)
    lighter = json.loads(run("twin", "predict", "--sample", "cas_doped", "--doping", "5", "--json").stdout)
    assert lighter["gain_threshold_N"] > 1.0
    assert lighter["ase_threshold_uJ_cm2"] > out["ase_threshold_uJ_cm2"]


def test_optimum_json():
    out = json.loads(run("twin", "optimum", "--sample", "cas_doped", "--json").stdout)
    assert set(out) == {"threshold_uJ_cm2", "stripe_length_um", "doping", "sample"}
    assert out["sample"] == "cas_doped"
    assert 0 < out["threshold_uJ_cm2"] < 90


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("twin", "predict", "--sample", "nope"), "unknown sample 'nope'"),
        (("twin", "predict", "--sample", "cas_doped", "--doping", "9"), "outside the model's range"),
        (("twin", "predict", "--sample", "cas_doped", "--doping", "nan"), "doping must be finite"),
        (("twin", "optimum", "--presets", "/nonexistent.toml"), "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line_not_a_traceback(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_user_presets_file_is_used(tmp_path):
    text = default_presets_path().read_text().replace("tau_xx_ps = 540.0", "tau_xx_ps = 300.0")
    p = tmp_path / "mine.toml"
    p.write_text(text)
    out = json.loads(run("twin", "predict", "--sample", "cas", "--presets", str(p), "--json").stdout)
    assert out["tau_xx_neutral_ps"] == pytest.approx(300.0, rel=0.01)


def test_malformed_presets_name_the_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(default_presets_path().read_text().replace("confinement = 0.5", "confinement = 1.5", 1))
    proc = run("twin", "predict", "--sample", "cas", "--presets", str(p), check=False)
    assert proc.returncode == 2
    assert "film.confinement" in proc.stderr


def _every_command():
    """``(path, click command)`` of the app and of every group and command under it."""
    import click
    import typer

    from gainloop.cli import app

    def walk(cmd, path):
        yield path, cmd
        if hasattr(cmd, "list_commands"):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                yield from walk(cmd.get_command(ctx, name), [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_every_help_shows_the_config_tables_its_source_names():
    """Help texts are plain text: a config table such as [sweep] in a docstring or an option's help
    shows in ``--help`` as written (Rich markup took it for a style tag and dropped it)."""
    import re

    from typer.testing import CliRunner

    from gainloop.cli import app

    runner = CliRunner()
    shown_somewhere = set()
    for path, cmd in _every_command():
        source = " ".join([cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)])
        names = set(re.findall(r"\[[a-z_]+\]", source))
        shown = runner.invoke(app, [*path, "--help"], terminal_width=80)
        assert shown.exit_code == 0, (path, shown.output)
        for name in names:
            assert name in shown.output, (" ".join(path), name, shown.output)
        assert "````" not in shown.output, (path, shown.output)
        shown_somewhere |= names
    # the tables the help texts name today: none may go missing from the walk above
    assert {"[bench]", "[catalog]", "[ioc]", "[qserver]", "[server]", "[stage]", "[sweep]"} <= shown_somewhere


def test_help_lists_every_command_and_group():
    from typer.testing import CliRunner

    from gainloop.cli import app

    paths = {" ".join(path) for path, _ in _every_command()}
    assert paths == {
        "",
        "sweep",
        "measure",
        "replay",
        "runs",
        "plans",
        "demo",
        "report",
        "watch",
        "twin",
        "twin reproduce",
        "twin predict",
        "twin optimum",
        "twin calibrate",
        "twin serve",
        "catalog",
        "catalog serve",
        "catalog upload-backup",
        "qserver",
        "qserver start",
        "qserver reconcile",
        "campaign",
        "campaign run",
        "campaign resume",
        "campaign status",
    }
    listed = CliRunner().invoke(app, ["--help"], terminal_width=80).output
    section = listed.split("Commands:", 1)[1]
    names = [line.split()[0] for line in section.splitlines() if line.startswith("  ") and line[2] != " "]
    # the commands first, then the groups, each in the order the app registers them
    assert names == [
        "sweep",
        "measure",
        "replay",
        "runs",
        "plans",
        "demo",
        "report",
        "watch",
        "twin",
        "catalog",
        "qserver",
        "campaign",
    ]


def test_a_bench_command_called_from_python_gives_back_the_callers_signal_handlers(tmp_path, monkeypatch):
    """The ``gainloop`` process ignores Ctrl+C and SIGTERM once its plan has ended (it exits next); a
    command called from Python (CliRunner, a notebook) must not leave its caller so: an ignored
    SIGTERM is inherited by every process the caller starts afterwards, which then cannot be stopped."""
    import signal

    from typer.testing import CliRunner

    from gainloop.cli import app

    monkeypatch.setenv("GAINLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GAINLOOP_CONFIG", raising=False)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    measured = CliRunner().invoke(
        app, ["measure", "ase_point", "--sample", "cas_doped-film", "--fluence", "500", "--stripe-length", "1000"]
    )
    assert measured.exit_code == 0, measured.output
    assert {sig: signal.getsignal(sig) for sig in before} == before
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.terminate()
        assert child.wait(10) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_campaign_run_prior_refuses_a_missing_file_and_another_strategy(tmp_path):
    missing = run(
        "campaign", "run", "--twin", "--prior", str(tmp_path / "nope.toml"), "--data-dir", str(tmp_path), check=False
    )
    assert missing.returncode == 2 and "no such presets file" in missing.stderr + missing.stdout
    other = run(
        "campaign", "run", "--twin", "--strategy", "random", "--prior", "twin", "--data-dir", str(tmp_path), check=False
    )
    assert other.returncode == 2 and "nested strategy only" in other.stderr + other.stdout


def test_a_twin_guided_campaign_from_a_presets_file_shows_prior_vs_data(tmp_path):
    presets = tmp_path / "calibrated.toml"
    presets.write_text(default_presets_path().read_text())
    data = str(tmp_path / "data")
    done = json.loads(
        run("campaign", "run", "--twin", "--prior", str(presets), "--max-trials", "2", "--data-dir", data, "--json")
        .stdout.strip()
        .splitlines()[-1]
    )
    shown = run("campaign", "status", done["campaign_uid"], "--data-dir", data).stdout
    flat = "".join(shown.split())  # the console wraps long lines
    assert f"twinprior:{presets}" in flat and "measuredvs" in flat and "lnratio" in flat
