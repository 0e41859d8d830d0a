"""Twin throughput: the ASE input-output curve for many conditions in one batch.

Computes the spectrally integrated ASE output for N_conditions (stripe length x
doping) x N_fluences in one vectorised call, and the same model point by point
in a Python loop (over a subset, timed in the same run), on one core. Prints a
table and, with --json, one JSON object on the last line:
``points_per_s``, ``loop_points_per_s``, ``speedup``.

Target (issue 2): >= 1e6 condition-fluence points per second, >= 100x the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from twin.ase import ase_output
from twin.occupancy import gain_table
from twin.presets import load_presets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conditions", type=int, default=10_000, help="stripe x doping conditions (>= 10000)")
    parser.add_argument("--fluences", type=int, default=64, help="fluences per condition")
    parser.add_argument("--loop-points", type=int, default=2000, help="points timed in the per-point loop")
    parser.add_argument("--repeats", type=int, default=3, help="batch repeats (best time is reported)")
    parser.add_argument("--sample", default="cas_doped")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()

    presets = load_presets()
    sample, setup = presets.get(args.sample), presets.setup
    side = round(float(np.sqrt(args.conditions)))
    lengths = np.geomspace(50.0, 3000.0, side)
    dopings = np.linspace(0.0, 7.9, int(np.ceil(args.conditions / side)))
    ll, dd = np.meshgrid(lengths, dopings)
    ll, dd = ll.ravel()[: args.conditions], dd.ravel()[: args.conditions]
    fluence = np.geomspace(10.0, 3000.0, args.fluences)
    n_points = ll.size * fluence.size

    gain_table(sample.degeneracy, sample.doping_distribution)  # build the shared table outside the timing
    best = np.inf
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = ase_output(fluence[None, :], ll[:, None], dd[:, None], sample, setup)
        best = min(best, time.perf_counter() - t0)
    assert out.shape == (ll.size, fluence.size) and np.all(np.isfinite(out))
    batch_rate = n_points / best

    rng = np.random.default_rng(0)
    pick = rng.integers(0, n_points, args.loop_points)
    t0 = time.perf_counter()
    loop_out = np.empty(args.loop_points)
    for k, idx in enumerate(pick):
        c, f = divmod(int(idx), fluence.size)
        loop_out[k] = float(ase_output(float(fluence[f]), float(ll[c]), float(dd[c]), sample, setup))
    loop_time = time.perf_counter() - t0
    loop_rate = args.loop_points / loop_time
    same = np.allclose(loop_out, out.ravel()[pick], rtol=1e-9)

    result = {
        "conditions": int(ll.size),
        "fluences": int(fluence.size),
        "points": int(n_points),
        "batch_s": best,
        "points_per_s": batch_rate,
        "loop_points": args.loop_points,
        "loop_s": loop_time,
        "loop_points_per_s": loop_rate,
        "speedup": batch_rate / loop_rate,
        "loop_matches_batch": bool(same),
    }
    print(f"{'':28s}{'batch (vectorised)':>22s}{'per-point loop':>18s}")
    print(f"{'points':28s}{n_points:>22,d}{args.loop_points:>18,d}")
    print(f"{'time (s)':28s}{best:>22.3f}{loop_time:>18.3f}")
    print(f"{'points per second':28s}{batch_rate:>22.3e}{loop_rate:>18.3e}")
    print(f"speedup batch/loop: {result['speedup']:.0f}x   (targets: >= 1e6 points/s, >= 100x)")
    print(f"loop and batch agree on the sampled points: {same}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
