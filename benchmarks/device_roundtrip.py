"""Device round trip: one acquisition over Channel Access to the twin's IOC versus in-process.

One acquisition = set the pump fluence (put with completion), trigger the
spectrometer (put ``SPEC:Acquire`` with completion, then the NaN check) and read it
(spectrum of 512 pixels and the camera statistics). The same sequence runs on
``devices.connect_bench`` against ``gainloop twin serve`` in a subprocess on the
loopback (time scale 1e6, so the simulated exposure costs no wall time) and on
``sim.devices.twin_bench_devices`` in this process, interleaved in blocks, in one run.
Prints a table and, with --json, one JSON object on the last line:
``ioc_ms``, ``inprocess_ms`` (medians per acquisition) and ``ratio`` (ioc / in-process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the packages of this checkout, installed or not

from devices import connect_bench, parse_bench  # noqa: E402
from sim.devices import default_twin_bench_path, twin_bench_devices  # noqa: E402
from sim.ioc_process import twin_ioc  # noqa: E402


def _acquire(bench, fluence: float) -> dict:
    bench.pump.fluence.set(fluence).wait(30)
    bench.spectrometer.trigger().wait(30)
    return bench.spectrometer.read()


def _prepare(bench, exposure_s: float) -> None:
    bench.pump.shutter.put(1)
    bench.spectrometer.exposure.put(exposure_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="timed acquisitions per path")
    parser.add_argument("--warmup", type=int, default=10, help="untimed acquisitions per path first")
    parser.add_argument("--block", type=int, default=20, help="acquisitions per path before switching")
    parser.add_argument("--exposure", type=float, default=0.01, help="exposure (lab s)")
    parser.add_argument("--time-scale", type=float, default=1e6, help="IOC lab seconds per wall second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()

    bench_file = default_twin_bench_path()
    prefix = f"BENCH{os.getpid()}:"
    data = tomllib.loads(bench_file.read_text())
    data["bench"]["prefix"] = prefix
    cfg = parse_bench(data, str(bench_file))
    fluences = [300.0 + 10.0 * (i % 50) for i in range(args.n + args.warmup)]

    ioc_args = ["--seed", str(args.seed)]
    with twin_ioc(bench_file, time_scale=args.time_scale, prefix=prefix, args=ioc_args, cwd=REPO):
        epics = connect_bench(cfg)
        local = twin_bench_devices(cfg, seed=args.seed)
        try:
            benches = {"ioc": epics, "inprocess": local}
            for b in benches.values():
                _prepare(b, args.exposure)
                for f in fluences[: args.warmup]:
                    _acquire(b, f)
            times: dict[str, list[float]] = {k: [] for k in benches}
            reads: dict[str, list[float]] = {k: [] for k in benches}
            todo = fluences[args.warmup :]
            for start in range(0, len(todo), args.block):
                for key, b in benches.items():
                    for f in todo[start : start + args.block]:
                        t0 = time.perf_counter()
                        reading = _acquire(b, f)
                        times[key].append(time.perf_counter() - t0)
                        reads[key].append(reading["spectrometer_integrated"]["value"])
        finally:
            epics.destroy()

    # both paths drove the same engine with the same seed and operations
    same = all(abs(a - b) <= 1e-9 * max(abs(a), 1.0) for a, b in zip(reads["ioc"], reads["inprocess"], strict=True))
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    p90 = {k: 1e3 * statistics.quantiles(v, n=10)[-1] for k, v in times.items()}
    ratio = med["ioc"] / med["inprocess"]

    print(f"device round trip: set fluence + trigger + read spectrum ({cfg.spectrometer.pixels} px), n = {args.n}")
    print(f"{'path':<28} {'median ms':>10} {'p90 ms':>10}")
    print(f"{'Channel Access to the IOC':<28} {med['ioc']:>10.3f} {p90['ioc']:>10.3f}")
    print(f"{'in-process twin':<28} {med['inprocess']:>10.3f} {p90['inprocess']:>10.3f}")
    print(f"ratio (IOC / in-process): {ratio:.1f}x; same integrated counts on both paths: {same}")
    if args.json:
        print(json.dumps({"ioc_ms": med["ioc"], "inprocess_ms": med["inprocess"], "ratio": ratio}))


if __name__ == "__main__":
    main()
