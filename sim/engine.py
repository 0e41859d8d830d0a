"""The twin bench: the state of a simulated optical bench and its lab clock.

One ``TwinBench`` holds everything a real bench would: the pump's fluence
setpoint and shutter, the slit's stripe length, the mounted sample and the
library of films and DFB devices, the polariser angle, the TA delay stage, the
spectrometer's exposure, the photo-damage each film has taken this session,
and a lab clock in seconds. Operations advance the clock by what they would
take on the bench (a slit move its travel time, an acquisition its exposure, a
new film its preparation time) without sleeping; the IOC (``sim.ioc``) sleeps
the scaled time itself, the in-process devices (``sim.devices``) do not.

Both the in-process devices and the IOC drive the same engine, so the same
seed and the same sequence of operations give the same numbers either way.

Safety: ``set_fluence`` refuses (``InterlockError``) any fluence above the
bench's configured limit, and any while the interlock permit is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from core.errors import GainloopError, ParameterError
from devices.config import BenchConfig, LibraryEntry
from twin import absorption as absorption_model
from twin import dynamics
from twin.damage import accumulate_damage, damaged_sample
from twin.films import FilmScatter, FilmTruth, draw_film, film_generator, film_sample
from twin.gain import film_kappa
from twin.instrument import acquire_stripe_spectrum, dfb_pixel_intensities
from twin.noise import PumpDrift, detector_counts
from twin.presets import PresetFile, Sample, excitons_per_fluence, load_presets
from twin.spectra import energy_bin_widths_meV, spectrometer_axis_nm

__all__ = ["FAULTS", "Acquisition", "FilmTruth", "InterlockError", "TwinBench"]

#: Faults the twin can inject (the IOC adds "pause" and "disconnect" of its own).
FAULTS = ("stuck_motor", "saturated_detector", "nan_readback")


class InterlockError(GainloopError):
    """The bench refused a setpoint for safety (fluence above the limit, interlock open)."""


@dataclass(frozen=True)
class Acquisition:
    """One spectrometer read: counts on the axis and the camera software's statistics."""

    wavelength_nm: np.ndarray
    counts: np.ndarray
    integrated: float
    peak_wavelength_nm: float
    fwhm_nm: float
    saturated: bool
    exposure_s: float
    lab_time_s: float


def _peak_stats(wavelength_nm: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """The camera software's peak statistics: maximum pixel (parabolic refinement) and FWHM."""
    i = int(np.argmax(counts))
    top = float(counts[i])
    if not math.isfinite(top) or top <= 0:
        return math.nan, math.nan
    peak = float(wavelength_nm[i])
    if 0 < i < counts.size - 1:
        ym, yp = float(counts[i - 1]), float(counts[i + 1])
        denom = ym - 2 * top + yp
        if denom < 0:
            peak += float(np.clip(0.5 * (ym - yp) / denom, -0.5, 0.5)) * float(wavelength_nm[i + 1] - wavelength_nm[i])
    half = 0.5 * top
    above = np.nonzero(counts >= half)[0]
    lo, hi = int(above[0]), int(above[-1])

    def cross(a, b):
        ya, yb = float(counts[a]), float(counts[b])
        return float(wavelength_nm[a] + (half - ya) * (wavelength_nm[b] - wavelength_nm[a]) / (yb - ya))

    left = cross(lo - 1, lo) if lo > 0 else float(wavelength_nm[0])
    right = cross(hi, hi + 1) if hi < counts.size - 1 else float(wavelength_nm[-1])
    return peak, right - left


@dataclass
class _State:
    fluence_uJ_cm2: float = 0.0
    shutter_open: bool = False
    stripe_length_um: float = 1000.0
    sample_id: str = ""
    polarizer_deg: float = 0.0
    ta_delay_ps: float = 0.0
    ta_pump_excitons: float = 1.0
    exposure_s: float = 3.0
    permit: bool = True
    power_ok: bool = True
    lamp_shutter_open: bool = False
    lamp_ok: bool = True
    sample_in_beam: bool = True
    message: str = "ok"
    doses: dict[str, float] = field(default_factory=dict)
    faults: set[str] = field(default_factory=set)


class TwinBench:
    """A simulated bench described by a bench file (its ``[twin]`` table), on a lab clock."""

    def __init__(self, bench: BenchConfig, presets: PresetFile | None = None, seed: int | None = None):
        self.config = bench
        self.presets = presets if presets is not None else load_presets(bench.twin.presets)
        self.seed = bench.twin.seed if seed is None else int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.drift = PumpDrift(self.presets.noise, self.seed)
        self.lab_time_s = 0.0
        self.library: dict[str, LibraryEntry] = {e.id: e for e in bench.stage.library}
        for e in self.library.values():
            self.sample_for(e)  # every mounted film must map onto a preset
        spec = bench.spectrometer
        self.wavelength_nm = spectrometer_axis_nm(spec.start_nm, spec.stop_nm, spec.pixels)
        self._bin_meV = energy_bin_widths_meV(self.wavelength_nm)
        self.state = _State(sample_id=bench.stage.library[0].id)
        self._new_films = 0
        tw = bench.twin
        self.film_scatter = FilmScatter(tw.film_doping_spread, tw.film_thickness_rel_spread, tw.film_loss_rel_spread)
        #: the true make of each film an operator made (drawn around the request); library films are as given
        self._truth: dict[str, FilmTruth] = {}
        self.lamp_drift = absorption_model.LampDrift(tw.lamp_drift_rms, self.seed)

    # ------------------------------------------------------------------ helpers
    @property
    def fluence_limit_uJ_cm2(self) -> float:
        return self.config.bench.fluence_limit_uJ_cm2

    def sample_for(self, entry: LibraryEntry) -> Sample:
        """The twin's parameters of a library entry: its preset (default ``[twin].new_film_preset``)
        with the entry's doping and, for a DFB, its grating period; as made, before any photo-damage.

        Raises ``ParameterError`` if a DFB's preset has no ``dfb`` table.
        """
        name = entry.preset or self.config.twin.new_film_preset
        sample = self.presets.get(name)
        if entry.kind == "dfb" and sample.dfb is None:
            raise ParameterError(f"library entry {entry.id!r} is a DFB but preset {name!r} has no dfb table")
        if entry.kind == "dfb" and entry.grating_period_nm is not None:
            sample = sample.model_copy(
                update={"dfb": sample.dfb.model_copy(update={"grating_period_nm": entry.grating_period_nm})}
            )
        return sample.model_copy(update={"doping_ne": entry.doping})

    def film_truth(self, film_id: str) -> FilmTruth:
        """What a library film really is: the hidden truth, for tests and benchmarks only.

        A film an operator made on request (``make_film``, or put back by ``add_film``) has its
        doping, thickness and waveguide loss drawn around the request and the preset
        (``[twin].film_doping_spread``, ``film_thickness_rel_spread``, ``film_loss_rel_spread``);
        a film of the bench file's library is what its entry and preset say.
        """
        if film_id not in self.library:
            ids = ", ".join(self.library)
            raise ParameterError(f"sample {film_id!r} is not in the library; mounted: {ids}")
        truth = self._truth.get(film_id)
        if truth is not None:
            return truth
        entry = self.library[film_id]
        sample = self.sample_for(entry)
        thickness = absorption_model.film_thickness_nm(sample, entry.kind)
        return FilmTruth(film_id, entry.doping, entry.doping, thickness, sample.film.waveguide_loss_per_cm)

    def true_sample(self, entry: LibraryEntry) -> Sample:
        """The twin's parameters of a library entry as the film really is (``film_truth``): what the physics uses."""
        sample = self.sample_for(entry)
        truth = self._truth.get(entry.id)
        return sample if truth is None else film_sample(sample, truth)

    def _draw_truth(self, entry: LibraryEntry) -> None:
        """Draw the make of a film made on request (a function of the seed and the film's id only)."""
        preset = self.sample_for(entry)
        rng = film_generator(self.seed, entry.id)
        self._truth[entry.id] = draw_film(entry.id, entry.doping, preset, self.film_scatter, rng)

    def excitons_per_uJ_cm2(self, sample_id: str | None = None) -> float:
        """The twin's kappa = <N>/F (excitons/dot per uJ/cm^2) of a library entry (default: the mounted one)."""
        entry = self.current() if sample_id is None else self.library[sample_id]
        sample = self.true_sample(entry)
        if entry.kind == "dfb":
            d = sample.dfb
            args = (d.absorbed_fraction_1030, d.film_thickness_nm, d.packing_fraction, d.dot_diameter_nm)
            return float(excitons_per_fluence(*args))
        return float(film_kappa(sample.film))

    def current(self) -> LibraryEntry:
        return self.library[self.state.sample_id]

    def current_sample(self) -> Sample:
        """The mounted sample's parameters, with the photo-damage it has taken so far."""
        entry = self.current()
        return damaged_sample(self.true_sample(entry), self.state.doses.get(entry.id, 0.0))

    def advance(self, seconds: float) -> None:
        """Advance the lab clock (s)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ParameterError(f"lab time step must be finite and >= 0 s, got {seconds!r}")
        self.lab_time_s += seconds

    # ------------------------------------------------------------------ setpoints
    def set_fluence(self, fluence_uJ_cm2: float) -> None:
        """Set the pump's peak fluence (uJ/cm^2); refused above the limit or without permit."""
        f = float(fluence_uJ_cm2)
        limit = self.fluence_limit_uJ_cm2
        if not math.isfinite(f) or f < 0:
            self.state.message = f"refused fluence {f!r}: must be a finite number >= 0 uJ/cm^2"
            raise InterlockError(self.state.message)
        if f > limit:
            self.state.message = f"refused fluence {f:g} uJ/cm^2: above the limit of {limit:g} uJ/cm^2"
            raise InterlockError(self.state.message)
        if not self.state.permit and f > 0:
            self.state.message = "refused fluence: interlock permit is off"
            raise InterlockError(self.state.message)
        self.state.fluence_uJ_cm2 = f
        self.state.message = "ok"

    def set_permit(self, permit: bool) -> None:
        """Open (False) or close (True) the interlock; opening it closes the shutter."""
        self.state.permit = bool(permit)
        if not permit:
            self.state.shutter_open = False
            self.state.message = "interlock open: shutter closed"

    def set_shutter(self, open_: bool) -> None:
        if open_ and not self.state.permit:
            self.state.message = "refused to open the shutter: interlock permit is off"
            raise InterlockError(self.state.message)
        self.state.shutter_open = bool(open_)

    def slit_travel_s(self, target_um: float) -> float:
        """Travel time (s) of the slit from its position to ``target_um``."""
        return abs(float(target_um) - self.state.stripe_length_um) / self.config.slit.speed_um_per_s

    def move_slit(self, target_um: float) -> float:
        """Move the slit to a stripe length (um); returns the travel time (s), clock advanced."""
        t = float(target_um)
        lo, hi = self.config.slit.min_um, self.config.slit.max_um
        if not math.isfinite(t) or not (lo <= t <= hi):
            raise ParameterError(f"stripe length {t!r} um out of range; allowed: {lo:g} to {hi:g} um")
        if "stuck_motor" in self.state.faults:
            raise InterlockError("slit motor is stuck (fault injected)")
        dt = self.slit_travel_s(t)
        self.advance(dt)
        self.state.stripe_length_um = t
        return dt

    def select_sample(self, sample_id: str) -> float:
        """Mount a sample from the library; returns the move time (s), clock advanced."""
        if sample_id not in self.library:
            ids = ", ".join(self.library)
            raise ParameterError(f"sample {sample_id!r} is not in the library; mounted: {ids}")
        dt = 0.0 if sample_id == self.state.sample_id else self.config.twin.sample_change_s
        self.advance(dt)
        self.state.sample_id = sample_id
        return dt

    def add_film(self, entry: LibraryEntry) -> LibraryEntry:
        """Put a film made in an earlier session back in the library, as made of ``[twin].new_film_preset``.

        Returns the entry the twin keeps (the given one with that preset). No lab time passes.
        """
        film = entry.model_copy(update={"preset": self.config.twin.new_film_preset})
        self.sample_for(film)  # the preset must fit the entry (ParameterError), as for the bench file's films
        self.library[film.id] = film
        if film.kind == "film":
            self._draw_truth(film)  # the same film it was when made (same seed, same id)
        return film

    def film_dose(self, film_id: str) -> float:
        """The photo-damage dose the film has taken so far (``twin.damage``: dimensionless, damaged fraction
        1 - exp(-dose))."""
        self.film_truth(film_id)  # a ParameterError naming the library if it is not there
        return float(self.state.doses.get(film_id, 0.0))

    def restore_film_dose(self, film_id: str, dose: float) -> None:
        """Give a library film the dose of its history (e.g. read back from its stored runs): a film is damaged
        by every command that pumped it, not only by this process's. ``ParameterError`` for a film not in the
        library or a dose that is not finite and >= 0."""
        self.film_truth(film_id)
        if not (math.isfinite(dose) and dose >= 0):
            raise ParameterError(f"damage dose of {film_id!r} must be finite and >= 0, got {dose!r}")
        self.state.doses[film_id] = float(dose)

    def set_lab_time(self, seconds: float) -> None:
        """Set the lab clock (s), e.g. to the lab time a resumed campaign had used."""
        t = float(seconds)
        if not (math.isfinite(t) and t >= 0):
            raise ParameterError(f"lab time must be finite and >= 0 s, got {seconds!r}")
        self.lab_time_s = t

    def new_film_seconds(self) -> float:
        return self.config.twin.new_film_hours * 3600.0

    def make_film(self, doping: float) -> tuple[str, float]:
        """An operator makes a film of a new doping (hours); returns its id and the time taken (s)."""
        d = float(doping)
        entry0 = LibraryEntry(id="probe", kind="film", doping=0.0, preset=self.config.twin.new_film_preset)
        sample = self.sample_for(entry0)
        lo, hi = 0.0, (0.99 if sample.doping_distribution == "poisson" else 1.0) * sample.degeneracy
        if not math.isfinite(d) or not (lo <= d <= hi):
            raise ParameterError(f"doping {d!r} electrons/dot cannot be made; allowed: {lo:g} to {hi:g}")
        self._new_films += 1
        new_id = f"film-{self._new_films:03d}-ne{d:.2f}"
        self.library[new_id] = self.config.new_film_entry(new_id, d, preset=self.config.twin.new_film_preset)
        self._draw_truth(self.library[new_id])
        dt = self.new_film_seconds()
        self.advance(dt)
        self.state.sample_id = new_id
        return new_id, dt

    # ------------------------------------------------------------------ readbacks
    def delivered_fluence(self) -> float:
        """Fluence reaching the sample now (uJ/cm^2): 0 with the shutter closed, drift applied."""
        if not self.state.shutter_open:
            return 0.0
        return self.state.fluence_uJ_cm2 * float(self.drift.factor(self.lab_time_s))

    def pulse_energy_uJ(self) -> float:
        """Pulse energy at the sample for the set fluence over the pumped area (uJ)."""
        entry = self.current()
        setup = self.presets.setup
        if entry.kind == "dfb":
            area_cm2 = math.pi * (150e-4) ** 2  # 300 um pump spot on the DFB
        else:
            w = setup.pump_line_half_length_um
            length = self.state.stripe_length_um
            integral_um = w * math.sqrt(math.pi / 2.0) * math.erf(length / (math.sqrt(2.0) * w))
            area_cm2 = integral_um * 1e-4 * setup.stripe_width_um * 1e-4
        return self.delivered_fluence() * area_cm2

    def acquire(self, exposure_s: float | None = None) -> Acquisition:
        """Expose the camera; the clock advances by the exposure and the film takes its dose."""
        exp_s = self.state.exposure_s if exposure_s is None else float(exposure_s)
        if not (math.isfinite(exp_s) and exp_s > 0):
            raise ParameterError(f"exposure must be a positive number of seconds, got {exp_s!r}")
        entry = self.current()
        sample = self.current_sample()
        fluence = self.delivered_fluence()
        noise = self.presets.noise
        if entry.kind == "film":
            acq = acquire_stripe_spectrum(
                self.state.fluence_uJ_cm2 if self.state.shutter_open else 0.0,
                self.state.stripe_length_um,
                sample.doping_ne,
                sample,
                self.presets.setup,
                noise,
                self.rng,
                exposure_s=exp_s,
                lab_time_s=self.lab_time_s,
                drift=self.drift,
                wavelength_nm=self.wavelength_nm,
            )
            counts, saturated = acq.counts, acq.saturated
        else:
            # the DFB's spectrum through the analyser, in the detector's intensity units (the measurement model
            # a calibration fits: twin.instrument.expected_dfb_counts)
            intensity = (
                dfb_pixel_intensities(self.wavelength_nm, fluence, self.state.polarizer_deg, sample, noise)
                if fluence > 0
                else np.zeros_like(self.wavelength_nm)
            )
            read = detector_counts(intensity, exp_s, noise, self.rng)
            counts, saturated = read.counts, read.saturated
        if self.lamp_lit():
            counts, saturated = self._add_white_light(counts, saturated, exp_s)
        if "saturated_detector" in self.state.faults:
            counts = np.full_like(counts, noise.full_well_counts)
            saturated = True
        if fluence > 0:
            pulses = exp_s * self.presets.setup.pump_repetition_rate_kHz * 1e3
            self.state.doses[entry.id] = accumulate_damage(
                self.state.doses.get(entry.id, 0.0), fluence, pulses, sample.damage
            )
        self.advance(exp_s)
        if "nan_readback" in self.state.faults:
            counts = np.full_like(counts, np.nan)
            return Acquisition(
                self.wavelength_nm, counts, math.nan, math.nan, math.nan, saturated, exp_s, self.lab_time_s
            )
        peak, fwhm = _peak_stats(self.wavelength_nm, counts)
        return Acquisition(
            self.wavelength_nm, counts, float(np.sum(counts)), peak, fwhm, saturated, exp_s, self.lab_time_s
        )

    # ------------------------------------------------------------------ white light (absorption)
    def lamp_lit(self) -> bool:
        """Whether white light reaches the spectrometer: the lamp's shutter open and the lamp OK."""
        return self.state.lamp_shutter_open and self.state.lamp_ok

    def set_lamp_shutter(self, open_: bool) -> None:
        self.state.lamp_shutter_open = bool(open_)

    def set_sample_in_beam(self, inside: bool) -> float:
        """Move the mounted film into (True) or out of (False) the white-light beam; returns the lab time (s)."""
        inside = bool(inside)
        dt = 0.0 if inside == self.state.sample_in_beam else self.config.absorption.sample_in_move_s
        self.advance(dt)
        self.state.sample_in_beam = inside
        return dt

    def film_absorbance(self) -> np.ndarray:
        """Absorbance (OD) of the mounted film as it really is, on the spectrometer's axis."""
        entry = self.current()
        sample = self.current_sample()
        thickness = self.film_truth(entry.id).thickness_nm
        return absorption_model.absorbance(
            self.wavelength_nm, sample.doping_ne, sample, thickness_nm=thickness, kind=entry.kind
        )

    def neutral_reference(self) -> absorption_model.AbsorbanceParts:
        """The neutral reference of the mounted film's dots: its preset undoped, at the preset's thickness (OD)."""
        entry = self.current()
        return absorption_model.neutral_absorbance(self.wavelength_nm, self.sample_for(entry), kind=entry.kind)

    def _add_white_light(self, counts: np.ndarray, saturated: bool, exp_s: float):
        """The white light through the film (or beside it), shot noise included, added to a read's counts."""
        od = self.film_absorbance() if self.state.sample_in_beam else None
        rate = absorption_model.transmitted_counts_per_s(
            self.wavelength_nm,
            self.config.twin.lamp_counts_per_s,
            od,
            drift_factor=self.lamp_drift.factor(self.lab_time_s),
        )
        light = self.rng.poisson(np.maximum(rate * exp_s, 0.0)).astype(float)
        noise = self.presets.noise
        dark = noise.dark_counts_per_s * exp_s
        total = counts + light
        saturated = saturated or bool(np.any(total + dark >= noise.full_well_counts))
        return np.minimum(total, noise.full_well_counts - dark), saturated

    def acquire_ta(self, averaging_s: float = 1.0) -> float:
        """|d(alpha)/alpha0| is not taken: returns d(alpha)/alpha0 at the set delay and pump <N> (with noise)."""
        sample = self.current_sample()
        delay = self.state.ta_delay_ps
        if delay < 0:
            value = 0.0
        else:
            value = float(
                dynamics.ta_trace(np.array([delay]), self.state.ta_pump_excitons, sample, differential=True)[0]
            )
        self.advance(averaging_s)
        noisy = value + float(self.rng.normal(0.0, self.presets.noise.ta_noise_rms))
        return math.nan if "nan_readback" in self.state.faults else noisy
