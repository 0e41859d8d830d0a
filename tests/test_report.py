"""Campaign reports: PNG figures and an HTML page that a real (headless) browser loads, no secrets."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gainloop.campaign import CampaignConfig, CampaignError, run_campaign
from gainloop.catalog import Catalog
from gainloop.report import ReportError, build_report, write_report
from harness.browser import chromium_path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECRET = "report-test-api-key-7f3a9c2e51d04b68"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    with Catalog(data_dir_path=tmp_path_factory.mktemp("data")) as cat:
        yield cat


@pytest.fixture(scope="module")
def made(catalog, tmp_path_factory):
    """(campaign summary, report): a 3-trial campaign on the twin and its report."""
    cfg = CampaignConfig(strategy="nested", seed=1, budget_lab_h=None, max_trials=3, twin_seed=1)
    summary = run_campaign(catalog, cfg)
    with pytest.MonkeyPatch.context() as mp:  # a key in the environment must not reach the page
        mp.setenv("TILED_API_KEY", SECRET)
        report = build_report(catalog, summary["campaign_uid"], tmp_path_factory.mktemp("report") / "out")
    return summary, report


@pytest.fixture
def report(made):
    return made[1]


def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == PNG_MAGIC and raw[12:16] == b"IHDR", f"{path.name} is not a PNG"
    return struct.unpack(">II", raw[16:24])


def test_report_writes_the_page_and_every_figure_as_png(made):
    summary, report = made
    names = [p.name for p in report.figures]
    assert names == [
        "best_threshold.png",
        "gp_posterior.png",
        "io_trial_000.png",
        "io_trial_001.png",
        "io_trial_002.png",
        "spectra_best.png",
    ]
    for path in report.figures:
        width, height = _png_size(path)
        assert width > 100 and height > 100, path.name
    page = report.index.read_text(encoding="utf-8")
    assert report.index.name == "index.html"
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(names)
    # the trials table: every trial's run uid, units on the columns
    for uid in summary["trial_uids"]:
        assert uid in page
    for unit in ("uJ/cm^2", "stripe length (um)", "doping (electrons/dot)"):
        assert unit in page
    # no VSL was measured: said, not faked
    assert "No VSL (vsl_scan) run was measured" in page and "vsl.png" not in page
    best = summary["best"]
    assert f"{best['threshold_uJ_cm2']:.1f}" in page


def test_no_api_key_reaches_the_report(report):
    assert SECRET not in report.index.read_text(encoding="utf-8")
    for path in report.figures:
        assert SECRET.encode() not in path.read_bytes()


def _images_ok(index: Path, profile: Path) -> tuple[int, int]:
    """Load the page in headless Chromium; (decoded images, images) as the page's load handler counted them."""
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no chromium binary (Debian package `chromium`; .ci/run installs it when absent)")
    proc = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            index.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'data-images-ok="(\d+)/(\d+)"', proc.stdout)
    assert found, f"the page's load handler did not run; DOM starts: {proc.stdout[:500]!r}"
    return int(found.group(1)), int(found.group(2))


def test_the_page_loads_in_headless_chromium_with_every_image_decoded(report, tmp_path):
    ok, total = _images_ok(report.index, tmp_path / "profile")
    assert total == len(report.figures)
    assert ok == total
    # the check can fail: a copy of the report with one broken PNG is counted as such
    broken = tmp_path / "broken"
    shutil.copytree(report.index.parent, broken)
    (broken / "gp_posterior.png").write_bytes(b"not a png")
    ok, total = _images_ok(broken / "index.html", tmp_path / "profile2")
    assert (ok, total) == (len(report.figures) - 1, len(report.figures))


def test_unknown_campaign_is_the_campaign_error(catalog, tmp_path):
    with pytest.raises(CampaignError, match="no campaign 'nope'"):
        write_report(catalog, "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_written_is_a_clear_error(made, catalog, tmp_path):
    summary = made[0]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ReportError, match=r"cannot write the report to .*a-file/out"):
        write_report(catalog, summary["campaign_uid"], blocker / "out")


def test_vsl_panel_draws_a_stored_vsl_scan_with_the_plans_fit(catalog, tmp_path):
    from bluesky import RunEngine

    from gainloop.replay import stream_columns
    from gainloop.report.figures import draw_vsl, save_figure, vsl_fit_curve
    from gainloop.report.trials import count_rates
    from plans.measurements import vsl_scan
    from sim.devices import default_twin_bench_path, twin_bench_devices

    cat = catalog
    bench = twin_bench_devices(default_twin_bench_path(), seed=1)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(cat.writer())
    result = RE(vsl_scan(bench, "cas_doped-film", fluence_uJ_cm2=2200.0, stripe_lengths_um=np.linspace(10, 40, 16)))
    run = cat.run(result.plan_result["uid"])
    data = stream_columns(run["primary"])
    curve, why = vsl_fit_curve(np.asarray(data["slit"], dtype=float), count_rates(data, at_peak=True))
    assert curve is not None, why
    assert curve[0].gain_per_cm == pytest.approx(result.plan_result["gnet_per_cm"], rel=1e-9)
    save_figure(lambda fig: draw_vsl(fig, [run]), tmp_path / "vsl.png")
    assert _png_size(tmp_path / "vsl.png")[0] > 100


def test_failed_and_infeasible_trials_are_drawn_with_their_reason(tmp_path):
    from core.trial import Proposal, TrialRecord
    from gainloop.report.figures import draw_best, draw_io, save_figure
    from gainloop.report.trials import ReportTrial

    def trial(index, params, status, outcome, reason, lab_h):
        record = TrialRecord(
            Proposal(index, params), status=status, outcome=outcome, reason=reason, campaign_lab_time_s=lab_h * 3600
        )
        return ReportTrial(record)

    cfg = CampaignConfig(target_threshold_uJ_cm2=80.0)
    trials = [
        trial(
            0,
            {"stripe_length_um": 500.0, "doping": 7.4},
            "completed",
            {"threshold_uJ_cm2": 120.0, "threshold_err_uJ_cm2": 8.0},
            "",
            lab_h=0.1,
        ),
        trial(1, {"stripe_length_um": 150.0, "doping": 2.0}, "infeasible", {}, "no ASE threshold found: no kink", 6.2),
        trial(
            2,
            {"stripe_length_um": 900.0, "doping": 7.4},
            "failed",
            {},
            "interrupted: the run has no stop document",
            lab_h=6.3,
        ),
    ]
    save_figure(lambda fig: draw_best(fig, trials, cfg), tmp_path / "best.png")
    for t in trials[1:]:
        drawn = {}

        def draw(fig, t=t, drawn=drawn):
            draw_io(fig, t)
            drawn["text"] = " ".join(" ".join(x.get_text() for x in fig.axes[0].texts).split())

        save_figure(draw, tmp_path / f"io_{t.record.trial_index}.png")
        assert t.record.status in drawn["text"] and t.record.reason.split(":")[0] in drawn["text"]
    for name in ("best.png", "io_1.png", "io_2.png"):
        assert _png_size(tmp_path / name)[0] > 100


def _cli(*args: str):
    from typer.testing import CliRunner

    from gainloop.cli import app

    return CliRunner().invoke(app, ["report", *args])


def test_cli_prints_the_page_and_figures_and_errors_without_a_traceback(made, catalog, tmp_path):
    """Through the module catalog's own server (``--catalog URI``, its API key in the URI): the embedded
    catalog's DuckDB can be open in one process at a time, and the key must not reach the page."""
    from urllib.parse import parse_qs, urlparse

    summary = made[0]
    uri = catalog._server.uri
    key = parse_qs(urlparse(uri).query)["api_key"][0]
    common = ["--catalog", uri, "--data-dir", str(tmp_path / "data")]
    out = tmp_path / "cli"
    result = _cli(summary["campaign_uid"], "--out", str(out), *common, "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["report"] == str(out.resolve() / "index.html")
    assert [Path(p).name for p in got["figures"]][:2] == ["best_threshold.png", "gp_posterior.png"]
    assert all(Path(p).exists() for p in got["figures"])
    page = Path(got["report"]).read_text(encoding="utf-8")
    assert key not in page and "api_key=***" in page
    bad = _cli("nope", "--out", str(tmp_path / "x"), *common)
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr and key not in bad.stderr
    assert "no campaign with uid 'nope'" in " ".join(bad.stderr.split()), bad.stderr
