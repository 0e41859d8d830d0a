"""The bench's devices: ophyd over EPICS, with PV names, limits and the sample library from a bench file.

``connect_bench(cfg)`` returns a ``Bench`` of connected devices; the twin's
in-process devices (``sim.devices.twin_bench_devices``) return the same container
with the same interface. The ``check_*`` functions are the client-side soft
limits every implementation applies before anything is sent.
"""

from . import _checks
from ._ca import exclusive_search_ports
from ._checks import *  # noqa: F403 -- UNITS and the checks: the names _checks.__all__ lists
from ._errors import BenchConnectionError, DeviceTimeoutError, LimitError, PutRefusedError, ReadbackError
from ._signals import ContractReadings, LabClock
from .bench import (
    Bench,
    Interlock,
    Polarizer,
    PumpLaser,
    SampleStage,
    Spectrometer,
    StripeSlit,
    TransientAbsorption,
    WhiteLight,
    connect_bench,
)
from .config import BenchConfig, BenchConfigError, LibraryEntry, load_bench, parse_bench

__all__ = [
    *_checks.__all__,
    "Bench",
    "BenchConfig",
    "BenchConfigError",
    "BenchConnectionError",
    "ContractReadings",
    "DeviceTimeoutError",
    "Interlock",
    "LabClock",
    "LibraryEntry",
    "LimitError",
    "Polarizer",
    "PumpLaser",
    "PutRefusedError",
    "ReadbackError",
    "SampleStage",
    "Spectrometer",
    "StripeSlit",
    "TransientAbsorption",
    "WhiteLight",
    "connect_bench",
    "exclusive_search_ports",
    "load_bench",
    "parse_bench",
]
