"""The embedded catalog: runs written through TiledWriter and read back as BlueskyRuns."""

from __future__ import annotations

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from ophyd.sim import det, motor

from gainloop.catalog import Catalog, CatalogError, RunNotFoundError, data_dir


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    with Catalog(data_dir_path=tmp_path_factory.mktemp("data")) as cat:
        yield cat


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("GAINLOOP_DATA_DIR", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert (tmp_path / "explicit").is_dir()


def test_a_run_round_trips_through_the_embedded_catalog(catalog):
    RE = RunEngine({})
    RE.subscribe(catalog.writer())
    (uid,) = RE(bp.scan([det], motor, 0, 1, 5), sample_id="cas_doped-film")
    run = catalog.run(uid)
    assert run.metadata["start"]["sample_id"] == "cas_doped-film"
    assert run.metadata["stop"]["exit_status"] == "success"
    data = run["primary"].read()
    assert list(data["motor"].values) == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_unknown_uid_is_a_clear_error(catalog):
    with pytest.raises(RunNotFoundError, match="no run with uid 'nope'"):
        catalog.run("nope")


def test_unreachable_catalog_says_what_to_start(tmp_path):
    expected = r"cannot reach the catalog at http://127\.0\.0\.1:9/api.*Start the Tiled server"
    with pytest.raises(CatalogError, match=expected):
        Catalog("http://127.0.0.1:9/api", data_dir_path=tmp_path)


def test_an_unreachable_catalog_error_never_shows_the_key(tmp_path):
    with pytest.raises(CatalogError) as info:
        Catalog("http://127.0.0.1:9/?api_key=SECRETKEY123", data_dir_path=tmp_path, api_key="OTHERKEY456")
    message = str(info.value)
    assert "cannot reach the catalog" in message
    assert "SECRETKEY123" not in message and "OTHERKEY456" not in message
