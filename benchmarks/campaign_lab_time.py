"""Campaign lab time: lab hours until the best-found threshold is within 5 % of the twin's optimum.

Every strategy runs whole campaigns in-process on the twin
(``sim.devices.twin_bench_devices(default_twin_bench_path(), seed=seed)``, a fresh
``RunEngine({}, call_returns_result=True)``, no catalog writer), one per seed, the twin's
seed equal to the campaign's (seed ``s`` of every strategy sees the same twin):

* ours -- ``nested`` (adaptive fluence scans) and ``nested_prior`` (the same, twin-guided: the GP's
  prior mean is the twin's threshold map from the shipped presets, or ``--prior FILE``, refitted to
  the campaign's scans; ``campaign run --prior``), built as the service builds them
  (``gainloop.campaign.campaign_optimizer``). (``joint`` is not run here: it never reached, 0/10.);
* baselines -- ``random`` search and ``grid`` (a grid of fluence scans, film by film);
* peers (``benchmarks/peers.py``, the ``bench`` extra) -- ``ax`` (Ax's ``Client``) and
  ``xopt`` (Xopt's expected-improvement generator) behind the optimiser protocol,
  through the same campaign plan; ``blop`` -- blop's own ``optimize`` plan (its Ax
  backend) with the campaign's film + ``ase_fluence_scan`` as its acquisition plan.

All get the same search space (stripe length 100-4000 um, log; doping 0-7.9
electrons/dot, continuous: a doping without a film costs a new film, 6 lab hours; the
library's cas_doped-film at 7.4 exists), the same measurement plans and the same
lab-time budget (``--budget-hours``). Peers and baselines measure nested trials.

Reached: the first lab time (the twin's lab clock; progress after every trial) at which
``|best - opt| / opt <= tol`` (``--tol``, 5 %), ``opt`` from
``twin.landscape.find_optimum(presets.get("cas_doped"), presets.setup)``. The progress
callback ends a campaign at that first hit (what follows cannot change it), else it runs
to the budget: a seed that does not reach is censored at the budget, and the median /
quartiles are over all seeds with censored values = budget (a median at the budget
reads ">= B"); a trial that ends past the budget does not count. A best more than tol
*below* the optimum is not a hit (counted as ``below_band``). ``best`` is what the
optimiser's ``best()`` reports: the lowest measured kink threshold. A ``best()`` that is a model
estimate (it carries ``estimate``) counts only when the twin's true threshold at its conditions
(``twin.landscape.feasible_threshold`` on the bench's presets) is within tol too (else it is a
``spurious`` hit, reported, and the campaign goes on).

The grid (``optimizer.GridSearch``: 6 stripe lengths x 5 dopings) plays one pass and
stops: later passes only re-measure the same points, so a grid that has not reached
after one pass never does (its time is unbounded; censored at the budget here).

Prints a table and the ratios (targets: ours <= 0.5x the best peer, <= 0.25x the grid);
with ``--json``, one JSON object on the last line keyed by bench, then by strategy (below):
``median_lab_hours``, ``p25``, ``p75``, ``reached`` (seeds within tol), ``seeds``, ``budget_lab_h``,
and for ours ``ratio_to_best_peer``, ``ratio_to_grid`` (ratios of medians; ``ratio_is_bound``
says which denominators are censored at the budget, making the ratio an upper bound);
``nested_no_scatter`` (the same statistics without doping scatter, with ``--film-scatter``).

Films as they come out (``--film-scatter``, electrons/dot; default the twin's
``[twin] film_doping_spread``, 0.1): every campaign runs on a twin whose new films' true
doping scatters by that much around the request (each new film measured by its absorption
before its first trial, the optimiser modelling the measured doping), and the nested strategy
runs once more with no doping scatter (``nested_no_scatter``); the two are printed side by
side. The films' thickness and loss scatter as the bench file says in both.

Benches with hidden truth (``--bench-presets FILE``, repeatable; ``benchmarks/benches/*.toml``): the
twin's devices are built from the file (the bench's truth), the optimiser and its prior only see the
shipped presets (or ``--prior``); each bench is reported beside the shipped twin (``--no-shipped``
leaves that out), with its own optimum and its physical limit (one new film, made, measured and
mounted, plus four fluence scans at the cost model's price). With ``--json`` the last line is one
object keyed by bench name (``shipped`` and each file's stem), each keyed by strategy, each with
the statistics above and ``physical_limit_lab_h``, ``optimum``; ``nested_prior`` also
``ratio_to_no_prior`` (ratio of medians). The no-scatter side run happens only with an explicit
``--film-scatter``.

Seeds run in parallel worker processes (``--workers``; one BLAS / torch thread each).
The default run (7 strategies x 10 seeds, 48 lab h) takes ~29 CPU-minutes: ~15-25 min
on 2 cores (24 min measured on a shared machine); ``--seeds`` / ``--strategies`` trim it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/peers.py, also in worker processes

OURS = ("nested", "nested_prior")
BASELINES = ("random", "grid")
PEERS = ("ax", "xopt", "blop")
STRATEGIES = (*OURS, *BASELINES, *PEERS)
LABELS = {
    "nested": "ours (nested)",
    "nested_prior": "ours (nested, twin prior)",
    "random": "random search",
    "grid": "grid of fluence scans",
    "ax": "Ax Client",
    "xopt": "Xopt (EI generator)",
    "blop": "blop optimize (Ax)",
    "nested_no_scatter": "ours (nested), no scatter",
}
#: The nested strategy again on films exactly as requested (no doping scatter).
NO_SCATTER = "nested_no_scatter"


def twin_film_scatter() -> float:
    """The twin's doping spread of a new film (electrons/dot): its bench file's ``[twin] film_doping_spread``."""
    from devices.config import load_bench
    from sim.devices import default_twin_bench_path

    return float(load_bench(default_twin_bench_path()).twin.film_doping_spread)


def _twin_bench(seed: int, film_scatter: float | None, bench_presets: str | None = None):
    """The twin's bench (in-process devices) with new films' doping spread ``film_scatter`` (None: the file's),
    its devices built from ``bench_presets`` (the bench's hidden truth; None: the shipped presets)."""
    from devices.config import load_bench
    from sim.devices import default_twin_bench_path, twin_bench_devices

    cfg = load_bench(default_twin_bench_path())
    if film_scatter is not None:
        cfg = cfg.model_copy(update={"twin": cfg.twin.model_copy(update={"film_doping_spread": float(film_scatter)})})
    return twin_bench_devices(cfg, seed=seed, presets=bench_presets)


SAMPLE = "cas_doped"
PEER_TARGET, GRID_TARGET = 0.5, 0.25
#: Targets of the twin prior: median lab hours on the shipped twin / on a mismatched bench, ratio to no prior.
PRIOR_TARGET_H = {"shipped": 7.0, "bench": 9.0}
PRIOR_RATIO_TARGET = 1.1


class _Stop(Exception):
    """Raised by the progress callback to end a campaign (the plan closes its runs and re-raises)."""


class _Reached(_Stop):
    """The best-found threshold is within tol of the optimum: the first hit is all that is measured."""


class _WallCap(_Stop):
    """A campaign ran past its wall-time cap (``--max-wall-s``)."""


def optimum(bench_presets: str | None = None) -> dict:
    """The bench's true optimum (``twin.landscape.find_optimum`` on its presets; None: the shipped ones)."""
    from twin.landscape import find_optimum
    from twin.presets import load_presets

    presets = load_presets(bench_presets)
    return find_optimum(presets.get(SAMPLE), presets.setup, SAMPLE).as_dict()


def true_threshold(stripe_length_um: float, doping: float, bench_presets: str | None = None) -> float:
    """The bench's model threshold (uJ/cm^2; inf where not deliverable) of a film of this doping."""
    from twin.landscape import feasible_threshold
    from twin.presets import load_presets

    presets = load_presets(bench_presets)
    return float(feasible_threshold(float(stripe_length_um), float(doping), presets.get(SAMPLE), presets.setup))


def _setup_worker(quiet: bool) -> None:
    import logging
    import warnings

    import torch

    if quiet:  # Ax's INFO lines and the RunEngine's "Run aborted" tracebacks (a stopped campaign) go nowhere
        sys.stderr = open(os.devnull, "w")

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("ax", "blop", "xopt", "bluesky", "ophyd", "botorch", "linear_operator", "gpytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_one(
    strategy: str,
    seed: int,
    budget_h: float,
    tol: float,
    opt_thr: float,
    max_wall_s: float | None,
    quiet: bool = True,
    film_scatter: float | None = None,
    bench_presets: str | None = None,
    prior: str | None = None,
) -> dict:
    """One campaign on a fresh twin; lab hours at the first best within ``tol`` of ``opt_thr``.

    ``film_scatter``: new films' doping spread (electrons/dot; None: the bench file's);
    ``strategy`` ``NO_SCATTER`` is the nested strategy with none. ``bench_presets``: the twin's hidden
    truth (None: the shipped presets); ``prior``: the presets ``nested_prior`` starts from (``"twin"``:
    the shipped ones, whatever the bench's truth)."""
    _setup_worker(quiet)
    from bluesky import RunEngine

    from gainloop.campaign import CampaignConfig, campaign_films, campaign_material, campaign_optimizer
    from plans.campaign import campaign

    if strategy == NO_SCATTER:
        film_scatter = 0.0
    cfg = CampaignConfig(
        strategy=strategy if strategy in BASELINES else "nested",
        seed=seed,
        twin_seed=seed,
        budget_lab_h=budget_h,
        prior=(prior or "twin") if strategy == "nested_prior" else None,
    )  # (frozen: built whole)
    bench = _twin_bench(cfg.twin_seed, film_scatter, bench_presets)
    cfg = dataclasses.replace(cfg, material=campaign_material(cfg, bench))
    films = campaign_films(cfg, bench)
    n_lib = len(bench.stage.library)
    clock = bench.lab_time_s
    out: dict = {
        "strategy": strategy,
        "seed": seed,
        "reached": False,
        "hit_lab_hours": None,
        "hit_trials": None,
        "hit_best": None,
        "trials": 0,
        "lab_hours": 0.0,
        "stopped_by": "",
        "suggest_wall_s": 0.0,
        "error": "",
        "film_scatter": float(bench.config.twin.film_doping_spread),
    }
    t0 = time.perf_counter()

    def progress(s: dict) -> None:
        out["trials"], out["lab_hours"] = int(s["trials"]), float(s["lab_hours"])
        if "suggest_wall_s" in s:  # blop: its optimizer's suggest time
            out["suggest_wall_s"] = float(s["suggest_wall_s"])
        b = s.get("best")
        h = float(s["lab_hours"])
        if b and math.isfinite(b.get("threshold_uJ_cm2", math.nan)) and h <= budget_h:  # a trial may end past it
            dev = (float(b["threshold_uJ_cm2"]) - opt_thr) / opt_thr
            if abs(dev) <= tol:
                hit = {k: b.get(k) for k in ("threshold_uJ_cm2", "stripe_length_um", "doping")}
                if out.get("hit_as_reported_lab_hours") is None:
                    out["hit_as_reported_lab_hours"] = h
                if "estimate" in b:  # a model's estimate, not a measurement: the twin's truth there must agree
                    hit["true_threshold_uJ_cm2"] = true_threshold(b["stripe_length_um"], b["doping"], bench_presets)
                    if not abs(hit["true_threshold_uJ_cm2"] - opt_thr) <= tol * opt_thr:
                        out["spurious_hits"] = out.get("spurious_hits", 0) + 1
                        out["first_spurious"] = out.get("first_spurious") or {**hit, "lab_hours": h}
                        hit = None
                if hit is not None:
                    out.update(reached=True, hit_lab_hours=h, hit_trials=int(s["trials"]), hit_best=hit)
                    raise _Reached()
            elif dev < -tol:  # below the band: not a hit; counted
                out["below_band"] = out.get("below_band", 0) + 1
        if max_wall_s is not None and time.perf_counter() - t0 > max_wall_s:
            raise _WallCap(f"wall-time cap {max_wall_s:g} s at {s['lab_hours']:.2f} lab h")

    RE = RunEngine({}, call_returns_result=True)
    RE.context_managers = []  # no SIGINT handler in worker processes
    opt = None
    if strategy == "blop":
        from peers import blop_campaign

        plan = blop_campaign(
            bench,
            seed=seed,
            lab_clock=clock,
            budget_lab_h=budget_h,
            films=films,
            progress=progress,
        )
    else:
        if strategy in PEERS:
            from peers import AxPeer, XoptPeer

            opt = {"ax": AxPeer, "xopt": XoptPeer}[strategy](seed=seed)
        else:
            opt = campaign_optimizer(cfg, bench, films)
        suggest = opt.suggest

        def timed_suggest(*args, **kwargs):
            ts = time.perf_counter()
            try:
                return suggest(*args, **kwargs)
            finally:
                out["suggest_wall_s"] += time.perf_counter() - ts

        opt.suggest = timed_suggest
        plan = campaign(
            bench,
            opt,
            campaign_uid=f"lab-time-{strategy}-{seed}",
            lab_clock=clock,
            budget_lab_h=budget_h,
            # the grid repeats itself after one pass: later trials re-measure points already measured
            max_trials=opt.n_lengths * opt.n_dopings if strategy == "grid" else None,
            films=films,
            progress=progress,
        )
    try:
        result = RE(plan)
        summary = result.plan_result if result.exit_status == "success" else {}
        out["stopped_by"] = summary.get("stopped_by", "") if summary else f"run {result.exit_status}: {result.reason}"
        if strategy == "grid" and out["stopped_by"] == "trial budget":
            out["stopped_by"] = "one grid pass done"
    except Exception as exc:
        cause, seen = exc, set()
        while not isinstance(cause, _Stop) and id(cause) not in seen:
            seen.add(id(cause))
            nxt = cause.__cause__ or cause.__context__
            if nxt is None:
                break
            cause = nxt
        if isinstance(cause, _Reached):
            out["stopped_by"] = "within tol"
        elif isinstance(cause, _WallCap):
            out["stopped_by"] = f"wall cap ({cause})"
        else:
            out["stopped_by"] = "error"
            out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    out["wall_s"] = time.perf_counter() - t0
    out["films_made"] = len(bench.stage.library) - n_lib
    made = [sid for sid in bench.stage.library if sid not in {e.id for e in bench.config.stage.library}]
    # how far the films came out from the request (electrons/dot): the twin's hidden truth
    out["film_doping_offsets"] = [
        float(bench.engine.film_truth(sid).doping_e_per_dot - bench.engine.film_truth(sid).requested_doping_e_per_dot)
        for sid in made
    ]
    return out


def _stats(rows: list[dict], budget_h: float) -> dict:
    times = np.array([r["hit_lab_hours"] if r["reached"] else budget_h for r in rows], dtype=float)
    p25, med, p75 = (float(v) for v in np.percentile(times, [25, 50, 75]))
    n_trials = sum(r["trials"] for r in rows)
    return {
        "median_lab_hours": med,
        "p25": p25,
        "p75": p75,
        "reached": int(sum(r["reached"] for r in rows)),
        "seeds": len(rows),
        "budget_lab_h": budget_h,
        "median_censored": bool(med >= budget_h),
        "wall_s_per_seed": float(np.mean([r["wall_s"] for r in rows])),
        "suggest_s_per_trial": (sum(r["suggest_wall_s"] for r in rows) / n_trials) if n_trials else None,
        "trials_per_seed": n_trials / len(rows),
        "errors": sorted({r["error"] for r in rows if r["error"]}),
        "wall_capped": int(sum(r["stopped_by"].startswith("wall cap") for r in rows)),
        "median_lab_hours_run": float(np.median([r["lab_hours"] for r in rows])),
        "lab_hours_by_seed": [r["hit_lab_hours"] if r["reached"] else None for r in rows],
        "reached_as_reported": int(sum(r.get("hit_as_reported_lab_hours") is not None for r in rows)),
        "median_lab_hours_as_reported": float(
            np.median([r.get("hit_as_reported_lab_hours") or budget_h for r in rows])
        ),
        "spurious_hits": int(sum(r.get("spurious_hits", 0) for r in rows)),
        "best_at_hit_by_seed": [r.get("hit_best") for r in rows],
        "stopped_by": sorted({r["stopped_by"].split(" (")[0] for r in rows}),
        "films_per_seed": float(np.mean([r.get("films_made", 0) for r in rows])),
        # not reached because the best measured lies more than tol *below* the optimum (a film better
        # than the preset's: its thickness or loss scattered, or a lucky fit)
        "seeds_below_band": int(sum(1 for r in rows if r.get("below_band") and not r["reached"])),
        "film_offset_rms": (
            float(np.sqrt(np.mean(np.square(offsets))))
            if (offsets := [o for r in rows for o in r.get("film_doping_offsets", [])])
            else None
        ),
        "film_scatter": rows[0].get("film_scatter") if rows else None,
    }


def _fmt_h(v: float, censored: bool) -> str:
    return f">={v:.1f}" if censored else f"{v:.1f}"


def physical_limit_lab_h(n_scans: int = 4) -> float:
    """One new film at the right doping (made, its absorption measured, mounted: ``campaign_cost``) plus
    ``n_scans`` fluence scans at the cost model's price (lab hours): no strategy can do better on average."""
    from gainloop.campaign import campaign_cost

    bench = _twin_bench(0, None)
    cost = campaign_cost(bench)
    film = cost.new_film_s + cost.film_measurement_s + cost.sample_change_s
    return (film + n_scans * cost.measurement_s(joint=False)) / 3600.0


def _bench_table(
    name: str, opt: dict, stats: dict, runnable: list[str], args, unavailable: dict, limit_h: float, scatter: float
) -> None:
    """Print one bench's table and ratios (and fill the ratios into ``stats``)."""
    opt_thr = float(opt["threshold_uJ_cm2"])
    peer_medians = {s: stats[s]["median_lab_hours"] for s in PEERS if s in stats}
    best_peer = (  # ties (censored medians) go to the peer that reached more often, then the lower p25
        min(peer_medians, key=lambda s: (peer_medians[s], -stats[s]["reached"], stats[s]["p25"]))
        if peer_medians
        else None
    )
    for s in OURS:
        if s not in stats:
            continue
        med = stats[s]["median_lab_hours"]
        stats[s]["ratio_to_best_peer"] = med / peer_medians[best_peer] if best_peer else None
        stats[s]["best_peer"] = best_peer
        stats[s]["ratio_to_grid"] = med / stats["grid"]["median_lab_hours"] if "grid" in stats else None
        # a censored denominator makes the ratio an upper bound; a censored numerator makes it unknown
        stats[s]["ratio_is_bound"] = {
            "best_peer": bool(best_peer and stats[best_peer]["median_censored"]),
            "grid": bool("grid" in stats and stats["grid"]["median_censored"]),
        }
    if "nested_prior" in stats and "nested" in stats:
        stats["nested_prior"]["ratio_to_no_prior"] = (
            stats["nested_prior"]["median_lab_hours"] / stats["nested"]["median_lab_hours"]
        )
    for st in stats.values():
        st["physical_limit_lab_h"] = limit_h
        st["optimum"] = opt

    print()
    print(
        f"[{name}] lab time until the best threshold is within {args.tol:.0%} of this bench's optimum "
        f"({opt_thr:.1f} uJ/cm^2 at L = {opt['stripe_length_um']:.0f} um, doping {opt['doping']:.2f}; {SAMPLE}); "
        f"physical limit {limit_h:.2f} lab h (one new film + 4 scans)"
    )
    print(
        f"{args.seeds} seeds, budget {args.budget_hours:g} lab h, film doping scatter {scatter:g} e/dot; a seed that "
        f"does not reach counts as the budget (median/quartiles over all seeds; '>=' marks a value at the budget)"
    )
    head = (
        f"{'strategy':28s}{'reached':>9s}{'median h':>10s}{'p25 h':>8s}{'p75 h':>8s}"
        f"{'lab h run':>10s}{'trials/seed':>12s}{'films/seed':>11s}{'wall s/seed':>12s}{'suggest s/trial':>16s}"
        "  stopped by"
    )
    print(head)
    print("-" * len(head))
    b = args.budget_hours
    for s in runnable:
        st = stats[s]
        sug = st["suggest_s_per_trial"]
        print(
            f"{LABELS[s]:28s}{st['reached']:>4d}/{st['seeds']:<4d}"
            f"{_fmt_h(st['median_lab_hours'], st['median_lab_hours'] >= b):>10s}"
            f"{_fmt_h(st['p25'], st['p25'] >= b):>8s}{_fmt_h(st['p75'], st['p75'] >= b):>8s}"
            f"{st['median_lab_hours_run']:>10.2f}{st['trials_per_seed']:>12.1f}{st['films_per_seed']:>11.1f}"
            f"{st['wall_s_per_seed']:>12.1f}"
            f"{(f'{sug:.2f}' if sug is not None else '-'):>16s}  {', '.join(st['stopped_by'])}"
            + (f"  errors: {st['errors']}" if st["errors"] else "")
            + (f"  wall-capped: {st['wall_capped']}" if st["wall_capped"] else "")
        )
    for s, why in unavailable.items():
        print(f"{LABELS[s]:28s}  not run: {why}")

    def verdict(ratio: float, target: float, own_censored: bool, other_censored: bool) -> str:
        if own_censored:
            return "unknown: our median is censored"
        if ratio <= target:
            return "met" + (" (bound)" if other_censored else "")
        return "undetermined: the other median is censored" if other_censored else "NOT met"

    grid_unbounded = bool(
        "grid" in stats and stats["grid"]["reached"] == 0 and stats["grid"]["stopped_by"] == ["one grid pass done"]
    )
    for s in OURS:
        if s not in stats:
            continue
        st = stats[s]
        st["grid_never_reaches"] = grid_unbounded
        own = st["median_censored"]
        parts = []
        if st["ratio_to_best_peer"] is not None:
            bound = st["ratio_is_bound"]["best_peer"]
            parts.append(
                f"{'<=' if bound else ''}{st['ratio_to_best_peer']:.2f}x the best peer ({LABELS[best_peer]}) "
                f"[target <= {PEER_TARGET}: {verdict(st['ratio_to_best_peer'], PEER_TARGET, own, bound)}]"
            )
        if st["ratio_to_grid"] is not None:
            bound = st["ratio_is_bound"]["grid"]
            v = verdict(st["ratio_to_grid"], GRID_TARGET, own, bound)
            if grid_unbounded and not own:
                v = "met: the grid never reaches"
            parts.append(f"{'<=' if bound else ''}{st['ratio_to_grid']:.2f}x the grid [target <= {GRID_TARGET}: {v}]")
        if s == "nested_prior" and "ratio_to_no_prior" in st:
            target_h = PRIOR_TARGET_H["shipped" if name == "shipped" else "bench"]
            ok = (
                st["ratio_to_no_prior"] <= PRIOR_RATIO_TARGET
                and st["median_lab_hours"] <= target_h
                and st["reached"] >= math.ceil(0.9 * st["seeds"])
            )
            parts.append(
                f"{st['ratio_to_no_prior']:.2f}x without the prior [targets: <= {PRIOR_RATIO_TARGET}x, median <= "
                f"{target_h:g} h, >= 90 % reached: {'met' if ok else 'NOT met'}]"
            )
        if parts:
            print(f"{LABELS[s]}: " + "; ".join(parts))
    if any(st["median_censored"] for st in stats.values()):
        print("('<=': the other median is censored at the budget, so the ratio is an upper bound)")
    if grid_unbounded:
        print("(the grid never reaches: one pass of its points ends before the budget without a hit, and later passes")
        print(" only re-measure the same points; its lab time to the optimum is unbounded)")
    spurious = {s: st["spurious_hits"] for s, st in stats.items() if st["spurious_hits"]}
    if spurious:
        print(
            "a best() that is a model estimate counts only where the twin's true threshold is within tol too; "
            f"spurious hits: {spurious}"
        )
    if "nested" in stats and NO_SCATTER in stats:
        print(f"Nested strategy, new films' doping scattered by {scatter:g} electrons/dot vs none (side by side):")
        head2 = f"{'':28s}{'scatter ' + format(scatter, 'g'):>16s}{'no scatter':>16s}"
        print(head2)
        print("-" * len(head2))
        a, c = stats["nested"], stats[NO_SCATTER]
        for label, key, fmt in (
            ("reached", "reached", "d"),
            ("median lab h", "median_lab_hours", "h"),
            ("p25 lab h", "p25", "h"),
            ("p75 lab h", "p75", "h"),
            ("trials/seed", "trials_per_seed", ".1f"),
            ("films made/seed", "films_per_seed", ".1f"),
            ("not reached: below band", "seeds_below_band", "d0"),
            ("|film offset| rms, e/dot", "film_offset_rms", ".3f"),
        ):
            va, vb = a.get(key), c.get(key)
            if fmt == "h":
                cells = [_fmt_h(v, v >= b) for v in (va, vb)]
            elif fmt == "d0":
                cells = [str(v) for v in (va, vb)]
            elif fmt == "d":
                cells = [f"{v}/{st['seeds']}" for v, st in ((va, a), (vb, c))]
            else:
                cells = ["-" if v is None else format(v, fmt) for v in (va, vb)]
            print(f"{label:28s}{cells[0]:>16s}{cells[1]:>16s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="campaigns per strategy (seeds 0..N-1)")
    parser.add_argument("--budget-hours", type=float, default=48.0, help="lab-time budget per campaign (h)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated, of {STRATEGIES}")
    parser.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    parser.add_argument("--tol", type=float, default=0.05, help="relative distance to the optimum that counts")
    parser.add_argument(
        "--max-wall-s",
        type=float,
        default=600.0,
        help="wall-time cap per campaign, s (a capped seed counts as not reached; 0: none)",
    )
    parser.add_argument(
        "--film-scatter",
        type=float,
        default=None,
        help="doping spread of a new film around the request, electrons/dot (default: the twin's [twin] "
        "film_doping_spread); given, the nested strategy also runs without scatter, side by side",
    )
    parser.add_argument(
        "--bench-presets",
        action="append",
        default=[],
        metavar="FILE",
        help="a bench's hidden truth: the twin's devices are built from this presets file (repeatable; each is "
        "a bench named by the file's stem, run beside the shipped twin); the optimiser and its prior never see it",
    )
    parser.add_argument(
        "--no-shipped", action="store_true", help="run only the --bench-presets benches, not the shipped twin"
    )
    parser.add_argument(
        "--prior",
        default=None,
        metavar="FILE",
        help="the presets nested_prior's twin prior is computed from (default: the shipped presets)",
    )
    parser.add_argument("--verbose", action="store_true", help="one line per finished campaign on stderr")
    parser.add_argument("--worker-stderr", action="store_true", help="keep the workers' stderr (Ax logs, tracebacks)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; allowed: {list(STRATEGIES)}")
    benches: list[tuple[str, str | None]] = [] if args.no_shipped else [("shipped", None)]
    for f in args.bench_presets:
        if not os.path.isfile(f):
            parser.error(f"--bench-presets {f!r}: no such file")
        benches.append((os.path.splitext(os.path.basename(f))[0], os.path.abspath(f)))
    if len({n for n, _ in benches}) != len(benches) or not benches:
        parser.error("benches must have distinct names (file stems), and there must be at least one")
    prior = None if args.prior is None else os.path.abspath(args.prior)
    opts = {name: optimum(path) for name, path in benches}
    unavailable: dict[str, str] = {}
    for s, module in (("ax", "ax"), ("xopt", "xopt"), ("blop", "blop")):
        if s in strategies:
            try:
                __import__(module)
            except Exception as exc:
                unavailable[s] = f"{type(exc).__name__}: {exc} (pip install -e '.[bench]')"
    runnable = [s for s in strategies if s not in unavailable]
    scatter = twin_film_scatter() if args.film_scatter is None else float(args.film_scatter)
    if not (math.isfinite(scatter) and 0 <= scatter <= 2):
        parser.error(f"--film-scatter must be 0 to 2 electrons/dot, got {args.film_scatter!r}")
    if "nested" in runnable and args.film_scatter is not None:
        runnable.insert(runnable.index("nested") + 1, NO_SCATTER)
    limit_h = physical_limit_lab_h()

    import multiprocessing as mp

    t_start = time.perf_counter()
    rows: dict[tuple[str, str], list[dict]] = {(b, s): [] for b, _ in benches for s in runnable}
    jobs = [(b, path, s, seed) for seed in range(args.seeds) for b, path in benches for s in runnable]
    with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=mp.get_context("spawn")) as pool:
        futures = {
            pool.submit(
                run_one,
                s,
                seed,
                args.budget_hours,
                args.tol,
                float(opts[b]["threshold_uJ_cm2"]),
                args.max_wall_s or None,
                not args.worker_stderr,
                scatter,
                path,
                prior,
            ): (b, s, seed)
            for b, path, s, seed in jobs
        }
        for fut in as_completed(futures):
            b, s, seed = futures[fut]
            try:
                r = fut.result()
            except Exception as exc:  # a worker that died: recorded as an error, not reached
                r = {"strategy": s, "seed": seed, "reached": False, "hit_lab_hours": None, "trials": 0}
                r.update(
                    suggest_wall_s=0.0,
                    wall_s=0.0,
                    lab_hours=0.0,
                    stopped_by="error",
                    error=f"{type(exc).__name__}: {exc}",
                )
            rows[(b, s)].append(r)
            if args.verbose:
                hit = f"{r['hit_lab_hours']:.2f} h" if r["reached"] else "not reached"
                print(
                    f"[{time.perf_counter() - t_start:7.0f} s] {b:10s} {s:12s} seed {seed:2d}: {hit:>12s}, "
                    f"{r['trials']} trials, {r.get('films_made', 0)} films, stop: {r['stopped_by']}, "
                    f"wall {r['wall_s']:.0f} s" + (f", {r['error']}" if r.get("error") else ""),
                    file=sys.stderr,
                    flush=True,
                )
    total_wall = time.perf_counter() - t_start

    out: dict[str, dict] = {}
    for b, _ in benches:
        stats = {s: _stats(sorted(rows[(b, s)], key=lambda r: r["seed"]), args.budget_hours) for s in runnable}
        _bench_table(b, opts[b], stats, runnable, args, unavailable, limit_h, scatter)
        out[b] = stats
    if "nested_prior" in runnable and "nested" in runnable:
        print()
        print("With the twin prior vs without (median lab h, reached; targets: <= 7.0 h shipped, <= 9.0 h elsewhere,")
        print("<= 1.1x without the prior, >= 9/10 reached):")
        for b, _ in benches:
            a, c = out[b]["nested_prior"], out[b]["nested"]
            print(
                f"  {b:12s} prior {a['median_lab_hours']:6.2f} h ({a['reached']}/{a['seeds']})   no prior "
                f"{c['median_lab_hours']:6.2f} h ({c['reached']}/{c['seeds']})   ratio {a['ratio_to_no_prior']:.2f}"
            )
    print(f"total wall time: {total_wall:.0f} s on {args.workers} worker(s)")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
