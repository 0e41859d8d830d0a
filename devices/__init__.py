"""The bench's devices: ophyd over EPICS, with PV names, limits and the sample library from a bench file.

``connect_bench(cfg)`` returns a ``Bench`` of connected devices; the twin's
in-process devices (``sim.devices.twin_bench_devices``) return the same container
with the same interface. The ``check_*`` functions are the client-side soft
limits every implementation applies before anything is sent.
"""

from ._checks import (
    UNITS,
    check_angle,
    check_delay,
    check_doping,
    check_exposure,
    check_flag,
    check_fluence,
    check_pump_excitons,
    check_sample_id,
    check_slit,
    require_finite,
)
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
    connect_bench,
)
from .config import BenchConfig, BenchConfigError, LibraryEntry, load_bench, parse_bench

__all__ = [
    "UNITS",
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
    "check_angle",
    "check_delay",
    "check_doping",
    "check_exposure",
    "check_flag",
    "check_fluence",
    "check_pump_excitons",
    "check_sample_id",
    "check_slit",
    "connect_bench",
    "load_bench",
    "parse_bench",
    "require_finite",
]
