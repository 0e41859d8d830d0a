"""Leave-one-out check of the twin's preset parameters against the paper's table.

For every row: refit the parameters chosen to hit it on the other rows (priors as weak
regularisers; see ``gainloop.reproduce_loo``), measure the row on the refitted twin, and
count the rows within twice their tolerance (target: >= 2/3).

    python benchmarks/reproduce_loo.py [--json] [--seed N]

With ``--json`` the last line is one object: ``rows`` (id, paper, tol, full, loo,
within_2tol, refit; a value the twin could not measure is null), ``within_2tol`` (count),
``n_rows`` and ``fraction``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from gainloop.reproduce_loo import leave_one_out
from twin.presets import load_presets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = leave_one_out(load_presets(), seed=args.seed)
    wall = time.perf_counter() - t0
    n_ok = sum(r.within_2tol for r in rows)
    print(f"{'row':38s} {'paper':>8s} {'tol':>6s} {'full':>9s} {'LOO':>9s}  2tol  refit")
    for r in rows:
        loo = f"{r.loo:9.4g}" if math.isfinite(r.loo) else "      n/a"
        print(
            f"{r.id:38s} {r.paper:8g} {r.tol:6g} {r.full:9.4g} {loo}  {'yes ' if r.within_2tol else 'NO  '}  {r.refit}"
        )
    print(f"{n_ok} of {len(rows)} rows within 2x tolerance out of sample ({n_ok / len(rows):.0%}; target >= 67 %)")
    print(f"wall time {wall:.1f} s")
    if args.json:
        print(
            json.dumps(
                {
                    "rows": [
                        {
                            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                            for k, v in r.as_dict().items()
                        }
                        for r in rows
                    ],
                    "within_2tol": n_ok,
                    "n_rows": len(rows),
                    "fraction": n_ok / len(rows),
                }
            )
        )


if __name__ == "__main__":
    main()
