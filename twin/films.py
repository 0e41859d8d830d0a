"""Films as they come out of ligand exchange and ALD: a new film's doping, thickness and loss scatter.

An operator asked for a film of doping <n_e> makes one whose true doping is drawn around
the request (Gaussian, ``doping_spread_e_per_dot``, sigma), and, more weakly, whose thickness
and waveguide loss scatter around the preset's (Gaussian, relative sigmas
``thickness_rel_spread`` and ``loss_rel_spread``). The doping is clipped to the model's
physical range (0 to g, 0.99 g for a Poisson distribution: ``twin.occupancy.doping_range``),
the thickness and loss kept positive / non-negative.

``draw_film`` is a pure function of the request, the preset and a ``numpy.random.Generator``;
``film_generator(seed, film_id)`` gives every film its own generator from the twin's seed and
the film's id, so the same seed gives the same films whatever else was measured in between,
and a film put back in a later session (same id, same seed) is the same film. All spreads 0
give the request and the preset exactly.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from core.errors import ParameterError

from .occupancy import doping_range
from .presets import Sample

__all__ = ["FilmScatter", "FilmTruth", "draw_film", "film_generator", "film_sample"]


@dataclass(frozen=True)
class FilmScatter:
    """The spreads (1 sigma) of films made on request: doping in electrons/dot, thickness and loss relative."""

    doping_spread_e_per_dot: float = 0.1
    thickness_rel_spread: float = 0.03
    loss_rel_spread: float = 0.05

    def __post_init__(self) -> None:
        for name, value, hi in (
            ("doping_spread_e_per_dot", self.doping_spread_e_per_dot, 2.0),
            ("thickness_rel_spread", self.thickness_rel_spread, 0.3),
            ("loss_rel_spread", self.loss_rel_spread, 0.5),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= hi):
                raise ParameterError(f"film scatter {name} must be a number 0 to {hi:g}, got {value!r}")

    @property
    def none(self) -> bool:
        """Whether every spread is 0 (films exactly as requested)."""
        return self.doping_spread_e_per_dot == 0 and self.thickness_rel_spread == 0 and self.loss_rel_spread == 0


@dataclass(frozen=True)
class FilmTruth:
    """What a film really is (hidden from the bench; for tests and benchmarks).

    ``requested_doping_e_per_dot``: what was asked (the library's ``doping``);
    ``doping_e_per_dot``: the film's true 1S doping; ``thickness_nm``; ``waveguide_loss_per_cm``.
    """

    film_id: str
    requested_doping_e_per_dot: float
    doping_e_per_dot: float
    thickness_nm: float
    waveguide_loss_per_cm: float


def film_generator(seed: int, film_id: str) -> np.random.Generator:
    """The generator of one film's scatter: a function of the twin's seed and the film's id only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xF11A5, zlib.crc32(film_id.encode())])


def draw_film(
    film_id: str, requested_doping: float, preset: Sample, scatter: FilmScatter, rng: np.random.Generator
) -> FilmTruth:
    """Draw a made film's doping (electrons/dot), thickness (nm) and waveguide loss (1/cm) around the request."""
    d = float(requested_doping)
    lo, hi = doping_range(preset.degeneracy, preset.doping_distribution)
    if not (math.isfinite(d) and lo <= d <= hi):
        raise ParameterError(f"requested doping {requested_doping!r} electrons/dot is outside {lo:g} to {hi:g}")
    z = rng.standard_normal(3)
    doping = float(np.clip(d + scatter.doping_spread_e_per_dot * z[0], lo, hi))
    film = preset.film
    thickness = film.thickness_nm * max(1.0 + scatter.thickness_rel_spread * float(z[1]), 0.5)
    loss = film.waveguide_loss_per_cm * max(1.0 + scatter.loss_rel_spread * float(z[2]), 0.0)
    if scatter.doping_spread_e_per_dot == 0:
        doping = d
    if scatter.thickness_rel_spread == 0:
        thickness = film.thickness_nm
    if scatter.loss_rel_spread == 0:
        loss = film.waveguide_loss_per_cm
    return FilmTruth(film_id, d, doping, float(thickness), float(loss))


def film_sample(preset: Sample, truth: FilmTruth) -> Sample:
    """The preset with the film's true doping, thickness and waveguide loss."""
    film = preset.film.model_copy(
        update={"thickness_nm": truth.thickness_nm, "waveguide_loss_per_cm": truth.waveguide_loss_per_cm}
    )
    return preset.model_copy(update={"doping_ne": truth.doping_e_per_dot, "film": film})
