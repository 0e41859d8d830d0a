"""The service's one config file (TOML): bench or twin, catalog, optimiser, budgets, limits.

Every command takes it (``--config FILE`` or ``$GAINLOOP_CONFIG``): ``campaign run``,
``demo`` and ``sweep`` all of their options (``[sweep]``: strategies, seeds, presets, the
cluster), ``measure``, ``replay``, ``campaign resume|status``, ``report`` and ``catalog
upload-backup`` the bench and the catalog, ``catalog serve`` the ``[server]`` table and
``qserver start|reconcile`` the ``[qserver]`` table, ``twin serve`` the ``[ioc]`` table
and the bench file of ``[bench]``; an option given on the command line wins. Unknown keys and out-of-range values are
errors that name the key and what is allowed. Secrets never live in the file: the
catalog's API key comes from the environment variable the file names
(``catalog.api_key_env``, default ``TILED_API_KEY``).

Example (``examples/gainloop.toml``)::

    [bench]
    # file = "my_bench.toml"       # a real bench over EPICS; absent: the twin
    twin_seed = 0

    [catalog]
    # uri = "http://127.0.0.1:8000"  # a Tiled server; absent: the embedded catalog
    # data_dir = "/data/gainloop"

    [optimizer]
    strategy = "nested"              # nested | random | grid
    seed = 0
    batch_size = 1

    [budgets]
    lab_hours = 24.0
    # max_trials = 20
    # target_threshold_uJ_cm2 = 85.0

    [limits]
    fluence_min_uJ_cm2 = 10.0
    # fluence_max_uJ_cm2 = 2000.0     # at most the bench's fluence limit
    stripe_length_min_um = 100.0
    stripe_length_max_um = 4000.0
    doping_min = 0.0
    doping_max = 7.9

    [campaign]
    # material = "PbS/PbSSe-CAS/I-ALD"  # default: the bench file's [stage] new_film_material
    max_threshold_rel_err = 0.5      # a fitted threshold with a larger relative error: a failed trial

    [server]                      # gainloop catalog serve
    port = 8000
    api_key_env = "GAINLOOP_TILED_API_KEY"

    [qserver]                     # gainloop qserver start | reconcile
    redis = "127.0.0.1:6379"

    [ioc]                         # gainloop twin serve
    interfaces = ["127.0.0.1"]

    [sweep]                       # gainloop sweep
    strategies = ["nested", "random"]
    seeds = "0-9"
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import GainloopError
from core.protocols import STRATEGIES
from core.tomlfile import load_toml_model

__all__ = ["ConfigError", "GainloopConfig", "load_config"]


class ConfigError(GainloopError):
    """The config file is missing, malformed or out of range."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_PORT = {"ge": 0, "le": 65535}
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # the name of an environment variable


class BenchSection(_Strict):
    file: Path | None = Field(None, description="bench file of a real bench (EPICS); absent: the twin")
    twin_seed: int | None = Field(None, ge=0, description="the twin's noise seed (default: the optimiser's seed)")


class CatalogSection(_Strict):
    uri: str | None = Field(None, description="Tiled server URI; absent: the embedded catalog")
    data_dir: Path | None = Field(None, description="data folder of the embedded catalog and the writer's backup")
    api_key_env: str = Field(
        "TILED_API_KEY", pattern=_ENV_NAME, description="environment variable holding the server's API key"
    )


class OptimizerSection(_Strict):
    strategy: Literal[STRATEGIES] = "nested"
    seed: int = Field(0, ge=0)
    batch_size: int = Field(1, ge=1, le=16)


class BudgetsSection(_Strict):
    lab_hours: float | None = Field(24.0, gt=0, description="lab-time budget, h")
    max_trials: int | None = Field(None, ge=1)
    target_threshold_uJ_cm2: float | None = Field(None, gt=0)


class LimitsSection(_Strict):
    fluence_min_uJ_cm2: float = Field(10.0, gt=0)
    fluence_max_uJ_cm2: float | None = Field(None, gt=0, description="at most the bench's fluence limit")
    stripe_length_min_um: float = Field(100.0, gt=0)
    stripe_length_max_um: float = Field(4000.0, gt=0)
    doping_min: float = Field(0.0, ge=0)
    doping_max: float = Field(7.9, gt=0, le=40)

    @model_validator(mode="after")
    def _ordered(self):
        if self.stripe_length_max_um <= self.stripe_length_min_um:
            raise ValueError("stripe_length_max_um must be above stripe_length_min_um")
        if self.doping_max <= self.doping_min:
            raise ValueError("doping_max must be above doping_min")
        if self.fluence_max_uJ_cm2 is not None and self.fluence_max_uJ_cm2 <= self.fluence_min_uJ_cm2:
            raise ValueError("fluence_max_uJ_cm2 must be above fluence_min_uJ_cm2")
        return self


class CampaignSection(_Strict):
    """What a campaign optimises and what it takes as a result."""

    material: str | None = Field(
        None, min_length=1, description="material to optimise (default: the bench file's [stage] new_film_material)"
    )
    films: list[str] | None = Field(None, min_length=1, description="library films it may use (default: all of it)")
    max_threshold_rel_err: float = Field(
        0.5, gt=0, le=10, description="a fitted threshold with a larger relative error is a failed trial"
    )


class ServerSection(_Strict):
    """``gainloop catalog serve``: the Tiled server on PostgreSQL."""

    postgres_uri: str | None = Field(
        None,
        description="PostgreSQL URI of the catalog database, without a password (default: $GAINLOOP_POSTGRES_URI, "
        "else postgresql://postgres@127.0.0.1:5432/gainloop)",
    )
    host: str = Field("127.0.0.1", min_length=1, description="interface the server binds")
    port: int = Field(8000, **_PORT, description="port (0 picks a free one)")
    data_dir: Path | None = Field(None, description="folder for array files")
    api_key_env: str = Field(
        "GAINLOOP_TILED_API_KEY", pattern=_ENV_NAME, description="environment variable holding the server's API key"
    )
    processes: int = Field(1, ge=1, le=64, description="server processes on the one port (more than one: redis_uri)")
    redis_uri: str | None = Field(
        None,
        description="Redis URI of the streaming cache the processes share, a database of its own per catalog "
        "(default: $GAINLOOP_REDIS_URI, else in memory: one process)",
    )

    @model_validator(mode="after")
    def _no_password(self):
        from urllib.parse import urlsplit

        for key, env in (("postgres_uri", "GAINLOOP_POSTGRES_URI"), ("redis_uri", "GAINLOOP_REDIS_URI")):
            uri = getattr(self, key)
            if uri is None:
                continue
            try:
                has_password = urlsplit(uri).password is not None
            except ValueError as exc:
                raise ValueError(f"{key} is not a URI: {exc}") from None
            if has_password:
                raise ValueError(
                    f"{key} must not carry a password (the file is not a secret): give the whole URI in ${env} instead"
                )
        return self


class QserverSection(_Strict):
    """``gainloop qserver start|reconcile``: the RE Manager and its Redis."""

    host: str = Field("127.0.0.1", min_length=1, description="interface the 0MQ control and info sockets bind")
    control_port: int = Field(60615, **_PORT)
    info_port: int = Field(60625, **_PORT)
    redis: str = Field("127.0.0.1:6379", min_length=1, description="Redis address: HOST:PORT or HOST:PORT/DB")
    redis_prefix: str = Field("gainloop", min_length=1, description="prefix of the manager's Redis keys")
    state_dir: Path | None = Field(None, description="folder of the permissions and plan/device lists")


class IocSection(_Strict):
    """``gainloop twin serve``: the twin bench as an EPICS IOC (its bench file: ``[bench] file``)."""

    interfaces: list[str] = Field(["127.0.0.1"], min_length=1, description="addresses the CA server binds")
    port: int | None = Field(
        None, ge=1, le=65535, description="CA server port (default: EPICS_CA_SERVER_PORT, else 5064)"
    )
    prefix: str | None = Field(None, min_length=1, description="PV prefix (default: the bench file's)")
    time_scale: float = Field(1.0, gt=0, description="lab seconds per wall second")
    seed: int | None = Field(None, ge=0, description="noise seed (default: the bench file's)")


class SweepSection(_Strict):
    """``gainloop sweep``: which campaigns, and where they run."""

    strategies: list[Literal[STRATEGIES]] | None = Field(None, min_length=1)
    seeds: list[int] | str | None = Field(None, description="seeds: a list, or a string like '0-9' or '0,2,4'")
    presets: list[Path] | None = Field(None, description="presets TOML files of the twin (default: shipped)")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler")
    workers: int | None = Field(None, ge=1, description="worker processes of the LocalCluster")
    host: str = Field("127.0.0.1", min_length=1, description="interface the LocalCluster binds")

    @model_validator(mode="after")
    def _cluster(self):
        if self.scheduler is not None and (self.workers is not None or self.host != "127.0.0.1"):
            raise ValueError("workers and host set up a LocalCluster; leave them out with a scheduler")
        return self


class GainloopConfig(_Strict):
    """The whole config; every table is optional."""

    bench: BenchSection = BenchSection()
    catalog: CatalogSection = CatalogSection()
    optimizer: OptimizerSection = OptimizerSection()
    budgets: BudgetsSection = BudgetsSection()
    limits: LimitsSection = LimitsSection()
    campaign: CampaignSection = CampaignSection()
    server: ServerSection = ServerSection()
    qserver: QserverSection = QserverSection()
    ioc: IocSection = IocSection()
    sweep: SweepSection = SweepSection()

    def campaign_config(self, **overrides):
        """A ``CampaignConfig`` from this file, with command-line ``overrides`` (None: not given)."""
        from gainloop.campaign import CampaignConfig

        values = {
            "strategy": self.optimizer.strategy,
            "seed": self.optimizer.seed,
            "batch_size": self.optimizer.batch_size,
            "budget_lab_h": self.budgets.lab_hours,
            "max_trials": self.budgets.max_trials,
            "target_threshold_uJ_cm2": self.budgets.target_threshold_uJ_cm2,
            "fluence_min_uJ_cm2": self.limits.fluence_min_uJ_cm2,
            "fluence_max_uJ_cm2": self.limits.fluence_max_uJ_cm2,
            "stripe_length_min_um": self.limits.stripe_length_min_um,
            "stripe_length_max_um": self.limits.stripe_length_max_um,
            "doping_min": self.limits.doping_min,
            "doping_max": self.limits.doping_max,
            "material": self.campaign.material,
            "films": self.campaign.films,
            "max_threshold_rel_err": self.campaign.max_threshold_rel_err,
            "bench_file": str(self.bench.file) if self.bench.file is not None else None,
            "twin_seed": self.bench.twin_seed,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["twin_seed"] is None:
            values["twin_seed"] = values["seed"]
        return CampaignConfig(**values)


def load_config(path: str | Path | None) -> GainloopConfig:
    """The config in ``path`` (defaults everywhere when None)."""
    if path is None:
        return GainloopConfig()
    return load_toml_model(path, GainloopConfig, "config file", ConfigError)
