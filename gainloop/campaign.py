"""Campaigns as the service runs them: bench + optimiser + catalog, started, resumed and summarised.

``CampaignConfig`` is everything a campaign needs to be rebuilt: strategy, seed,
budgets, search space, films, scan settings and the twin's seed. It is stored in
the start document of the campaign's record run, so ``resume`` needs only the
catalog and the campaign uid:

* the config comes from the first record run's start document;
* the trials come from the measurement runs carrying the ``campaign_uid``, each
  judged by its own stop document and analysis stream (a run without a stop
  document was interrupted: the trial is recorded failed with that reason, and a
  trial index is never measured twice once a run of it completed), and from the
  record runs' ``outcomes`` streams for trials that failed before their run opened;
* re-ingesting them into a fresh optimiser of the same seed gives exactly the
  proposals the uninterrupted campaign would have made;
* on the twin, the films made so far and the lab clock are restored;
* the films' measured dopings come from the stored records (``StoredCampaign.film_dopings``):
  a film measured before the interruption is matched by that doping and not measured again,
  and a film whose measurement failed is never used.

A new film's lab time is priced: ``campaign_cost(bench)`` adds the bench's absorption
measurement (``plans.absorption.absorption_lab_time_s``) to the new-film cost.

What a resume does with each kind of interrupted trial (nothing is lost, nothing is
measured twice):

* proposed, never started (recorded in a ``proposals`` stream, no run, no outcome): the
  stored proposal is *replayed*: measured first, under its own trial index. It is
  checked like any new proposal (inside the search space, whose fluence range lies
  within the bench's limit); a stored proposal that fails the check (e.g. a fluence
  above the limit) stops the resume with ``CampaignError`` before anything is sent;
* its run has no stop document (process killed mid-measurement): ``failed``, reason
  ``interrupted: the run has no stop document``; never fed to a model as a number;
* its run ended ``abort`` (an operator's abort, Ctrl+C): ``abandoned`` with the run's
  reason; its index stays spent and the optimiser's initial design moves past its
  conditions (they are not proposed again);
* its run ended ``success`` but its outcome was never recorded (killed after the stop
  document): ``completed`` from the run's own ``analysis`` stream, never re-measured.

The stored config is checked again on resume: its fluence range (and any fluence in
its ``scan_args``) must lie within the bench's configured limit, else ``CampaignError``.

Interruptions: ``run_campaign`` runs under bluesky's SIGINT handling. The first Ctrl+C
asks for a deferred pause (taken at the checkpoint before the next trial, so every
finished trial is recorded), a second one pauses at once. The paused RunEngine is then
aborted: every open run gets its stop document (``exit_status`` ``"abort"``), the
RunEngine ends idle and ``CampaignInterrupted`` says how to resume. Further Ctrl+C
during that clean-up are ignored.

Fault injection (tests and the fault benchmark only; nothing happens when unset): the
environment variable ``GAINLOOP_FAULT_INJECT`` holds comma-separated
``ACTION@POINT:TRIAL`` entries, ``POINT`` one of ``plans.campaign.FAULT_POINTS``
(``proposed``, ``measuring``, ``measured``, ``recording``) and ``ACTION`` ``sigkill``
(the process kills itself with SIGKILL there) or ``stall=SECONDS`` (the plan sleeps
there, in the RunEngine, so that a pause or a signal can land mid-trial). E.g.
``GAINLOOP_FAULT_INJECT="sigkill@measured:1"``. The queueserver's ``campaign_plan`` reads it
too (``fault_hook_from_env``).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType

from core.errors import GainloopError
from core.protocols import STRATEGIES
from core.trial import Proposal, TrialRecord
from gainloop.records import StoredCampaign, read_campaign
from gainloop.running import PlanInterrupted
from gainloop.warm_start import WarmStartError, is_run_query, parse_run_query, pin_run_query, stored_scan_results

__all__ = [
    "FAULT_ENV",
    "CampaignConfig",
    "CampaignError",
    "CampaignInterrupted",
    "PreparedCampaign",
    "campaign_cost",
    "campaign_films",
    "campaign_material",
    "campaign_optimizer",
    "campaign_status",
    "fault_hook_from_env",
    "prepare_campaign",
    "prior_residuals",
    "prior_sample",
    "rebuild_trials",
    "run_campaign",
    "twin_prior_map",
    "warm_start_results",
]

#: Environment variable of the fault-injection hook (see the module doc).
FAULT_ENV = "GAINLOOP_FAULT_INJECT"


class CampaignError(GainloopError):
    """A campaign cannot be started or resumed (unknown uid, bad config...)."""


class CampaignInterrupted(CampaignError, PlanInterrupted):
    """The campaign was interrupted (Ctrl+C, SIGTERM); its open runs were closed with exit_status "abort"."""


@dataclass(frozen=True)
class CampaignConfig:
    """What defines a campaign (units in the names). Frozen and checked when made: a resume with new
    budgets is a new config (``with_budgets``), and a bad value is refused with what is allowed."""

    strategy: str = "nested"
    seed: int = 0
    budget_lab_h: float | None = 24.0
    max_trials: int | None = None
    target_threshold_uJ_cm2: float | None = None
    fluence_min_uJ_cm2: float = 10.0
    fluence_max_uJ_cm2: float | None = None  # default: the bench's fluence limit
    stripe_length_min_um: float = 100.0
    stripe_length_max_um: float = 4000.0
    doping_min: float = 0.0
    doping_max: float = 7.9
    material: str | None = None  # the material optimised (default: the bench's [stage].new_film_material)
    films: tuple[str, ...] | None = None  # library films the campaign may use (default: every film of the material)
    can_make_films: bool = True
    max_threshold_rel_err: float = 0.5  # a fitted threshold with a larger relative error is a failed trial
    batch_size: int = 1
    scan_args: Mapping = field(default_factory=dict)
    bench_file: str | None = None  # None: the twin
    twin_seed: int | None = None
    prior: str | None = None  # the nested GP's prior mean: "twin" (the shipped presets) or a presets file; None: none
    # earlier campaigns (uids) whose completed trials the model starts from, or queries of stored scans (key=value,...)
    warm_start: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise CampaignError(f"unknown strategy {self.strategy!r}; allowed: {', '.join(STRATEGIES)}")
        if self.prior is not None and self.strategy != "nested":
            raise CampaignError(f"a twin prior is for the nested strategy only; strategy is {self.strategy!r}")
        if self.films is not None:
            object.__setattr__(self, "films", tuple(self.films))
        if self.warm_start is not None:
            object.__setattr__(self, "warm_start", tuple(str(u) for u in self.warm_start))
            if self.strategy != "nested":
                raise CampaignError(f"a warm start is for the nested strategy only; strategy is {self.strategy!r}")
            for entry in self.warm_start:
                if is_run_query(entry):
                    try:
                        parse_run_query(entry)
                    except WarmStartError as exc:
                        raise CampaignError(str(exc)) from None
        object.__setattr__(self, "scan_args", MappingProxyType(dict(self.scan_args)))

        def positive(name: str, value, *, optional: bool = True, integer: bool = False) -> None:
            if value is None and optional:
                return
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
            if ok and integer:
                ok = float(value).is_integer()
            if not ok:
                kind = "a positive integer" if integer else "a positive number"
                raise CampaignError(f"campaign setting {name} = {value!r} is refused; allowed: {kind}")

        positive("budget_lab_h", self.budget_lab_h)
        positive("max_trials", self.max_trials, integer=True)
        positive("target_threshold_uJ_cm2", self.target_threshold_uJ_cm2)
        positive("fluence_min_uJ_cm2", self.fluence_min_uJ_cm2, optional=False)
        positive("fluence_max_uJ_cm2", self.fluence_max_uJ_cm2)
        positive("stripe_length_min_um", self.stripe_length_min_um, optional=False)
        positive("stripe_length_max_um", self.stripe_length_max_um, optional=False)
        positive("max_threshold_rel_err", self.max_threshold_rel_err, optional=False)
        positive("batch_size", self.batch_size, optional=False, integer=True)
        for lo, hi in (
            ("fluence_min_uJ_cm2", "fluence_max_uJ_cm2"),
            ("stripe_length_min_um", "stripe_length_max_um"),
            ("doping_min", "doping_max"),
        ):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and not a < b:
                raise CampaignError(f"campaign setting {lo} = {a!r} must be below {hi} = {b!r}")

    def as_dict(self) -> dict:
        """Plain data (lists and dicts), as stored in the record run's start document."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["films"] = None if self.films is None else list(self.films)
        d["warm_start"] = None if self.warm_start is None else list(self.warm_start)
        d["scan_args"] = dict(self.scan_args)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> CampaignConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise CampaignError(f"unknown campaign settings {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**d)

    def with_budgets(self, **budgets) -> CampaignConfig:
        """This config with new totals (``budget_lab_h``, ``max_trials``, ``target_threshold_uJ_cm2``;
        a None keeps the stored one): what ``campaign resume --budget-hours ...`` changes."""
        allowed = ("budget_lab_h", "max_trials", "target_threshold_uJ_cm2")
        for key in budgets:
            if key not in allowed:
                raise CampaignError(
                    f"cannot change {key!r} on resume; budgets allowed: budget_lab_h, max_trials, target"
                )
        return replace(self, **{k: v for k, v in budgets.items() if v is not None})


def campaign_material(cfg: CampaignConfig, bench) -> str:
    """The material the campaign optimises: the config's, else the bench's ``[stage].new_film_material``."""
    material = cfg.material or bench.config.stage.new_film_material
    if material is None:
        known = sorted({e.material for e in bench.config.stage.library if e.material})
        raise CampaignError(
            "choose the material to optimise: --material NAME or [campaign] material in the config "
            f"(the bench file's library has: {', '.join(known) or 'no materials: give each film a material'}; "
            "or set [stage] new_film_material in the bench file)"
        )
    return material


def campaign_films(cfg: CampaignConfig, bench) -> list[str]:
    """The library films the campaign may measure: every film of its material (or the config's ``films``,
    each of which must be a film of that material)."""
    material = campaign_material(cfg, bench)
    library = bench.config.stage.library
    if cfg.films is not None:
        for f in cfg.films:
            entry = bench.config.library_entry(f)
            if entry.kind != "film" or entry.material != material:
                raise CampaignError(
                    f"film {f!r} cannot be in a campaign on {material!r}: it is a {entry.kind} of "
                    f"{entry.material or 'no stated material'}; allowed: films of {material!r}"
                )
        return list(cfg.films)
    films = [e.id for e in library if e.kind == "film" and e.material == material]
    if not films and not cfg.can_make_films:
        raise CampaignError(f"no film of {material!r} in the bench's library, and the campaign may not make films")
    return films


def campaign_cost(bench):
    """The lab-time cost model (``optimizer.CostModel``) of a campaign on ``bench``: a new film costs
    its making, its absorption measurement (``plans.absorption.absorption_lab_time_s``) and mounting."""
    from optimizer import CostModel
    from plans.absorption import absorption_lab_time_s

    return CostModel(film_measurement_s=float(absorption_lab_time_s(bench)))


def campaign_optimizer(cfg: CampaignConfig, bench, films: list[str]):
    """The campaign's optimiser over its search space, starting at ``films`` (library ids), priced by
    ``campaign_cost(bench)``."""
    from optimizer import LabState, SearchSpace, make_optimizer

    f_hi = _fluence_max(cfg, bench)
    dopings = [bench.config.library_entry(f).doping for f in films]
    doping = (cfg.doping_min, cfg.doping_max) if cfg.can_make_films else sorted(set(dopings))
    space = SearchSpace(
        fluence_uJ_cm2=(cfg.fluence_min_uJ_cm2, f_hi),
        stripe_length_um=(cfg.stripe_length_min_um, cfg.stripe_length_max_um),
        doping=doping,
        fluence_limit_uJ_cm2=f_hi,
    )
    extra = {}
    if cfg.prior is not None:
        # twin-guided: the twin's map as the GP's mean, and a new film valued where it may come out
        extra["prior"] = twin_prior_map(cfg.prior, prior_sample(bench.config, films), space, scan=cfg.scan_args)
        twin = getattr(bench.config, "twin", None)
        extra["film_doping_sd"] = float(twin.film_doping_spread) if twin is not None else DEFAULT_FILM_DOPING_SD
    return make_optimizer(
        cfg.strategy,
        space,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        lab_state=LabState(current_doping=dopings[0] if dopings else None, films=tuple(dopings)),
        cost=campaign_cost(bench),
        **extra,
    )


#: A twin-guided campaign's assumed scatter of a new film's doping around the request on a real bench
#: (electrons/dot) until two films have been made and measured (then it is estimated from them).
DEFAULT_FILM_DOPING_SD = 0.1

#: ``CampaignConfig.prior`` naming the shipped presets.
SHIPPED_PRIOR = "twin"


def prior_sample(bench_config, films: list[str]) -> str:
    """The presets sample whose map is the campaign's prior: the preset of its material's films (the
    bench file's library entries say it; ``bench_config`` a ``devices.config.BenchConfig``), else the
    twin's ``[twin] new_film_preset``."""
    for f in films:
        preset = bench_config.library_entry(f).preset
        if preset:
            return preset
    twin = getattr(bench_config, "twin", None)
    if twin is not None and twin.new_film_preset:
        return twin.new_film_preset
    raise CampaignError(
        "a twin prior needs the presets sample of the campaign's material: give its films a `preset` "
        "in the bench file's library"
    )


#: The twin parameter the prior's family of maps spans (the campaign's scans pick its value): the 1P
#: intraband absorption per electron (1/cm), which sets where in doping the threshold turns up again
#: (1P spill); log-spaced over ``PRIOR_FAMILY_RANGE``, the presets' own value among them.
PRIOR_FAMILY = "film.intraband_loss_1p_per_cm"
PRIOR_FAMILY_RANGE = (5.0, 200.0)
PRIOR_FAMILY_POINTS = 10


#: The coarse grid (stripe lengths x dopings) on which the prior's measurement model is computed.
SCAN_MODEL_GRID = (8, 4)


def twin_prior_map(
    prior: str,
    sample_id: str,
    space,
    n_length: int = 40,
    n_doping: int = 160,
    scan: Mapping | None = None,
    measured: bool = True,
):
    """The twin's predicted -ln threshold (uJ/cm^2) of ``sample_id`` over the campaign's stripe length x
    doping (an ``optimizer.PriorMap``, ``n_doping x n_length`` per member), from the presets ``prior``
    names: ``"twin"`` (the shipped presets) or a presets file. A family of maps over ``PRIOR_FAMILY``
    (the presets' own value and ``PRIOR_FAMILY_POINTS`` log-spaced values), from which the campaign's
    scans recalibrate the twin (``optimizer._prior``); one map if the presets have no such parameter.
    Where the twin reaches no threshold the map holds the setup's fluence limit x 10.

    ``measured`` (default): the threshold as the campaign's fluence scan reports it (its kink on the
    noise-free twin, ``gainloop.scan_model``; ``scan``: the campaign's ``scan_args``), computed as a
    smooth ratio to the model's threshold on a coarse grid (``SCAN_MODEL_GRID``) of the presets' own
    member and applied to every member; False: the gain model's threshold."""
    import numpy as np

    from gainloop.scan_model import scan_threshold_ratio, smooth_ln_ratio
    from optimizer import PriorMap
    from twin.ase import ase_threshold_uJ_cm2
    from twin.occupancy import doping_range
    from twin.presets import get_parameter, load_presets, with_parameters

    path = None if prior == SHIPPED_PRIOR else prior
    try:
        presets = load_presets(path)
        sample = presets.get(sample_id)
    except (OSError, GainloopError) as exc:
        raise CampaignError(f"cannot read the prior's presets {prior!r}: {exc}") from None
    l_lo, l_hi = space.stripe_length_um
    l_lo = max(l_lo, presets.setup.stripe_length_min_um)
    l_hi = min(l_hi, presets.setup.stripe_length_max_um)
    d_lo, d_hi = space.doping_bounds
    t_lo, t_hi = doping_range(sample.degeneracy, sample.doping_distribution)
    d_lo, d_hi = max(d_lo, t_lo), min(d_hi, t_hi)
    lengths = np.geomspace(l_lo, l_hi, n_length)
    dopings = np.linspace(d_lo, d_hi, n_doping)
    ln_ratio = np.zeros((n_doping, n_length))

    def model_thr(s) -> np.ndarray:
        return ase_threshold_uJ_cm2(lengths[None, :], dopings[:, None], s, presets.setup)

    if measured:
        f_lo, f_hi = space.fluence_uJ_cm2
        # where it matters: the dopings whose best threshold is within 2x of the map's best
        best = np.nanmin(np.where(np.isfinite(own_thr := model_thr(sample)), own_thr, np.nan), axis=1)
        near = dopings[best <= 2.0 * np.nanmin(best)] if np.any(np.isfinite(best)) else dopings
        grid_l = np.geomspace(l_lo, l_hi, SCAN_MODEL_GRID[0])
        grid_d = np.linspace(near.min(), near.max(), SCAN_MODEL_GRID[1])
        ratio = scan_threshold_ratio(presets, sample_id, grid_l, grid_d, f_lo, f_hi, scan)
        ln_ratio = smooth_ln_ratio(grid_l, grid_d, ratio, lengths[None, :], dopings[:, None])

    def neg_ln_map(s) -> np.ndarray:
        thr = model_thr(s)
        return -np.log(np.where(np.isfinite(thr), thr, 10.0 * presets.setup.fluence_limit_uJ_cm2)) - ln_ratio

    source = f"{'shipped presets' if path is None else path} [{sample_id}]"
    source += " (as the scan measures)" if measured else ""
    name = f"{sample_id}.{PRIOR_FAMILY}"
    try:
        own = get_parameter(presets, name)
    except GainloopError:
        return PriorMap.from_arrays(lengths, dopings, neg_ln_map(sample), source=source)
    grid = np.geomspace(*PRIOR_FAMILY_RANGE, PRIOR_FAMILY_POINTS).tolist()
    family = sorted({own, *(v for v in grid if abs(math.log(v / own)) > 0.1)}) if own > 0 else sorted({own, *grid})
    maps = [neg_ln_map(with_parameters(presets, {name: v}).get(sample_id)) for v in family]
    return PriorMap.from_arrays(
        lengths,
        dopings,
        np.stack(maps),
        family=family,
        family_name=PRIOR_FAMILY,
        family_index=float(family.index(own)),
        source=source,
    )


def _fluence_max(cfg: CampaignConfig, bench) -> float:
    """The campaign's highest fluence (uJ/cm^2): the config's, which may not exceed the bench's limit."""
    limit = bench.config.bench.fluence_limit_uJ_cm2
    if cfg.fluence_max_uJ_cm2 is None:
        return limit
    if not cfg.fluence_max_uJ_cm2 <= limit:
        raise CampaignError(
            f"fluence_max_uJ_cm2 = {cfg.fluence_max_uJ_cm2:g} exceeds the bench's fluence limit {limit:g} uJ/cm^2; "
            f"allowed: up to {limit:g}"
        )
    return cfg.fluence_max_uJ_cm2


# ------------------------------------------------------------------ reading a campaign back
def stored_campaign(catalog, campaign_uid: str) -> StoredCampaign:
    """The campaign as the catalog holds it (``gainloop.records``); ``CampaignError`` if it has none."""
    stored = read_campaign(catalog, campaign_uid)
    if stored is None:
        raise CampaignError(f"no campaign {campaign_uid!r} in the catalog at {catalog.location}")
    return stored


def rebuild_trials(catalog, campaign_uid: str) -> tuple[CampaignConfig, list[TrialRecord], float, list[dict]]:
    """(config, one ``TrialRecord`` per trial index, lab seconds used, films made) from the catalog alone."""
    stored = stored_campaign(catalog, campaign_uid)
    cfg = CampaignConfig.from_dict(stored.config)
    return cfg, list(stored.records), stored.lab_time_used_s, list(stored.films_made)


def fault_hook_from_env():
    """The fault-injection hook from ``$GAINLOOP_FAULT_INJECT`` (None when unset; see the module doc)."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    from plans.campaign import FAULT_POINTS

    actions: dict[tuple[str, int], str] = {}
    for entry in spec.split(","):
        action, _, where = entry.strip().partition("@")
        point, _, index = where.partition(":")
        ok = point in FAULT_POINTS and index.isdigit()
        if action.startswith("stall="):
            try:
                ok = ok and float(action[len("stall=") :]) >= 0
            except ValueError:
                ok = False
        elif action != "sigkill":
            ok = False
        if not ok:
            raise CampaignError(
                f"{FAULT_ENV}: bad entry {entry!r}; allowed: ACTION@POINT:TRIAL with ACTION sigkill or "
                f"stall=SECONDS, POINT one of {', '.join(FAULT_POINTS)}, TRIAL a trial index"
            )
        actions[(point, int(index))] = action

    def hook(point: str, trial_index: int):
        action = actions.get((point, trial_index))
        if action is None:
            return None
        if action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        import bluesky.plan_stubs as bps

        return bps.sleep(float(action[len("stall=") :]))

    return hook


def _check_fluence_settings(cfg: CampaignConfig, bench, pending: list[Proposal], what: str) -> float:
    """The campaign's highest fluence, after checking what it would send (config, scan_args, stored proposals).

    ``what`` names the campaign in the errors (e.g. "campaign UID" on resume)."""
    limit = bench.config.bench.fluence_limit_uJ_cm2
    try:
        f_hi = _fluence_max(cfg, bench)
    except CampaignError as exc:
        raise CampaignError(f"{what}: its config is refused: {exc}; nothing was sent") from None
    for key in ("fluence_min_uJ_cm2", "fluence_max_uJ_cm2"):
        value = cfg.scan_args.get(key)
        if value is None:
            continue
        try:
            ok = math.isfinite(float(value)) and 0 < float(value) <= f_hi
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CampaignError(
                f"{what}: its config's scan_args {key} = {value!r} is outside the campaign's "
                f"fluence range; allowed: above 0, up to {f_hi:g} uJ/cm^2 (bench limit {limit:g}); nothing was sent"
            )
    for p in pending:
        params = p.params
        if "fluence_uJ_cm2" in params:  # every strategy scans the fluence itself
            raise CampaignError(
                f"{what}: stored proposal of trial {p.trial_index} carries a fluence "
                f"({params['fluence_uJ_cm2']!r} uJ/cm^2) but its strategy {cfg.strategy!r} scans the fluence itself; "
                "refused, nothing was sent to the bench"
            )
    return f_hi


@dataclass
class PreparedCampaign:
    """A campaign ready to run: its plan (for any RunEngine), optimiser, bench and uid."""

    campaign_uid: str
    cfg: CampaignConfig
    plan: object
    optimizer: object
    bench: object
    history: list[TrialRecord]  # the trials of a resumed campaign so far (empty for a new one)
    replayed: list[Proposal]  # its stored proposals never measured: measured first


def _settle(catalog) -> None:
    """Wait (bounded) for the drain of what the spool holds before a campaign is rebuilt from the catalog.

    Without it a resume would count a trial whose run is still in the spool as lost, or one
    cut off mid-write as failed (``Catalog.settle``: a clear error if the catalog does not take them)."""
    settle = getattr(catalog, "settle", None)
    if settle is not None:
        settle()


def prepare_campaign(
    catalog,
    cfg: CampaignConfig | None = None,
    *,
    bench,
    resume_uid: str | None = None,
    budgets: dict | None = None,
    progress=None,
    fault_hook=None,
) -> PreparedCampaign:
    """Everything ``run_campaign`` runs, without running it: the campaign plan on ``bench`` (an open
    ``devices.Bench``, e.g. from ``gainloop.running.open_bench``) with a fresh optimiser.

    ``fault_hook``: see ``plans.campaign`` (default: from ``$GAINLOOP_FAULT_INJECT``, None when unset).
    """
    from core.errors import ParameterError
    from plans.campaign import campaign

    history: list[TrialRecord] = []
    pending: list[Proposal] = []
    used_s = 0.0
    films_made: list[dict] = []
    film_dopings: dict = {}
    unusable: set[str] = set()
    if resume_uid is not None:
        _settle(catalog)
        stored = stored_campaign(catalog, resume_uid)
        cfg = CampaignConfig.from_dict(stored.config).with_budgets(**(budgets or {}))
        history, used_s, pending = list(stored.records), stored.lab_time_used_s, list(stored.pending)
        films_made = list(stored.films_made)
        film_dopings, unusable = stored.film_dopings, stored.unusable_films
        campaign_uid = resume_uid
    else:
        if cfg is None:
            raise CampaignError("a new campaign needs a config")
        campaign_uid = str(uuid.uuid4())
    cfg = replace(cfg, material=campaign_material(cfg, bench))  # stored resolved: a resume optimises the same material
    films = campaign_films(cfg, bench)
    initial_films = list(films)  # the optimiser starts from these; the history replays the films made since
    for f in films_made:  # films made before the interruption are on the stage
        bench.stage.add_film(bench.config.new_film_entry(f["id"], f["doping"]))
        films.append(f["id"])
    bench.restore_lab_time(used_s)
    what = f"campaign {campaign_uid}" if resume_uid is not None else "the new campaign"
    f_hi = _check_fluence_settings(cfg, bench, pending, what)
    if cfg.warm_start and resume_uid is None:  # stored resolved and pinned: a resume reads the same data
        now = time.time()
        cfg = replace(
            cfg,
            warm_start=tuple(
                pin_run_query(u, now) if is_run_query(u) else _resolve_campaign(catalog, u) for u in cfg.warm_start
            ),
        )
    opt = campaign_optimizer(cfg, bench, initial_films)
    if cfg.warm_start:
        opt.warm_start(warm_start_results(catalog, cfg))
    if history:
        opt.ingest([r.result for r in history])
    for p in pending:  # recorded, never measured: measured first, each checked against the search space
        try:
            opt.mark_pending([replace(p, strategy=opt.strategy)])
        except ParameterError as exc:
            raise CampaignError(
                f"campaign {campaign_uid}: stored proposal of trial {p.trial_index} refused: {exc}; "
                "nothing was sent to the bench"
            ) from None
    attempted = sum(1 for r in history if r.status != "abandoned" or r.run_uid)  # as StoredCampaign.trials
    plan = campaign(
        bench,
        opt,
        campaign_uid=campaign_uid,
        lab_clock=bench.lab_time_s,
        budget_lab_h=cfg.budget_lab_h,
        max_trials=cfg.max_trials,
        target_threshold_uJ_cm2=cfg.target_threshold_uJ_cm2,
        lab_time_used_s=used_s,
        trials_done=attempted,
        abandoned_done=len(history) - attempted,
        films=films,
        can_make_films=cfg.can_make_films,
        scan_args={"fluence_min_uJ_cm2": cfg.fluence_min_uJ_cm2, "fluence_max_uJ_cm2": f_hi, **cfg.scan_args},
        max_threshold_rel_err=cfg.max_threshold_rel_err,
        progress=progress,
        md={"config": cfg.as_dict(), "lab_clock": bench.lab_clock_source},
        fault_hook=fault_hook if fault_hook is not None else fault_hook_from_env(),
        film_dopings=film_dopings,
        unusable_films=unusable,
    )
    return PreparedCampaign(campaign_uid, cfg, plan, opt, bench, history, pending)


def run_campaign(
    catalog,
    cfg: CampaignConfig | None = None,
    *,
    resume_uid: str | None = None,
    budgets: dict | None = None,
    progress=None,
    exit_on_interrupt: bool = False,
    bench=None,
    presets=None,
    RE=None,
) -> dict:
    """Start a campaign (``cfg``) or resume one (``resume_uid``); return its summary.

    ``budgets``: on resume, new ``budget_lab_h`` / ``max_trials`` / ``target_threshold_uJ_cm2``
    (the totals over the whole campaign) in place of the stored ones. Ctrl+C or SIGTERM end it
    with ``CampaignInterrupted`` once its open runs are closed and the bench is made safe
    (``gainloop.running.run_plan``). ``exit_on_interrupt``: the caller exits after
    ``CampaignInterrupted`` (the CLI): from then on the signals are ignored, so that a key held
    down cannot break the closing of the catalog or the interpreter's shutdown with a traceback.

    Collaborators: ``bench`` (an open ``devices.Bench``; default: the config's bench file over
    EPICS, else the twin with the config's ``twin_seed`` on ``presets``, a ``twin.presets.PresetFile``
    or None for the shipped presets, opened and closed here); ``RE`` (default: a new
    ``RunEngine`` with bluesky's Ctrl+C handling; the catalog's campaign writer is subscribed to it).
    """
    from bluesky import RunEngine

    from gainloop.running import PlanInterrupted, open_bench, run_plan
    from gainloop.twin_history import restore_film_doses

    with contextlib.ExitStack() as opened:
        if bench is None:
            stored = (
                cfg if resume_uid is None else CampaignConfig.from_dict(stored_campaign(catalog, resume_uid).config)
            )
            if stored is None:
                raise CampaignError("a new campaign needs a config")
            bench = opened.enter_context(open_bench(stored.bench_file, seed=stored.twin_seed, presets=presets))
            restore_film_doses(bench, catalog)  # the twin's films continue their photo-damage from the catalog
        prepared = prepare_campaign(
            catalog, cfg, bench=bench, resume_uid=resume_uid, budgets=budgets, progress=progress
        )
        campaign_uid = prepared.campaign_uid
        RE = RE if RE is not None else RunEngine({}, call_returns_result=True)
        RE.subscribe(catalog.campaign_writer())
        try:
            result = run_plan(
                RE, prepared.plan, bench, what=f"campaign {campaign_uid}", exit_on_interrupt=exit_on_interrupt
            )
        except PlanInterrupted as exc:
            raise CampaignInterrupted(
                f"{exc}; continue it with `gainloop campaign resume {campaign_uid}`", signal_name=exc.signal_name
            ) from None
        lab_clock = bench.lab_clock_source
    if result.exit_status != "success":
        raise CampaignError(f"campaign {campaign_uid} ended with {result.exit_status}: {result.reason}")
    opt = prepared.optimizer
    summary = dict(result.plan_result)
    summary["best"] = opt.best()
    summary["failures"] = sum(r.status == "failed" for r in opt.history())
    summary["lab_clock"] = lab_clock
    summary["material"] = prepared.cfg.material
    summary["failed_trials"] = [
        {"trial_index": r.trial_index, "status": r.status, "reason": r.reason}
        for r in opt.history()
        if r.status in ("failed", "abandoned")
    ]
    return summary


def campaign_status(catalog, campaign_uid: str) -> dict:
    """Best conditions so far, lab time used, trials and failures, from the catalog alone.

    ``trials`` counts what the campaign plan's summary counts: trials measured or attempted on the
    bench (``StoredCampaign.trials``); proposals abandoned before a run opened are ``abandoned``."""
    stored = stored_campaign(catalog, campaign_uid)
    cfg = CampaignConfig.from_dict(stored.config)
    done = [
        r
        for r in stored.records
        if r.status == "completed" and math.isfinite(r.outcome.get("threshold_uJ_cm2", math.nan))
    ]
    best = min(done, key=lambda r: r.outcome["threshold_uJ_cm2"], default=None)
    out = {
        "campaign_uid": campaign_uid,
        "strategy": cfg.strategy,
        "best": None
        if best is None
        else {
            "threshold_uJ_cm2": best.outcome["threshold_uJ_cm2"],
            "threshold_err_uJ_cm2": best.outcome.get("threshold_err_uJ_cm2"),
            "stripe_length_um": best.params["stripe_length_um"],
            "doping": best.measured_doping if best.doping_measured else best.params["doping"],
            "requested_doping": best.requested_doping if best.doping_measured else None,
            "doping_measured": best.doping_measured,
            "trial_index": best.trial_index,
        },
        "lab_hours": stored.lab_time_used_s / 3600.0,
        "lab_clock": stored.lab_clock,
        "trials": len(stored.trials),
        "abandoned": len(stored.records) - len(stored.trials),
        "failures": sum(r.status == "failed" for r in stored.records),
        "failed_trials": [
            {"trial_index": r.trial_index, "status": r.status, "reason": r.reason, "run_uid": r.run_uid}
            for r in stored.records
            if r.status in ("failed", "abandoned")
        ],
        "films_made": len(stored.films_made),
        "films_measured": stored.films_measured,
        "material": cfg.material,
    }
    if cfg.prior is not None:
        out["prior"] = prior_residuals(cfg, done)
    if cfg.warm_start:
        out["warm_start"] = {
            "campaigns": [e for e in cfg.warm_start if not is_run_query(e)],
            "queries": [e for e in cfg.warm_start if is_run_query(e)],
            "completed_trials": len(warm_start_results(catalog, cfg)),
        }
    return out


def _resolve_campaign(catalog, given: str) -> str:
    """The uid of the campaign ``given`` names (whole, or an unambiguous start of it)."""
    try:
        return catalog.resolve_uid(given, key="campaign_uid", what="campaign", where={"plan_name": "campaign"})
    except GainloopError as exc:
        raise CampaignError(f"warm start: {exc}") from None


def warm_start_results(catalog, cfg: CampaignConfig) -> list:
    """The completed trials (``TrialResult``) of the campaigns ``cfg.warm_start`` names, read from the catalog:
    each must have optimised the same material; then those of its queries of stored scans
    (``gainloop.warm_start``; a run already among a named campaign's trials counted once). They are data for
    the model, never measured again."""
    from devices.config import load_bench
    from sim.devices import default_twin_bench_path

    out = []
    seen: set[str] = set()
    entries = cfg.warm_start or ()
    queries = [e for e in entries if is_run_query(e)]
    for uid in (e for e in entries if not is_run_query(e)):
        stored = stored_campaign(catalog, uid)
        other = CampaignConfig.from_dict(stored.config)
        if other.material != cfg.material:
            raise CampaignError(
                f"warm start from campaign {uid}: it optimised {other.material!r}, this campaign {cfg.material!r}; "
                "allowed: campaigns of the same material"
            )
        done = [r for r in stored.records if r.status == "completed" and "fluence_uJ_cm2" not in r.params]
        out += [r.result for r in done]
        seen.update(r.run_uid for r in done if r.run_uid)
    if queries:
        bench_config = load_bench(cfg.bench_file or default_twin_bench_path())
        for q in queries:
            try:
                found = stored_scan_results(
                    catalog,
                    q,
                    bench_config=bench_config,
                    material=cfg.material,
                    max_rel_err=cfg.max_threshold_rel_err,
                    exclude_run_uids=seen,
                )
            except WarmStartError as exc:
                raise CampaignError(str(exc)) from None
            seen.update(uid for uid, _ in found)
            out += [r for _, r in found]
    return out


def prior_residuals(cfg: CampaignConfig, done: list[TrialRecord]) -> dict:
    """The twin prior versus the data: per completed trial, the threshold the prior's presets predict at its
    stripe length and (measured) doping, as the campaign's scan measures it (``gainloop.scan_model``), and
    ``residual_ln`` = ln(measured / predicted); their rms.

    The prediction is the presets' own twin (before the campaign's refit of level, depth and the 1P
    intraband absorption): how far the twin the campaign started from is from this bench."""
    from devices.config import load_bench
    from gainloop.scan_model import scan_threshold
    from sim.devices import default_twin_bench_path
    from twin.presets import load_presets

    bench_config = load_bench(cfg.bench_file or default_twin_bench_path())
    try:
        films = [e.id for e in bench_config.stage.library if e.kind == "film" and e.material == cfg.material]
        sample_id = prior_sample(bench_config, films)
        presets = load_presets(None if cfg.prior == SHIPPED_PRIOR else cfg.prior)
        presets.get(sample_id)  # the sample must exist in the prior's presets
    except (OSError, GainloopError) as exc:
        return {"source": cfg.prior, "error": f"the prior's presets cannot be read: {exc}", "trials": []}
    f_lo = cfg.fluence_min_uJ_cm2
    f_hi = cfg.fluence_max_uJ_cm2 or bench_config.bench.fluence_limit_uJ_cm2
    rows = []
    for r in done:
        doping = r.measured_doping if r.doping_measured else r.params["doping"]
        length = float(r.params["stripe_length_um"])
        try:
            predicted = scan_threshold(presets, sample_id, length, float(doping), f_lo, f_hi, cfg.scan_args)
        except GainloopError:
            predicted = math.nan
        measured = float(r.outcome["threshold_uJ_cm2"])
        ok = math.isfinite(predicted) and predicted > 0
        rows.append(
            {
                "trial_index": r.trial_index,
                "stripe_length_um": length,
                "doping": float(doping),
                "threshold_uJ_cm2": measured,
                "predicted_threshold_uJ_cm2": predicted if ok else None,
                "residual_ln": math.log(measured / predicted) if ok else None,
            }
        )
    res = [row["residual_ln"] for row in rows if row["residual_ln"] is not None]
    return {
        "source": cfg.prior,
        "sample": sample_id,
        "trials": rows,
        "rms_residual_ln": math.sqrt(sum(v * v for v in res) / len(res)) if res else None,
    }
