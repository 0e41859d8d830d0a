"""Which bench a command, a campaign or the queueserver's worker drives: the one place that chooses.

``bench_devices(bench_file, twin=..., seed=..., presets=...)`` returns the ``devices.Bench``:

* a bench file, ``twin=False``: that bench over EPICS (``devices.connect_bench``; the twin's
  ``seed`` is not used there, ``presets`` are refused);
* a bench file, ``twin=True``: the in-process twin of that bench file (same devices, same names);
* no bench file: the in-process twin of the shipped twin bench file
  (``sim.devices.default_twin_bench_path``).

The twin's noise seed is ``seed`` (default: the bench file's ``[twin].seed``) and its presets
``presets`` (a ``twin.presets.PresetFile`` or a presets TOML; default: the bench file's, else
the shipped ones). The caller owns the bench: make it safe and ``destroy()`` it when done, or
use ``gainloop.running.open_bench``, which does both when its block ends.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import GainloopError

__all__ = ["BenchChoiceError", "bench_devices"]


class BenchChoiceError(GainloopError, ValueError):
    """The bench asked for cannot be: e.g. twin presets for a real bench."""


def bench_devices(
    bench_file: str | Path | None = None,
    *,
    twin: bool = False,
    seed: int | None = None,
    presets=None,
):
    """The ``devices.Bench`` of ``bench_file`` over EPICS, or the in-process twin (see the module doc).

    Raises ``BenchChoiceError`` for ``presets`` with a real bench, and the errors of loading the
    bench file (``devices.BenchConfigError``), of connecting (``devices.BenchConnectionError``)
    or of the presets (``core.errors.PresetError``), each a ``GainloopError``.
    """
    if bench_file is not None and not twin:
        if presets is not None:
            raise BenchChoiceError(
                f"presets are the twin's; the bench of {bench_file} is a real one (EPICS) and takes none"
            )
        from devices import connect_bench, load_bench

        return connect_bench(load_bench(bench_file))
    from sim.devices import default_twin_bench_path, twin_bench_devices

    return twin_bench_devices(
        bench_file if bench_file is not None else default_twin_bench_path(), seed=seed, presets=presets
    )
