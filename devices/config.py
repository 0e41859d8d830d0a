"""The bench file: PV names, limits and the sample library of one optical bench.

A bench file is TOML, validated with pydantic (unknown keys are errors that name
the key). Every PV name is relative to ``[bench].prefix``. Units are in the key
names. The same file describes the real bench (EPICS IOCs of the lab) and the
twin's IOC (``gainloop twin serve --bench FILE`` serves exactly these PVs), whose
extra settings live in an optional ``[twin]`` table that the bench ignores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gainloop.errors import GainloopError
from gainloop.tomlfile import format_validation_error, read_toml

__all__ = [
    "BenchConfig",
    "BenchConfigError",
    "LibraryEntry",
    "load_bench",
    "parse_bench",
]


class BenchConfigError(GainloopError, ValueError):
    """A bench file that is missing, not TOML, or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BenchInfo(_Strict):
    name: str = Field(min_length=1, description="name of the bench (recorded in every run)")
    prefix: str = Field("", description="prefix of every PV of this bench, e.g. 'LAB1:'")
    fluence_limit_uJ_cm2: float = Field(gt=0, le=1e5, description="largest peak fluence any path may send")
    connection_timeout_s: float = Field(5.0, gt=0, le=120, description="time to wait for PVs to connect")


class PumpPVs(_Strict):
    fluence_setpoint: str = "PUMP:Fluence-SP"
    fluence_readback: str = "PUMP:Fluence-RB"
    pulse_energy_readback: str = "PUMP:PulseEnergy-RB"
    shutter: str = "PUMP:Shutter"
    repetition_rate_readback: str = "PUMP:RepRate-RB"
    power_ok: str = "PUMP:PowerOK"
    fluence_min_uJ_cm2: float = Field(0.0, ge=0)


class SlitPVs(_Strict):
    motor: str = "SLIT:Length"
    min_um: float = Field(10.0, gt=0)
    max_um: float = Field(4000.0, gt=0)
    speed_um_per_s: float = Field(500.0, gt=0, description="slit travel speed")
    move_timeout_margin_s: float = Field(
        10.0, gt=0, le=3600, description="a move fails if not done within its travel time plus this (s)"
    )

    @model_validator(mode="after")
    def _range(self) -> SlitPVs:
        if self.min_um >= self.max_um:
            raise ValueError(f"slit min_um ({self.min_um}) must be below max_um ({self.max_um})")
        return self


class LibraryEntry(_Strict):
    """One film or DFB device mounted on the sample stage."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: Literal["film", "dfb"]
    doping: float = Field(ge=0, le=40, description="<n_e>, 1S electrons/dot (from the bleach)")
    grating_period_nm: float | None = Field(None, gt=200, lt=2000)
    preset: str | None = Field(None, description="twin only: the preset sample this film is made of")

    @model_validator(mode="after")
    def _dfb_has_period(self) -> LibraryEntry:
        if self.kind == "dfb" and self.grating_period_nm is None:
            raise ValueError(f"DFB device {self.id!r} needs grating_period_nm")
        return self


class StagePVs(_Strict):
    sample_setpoint: str = "STAGE:Sample-SP"
    sample_readback: str = "STAGE:Sample-RB"
    doping_readback: str = "STAGE:Doping-RB"
    grating_period_readback: str = "STAGE:Period-RB"
    kind_readback: str = "STAGE:Kind-RB"
    busy: str = "STAGE:Busy"
    new_film_doping: str = "STAGE:NewFilm-Doping-SP"
    new_film_request: str = "STAGE:NewFilm-Request"
    move_timeout_s: float = Field(120.0, gt=0)
    new_film_timeout_h: float = Field(48.0, gt=0, description="longest wait for an operator to make a film")
    library: list[LibraryEntry] = Field(min_length=1)

    @field_validator("library")
    @classmethod
    def _unique(cls, v: list[LibraryEntry]) -> list[LibraryEntry]:
        ids = [e.id for e in v]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate sample ids in the library: {', '.join(sorted(dup))}")
        return v


class SpectrometerPVs(_Strict):
    exposure: str = "SPEC:Exposure"
    acquire: str = "SPEC:Acquire"
    spectrum: str = "SPEC:Spectrum"
    wavelength: str = "SPEC:Wavelength"
    integrated: str = "SPEC:Integrated"
    peak_wavelength: str = "SPEC:PeakWavelength"
    fwhm: str = "SPEC:FWHM"
    saturated: str = "SPEC:Saturated"
    pixels: int = Field(512, ge=16, le=8192)
    start_nm: float = Field(1200.0, gt=0)
    stop_nm: float = Field(1700.0, gt=0)
    exposure_min_s: float = Field(0.001, gt=0)
    exposure_max_s: float = Field(60.0, gt=0)
    acquire_timeout_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _axis(self) -> SpectrometerPVs:
        if self.start_nm >= self.stop_nm:
            raise ValueError("spectrometer start_nm must be below stop_nm")
        if self.exposure_min_s >= self.exposure_max_s:
            raise ValueError("exposure_min_s must be below exposure_max_s")
        return self


class PolarizerPVs(_Strict):
    angle_setpoint: str = "POL:Angle-SP"
    angle_readback: str = "POL:Angle-RB"


class TransientAbsorptionPVs(_Strict):
    delay_setpoint: str = "TA:Delay-SP"
    delay_readback: str = "TA:Delay-RB"
    pump_excitons: str = "TA:PumpExcitons-SP"
    acquire: str = "TA:Acquire"
    signal: str = "TA:dAlpha"
    delay_min_ps: float = -100.0
    delay_max_ps: float = Field(5000.0, gt=0)


class InterlockPVs(_Strict):
    permit: str = "IL:Permit"
    message: str = "IL:Message"
    resume_delay_s: float = Field(
        5.0, ge=0, le=3600, description="wall time a measurement waits after the permit or pump power is back"
    )


class TwinSettings(_Strict):
    """Settings of the twin's IOC and in-process devices (ignored by a real bench)."""

    presets: str | None = Field(None, description="presets TOML (default: the shipped presets)")
    seed: int = 0
    new_film_hours: float = Field(6.0, gt=0, description="lab time to make a film of a new doping, h")
    sample_change_s: float = Field(20.0, ge=0, description="lab time of a stage move, s")
    new_film_preset: str = Field("cas_doped", description="preset sample new films are made of")


class BenchConfig(_Strict):
    """A whole bench file."""

    bench: BenchInfo
    pump: PumpPVs = PumpPVs()
    slit: SlitPVs = SlitPVs()
    stage: StagePVs
    spectrometer: SpectrometerPVs = SpectrometerPVs()
    polarizer: PolarizerPVs = PolarizerPVs()
    transient_absorption: TransientAbsorptionPVs = TransientAbsorptionPVs()
    interlock: InterlockPVs = InterlockPVs()
    twin: TwinSettings = TwinSettings()

    def pv(self, name: str) -> str:
        """Full PV name (with the bench prefix)."""
        return f"{self.bench.prefix}{name}"

    def library_entry(self, sample_id: str) -> LibraryEntry:
        for e in self.stage.library:
            if e.id == sample_id:
                return e
        ids = ", ".join(e.id for e in self.stage.library)
        raise BenchConfigError(f"sample {sample_id!r} is not in the bench's library; mounted: {ids}")


def parse_bench(data: dict, source: str = "<dict>") -> BenchConfig:
    """Validate an already-parsed bench mapping."""
    try:
        cfg = BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise BenchConfigError(format_validation_error(exc, "bench file", source)) from None
    if not math.isfinite(cfg.bench.fluence_limit_uJ_cm2):
        raise BenchConfigError(f"invalid bench file {source}: bench.fluence_limit_uJ_cm2 must be finite")
    return cfg


def load_bench(path: str | Path) -> BenchConfig:
    """Read and validate a bench TOML file."""
    return parse_bench(read_toml(path, "bench file", BenchConfigError), str(path))
