"""Proposal latency: median time per proposal at 50, 100 and 200 observations, ours vs Ax's Client.

The same synthetic observations feed both: (stripe length, doping) trials on a handful of
films (log-uniform stripe lengths; a new doping every ~12 trials, as a cost-aware campaign
makes them), with the twin's ASE threshold (``twin.landscape.feasible_threshold``, sample
``cas_doped``) plus 2 % noise and its 2 % error. Ours: ``make_optimizer("nested", ...)`` and
``suggest(1)`` (model refit from scratch, cost-aware qLogNEI maximised; the proposal is
then forgotten so every repeat sees the same data). Ax (``ax-platform``, the ``bench``
extra): ``ax.Client`` with the same two parameters (stripe length on a log scale), the
observations attached with their SEMs, and ``get_next_trials(max_trials=1)`` (the generated
trial is abandoned before the next repeat). The first call of each is a warm-up and not
timed.

Prints a table and, with --json, one JSON object on the last line: ``ours_s`` and
``ax_s``, each mapping the observation count to the median seconds per proposal (``ax_s``
is null when Ax is not installed: ``pip install -e ".[bench]"``).

Target: ours <= 0.3 s at 100 observations on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch

from optimizer import LabState, SearchSpace, TrialResult, make_optimizer
from twin.landscape import feasible_threshold
from twin.occupancy import doping_range
from twin.presets import load_presets

COUNTS = (50, 100, 200)


def observations(n: int, seed: int = 0):
    """``n`` nested-trial results from the twin: (params, threshold, error)."""
    presets = load_presets()
    sample, setup = presets.get("cas_doped"), presets.setup
    lo, hi = doping_range(sample.degeneracy, sample.doping_distribution)
    rng = np.random.default_rng(seed)
    n_films = max(2, n // 12)
    films = np.round(rng.uniform(lo, hi, n_films), 3)
    lengths = np.exp(rng.uniform(np.log(setup.stripe_length_min_um), np.log(setup.stripe_length_max_um), n))
    dopings = films[np.sort(rng.integers(0, n_films, n))]
    thr = feasible_threshold(lengths, dopings, sample, setup)
    out = []
    for length, d, t in zip(lengths, dopings, thr, strict=True):
        if np.isfinite(t):
            out.append(
                (
                    {"stripe_length_um": float(length), "doping": float(d)},
                    float(t) * (1 + 0.02 * rng.standard_normal()),
                    0.02 * float(t),
                )
            )
    space = SearchSpace(
        fluence_uJ_cm2=(10.0, setup.fluence_limit_uJ_cm2),
        stripe_length_um=(setup.stripe_length_min_um, setup.stripe_length_max_um),
        doping=(lo, hi),
    )
    return space, out


def time_ours(n: int, repeats: int) -> float:
    space, obs = observations(n)
    opt = make_optimizer("nested", space, seed=0, lab_state=LabState(current_doping=obs[-1][0]["doping"]))
    opt.ingest(
        [
            TrialResult(i, p, "completed", {"threshold_uJ_cm2": t, "threshold_err_uJ_cm2": e})
            for i, (p, t, e) in enumerate(obs)
        ]
    )
    times = []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        opt.suggest(1)
        dt = time.perf_counter() - t0
        opt.clear_pending()
        if k:
            times.append(dt)
    return statistics.median(times)


def time_ax(n: int, repeats: int) -> float | None:
    try:
        from ax import Client, RangeParameterConfig
        from ax.utils.common.logger import set_ax_logger_levels
    except ImportError:
        return None
    set_ax_logger_levels(logging.ERROR)
    space, obs = observations(n)
    lo, hi = space.doping_bounds
    client = Client(random_seed=0)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(
                name="stripe_length_um", bounds=space.stripe_length_um, parameter_type="float", scaling="log"
            ),
            RangeParameterConfig(name="doping", bounds=(lo, hi), parameter_type="float"),
        ]
    )
    client.configure_optimization(objective="-threshold")
    for p, t, e in obs:
        idx = client.attach_trial(parameters=p)
        client.complete_trial(idx, raw_data={"threshold": (t, e)})
    times = []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        trials = client.get_next_trials(max_trials=1)
        dt = time.perf_counter() - t0
        for idx in trials:
            client.mark_trial_abandoned(idx)
        if k:
            times.append(dt)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed proposals per count (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for Ax (ours uses its own setting)")
    parser.add_argument("--no-ax", action="store_true", help="time ours only")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="ax")  # Ax's deprecation chatter; ours records its own
    warnings.filterwarnings("ignore", message="A not p.d., added jitter")  # linear_operator inside Ax's fits

    ours, ax = {}, {}
    for n in COUNTS:
        ours[n] = time_ours(n, args.repeats)
        ax[n] = None if args.no_ax else time_ax(n, args.repeats)

    print(f"proposal latency, median of {args.repeats} proposals ({os.cpu_count()} cores)")
    print(f"{'observations':>12}  {'ours (s)':>9}  {'Ax Client (s)':>13}  {'Ax / ours':>9}")
    for n in COUNTS:
        a = ax[n]
        ratio = f"{a / ours[n]:9.1f}" if a is not None else f"{'-':>9}"
        a_txt = f"{a:13.3f}" if a is not None else f"{'n/a':>13}"
        print(f"{n:>12}  {ours[n]:9.3f}  {a_txt}  {ratio}")
    ok = ours[100] <= 0.3
    print(f"target ours <= 0.3 s at 100 observations: {'met' if ok else 'NOT met'} ({ours[100]:.3f} s)")
    if args.json:
        print(json.dumps({"ours_s": {str(n): ours[n] for n in COUNTS}, "ax_s": {str(n): ax[n] for n in COUNTS}}))


if __name__ == "__main__":
    main()
