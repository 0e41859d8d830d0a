"""The differentiable twin: the numpy twin's own equations, evaluated in torch (float64).

The physics functions of ``twin`` are generic over their array namespace (``twin._xp``):
called with torch tensors, and with a ``Sample`` whose parameters are torch scalars, they
run the same expressions in torch, and autograd gives the derivatives of any output with
respect to the preset parameters. There is no second copy of the physics.

``tensor_presets(presets, values)`` is the bridge: the presets with the named dotted
parameters (``cas_doped.film.alpha0_per_cm``, as ``twin.presets.get_parameter`` names
them) replaced by torch scalars, without validation (a tensor is not a float; the values
are checked against ``PHYSICAL_RANGES`` by the caller). The forward models:

* ``ase_output`` / ``vsl_output`` (``twin.ase``): ASE versus fluence and stripe length, with
  the kink, saturation and spectral narrowing;
* ``expected_stripe_counts`` (``twin.instrument``): the spectrometer's integrated counts of
  one acquisition (pulse-jitter average, pixel by pixel) with the variance of the noise model;
* ``ta_trace`` (``twin.dynamics``): the TA bleach alpha/alpha0 versus delay after a pump of <N>,
  differentiable in <N> and the Auger, radiative and yield parameters. Its rates, initial
  distribution and per-dot absorption are the numpy path's expressions; the cascade is solved as
  the matrix exponential of its rate matrix (the numpy path: the uniformized series), held equal
  to it to rtol 1e-9 by a test.

* ``dfb_output`` (``twin.dfb``): the DFB's output curve (lasing line + TM mode + PL) versus fluence,
  differentiable in the film, Auger and yield parameters. The coupled-mode cavity (mode solver and
  root finding, ``twin.grating``) depends only on the device's own dfb table, which is not varied
  here; the threshold <N> that scales the lasing line is found by root finding on the numbers and
  then taken through one Newton step in torch, whose derivative is the implicit-function one.
* ``expected_dfb_counts`` (``twin.instrument``): the spectrometer's integrated counts of a DFB read (the
  spectrum through the analyser, ``twin.dfb.dfb_analysed_spectrum``, summed over the pixels) with the variance
  of the noise model; a parameter may hold one value per read (alpha0 x each read's undamaged fraction), whose
  thresholds are roots found per element.

Which parameters reach the differentiable forward: ``DIFFERENTIABLE_PARAMETERS`` (the film,
Auger and yield parameters of a sample; the spectra, the DFB and damage tables are not
differentiable here).
"""

from __future__ import annotations

from ._xp import make_dual
from .presets import PHYSICAL_RANGES, PresetFile, Sample

__all__ = ["DIFFERENTIABLE_PARAMETERS", "differentiable_key", "make_dual", "tensor_presets", "tensor_sample"]

#: Sample parameters (``<table>.<key>`` as in ``PHYSICAL_RANGES``) the differentiable forward models
#: read as tensors: every numeric film and Auger parameter and the exciton yield.
DIFFERENTIABLE_PARAMETERS: tuple[str, ...] = tuple(
    name for name in PHYSICAL_RANGES if name.startswith(("film.", "auger.")) or name == "exciton_yield"
)


def differentiable_key(presets: PresetFile, name: str) -> tuple[str, str]:
    """(sample id, ``<table>.<key>``) of a dotted sample parameter, or a ``KeyError`` saying why it is
    not one the differentiable twin can vary."""
    sid, _, key = name.partition(".")
    if sid not in presets.sample:
        raise KeyError(
            f"{name!r} is not a parameter of a sample of these presets ({', '.join(sorted(presets.sample))})"
        )
    if key not in DIFFERENTIABLE_PARAMETERS:
        raise KeyError(
            f"{name!r} is not a parameter the differentiable twin varies; those are <sample>.<key> for key in "
            f"{', '.join(DIFFERENTIABLE_PARAMETERS)}"
        )
    return sid, key


def tensor_sample(sample: Sample, values: dict[str, object]) -> Sample:
    """``sample`` with the ``<table>.<key>`` parameters in ``values`` replaced (torch scalars), unvalidated."""
    top: dict[str, object] = {}
    tables: dict[str, dict[str, object]] = {}
    for key, value in values.items():
        table, _, field = key.partition(".")
        if field:
            tables.setdefault(table, {})[field] = value
        else:
            top[table] = value
    for table, fields in tables.items():
        top[table] = getattr(sample, table).model_copy(update=fields)
    return sample.model_copy(update=top)


def tensor_presets(presets: PresetFile, values: dict[str, object]) -> dict[str, Sample]:
    """The samples of ``presets`` touched by ``values`` (dotted names -> torch scalars), by id, with those
    parameters replaced (``tensor_sample``)."""
    per_sample: dict[str, dict[str, object]] = {}
    for name, value in values.items():
        sid, key = differentiable_key(presets, name)
        per_sample.setdefault(sid, {})[key] = value
    return {sid: tensor_sample(presets.get(sid), vals) for sid, vals in per_sample.items()}
