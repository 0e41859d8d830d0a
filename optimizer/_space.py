"""The search space: pump fluence, stripe length and doping, with the safe-set fluence cap.

Parameters and units (the names carry them):

* ``fluence_uJ_cm2`` -- peak pump fluence, uJ/cm^2 (joint trials only; a nested trial
  scans it). Modelled in log. Its effective upper bound is
  ``min(fluence_uJ_cm2[1], fluence_limit_uJ_cm2)``: the safe set. No proposal ever
  exceeds it.
* ``stripe_length_um`` -- length of the pumped stripe, um. Modelled in log (the
  threshold changes over decades of length).
* ``doping`` -- mean electrons per dot ``<n_e>``, linear. Either continuous (new films
  can be made at any doping: ``doping=(lo, hi)``, a tuple) or discrete (the bench holds
  a fixed film library: ``doping=[d1, d2, ...]``, a list of levels).
* ``fixed`` -- contextual parameters that are not optimised (e.g. ``exposure_s``); they
  are copied into every proposal's params.

The unit cube: ``u = (log x - log lo) / (log hi - log lo)`` for fluence and stripe length,
``u = (d - lo) / (hi - lo)`` for doping (lo, hi: the levels' range when discrete; a single
level maps to 0). Models and acquisition functions only ever see unit-cube tensors
(``n x d``, float64); ``from_unit`` clips to the cube, snaps a discrete doping to the
nearest level and caps fluence at the safe limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.errors import ParameterError

__all__ = ["DOPING", "FLUENCE", "JOINT_DIMS", "LENGTH", "NESTED_DIMS", "SearchSpace"]

FLUENCE = "fluence_uJ_cm2"
LENGTH = "stripe_length_um"
DOPING = "doping"
#: Order of the unit-cube columns of a nested trial (stripe length, doping) ...
NESTED_DIMS = (LENGTH, DOPING)
#: ... and of a joint trial (fluence, stripe length, doping).
JOINT_DIMS = (FLUENCE, LENGTH, DOPING)

_UNITS = {FLUENCE: "uJ/cm^2", LENGTH: "um", DOPING: "electrons/dot"}
#: Relative tolerance when checking a value against a bound or a discrete level.
_REL_TOL = 1e-9


def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ParameterError(f"{name} must be finite with low < high, got ({lo:g}, {hi:g})")
    return lo, hi


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of the optimised parameters, the safe-set fluence cap and fixed parameters.

    ``doping``: a tuple ``(lo, hi)`` for a continuous range (new films can be made), a
    list of levels for a fixed film library. ``fluence_limit_uJ_cm2`` defaults to the
    upper fluence bound.
    """

    fluence_uJ_cm2: tuple[float, float]
    stripe_length_um: tuple[float, float]
    doping: tuple[float, float] | list[float]
    fluence_limit_uJ_cm2: float | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f_lo, f_hi = _pair(FLUENCE, self.fluence_uJ_cm2)
        l_lo, l_hi = _pair(LENGTH, self.stripe_length_um)
        if f_lo <= 0:
            raise ParameterError(f"{FLUENCE} lower bound must be > 0 (modelled in log), got {f_lo:g}")
        if l_lo <= 0:
            raise ParameterError(f"{LENGTH} lower bound must be > 0 (modelled in log), got {l_lo:g}")
        limit = f_hi if self.fluence_limit_uJ_cm2 is None else float(self.fluence_limit_uJ_cm2)
        if not math.isfinite(limit) or limit <= f_lo:
            raise ParameterError(
                f"fluence_limit_uJ_cm2 must be finite and above the lower fluence bound {f_lo:g}, got {limit:g}"
            )
        if isinstance(self.doping, tuple):
            doping: tuple[float, float] | list[float] = _pair(DOPING, self.doping)
        elif isinstance(self.doping, Sequence) and not isinstance(self.doping, str):
            try:
                levels = sorted({float(v) for v in self.doping})
            except (TypeError, ValueError):
                raise ParameterError(f"doping levels must be numbers, got {self.doping!r}") from None
            if not levels or not all(math.isfinite(v) and v >= 0 for v in levels):
                raise ParameterError(f"doping levels must be a non-empty list of finite values >= 0, got {levels}")
            doping = levels
        else:
            raise ParameterError(
                f"doping must be a (lo, hi) tuple (continuous) or a list of levels (film library), got {self.doping!r}"
            )
        if isinstance(doping, tuple) and doping[0] < 0:
            raise ParameterError(f"doping lower bound must be >= 0 electrons/dot, got {doping[0]:g}")
        clash = set(self.fixed) & {FLUENCE, LENGTH, DOPING}
        if clash:
            raise ParameterError(f"fixed parameters may not include optimised parameters: {sorted(clash)}")
        object.__setattr__(self, "fluence_uJ_cm2", (f_lo, f_hi))
        object.__setattr__(self, "stripe_length_um", (l_lo, l_hi))
        object.__setattr__(self, "doping", doping)
        object.__setattr__(self, "fluence_limit_uJ_cm2", limit)
        object.__setattr__(self, "fixed", dict(self.fixed))

    # ---- construction from / to config -------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        """From a config mapping: ``doping`` is ``{"range": [lo, hi]}`` or ``{"levels": [...]}``."""
        allowed = {FLUENCE, LENGTH, DOPING, "fluence_limit_uJ_cm2", "fixed"}
        unknown = set(d) - allowed
        if unknown:
            raise ParameterError(f"unknown search-space keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        for key in (FLUENCE, LENGTH, DOPING):
            if key not in d:
                raise ParameterError(f"search space needs {key!r}")
        dop = d[DOPING]
        if isinstance(dop, Mapping) and set(dop) == {"range"}:
            doping: tuple[float, float] | list[float] = tuple(dop["range"])  # type: ignore[assignment]
        elif isinstance(dop, Mapping) and set(dop) == {"levels"}:
            doping = list(dop["levels"])
        else:
            raise ParameterError(f'doping must be {{"range": [lo, hi]}} or {{"levels": [...]}}, got {dop!r}')
        return cls(
            fluence_uJ_cm2=tuple(d[FLUENCE]),  # type: ignore[arg-type]
            stripe_length_um=tuple(d[LENGTH]),  # type: ignore[arg-type]
            doping=doping,
            fluence_limit_uJ_cm2=d.get("fluence_limit_uJ_cm2"),
            fixed=dict(d.get("fixed", {})),
        )

    def as_dict(self) -> dict:
        """JSON-able form, the inverse of ``from_dict``."""
        doping = {"levels": list(self.doping)} if self.discrete else {"range": list(self.doping)}
        return {
            FLUENCE: list(self.fluence_uJ_cm2),
            LENGTH: list(self.stripe_length_um),
            DOPING: doping,
            "fluence_limit_uJ_cm2": self.fluence_limit_uJ_cm2,
            "fixed": dict(self.fixed),
        }

    # ---- properties -------------------------------------------------------------------
    @property
    def discrete(self) -> bool:
        """True when doping is a fixed film library (a list of levels)."""
        return isinstance(self.doping, list)

    @property
    def doping_levels(self) -> list[float] | None:
        return list(self.doping) if self.discrete else None

    @property
    def doping_bounds(self) -> tuple[float, float]:
        return (self.doping[0], self.doping[-1]) if self.discrete else tuple(self.doping)  # type: ignore[return-value]

    @property
    def fluence_max_uJ_cm2(self) -> float:
        """Highest fluence any proposal may carry: the upper bound, capped by the safe-set limit."""
        return min(self.fluence_uJ_cm2[1], self.fluence_limit_uJ_cm2)

    def bounds(self, name: str) -> tuple[float, float]:
        """Physical (lo, hi) of one optimised parameter (fluence capped by the safe limit)."""
        if name == FLUENCE:
            return self.fluence_uJ_cm2[0], self.fluence_max_uJ_cm2
        if name == LENGTH:
            return self.stripe_length_um
        if name == DOPING:
            return self.doping_bounds
        raise ParameterError(f"unknown parameter {name!r}; optimised parameters: {list(JOINT_DIMS)}")

    def _allowed(self, name: str) -> str:
        if name == DOPING and self.discrete:
            return f"one of the film library's levels {self.doping} {_UNITS[DOPING]}"
        lo, hi = self.bounds(name)
        return f"{lo:g} to {hi:g} {_UNITS[name]}"

    # ---- validation -------------------------------------------------------------------
    def validate(self, params: Mapping[str, Any], *, joint: bool | None = None) -> dict:
        """Check a parameter set; return it with floats. Raises ``ParameterError`` naming the key.

        ``joint``: True requires ``fluence_uJ_cm2``; False forbids nothing; None (default)
        checks fluence only when present. Fixed parameters, when present, must equal
        their configured values; any other key is an error.
        """
        if not isinstance(params, Mapping):
            raise ParameterError(f"params must be a mapping, got {type(params).__name__}")
        needed = [LENGTH, DOPING] + ([FLUENCE] if joint else [])
        out: dict[str, Any] = {}
        for name in needed:
            if name not in params:
                raise ParameterError(f"missing parameter {name!r}; allowed: {self._allowed(name)}")
        for key, value in params.items():
            if key in (FLUENCE, LENGTH, DOPING):
                out[key] = self._check(key, value)
            elif key in self.fixed:
                if value != self.fixed[key]:
                    raise ParameterError(f"{key!r} is fixed at {self.fixed[key]!r} by the search space, got {value!r}")
                out[key] = value
            else:
                allowed = sorted({FLUENCE, LENGTH, DOPING, *self.fixed})
                raise ParameterError(f"unknown parameter {key!r}; allowed: {allowed}")
        return out

    def _check(self, name: str, value: Any) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{name} must be a number, got {value!r}; allowed: {self._allowed(name)}") from None
        if not math.isfinite(v):
            raise ParameterError(f"{name} must be finite, got {v}; allowed: {self._allowed(name)}")
        if name == DOPING and self.discrete:
            if not any(abs(v - lvl) <= _REL_TOL * max(1.0, abs(lvl)) for lvl in self.doping):
                raise ParameterError(f"doping {v:g} is not in the film library; allowed: {self._allowed(name)}")
            return v
        lo, hi = self.bounds(name)
        tol = _REL_TOL * max(1.0, abs(hi))
        if v < lo - tol or v > hi + tol:
            what = " (safe-set limit)" if name == FLUENCE and hi == self.fluence_limit_uJ_cm2 else ""
            raise ParameterError(f"{name} {v:g} is out of range; allowed: {self._allowed(name)}{what}")
        return v

    # ---- unit cube --------------------------------------------------------------------
    @staticmethod
    def dims(joint: bool) -> tuple[str, ...]:
        """Unit-cube column names: (stripe, doping) or (fluence, stripe, doping)."""
        return JOINT_DIMS if joint else NESTED_DIMS

    def to_unit(self, params: Mapping[str, Any], names: Sequence[str] = NESTED_DIMS) -> np.ndarray:
        """Physical parameters -> unit-cube coordinates (``len(names)``,), log for fluence and length."""
        out = np.empty(len(names))
        for k, name in enumerate(names):
            lo, hi = self.bounds(name)
            v = float(params[name])
            if name == DOPING:
                out[k] = 0.0 if hi == lo else (v - lo) / (hi - lo)
            else:
                out[k] = (math.log(max(v, 1e-300)) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return out

    def from_unit(self, u: Sequence[float], names: Sequence[str] = NESTED_DIMS) -> dict[str, float]:
        """Unit-cube coordinates -> physical parameters inside the space (clipped, snapped, capped)."""
        u = np.clip(np.asarray(u, dtype=float).ravel(), 0.0, 1.0)
        out: dict[str, float] = {}
        for k, name in enumerate(names):
            lo, hi = self.bounds(name)
            if name == DOPING:
                v = lo + float(u[k]) * (hi - lo)
                if self.discrete:
                    v = min(self.doping, key=lambda lvl: (abs(lvl - v), lvl))
            elif u[k] <= 0.0 or u[k] >= 1.0:  # the bounds exactly, not exp(log(bound))
                v = lo if u[k] <= 0.0 else hi
            else:
                v = math.exp(math.log(lo) + float(u[k]) * (math.log(hi) - math.log(lo)))
            out[name] = float(min(max(v, lo), hi))
        return out

    def from_unit_tensor(self, X: torch.Tensor, names: Sequence[str] = NESTED_DIMS) -> dict[str, torch.Tensor]:
        """Unit-cube tensor ``X`` (``... x len(names)``) -> physical values, one tensor (``...``) per name.

        The inverse of ``to_unit`` for acquisition functions: fluence and stripe length
        exp-linear, doping linear, in the units the names carry. Unlike ``from_unit`` it
        neither clips, snaps a discrete doping nor caps the fluence, so the values stay
        differentiable in ``X``.
        """
        out: dict[str, torch.Tensor] = {}
        for k, name in enumerate(names):
            lo, hi = self.bounds(name)
            if name == DOPING:
                out[name] = lo + X[..., k] * (hi - lo)
            else:
                log_lo, log_hi = math.log(lo), math.log(hi)
                out[name] = torch.exp(log_lo + X[..., k] * (log_hi - log_lo))
        return out

    def unit_doping(self, doping: float) -> float:
        """Unit-cube coordinate of a doping value."""
        lo, hi = self.doping_bounds
        return 0.0 if hi == lo else (float(doping) - lo) / (hi - lo)
