"""A film's linear absorption over its first excitonic peak, and its doping from the 1S bleach.

``absorption_spectrum`` is one run of three spectrometer reads with the white-light source
(``bench.lamp``, ``devices.WhiteLight``) and the pump shutter closed throughout:

1. **dark**: the lamp's shutter closed;
2. **reference**: the lamp on, the film moved out of the beam (``lamp.sample_in`` = 0: the
   light passes beside the film, through the bare substrate);
3. **sample**: the lamp on, the film in the beam (``lamp.sample_in`` = 1).

Each read is an event of the ``primary`` stream (the spectrometer, the lamp's readbacks with
the bench's neutral reference of the mounted film's dots, the pump); the run is analysed with
``plans.analysis.analyse_absorption_spectrum`` (the same function a replay calls) and the
doping recorded in its ``analysis`` stream. The lamp's shutter is closed on every exit of the
plan (success, error, abort: ``bluesky.preprocessors.finalize_wrapper``), and, as in every
measurement, the pump's shutter is closed and its fluence parked (``plans._common.measurement``).

``measure_film_doping`` is what a campaign calls on a film it has just mounted: the run and its
``DopingMeasurement``; a film whose absorption cannot be read raises ``AbsorptionError`` with
the reason, after the run has closed with exit status ``fail`` and that reason.
``absorption_lab_time_s`` is the lab time one measurement costs (for the cost model).
"""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from devices import check_exposure
from plans._common import PrimaryData, analysed, measurement
from plans.analysis import DopingMeasurement, analyse_absorption_spectrum
from plans.stubs import mount, trigger_then_read

__all__ = [
    "absorption_lab_time_s",
    "absorption_spectrum",
    "analyse_absorption_spectrum",
    "lamp_off",
    "measure_film_doping",
]

#: The reads of one measurement: dark, reference, sample.
READS = ("dark", "reference", "sample")


def absorption_lab_time_s(bench) -> float:
    """Lab seconds one absorption measurement of the mounted film costs: three exposures of
    ``[absorption].exposure_s`` and the film moved out of the white-light beam and back
    (``[absorption].sample_in_move_s`` each way)."""
    ab = bench.config.absorption
    return len(READS) * float(ab.exposure_s) + 2.0 * float(ab.sample_in_move_s)


def lamp_off(bench) -> MsgGenerator[None]:
    """Close the white-light source's shutter."""
    yield from bps.mv(bench.lamp.shutter, 0)


def absorption_spectrum(
    bench,
    sample_id: str | None = None,
    *,
    exposure_s: float | None = None,
    degeneracy: int = 8,
    md: dict | None = None,
) -> MsgGenerator[dict[str, Any]]:
    """Dark, reference and sample transmission of a film over its 1S peak, in one run; its doping.

    ``sample_id``: the film to mount first (None: the film mounted now); ``exposure_s``: each
    read's exposure (default ``[absorption].exposure_s``); ``degeneracy``: g of the 1S level
    (8 in PbS) the bleach is read with. Returns ``{"uid", "doping_e_per_dot",
    "doping_err_e_per_dot", ...}`` (``plans.analysis.analyse_absorption_spectrum``).
    """
    exp = bench.config.absorption.exposure_s if exposure_s is None else exposure_s
    check_exposure(exp, bench.config)
    if not (isinstance(degeneracy, int) and not isinstance(degeneracy, bool) and 1 <= degeneracy <= 32):
        raise ValueError(f"degeneracy must be a whole number 1 to 32 (8 for PbS), got {degeneracy!r}")
    to_mount = sample_id is not None
    if to_mount:
        bench.library_entry(sample_id)  # a sample not in the library is refused before anything is sent
    else:
        sample_id = yield from bps.rd(bench.stage.sample)
    plan_args = {"sample_id": str(sample_id), "exposure_s": float(exp), "degeneracy": degeneracy}
    spec, lamp = bench.spectrometer, bench.lamp

    def inner(results: dict[str, float]) -> MsgGenerator[None]:
        if to_mount:
            yield from mount(bench, plan_args["sample_id"])
        yield from bps.mv(bench.pump.shutter, 0)  # white light only: the pump stays closed
        if (yield from bps.rd(spec.exposure)) != exp:
            yield from bps.mv(spec.exposure, exp)
        primary = PrimaryData()

        def read() -> MsgGenerator[None]:
            reading = yield from trigger_then_read([spec, lamp, bench.pump], triggers=[spec])
            primary.add(reading)

        yield from bps.mv(lamp.shutter, 0)
        yield from read()  # dark
        yield from bps.mv(lamp.sample_in, 0)
        yield from bps.mv(lamp.shutter, 1)
        yield from read()  # reference: the beam beside the film
        yield from bps.mv(lamp.sample_in, 1)
        yield from read()  # sample: the film in the beam
        yield from lamp_off(bench)
        yield from analysed(results, analyse_absorption_spectrum, primary, plan_args)

    def body(results: dict[str, float]) -> MsgGenerator[None]:
        return bpp.finalize_wrapper(inner(results), lamp_off(bench))

    return (yield from measurement(bench, "absorption_spectrum", plan_args, lamp.sample_in, md, body))


def measure_film_doping(bench, *, md: dict | None = None) -> MsgGenerator[DopingMeasurement]:
    """Measure the mounted film's doping from its absorption (one ``absorption_spectrum`` run).

    Returns its ``DopingMeasurement`` (electrons/dot, 1-sigma error, the run's uid). A film whose
    absorption cannot be read raises ``plans.analysis.AbsorptionError`` with its ``reason``; the run
    has then already closed with exit status ``fail`` and that reason.
    """
    result = yield from absorption_spectrum(bench, md=md)
    return DopingMeasurement(
        float(result["doping_e_per_dot"]), float(result["doping_err_e_per_dot"]), str(result["uid"])
    )
