"""Errors the bench devices raise (EPICS and in-process twin alike).

Each says which device or PV, what was asked, and what is allowed, so that a
scientist at the bench can act on it without reading the source.
"""

from __future__ import annotations

from ophyd.utils.errors import LimitError as _OphydLimitError

from core.errors import GainloopError

__all__ = [
    "BenchConnectionError",
    "DeviceTimeoutError",
    "LimitError",
    "PutRefusedError",
    "ReadbackError",
]


class LimitError(GainloopError, _OphydLimitError):
    """A setpoint outside the bench file's soft limits (or NaN): refused before anything is sent.

    Also an ``ophyd`` ``LimitError`` and a ``ValueError``.
    """


class PutRefusedError(GainloopError):
    """The bench refused a setpoint (CA put error from the IOC, or the twin engine's refusal).

    The message carries the bench's reason (for the pump: the interlock's ``IL:Message``).
    """


class DeviceTimeoutError(GainloopError, TimeoutError):
    """An operation did not complete in time (stuck motor, paused or silent IOC)."""


class ReadbackError(GainloopError):
    """A readback is not a number (NaN/inf) where a measurement was expected."""


class BenchConnectionError(GainloopError, ConnectionError):
    """PVs of the bench did not connect; the message names them."""
