"""The worker's namespace: RunEngine into the catalog, the bench's devices, gainloop's plans.

``build_namespace(settings)`` is what the startup module (``gainloop.queueserver.startup``)
puts in the RE worker's namespace. The queueserver treats every generator function
in it as a plan and every readable object as a device, so the namespace holds only:

* ``RE``: a ``RunEngine`` subscribed to a ``TiledWriter`` into the catalog (a Tiled
  server by URI + API key, or the embedded catalog in the data folder), with the
  plan-level fluence check (``plans.safety.fluence_guard``) as a preprocessor: every
  plan it runs (not only gainloop's) has each fluence it sends checked against the
  bench's limit before the message reaches the device;
* the bench's devices by name (``pump``, ``slit``, ``stage``, ...);
* one plan per measurement plan of ``plans.registry`` (``ase_fluence_scan(sample_id,
  stripe_length_um=1000.0, ...)``: the registry plan's own signature without
  ``bench`` and ``md``; the plan checks its fluences itself before anything moves);
* ``campaign_plan(strategy, max_trials, budget_lab_h, seed, target_threshold_uJ_cm2)``:
  a closed-loop campaign on the same bench (``plans.campaign.campaign`` with the
  optimiser ``gainloop.campaign`` builds);
* ``bench_status()``: a read-only function (``function_execute``) with the pump's
  fluence setpoint, the limit and, on the twin, the lab clock and its last message.

This module deliberately has no ``from __future__ import annotations``: the
queueserver reads the plans' annotations as types.
"""

import dataclasses
import inspect
import math
import os
import typing
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.errors import GainloopError

__all__ = [
    "ENV_BENCH_FILE",
    "ENV_CATALOG_URI",
    "ENV_TWIN_SEED",
    "FUNCTION_NAMES",
    "ITEM_UID_KEY",
    "ProfileSettings",
    "QueueServerError",
    "build_namespace",
    "plan_names",
    "running_item_uid",
]

ENV_CATALOG_URI = "GAINLOOP_CATALOG_URI"
ENV_BENCH_FILE = "GAINLOOP_BENCH_FILE"
ENV_TWIN_SEED = "GAINLOOP_TWIN_SEED"

#: Functions users may run with ``function_execute`` (the permissions allow these only).
FUNCTION_NAMES = ("bench_status",)

#: Registry plan parameters the queueserver plans do not expose (the bench is closed over;
#: run metadata goes in the queue item's ``meta``).
_HIDDEN_PARAMETERS = ("bench", "md")


class QueueServerError(GainloopError):
    """The queueserver profile or manager cannot be set up (bad settings, missing files...)."""


@dataclass(frozen=True)
class ProfileSettings:
    """Where the worker's documents go and which bench it drives (read from the environment).

    ``catalog_uri``: a Tiled server (its API key in ``$TILED_API_KEY``), else the embedded
    catalog in ``data_dir``; ``bench_file``: a real bench over EPICS, else the twin
    (``twin_seed``: its noise seed, default the bench file's).
    """

    catalog_uri: str | None = None
    data_dir: str | None = None
    bench_file: str | None = None
    twin_seed: int | None = None

    @classmethod
    def from_environ(cls, environ: typing.Mapping[str, str] | None = None) -> "ProfileSettings":
        from gainloop.catalog import ENV_DATA_DIR

        env = os.environ if environ is None else environ
        seed = env.get(ENV_TWIN_SEED) or None
        if seed is not None:
            try:
                seed = int(seed)
            except ValueError:
                raise QueueServerError(f"${ENV_TWIN_SEED} must be a whole number, got {seed!r}") from None
        bench_file = env.get(ENV_BENCH_FILE) or None
        if bench_file is not None and not Path(bench_file).is_file():
            raise QueueServerError(f"${ENV_BENCH_FILE} names no file: {bench_file}")
        return cls(
            catalog_uri=env.get(ENV_CATALOG_URI) or None,
            data_dir=env.get(ENV_DATA_DIR) or None,
            bench_file=bench_file,
            twin_seed=seed,
        )

    def as_environ(self) -> dict[str, str]:
        """The environment variables that give these settings to the worker (no secrets)."""
        from gainloop.catalog import ENV_DATA_DIR

        env = {}
        for key, value in (
            (ENV_CATALOG_URI, self.catalog_uri),
            (ENV_DATA_DIR, self.data_dir),
            (ENV_BENCH_FILE, self.bench_file),
            (ENV_TWIN_SEED, self.twin_seed),
        ):
            if value is not None:
                env[key] = str(value)
        return env


def plan_names() -> tuple[str, ...]:
    """The plans the profile exposes: every measurement plan of the registry, and ``campaign_plan``."""
    from plans.registry import PLANS

    return (*PLANS, "campaign_plan")


def _bench(settings: ProfileSettings, *, connect: bool = True):
    """The bench's devices: EPICS (``bench_file``) or the in-process twin.

    ``connect=False`` (lists of plans and devices written before the environment opens):
    the twin of the same bench file stands in, with the same device names.
    """
    from gainloop.benches import bench_devices

    return bench_devices(settings.bench_file, twin=not connect, seed=settings.twin_seed)


def _measurement_plan(spec, bench):
    """``spec.plan`` with the bench closed over: a plain generator function the queueserver can describe."""
    original = spec.plan
    hints = typing.get_type_hints(original)
    signature = inspect.signature(original)
    parameters = [
        p.replace(annotation=hints.get(name, inspect.Parameter.empty))
        for name, p in signature.parameters.items()
        if name not in _HIDDEN_PARAMETERS
    ]

    def plan(*args, **kwargs):
        return (yield from original(bench, *args, **kwargs))

    plan.__name__ = plan.__qualname__ = spec.name
    plan.__module__ = __name__
    plan.__doc__ = f"{spec.description}.\n\n{inspect.getdoc(original) or ''}".strip()
    plan.__signature__ = signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty)
    return plan


def _campaign_plan(bench, settings: ProfileSettings):
    from gainloop.campaign import (
        CampaignConfig,
        campaign_films,
        campaign_material,
        campaign_optimizer,
        fault_hook_from_env,
    )
    from plans.campaign import campaign

    def campaign_plan(
        strategy: str = "nested",
        max_trials: int = 3,
        budget_lab_h: float = 24.0,
        seed: int = 0,
        target_threshold_uJ_cm2: float | None = None,
    ):
        """A closed-loop campaign on this bench: suggest, measure, analyse, ingest, until a budget or the target.

        Its record run (``plan_name`` "campaign") holds every proposal, outcome and the model's
        state; each trial is its own run with ``campaign_uid`` and ``trial_index``. A campaign
        started here can be continued with ``gainloop campaign resume CAMPAIGN_UID``.

        Parameters
        ----------
        strategy
            nested, random or grid.
        max_trials
            Stop after this many trials.
        budget_lab_h
            Stop once this much lab time (hours) is spent.
        seed
            Seed of the optimiser.
        target_threshold_uJ_cm2
            Stop once a threshold at or below this is measured (uJ/cm^2).
        """
        if not isinstance(max_trials, int) or isinstance(max_trials, bool) or max_trials < 1:
            raise ValueError(f"max_trials must be a whole number >= 1, got {max_trials!r}")
        if not (isinstance(budget_lab_h, int | float) and math.isfinite(budget_lab_h) and budget_lab_h > 0):
            raise ValueError(f"budget_lab_h must be a positive number of hours, got {budget_lab_h!r}")
        cfg = CampaignConfig(
            strategy=strategy,
            seed=int(seed),
            budget_lab_h=float(budget_lab_h),
            max_trials=max_trials,
            target_threshold_uJ_cm2=None if target_threshold_uJ_cm2 is None else float(target_threshold_uJ_cm2),
            bench_file=settings.bench_file,
            twin_seed=settings.twin_seed,
        )
        cfg = dataclasses.replace(cfg, material=campaign_material(cfg, bench))
        films = campaign_films(cfg, bench)
        optimizer = campaign_optimizer(cfg, bench, films)
        return (
            yield from campaign(
                bench,
                optimizer,
                campaign_uid=str(uuid.uuid4()),
                lab_clock=bench.lab_time_s,
                budget_lab_h=cfg.budget_lab_h,
                max_trials=cfg.max_trials,
                target_threshold_uJ_cm2=cfg.target_threshold_uJ_cm2,
                films=films,
                can_make_films=cfg.can_make_films,
                scan_args=dict(cfg.scan_args),
                max_threshold_rel_err=cfg.max_threshold_rel_err,
                md={"config": cfg.as_dict(), "lab_clock": bench.lab_clock_source},
                fault_hook=fault_hook_from_env(),  # (tests only: None unless $GAINLOOP_FAULT_INJECT is set)
            )
        )

    campaign_plan.__module__ = __name__
    return campaign_plan


def _bench_status(bench):
    def bench_status() -> dict:
        """The pump's fluence setpoint and limit (uJ/cm^2); on the twin, its lab clock (s) and last message
        (``devices.Bench.status``)."""
        return bench.status()

    return bench_status


def _close_at_exit(catalog) -> None:
    """Close the catalog when the worker exits.

    Before the interpreter joins its threads: the embedded catalog's server runs in a
    thread that would otherwise keep the worker process (or any script) from exiting.
    """
    import atexit
    import threading

    register = getattr(threading, "_register_atexit", None)  # private, but what concurrent.futures uses
    if register is not None:
        register(catalog.close)
    else:  # pragma: no cover
        atexit.register(catalog.close)


#: Start-document key of every run a queue item opens: the item's ``item_uid`` (what
#: ``gainloop qserver reconcile`` looks its runs up by when the item's outcome was lost).
ITEM_UID_KEY = "qserver_item_uid"


def running_item_uid() -> str | None:
    """The ``item_uid`` of the queue item this RE worker is running, else None.

    The queueserver's worker is the current ``multiprocessing`` process and keeps the item
    it runs in ``_running_plan_info`` (bluesky-queueserver 0.0.25) while ``RE`` runs it.
    """
    import multiprocessing

    info = getattr(multiprocessing.current_process(), "_running_plan_info", None)
    uid = info.get("item_uid") if isinstance(info, dict) else None
    return uid if isinstance(uid, str) and uid else None


def _tag_runs_with_item(plan):
    """Every run ``plan`` opens carries the queue item's uid in its start document (``ITEM_UID_KEY``)."""
    from bluesky.preprocessors import msg_mutator

    uid = running_item_uid()  # read when RE starts the plan: the item being run
    if uid is None:
        return plan

    def tag(msg):
        if msg.command == "open_run" and ITEM_UID_KEY not in msg.kwargs:
            return msg._replace(kwargs={**msg.kwargs, ITEM_UID_KEY: uid})
        return msg

    return msg_mutator(plan, tag)


def _run_engine(bench, catalog):
    from bluesky import RunEngine

    from plans.safety import fluence_guard

    RE = RunEngine({})
    RE.state_hook = _safe_when_stopped(bench)
    limit = bench.config.bench.fluence_limit_uJ_cm2
    fluence_objects = (bench.pump.fluence, bench.pump)
    RE.preprocessors.append(lambda plan: fluence_guard(plan, fluence_objects, limit))
    RE.preprocessors.append(_tag_runs_with_item)
    if catalog is not None:
        RE.subscribe(_writer(catalog))
        RE.preprocessors.append(lambda plan: _stored_when_done(plan, catalog))
    return RE


def _stored_when_done(plan, catalog):
    """The plan, then a wait (off the RunEngine's loop) for the spool's drain of its runs: a queue item is
    reported done once its runs are readable in the catalog by anyone (the RunEngine never waits on the
    catalog while the plan runs). A catalog that does not take them in time fails the item, saying so."""
    import asyncio

    from bluesky.preprocessors import finalize_wrapper
    from bluesky.utils import Msg

    def drained():
        yield Msg("wait_for", None, [lambda: asyncio.to_thread(catalog.settle)])

    return (yield from finalize_wrapper(plan, drained()))


def _safe_when_stopped(bench):
    """``RE.state_hook``: when a plan was halted, aborted or stopped, make the bench safe.

    Each plan closes its shutter itself when it ends; this is the backstop for the ends that skip
    a plan's cleanup (``RE.halt()`` from the queue). A plan that ends normally is left as it
    ends, and a paused one as it is (an operator decides: resume, or stop, abort, halt -- each
    of which ends here). It runs in a thread of its own so that the RunEngine's loop never waits
    on the bench.
    """
    import threading

    from gainloop.running import make_bench_safe

    def hook(new_state, old_state) -> None:
        new, old = str(new_state), str(old_state)
        if new == "idle" and old in ("halting", "aborting", "stopping", "paused", "panicked"):
            threading.Thread(target=make_bench_safe, args=(bench,), name="make bench safe", daemon=True).start()

    return hook


def _writer(catalog):
    """The catalog's per-run writers (``Catalog.campaign_writer``)."""
    return catalog.campaign_writer()


def build_namespace(settings: ProfileSettings | None = None, *, connect: bool = True) -> dict:
    """The RE worker's namespace: ``RE``, the devices, the plans, ``bench_status``.

    ``connect=False`` builds it for the lists of plans and devices only: the twin of the
    bench file stands in for the bench and ``RE`` writes nowhere.
    """
    from plans.registry import PLANS

    settings = ProfileSettings.from_environ() if settings is None else settings
    bench = _bench(settings, connect=connect)
    catalog = None
    if connect:
        from gainloop.catalog import Catalog

        catalog = Catalog(settings.catalog_uri, data_dir_path=settings.data_dir)
        _close_at_exit(catalog)
    namespace: dict = {"RE": _run_engine(bench, catalog), "gainloop_catalog": catalog}
    namespace.update(bench.devices())
    for name, spec in PLANS.items():
        namespace[name] = _measurement_plan(spec, bench)
    namespace["campaign_plan"] = _campaign_plan(bench, settings)
    namespace["bench_status"] = _bench_status(bench)
    return namespace
