"""The project's exception hierarchy (one base class, specific subclasses).

Every error says what was wrong and what is allowed, so that a scientist at the
bench can fix the input without reading the source.
"""

from __future__ import annotations

__all__ = [
    "GainloopError",
    "ParameterError",
    "PresetError",
]


class GainloopError(Exception):
    """Base class of every error raised by gainloop."""


class ParameterError(GainloopError, ValueError):
    """A physical input (fluence, doping, stripe length, ...) is NaN or out of range."""


class PresetError(GainloopError, ValueError):
    """A sample preset file is missing, malformed or has values out of range."""
